"""Next-sample latency while a re-plan runs, through real servers: this code against a baseline commit.

A studies folder of N frames (symlinks to the bundled sample frames) with L final labels, and an AL
state with synthetic scores and D-d latents for two model versions: the `ta_coreset` batch (B frames)
was planned with the older one, the newer one is published and scored. So the first `ta_coreset`
next-sample is due for a re-plan (k-center greedy, B picks over N frames), while other annotators ask
`random` (already planned). Each variant's server gets a copy of the same folder; both run in this
process's run, one after the other, so machine noise hits both.

    .venv/bin/python benchmarks/bench_replan.py --baseline f5ef9c8
    .venv/bin/python benchmarks/bench_replan.py --frames 20000 --baseline f5ef9c8   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from server_utils import SAMPLE, free_port, http  # noqa: E402

from polypal.serving import ActiveLearningState, model_version  # noqa: E402


def build(base: Path, n: int, labeled: int, dim: int, batch: int) -> dict:
    studies = base / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    imgs = sorted((SAMPLE / "images").glob("*.jpg"))
    ids = [f"f{i:06d}" for i in range(n)]
    for k, i in enumerate(ids):
        os.symlink(imgs[k % len(imgs)], studies / f"{i}.jpg")
    for k, i in enumerate(ids[:labeled]):
        os.symlink(SAMPLE / "masks" / f"{imgs[k % len(imgs)].stem}.png", studies / "labels" / "final" / f"{i}.png")
    model = base / "model" / "polyp_seg-smoke.pt"
    model.parent.mkdir()
    model.write_bytes(b"v1")
    st = ActiveLearningState(studies / ".polypal", batch_size=batch)
    rng = np.random.default_rng(0)
    v1 = model_version(model)
    st.add_scores(v1, ids, rng.random(n), rng.standard_normal((n, dim)).astype(np.float32))
    t = time.perf_counter()
    st.plan("random", ids, set(ids[:labeled]), v1)
    st.plan("ta_coreset", ids, set(ids[:labeled]), v1)
    plan_s = time.perf_counter() - t
    time.sleep(0.01)
    model.write_bytes(b"v2-newer")  # a newer model is published...
    v2 = model_version(model)
    st.add_scores(v2, ids, rng.random(n), rng.standard_normal((n, dim)).astype(np.float32))  # ...and scored
    return {"v1": v1, "v2": v2, "plan_s": plan_s}


def start(code: Path, work: Path, batch: int):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(code / "lib"), MONAI_LABEL_AUTO_UPDATE_SCORING="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "monailabel"), "start_server", "--app",
                             str(code / "apps" / "polyp_al"), "--studies", str(work / "studies"), "--host",
                             "127.0.0.1", "--port", str(port), "--conf", "profile", "smoke", "--conf", "model_dir",
                             str(work / "model"), "--conf", "batch_size", str(batch)],
                            cwd=str(work), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 300:
        try:
            if http("GET", url + "/info/", timeout=5)[0] == 200:
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError((work / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    raise RuntimeError("server did not start")


def ask(url, strategy, client):
    t = time.perf_counter()
    s, r = http("POST", f"{url}/activelearning/{strategy}", json.dumps({"client_id": client}).encode(),
                {"Content-Type": "application/json"}, timeout=600)
    return (time.perf_counter() - t) * 1000, s, r


def measure(url: str, v2: str, others: int) -> dict:
    stop = threading.Event()
    lat: list[float] = []
    errors = []

    def annotator(k):
        while not stop.is_set():
            ms, s, r = ask(url, "random", f"other{k}")
            (lat.append(ms) if s == 200 else errors.append((s, r)))

    threads = [threading.Thread(target=annotator, args=(k,)) for k in range(others)]
    for t in threads:
        t.start()
    time.sleep(5.0)  # the same annotators before any re-plan: this machine's own latency, for comparison
    warm = len(lat)
    t0 = time.perf_counter()
    due_ms, s, r = ask(url, "ta_coreset", "due")
    due_lat = [due_ms]
    swapped_s = None
    while time.perf_counter() - t0 < 600:
        if r.get("model_version") == v2:
            swapped_s = time.perf_counter() - t0
            break
        time.sleep(0.2)
        ms, s, r = ask(url, "ta_coreset", "due")
        due_lat.append(ms)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    during = lat[warm:]
    before = lat[:warm]
    q = statistics.quantiles(during, n=100) if len(during) >= 2 else [float("nan")] * 99
    qb = statistics.quantiles(before, n=100) if len(before) >= 2 else [float("nan")] * 99
    return {"others_before_p50_ms": round(statistics.median(before), 1) if before else None,
            "others_before_p99_ms": round(qb[98], 1),
            "others_requests": len(during), "others_p50_ms": round(statistics.median(during), 1),
            "others_p99_ms": round(q[98], 1), "others_max_ms": round(max(during), 1),
            "due_first_ms": round(due_lat[0], 1), "due_p99_ms": round(max(due_lat) if len(due_lat) < 100 else
                                                                      statistics.quantiles(due_lat, n=100)[98], 1),
            "new_plan_served_after_s": None if swapped_s is None else round(swapped_s, 2),
            "errors": errors[:3]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--labeled", type=int, default=500)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--others", type=int, default=3, help="annotators asking `random` meanwhile")
    ap.add_argument("--baseline", required=True, help="git revision to compare against")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-replan-"))
    try:
        t = time.perf_counter()
        info = build(tmp / "base", a.frames, a.labeled, a.dim, a.batch)
        print(f"built {a.frames} frames, {a.labeled} labeled, {a.dim}-d latents for two model versions in "
              f"{time.perf_counter() - t:.0f} s (a synchronous ta_coreset plan took {info['plan_s']:.1f} s)",
              flush=True)
        base_code = tmp / "baseline-code"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base_code), a.baseline],
                       check=True)
        results = {}
        for name, code in (("baseline " + a.baseline, base_code), ("this tree", REPO)):
            work = tmp / name.replace(" ", "_")
            shutil.copytree(tmp / "base", work, symlinks=True)
            proc, url = start(code, work, a.batch)
            try:
                results[name] = measure(url, info["v2"], a.others)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait(30)
            print(f"{name}: {json.dumps(results[name])}", flush=True)
        b, n = results["baseline " + a.baseline], results["this tree"]
        print(f"\nN={a.frames} frames, B={a.batch}, {a.dim}-d latents, {a.others} other annotators on `random`")
        print(f"{'':32}{'baseline':>12}{'this tree':>12}{'ratio':>8}")
        for k in ("others_before_p50_ms", "others_before_p99_ms", "others_p50_ms", "others_p99_ms", "others_max_ms",
                  "due_first_ms", "due_p99_ms"):
            r = b[k] / n[k] if n[k] else float("nan")
            print(f"{k:32}{b[k]:>12}{n[k]:>12}{r:>8.1f}")
        print(f"{'new_plan_served_after_s':32}{b['new_plan_served_after_s']!s:>12}{n['new_plan_served_after_s']!s:>12}")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "baseline-code")],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
