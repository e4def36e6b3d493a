"""Drops over 3 points that ordinary stage-to-stage noise alone would give, against those seen, per results folder.

    .venv/bin/python benchmarks/drop_noise.py results/cvc-v3 results/kvasir-v3 [...]

The same numbers as the "Drops that ordinary stage-to-stage noise alone would give" line of ``polypal-sim
report`` (``polypal.experiments.report.stats.drop_noise``), for several folders at once without rewriting
their reports, plus a stage-to-stage spread per step under which noise alone would leave every run of the
folder free of such drops with even odds: the chance split equally over the steps, one allocation that
suffices (not a bound: a step could be looser where another is tighter).
"""

from __future__ import annotations

import sys
from pathlib import Path

from scipy import stats

from polypal.experiments.report.results import load_results
from polypal.experiments.report.stats import drop_noise


def main(argv=None) -> int:
    folders = (argv if argv is not None else sys.argv[1:]) or ["results/cvc-v3", "results/kvasir-v3"]
    for folder in folders:
        r = drop_noise(load_results(Path(folder)))
        if r is None:
            print(f"{folder}: too few runs per step for a spread")
            continue
        print(f"{folder}: expected from noise {r['expected_drops']:.1f} drops in {r['expected_runs_dropping']:.1f} runs; "
              f"seen {r['observed_drops']} in {r['observed_runs_dropping']} of {r['runs']} runs")
        print("  step: median, robust sd, P(drop > 3), seen")
        for s in r["steps"]:
            print(f"  {s['from']}->{s['to']}: {s['median']:+.2f}, {s['robust_sd']:.2f}, {s['p_drop']:.4f}, {s['observed']}")
        for o in r["outliers"]:
            print(f"  beyond the noise: {o['strategy']} seed {o['seed']} {o['from']}->{o['to']} -{o['drop']:.1f} (z {o['z']:.1f})")
        # even odds of no drop at all over every step of every run, the chance split equally over the steps:
        # P(one step drops) <= 1 - 0.5^(1/steps)
        n = sum(s["runs"] for s in r["steps"])
        z = stats.norm.ppf(1 - 0.5 ** (1 / n))
        need = [(r["threshold"] + s["median"]) / -z for s in r["steps"]]
        print(f"  spread each step would need for even odds of no drop in {n} steps (equal split): "
              + ", ".join(f"{s['from']}->{s['to']} " + (f"{x:.2f}" if x > 0 else "none suffices (median under "
                                                         f"-{r['threshold']:g})") for s, x in zip(r["steps"], need)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
