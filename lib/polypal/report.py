"""Tables and figures from a results folder written by `polypal-sim run`.

    polypal-sim report results/cvc-lite

Writes into ``<results>/report/``:
- ``tables.md``: first each strategy against Random paired by seed (per-stage and
  normalised-AULC differences with 95% bootstrap CIs, seeds ahead), the
  full-pool ceiling and label savings (when ``ceiling.jsonl`` exists); then per metric (paper_miou, polyp Dice, polyp IoU) a table shaped
  like the paper's Tables 1-2 (rows strategies, columns stages, mean ± std over
  seeds, seed count), with the paper's numbers beside ours;
- ``summary.json``: the same numbers, machine-readable;
- ``curves.png``: metric vs number of labels, at most five lines a panel, band = ± std,
  the full-pool ceiling dashed;
- ``aulc_diff.png``: paired AULC difference against Random with its 95% CI per strategy;
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


def plot_curves(res, path: Path, title: str = "", ceiling: dict | None = None, per_panel: int = 5):
    """Mean curve ± std per strategy; at most ``per_panel`` lines a panel (Random in every row); ceiling dashed."""
    plt = _plt()
    strats = _order(res)
    others = [s for s in strats if s != "random"]
    step = per_panel - 1 if "random" in res else per_panel
    groups = [(["random"] if "random" in res else []) + others[i : i + step] for i in range(0, max(1, len(others)), step)]
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    for row, group in zip(axes, groups):
        for ax, (metric, label) in zip(row, METRICS[:2]):
            t = stage_table(res, metric)
            for strat in group:
                xs = sorted(t[strat])
                m = np.array([np.mean(t[strat][x]) for x in xs])
                sd = np.array([np.std(t[strat][x], ddof=1) if len(t[strat][x]) > 1 else 0 for x in xs])
                ax.plot(xs, m, marker="o", label=f"{strat} ({len(res[strat])} seeds)")
                ax.fill_between(xs, m - sd, m + sd, alpha=0.15)
            if ceiling:
                ax.axhline(ceiling[metric], color="k", ls="--", lw=1,
                           label=f"full pool ({ceiling['n_labeled']} labels): {ceiling[metric]:.1f}")
            ax.set_xlabel("labeled frames")
            ax.set_ylabel({"paper_miou": "paper mIoU", "polyp_dice": "per-image polyp Dice"}[metric] + " (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title + " · mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gamma(res, path: Path, title: str = "") -> bool:
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
        m = np.array([np.mean(t[gam[g]][st]) for g in gs])
        cis = [bootstrap_ci(t[gam[g]][st]) or (mu, mu) for g, mu in zip(gs, m)]
        ax.errorbar(gs, m, yerr=[m - np.array([c[0] for c in cis]), np.array([c[1] for c in cis]) - m],
                    marker="o", capsize=3, label=f"{st} labels")
    ax.set_title(title + "\nmean and 95% bootstrap CI over seeds", fontsize=9)
    ax.set_xlabel("gamma (0 = TA-Coreset, 1 = Uncertainty)")
    ax.set_ylabel("paper mIoU (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overlap(res, path: Path, title: str = "") -> bool:
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
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_tsne(folder: Path, path: Path, title: str = "") -> bool:
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
    ncol = min(3, len(strats))
    nrow = -(-len(strats) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 4 * nrow), squeeze=False)
    for ax in axes.flat[len(strats):]:
        ax.axis("off")
    for ax, s in zip(axes.flat, strats):
        z = np.load(by_strat[s])
        lat = z["latents"].astype(np.float32)
        emb = TSNE(n_components=2, init="pca", random_state=0, perplexity=min(30, len(lat) - 1)).fit_transform(lat)
        lab, sel = z["labeled"], z["selected"]
        unl = np.setdiff1d(np.arange(len(lat)), np.concatenate([lab, sel]))
        ax.scatter(*emb[unl].T, s=4, c="lightgrey", label="unlabeled")
        ax.scatter(*emb[lab].T, s=6, c="tab:blue", label="labeled")
        ax.scatter(*emb[sel].T, s=10, c="tab:red", label="selected")
        ax.set_title(s, fontsize=9)
        ax.legend(fontsize=6, loc="best")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title + " · t-SNE of the latents at the third stage (lowest seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_gallery(folder: Path, res, path: Path, per_group: int = 6, title: str = "") -> bool:
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
    if title:
        fig.suptitle(f"{title} · {strat} seed {seed}, frames picked at the third stage", fontsize=9)
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


# ---------------------------------------------------------------------------
# Paired statistics against Random: per-stage differences, normalised AULC,
# bootstrap confidence intervals over seeds, label savings, summary.json
# ---------------------------------------------------------------------------

def bootstrap_ci(values, level: float = 0.95, max_exact: int = 10, n_boot: int = 20000, seed: int = 0):
    """Percentile bootstrap CI of the mean of ``values`` (one value per seed); None for fewer than 2 values.

    With up to ``max_exact`` values the bootstrap distribution is exact: every resample of the k values
    (k^k equally likely index tuples, grouped into multisets with their multinomial probabilities) is
    enumerated, so the bounds need no random numbers. The bounds are the lower and upper
    (1 - level)/2 quantiles of that distribution, as inverse CDF: the smallest resample mean whose
    cumulative probability reaches q. Above ``max_exact`` values: ``n_boot`` resamples from
    ``numpy.random.default_rng(seed)``, same quantile rule.
    """
    from itertools import combinations_with_replacement
    from math import factorial

    x = np.asarray(values, dtype=np.float64)
    k = len(x)
    if k < 2:
        return None
    a = (1 - level) / 2
    if k <= max_exact:
        means, probs = [], []
        for combo in combinations_with_replacement(range(k), k):
            counts = np.bincount(combo, minlength=k)
            w = factorial(k)
            for c in counts:
                w //= factorial(int(c))
            means.append(float(counts @ x) / k)
            probs.append(w / k**k)
        means, probs = np.asarray(means), np.asarray(probs)
    else:
        idx = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
        means, probs = x[idx].mean(axis=1), np.full(n_boot, 1.0 / n_boot)
    order = np.argsort(means, kind="stable")
    means, cum = means[order], np.cumsum(probs[order])

    def q(p):
        return float(means[min(int(np.searchsorted(cum, p - 1e-12, side="left")), len(means) - 1)])

    return (q(a), q(1 - a))


def normalised_aulc(xs, ys) -> float:
    """Area under the learning curve (trapezoids) divided by the label range: the curve's mean height."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(xs) < 2:
        return float(ys[0])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / (xs[-1] - xs[0]))


def all_stages(res: dict) -> list[int]:
    return sorted({r["n_labeled"] for seeds in res.values() for recs in seeds.values() for r in recs})


def _curve(recs, metric) -> dict:
    return {r["n_labeled"]: 100 * r["test"][metric] for r in recs}


def _diff_stats(d: dict) -> dict:
    """{seed: difference} -> mean, std, 95% CI, seeds ahead."""
    v = np.array([d[s] for s in sorted(d)])
    ci = bootstrap_ci(v)
    return {"mean": float(v.mean()), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "ci95": list(ci) if ci else None, "ahead": int((v > 0).sum()), "seeds": len(v),
            "per_seed": {str(s): float(d[s]) for s in sorted(d)}}


def paired_stats(res: dict, metric: str = "paper_miou", baseline: str = "random") -> dict:
    """Each strategy against the baseline at the same seed: per-stage and normalised-AULC differences (points)."""
    stages = all_stages(res)
    out = {}
    if baseline not in res:
        return out
    base = {s: _curve(recs, metric) for s, recs in res[baseline].items()}
    for strat in _order(res):
        if strat == baseline:
            continue
        per_stage = {}
        for n in stages:
            d = {s: _curve(recs, metric)[n] - base[s][n] for s, recs in res[strat].items()
                 if s in base and n in base[s] and n in _curve(recs, metric)}
            if d:
                per_stage[str(n)] = _diff_stats(d)
        aulc = {}
        for s, recs in res[strat].items():
            c = _curve(recs, metric)
            if s in base and set(stages) <= set(c) and set(stages) <= set(base[s]):
                aulc[s] = normalised_aulc(stages, [c[n] for n in stages]) - normalised_aulc(stages, [base[s][n] for n in stages])
        out[strat] = {"per_stage": per_stage, "aulc": _diff_stats(aulc) if aulc else None}
    return out


def strategy_stats(res: dict, metric: str = "paper_miou") -> dict:
    """Per strategy: mean, std and seed count at each stage, and the normalised AULC of complete runs."""
    stages = all_stages(res)
    out = {}
    for strat in _order(res):
        t = defaultdict(list)
        aulcs = []
        for recs in res[strat].values():
            c = _curve(recs, metric)
            for n, v in c.items():
                t[n].append(v)
            if set(stages) <= set(c):
                aulcs.append(normalised_aulc(stages, [c[n] for n in stages]))
        out[strat] = {
            "stages": {str(n): {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                                "seeds": len(v)} for n, v in sorted(t.items())},
            "aulc": {"mean": float(np.mean(aulcs)), "std": float(np.std(aulcs, ddof=1)) if len(aulcs) > 1 else None,
                     "seeds": len(aulcs)} if aulcs else None,
        }
    return out


def labels_to_reach(xs, ys, target: float):
    """Labels at which the curve first reaches ``target`` (linear interpolation between stages); None if never."""
    for i, (x, y) in enumerate(zip(xs, ys)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], ys[i - 1]
            return float(x0 + (target - y0) * (x - x0) / (y - y0))
    return None


def load_ceiling(folder: Path) -> dict | None:
    """Mean full-pool test metrics (%) over the ceiling seeds in ``ceiling.jsonl``, or None."""
    recs = read_records(Path(folder) / "ceiling.jsonl")
    if not recs:
        return None
    out = {"seeds": [r["seed"] for r in recs], "n_labeled": recs[0]["n_labeled"]}
    for m, _ in METRICS:
        v = [100 * r["test"][m] for r in recs]
        out[m] = float(np.mean(v))
        out[m + "_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return out


def label_savings(res: dict, ceiling: dict | None, fraction: float = 0.95, metric: str = "polyp_dice") -> dict | None:
    """Labels each strategy needs for ``fraction`` of the full-pool ``metric``, on its mean curve, vs Random's."""
    if not ceiling:
        return None
    target = fraction * ceiling[metric]
    stages = all_stages(res)
    out = {"metric": metric, "fraction": fraction, "target": target, "ceiling": ceiling[metric], "strategies": {},
           "note": "mean curve over the seeds that finished every stage"}
    for strat, seeds in res.items():
        curves = [_curve(recs, metric) for recs in seeds.values()]
        curves = [c for c in curves if set(stages) <= set(c)]
        if not curves:
            continue
        ys = [float(np.mean([c[n] for c in curves])) for n in stages]
        out["strategies"][strat] = {"labels": labels_to_reach(stages, ys, target), "max_labels": stages[-1],
                                    "seeds": len(curves)}
    base = out["strategies"].get("random", {}).get("labels")
    for strat, v in out["strategies"].items():
        v["saved_vs_random"] = ((base - v["labels"]) if (base is not None and v["labels"] is not None
                                                         and strat != "random") else None)
        # Random never got there: the savings are at least (Random's last stage - these labels)
        rnd = out["strategies"].get("random")
        v["saved_vs_random_at_least"] = ((rnd["max_labels"] - v["labels"]) if (rnd and base is None and
                                         v["labels"] is not None and strat != "random") else None)
    return out


def _fmt_ci(st: dict | None, digits: int = 2) -> str:
    if not st:
        return ""
    ci = st["ci95"]
    body = f"{st['mean']:+.{digits}f}" + (f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if ci else "")
    return body + f" ({st['ahead']}/{st['seeds']})"


def ci_tables(res: dict, ceiling: dict | None) -> str:
    stages = all_stages(res)
    lines = ["## Against Random, paired by seed, with 95% bootstrap CIs", "",
             "Strategy minus Random at the same seed (same initial labeled set), in points: mean "
             "[95% CI] (seeds ahead / seeds). The CI is the percentile bootstrap of the mean over seeds, "
             "exact (every resample of the seeds enumerated). With 3 seeds it is simply the range of the "
             "per-seed differences, and with 3-5 seeds it is narrow-biased: read a CI that excludes 0 as an "
             "indication, not proof. AULC = area under the learning curve over "
             f"all stages ({stages[0] if stages else ''}-{stages[-1] if stages else ''} labels) divided by the "
             "label range, i.e. the curve's mean height.", ""]
    for metric, title in METRICS[:2]:
        ps = paired_stats(res, metric)
        if not ps:
            continue
        lines += [f"### `{metric}` ({title})", "",
                  "| strategy | AULC difference | " + " | ".join(str(n) for n in stages[1:]) + " |",
                  "|---|---|" + "---|" * len(stages[1:])]
        for strat, v in ps.items():
            lines.append(f"| {strat} | {_fmt_ci(v['aulc'])} | "
                         + " | ".join(_fmt_ci(v["per_stage"].get(str(n))) for n in stages[1:]) + " |")
        lines.append("")
    sv = label_savings(res, ceiling)
    if ceiling:
        lines += ["## Full-pool ceiling and label savings", "",
                  f"Full pool ({ceiling['n_labeled']} labels, seeds {ceiling['seeds']}): paper mIoU "
                  f"{ceiling['paper_miou']:.2f}, polyp Dice {ceiling['polyp_dice']:.2f}."]
        st = strategy_stats(res, "polyp_dice").get("random")
        stm = strategy_stats(res, "paper_miou").get("random")
        if st and stages:
            last = st["stages"].get(str(stages[-1]))
            lastm = stm["stages"].get(str(stages[-1]))
            if last:
                lines.append(f"Random at {stages[-1]} labels reaches {100 * last['mean'] / ceiling['polyp_dice']:.1f}% "
                             f"of the full-pool polyp Dice and {100 * lastm['mean'] / ceiling['paper_miou']:.1f}% of its "
                             f"paper mIoU ({last['seeds']} seeds).")
        lines += ["", f"Labels needed to reach 95% of the full-pool polyp Dice ({sv['target']:.2f}), interpolated "
                  "on each strategy's mean curve (over its seeds that finished every stage):", "",
                  "| strategy | seeds | labels | saved vs Random |", "|---|---|---|---|"]
        for strat, v in sv["strategies"].items():
            lab = f"{v['labels']:.0f}" if v["labels"] is not None else f"not reached by {v['max_labels']}"
            sav = (f"{v['saved_vs_random']:+.0f}" if v["saved_vs_random"] is not None else
                   f"at least {v['saved_vs_random_at_least']:+.0f} (Random does not reach it)"
                   if v["saved_vs_random_at_least"] is not None else "")
            lines.append(f"| {strat} | {v['seeds']} | {lab} | {sav} |")
        lines.append("")
    else:
        lines += ["No full-pool ceiling measured yet (`polypal-sim ceiling ... --out THIS_FOLDER`): no label savings.", ""]
    return "\n".join(lines)


def stability(res: dict, metric: str = "paper_miou", max_drop: float = 3.0, max_std: float = 2.0) -> dict:
    """Issue 11's training-stability targets, checked on the runs present (points of ``metric``)."""
    stages = all_stages(res)
    out: dict = {"metric": metric}
    if "random" in res:
        st = strategy_stats(res, metric)["random"]["stages"]
        means = [(n, st[str(n)]["mean"]) for n in stages if str(n) in st]
        falls = [f"{a}->{b}" for (a, ma), (b, mb) in zip(means, means[1:]) if mb <= ma]
        stds = {str(n): st[str(n)]["std"] for n in stages[1:] if str(n) in st and st[str(n)]["std"] is not None}
        out["random_mean_rises_every_stage"] = not falls
        out["random_mean_falls"] = falls
        out["random_max_seed_std_after_stage0"] = max(stds.values()) if stds else None
        out["random_std_ok"] = (max(stds.values()) <= max_std) if stds else None
    drops = []
    for strat, seeds in res.items():
        for seed, recs in seeds.items():
            c = sorted(_curve(recs, metric).items())
            for (a, ya), (b, yb) in zip(c, c[1:]):
                if ya - yb > max_drop:
                    drops.append({"strategy": strat, "seed": seed, "from": a, "to": b, "drop": ya - yb})
    out["drops_over_threshold"] = drops
    out["threshold"] = max_drop
    return out


def _stability_md(res: dict) -> str:
    st = stability(res)
    lines = ["## Training stability (issue 11's targets, paper mIoU)", ""]
    if "random_mean_rises_every_stage" in st:
        lines.append(f"- Random's mean curve rises at every stage: {'yes' if st['random_mean_rises_every_stage'] else 'no (' + ', '.join(st['random_mean_falls']) + ')'}.")
        if st["random_max_seed_std_after_stage0"] is not None:
            lines.append(f"- Largest seed std of Random after stage 0: {st['random_max_seed_std_after_stage0']:.2f} points "
                         f"(target at most 2: {'met' if st['random_std_ok'] else 'not met'}).")
    d = st["drops_over_threshold"]
    lines.append(f"- Runs dropping more than {st['threshold']:g} points from one stage to the next: "
                 + (", ".join(f"{x['strategy']} seed {x['seed']} {x['from']}->{x['to']} (-{x['drop']:.1f})" for x in d)
                    if d else "none") + ".")
    return "\n".join(lines) + "\n"


def _profile_name(folder: Path, res: dict) -> str:
    meta = folder / "run.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("profile", {}).get("name", "?")
    return next((r.get("profile", "?") for seeds in res.values() for recs in seeds.values() for r in recs), "?")


SMOKE_WARNING = ("SMOKE PROFILE: these numbers mean nothing. The smoke profile trains a tiny network on 32x32 "
                 "frames for a handful of steps; it only checks that the pipeline runs.")


def summary(folder: Path, res: dict, dataset: str | None) -> dict:
    ceiling = load_ceiling(folder)
    profile = _profile_name(folder, res)
    return {
        "folder": folder.name, "dataset": dataset, "profile": profile, "smoke": profile == "smoke",
        "warning": SMOKE_WARNING if profile == "smoke" else None,
        "stages": all_stages(res),
        "seeds": {s: sorted(v) for s, v in res.items()},
        "ci_method": "percentile bootstrap of the mean over seeds, 95%, exact enumeration up to 10 seeds",
        "metrics": {m: {"strategies": strategy_stats(res, m), "vs_random": paired_stats(res, m)} for m, _ in METRICS},
        "ceiling": ceiling,
        "random_last_stage_fraction_of_ceiling": _random_fraction(res, ceiling),
        "stability": stability(res),
        "label_savings": label_savings(res, ceiling),
    }


def _random_fraction(res: dict, ceiling: dict | None) -> dict | None:
    """Random's mean at the last stage divided by the full-pool value, per metric (None without both)."""
    stages = all_stages(res)
    if not ceiling or "random" not in res or not stages:
        return None
    out = {"n_labeled": stages[-1]}
    for m, _ in METRICS:
        st = strategy_stats(res, m)["random"]["stages"].get(str(stages[-1]))
        out[m] = st["mean"] / ceiling[m] if st and ceiling[m] else None
    return out


def _title(folder: Path, res: dict, dataset: str | None) -> str:
    seeds = sorted({s for v in res.values() for s in v})
    return f"{dataset or folder.name} · profile {_profile_name(folder, res)} · seeds {','.join(map(str, seeds))}"


def plot_aulc_diff(res: dict, path: Path, title: str) -> bool:
    """Paired normalised-AULC difference against Random with its 95% CI, one row per strategy, per metric."""
    stats = {m: paired_stats(res, m) for m, _ in METRICS[:2]}
    strats = [s for s in stats["paper_miou"] if stats["paper_miou"][s]["aulc"]]
    if not strats:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(strats) + 2), squeeze=False)
    for ax, (metric, label) in zip(axes[0], METRICS[:2]):
        for i, st in enumerate(strats):
            a = stats[metric][st]["aulc"]
            lo, hi = a["ci95"] if a["ci95"] else (a["mean"], a["mean"])
            ax.errorbar(a["mean"], i, xerr=[[a["mean"] - lo], [hi - a["mean"]]], fmt="o", capsize=4,
                        color="tab:green" if lo > 0 else ("tab:red" if hi < 0 else "tab:grey"))
            ax.text(a["mean"], i + 0.2, f"{a['ahead']}/{a['seeds']} ahead", fontsize=7, ha="center")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(strats)))
        ax.set_yticklabels(strats, fontsize=8)
        ax.set_ylim(-0.6, len(strats) - 0.4)
        ax.set_xlabel(f"normalised AULC minus Random (points of {metric}), 95% CI")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title + " · paired by seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def make_report(folder: Path, paper: str | None = None) -> list[Path]:
    folder = Path(folder)
    res = load_results(folder)
    if not res:
        raise SystemExit(f"no results in {folder / 'runs'}")
    dataset = None
    if (folder / "run.json").exists():
        dataset = json.loads((folder / "run.json").read_text()).get("dataset")
    if paper is None:
        split = folder / "split.json"
        paper = dataset
        if paper is None and split.exists():
            paper = "cvc" if "mode" in json.loads(split.read_text()) else "kvasir"
    paper = None if paper in (None, "none", "folder") else paper
    out = folder / "report"
    out.mkdir(exist_ok=True)
    made = []
    smoke = _profile_name(folder, res) == "smoke"
    if smoke:
        print(SMOKE_WARNING)
    head = f"# Results: {folder.name}\n\n" + (f"**{SMOKE_WARNING}**\n\n" if smoke else "")
    tables = out / "tables.md"
    ceiling = load_ceiling(folder)
    tables.write_text(head + ci_tables(res, ceiling) + "\n" + _stability_md(res) + "\n" + markdown_tables(res, paper)
                      + "\n" + paired_table(res))
    made.append(tables)
    summ = out / "summary.json"
    summ.write_text(json.dumps(summary(folder, res, dataset), indent=1))
    made.append(summ)
    title = _title(folder, res, dataset) + (" · SMOKE: numbers mean nothing" if smoke else "")
    plot_curves(res, out / "curves.png", title=title, ceiling=ceiling)
    made.append(out / "curves.png")
    for fn, name in ((lambda p: plot_aulc_diff(res, p, title), "aulc_diff.png"),
                     (lambda p: plot_tsne(folder, p, title), "tsne_stage3.png"), (lambda p: plot_gamma(res, p, title), "gamma_sweep.png"),
                     (lambda p: plot_overlap(res, p, title), "overlap.png"),
                     (lambda p: plot_gallery(folder, res, p, title=title), "gallery_stage3.png")):
        if fn(out / name):
            made.append(out / name)
    return made
