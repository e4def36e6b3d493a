"""Tables and figures from a results folder written by `polypal-sim run` (``results``, ``stats``,
``tables``, ``plots``; this module writes them).

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
from pathlib import Path

from polypal.experiments.report.plots import (plot_aulc_diff, plot_curves, plot_gallery, plot_gamma, plot_overlap,
                                              plot_tsne)
from polypal.experiments.report.results import (METRICS, SMOKE_WARNING, _profile_name, _title, all_stages,
                                                ceilings_left_out, load_ceiling, load_results, run_meta,
                                                run_recipes)
from polypal.experiments.report.stats import (_random_fraction, bootstrap_ci, label_savings, normalised_aulc,
                                              paired_stats, stability, strategy_stats, student_t_ci)
from polypal.experiments.report.tables import _stability_md, ci_tables, markdown_tables, paired_table

__all__ = ["bootstrap_ci", "load_results", "make_report", "normalised_aulc", "paired_stats", "run_meta", "stability",
           "strategy_stats", "student_t_ci", "summary"]


def summary(folder: Path, res: dict, dataset: str | None, ceiling: dict | None = None) -> dict:
    """The report's numbers, machine-readable (``ceiling``: as ``load_ceiling`` gives it for these runs)."""
    if ceiling is None:
        ceiling = load_ceiling(folder, run_recipes(res))
    profile = _profile_name(folder, res)
    return {
        "folder": folder.name, "dataset": dataset, "profile": profile, "smoke": profile == "smoke",
        "warning": SMOKE_WARNING if profile == "smoke" else None,
        "stages": all_stages(res),
        "seeds": {s: sorted(v) for s, v in res.items()},
        "ci_method": "percentile bootstrap of the mean over seeds, 95%, exact enumeration up to 10 seeds; with 3 "
                     "seeds the interval is the range of the per-seed values (it holds the mean about 3 times in 4, "
                     "not 19 in 20): see t95 beside it for a wider view",
        "metrics": {m: {"strategies": strategy_stats(res, m), "vs_random": paired_stats(res, m)} for m, _ in METRICS},
        "ceiling": ceiling,
        "ceiling_records_of_another_recipe": ceilings_left_out(folder, run_recipes(res)),
        "random_last_stage_fraction_of_ceiling": _random_fraction(res, ceiling),
        "stability": stability(res),
        "label_savings": label_savings(res, ceiling),
    }


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
    recipes = run_recipes(res)
    ceiling = load_ceiling(folder, recipes)
    left_out = ceilings_left_out(folder, recipes)
    if left_out:
        head += (f"{left_out} full-pool record(s) in ceiling.jsonl were trained with another recipe than these "
                 "runs and are left out" + ("" if ceiling else ": no ceiling for these runs") + ".\n\n")
    tables.write_text(head + ci_tables(res, ceiling) + "\n" + _stability_md(res) + "\n" + markdown_tables(res, paper)
                      + "\n" + paired_table(res))
    made.append(tables)
    summ = out / "summary.json"
    summ.write_text(json.dumps(summary(folder, res, dataset, ceiling), indent=1))
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
