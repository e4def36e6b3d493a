"""Summarise calibration runs: per (dataset, n, config, selection rule), test paper mIoU and Dice over seeds.

    .venv/bin/python benchmarks/calibration_table.py results/calibration/raw/*.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np


def main(paths) -> int:
    rows = defaultdict(lambda: defaultdict(dict))  # (dataset, n, config) -> rule -> seed -> (miou, dice)
    secs = defaultdict(list)
    for p in paths:
        for line in open(p):
            r = json.loads(line)
            key = (r["dataset"], r["n"], r["config"])
            secs[key].append(r["train_seconds"])
            for rule, m in r["test"].items():
                rows[key][rule][r["seed"]] = (100 * m["paper_miou"], 100 * m["polyp_dice"])
    print("| dataset | labels | config | selection | seeds | paper mIoU mean ± std (min) | polyp Dice mean ± std (min)"
          " | per seed mIoU | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(rows):
        for rule in ("best_val", "last", "ema", "ema_best_val"):
            if rule not in rows[key]:
                continue
            d = rows[key][rule]
            mi = np.array([d[s][0] for s in sorted(d)])
            di = np.array([d[s][1] for s in sorted(d)])
            sd = (lambda v: f" ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else "")
            print(f"| {key[0]} | {key[1]} | {key[2]} | {rule} | {','.join(map(str, sorted(d)))} | "
                  f"{mi.mean():.2f}{sd(mi)} ({mi.min():.1f}) | {di.mean():.2f}{sd(di)} ({di.min():.1f}) | "
                  + ", ".join(f"{v:.1f}" for v in mi) + f" | {np.mean(secs[key]):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
