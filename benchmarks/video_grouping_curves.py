"""Learning curves with and without near-duplicate grouping, paired by seed (issue 16's evidence).

    .venv/bin/python benchmarks/video_grouping_curves.py results/cvc-v2 results/video/cvc-grouped

Both folders must share the split and the recipe (the grouped one is run on a copy of the other's
split.json, `results/video/grouped-queue.sh`). For each strategy and each seed finished in both, prints
the per-stage test metrics and the grouped-minus-ungrouped difference, and the difference in normalised
AULC (mean height of the curve over the stages), with the per-seed values: no claim rests on a mean alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from polypal.experiments.report import load_results, normalised_aulc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plain, grouped = (load_results(Path(a)) for a in argv[:2])
    for metric in ("paper_miou", "polyp_dice"):
        print(f"\n## {metric} (points), grouped minus ungrouped, paired by seed")
        for label in sorted(set(plain) & set(grouped)):
            full = max(len(r) for r in plain[label].values())  # every stage of the protocol
            seeds = sorted(s for s in set(plain[label]) & set(grouped[label])
                           if len(plain[label][s]) == len(grouped[label][s]) == full)
            if not seeds:
                continue
            print(f"\n{label}: seeds {seeds}")
            stages = [r["n_labeled"] for r in plain[label][seeds[0]]]
            rows, aulc = [], []
            for s in seeds:
                a = [100 * r["test"][metric] for r in plain[label][s]]
                b = [100 * r["test"][metric] for r in grouped[label][s]]
                rows.append(np.array(b) - np.array(a))
                aulc.append(normalised_aulc(stages, b) - normalised_aulc(stages, a))
                print(f"  seed {s}: ungrouped " + " ".join(f"{x:5.1f}" for x in a))
                print(f"          grouped   " + " ".join(f"{x:5.1f}" for x in b))
            d = np.array(rows)
            print("  labels    " + " ".join(f"{n:5d}" for n in stages))
            print("  mean diff " + " ".join(f"{x:+5.1f}" for x in d.mean(axis=0)))
            print(f"  AULC diff per seed: {', '.join(f'{x:+.2f}' for x in aulc)}; mean {np.mean(aulc):+.2f}, "
                  f"ahead on {sum(x > 0 for x in aulc)}/{len(aulc)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
