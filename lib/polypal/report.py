"""Tables and figures from a results folder written by `polypal-sim run`.

    polypal-sim report results/cvc-lite

Writes into ``<results>/report/``:
- ``tables.md``: per metric (paper_miou, polyp Dice, polyp IoU) a table shaped
  like the paper's Tables 1-2 (rows strategies, columns stages, mean ± std over
  seeds, seed count), with the paper's numbers beside ours;
- ``curves.png``: metric vs number of labels, one line per strategy, band = ± std;
- ``tsne_stage3.png``: t-SNE of the latent space at the third stage (labeled,
  unlabeled, newly selected) for each strategy with saved latents (Figs 2, 5);
- ``gamma_sweep.png``: metric vs gamma (0 = TA-Coreset, 1 = Uncertainty) (Fig 3);
- ``overlap.png``: frames picked by both TA-Coreset and Uncertainty per stage (Fig 4);
- ``gallery_stage3.png``: frames picked in stage 3 grouped by sampler (Fig 6).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .simulate import read_records

PAPER = {  # paper_miou (%) from the paper's Table 2
    "kvasir": {"stages": [200, 300, 400, 500, 600], "rows": {
        "random": [68.14, 73.67, 77.48, 81.63, 85.61], "vaal": [68.38, 73.58, 78.41, 81.82, 85.59],
        "pca_coreset": [64.71, 70.20, 75.43, 78.48, 81.96], "ta_coreset": [67.99, 74.02, 78.28, 81.92, 86.89],
        "unc_ta_coreset@g0.5": [67.93, 75.35, 82.68, 85.40, 89.24]}},
    "cvc": {"stages": [80, 120, 160, 200, 240], "rows": {
        "random": [78.92, 82.38, 84.83, 85.82, 86.77], "vaal": [79.02, 82.42, 84.40, 85.21, 87.69],
        "pca_coreset": [79.65, 83.67, 86.22, 87.47, 88.42], "ta_coreset": [79.94, 84.33, 87.07, 88.14, 88.78],
        "unc_ta_coreset@g0.5": [79.33, 84.60, 87.12, 88.02, 88.61]}},
}
METRICS = (("paper_miou", "paper mIoU (mean of background and polyp IoU, pooled)"),
           ("polyp_dice", "per-image polyp Dice"), ("polyp_iou", "per-image polyp IoU"))


def load_results(folder: Path) -> dict:
    """strategy -> seed -> list of stage records (complete or not)."""
    out: dict = defaultdict(dict)
    for f in sorted((folder / "runs").glob("*.jsonl")):
        recs = read_records(f)
        if recs:
            out[recs[0]["strategy"]][recs[0]["seed"]] = recs
    return out


def _order(names):
    pref = ["random", "vaal", "pca_coreset", "uncertainty", "ta_coreset", "unc_ta_coreset@g0.5"]
    return sorted(names, key=lambda s: (pref.index(s) if s in pref else len(pref), s))


def stage_table(res: dict, metric: str):
    """{strategy: {n_labeled: [values over seeds]}} (in %)."""
    t: dict = defaultdict(lambda: defaultdict(list))
    for strat, seeds in res.items():
        for recs in seeds.values():
            for r in recs:
                t[strat][r["n_labeled"]].append(100 * r["test"][metric])
    return t


def markdown_tables(res: dict, paper_key: str | None) -> str:
    lines = []
    for metric, title in METRICS:
        t = stage_table(res, metric)
        stages = sorted({n for s in t.values() for n in s})
        lines += [f"### {title} (`{metric}`, %)", "",
                  "Mean ± std over seeds; (k) = number of seeds finished at that stage."
                  + (" Paper values (its \"mIoU\", same definition as `paper_miou`) in the rows marked *paper*."
                     if metric == "paper_miou" and paper_key else ""), "",
                  "| strategy | " + " | ".join(str(s) for s in stages) + " | mean after stage 0 |",
                  "|---|" + "---|" * (len(stages) + 1)]
        for strat in _order(t):
            cells = []
            for s in stages:
                v = t[strat].get(s, [])
                if not v:
                    cells.append("")
                elif len(v) == 1:
                    cells.append(f"{v[0]:.2f} (1)")
                else:
                    cells.append(f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f} ({len(v)})")
            # mean over the queried stages, for seeds that finished all of them
            later = stages[1:]
            per_seed = [np.mean([100 * r["test"][metric] for r in recs if r["n_labeled"] in later])
                        for recs in res[strat].values() if {r["n_labeled"] for r in recs} >= set(later)]
            summary = (f"{np.mean(per_seed):.2f}" + (f" ± {np.std(per_seed, ddof=1):.2f}" if len(per_seed) > 1 else "")
                       + f" ({len(per_seed)})") if per_seed else ""
            lines.append(f"| {strat} | " + " | ".join(cells) + f" | {summary} |")
        if metric == "paper_miou" and paper_key in PAPER:
            p = PAPER[paper_key]
            for strat in _order(p["rows"]):
                vals = dict(zip(p["stages"], p["rows"][strat]))
                lines.append(f"| *paper: {strat}* | " + " | ".join(f"*{vals[s]:.2f}*" if s in vals else ""
                                                                   for s in stages)
                             + f" | *{np.mean(p['rows'][strat]):.2f}* |")
        lines.append("")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(res, path: Path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (metric, title) in zip(axes, METRICS[:2]):
        t = stage_table(res, metric)
        for strat in _order(t):
            xs = sorted(t[strat])
            m = np.array([np.mean(t[strat][x]) for x in xs])
            sd = np.array([np.std(t[strat][x], ddof=1) if len(t[strat][x]) > 1 else 0 for x in xs])
            ax.plot(xs, m, marker="o", label=strat)
            ax.fill_between(xs, m - sd, m + sd, alpha=0.15)
        ax.set_xlabel("labeled frames")
        ax.set_ylabel(title + " (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gamma(res, path: Path) -> bool:
    gam = {}
    for strat in res:
        if strat.startswith("unc_ta_coreset@g") and "+" not in strat:
            gam[float(strat.split("@g")[1])] = strat
    if "ta_coreset" in res:
        gam.setdefault(0.0, "ta_coreset")
    if "uncertainty" in res:
        gam.setdefault(1.0, "uncertainty")
    if len(gam) < 2:
        return False
    plt = _plt()
    t = stage_table(res, "paper_miou")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    stages = sorted({n for s in gam.values() for n in t[s]})
    for st in stages[1:]:
        gs = sorted(g for g in gam if t[gam[g]].get(st))
        ax.plot(gs, [np.mean(t[gam[g]][st]) for g in gs], marker="o", label=f"{st} labels")
    ax.set_xlabel("gamma (0 = TA-Coreset, 1 = Uncertainty)")
    ax.set_ylabel("paper mIoU (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overlap(res, path: Path) -> bool:
    per = defaultdict(list)
    for seeds in res.values():
        for recs in seeds.values():
            for r in recs:
                if "overlap_ta_unc" in r:
                    per[r["n_labeled"]].append(r["overlap_ta_unc"])
    if not per:
        return False
    plt = _plt()
    xs = sorted(per)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(x) for x in xs], [np.mean(per[x]) for x in xs], yerr=[np.std(per[x]) for x in xs], capsize=3)
    ax.set_xlabel("labeled frames when querying")
    ax.set_ylabel("frames picked by both TA-Coreset and Uncertainty")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_tsne(folder: Path, path: Path) -> bool:
    files = sorted((folder / "extras").glob("latents-*-seed*-stage2.npz"))
    by_strat = {}
    for f in files:
        strat = f.name[len("latents-"):].rsplit("-seed", 1)[0]
        by_strat.setdefault(strat, f)  # the lowest seed
    if not by_strat:
        return False
    from sklearn.manifold import TSNE

    plt = _plt()
    strats = _order(by_strat)
    fig, axes = plt.subplots(1, len(strats), figsize=(4 * len(strats), 4), squeeze=False)
    for ax, s in zip(axes[0], strats):
        z = np.load(by_strat[s])
        lat = z["latents"].astype(np.float32)
        emb = TSNE(n_components=2, init="pca", random_state=0, perplexity=min(30, len(lat) - 1)).fit_transform(lat)
        lab, sel = z["labeled"], z["selected"]
        unl = np.setdiff1d(np.arange(len(lat)), np.concatenate([lab, sel]))
        ax.scatter(*emb[unl].T, s=4, c="lightgrey", label="unlabeled")
        ax.scatter(*emb[lab].T, s=6, c="tab:blue", label="labeled")
        ax.scatter(*emb[sel].T, s=10, c="tab:red", label="selected")
        ax.set_title(s, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_gallery(folder: Path, res, path: Path, per_group: int = 6) -> bool:
    meta = folder / "run.json"
    strat = next((s for s in ("unc_ta_coreset@g0.5",) if s in res), None)
    if strat is None or not meta.exists():
        return False
    data = Path(json.loads(meta.read_text())["data"])
    seed = min(res[strat])
    recs = res[strat][seed]
    if len(recs) < 3 or not recs[2]["selected"]:
        return False
    from .data import find_pairs, read_rgb, resize_rgb

    paths = {p.stem: p for p, _ in find_pairs(data, require_masks=False)}
    groups = defaultdict(list)
    for name, by in zip(recs[2]["selected"], recs[2]["picked_by"]):
        groups[by].append(name)
    plt = _plt()
    keys = sorted(groups)
    fig, axes = plt.subplots(len(keys), per_group, figsize=(2 * per_group, 2.1 * len(keys)), squeeze=False)
    for row, k in zip(axes, keys):
        for ax, name in zip(row, groups[k][:per_group] + [None] * per_group):
            ax.axis("off")
            if name and name in paths:
                ax.imshow(resize_rgb(read_rgb(paths[name]), 128))
        row[0].set_title(f"picked by {k} ({len(groups[k])})", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def run_means(res: dict, metric: str) -> dict:
    """{strategy: {seed: mean of the metric (%) over the queried stages}}, for runs that finished them all."""
    stages = sorted({r["n_labeled"] for seeds in res.values() for recs in seeds.values() for r in recs})
    later = set(stages[1:])
    return {strat: {seed: float(np.mean([100 * r["test"][metric] for r in recs if r["n_labeled"] in later]))
                    for seed, recs in seeds.items() if {r["n_labeled"] for r in recs} >= later}
            for strat, seeds in res.items()}


def paired_table(res: dict, baseline: str = "random") -> str:
    """Each strategy minus the baseline at the same seed (same initial labeled set), mean over queried stages.

    Pairing by seed removes the initial set's share of the seed-to-seed spread, so these differences are
    the fairer read of "does strategy X beat random" than two unpaired means ± std."""
    lines = []
    for metric, title in METRICS:
        m = run_means(res, metric)
        if baseline not in m or not m[baseline]:
            return ""
        if not lines:
            lines += [f"### Paired by seed: strategy minus {baseline}", "",
                      f"Per seed, the run's mean over the queried stages minus {baseline}'s at the same seed "
                      "(same initial labeled set); mean ± std over seeds, and on how many seeds it is ahead.", ""]
        lines += [f"`{metric}` (points):", "", "| strategy | difference | ahead on | per seed |", "|---|---|---|---|"]
        for strat in _order(m):
            if strat == baseline:
                continue
            d = {s: v - m[baseline][s] for s, v in sorted(m[strat].items()) if s in m[baseline]}
            if not d:
                continue
            v = np.array(list(d.values()))
            spread = f" ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else ""
            lines.append(f"| {strat} | {v.mean():+.2f}{spread} | {(v > 0).sum()}/{len(v)} | "
                         + ", ".join(f"s{s}: {x:+.1f}" for s, x in d.items()) + " |")
        lines.append("")
    return "\n".join(lines)


def make_report(folder: Path, paper: str | None = None) -> list[Path]:
    folder = Path(folder)
    res = load_results(folder)
    if not res:
        raise SystemExit(f"no results in {folder / 'runs'}")
    if paper is None:
        split = folder / "split.json"
        paper = None
        if (folder / "run.json").exists():
            paper = json.loads((folder / "run.json").read_text()).get("dataset")
        elif split.exists():
            paper = "cvc" if "mode" in json.loads(split.read_text()) else "kvasir"
    paper = None if paper in (None, "none", "folder") else paper
    out = folder / "report"
    out.mkdir(exist_ok=True)
    made = []
    tables = out / "tables.md"
    tables.write_text(f"# Results: {folder.name}\n\n" + markdown_tables(res, paper) + "\n" + paired_table(res))
    made.append(tables)
    plot_curves(res, out / "curves.png")
    made.append(out / "curves.png")
    for fn, name in ((lambda p: plot_tsne(folder, p), "tsne_stage3.png"), (lambda p: plot_gamma(res, p), "gamma_sweep.png"),
                     (lambda p: plot_overlap(res, p), "overlap.png"),
                     (lambda p: plot_gallery(folder, res, p), "gallery_stage3.png")):
        if fn(out / name):
            made.append(out / name)
    return made
