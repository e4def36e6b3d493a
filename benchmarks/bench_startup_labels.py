"""Start-up cost of keeping each label with the picture it was drawn on (polypal.serving.label_frames).

A studies folder of N frames (384x288 PNG of noise, 330 kB each, like CVC-ClinicDB's size) with L label
files and no rows (as after an upgrade from a version without the record, or label files copied in):
the first start reads and decodes every labeled frame once; later starts only stat them; touching every
frame (cp -a, a backup restore) makes the next start read their bytes again, without decoding.
Prints each start's seconds and its ratio to a steady-state start in the same process.

    .venv/bin/python benchmarks/bench_startup_labels.py [--frames 20000] [--labels 5000] [--dir /tmp/x]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from polypal.serving.framestore import FrameStore  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--labels", type=int, default=5000)
    ap.add_argument("--dir", default=None, help="where to build the folder (default: a temporary one)")
    a = ap.parse_args()
    base = tempfile.mkdtemp(dir=a.dir)
    root = Path(base) / "studies"
    (root / "labels" / "final").mkdir(parents=True)
    try:
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (288, 384, 3), dtype=np.uint8)).save(Path(base) / "f.png")
        Image.fromarray(np.zeros((288, 384), np.uint8)).save(Path(base) / "m.png")
        frame, mask = (Path(base) / "f.png").read_bytes(), (Path(base) / "m.png").read_bytes()
        for i in range(a.frames):
            (root / f"f{i:06d}.png").write_bytes(frame)
        for i in range(a.labels):
            (root / "labels" / "final" / f"f{i:06d}.png").write_bytes(mask)
        print(f"{a.frames} frames of {len(frame)} bytes, {a.labels} label files without rows, in {root}")

        def start(what):
            t = time.perf_counter()
            fs = FrameStore(root)
            s = time.perf_counter() - t
            assert len(fs.labeled_ids()) == a.labels
            return what, s

        runs = [start("first start (every labeled frame read and decoded once)"), start("second start")]
        steady = start("third start (steady state)")
        runs.append(steady)
        for p in root.glob("f*.png"):
            os.utime(p)
        runs.append(start("after touching every frame (bytes read again, not decoded)"))
        runs.append(start("next start"))
        for what, s in runs:
            print(f"{what}: {s:.2f} s ({s / steady[1]:.1f}x the steady state)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
