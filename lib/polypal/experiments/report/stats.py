"""The report's statistics: bootstrap CIs over seeds, normalised AULC, paired differences against
Random, labels needed to reach a fraction of the ceiling, and the stability checks.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from polypal.experiments.report.results import METRICS, _order, all_stages, run_meta
from polypal.sampler import REGISTRY


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


def student_t_ci(values, level: float = 0.95):
    """(lower, upper, p): the Student-t interval of the mean of ``values`` and the two-sided one-sample
    t-test's p against 0 (the paired t-test, for paired differences); None for fewer than 2 values.

    A second view beside the bootstrap: with 3-5 seeds the percentile bootstrap is too narrow, the
    t-interval is wider and assumes roughly normal differences. All values equal: a zero-width interval
    and p None (no spread to test with).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    k = len(x)
    if k < 2:
        return None
    m, sem = float(x.mean()), float(np.std(x, ddof=1) / np.sqrt(k))
    if np.ptp(x) == 0:  # not sem == 0: the mean of equal floats can round, leaving a tiny sem and p ~ 1e-30
        return (m, m, None)
    half = float(stats.t.ppf(0.5 + level / 2, k - 1)) * sem
    p = float(2 * stats.t.sf(abs(m) / sem, k - 1))
    return (m - half, m + half, p)


def std_ci(values, level: float = 0.95):
    """(lower, upper): the chi-square interval of the standard deviation of ``values`` (normal data, k - 1
    degrees of freedom); None for fewer than 2 values. With 5 seeds it spans 0.60x to 2.87x the estimate,
    so a std target can rarely be confirmed or refuted with that few."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    k = len(x)
    if k < 2:
        return None
    s, a = float(np.std(x, ddof=1)), (1 - level) / 2
    return (s * float(np.sqrt((k - 1) / stats.chi2.ppf(1 - a, k - 1))),
            s * float(np.sqrt((k - 1) / stats.chi2.ppf(a, k - 1))))


def paired_t_power(n: int, delta: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs whose differences have mean
    ``delta`` and standard deviation ``sd`` (noncentral t)."""
    from scipy import stats

    df, nc = n - 1, delta / (sd / np.sqrt(n))
    tc = stats.t.ppf(1 - alpha / 2, df)
    p = float(stats.nct.sf(tc, df, nc) + stats.nct.cdf(-tc, df, nc))
    return 1.0 if np.isnan(p) else p  # scipy gives NaN far out in the tail (a huge nc), where the power is ~1


def detectable(values, power: float = 0.8, max_seeds: int = 1000) -> dict | None:
    """What these seeds can show: ``mde``, the smallest mean difference a paired t-test (two-sided, 5%) with
    this many seeds detects with ``power``, given the differences' observed sd; and ``seeds_for_mean``, the
    seeds needed to detect the observed mean difference with that power (None beyond ``max_seeds``, or when
    the mean is 0). None for fewer than 2 values or no spread."""
    from scipy.optimize import brentq

    x = np.asarray(values, dtype=np.float64)
    k = len(x)
    if k < 2 or np.ptp(x) == 0:
        return None
    sd, m = float(np.std(x, ddof=1)), abs(float(x.mean()))
    mde = brentq(lambda d: paired_t_power(k, d, sd) - power, 1e-9 * sd, 100 * sd)
    need = None
    if m > 0:
        lo, hi = 2, max_seeds
        if paired_t_power(hi, m, sd) >= power:
            while lo < hi:  # power grows with n: the smallest n that reaches it
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if paired_t_power(mid, m, sd) >= power else (mid + 1, hi)
            need = lo
    return {"power": power, "mde": float(mde), "seeds_for_mean": need}


def normalised_aulc(xs, ys) -> float:
    """Area under the learning curve (trapezoids) divided by the label range: the curve's mean height."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(xs) < 2:
        return float(ys[0])
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / (xs[-1] - xs[0]))


def _curve(recs, metric) -> dict:
    return {r["n_labeled"]: 100 * r["test"][metric] for r in recs}


def _diff_stats(d: dict) -> dict:
    """{seed: difference} -> mean, std, 95% CI, seeds ahead."""
    v = np.array([d[s] for s in sorted(d)])
    ci, t = bootstrap_ci(v), student_t_ci(v)
    return {"mean": float(v.mean()), "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "ci95": list(ci) if ci else None, "t95": list(t[:2]) if t else None, "p_t": t[2] if t else None,
            "ahead": int((v > 0).sum()), "seeds": len(v), "detectable": detectable(v),
            "per_seed": {str(s): float(d[s]) for s in sorted(d)}}


def paired_stats(res: dict, metric: str = "paper_miou", baseline: str = "random") -> dict:
    """Each strategy against the baseline at the same seed: per-stage and normalised-AULC differences (points)."""
    stages = all_stages(res)
    out = {}
    if baseline not in res:
        return out
    base = {s: _curve(recs, metric) for s, recs in res[baseline].items()}
    for strat in _order(res, res):
        if strat == baseline:
            continue
        per_stage = {}
        for n in stages:
            d = {s: _curve(recs, metric)[n] - base[s][n] for s, recs in res[strat].items()
                 if s in base and n in base[s] and n in _curve(recs, metric)}
            if d:
                per_stage[str(n)] = _diff_stats(d)
        pairs = {s: (_curve(recs, metric), base[s]) for s, recs in res[strat].items() if s in base}
        # the stages both curves of a pair have, compared as the label savings are (``_span``): a folder where
        # Random was run to more cycles than the rest had its AULC go blank without a word
        span = _span([set(c) & set(b) for c, b in pairs.values()])
        aulc = {}
        for s, (c, b) in pairs.items():
            if len(span) >= 2 and set(span) <= set(c) and set(span) <= set(b):
                aulc[s] = normalised_aulc(span, [c[n] for n in span]) - normalised_aulc(span, [b[n] for n in span])
        st = _diff_stats(aulc) if aulc else None
        if st is not None and span != stages:
            st["span"] = [span[0], span[-1]]  # labels: the AULC is over these stages only
        out[strat] = {"per_stage": per_stage, "aulc": st}
    return out


def strategy_stats(res: dict, metric: str = "paper_miou") -> dict:
    """Per strategy: mean, std and seed count at each stage, and the normalised AULC of complete runs."""
    stages = all_stages(res)
    out = {}
    for strat in _order(res, res):
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


def labels_to_stay(xs, ys, target: float):
    """Labels from which the curve stays at or above ``target`` to its last stage (interpolated at its last
    crossing); None when it ends below. Equal to ``labels_to_reach`` unless the curve falls back below it:
    where the target lies within the stage-to-stage noise, the first crossing is mostly that noise."""
    if not len(ys) or ys[-1] < target:
        return None
    i = len(ys) - 1
    while i > 0 and ys[i - 1] >= target:
        i -= 1
    return labels_to_reach(xs[i - 1:], ys[i - 1:], target) if i > 0 else float(xs[0])


def _span(curves) -> list[int]:
    """The stages these curves are compared over: every stage when at least half of them have all (the
    others, unfinished, are left out), else the stages all curves with two or more share (one run with an
    extra or another stage made every other run "unfinished": strategies dropped out of the label savings
    without a word)."""
    curves = [set(c) for c in curves]
    every = sorted(set().union(*curves)) if curves else []
    if 2 * sum(set(every) <= c for c in curves) >= len(curves) > 0:
        return every
    shared = [c for c in curves if len(c) >= 2]
    return sorted(set(every).intersection(*shared)) if shared else []


def _mean_curve(curves, span):
    return [float(np.mean([c[n] for c in curves])) for n in span]


def label_savings(res: dict, ceiling: dict | None, fraction: float = 0.95, metric: str = "polyp_dice") -> dict | None:
    """Labels each strategy needs for ``fraction`` of the full-pool ``metric``, on its mean curve, vs Random's.

    Against Random, both mean curves are over the same seeds (the strategy's seeds that Random has too): each
    over its own seeds compared different seed sets (cvc-v3: Random needed 82 labels over seeds 0-4, 99 over
    the 3-seed strategies' seeds 0-2). Beside the first crossing, the labels from which each curve stays
    above the target (``labels_stay``), seeds that reach it at the first stage (before any selection: their
    paired saving is 0 by construction), and the savings against each full-pool seed's own reference."""
    if not ceiling:
        return None
    target = fraction * ceiling[metric]
    refs = {str(s): fraction * v for s, v in zip(ceiling.get("seeds") or [], ceiling.get(metric + "_per_seed") or [])}
    stages = all_stages(res)
    out = {"metric": metric, "fraction": fraction, "target": target, "ceiling": ceiling[metric], "strategies": {},
           "targets_by_ceiling_seed": refs if len(refs) > 1 else None,
           "note": "mean curve over the seeds that finished every stage; against Random, both over the same seeds"}
    rcurves = {s: _curve(r, metric) for s, r in res.get("random", {}).items()}
    rspan = _span(list(rcurves.values()))
    for strat, seeds in res.items():
        curves = {s: _curve(recs, metric) for s, recs in seeds.items()}
        span = _span(list(curves.values()))
        if rcurves and strat != "random" and set(span) - set(rspan):  # compared over the stages both have
            span = sorted(set(span) & set(rspan))
        done = {s: c for s, c in sorted(curves.items()) if len(span) >= 2 and set(span) <= set(c)}
        if not done:
            continue
        ys = _mean_curve(list(done.values()), span)
        per_seed = {str(s): labels_to_reach(span, [c[n] for n in span], target) for s, c in done.items()}
        v = {"labels": labels_to_reach(span, ys, target), "labels_stay": labels_to_stay(span, ys, target),
             "max_labels": span[-1], "seeds": len(done), "per_seed": per_seed,
             "seeds_reaching": sum(x is not None for x in per_seed.values()),
             "first_stage_seeds": sorted(s for s, x in per_seed.items() if x == float(span[0])),
             "saved_vs_random": None, "saved_vs_random_at_least": None, "saved_vs_random_paired": None}
        if span != stages:
            v["span"] = [span[0], span[-1]]
        out["strategies"][strat] = v
        if strat == "random" or not rcurves:
            continue
        both = [s for s in done if s in rcurves and set(span) <= set(rcurves[s])]
        v["paired_seeds"] = [str(s) for s in both]
        if not both:
            continue
        mine, theirs = _mean_curve([done[s] for s in both], span), _mean_curve([rcurves[s] for s in both], span)

        def reach(t, mine=mine, theirs=theirs, span=span):
            """(this strategy's labels, Random's) to reach ``t`` on the same-seed mean curves, and the saving."""
            a, b = labels_to_reach(span, mine, t), labels_to_reach(span, theirs, t)
            return a, b, (None if a is None or b is None else b - a)

        a, b, v["saved_vs_random"] = reach(target)
        v["labels_same_seeds"], v["random_labels_same_seeds"] = a, b
        # Random never got there: the savings are at least (the last stage - these labels)
        v["saved_vs_random_at_least"] = (span[-1] - a) if (b is None and a is not None) else None
        # it never got there, Random did: it costs at least (Random's labels - the last stage)
        v["saved_vs_random_at_most"] = (b - span[-1]) if (a is None and b is not None) else None
        a2, b2 = labels_to_stay(span, mine, target), labels_to_stay(span, theirs, target)
        v["saved_vs_random_stay"] = None if a2 is None or b2 is None else b2 - a2
        if refs and len(refs) > 1:  # the reference's own noise: the saving against each full-pool seed's Dice
            v["saved_vs_random_by_ceiling_seed"] = {k: reach(t)[2] for k, t in refs.items()}
        # the same per seed, paired with Random's run at that seed: the spread behind the mean-curve figure
        # above, which has no uncertainty of its own. A seed that never reaches the target counts as reaching
        # it at the last stage (censored: that flatters it, so a strategy's failed seeds still cost it labels
        # instead of dropping out of the mean); how many seeds were censored is kept beside the numbers.
        last = span[-1]
        rper = {s: labels_to_reach(span, [rcurves[s][n] for n in span], target) for s in both}
        diffs = {s: (rper[s] if rper[s] is not None else last) - (per_seed[str(s)] if per_seed[str(s)] is not None
                                                                   else last) for s in both}
        st = _diff_stats(diffs)
        st["censored_seeds"] = sorted(str(s) for s in both if per_seed[str(s)] is None or rper[s] is None)
        # both at the first stage: 0 by construction, before any selection; the interval without them
        st["first_stage_seeds"] = sorted(str(s) for s in both if per_seed[str(s)] == float(span[0])
                                         and rper[s] == float(span[0]))
        informative = {s: d for s, d in diffs.items() if str(s) not in st["first_stage_seeds"]}
        st["without_first_stage_seeds"] = (_diff_stats(informative) if st["first_stage_seeds"] and
                                           len(informative) >= 2 else None)
        v["saved_vs_random_paired"] = st
    return out


def stability(res: dict, metric: str = "paper_miou", max_drop: float = 3.0, max_std: float = 2.0) -> dict:
    """Issue 11's training-stability targets, checked on the runs present (points of ``metric``)."""
    stages = all_stages(res)
    out: dict = {"metric": metric}
    if "random" in res:
        st = strategy_stats(res, metric)["random"]["stages"]
        stds = {str(n): st[str(n)]["std"] for n in stages[1:] if str(n) in st and st[str(n)]["std"] is not None}
        # each step of the mean curve over the seeds that have both stages, paired by seed (t interval): a seed
        # still running (fewer stages) would otherwise make the mean curve jump between seed sets
        curves = {seed: _curve(recs, metric) for seed, recs in res["random"].items()}
        steps = []
        for a, b in zip(stages, stages[1:]):
            d = [c[b] - c[a] for c in curves.values() if a in c and b in c]
            if d:
                t = student_t_ci(d)
                steps.append({"from": a, "to": b, "mean": float(np.mean(d)), "seeds": len(d),
                              "t95": list(t[:2]) if t else None, "p_t": t[2] if t else None})
        falls = [f"{s['from']}->{s['to']}" for s in steps if s["mean"] <= 0]
        out["random_mean_rises_every_stage"] = not falls
        out["random_mean_falls"] = falls
        out["random_max_seed_std_after_stage0"] = max(stds.values()) if stds else None
        out["random_std_ok"] = (max(stds.values()) <= max_std) if stds else None
        # the std check with its noise: the chi-square interval of the largest std (the largest of several
        # stds is itself biased upwards)
        out["random_steps"] = steps
        if stds:
            n_max = max(stds, key=stds.get)
            vals = [c[int(n_max)] for c in curves.values() if int(n_max) in c]
            ci = std_ci(vals)
            out["random_max_std_stage"] = int(n_max)
            out["random_max_std_ci95"] = list(ci) if ci else None
            out["random_max_std_seeds"] = len(vals)
    drops = []
    for strat, seeds in res.items():
        for seed, recs in seeds.items():
            c = sorted(_curve(recs, metric).items())
            for (a, ya), (b, yb) in zip(c, c[1:]):
                if ya - yb > max_drop:
                    drops.append({"strategy": strat, "seed": seed, "from": a, "to": b, "drop": ya - yb})
    out["drops_over_threshold"] = drops
    out["threshold"], out["std_target"] = max_drop, max_std
    out["drops_from_noise"] = drop_noise(res, metric, max_drop)
    return out


def drop_noise(res: dict, metric: str = "paper_miou", max_drop: float = 3.0, min_runs: int = 8,
               outlier_z: float = 4.0) -> dict | None:
    """How many drops over ``max_drop`` ordinary stage-to-stage noise alone would give, against those seen.

    Each step (one stage to the next) is taken over every run that has both stages, all strategies pooled.
    Its centre and spread are the median and the MAD (x 1.4826), which one failed training cannot inflate;
    a normal with them gives each run's chance of dropping more than ``max_drop`` at that step. Summed over
    the runs: the drops, and the runs with at least one, that noise alone predicts (steps taken as
    independent, an approximation: neighbouring steps share a stage). A drop over ``max_drop`` whose robust
    z is under ``-outlier_z`` (or any such drop where the spread is 0) is beyond that noise: a failed
    training, or a step that belongs to one strategy (the spread pools them); a replay tells which
    (benchmarks/replay_stage.py). Steps with fewer than ``min_runs`` runs (too few for a spread) are left out
    and listed in ``thin_steps``; observed counts cover the estimated steps only. None when no step has enough."""
    from scipy import stats as sstats

    by_step: dict = defaultdict(list)
    for strat, seeds in res.items():
        for seed, recs in seeds.items():
            c = sorted(_curve(recs, metric).items())
            for (a, ya), (b, yb) in zip(c, c[1:]):
                by_step[(a, b)].append((strat, seed, yb - ya))
    thin = [{"from": a, "to": b, "runs": len(v)} for (a, b), v in sorted(by_step.items()) if len(v) < min_runs]
    by_step = {k: v for k, v in by_step.items() if len(v) >= min_runs}
    if not by_step:
        return None
    steps, outliers = [], []
    p_none: dict = defaultdict(lambda: 1.0)  # per run: the chance that noise gives it no drop at all
    expected = 0.0
    for (a, b), rows in sorted(by_step.items()):
        d = np.array([r[2] for r in rows])
        med = float(np.median(d))
        sd = float(1.4826 * np.median(np.abs(d - med)))
        p = float(sstats.norm.cdf((-max_drop - med) / sd)) if sd > 0 else float(-max_drop > med)
        expected += p * len(d)
        for strat, seed, x in rows:
            p_none[(strat, seed)] *= 1.0 - p
            z = (x - med) / sd if sd > 0 else None
            if x < -max_drop and (z is None or z < -outlier_z):
                outliers.append({"strategy": strat, "seed": seed, "from": a, "to": b, "drop": -x, "z": z})
        steps.append({"from": a, "to": b, "runs": len(d), "median": med, "robust_sd": sd,
                      "p_drop": p, "observed": int((d < -max_drop).sum())})
    return {"steps": steps, "thin_steps": thin, "expected_drops": expected,
            "expected_runs_dropping": float(sum(1.0 - q for q in p_none.values())),
            "observed_drops": sum(s["observed"] for s in steps), "runs": len(p_none),
            "observed_runs_dropping": len({(r[0], r[1]) for rows in by_step.values() for r in rows if r[2] < -max_drop}),
            "outliers": outliers, "outlier_z": outlier_z, "threshold": max_drop}


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


def gamma_sweep(res: dict, metric: str = "paper_miou") -> dict:
    """Algorithm 1 across gamma (0 = TA-Coreset, 1 = Uncertainty, the mean-BvSB variants): per queried stage,
    {"gammas", "means", "ci95", "seeds"} in points, or {} with fewer than two gamma values.

    Each stage uses only the seeds that every gamma has there, so one line compares the same initial labeled
    sets (a partial queue would otherwise set 5 seeds at one gamma beside 1 at another).
    """
    gam = {}
    meta = run_meta(res)
    for label, (base, gamma, agg) in meta.items():
        if base in REGISTRY and REGISTRY[base].uses_gamma and agg == "mean":
            gam[gamma] = label
    for label, (base, gamma, agg) in meta.items():
        if base == "ta_coreset" or (base == "uncertainty" and agg == "mean"):
            gam.setdefault(0.0 if base == "ta_coreset" else 1.0, label)
    if len(gam) < 2:
        return {}
    val = {g: {(r["n_labeled"], s): 100 * r["test"][metric] for s, recs in res[label].items() for r in recs}
           for g, label in gam.items()}
    out = {}
    stages = sorted({n for v in val.values() for n, _ in v})
    for st in stages[1:]:
        gs = sorted(g for g in gam if any(n == st for n, _ in val[g]))
        if len(gs) < 2:
            continue
        common = sorted(set.intersection(*({s for n, s in val[g] if n == st} for g in gs)))
        if not common:
            continue
        ys = [[val[g][(st, s)] for s in common] for g in gs]
        means = [float(np.mean(y)) for y in ys]
        out[st] = {"gammas": gs, "means": means, "seeds": common,
                   "ci95": [list(bootstrap_ci(y) or (mu, mu)) for y, mu in zip(ys, means)]}
    return out
