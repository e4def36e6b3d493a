"""Scoring throughput on this CPU: decode + resize, and the model pass (BvSB + latent), in frames/s.

    .venv/bin/python benchmarks/bench_scoring.py [--data ../shared/datasets/kvasir-seg/images] [--n 200]

Uses real Kvasir-SEG frames (up to 1920x1072 JPEGs) when present, else the bundled sample.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from polypal.data import list_images, read_rgb, resize_rgb
from polypal.learner import PolypUNet, get_profile, predict
from polypal.sampler import BvSB

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "kvasir-seg" / "images"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--profiles", default="cpu-lite,paper")
    a = ap.parse_args()
    folder = Path(a.data) if Path(a.data).exists() else REPO / "sample-datasets" / "kvasir-seg-mini" / "images"
    files = list_images(folder)[: a.n]
    print(f"{len(files)} frames from {folder}; torch threads {torch.get_num_threads()}")
    for name in a.profiles.split(","):
        p = get_profile(name)
        t = time.perf_counter()
        ims = [resize_rgb(read_rgb(f), p.size) for f in files]
        t_dec = time.perf_counter() - t
        import numpy as np

        x = np.stack(ims)
        model = PolypUNet.from_profile(p).eval()
        predict(model, x[:8], scorers=(BvSB("mean"),), keep_probs=False)  # warm-up
        t = time.perf_counter()
        predict(model, x, scorers=(BvSB("mean"),), keep_probs=False)
        t_fwd = time.perf_counter() - t
        print(f"{name:9s} {p.size}px: decode+resize {len(x) / t_dec:6.1f} frames/s, model pass {len(x) / t_fwd:6.1f} "
              f"frames/s, together {len(x) / (t_dec + t_fwd):6.1f} frames/s")


if __name__ == "__main__":
    main()
