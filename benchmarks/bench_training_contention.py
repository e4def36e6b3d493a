"""Training time through real servers while an annotator keeps asking for frames and another CPU-heavy
process runs beside it: a baseline commit against this tree (with `--conf threads` 1 and 2), one run.

Each variant: the 30 bundled sample frames, 20 final labels, `POST /train/polyp_seg` (cpu-lite, a fixed
step budget); meanwhile one client asks `bvsb_ta_coreset` every second (on the baseline each answer with
a note queues a scoring run) and a separate process multiplies matrices on one core. Reported: the
training's own seconds (from its stats), scoring runs started while it trained, and the ratio to the
baseline. Since the v3 recipe (2026-12-05) this tree's cpu-lite trains with the endoscopy augmentation
and a baseline commit before it does not: the ratio then includes the augmentation's cost, so pick a
baseline from after 2026-12-05 to measure contention alone (results/benchmarks/training-contention.txt
was measured before).

    .venv/bin/python benchmarks/bench_training_contention.py --baseline f5ef9c8 --steps 150
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from server_utils import SAMPLE, free_port, http, multipart  # noqa: E402


def burn(stop):
    import numpy as np

    os.environ["OMP_NUM_THREADS"] = "1"
    a = np.random.default_rng(0).random((400, 400))
    while not stop.is_set():
        a = (a @ a) / 400.0


def start(code: Path, work: Path, conf: dict):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(code / "lib"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("OMP_NUM_THREADS", None)
    args = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(code / "apps" / "polyp_al"),
            "--studies", str(work / "studies"), "--host", "127.0.0.1", "--port", str(port)]
    for k, v in conf.items():
        args += ["--conf", k, str(v)]
    log = work / "server.log"
    proc = subprocess.Popen(args, cwd=str(work), stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if http("GET", url + "/info/", timeout=5)[0] == 200:
                return proc, url, log
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(log.read_text()[-2000:])


def one(code: Path, tmp: Path, name: str, steps: int, threads: int | None) -> dict:
    work = tmp / name.replace(" ", "_")
    (work / "studies").mkdir(parents=True)
    ids = []
    for p in sorted((SAMPLE / "images").glob("*.jpg")):
        shutil.copy(p, work / "studies" / p.name)
        ids.append(p.stem)
    conf = {"profile": "cpu-lite", "model_dir": str(work / "model"), "train_steps": steps}
    if threads:
        conf["threads"] = threads
    proc, url, log = start(code, work, conf)
    try:
        time.sleep(15)  # start-up scoring (thumbnails)
        for i in ids[:20]:
            body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", (SAMPLE / "masks" / f"{i}.png").read_bytes())})
            assert http("PUT", f"{url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})[0] == 200
        mark = len(log.read_bytes())
        s, r = http("POST", f"{url}/train/polyp_seg")
        assert s == 200, r
        stop = threading.Event()

        def annotator():
            k = 0
            while not stop.is_set():
                http("POST", f"{url}/activelearning/bvsb_ta_coreset", json.dumps({"client_id": f"c{k % 3}"}).encode(),
                     {"Content-Type": "application/json"})
                k += 1
                time.sleep(1.0)

        t = threading.Thread(target=annotator)
        t.start()
        t0 = time.time()
        stats = {}
        while time.time() - t0 < 3600:
            stats = http("GET", f"{url}/info/")[1].get("train_stats", {}).get("polyp_seg", {})
            if stats.get("status") == "DONE":
                break
            time.sleep(1.0)
        stop.set()
        t.join()
        text = log.read_bytes()[mark:].decode(errors="replace")
        return {"train_seconds": stats.get("seconds"), "wall_seconds": round(time.time() - t0, 1),
                "scoring_runs_started": len(re.findall(r"Scoring request", text))}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--steps", type=int, default=150)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-contention-"))
    base_code = tmp / "baseline-code"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base_code), a.baseline], check=True)
    stop = mp.Event()
    burner = mp.Process(target=burn, args=(stop,))
    burner.start()
    try:
        res = {}
        for name, code, threads in ((f"baseline {a.baseline}", base_code, None), ("this tree, threads 2", REPO, 2),
                                    ("this tree, threads 1", REPO, 1)):
            res[name] = one(code, tmp, name, a.steps, threads)
            print(f"{name}: {json.dumps(res[name])}", flush=True)
        b = res[f"baseline {a.baseline}"]["train_seconds"]
        print(f"\ncpu-lite, {a.steps} steps on 20 labels, one annotator asking every second, one CPU-heavy process")
        for name, r in res.items():
            print(f"{name:28} train {r['train_seconds']:>7} s  ratio to baseline {b / r['train_seconds']:.2f}x  "
                  f"scoring runs started during training: {r['scoring_runs_started']}")
    finally:
        stop.set()
        burner.join(10)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_code)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
