"""The report's figures (matplotlib, drawn off-screen).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from polypal.experiments.report.results import METRICS, _order, load_results, run_meta, stage_table
from polypal.experiments.report.stats import bootstrap_ci, gamma_sweep, paired_stats


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(strats) -> dict:
    """One colour per strategy for the whole report, so a line keeps its colour from row to row."""
    cyc = [f"C{i}" for i in range(10)] + ["tab:olive", "tab:cyan", "k"]
    return {s: cyc[i % len(cyc)] for i, s in enumerate(strats)}


def _seeds(k: int) -> str:
    return f"{k} seed{'s' * (k != 1)}"


def plot_curves(res, path: Path, title: str = "", ceiling: dict | None = None, per_panel: int = 5):
    """Mean curve ± std per strategy; at most ``per_panel`` lines a panel (Random in every row); ceiling dashed."""
    plt = _plt()
    strats = _order(res, res)
    colour = _colours(strats)
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
                counts = sorted({len(t[strat][x]) for x in xs})  # an unfinished run: fewer seeds at its later stages
                seeds = _seeds(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds by stage"
                ax.plot(xs, m, marker="o", color=colour[strat], label=f"{strat} ({seeds})")
                ax.fill_between(xs, m - sd, m + sd, color=colour[strat], alpha=0.15)
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
    sweep = gamma_sweep(res)
    if not sweep:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for st, p in sweep.items():
        gs, m = p["gammas"], np.array(p["means"])
        lo, hi = np.array([c[0] for c in p["ci95"]]), np.array([c[1] for c in p["ci95"]])
        k = len(p["seeds"])
        ax.errorbar(gs, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=f"{st} labels ({k} seed{'s' * (k > 1)})")
    few = min(len(p["seeds"]) for p in sweep.values()) <= 3
    ax.set_title(title + "\nmean and 95% bootstrap CI over the seeds every gamma has at that stage"
                 + ("\n(with 3 seeds or fewer that interval is their range: with 3 it holds the mean about 3 "
                    "times in 4)" if few else ""), fontsize=9)
    ax.set_xlabel("gamma (0 = TA-Coreset, 1 = Uncertainty)")
    ax.set_ylabel("paper mIoU (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overlap(res, path: Path, title: str = "") -> bool:
    per, strategies = defaultdict(list), set()
    for strat, seeds in res.items():
        for recs in seeds.values():
            for r in recs:
                if "overlap_ta_unc" in r:
                    per[r["n_labeled"]].append(r["overlap_ta_unc"])
                    strategies.add(strat)
    if not per:
        return False
    plt = _plt()
    xs = sorted(per)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(x) for x in xs], [np.mean(per[x]) for x in xs], yerr=[np.std(per[x]) for x in xs], capsize=3)
    ax.set_xlabel("labeled frames when querying")
    ax.set_ylabel("frames picked by both TA-Coreset and Uncertainty")
    # every run records, at each stage, what both would pick from its own labeled set: pooled over strategies
    ax.set_title((title + "\n" if title else "") + f"mean ± sd over the runs of {len(strategies)} "
                 f"strateg{'y' if len(strategies) == 1 else 'ies'} pooled (each run's own labeled set)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _tsne_cached(src: Path, lat: np.ndarray, cache: Path) -> np.ndarray:
    """The 2-d t-SNE of ``lat`` (seeded), kept in ``cache`` under a hash of the latents file and the
    settings: a report made again after more stages landed does not recompute it (minutes per strategy)."""
    import hashlib

    import sklearn
    from sklearn.manifold import TSNE

    perplexity = min(30, len(lat) - 1)
    h = hashlib.sha256(src.read_bytes())
    h.update(f"tsne pca seed0 perplexity{perplexity} sklearn{sklearn.__version__}".encode())
    f = cache / f"{src.stem}-{h.hexdigest()[:16]}.npy"
    if f.exists():
        return np.load(f)
    emb = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(lat)
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob(f"{src.stem}-*.npy"):  # an earlier version of the same file
        old.unlink()
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, emb)
    tmp.replace(f)
    return emb


def plot_tsne(folder: Path, path: Path, title: str = "") -> bool:
    files = sorted((folder / "extras").glob("latents-*-seed*-stage2.npz"))
    by_strat = {}
    for f in files:
        strat = f.name[len("latents-"):].rsplit("-seed", 1)[0]
        by_strat.setdefault(strat, f)  # the lowest seed
    if not by_strat:
        return False
    plt = _plt()
    strats = _order(by_strat, load_results(folder))
    ncol = min(3, len(strats))
    nrow = -(-len(strats) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 4 * nrow), squeeze=False)
    for ax in axes.flat[len(strats):]:
        ax.axis("off")
    for ax, s in zip(axes.flat, strats):
        z = np.load(by_strat[s])
        lat = z["latents"].astype(np.float32)
        emb = _tsne_cached(by_strat[s], lat, path.parent / ".tsne-cache")
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
    strat = next((label for label, m in run_meta(res).items() if m == ("unc_ta_coreset", 0.5, "mean")), None)
    if strat is None or not meta.exists():
        return False
    data = Path(json.loads(meta.read_text())["data"])
    seed = min(res[strat])
    recs = res[strat][seed]
    if len(recs) < 3 or not recs[2]["selected"]:
        return False
    from polypal.data import find_pairs, read_rgb, resize_rgb

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


def plot_aulc_diff(res: dict, path: Path, title: str) -> bool:
    """Paired normalised-AULC difference against Random, one row per strategy, per metric: the 95% bootstrap
    CI (thick) and the Student-t interval (thin). Coloured only when both intervals exclude 0; grey otherwise,
    and hollow with fewer than 2 seeds (no interval at all)."""
    stats = {m: paired_stats(res, m) for m, _ in METRICS[:2]}
    strats = [s for s in stats["paper_miou"] if stats["paper_miou"][s]["aulc"]]
    if not strats:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * len(strats) + 2.3), squeeze=False)
    for ax, (metric, label) in zip(axes[0], METRICS[:2]):
        for i, st in enumerate(strats):
            a = stats[metric][st]["aulc"]
            m, boot, t = a["mean"], a["ci95"], a.get("t95")
            if boot and t:
                lo, hi = min(boot[0], t[0]), max(boot[1], t[1])
                c = "tab:green" if lo > 0 else ("tab:red" if hi < 0 else "tab:grey")
                ax.errorbar(m, i, xerr=[[m - t[0]], [t[1] - m]], fmt="none", ecolor=c, elinewidth=1, capsize=3)
                ax.errorbar(m, i, xerr=[[m - boot[0]], [boot[1] - m]], fmt="o", color=c, elinewidth=3.5, capsize=0)
            else:
                ax.plot(m, i, "o", mfc="none", color="tab:grey")
            note = f"{a['ahead']}/{a['seeds']} ahead" + ("" if a["seeds"] > 1 else ", 1 seed: no interval")
            ax.text(m, i + 0.22, note, fontsize=7, ha="center")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(strats)))
        ax.set_yticklabels(strats, fontsize=8)
        ax.set_ylim(-0.6, len(strats) - 0.3)
        ax.set_title({"paper_miou": "paper mIoU", "polyp_dice": "per-image polyp Dice"}[metric], fontsize=9)
        ax.set_xlabel("normalised AULC minus Random (points)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title + "\npaired by seed · thick: 95% bootstrap CI, thin: Student-t 95% interval;"
                 " coloured only when both exclude 0", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
