"""Next-sample and label-save latency through a real `monailabel start_server`.

Studies folders of N frames (symlinks to the 30 bundled sample frames) are
served by apps/polyp_al with our SQLite datastore and, in the same run, with
MONAI Label's LocalDatastore (`--conf datastore local`). Latency is measured
from the client (HTTP round trip), median over the requests. Scoring is
switched off for the 100k case (it would spend minutes decoding frames) and
the `random` strategy is timed there; with --scored the smoke model is
trained, every frame scored, and `bvsb_ta_coreset` is timed too.

    .venv/bin/python benchmarks/bench_server.py --sizes 1000,10000,100000
    .venv/bin/python benchmarks/bench_server.py --sizes 1000,10000 --scored --datastores polypal
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


def make_studies(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True)
    src = sorted((SAMPLE / "images").glob("*.jpg"))
    ids = []
    for i in range(n):
        name = f"f{i:06d}"
        os.symlink(src[i % len(src)], root / f"{name}.jpg")
        ids.append(name)
    return ids


def timed(fn, k):
    out = []
    for _ in range(k):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def run_one(n, kind, scored, requests, tmp):
    work = Path(tempfile.mkdtemp(dir=tmp))
    ids = make_studies(work / "studies", n)
    env_scoring = "true" if scored else "false"
    os.environ["MONAI_LABEL_AUTO_UPDATE_SCORING"] = env_scoring
    t0 = time.perf_counter()
    srv = Server(work / "studies", work, conf={"datastore": kind, "batch_size": "100"}).start(timeout=1800)
    startup = time.perf_counter() - t0
    res = {"n": n, "datastore": kind, "startup_s": round(startup, 1)}
    try:
        strategies = ["random"]
        if scored:
            # label a few frames and train the smoke model; wait until every frame is scored
            for i in ids[:8]:
                m = np.asarray(Image.open(SAMPLE / "masks" / (Path(os.readlink(work / "studies" / f"{i}.jpg")).stem + ".png")))
                buf = io.BytesIO()
                Image.fromarray(m).save(buf, format="PNG")
                body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", buf.getvalue())})
                http("PUT", f"{srv.url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})
            http("POST", f"{srv.url}/train/polyp_seg", b"{}", {"Content-Type": "application/json"})
            t1 = time.perf_counter()
            srv.wait_for(lambda: any(v >= n - 8 for v in http("GET", srv.url + "/info/")[1]["polyp_al"]["state"]["versions"].values()),
                         timeout=3600, every=2, what="scores")
            res["train_and_score_s"] = round(time.perf_counter() - t1, 1)
            strategies.append("bvsb_ta_coreset")
        body = json.dumps({"client_id": "bench"}).encode()
        for s in strategies:
            http("POST", f"{srv.url}/activelearning/{s}", body, {"Content-Type": "application/json"})  # plans

            def ask():
                st, r = http("POST", f"{srv.url}/activelearning/{s}", body, {"Content-Type": "application/json"},
                             timeout=600)
                assert st == 200 and r.get("id"), (st, r)

            lat = timed(ask, requests)
            res[f"next_{s}_ms"] = round(statistics.median(lat), 1)
        # label saves on distinct frames
        free = ids[-requests:]

        def save_one(it=iter(free)):
            i = next(it)
            h, w = Image.open(work / "studies" / f"{i}.jpg").size[::-1]
            buf = io.BytesIO()
            Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
            b, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", buf.getvalue())})
            st, r = http("PUT", f"{srv.url}/datastore/label?image={i}&tag=final", b, {"Content-Type": ct}, timeout=600)
            assert st == 200, r

        res["save_label_ms"] = round(statistics.median(timed(save_one, requests)), 1)
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--datastores", default="polypal,local")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--scored", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="polypal-bench-")
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        for kind in a.datastores.split(","):
            k = a.requests if (kind == "polypal" or n <= 10000) else max(5, a.requests // 3)
            r = run_one(n, kind, a.scored, k, tmp)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print()
    print("| frames | datastore | start-up s | next-sample random ms | save-label ms |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['n']:,} | {r['datastore']} | {r['startup_s']} | {r['next_random_ms']} | {r['save_label_ms']} |")
    by = {(r["n"], r["datastore"]): r for r in rows}
    for n in sorted({r["n"] for r in rows}):
        if (n, "polypal") in by and (n, "local") in by:
            a_, b_ = by[(n, "polypal")], by[(n, "local")]
            print(f"N={n:,}: LocalDatastore / polypal: next-sample {b_['next_random_ms'] / a_['next_random_ms']:.1f}x, "
                  f"save-label {b_['save_label_ms'] / a_['save_label_ms']:.1f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
