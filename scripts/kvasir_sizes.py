"""Polyp size in Kvasir-SEG: the 196 "sessile" test frames against the rest (pool + validation).

Why: per-image test Dice on the sessile frames is far below validation Dice
on the other frames; this measures how different the two sets' polyps are.

    .venv/bin/python scripts/kvasir_sizes.py ../shared/datasets/kvasir-seg ../shared/datasets/splits/kvasir_sessile.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from polypal.data import read_mask


def main(root: str, sessile_list: str) -> None:
    sessile = set(Path(sessile_list).read_text().split())
    area = {"sessile (test)": [], "other (pool + val)": []}
    for p in sorted((Path(root) / "masks").iterdir()):
        area["sessile (test)" if p.stem in sessile else "other (pool + val)"].append(read_mask(p).mean())
    print("| frames | n | mean polyp area | median | 10th pct | share < 2% of the frame | share < 5% |")
    print("|---|---|---|---|---|---|---|")
    for k, v in area.items():
        v = np.array(v) * 100
        print(f"| {k} | {len(v)} | {v.mean():.1f}% | {np.median(v):.1f}% | {np.percentile(v, 10):.1f}% | "
              f"{(v < 2).mean() * 100:.0f}% | {(v < 5).mean() * 100:.0f}% |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
