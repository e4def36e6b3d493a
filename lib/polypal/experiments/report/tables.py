"""The report's Markdown tables (``tables.md``).
"""

from __future__ import annotations

import numpy as np

from polypal.experiments.report.results import METRICS, PAPER, _order, all_stages, run_means, stage_table
from polypal.experiments.report.stats import label_savings, paired_stats, stability, strategy_stats


def markdown_tables(res: dict, paper_key: str | None) -> str:
    lines = []
    for metric, title in METRICS:
        t = stage_table(res, metric)
        stages = sorted({n for s in t.values() for n in s})
        lines += [f"### {title} (`{metric}`, %)", "",
                  "Mean ± std over seeds; (k) = number of seeds finished at that stage."
                  + (" Paper values (its \"mIoU\", same definition as `paper_miou`) in the rows marked *paper*; "
                     "their last column is the paper's mean over its own stages"
                     + (f" ({'-'.join(str(x) for x in (PAPER[paper_key]['stages'][0], PAPER[paper_key]['stages'][-1]))}"
                        f" labels), not over the stages run here" if paper_key in PAPER else "") + "."
                     if metric == "paper_miou" and paper_key else ""), "",
                  "| strategy | " + " | ".join(str(s) for s in stages) + " | mean after stage 0 |",
                  "|---|" + "---|" * (len(stages) + 1)]
        for strat in _order(t, res):
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
            for strat in p["rows"]:  # the paper's Table 2 order
                vals = dict(zip(p["stages"], p["rows"][strat]))
                lines.append(f"| *paper: {strat}* | " + " | ".join(f"*{vals[s]:.2f}*" if s in vals else ""
                                                                   for s in stages)
                             + f" | *{np.mean(p['rows'][strat]):.2f}* |")
        lines.append("")
    return "\n".join(lines)


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
        for strat in _order(m, res):
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


def _fmt_ci(st: dict | None, digits: int = 2) -> str:
    if not st:
        return ""
    ci = st["ci95"]
    body = f"{st['mean']:+.{digits}f}" + (f" [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if ci else "")
    return body + f" ({st['ahead']}/{st['seeds']})"


def _fmt_p(p: float | None) -> str:
    return "" if p is None else " p<0.01" if p < 0.01 else f" p={p:.2f}"


def _fmt_t(st: dict | None, digits: int = 2) -> str:
    if not st or not st.get("t95"):
        return ""
    lo, hi = st["t95"]
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]" + _fmt_p(st.get("p_t"))


def summary_table(res: dict, ceiling: dict | None) -> str:
    """One row per strategy against Random (the README's results table): normalised-AULC difference in
    paper mIoU (bootstrap CI, t interval, p) and in polyp Dice, and the paired label saving."""
    miou, dice = paired_stats(res, "paper_miou"), paired_stats(res, "polyp_dice")
    sv = (label_savings(res, ceiling) or {}).get("strategies", {})
    lines = ["| strategy | seeds | paper mIoU: mean [bootstrap CI] | t interval (p) | ahead | polyp Dice: mean "
             "[bootstrap CI] | ahead | labels saved to 95% of the ceiling Dice, paired |",
             "|---|---|---|---|---|---|---|---|"]
    for strat, v in miou.items():
        a, b = v["aulc"], dice[strat]["aulc"]
        if not a:
            continue
        ps = sv.get(strat, {}).get("saved_vs_random_paired")
        notes = ([f"{len(ps['censored_seeds'])} censored"] if ps and ps["censored_seeds"] else []) + (
            [f"{len(ps['first_stage_seeds'])} at the first stage"] if ps and ps.get("first_stage_seeds") else [])
        saved = (_fmt_ci(ps, 0).rsplit(" (", 1)[0] + (f" ({', '.join(notes)})" if notes else "")) if ps else ""
        name = strat + (f" (AULC over {a['span'][0]}-{a['span'][1]} labels only: the stages it shares with "
                        f"Random)" if a.get("span") else "")
        lines.append(f"| {name} | {a['seeds']} | {_fmt_ci(a).rsplit(' (', 1)[0]} | {_fmt_t(a)} | "
                     f"{a['ahead']}/{a['seeds']} | {_fmt_ci(b).rsplit(' (', 1)[0]} | {b['ahead']}/{b['seeds']} | {saved} |")
    return "\n".join(lines) + "\n"


def _detectable_md(res: dict) -> str:
    """What the seeds at hand can detect, per strategy (paper-mIoU AULC difference against Random)."""
    rows = []
    for strat, v in paired_stats(res, "paper_miou").items():
        d = (v["aulc"] or {}).get("detectable")
        if not d or v["aulc"]["seeds"] < 3:  # the spread of 2 differences says next to nothing
            continue
        need = (f"{d['seeds_for_mean']} seeds" if d["seeds_for_mean"] else "more than 1000 seeds")
        rows.append(f"- {strat}: {v['aulc']['seeds']} seeds detect a difference of {d['mde']:.2f} points or more; "
                    f"the observed {v['aulc']['mean']:+.2f} would need {need}.")
    if not rows:
        return ""
    return "\n".join(["What these seeds can detect: the smallest paper-mIoU AULC difference that a paired t-test "
                      "(two-sided, 5%) finds 4 times in 5 with this many seeds, given the spread of the per-seed "
                      "differences seen here (noncentral t), and the seeds the observed mean difference would need "
                      "for the same power (strategies with 3 seeds or more; the spread is itself estimated from few "
                      "seeds). A strategy whose true gain is below that line is not ruled out by a "
                      "\"no measurable gain\".", ""] + rows) + "\n"


def _stage0_sentence(res: dict, stages: list) -> str:
    """What stage 0's paired differences are in these runs: it is meant to be the same initial draw and
    training for every strategy at a seed, but each run trains it again, and runs that differ in threads or
    library versions differ there (the report said "its difference is 0" where it was up to 2.6 points)."""
    if "random" not in res or not stages:
        return ""
    diffs = []
    for strat, seeds in res.items():
        if strat == "random":
            continue
        for seed, recs in seeds.items():
            a = {r["n_labeled"]: r for r in recs}.get(stages[0])
            b = {r["n_labeled"]: r for r in res["random"].get(seed, [])}.get(stages[0])
            if a and b:
                diffs.append((abs(100 * (a["test"]["paper_miou"] - b["test"]["paper_miou"])), strat, seed))
    if not diffs:
        return ""
    big = max(d[0] for d in diffs)
    if big < 0.005:
        return (f"Stage 0 is the same initial draw and the same training for every strategy at a seed: its "
                f"paired paper-mIoU difference is 0 in all {len(diffs)} pairs here.")
    differ = [d for d in diffs if d[0] >= 0.005]
    seeds = sorted({str(d[2]) for d in differ})
    return (f"Stage 0 is the same initial draw for every strategy at a seed, but each run trains it again: "
            f"its paper mIoU differs from Random's at the same seed in {len(differ)} of {len(diffs)} pairs here "
            f"(seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}), by up to {big:.2f} points (training noise, e.g. "
            f"another thread count; when every strategy differs by the same amount at a seed, it is Random's "
            f"own stage 0 that differs), and that difference enters the AULC difference with the first stage's "
            f"weight.")


def ci_tables(res: dict, ceiling: dict | None) -> str:
    stages = all_stages(res)
    lines = ["## Summary: every strategy against Random", "",
             "Normalised AULC, strategy minus Random at the same seed, in points; labels saved: Random's "
             "labels to 95% of the full-pool Dice minus the strategy's, per seed (details below).", "",
             *(["**No Random runs in this folder: nothing can be compared against Random** (run "
                "`--strategies random` at the same seeds).", ""] if "random" not in res else []),
             *(["Rows with 1 seed have no interval (a CI needs 2 seeds or more).", ""]
               if any(len(v) == 1 for v in res.values()) else []),
             summary_table(res, ceiling),
             _detectable_md(res),
             "## Against Random, paired by seed, with 95% bootstrap CIs", "",
             "Strategy minus Random at the same seed (same initial labeled set), in points: mean "
             "[95% CI] (seeds ahead / seeds). The CI is the percentile bootstrap of the mean over seeds, "
             "exact (every resample of the seeds enumerated). With 3 seeds it is simply the range of the "
             "per-seed differences, and with 3-5 seeds it is narrow-biased: read a CI that excludes 0 as an "
             "indication, not proof. The column 't-interval' is a second, wider view of the AULC difference: "
             "the Student-t 95% interval of the mean over seeds and the paired t-test's p (assumes roughly "
             "normal differences). AULC = area under the learning curve over "
             f"all stages ({stages[0] if stages else ''}-{stages[-1] if stages else ''} labels) divided by the "
             "label range, i.e. the curve's mean height. " + _stage0_sentence(res, stages) + " Stage 0 stays in "
             "the AULC as the start of the curve (the paired table at the end, 'mean over "
             "the queried stages', leaves it out). The per-stage columns are many comparisons (stages x "
             "metrics): a CI excluding 0 among them now and then is expected by chance; the AULC difference is "
             "the headline comparison, fixed before the runs (issue 11).", ""]
    for metric, title in METRICS[:2]:
        ps = paired_stats(res, metric)
        if not ps:
            continue
        lines += [f"### `{metric}` ({title})", "",
                  "| strategy | AULC difference | AULC t-interval (p) | "
                  + " | ".join(str(n) for n in stages[1:]) + " |",
                  "|---|---|---|" + "---|" * len(stages[1:])]
        for strat, v in ps.items():
            span = (v["aulc"] or {}).get("span")
            lines.append(f"| {strat}{f' (AULC over {span[0]}-{span[1]} labels)' if span else ''} | "
                         f"{_fmt_ci(v['aulc'])} | {_fmt_t(v['aulc'])} | "
                         + " | ".join(_fmt_ci(v["per_stage"].get(str(n))) for n in stages[1:]) + " |")
        lines.append("")
    sv = label_savings(res, ceiling)
    if ceiling:
        lines += ["## Full-pool ceiling and label savings", "",
                  f"Full pool ({ceiling['n_labeled']} labels, seeds {ceiling['seeds']}, "
                  f"{'/'.join(map(str, ceiling.get('steps') or [])) or '?'} steps"
                  f"{'' if ceiling.get('uncapped') else ', capped like a stage'}): paper mIoU "
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
        refs = sv.get("targets_by_ceiling_seed")
        lines += ["", f"Labels needed to reach 95% of the full-pool polyp Dice ({sv['target']:.2f}), interpolated "
                  "on each strategy's mean curve (over its seeds that finished every stage): where it first "
                  "reaches the target, and, where that differs, the labels from which it stays above it to the "
                  "last stage (a curve that falls back below after its first crossing reached it by noise as much "
                  "as by labels; '-': it ends below). 'Saved vs Random' compares the two mean curves over the "
                  "same seeds (the strategy's seeds that Random has; Random's own labels over those seeds in "
                  "brackets), first crossing, then staying above. The mean-curve figure "
                  "has no uncertainty of its own: the per-seed columns show the spread behind it (each seed's own "
                  "curve; '-' = not reached by the last stage; 'f' = reached at the first stage, before any "
                  "selection), and the paired saving is Random's labels minus the "
                  "strategy's at the same seed: mean [95% bootstrap CI] (seeds saving / seeds), t [Student-t "
                  "interval] p. A seed that never reaches the target counts as reaching it at the last stage "
                  "(censored, marked 'c': flattering to that run, so read those savings as bounds). A seed where "
                  "both reach it at the first stage saves 0 by construction (marked 'f'); with such seeds the "
                  "interval over the other seeds follows ('without f')."
                  + (" The target is itself an estimate: with each full-pool seed's own Dice as the reference "
                     f"(targets {', '.join(f'{t:.2f}' for t in refs.values())}), the mean-curve saving is given "
                     "after 'by full-pool seed'." if refs else ""), "",
                  "| strategy | seeds | labels (mean curve) | saved vs Random, same seeds | per seed | paired saving |",
                  "|---|---|---|---|---|---|"]
        for strat, v in sv["strategies"].items():
            lab = (f"{v['labels']:.0f}" if v["labels"] is not None else f"not reached by {v['max_labels']}") + (
                "" if v["labels"] is None or v["labels_stay"] == v["labels"] else
                f"; stays above from {v['labels_stay']:.0f}" if v["labels_stay"] is not None else "; ends below")
            if v.get("span"):
                lab += f" (over {v['span'][0]}-{v['span'][1]} labels)"
            parts = []
            if strat != "random":
                rl = v.get("random_labels_same_seeds")
                ctx = f" (Random {rl:.0f} over s{',s'.join(v['paired_seeds'])})" if rl is not None else ""
                if v.get("saved_vs_random") is not None:
                    parts.append(f"{v['saved_vs_random']:+.0f}{ctx}")
                    if v.get("saved_vs_random_stay") is not None and v["saved_vs_random_stay"] != v["saved_vs_random"]:
                        parts.append(f"staying above {v['saved_vs_random_stay']:+.0f}")
                elif v.get("saved_vs_random_at_least") is not None:
                    parts.append(f"at least {v['saved_vs_random_at_least']:+.0f} (Random does not reach it)")
                elif v.get("saved_vs_random_at_most") is not None:
                    parts.append(f"at most {v['saved_vs_random_at_most']:+.0f}{ctx}, not reaching it")
                by = v.get("saved_vs_random_by_ceiling_seed")
                if by:
                    parts.append("by full-pool seed " + ", ".join(f"{k}: " + (f"{x:+.0f}" if x is not None else "-")
                                                                  for k, x in by.items()))
            sav = "; ".join(parts)
            first = set(v.get("first_stage_seeds") or [])
            per = ", ".join(f"s{s}: " + (f"{x:.0f}" if x is not None else "-") + (" f" if s in first else "")
                            for s, x in v["per_seed"].items())
            p = v.get("saved_vs_random_paired")
            cell = ""
            if p:
                cell = _fmt_ci(p, 0) + (f", t {_fmt_t(p, 0)}" if _fmt_t(p) else "")
                if p["censored_seeds"]:
                    cell += f" c: {', '.join('s' + x for x in p['censored_seeds'])}"
                if p.get("first_stage_seeds"):
                    cell += f" f: {', '.join('s' + x for x in p['first_stage_seeds'])}"
                    if p.get("without_first_stage_seeds"):
                        cell += f"; without f {_fmt_ci(p['without_first_stage_seeds'], 0)}"
            lines.append(f"| {strat} | {v['seeds']} | {lab} | {sav} | {per} | {cell} |")
        lines.append("")
    else:
        lines += ["No full-pool ceiling measured yet (`polypal-sim ceiling ... --out THIS_FOLDER`): no label savings.", ""]
    return "\n".join(lines)


def _stability_md(res: dict) -> str:
    st = stability(res)
    lines = ["## Training stability (issue 11's targets, paper mIoU)", ""]
    if "random_mean_rises_every_stage" in st:
        steps = {f"{x['from']}->{x['to']}": x for x in st["random_steps"]}
        falls = []
        for f in st["random_mean_falls"]:
            x = steps.get(f)
            if x and x["t95"]:
                lo, hi = x["t95"]
                noise = "within noise" if lo <= 0 <= hi else "a real fall"
                falls.append(f"{f}: {x['mean']:+.2f}, paired t interval [{x['t95'][0]:+.2f}, {x['t95'][1]:+.2f}] "
                             f"over {x['seeds']} seeds, {noise}")
            else:
                falls.append(f)
        lines.append(f"- Random's mean curve rises at every stage (each step over the seeds that have both stages): {'yes' if st['random_mean_rises_every_stage'] else 'no (' + '; '.join(falls) + ')'}.")
        if st["random_max_seed_std_after_stage0"] is not None:
            ci = st.get("random_max_std_ci95")
            span = (f" at {st['random_max_std_stage']} labels; 95% chi-square interval {ci[0]:.2f} to {ci[1]:.2f} over "
                    f"{st['random_max_std_seeds']} seeds" if ci else "")
            target = st["std_target"]
            verdict = "met" if st["random_std_ok"] else "not met"
            if ci and ci[0] <= target <= ci[1]:
                verdict += f" by the estimate; the interval holds {target:g}, so these seeds cannot tell"
            lines.append(f"- Largest seed std of Random after stage 0: {st['random_max_seed_std_after_stage0']:.2f} points"
                         f"{span} (target at most {target:g}: {verdict}).")
        if st["random_steps"]:
            lines.append("- Random's mean step from stage to stage, paired by seed (points): " + ", ".join(
                f"{x['from']}->{x['to']} {x['mean']:+.2f}" + (f" [{x['t95'][0]:+.2f}, {x['t95'][1]:+.2f}]" if x["t95"] else "")
                for x in st["random_steps"]) + ".")
    d = st["drops_over_threshold"]
    lines.append(f"- Runs dropping more than {st['threshold']:g} points from one stage to the next: "
                 + (", ".join(f"{x['strategy']} seed {x['seed']} {x['from']}->{x['to']} (-{x['drop']:.1f})" for x in d)
                    if d else "none") + ".")
    dn = st.get("drops_from_noise")
    if dn:
        beyond = ", ".join(f"{x['strategy']} seed {x['seed']} {x['from']}->{x['to']} (-{x['drop']:.1f}, "
                           + (f"z {x['z']:.1f})" if x["z"] is not None else "a step with no spread)")
                           for x in dn["outliers"]) or "none"
        thin = ("; left out, too few runs for a spread: " + ", ".join(f"{x['from']}->{x['to']} ({x['runs']})"
                                                                       for x in dn["thin_steps"])
                if dn["thin_steps"] else "")
        lines.append(
            f"- Drops that ordinary stage-to-stage noise alone would give (each step over every run that has it, "
            f"{dn['runs']} runs, strategies pooled: median and MAD spread, normal tails{thin}): "
            f"{dn['expected_drops']:.1f} drops in "
            f"{dn['expected_runs_dropping']:.1f} runs, against {dn['observed_drops']} in {dn['observed_runs_dropping']} seen. Spread of each step "
            "(points): " + ", ".join(f"{x['from']}->{x['to']} {x['robust_sd']:.2f}" for x in dn["steps"])
            + f". Beyond that noise (robust z under -{dn['outlier_z']:g}: a failed training, or a dip of one "
            f"strategy, which the pooled spread does not model; a replay tells which): {beyond}.")
    return "\n".join(lines) + "\n"
