"""Per-request cost against the size of the labeled set: does a server with many labels still answer fast?

A hospital unit's server collects thousands of labels over months. For each labeled-set size L this
builds a studies folder of N frames (symlinks to the bundled samples) with L label files and an
annotation log of L saves by 4 annotators over 10 models (as a long session leaves it), starts a real
`monailabel start_server` on it (smoke profile, no model: next sample is served by random) and times the
requests an annotator's client makes: next sample, /info (MONAI Label's /activelearning asks it too),
downloading a frame, saving a label, the datastore listing, and next sample right after a save (the
annotator's loop: what a save changed is read again). Prints each request's median at each L and
its ratio to the smallest L (same process, same machine minutes: noise largely cancels).

    .venv/bin/python benchmarks/bench_labeled_scale.py [--frames 20000] [--labels 0 5000 15000] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from bench_soak import make_studies, mask_png  # noqa: E402
from server_utils import Server, http, multipart  # noqa: E402

JSON = {"Content-Type": "application/json"}


def fill_log(studies: Path, ids: list[str], seed: int = 0) -> None:
    """The annotation log a session of len(ids) saves leaves: effort rows (4 annotators, 20-90 s per label)
    and the quality of each model on the labels saved while it was current."""
    from polypal.serving.state import ActiveLearningState

    rng = np.random.default_rng(seed)
    st = ActiveLearningState(studies / ".polypal")
    t0 = time.time() - 30 * 86400
    rows = [(i, f"annotator-{k % 4}", t0 + k * 60.0, t0 + k * 60.0 + float(rng.uniform(20, 90)), f"v{k * 10 // max(1, len(ids))}")
            for k, i in enumerate(ids)]
    with st._db.tx() as c:
        c.executemany("INSERT OR REPLACE INTO effort VALUES (?, ?, ?, ?, ?)", rows)
        c.executemany("INSERT OR IGNORE INTO quality VALUES (?, ?, ?, ?)",
                      [(r[0], r[4], float(rng.uniform(0.3, 0.9)), r[3]) for r in rows])


def measure(tmp: Path, frames: int, labels: int, n: int) -> dict:
    studies = tmp / f"studies-{labels}"
    ids = make_studies(studies, frames)
    masks = {stem: mask_png(stem) for stem in set(ids.values())}
    order = list(ids)
    (studies / "labels" / "final").mkdir(parents=True)
    for i in order[:labels]:
        (studies / "labels" / "final" / f"{i}.png").write_bytes(masks[ids[i]])
    fill_log(studies, order[:labels])
    os.environ["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"
    t = time.perf_counter()
    srv = Server(studies, tmp).start(timeout=1800)
    start_s = time.perf_counter() - t
    out = {"labels": labels, "start_s": round(start_s, 1)}
    try:
        ask = json.dumps({"client_id": "bench"}).encode()
        rest = order[labels:]

        def save(k):
            i = rest[-1 - k]
            body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", masks[ids[i]])})
            return http("PUT", f"{srv.url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})

        kinds = [("next", lambda k: http("POST", f"{srv.url}/activelearning/random", ask, JSON), n),
                 ("info", lambda k: http("GET", f"{srv.url}/info/"), n),
                 ("download", lambda k: http("GET", f"{srv.url}/datastore/image?image={order[k % 50]}"), n),
                 ("save", save, n),
                 ("listing", lambda k: http("GET", f"{srv.url}/datastore/?output=all"), max(3, n // 20))]
        for name, fn, count in kinds:
            for k in range(3):  # warm-up
                st, _ = fn(count + k)
                assert st == 200, (name, st)
            lat = []
            for k in range(count):
                t = time.perf_counter()
                st, _ = fn(k)
                lat.append((time.perf_counter() - t) * 1000)
                assert st == 200, (name, st)
            out[f"{name}_ms"] = round(statistics.median(lat), 1)
        lat = []  # the annotator's loop: each next sample follows a save (what changed must be read again)
        for k in range(n):
            assert save(n + 3 + k)[0] == 200
            t = time.perf_counter()
            st, _ = http("POST", f"{srv.url}/activelearning/random", ask, JSON)
            lat.append((time.perf_counter() - t) * 1000)
            assert st == 200
        out["next_after_save_ms"] = round(statistics.median(lat), 1)
    finally:
        srv.stop()
        shutil.rmtree(studies, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--labels", type=int, nargs="+", default=[0, 5000, 15000])
    ap.add_argument("--n", type=int, default=100, help="requests of each kind timed at each size")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="polypal-scale-"))
    rows = []
    try:
        for L in sorted(a.labels):
            rows.append(measure(tmp, a.frames, L, a.n))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = rows[0]
    print(f"\nmedian ms per request, {a.frames} frames; ratio to {base['labels']} labels:")
    for k in [k for k in base if k.endswith("_ms")]:
        print(f"  {k[:-3]:9s} " + "  ".join(f"{r['labels']:>6} labels {r[k]:7.1f} ({r[k] / base[k]:.2f}x)"
                                              for r in rows))


if __name__ == "__main__":
    main()
