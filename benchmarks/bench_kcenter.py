"""k-center greedy: the pruned version (polypal.sampler.k_center_greedy) against the one-pass
version it replaced (``_k_center_greedy_one_pass``, one read of the N x d features per pick),
and optionally against the classic numpy/sklearn code.

Two datasets, float32, d=512, L labeled frames as initial centers, B picks:
- uniform: i.i.d. standard normal (no structure: pruning cannot skip anything);
- clustered: real-like latents, generated as K Gaussian clusters (centers N(0, I), per-cluster
  isotropic spread 0.35 x U(0.5, 1.5)) plus one common offset of norm 100, i.e. about 3x the
  distance between cluster centers (the project's U-Net latents are uncentered and clustered
  by video: in results/cvc-v2/extras their median norm is 2.6-5x their median pairwise
  distance, and the nearest neighbour is at ~1/3 of it).

Both versions run in this process on the same data, one after the other; we print wall time,
the ratio, whether the picks are identical, and peak extra memory (tracemalloc: numpy
allocations), measured in separate runs of the first --memory-budget picks (tracing every
allocation slows the pruned version's many small ones, so it is kept out of the timed runs).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kcenter.py                 # N=100k, both datasets
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kcenter.py --sizes 10000 --data clustered
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kcenter.py --sizes 10000 --sklearn

Memory-mapped mode: writes an N x d clustered float16/float32 file block by block (never
holding it in memory), then runs one version on it and reports wall time and the process's
peak resident memory: VmHWM (all pages, including the file's page-cache pages it mapped) and
the peak of RssAnon (its own allocations, sampled every 20 ms).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kcenter.py --memmap 1000000 --dtype float16
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_kcenter.py --memmap 1000000 --dtype float16 --old --budget 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import tracemalloc

import numpy as np

from polypal.sampler import k_center_greedy
from polypal.sampler.kcenter import _k_center_greedy_one_pass


def reference_kcenter(x, labeled, budget):
    """The usual coreset code: dense N x L pairwise_distances, then one N x 1 update per pick."""
    from sklearn.metrics import pairwise_distances

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


def make_data(kind, n, dim, seed, clusters=200, start=0, count=None):
    """Rows [start, start+count) of the dataset (same rows whatever the block size)."""
    count = n - start if count is None else count
    if kind == "uniform":
        return np.random.default_rng([int(seed), start]).standard_normal((count, dim)).astype(np.float32)
    base = np.random.default_rng([int(seed), 10**9])
    centers = base.standard_normal((clusters, dim))
    spread = 0.35 * base.uniform(0.5, 1.5, size=clusters)
    offset = base.standard_normal(dim)
    offset *= 100.0 / np.linalg.norm(offset)
    r = np.random.default_rng([int(seed), start])
    lab = r.integers(clusters, size=count)
    return (offset + centers[lab] + spread[lab, None] * r.standard_normal((count, dim))).astype(np.float32)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def peak_mb(fn):
    """Peak numpy allocations (tracemalloc), in a separate run: tracing slows small allocations."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def compare(a):
    print(f"d={a.dim} L={a.labeled} B={a.budget} float32, clustered: {a.clusters} clusters; MB: first {a.memory_budget} picks; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    print(f"{'data':>9} {'N':>7} | {'old ms':>9} {'old MB':>7} | {'new ms':>9} {'new MB':>7} | {'ratio':>6} | same picks"
          + (" | sklearn ms" if a.sklearn else ""))
    for kind in a.data.split(","):
        for n in [int(s) for s in a.sizes.split(",")]:
            x = make_data(kind, n, a.dim, a.seed, a.clusters)
            rng = np.random.default_rng(a.seed)
            lab = rng.choice(n, size=min(a.labeled, n // 2), replace=False)
            b = min(a.budget, n - len(lab))
            old, t1 = timed(lambda: _k_center_greedy_one_pass(x, lab, b))
            new, t2 = timed(lambda: k_center_greedy(x, lab, b))
            bm = min(b, a.memory_budget)
            m1 = peak_mb(lambda: _k_center_greedy_one_pass(x, lab, bm))
            m2 = peak_mb(lambda: k_center_greedy(x, lab, bm))
            same = bool(np.array_equal(old, new))
            line = (f"{kind:>9} {n:>7} | {t1 * 1e3:9.0f} {m1:7.1f} | {t2 * 1e3:9.0f} {m2:7.1f} | "
                    f"{t1 / t2:5.1f}x | {same}" + ("" if same else f" (first difference at pick {int(np.argmax(old != new))})"))
            if a.sklearn:
                _, t3 = timed(lambda: reference_kcenter(x, lab, b))
                line += f" | {t3 * 1e3:.0f}"
            print(line, flush=True)


class _RssSampler:
    def __init__(self):
        self.peak_anon = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, self.status("RssAnon"))
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak_anon = max(self.peak_anon, self.status("RssAnon"))


def memmap_run(a):
    n, dim, dt = a.memmap, a.dim, np.dtype(a.dtype)
    path = a.file or os.path.join(tempfile.gettempdir(), f"kcenter-{a.data.split(',')[-1]}-{n}x{dim}-{dt.name}.bin")
    if not os.path.exists(path) or os.path.getsize(path) != n * dim * dt.itemsize:
        t = time.perf_counter()
        with open(path + ".part", "wb") as f:  # written block by block, never mapped or held whole
            for s in range(0, n, 65536):
                f.write(make_data(a.data.split(",")[-1], n, dim, a.seed, a.clusters, s, min(65536, n - s))
                        .astype(dt).tobytes())
        os.replace(path + ".part", path)
        print(f"wrote {path} ({os.path.getsize(path) / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
    x = np.memmap(path, dtype=dt, mode="r", shape=(n, dim))
    rng = np.random.default_rng(a.seed)
    lab = rng.choice(n, size=a.labeled, replace=False)
    fn = _k_center_greedy_one_pass if a.old else k_center_greedy
    base_hwm, base_anon = _RssSampler.status("VmHWM"), _RssSampler.status("RssAnon")
    with _RssSampler() as s:
        t = time.perf_counter()
        picks = fn(x, lab, a.budget)
        dt_s = time.perf_counter() - t
    hwm = _RssSampler.status("VmHWM")
    print(f"{'old one-pass' if a.old else 'new pruned'}: N={n} d={dim} {dt.name} memmap ({n * dim * dt.itemsize / 2**30:.2f} GiB), "
          f"L={a.labeled} B={a.budget} ({a.data.split(',')[-1]}): {dt_s:.1f} s, {len(picks)} picks; "
          f"peak RSS (VmHWM, file pages included) {hwm / 2**30:.2f} GiB (before: {base_hwm / 2**30:.2f}); "
          f"peak anonymous RSS {s.peak_anon / 2**30:.2f} GiB (before: {base_anon / 2**30:.2f}); "
          f"picks[:5]={picks[:5].tolist()}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--data", default="uniform,clustered")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sklearn", action="store_true", help="also time the classic numpy/sklearn code")
    ap.add_argument("--memory-budget", type=int, default=50, help="picks in the tracemalloc runs")
    ap.add_argument("--memmap", type=int, default=0, help="N for the memory-mapped run (uses the last --data kind)")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--file", default="")
    ap.add_argument("--old", action="store_true", help="memmap mode: run the one-pass version instead")
    a = ap.parse_args()
    if a.memmap:
        memmap_run(a)
    else:
        compare(a)


if __name__ == "__main__":
    main()
