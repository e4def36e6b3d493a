"""Training speed of the cpu-lite recipe with 1 and 2 torch threads, in one process, and what it means for
one Kvasir-SEG run of the v3 protocol (11,440 optimizer steps: 1200, 1200, 1520, 2000, 2520, 3000).

Trains the same labeled set (the first ``--frames`` frames, validation on the next ``--val``, as the
recipe validates every 100 steps) for ``--steps`` steps per variant, interleaved (1, 2, 1, 2, ...) so that
drift on this shared machine hits both alike, and prints seconds per step, the ratio to 1 thread, and the
projected training time of a Kvasir run. Run it with the machine otherwise idle; the issue-11 queue lanes
can be paused meanwhile (kill -STOP / -CONT their polypal-sim processes).

    .venv/bin/python benchmarks/bench_training_threads.py                      # shared Kvasir-SEG, else the bundled sample
    .venv/bin/python benchmarks/bench_training_threads.py --data sample-datasets/kvasir-seg-mini --frames 20 --val 10
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from polypal.data import load_folder
from polypal.learner import get_profile, train

REPO = Path(__file__).resolve().parents[1]
KVASIR_RUN_STEPS = 1200 + 1200 + 1520 + 2000 + 2520 + 3000  # the v3 cpu-lite Kvasir protocol, 100 to 600 labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = REPO.parent / "shared" / "datasets" / "kvasir-seg"
    ap.add_argument("--data", default=str(shared if shared.exists() else REPO / "sample-datasets" / "kvasir-seg-mini"))
    ap.add_argument("--frames", type=int, default=100, help="labeled frames to train on")
    ap.add_argument("--val", type=int, default=100, help="validation frames (validated every 100 steps)")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per variant")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of the interleaved variants; the best is kept")
    a = ap.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    prof = get_profile("cpu-lite", min_steps=a.steps, max_steps=a.steps, collapse_retries=0)
    fs = load_folder(a.data, prof.size)
    n = len(fs)
    if n < 2:
        ap.error(f"{a.data}: {n} frames; need at least 2")
    k = min(a.frames, n - 1)
    v = min(a.val, n - k)
    if (k, v) != (a.frames, a.val):
        print(f"warning: {a.data} has {n} frames, so {k} training and {v} validation frames instead of "
              f"{a.frames} and {a.val}; the Kvasir projection below assumes 100 validation frames and full "
              f"batches of {prof.batch_size}, so it reads low here", flush=True)
    x, y = fs.images[:k], fs.masks[:k]
    vx, vy = fs.images[k:k + v], fs.masks[k:k + v]
    print(f"{a.data}: {k} training frames, {v} validation frames, {prof.size} px, {a.steps} steps per variant; "
          f"{platform.machine()}, {torch.get_num_threads()} threads by default, torch {torch.__version__}", flush=True)
    best: dict[int, float] = {}
    for r in range(a.repeats):
        for t in threads:
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            res = train(prof, x, y, vx, vy, seed=0)
            dt = time.perf_counter() - t0
            per = dt / res.steps
            best[t] = min(best.get(t, per), per)
            print(f"  round {r + 1}, {t} thread(s): {dt:.1f} s, {1000 * per:.1f} ms/step", flush=True)
    base = best[threads[0]]
    print(f"best of {a.repeats} (ms/step), ratio to {threads[0]} thread(s), projected training time of one "
          f"Kvasir run ({KVASIR_RUN_STEPS} steps, validation included, scoring and testing not):")
    for t in threads:
        print(f"  {t} thread(s): {1000 * best[t]:.1f} ms/step, x{base / best[t]:.2f} speed, "
              f"{KVASIR_RUN_STEPS * best[t] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
