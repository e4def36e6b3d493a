"""The app's datastore through a real server: crash safety (kill -9) and concurrency."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import synth_frame
from server_utils import Server, http, multipart

pytestmark = pytest.mark.server


def make_frames(root: Path, n: int, seed: int = 0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    masks = {}
    for i in range(n):
        img, m = synth_frame(rng, 48, 64)
        Image.fromarray(img).save(root / f"fr{i:03d}.png")
        masks[f"fr{i:03d}"] = m
    return masks


def put_label(url, image_id, mask, tag="final", timeout=30):
    import io

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buf, format="PNG")
    body, ct = multipart({"params": "{}"}, {"label": (f"{image_id}.png", buf.getvalue())})
    return http("PUT", f"{url}/datastore/label?image={image_id}&tag={tag}", body, {"Content-Type": ct},
                timeout=timeout)


def stored_labels(server):
    s, ds = http("GET", server.url + "/datastore/?output=all")
    assert s == 200
    return {k for k, v in ds["objects"].items() if "final" in v["labels"]}


def test_kill9_during_label_saves_loses_nothing_acknowledged(tmp_path):
    studies = tmp_path / "studies"
    masks = make_frames(studies, 60)
    ids = sorted(masks)
    acked: list[str] = []
    refused: list = []
    rnd = random.Random(7)
    srv = Server(studies, tmp_path).start()
    try:
        pos = 0
        for round_ in range(3):
            stop = threading.Event()

            def stream():
                nonlocal pos
                while not stop.is_set() and pos < len(ids):
                    i = ids[pos]
                    try:
                        s, _ = put_label(srv.url, i, masks[i], timeout=10)
                    except OSError:
                        return  # server died mid-request: not acknowledged
                    if s == 200:
                        acked.append(i)
                        pos += 1
                    else:
                        refused.append((i, s, _))
                        return

            t = threading.Thread(target=stream)
            t.start()
            # kill mid-stream once this round has had 1-3 saves acknowledged (a condition, not a sleep):
            # the stream is still sending, so the kill lands during a save or between two
            target = len(acked) + rnd.randint(1, 3)
            t0 = time.monotonic()
            while len(acked) < target and t.is_alive() and time.monotonic() - t0 < 120:
                time.sleep(0.02)
            assert len(acked) >= target, f"round {round_}: too few saves acknowledged in 120 s; refused: {refused}"
            srv.stop(sig=signal.SIGKILL)  # the whole process group: server and any scoring subprocess
            stop.set()
            t.join(timeout=30)
            srv = Server(studies, tmp_path, port=srv.port).start()  # must start again
            have = stored_labels(srv)
            missing = [i for i in acked if i not in have]
            assert not missing, f"round {round_}: acknowledged labels lost after kill -9: {missing}"
            for i in acked:
                stored = np.asarray(Image.open(studies / "labels" / "final" / f"{i}.png"))
                np.testing.assert_array_equal(stored > 0, masks[i])
        assert len(acked) >= 3 and acked == ids[: len(acked)]  # in order, none skipped
        assert http("GET", srv.url + "/info/")[0] == 200
    finally:
        srv.stop()


def test_concurrent_label_saves_while_scoring(tmp_path):
    from polypal.data import load_folder
    from polypal.learner import train
    from polypal.learner.model import save_checkpoint
    from polypal.learner import get_profile

    studies = tmp_path / "studies"
    masks = make_frames(studies, 48, seed=3)
    # a published model, so that start-up scoring computes a score + latent for every frame
    prof = get_profile("smoke")
    gen = tmp_path / "gen"
    (gen / "images").mkdir(parents=True)
    (gen / "masks").mkdir()
    for i in list(masks)[:8]:
        Image.open(studies / f"{i}.png").save(gen / "images" / f"{i}.png")
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(gen / "masks" / f"{i}.png")
    fs = load_folder(gen, prof.size)
    res = train(prof, fs.images, fs.masks, seed=0, device="cpu")
    (tmp_path / "model").mkdir()
    save_checkpoint(tmp_path / "model" / "polyp_seg-smoke.pt", res.model, prof)

    srv = Server(studies, tmp_path).start()
    try:
        ids = sorted(masks)
        errors = []
        served: dict[str, set] = {}  # frame -> clients it was served to

        def client(k):
            for i in ids[k::4]:
                s, r = put_label(srv.url, i, masks[i])
                if s != 200:
                    errors.append((i, s, r))
                # image-info updates from next-sample run at the same time
                s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": f"c{k}"}).encode(),
                            {"Content-Type": "application/json"})
                if s != 200:
                    errors.append(("next-sample", s, r))
                elif r.get("id"):
                    served.setdefault(r["id"], set()).add(f"c{k}")

        http("POST", srv.url + "/scoring/polyp_al", b"{}", {"Content-Type": "application/json"})
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert stored_labels(srv) == set(ids)

        def all_scored():
            versions = http("GET", srv.url + "/info/")[1]["polyp_al"]["state"]["versions"]
            return versions if any(n == len(ids) for n in versions.values()) else None

        srv.wait_for(all_scored, timeout=180, every=1, what="a score for every frame")
        # the served-at info written by next-sample survived the concurrent writes
        s, ds = http("GET", srv.url + "/datastore/?output=all")
        recorded = {k: v["image"]["info"]["strategy"]["random"] for k, v in ds["objects"].items()
                    if v["image"]["info"].get("strategy", {}).get("random")}
        assert served, "no next-sample call served a frame"
        assert set(recorded) == set(served)  # every serve recorded, none invented
        for k, rec in recorded.items():
            assert rec["client_id"] in served[k], (k, rec, served[k])
        # and no label was lost or altered by the concurrent info writes
        for i in ids:
            stored = np.asarray(Image.open(studies / "labels" / "final" / f"{i}.png"))
            np.testing.assert_array_equal(stored > 0, masks[i])
    finally:
        srv.stop()


def test_traversal_refused_on_every_label_endpoint(tmp_path):
    studies = tmp_path / "studies"
    masks = make_frames(studies, 3)
    srv = Server(studies, tmp_path).start()
    try:
        i = sorted(masks)[0]
        outside = tmp_path / "outside"
        for tag in ("../../../outside", "..", "a/b", "/tmp/x", "x%00y"):
            s, _ = put_label(srv.url, i, masks[i], tag=tag)
            assert 400 <= s < 500, tag
        for image in ("..%2F..%2Fetc", "%2Fetc%2Fpasswd"):
            s, _ = put_label(srv.url, image, masks[i])
            assert 400 <= s < 500, image
        s, _ = http("DELETE", f"{srv.url}/datastore/label?id={i}&tag=..%2F..%2Fx")
        assert 400 <= s < 500
        assert not outside.exists() and not Path("/tmp/x").exists()
        assert sorted(p.name for p in (studies / "labels").iterdir()) == ["final", "original"]
    finally:
        srv.stop()


def test_a_second_server_on_a_taken_port_exits_without_re_planning_the_running_ones_batches(tmp_path):
    """The same studies folder started twice by mistake, on the port the first one holds: uvicorn binds after
    the app's start-up, which ran a scoring subprocess (re-planning the running server's batches) before
    the bind error. Now the second server says the port is taken, runs no scoring, and exits."""
    studies = tmp_path / "studies"
    make_frames(studies, 6)
    first = Server(studies, tmp_path, env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "true"}).start()
    try:
        (tmp_path / "second").mkdir()
        second = Server(studies, tmp_path / "second", port=first.port,
                        env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "true"})
        try:
            assert second.spawn().proc.wait(timeout=300) != 0
        finally:
            second.stop()
        log = second.log.read_text(errors="replace")
        assert f"port {first.port} on 127.0.0.1 is in use" in log and "start-up scoring skipped" in log, log[-3000:]
        assert "-m scoring" not in log, log[-3000:]
        assert http("GET", first.url + "/info/")[0] == 200  # the first one still serves
    finally:
        first.stop()


def test_the_taken_port_check_agrees_with_how_the_server_binds(monkeypatch):
    """What a review found in the first version: `--host ::` beside a listener on 127.0.0.1 was called taken
    (a dual-stack test bind; asyncio binds IPv6 sockets IPv6-only), and so was every worker of `--workers N`
    (their parent holds the socket): each logged "will not start", then started with scoring off."""
    import importlib.util
    import socket
    import sys

    from server_utils import APP

    monkeypatch.syspath_prepend(str(APP))
    spec = importlib.util.spec_from_file_location("polyp_al_main_for_port_test", APP / "main.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])

        def taken(*args):
            monkeypatch.setattr(sys, "argv", ["monailabel", "start_server", "--app", str(APP), *args])
            return main._port_taken()

        assert taken("--host", "127.0.0.1", "--port", port) == f"port {port} on 127.0.0.1 is in use (another server?)"
        assert taken("--host", "0.0.0.0", "--port", port)  # uvicorn could not bind either
        assert taken("--host", "127.0.0.1", "--port", port, "--workers", "2") is None
        if socket.has_ipv6:
            assert taken("--host", "::", "--port", port) is None
    assert taken("--host", "127.0.0.1", "--port", port) is None  # free again
