"""The report's statistics against hand-computed values, summary.json, the smoke warning, and the new recipe."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from polypal.experiments.cli import main
from polypal.experiments.report import bootstrap_ci, make_report, student_t_ci

REPO = Path(__file__).resolve().parents[1]

STAGES = [40, 80, 120]
# paper_miou and polyp_dice (fractions) per strategy, seed, stage: small hand-made numbers
MIOU = {
    "random": {0: [0.50, 0.60, 0.70], 1: [0.52, 0.58, 0.66], 2: [0.48, 0.62, 0.68], 3: [0.51, 0.57, 0.71]},
    "unc_ta_coreset@g0.5": {0: [0.50, 0.63, 0.72], 1: [0.52, 0.57, 0.70], 2: [0.48, 0.66, 0.69], 3: [0.51, 0.61, 0.75]},
}
DICE = {
    "random": {0: [0.30, 0.50, 0.60], 1: [0.32, 0.46, 0.62], 2: [0.28, 0.54, 0.58], 3: [0.30, 0.50, 0.64]},
    "unc_ta_coreset@g0.5": {0: [0.30, 0.56, 0.66], 1: [0.32, 0.52, 0.64], 2: [0.28, 0.60, 0.62], 3: [0.30, 0.56, 0.68]},
}
CEILING_DICE = [0.64, 0.66]  # two ceiling seeds: mean 0.65


def write_folder(root: Path, profile: str = "cpu-lite") -> Path:
    (root / "runs").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"dataset": "cvc", "data": "/nonexistent", "profile": {"name": profile},
                                               "protocol": [40, 40, 2]}))
    for strat in MIOU:
        base = "unc_ta_coreset" if strat.startswith("unc") else strat
        for seed in MIOU[strat]:
            lines = []
            for k, n in enumerate(STAGES):
                m, d = MIOU[strat][seed][k], DICE[strat][seed][k]
                lines.append(json.dumps({"strategy": strat, "base": base, "seed": seed, "stage": k, "n_labeled": n,
                                         "profile": profile, "test": {"paper_miou": m, "polyp_dice": d, "polyp_iou": d / 2},
                                         "labeled": [], "selected": [], "picked_by": [], "notes": []}))
            (root / "runs" / f"{strat}-seed{seed}.jsonl").write_text("\n".join(lines) + "\n")
    (root / "ceiling.jsonl").write_text("".join(
        json.dumps({"kind": "ceiling", "seed": s, "n_labeled": 300, "profile": profile,
                    "test": {"paper_miou": 0.8, "polyp_dice": d, "polyp_iou": d / 2}}) + "\n"
        for s, d in enumerate(CEILING_DICE)))
    return root


def brute_ci(values, level=0.95):
    """Percentile bootstrap by brute force: all k^k equally likely index tuples, inverse-CDF quantiles."""
    k = len(values)
    means = sorted(sum(values[i] for i in t) / k for t in itertools.product(range(k), repeat=k))
    n = len(means)
    a = (1 - level) / 2
    return means[math.ceil(a * n) - 1], means[math.ceil((1 - a) * n) - 1]


def test_bootstrap_ci_matches_brute_force():
    for vals in ([1.0, 2.0, 4.0], [3.0, -1.0, 0.5, 2.5], [0.1, 0.4, -0.3, 0.9, 0.2]):
        lo, hi = bootstrap_ci(vals)
        blo, bhi = brute_ci(vals)
        assert lo == pytest.approx(blo, abs=1e-12) and hi == pytest.approx(bhi, abs=1e-12)
    assert bootstrap_ci([1.0]) is None
    assert student_t_ci([1.0]) is None and student_t_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, None)
    lo, hi, p = student_t_ci([0.1] * 3)  # the mean of equal floats rounds: still no spread, no p
    assert p is None and lo == hi
    # the Monte Carlo branch is seeded: the same call gives the same bounds
    vals = list(np.linspace(-1, 2, 12))
    assert bootstrap_ci(vals) == bootstrap_ci(vals)
    lo, hi = bootstrap_ci(vals)
    assert lo < np.mean(vals) < hi


def test_report_statistics_equal_hand_computed_values(tmp_path):
    folder = write_folder(tmp_path / "res")
    made = make_report(folder, paper="none")
    summ = json.loads((folder / "report" / "summary.json").read_text())
    assert folder / "report" / "summary.json" in made and (folder / "report" / "aulc_diff.png").stat().st_size > 1000
    assert summ["smoke"] is False and summ["stages"] == STAGES
    strat = "unc_ta_coreset@g0.5"
    vs = summ["metrics"]["paper_miou"]["vs_random"][strat]

    # per-stage difference at 80 labels, by hand: seeds 0-3 -> +3, -1, +4, +4 points
    d80 = [100 * (MIOU[strat][s][1] - MIOU["random"][s][1]) for s in range(4)]
    assert d80 == pytest.approx([3, -1, 4, 4])
    st = vs["per_stage"]["80"]
    assert st["mean"] == pytest.approx(2.5) and st["ahead"] == 3 and st["seeds"] == 4
    # 4^4 = 256 resamples: the 2.5% quantile is the 7th smallest mean, the 97.5% the 250th
    lo, hi = brute_ci(d80)
    assert st["ci95"] == pytest.approx([lo, hi])
    assert (lo, hi) == pytest.approx((0.25, 4.0))  # worked out by hand in test_ci_lower_bound_by_hand
    # stage 40 is the same initial set: difference 0 everywhere, 0 seeds ahead
    assert vs["per_stage"]["40"]["mean"] == 0 and vs["per_stage"]["40"]["ahead"] == 0

    # normalised AULC over 40-120 labels: trapezoids / 80 labels
    def aulc(y):
        return ((y[0] + y[1]) / 2 * 40 + (y[1] + y[2]) / 2 * 40) / 80

    da = [100 * (aulc(MIOU[strat][s]) - aulc(MIOU["random"][s])) for s in range(4)]
    # seed 0: ((0+3)/2 + (3+2)/2)/2 = 2.0; seed 1: ((0-1)/2 + (-1+4)/2)/2 = 0.5; seed 2: ((0+4)/2+(4+1)/2)/2 = 2.25;
    # seed 3: ((0+4)/2 + (4+4)/2)/2 = 3.0
    assert da == pytest.approx([2.0, 0.5, 2.25, 3.0])
    a = vs["aulc"]
    assert a["mean"] == pytest.approx(np.mean(da)) and a["ahead"] == 4 and a["seeds"] == 4
    assert a["std"] == pytest.approx(np.std(da, ddof=1))
    assert a["ci95"] == pytest.approx(list(brute_ci(da)))
    assert a["per_seed"] == pytest.approx({str(s): v for s, v in enumerate(da)})
    # the Student-t view: mean 1.9375, sd sqrt(3.296875 / 3), t(0.975, 3 df) = 3.182446 (printed tables)
    sem = np.sqrt(3.296875 / 3) / 2
    assert a["t95"] == pytest.approx([1.9375 - 3.182446 * sem, 1.9375 + 3.182446 * sem], abs=1e-5)
    # p of t = 1.9375 / sem on 3 df, from the closed-form CDF of Student's t with 3 degrees of freedom:
    # F(t) = 1/2 + (theta + sin(theta) cos(theta)) / pi, theta = atan(t / sqrt(3))
    th = np.arctan(1.9375 / sem / np.sqrt(3))
    assert a["p_t"] == pytest.approx(2 * (0.5 - (th + np.sin(th) * np.cos(th)) / np.pi), rel=1e-9)
    assert 0.03 < a["p_t"] < 0.04

    # ceiling and label savings on polyp Dice: target 0.95 * 65 = 61.75
    assert summ["ceiling"]["polyp_dice"] == pytest.approx(65.0) and summ["ceiling"]["seeds"] == [0, 1]
    # Random at 120 labels: mean Dice (60+62+58+64)/4 = 61 -> 61/65 of the ceiling
    assert summ["random_last_stage_fraction_of_ceiling"]["polyp_dice"] == pytest.approx(61 / 65)
    ls = summ["label_savings"]
    assert ls["target"] == pytest.approx(61.75)
    # random's mean curve: 30, 50, 61 -> never reaches 61.75 by 120 labels
    assert ls["strategies"]["random"]["labels"] is None
    # unc_ta's mean curve: 30, 56, 65 -> crosses between 80 and 120: 80 + (61.75 - 56) / (65 - 56) * 40
    assert ls["strategies"][strat]["labels"] == pytest.approx(80 + (61.75 - 56) / 9 * 40)
    # per seed, each run's own curve (Dice): random s0 30,50,60 and s2 28,54,58 never reach 61.75;
    # s1 32,46,62 -> 80 + 15.75/16*40; s3 30,50,64 -> 80 + 11.75/14*40. unc_ta: s0 30,56,66 -> 80 + 5.75/10*40,
    # s1 32,52,64 -> 80 + 9.75/12*40, s2 28,60,62 -> 80 + 1.75/2*40, s3 30,56,68 -> 80 + 5.75/12*40
    r_seed = {"0": None, "1": 80 + 15.75 / 16 * 40, "2": None, "3": 80 + 11.75 / 14 * 40}
    u_seed = {"0": 103.0, "1": 112.5, "2": 115.0, "3": 80 + 5.75 / 12 * 40}
    assert ls["strategies"]["random"]["per_seed"] == pytest.approx(r_seed)
    assert ls["strategies"]["random"]["seeds_reaching"] == 2
    assert ls["strategies"][strat]["per_seed"] == pytest.approx(u_seed)
    # paired saving: Random's labels minus unc_ta's at each seed; a seed that never reaches counts as 120
    saved = [120 - 103.0, r_seed["1"] - 112.5, 120 - 115.0, r_seed["3"] - u_seed["3"]]
    ps = ls["strategies"][strat]["saved_vs_random_paired"]
    assert ps["per_seed"] == pytest.approx({str(k): v for k, v in enumerate(saved)})
    assert ps["mean"] == pytest.approx(np.mean(saved)) and ps["ahead"] == 4 and ps["censored_seeds"] == ["0", "2"]
    assert ps["ci95"] == pytest.approx(list(brute_ci(saved)))
    assert ls["strategies"]["random"]["saved_vs_random_paired"] is None
    # stability: random's means rise (50.25, 59.25, 68.75); its largest std after stage 0 is at 80 or 120 labels
    stab = summ["stability"]
    assert stab["random_mean_rises_every_stage"] is True
    assert stab["random_max_seed_std_after_stage0"] == pytest.approx(max(
        np.std([100 * MIOU["random"][s][k] for s in range(4)], ddof=1) for k in (1, 2)))
    assert stab["drops_over_threshold"] == []
    tables = (folder / "report" / "tables.md").read_text()
    from polypal.experiments.report.stats import detectable

    det = detectable(list(a["per_seed"].values()))
    assert a["detectable"] == pytest.approx(det)
    assert f"- {strat}: 4 seeds detect a difference of {det['mde']:.2f} points or more" in tables
    assert "95% bootstrap" in tables and "not reached by 120" in tables and "SMOKE" not in tables
    assert f"[{a['t95'][0]:+.2f}, {a['t95'][1]:+.2f}] p=0.03" in tables
    # the summary table (the README's): one row, the AULC means, CIs and the paired label saving from above
    summary = tables.split("## Summary: every strategy against Random")[1].split("## Against Random")[0]
    row = next(line for line in summary.splitlines() if line.startswith(f"| {strat} |"))
    assert row.startswith(f"| {strat} | 4 | {a['mean']:+.2f} [{a['ci95'][0]:+.2f}, {a['ci95'][1]:+.2f}] |"), row
    assert f"| 4/4 | {ps['mean']:+.0f} [{ps['ci95'][0]:+.0f}, {ps['ci95'][1]:+.0f}] (2 censored) |" in row, row


def _recs(curve: dict) -> list:
    return [{"n_labeled": n, "test": {"paper_miou": v / 100, "polyp_dice": v / 100, "polyp_iou": v / 200}}
            for n, v in curve.items()]


def test_stability_flags_drops_and_falls_by_hand():
    from polypal.experiments.report.stats import stability

    res = {"random": {0: _recs({40: 60.0, 80: 64.0, 120: 63.0}), 1: _recs({40: 62.0, 80: 66.0, 120: 66.5})},
           "uncertainty": {0: _recs({40: 60.0, 80: 66.0, 120: 62.9}), 1: _recs({40: 62.0, 80: 65.0, 120: 62.0})}}
    st = stability(res)
    # Random's means: 61, 65, 64.75 -> falls from 80 to 120; stds after stage 0: sqrt(2) at 80, 3.5/sqrt(2) at 120
    assert st["random_mean_rises_every_stage"] is False and st["random_mean_falls"] == ["80->120"]
    assert st["random_max_seed_std_after_stage0"] == pytest.approx(3.5 / np.sqrt(2)) and st["random_std_ok"] is False
    # drops over 3 points: uncertainty seed 0 80->120 (3.1); seed 1 drops exactly 3.0 (not over); Random's 1.0 not
    assert [(d["strategy"], d["seed"], d["from"], d["to"]) for d in st["drops_over_threshold"]] == \
        [("uncertainty", 0, 80, 120)]
    assert st["drops_over_threshold"][0]["drop"] == pytest.approx(3.1)
    # the steps of Random's mean paired by seed: 40->80 +4 and +4 (no spread: a zero-width interval, no p);
    # 80->120 -1 and +0.5: mean -0.25, sd 1.5/sqrt(2), sem 0.75, t(0.975, 1 df) = 12.706 -> -0.25 -+ 9.53
    s1, s2 = st["random_steps"]
    assert (s1["from"], s1["to"], s1["mean"], s1["t95"], s1["p_t"], s1["seeds"]) == (40, 80, 4.0, [4.0, 4.0], None, 2)
    assert s2["mean"] == pytest.approx(-0.25) and s2["t95"] == pytest.approx([-0.25 - 12.7062 * 0.75, -0.25 + 12.7062 * 0.75],
                                                                             abs=1e-3)
    # the largest std (120 labels, s = 3.5/sqrt(2), 1 df): s * sqrt(1 / chi2) with chi2(0.975, 1) = 5.02389 and
    # chi2(0.025, 1) = 0.000982069 (table values)
    s = 3.5 / np.sqrt(2)
    assert st["random_max_std_stage"] == 120 and st["random_max_std_seeds"] == 2
    assert st["random_max_std_ci95"] == pytest.approx([s / np.sqrt(5.02389), s / np.sqrt(0.000982069)], rel=1e-4)
    from polypal.experiments.report.tables import _stability_md

    md = _stability_md(res)
    assert "80->120: -0.25, paired t interval [-9.78, +9.28] over 2 seeds, within noise" in md, md
    assert "2.47 points at 120 labels; 95% chi-square interval 1.10 to 78.97 over 2 seeds (target at most 2: not met " \
           "by the estimate; the interval holds 2, so these seeds cannot tell)" in md, md


def test_a_seed_still_running_does_not_bend_randoms_mean_curve():
    """The rise check compares each stage with the next over the seeds that have both: a seed that has only
    its first stage so far (high, 80) would make the mean of all seeds fall from 40 to 80 labels."""
    from polypal.experiments.report.stats import stability

    res = {"random": {0: _recs({40: 60.0, 80: 64.0, 120: 64.0}), 1: _recs({40: 62.0, 80: 66.0, 120: 65.0}),
                      2: _recs({40: 80.0})}}
    st = stability(res)
    # means over the seeds present: 67.33, 65, 64.5 (a fall 40->80); paired steps: +4 (2 seeds), -0.5 (2 seeds)
    assert st["random_mean_falls"] == ["80->120"] and st["random_steps"][0]["seeds"] == 2


def test_std_interval_with_five_seeds_by_hand():
    from polypal.experiments.report.stats import std_ci

    # values 1..5: s = sqrt(2.5); chi2(0.975, 4) = 11.1433, chi2(0.025, 4) = 0.484419 (table values)
    lo, hi = std_ci([1, 2, 3, 4, 5])
    assert lo == pytest.approx(np.sqrt(2.5 * 4 / 11.1433), rel=1e-4) and hi == pytest.approx(np.sqrt(2.5 * 4 / 0.484419), rel=1e-4)
    assert std_ci([3.0]) is None


def test_ci_lower_bound_by_hand():
    # d = (3, -1, 4, 4): sorted resample means; the 7th smallest of 256 is reached by resamples with
    # three -1s and one 3 or 4 (means 0.0, 0.25): P(mean <= -1) = 1/256, P(<= 0) = 1 + 4 (three -1s and a 3)
    # = 5/256, P(<= 0.25) = 5 + 8 (three -1s and a 4: 4 orders x 2 fours) = 13/256 >= 6.4/256 -> 0.25
    lo, hi = bootstrap_ci([3.0, -1.0, 4.0, 4.0])
    assert lo == pytest.approx(0.25)
    # upper: P(mean >= 4) = (2/4)^4 = 16/256; 97.5% quantile sits inside that top block -> 4.0
    assert hi == pytest.approx(4.0)


def test_smoke_report_says_numbers_mean_nothing(tmp_path, capsys):
    folder = write_folder(tmp_path / "res", profile="smoke")
    assert main(["report", str(folder), "--paper", "none"]) == 0
    out = capsys.readouterr().out
    assert "SMOKE PROFILE: these numbers mean nothing" in out
    summ = json.loads((folder / "report" / "summary.json").read_text())
    assert summ["smoke"] is True and "mean nothing" in summ["warning"]
    assert "SMOKE PROFILE" in (folder / "report" / "tables.md").read_text()


def test_new_recipe_trains_and_beats_an_untrained_model():
    """cpu-lite's recipe (lr, endoscopy augmentation, EMA of the weights returned) at smoke sizes (64 px, 300 steps) on
    16 real Kvasir-SEG frames (4 for validation), tested on the other 10."""
    from polypal.data import load_folder
    from polypal.learner import PolypUNet, evaluate, get_profile, predict, train

    torch.set_num_threads(1)
    fs = load_folder(REPO / "sample-datasets" / "kvasir-seg-mini", 64)
    tr_i, va_i, te_i = np.arange(0, 16), np.arange(16, 20), np.arange(20, 30)
    prof = get_profile("cpu-lite", size=64, min_steps=300, max_steps=300, val_every=100)
    assert prof.select == "ema" and prof.ema > 0 and prof.augment == "endo"
    res = train(prof, fs.images[tr_i], fs.masks[tr_i], fs.images[va_i], fs.masks[va_i], seed=0, device="cpu")
    trained = evaluate(predict(res.model, fs.images[te_i]).probs, fs.masks[te_i])
    torch.manual_seed(0)
    untrained = evaluate(predict(PolypUNet.from_profile(prof), fs.images[te_i]).probs, fs.masks[te_i])
    assert trained["polyp_dice"] > untrained["polyp_dice"] + 0.1
    assert trained["paper_miou"] > untrained["paper_miou"] + 0.1


def test_gamma_sweep_compares_only_the_seeds_every_gamma_has():
    from polypal.experiments.report.stats import gamma_sweep

    def run(label, base, gamma, seed, mious):
        return [{"strategy": label, "base": base, "gamma": gamma, "aggregation": "mean", "seed": seed,
                 "stage": i, "n_labeled": 40 * (i + 1), "test": {"paper_miou": m}} for i, m in enumerate(mious)]

    res = {"unc_ta_coreset@g0.5": {s: run("unc_ta_coreset@g0.5", "unc_ta_coreset", 0.5, s, [0.5, 0.6 + 0.01 * s])
                                   for s in range(5)},
           # uncertainty: seed 0 finished both stages, seed 1 only the first
           "uncertainty": {0: run("uncertainty", "uncertainty", 0.5, 0, [0.5, 0.7]),
                           1: run("uncertainty", "uncertainty", 0.5, 1, [0.52])}}
    sw = gamma_sweep(res)
    assert list(sw) == [80]  # stage 0 (the shared initial set) is not a point of the sweep
    p = sw[80]
    assert p["gammas"] == [0.5, 1.0] and p["seeds"] == [0]  # not the mean over 5 seeds at gamma 0.5
    assert p["means"] == pytest.approx([60.0, 70.0]) and np.allclose(p["ci95"], [[60.0, 60.0], [70.0, 70.0]])
    # one gamma only: no sweep
    assert gamma_sweep({"unc_ta_coreset@g0.5": res["unc_ta_coreset@g0.5"]}) == {}
    # both complete at seeds 0-1: both seeds, bootstrap CI over them
    res["uncertainty"][1] = run("uncertainty", "uncertainty", 0.5, 1, [0.52, 0.74])
    p = gamma_sweep(res)[80]
    assert p["seeds"] == [0, 1] and p["means"] == pytest.approx([60.5, 72.0])
    assert p["ci95"][1] == pytest.approx([70.0, 74.0])


def _mc_power(n, delta, sd, draws=200_000, seed=0):
    """The paired t-test's power by simulation (two-sided 5%): independent of the noncentral-t code."""
    from scipy import stats

    x = np.random.default_rng(seed).normal(delta, sd, (draws, n))
    t = x.mean(1) / (x.std(1, ddof=1) / np.sqrt(n))
    return float((np.abs(t) > stats.t.ppf(0.975, n - 1)).mean())


def test_detectable_differences_match_a_simulation():
    from polypal.experiments.report.stats import detectable

    v = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sd sqrt(2.5)
    d = detectable(v)
    sd = np.sqrt(2.5)
    # a paired t-test with 5 seeds finds a true difference of `mde` 4 times in 5
    assert _mc_power(5, d["mde"], sd) == pytest.approx(0.8, abs=0.005)
    # the observed mean (3) needs 5 seeds: 4 are not enough, 5 are
    assert d["seeds_for_mean"] == 5 and _mc_power(4, 3.0, sd) < 0.79 and _mc_power(5, 3.0, sd) >= 0.79
    # a mean near 0 against this spread: beyond 1000 seeds; no spread or one seed: nothing to say
    assert detectable([0.5, -0.5, 0.1])["seeds_for_mean"] is None
    assert detectable([1.0, 1.0, 1.0]) is None and detectable([2.0]) is None


def test_the_ceiling_trains_its_epochs_not_the_stage_cap(tmp_path):
    """The full-pool model trains the profile's epochs without the per-stage step cap (a capped full pool
    trained fewer epochs than the stages under it and sat below them: cpu-lite v3 on CVC); the record keeps
    the runs' recipe and says `uncapped`; the report prefers uncapped records over capped ones from before."""
    from polypal.data import load_folder
    from polypal.experiments.ceiling import full_pool_ceiling
    from polypal.experiments.report.results import load_ceiling
    from polypal.experiments.simulate import recipe_hash
    from polypal.learner import get_profile

    fs = load_folder(REPO / "sample-datasets" / "kvasir-seg-mini", 32)
    pool, val, test = fs.subset(np.arange(0, 20)), fs.subset(np.arange(20, 25)), fs.subset(np.arange(25, 30))
    prof = get_profile("smoke", epochs=3, max_steps=4)  # a stage of 20 frames would train 4 steps
    assert prof.steps_for(20) == 4
    out = tmp_path / "ceiling.jsonl"
    capped = {"kind": "ceiling", "seed": 1, "n_labeled": 20, "profile": "smoke", "recipe": recipe_hash(prof),
              "test": {"paper_miou": 0.1, "polyp_iou": 0.1, "polyp_dice": 0.1}, "steps": 4}
    out.write_text(json.dumps(capped) + "\n")
    assert load_ceiling(tmp_path)["polyp_dice"] == pytest.approx(10.0) and not load_ceiling(tmp_path)["uncapped"]
    rec = full_pool_ceiling(pool, val, test, prof, 0, out)
    assert rec["steps"] == 3 * 5 and rec["uncapped"] and rec["recipe"] == recipe_hash(prof)
    assert full_pool_ceiling(pool, val, test, prof, 0, out) == rec and len(out.read_text().splitlines()) == 2
    c = load_ceiling(tmp_path)
    assert c["seeds"] == [0] and c["uncapped"] and c["steps"] == [15]
    assert c["polyp_dice"] == pytest.approx(100 * rec["test"]["polyp_dice"])


def test_the_report_ignores_a_ceiling_of_another_recipe(tmp_path):
    """A full-pool record trained with another recipe than the runs is no ceiling for them: the report leaves
    it out (and says nothing about a ceiling rather than measure the runs against the wrong one)."""
    folder = write_folder(tmp_path / "res")
    for f in (folder / "runs").glob("*.jsonl"):
        f.write_text("".join(json.dumps({**json.loads(l), "recipe": "aaaaaaaaaa"}) + "\n"
                             for l in f.read_text().splitlines()))
    ceil = [json.loads(l) for l in (folder / "ceiling.jsonl").read_text().splitlines()]
    # seed 0 with the runs' recipe (Dice 0.64), seed 1 with another one (0.66)
    (folder / "ceiling.jsonl").write_text(json.dumps({**ceil[0], "recipe": "aaaaaaaaaa"}) + "\n"
                                          + json.dumps({**ceil[1], "recipe": "bbbbbbbbbb"}) + "\n")
    make_report(folder, paper="none")
    summ = json.loads((folder / "report" / "summary.json").read_text())
    assert summ["ceiling"]["seeds"] == [0] and summ["ceiling"]["polyp_dice"] == pytest.approx(64.0)
    assert summ["ceiling_records_of_another_recipe"] == 1
    assert "1 full-pool record(s) in ceiling.jsonl were trained with another recipe" in \
        (folder / "report" / "tables.md").read_text()
    (folder / "ceiling.jsonl").write_text(json.dumps({**ceil[1], "recipe": "bbbbbbbbbb"}) + "\n")
    make_report(folder, paper="none")
    summ = json.loads((folder / "report" / "summary.json").read_text())
    tables = (folder / "report" / "tables.md").read_text()
    assert summ["ceiling"] is None and "Full pool" not in tables and "no ceiling for these runs" in tables
    # runs from before fingerprints: any ceiling stands beside them
    for f in (folder / "runs").glob("*.jsonl"):
        f.write_text("".join(json.dumps({k: v for k, v in json.loads(l).items() if k != "recipe"}) + "\n"
                             for l in f.read_text().splitlines()))
    make_report(folder, paper="none")
    summ = json.loads((folder / "report" / "summary.json").read_text())
    assert summ["ceiling"]["polyp_dice"] == pytest.approx(66.0) and summ["ceiling_records_of_another_recipe"] == 0


def test_drops_expected_from_noise_by_hand():
    """The drops that stage-to-stage noise alone would give: median and MAD spread of each step over all
    runs (strategies pooled), normal tails; a drop far outside that spread is named as beyond the noise."""
    from polypal.experiments.report.stats import drop_noise, stability
    from polypal.experiments.report.tables import _stability_md

    step1 = [-10, -4, -1, 0, 0, 1, 1, 2, 3]   # median 0; |dev| sorted 0,0,1,1,1,2,3,4,10: MAD 1
    step2 = [-1, 0, 0, 1, 1, 1, 2, 2, 3]      # median 1; |dev| sorted 0,0,0,1,1,1,1,2,2: MAD 1
    runs = {}
    for k, (a, b) in enumerate(zip(step1, step2)):
        runs[k] = _recs({40: 60.0, 80: 60.0 + a, 120: 60.0 + a + b})
    res = {"random": {k: runs[k] for k in range(5)}, "uncertainty": {k - 5: runs[k] for k in range(5, 9)}}
    dn = drop_noise(res)
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    sd = 1.4826
    p1, p2 = phi(-3 / sd), phi((-3 - 1) / sd)
    assert [(s["from"], s["to"], s["runs"], s["observed"]) for s in dn["steps"]] == [(40, 80, 9, 2), (80, 120, 9, 0)]
    assert dn["steps"][0]["median"] == pytest.approx(0) and dn["steps"][1]["median"] == pytest.approx(1)
    assert [s["robust_sd"] for s in dn["steps"]] == pytest.approx([sd, sd])
    assert dn["steps"][0]["p_drop"] == pytest.approx(p1, rel=1e-6) and dn["steps"][1]["p_drop"] == pytest.approx(p2, rel=1e-6)
    assert dn["expected_drops"] == pytest.approx(9 * (p1 + p2), rel=1e-6)
    assert dn["expected_runs_dropping"] == pytest.approx(9 * (1 - (1 - p1) * (1 - p2)), rel=1e-6)
    assert (dn["observed_drops"], dn["observed_runs_dropping"], dn["runs"]) == (2, 2, 9)
    # -10 is 6.7 spreads under the median: beyond the noise; -4 (z -2.7) is an ordinary drop
    assert [(o["strategy"], o["seed"], o["from"], o["to"]) for o in dn["outliers"]] == [("random", 0, 40, 80)]
    assert dn["outliers"][0]["z"] == pytest.approx(-10 / sd, rel=1e-6)
    assert stability(res)["drops_from_noise"] == dn
    md = _stability_md(res)
    assert f"{9 * (p1 + p2):.1f} drops in {9 * (1 - (1 - p1) * (1 - p2)):.1f} runs, against 2 in 2 seen" in md, md
    assert "random seed 0 40->80 (-10.0, z -6.7)" in md, md
    # too few runs at every step for a spread: no estimate, and no line
    few = {"random": {k: runs[k] for k in range(7)}}
    assert drop_noise(few) is None and "noise alone" not in _stability_md(few)
    # one run extended by a stage: that thin step is left out and named, the others still estimated
    longer = {"random": dict(res["random"]), "uncertainty": res["uncertainty"]}
    longer["random"][0] = _recs({40: 60.0, 80: 50.0, 120: 50.0, 160: 40.0})
    dn2 = drop_noise(longer)
    assert [(s["from"], s["to"]) for s in dn2["steps"]] == [(40, 80), (80, 120)]
    assert dn2["thin_steps"] == [{"from": 120, "to": 160, "runs": 1}] and dn2["observed_drops"] == 2
    assert "left out, too few runs for a spread: 120->160 (1)" in _stability_md(longer)
    # an outlier is a drop: a step far under the median that still rises is not one
    rises = {"random": {k: _recs({40: 60.0, 80: 65.0 + k % 3 * 0.1}) for k in range(9)}}
    rises["random"][8] = _recs({40: 60.0, 80: 60.5})  # +0.5 against a median of +5.1: z about -31, no drop
    assert drop_noise(rises)["outliers"] == []
    # a step with no spread (most runs tied): a drop over 3 there is named beyond the noise, without a z
    tied = {"random": {k: _recs({40: 60.0, 80: 61.0}) for k in range(8)}}
    tied["random"][8] = _recs({40: 60.0, 80: 40.0})
    dn3 = drop_noise(tied)
    assert dn3["steps"][0]["robust_sd"] == 0 and dn3["expected_drops"] == 0
    assert [(o["seed"], o["z"]) for o in dn3["outliers"]] == [(8, None)]
    assert "random seed 8 40->80 (-20.0, a step with no spread)" in _stability_md(tied)
    json.dumps(dn3, allow_nan=False)  # summary.json stays valid JSON


def test_random_run_to_more_stages_keeps_the_aulc_over_the_shared_ones(tmp_path):
    """Random extended with more --cycles and the other strategy not: the summary's AULC row went blank with no
    word (every pair had to run every stage of the folder; a walkthrough, 2026-12-07). Now, when no pair
    has them all, the AULC is over the stages every pair shares, and the table says so."""
    folder = write_folder(tmp_path / "res")
    for seed in MIOU["random"]:
        f = folder / "runs" / f"random-seed{seed}.jsonl"
        last = json.loads(f.read_text().splitlines()[-1])
        f.write_text(f.read_text() + json.dumps({**last, "stage": 3, "n_labeled": 160}) + "\n")
    make_report(folder, paper="none")
    summ = json.loads((folder / "report" / "summary.json").read_text())
    a = summ["metrics"]["paper_miou"]["vs_random"]["unc_ta_coreset@g0.5"]["aulc"]

    def aulc(y):
        return ((y[0] + y[1]) / 2 * 40 + (y[1] + y[2]) / 2 * 40) / 80

    strat = "unc_ta_coreset@g0.5"
    da = [100 * (aulc(MIOU[strat][s]) - aulc(MIOU["random"][s])) for s in range(4)]
    assert a["mean"] == pytest.approx(np.mean(da)) and a["seeds"] == 4 and a["span"] == [40, 120]
    assert "AULC over 40-120 labels only" in (folder / "report" / "tables.md").read_text()
    # a seed of the strategy still at its first stage: left out, not the span cut to one stage for all
    f = folder / "runs" / "unc_ta_coreset@g0.5-seed3.jsonl"
    f.write_text(f.read_text().splitlines()[0] + "\n")
    make_report(folder, paper="none")
    summ = json.loads((folder / "report" / "summary.json").read_text())
    a = summ["metrics"]["paper_miou"]["vs_random"][strat]["aulc"]
    assert a["seeds"] == 3 and a["span"] == [40, 120] and a["mean"] == pytest.approx(np.mean(da[:3]))


def _res(curves: dict, stages=(40, 80, 120)) -> dict:
    """{strategy: {seed: [Dice % per stage]}} as load_results gives it (fractions in the records)."""
    return {strat: {seed: [{"n_labeled": n, "test": {"polyp_dice": v / 100, "paper_miou": v / 100, "polyp_iou": v / 200}}
                           for n, v in zip(stages, vals)]
                    for seed, vals in seeds.items()} for strat, seeds in curves.items()}


def test_label_savings_compare_the_same_seeds_and_say_what_the_first_crossing_hides():
    """A review (2026-12-07) found the mean-curve saving compared a 3-seed strategy with Random over 5 seeds
    (cvc-v3: Random needed 82 labels over seeds 0-4, 99 over 0-2), reported only the first crossing of a curve
    that falls back below the target, counted seeds reaching the target at the first stage (0 by
    construction) in the interval, ignored the full-pool reference's own noise, and dropped every strategy
    when one Random seed had an extra stage. Hand-computed values; target 0.95 * 60 = 57."""
    from polypal.experiments.report.stats import label_savings, labels_to_stay

    assert labels_to_stay([40, 80, 120], [60, 50, 70], 57) == pytest.approx(80 + 7 / 20 * 40)
    assert labels_to_stay([40, 80, 120], [60, 70, 50], 57) is None
    assert labels_to_stay([40, 80, 120], [60, 70, 80], 57) == 40.0
    curves = {"random": {0: [40, 60, 60], 1: [40, 50, 60], 2: [40, 50, 60], 3: [60, 70, 80], 4: [60, 70, 80]},
              "x": {0: [40, 70, 50], 1: [40, 60, 56], 2: [40, 60, 56], 3: [60, 56, 50]}}
    ceiling = {"polyp_dice": 60.0, "seeds": [0, 1], "polyp_dice_per_seed": [58.0, 62.0]}
    for extended in (False, True):
        res = _res(curves)
        if extended:  # one Random seed run one stage further: nothing else changes
            res["random"][0].append({"n_labeled": 160, "test": {"polyp_dice": 0.70, "paper_miou": 0.7, "polyp_iou": 0.35}})
        ls = label_savings(res, ceiling)
        assert ls["target"] == pytest.approx(57.0)
        r, x = ls["strategies"]["random"], ls["strategies"]["x"]
        # Random over its 5 seeds: mean 48, 60, 68 -> 40 + 9/12*40 = 70
        assert r["labels"] == pytest.approx(70.0) and r["seeds"] == 5 and r["first_stage_seeds"] == ["3", "4"]
        # x: mean 45, 61.5, 53 -> first at 40 + 12/16.5*40, and it ends below
        assert x["labels"] == pytest.approx(40 + 12 / 16.5 * 40) and x["labels_stay"] is None
        # Random over x's seeds 0-3: 45, 57.5, 65 -> 40 + 12/12.5*40 = 78.4 (not 70)
        assert x["paired_seeds"] == ["0", "1", "2", "3"]
        assert x["random_labels_same_seeds"] == pytest.approx(78.4)
        assert x["saved_vs_random"] == pytest.approx(78.4 - (40 + 12 / 16.5 * 40))
        assert x["saved_vs_random_stay"] is None
        # per seed: x 40+17/30*40, 74, 74, 40 (first stage); Random 74, 108, 108, 40 (first stage)
        p = x["saved_vs_random_paired"]
        saved = [74 - (40 + 17 / 30 * 40), 34.0, 34.0, 0.0]
        assert p["per_seed"] == pytest.approx({str(k): v for k, v in enumerate(saved)})
        assert p["first_stage_seeds"] == ["3"] and p["censored_seeds"] == []
        assert p["without_first_stage_seeds"]["mean"] == pytest.approx(np.mean(saved[:3]))
        assert p["without_first_stage_seeds"]["ci95"] == pytest.approx(list(brute_ci(saved[:3])))
        # against each full-pool seed's reference: targets 55.1 and 58.9
        by = x["saved_vs_random_by_ceiling_seed"]
        assert by["0"] == pytest.approx((40 + 10.1 / 12.5 * 40) - (40 + 10.1 / 16.5 * 40))
        assert by["1"] == pytest.approx((80 + 1.4 / 7.5 * 40) - (40 + 13.9 / 16.5 * 40))
        assert x.get("span") == ([40, 120] if extended else None)  # (said when it differs from the folder's)
    from polypal.experiments.report.tables import ci_tables

    md = ci_tables(_res(curves), {**ceiling, "n_labeled": 300, "paper_miou": 70.0})
    assert "ends below" in md and "Random 78 over s0,s1,s2,s3" in md and "f: s3" in md and "by full-pool seed" in md


def test_aulc_and_label_savings_compare_over_the_same_stages():
    """Three of four seeds of a strategy still running (two stages of three): the paired AULC was over every
    stage from the one finished seed, while the label savings (``_span``: every stage when at least half the
    runs have them all) used the two stages all four share. Both read one rule now."""
    from polypal.experiments.report.stats import label_savings, paired_stats

    curves = {"random": {s: [50 + s, 60 + s, 70 + s] for s in range(4)},
              "uncertainty": {0: [50, 66], 1: [51, 67], 2: [52, 68], 3: [53, 69, 75]}}
    res = _res(curves)
    a = paired_stats(res, "paper_miou")["uncertainty"]["aulc"]
    # the same-seed difference over 40-80: (0 + 6) / 2 = +3 points at every seed
    assert a["seeds"] == 4 and a["span"] == [40, 80] and a["mean"] == pytest.approx(3.0)
    sav = label_savings(res, {"polyp_dice": 0.7, "seeds": [0], "polyp_dice_per_seed": [0.7]})
    assert sav["strategies"]["uncertainty"]["span"] == [40, 80] and sav["strategies"]["uncertainty"]["seeds"] == 4
