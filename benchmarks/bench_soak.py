"""A long annotation session against a real server: does its memory, file descriptors or latency grow?

A hospital server runs for weeks. This drives one `monailabel start_server` (smoke profile, a trained
model) through the annotator's loop, over and over: next sample, infer it, download the frame, save its
label, and every 10th cycle a datastore listing and /info. The server process's resident memory, open file
descriptors and threads are read from /proc every block of cycles, with the median latency of each request
in that block. The figures printed are the growth after the warm-up block (MB and descriptors per 1000
requests) and each latency's last block against its first (a ratio: the same process, so the machine's
noise largely cancels).

    .venv/bin/python benchmarks/bench_soak.py --frames 600 --block 100
    .venv/bin/python benchmarks/bench_soak.py --frames 3000 --phases 2000

With ``--phases N``: one request kind at a time (N each, after 200 to warm up), the memory before and after
each phase, to tell a leak in one handler from growth that follows the datastore (more labels, larger
listings).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_utils import SAMPLE, Server, http, multipart  # noqa: E402

JSON = {"Content-Type": "application/json"}


def make_studies(root: Path, n: int) -> dict[str, str]:
    """n frames (symlinks to the bundled samples, renamed); id -> the sample's stem (for its mask)."""
    root.mkdir(parents=True)
    src = sorted((SAMPLE / "images").glob("*.jpg"))
    out = {}
    for i in range(n):
        s = src[i % len(src)]
        os.symlink(s, root / f"f{i:06d}.jpg")
        out[f"f{i:06d}"] = s.stem
    return out


def process_figures(pid: int) -> dict:
    """Resident memory (MB, the server process and its threads), open descriptors, threads."""
    status = Path(f"/proc/{pid}/status").read_text()
    field = {line.split(":")[0]: line.split(":")[1].strip() for line in status.splitlines() if ":" in line}
    return {"rss_mb": round(int(field["VmRSS"].split()[0]) / 1024, 1), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(field["Threads"])}


def mask_png(stem: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(SAMPLE / "masks" / f"{stem}.png"))).save(buf, format="PNG")
    return buf.getvalue()


def phases(srv, pid, ids, masks, first, ask, n):
    rest = [i for i in ids if i not in first]

    def save(k):
        i = rest[k]
        body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", masks[ids[i]])})
        assert http("PUT", f"{srv.url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})[0] == 200

    kinds = [("info", lambda k: http("GET", f"{srv.url}/info/"), n),
             ("infer", lambda k: http("POST", f"{srv.url}/infer/polyp_seg?image={first[k % 8]}", b"{}", JSON), n),
             ("download", lambda k: http("GET", f"{srv.url}/datastore/image?image={first[k % 8]}"), n),
             ("next sample", lambda k: http("POST", f"{srv.url}/activelearning/random", ask, JSON), n),
             ("save label", save, min(n, len(rest) - 200)),
             ("listing", lambda k: http("GET", f"{srv.url}/datastore/?output=all"), max(1, n // 10))]
    for name, fn, count in kinds:
        for k in range(200):
            fn(k)
        before = process_figures(pid)
        for k in range(count):
            fn(k + 200)
        after = process_figures(pid)
        print(f"{name}: {before['rss_mb']} -> {after['rss_mb']} MB over {count} requests "
              f"({(after['rss_mb'] - before['rss_mb']) / count * 1000:+.1f} MB per 1000); descriptors "
              f"{before['fds']} -> {after['fds']}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=600, help="frames in the studies folder (one cycle each)")
    ap.add_argument("--block", type=int, default=100, help="cycles between two readings")
    ap.add_argument("--phases", type=int, default=0, metavar="N", help="N requests of each kind in turn instead")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="polypal-soak-"))
    ids = make_studies(tmp / "studies", a.frames)
    os.environ["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"  # next sample: random, no scoring runs between
    srv = Server(tmp / "studies", tmp).start(timeout=600)
    masks = {stem: mask_png(stem) for stem in set(ids.values())}
    try:
        first = list(ids)[:8]
        for i in first:  # a model to infer with: the smoke profile on 8 labels
            body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", masks[ids[i]])})
            st, r = http("PUT", f"{srv.url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})
            assert st == 200, r
        st, r = http("POST", f"{srv.url}/train/polyp_seg", b"{}", JSON)
        assert st == 200, r
        srv.wait_for(lambda: http("POST", f"{srv.url}/infer/polyp_seg?image={first[0]}", b"{}", JSON)[0] == 200,
                     timeout=1800, every=5, what="the first model")
        pid = srv.proc.pid
        ask = json.dumps({"client_id": "soak"}).encode()
        if a.phases:
            return phases(srv, pid, ids, masks, first, ask, a.phases)
        lat = {k: [] for k in ("next", "infer", "download", "save", "listing", "info")}
        rows, requests, cycles = [], 0, 0

        def timed(name, fn):
            nonlocal requests
            t = time.perf_counter()
            out = fn()
            lat[name].append((time.perf_counter() - t) * 1000)
            requests += 1
            return out

        t_start = time.perf_counter()
        while True:
            st, r = timed("next", lambda: http("POST", f"{srv.url}/activelearning/random", ask, JSON, timeout=600))
            if st != 200 or not r.get("id"):
                break  # the pool is empty
            i = r["id"]
            st, out = timed("infer", lambda: http("POST", f"{srv.url}/infer/polyp_seg?image={i}", b"{}", JSON))
            assert st == 200, (i, st)
            st, out = timed("download", lambda: http("GET", f"{srv.url}/datastore/image?image={i}"))
            assert st == 200 and len(out) > 1000, (i, st)
            body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", masks[ids[i]])})
            st, out = timed("save", lambda: http("PUT", f"{srv.url}/datastore/label?image={i}&tag=final", body,
                                                 {"Content-Type": ct}))
            assert st == 200, (i, st, out)
            cycles += 1
            if cycles % 10 == 0:
                st, _ = timed("listing", lambda: http("GET", f"{srv.url}/datastore/?output=all"))
                assert st == 200
                st, _ = timed("info", lambda: http("GET", f"{srv.url}/info/"))
                assert st == 200
            if cycles % a.block == 0:
                row = {"cycles": cycles, "requests": requests, "s": round(time.perf_counter() - t_start),
                       **process_figures(pid),
                       **{f"{k}_ms": round(statistics.median(v), 1) for k, v in lat.items() if v}}
                rows.append(row)
                print(json.dumps(row), flush=True)
                lat = {k: [] for k in lat}
        print()
        if len(rows) < 2:
            print("too few blocks to compare: give more --frames or a smaller --block")
            return
        w, last = rows[0], rows[-1]
        k = (last["requests"] - w["requests"]) / 1000
        print(f"{last['cycles']} cycles, {last['requests']} requests in {last['s']} s; after the warm-up block "
              f"({w['requests']} requests):")
        print(f"  resident memory {w['rss_mb']} -> {last['rss_mb']} MB: {(last['rss_mb'] - w['rss_mb']) / k:+.1f} MB "
              f"per 1000 requests; peak {max(r['rss_mb'] for r in rows)} MB")
        print(f"  open descriptors {w['fds']} -> {last['fds']} ({(last['fds'] - w['fds']) / k:+.1f} per 1000); "
              f"threads {w['threads']} -> {last['threads']}")
        for name in ("next", "infer", "download", "save", "listing", "info"):
            key = f"{name}_ms"
            if key in w and key in last:
                print(f"  {name}: median {w[key]} ms in the first block, {last[key]} ms in the last "
                      f"({last[key] / w[key]:.2f}x)")
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
