"""What the studies folder's upkeep costs as it grows: a frame change (``FeatureStore.forget``) with many
model versions scored, and how long a start-up holds the datastore's write lock with many trash folders.

Each figure comes with its baseline, run in this process on the same data: for ``forget``, the query the
code before 2026-12-07 ran inside the write transaction (every score row scanned for the frame's versions);
for the start-up, a listing of every trash folder (what that code did under the lock). Ratios, not the
milliseconds, are what carries over to another machine.

    .venv/bin/python benchmarks/bench_store_upkeep.py
    .venv/bin/python benchmarks/bench_store_upkeep.py --frames 20000 --versions 3 --trash 2000   # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_forget(root: Path, frames: int, versions: int, reps: int = 20) -> None:
    from polypal.serving import ActiveLearningState

    st = ActiveLearningState(root / "state", batch_size=3)
    ids = [f"f{i:06d}" for i in range(frames)]
    for v in range(versions):  # (as a store kept every model's scores before prune)
        st.add_scores(f"v{v}", ids, np.zeros(frames), np.zeros((frames, 4), np.float32))
    picks = [ids[(k * 7919) % frames] for k in range(reps)]
    conn = st.features._conn()
    t = time.perf_counter()
    for i in picks:  # the baseline: the old forget's first query, a scan of every score row
        conn.execute("SELECT version FROM scores WHERE image_id=?", (i,)).fetchall()
    old = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for i in picks:
        st.features.forget(i)
    new = (time.perf_counter() - t) / reps
    print(f"forget, {versions} versions x {frames} frames: {new * 1e3:.2f} ms a frame change; the old scan "
          f"alone {old * 1e3:.1f} ms ({old / new:.0f}x)")


def bench_trash_lock(root: Path, n: int) -> None:
    from polypal.serving.framestore import FrameStore

    studies = root / "studies"
    studies.mkdir()
    fs = FrameStore(studies)
    base = studies / ".polypal" / "trash"
    for i in range(n):
        d = base / f"20261207-000000-{i:06d}"
        d.mkdir(parents=True)
        (d / "f.png").write_bytes(b"x")
        (d / "manifest.json").write_text("{}")
    held = []
    real = FrameStore._tx

    @contextlib.contextmanager
    def timed(self, *a, **k):
        with real(self, *a, **k) as c:
            t0 = time.perf_counter()
            try:
                yield c
            finally:
                held.append(time.perf_counter() - t0)

    FrameStore._tx = timed
    try:
        fs._recover_replaces()  # (warm: the folders' entries in the page cache, as at a busy server's starts)
        held.clear()
        t = time.perf_counter()
        fs._recover_replaces()
        total = time.perf_counter() - t
    finally:
        FrameStore._tx = real
    t = time.perf_counter()
    for d in os.scandir(base):  # the baseline: what the old code did under the lock, a listing of each folder
        os.listdir(d.path)
    listing = time.perf_counter() - t
    print(f"start-up with {n} trash folders: write lock held {max(held) * 1e3:.2f} ms (of {total * 1e3:.0f} ms); "
          f"listing every folder, as the old code did under it, {listing * 1e3:.0f} ms "
          f"({listing / max(max(held), 1e-6):.0f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--trash", type=int, default=10_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bench_forget(Path(d), a.frames, a.versions)
        bench_trash_lock(Path(d), a.trash)


if __name__ == "__main__":
    main()
