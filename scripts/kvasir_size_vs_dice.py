"""Does polyp size explain the Kvasir test/validation gap? One cpu-lite model, per-image Dice by polyp area.

Trains the cpu-lite U-Net on 400 random pool frames of the committed Kvasir
split (results/kvasir-lite/split.json), then reports per-image polyp Dice on
the sessile test frames and the validation frames, binned by polyp area (share
of the frame in the 128 px mask).

    .venv/bin/python scripts/kvasir_size_vs_dice.py ../shared/datasets/kvasir-seg results/kvasir-lite/split.json
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

from polypal.data import load_folder
from polypal.learner import get_profile, per_image_scores, predict, train


def main(root: str, split_path: str, n_train: int = 400, seed: int = 0) -> None:
    torch.set_num_threads(1)
    prof = get_profile("cpu-lite")
    frames = load_folder(root, prof.size, cache_dir=os.path.expanduser("~/.cache/polypal"))
    split = json.load(open(split_path))
    rng = np.random.default_rng(seed)
    pool = frames.index_of(split["pool"])
    tr = frames.subset(rng.choice(pool, n_train, replace=False))
    val, test = frames.subset(frames.index_of(split["val"])), frames.subset(frames.index_of(split["test"]))
    res = train(prof, tr.images, tr.masks, val.images, val.masks, seed=seed)
    print(f"trained on {n_train} pool frames: best step {res.best_step}, val {res.best_val}")
    bins = [(0, 2), (2, 5), (5, 10), (10, 20), (20, 100)]
    print("\n| polyp area | sessile test: n | Dice | validation: n | Dice |\n|---|---|---|---|---|")
    rows = {}
    for name, fs in (("test", test), ("val", val)):
        probs = predict(res.model, fs.images).probs
        dice = np.asarray(per_image_scores(probs > 0.5, fs.masks)["dice"])
        area = fs.masks.reshape(len(fs), -1).mean(1) * 100
        rows[name] = [(int(((area >= a) & (area < b)).sum()), dice[(area >= a) & (area < b)]) for a, b in bins]
        rows[name].append((len(fs), dice))
    for i, (a, b) in enumerate(bins + [(None, None)]):
        label = "all" if a is None else f"{a}-{b}%"
        cells = []
        for name in ("test", "val"):
            n, d = rows[name][i]
            cells += [str(n), f"{d.mean():.2f}" if n else "-"]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
