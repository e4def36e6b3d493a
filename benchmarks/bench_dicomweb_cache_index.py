"""What MONAI Label's DICOMweb cache index costs per frame as the cache grows, and what it costs now.

MONAI Label's DICOMweb datastore adds each frame it converts to a local index (``datastore_v2.json``),
rewriting the whole index each time, and its file watcher reconciles the whole cache at each file created:
per frame, work over every frame cached, so the first scoring of a large PACS pool is quadratic.
polyp-al writes the index at most every ``POLYPAL_CACHE_INDEX_EVERY`` seconds while frames are added and
reconciles once per burst of files (``lib/dicomweb_datastore.py``).

Both datastores here are the real classes (MONAI Label's ``DICOMWebDatastore``, polyp-al's subclass) on a
cache folder of their own, each adding the same N tiny NIfTI frames the way a conversion adds them (the
DICOMweb download and the conversion, the same for both, are left out: no DICOMweb server is needed). The
figures are the milliseconds a frame takes at the start and at the end, and the total; the ratio of the
totals is what carries over to another machine.

    .venv/bin/python benchmarks/bench_dicomweb_cache_index.py              # 3000 frames (a few minutes)
    .venv/bin/python benchmarks/bench_dicomweb_cache_index.py --frames 500 # quicker
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

APP = Path(__file__).resolve().parents[1] / "apps" / "polyp_al"


def run(ds, frames: int, src: str, wrap) -> tuple[float, float, float]:
    from monailabel.datastore.local import LocalDatastore

    first = last = 0.0
    t0 = time.perf_counter()
    for k in range(frames):
        t = time.perf_counter()
        with wrap(ds):
            LocalDatastore.add_image(ds, f"1.2.826.0.1.3680043.99.{k}", src,
                                     {"StudyInstanceUID": "1.2.3", "Modality": "ES", "RetrieveURL": "http://x/y"})
        dt = time.perf_counter() - t
        if k < 50:
            first += dt / 50
        if k >= frames - 50:
            last += dt / 50
    total = time.perf_counter() - t0
    if hasattr(ds, "_flush_index"):
        ds._flush_index()  # (the deferred write, counted: it happens once)
        total = time.perf_counter() - t0
    time.sleep(3)  # (the watcher's last reconcile, before the observer stops)
    ds._observer.stop()
    return first * 1000, last * 1000, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.path.insert(0, str(APP))
    import contextlib

    from monailabel.datastore.dicom import DICOMWebDatastore

    import threading

    import lib.dicomweb_datastore as dwd

    crashed = []  # MONAI Label's watcher thread iterates the records while a frame is added: it dies sometimes
    threading.excepthook = lambda a: crashed.append(f"{a.exc_type.__name__}: {a.exc_value}")
    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "frame.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 1, 1, 3), np.uint8), np.eye(4)), src)
        client = dwd.PolypDICOMwebClient(url="http://127.0.0.1:9/dicom-web")  # (never asked: no request is made)
        base = DICOMWebDatastore(client=client, search_filter={}, cache_path=str(Path(tmp) / "base"))
        ours = dwd.PolypDICOMWebDatastore(client=client, search_filter={}, cache_path=str(Path(tmp) / "ours"))
        print(f"{args.frames} frames added to an empty cache; ms a frame (mean of the first / last 50), total s")
        b = run(base, args.frames, src, lambda ds: contextlib.nullcontext())
        print(f"  MONAI Label's DICOMWebDatastore: first {b[0]:7.1f}  last {b[1]:7.1f}  total {b[2]:7.1f}"
              f"  (its watcher thread died {len(crashed)} times: {sorted(set(crashed))})")
        crashed.clear()
        o = run(ours, args.frames, src, lambda ds: _as_conversion(ds, dwd))
        print(f"  polyp-al's (index every {dwd.INDEX_EVERY:g} s): first {o[0]:7.1f}  last {o[1]:7.1f}  total {o[2]:7.1f}"
              f"  (watcher thread errors: {len(crashed)})")
        print(f"  ratio of totals (MONAI Label / polyp-al): {b[2] / o[2]:.1f}x; last-50 ratio {b[1] / o[1]:.1f}x")


def _as_conversion(ds, dwd):
    """What polyp-al's get_image_uri holds while MONAI Label's conversion adds a frame."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(ds._reconcile_guard)
    stack.enter_context(dwd._deferring())
    return stack


if __name__ == "__main__":
    main()
