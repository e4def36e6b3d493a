"""k-center greedy: polypal's chunked O(N) version vs the classic numpy reference.

The reference is the usual coreset code (as in the paper's repository): a dense
N x L distance matrix from sklearn's pairwise_distances, its row minimum, then
one N x 1 pairwise_distances update per pick. Both run in this process on the
same float32 data; we print wall time, peak extra memory (tracemalloc: numpy
allocations) and whether the picks are identical.

    .venv/bin/python benchmarks/bench_kcenter.py            # N = 1k, 10k, 100k
    .venv/bin/python benchmarks/bench_kcenter.py --sizes 1000 --budget 100
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from sklearn.metrics import pairwise_distances

from polypal.sampler import k_center_greedy


def reference_kcenter(x, labeled, budget):
    dist = pairwise_distances(x, x[labeled], metric="euclidean")  # N x L
    min_d = dist.min(axis=1).reshape(-1, 1)
    del dist
    picks = []
    for _ in range(budget):
        j = int(np.argmax(min_d))
        picks.append(j)
        d = pairwise_distances(x, x[[j]], metric="euclidean")  # N x 1
        min_d = np.minimum(min_d, d)
    return np.array(picks)


def measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000)
    a = ap.parse_args()
    print(f"d={a.dim} L={a.labeled} B={a.budget} float32")
    print(f"{'N':>7} | {'ours s':>8} {'ours MB':>8} | {'ref s':>8} {'ref MB':>8} | {'speed-up':>8} {'mem ratio':>9} | same picks")
    for n in [int(s) for s in a.sizes.split(",")]:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, a.dim)).astype(np.float32)
        lab = rng.choice(n, size=min(a.labeled, n // 2), replace=False)
        b = min(a.budget, n - len(lab))
        ours, t1, m1 = measure(lambda: k_center_greedy(x, lab, b))
        ref, t2, m2 = measure(lambda: reference_kcenter(x, lab, b))
        same = bool(np.array_equal(ours, ref))
        print(f"{n:>7} | {t1:8.2f} {m1 / 2**20:8.1f} | {t2:8.2f} {m2 / 2**20:8.1f} | {t2 / t1:7.1f}x {m2 / max(m1, 1):8.1f}x | "
              f"{same}" + ("" if same else f" (first difference at pick {int(np.argmax(ours != ref))})"), flush=True)


if __name__ == "__main__":
    main()
