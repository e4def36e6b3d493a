"""What an annotator meets through the real server: clear errors, no scoring storm, readable training stats."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from server_utils import Server, http, make_studies, multipart, sample_mask

pytestmark = pytest.mark.server


def scoring_runs_started(srv) -> int:
    """Scoring runs MONAI Label started (its AsyncTask logs one 'Scoring request' line per run)."""
    return len(re.findall(r"Scoring request", srv.log.read_text(errors="replace")))


def test_errors_scoring_storm_and_training_stats(tmp_path):
    studies = make_studies(tmp_path / "studies", 12)
    ids = sorted(p.stem for p in studies.glob("*.jpg"))
    # fit_floor (a candidate retry rule, off by default) on: training stats then keep the model's fit
    srv = Server(studies, tmp_path, conf={"batch_size": "100", "threads": "1", "fit_floor": "0.01"}).start()
    try:
        url = srv.url
        # training with nothing to train on, an unknown trainer: a sentence, no subprocess
        s, r = http("POST", f"{url}/train/polyp_seg")
        assert s == 409 and "nothing to train on" in r["detail"], (s, r)
        s, r = http("POST", f"{url}/train/nosuch")
        assert s == 404 and "polyp_seg" in r["detail"]
        s, r = http("POST", f"{url}/infer/polyp?image={ids[0]}")
        assert s == 404
        # the start-up scoring run (thumbnails), then a dozen next-samples on a pool smaller than the batch
        srv.wait_for(lambda: http("GET", f"{url}/info/")[1]["polyp_al"]["state"]["thumbnails"] == len(ids),
                     timeout=120, what="thumbnails")
        before = scoring_runs_started(srv)
        for k in range(12):
            s, r = http("POST", f"{url}/activelearning/bvsb_ta_coreset", json.dumps({"client_id": f"c{k}"}).encode(),
                        {"Content-Type": "application/json"})
            assert s == 200 and r["id"], r
            assert "pca_coreset" in (r.get("note") or ""), r  # the plan made before thumbnails was replaced
        assert scoring_runs_started(srv) - before <= 1, srv.tail(80)
        # train on three labels: stats with readable times and the step count
        for i in ids[:3]:
            body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", sample_mask(i).read_bytes())})
            s, _ = http("PUT", f"{url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})
            assert s == 200
        s, r = http("POST", f"{url}/train/polyp_seg?run_sync=true", timeout=600)
        assert s == 200, r
        st = http("GET", f"{url}/info/")[1]["train_stats"]["polyp_seg"]
        assert st["status"] == "DONE" and st["steps"] >= 1
        assert 0 <= st["fit_dice"] <= 1 and 0 <= st["retries"] <= 3, st  # polyp Dice on its own frames
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$", st["finished_at"]), st
        assert st["train_frames"] + st["val_frames"] == 3
        # a label saved for a frame the model never trained on: its Dice, equal to the library's
        new = ids[4]
        body, ct = multipart({"params": "{}"}, {"label": (f"{new}.png", sample_mask(new).read_bytes())})
        s, r = http("PUT", f"{url}/datastore/label?image={new}&tag=final", body, {"Content-Type": ct})
        assert s == 200 and "model_dice" in r, r
        from polypal.data import read_mask, read_rgb, resize_mask, resize_rgb
        from polypal.learner import load_checkpoint, predict
        from polypal.serving.quality import label_dice

        model, prof, _ = load_checkpoint(tmp_path / "model" / "polyp_seg-smoke.pt", device="cpu")
        rgb = read_rgb(studies / f"{new}.jpg")
        prob = predict(model, resize_rgb(rgb, prof.size)[None], scorers=()).probs[0]
        want = label_dice(prob > 0.5, resize_mask(read_mask(sample_mask(new), rgb.shape[:2]), prof.size))
        assert abs(r["model_dice"] - want) < 1e-4
        info = http("GET", f"{url}/info/")[1]["polyp_al"]
        assert info["model"].startswith("model 1, trained ") and info["model"].endswith(" on 3 labels"), info["model"]
        # every frame was served to one of c0..c11 above: the 4 labels are counted for those annotators
        assert sum(v["labels"] for v in info["annotators"].values()) == 4
        assert set(info["annotators"]) <= {f"c{k}" for k in range(12)}, info["annotators"]
        q = info["quality"]
        assert q["by_model"][0]["labels"] == 1 and abs(q["by_model"][0]["mean_dice"] - want) < 1e-4
        assert q["stopping"] is None  # one model, one label: no signal
        # a label saved by another client than the one the frame was served to last (a lease ran out and
        # the frame went to another): credited to the client that saved it, with no pace (a probe: the
        # export and /info credited the one it was served to)
        other = ids[5]
        body, ct = multipart({"params": json.dumps({"client_id": "dr-z"})},
                             {"label": (f"{other}.png", sample_mask(other).read_bytes())})
        s, r = http("PUT", f"{url}/datastore/label?image={other}&tag=final", body, {"Content-Type": ct})
        assert s == 200, r
        ann = http("GET", f"{url}/info/")[1]["polyp_al"]["annotators"]
        assert ann.get("dr-z") == {"labels": 1, "median_seconds_per_label": None}, ann
        # a client_id next-sample would refuse is refused by a save too, before anything is stored (a probe:
        # lists, dicts and terminal escapes went into the export's manifest as sent)
        for bad in ([1, 2], {"a": 1}, "alice\u001b[31mred", "x" * 200, "dr\u202eevil", True):
            body, ct = multipart({"params": json.dumps({"client_id": bad})},
                                 {"label": (f"{ids[6]}.png", sample_mask(ids[6]).read_bytes())})
            s, r = http("PUT", f"{url}/datastore/label?image={ids[6]}&tag=final", body, {"Content-Type": ct})
            assert s == 400 and "client_id" in r["detail"], (bad, s, r)
            s, r = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": bad}).encode(),
                        {"Content-Type": "application/json"})
            assert s == 400 and "client_id" in r["detail"], (bad, s, r)
            # and by the label-info endpoints (a probe: they stored it as sent, and listings showed it)
            for path, field in ((f"/datastore/label/info?label={other}&tag=final", "info"),
                                (f"/datastore/updatelabelinfo?label={other}&tag=final", "params")):
                body, ct = multipart({field: json.dumps({"client_id": bad})}, {})
                s, r = http("PUT", f"{url}{path}", body, {"Content-Type": ct})
                assert s == 400 and "client_id" in r["detail"], (path, bad, s, r)
        s, r = http("GET", f"{url}/datastore/label/info?label={other}&tag=final")
        assert s == 200 and r.get("client_id") == "dr-z", r
        # the labeled set as a zip in the export layout, with the manifest
        import io
        import zipfile

        s, data = http("GET", f"{url}/datastore/dataset")
        assert s == 200
        z = zipfile.ZipFile(io.BytesIO(data))
        names = set(z.namelist())
        for i in ids[:3] + [new, other]:
            assert f"images/{i}.jpg" in names and f"masks/{i}.png" in names
        frames = json.loads(z.read("manifest.json"))["frames"]
        assert sorted(r["id"] for r in frames) == sorted(ids[:3] + [new, other])
        assert next(r for r in frames if r["id"] == other)["annotator"] == "dr-z"
    finally:
        srv.stop()


def test_two_cycles_progress_quality_export(tmp_path):
    """The annotator's loop twice: progress while training, quality per model, an export polypal reads,
    and no scoring storm (scoring runs started <= models published + label batches)."""
    import time

    from polypal.data import load_folder

    studies = make_studies(tmp_path / "studies", 14)
    srv = Server(studies, tmp_path, conf={"batch_size": "4", "train_steps": "400", "threads": "1"}).start()
    url = srv.url

    def label(i):
        body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", sample_mask(i).read_bytes())})
        s, r = http("PUT", f"{url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})
        assert s == 200, r
        return r

    def next_ids(k, cycle_at_least):
        out = []
        for j in range(k):
            s, r = http("POST", f"{url}/activelearning/bvsb_ta_coreset",
                        json.dumps({"client_id": f"a{j}"}).encode(), {"Content-Type": "application/json"})
            assert s == 200 and r["id"], r
            assert r["cycle"] >= cycle_at_least, r
            out.append(r["id"])
        return out

    def train_and_watch(number, served):
        import threading

        # three at once: one training, two told to wait (MONAI Label's own check sees only a started process:
        # a POST before the first one's process started was queued, a second training run after the first)
        res = []
        posts = [threading.Thread(target=lambda: res.append(http("POST", f"{url}/train/polyp_seg")))
                 for _ in range(3)]
        for t in posts:
            t.start()
        for t in posts:
            t.join()
        assert sorted(s for s, _ in res) == [200, 429, 429], res
        assert all(r["detail"].startswith("a training is already running: one at a time") for s, r in res if s == 429)
        # at once: STARTING (the process is reading frames) or RUNNING, never the last training's DONE, so
        # the README's loop (wait while STARTING or RUNNING) waits for this training
        st = http("GET", f"{url}/info/")[1]["train_stats"]["polyp_seg"]
        assert st["status"] in ("STARTING", "RUNNING"), st
        s, r = http("POST", f"{url}/train/polyp_seg")  # another: said what to do, not MONAI Label's "+++"
        assert s == 429 and r["detail"].startswith("a training is already running: one at a time"), (s, r)
        seen_progress = False
        t0 = time.time()
        while time.time() - t0 < 300:
            info = http("GET", f"{url}/info/")[1]
            st = info.get("train_stats", {}).get("polyp_seg", {})
            if st.get("status") in ("STARTING", "RUNNING") and not st.get("finishing"):
                # /info names the served model, not this one
                assert info["polyp_al"]["model"].endswith(served), (info["polyp_al"]["model"], st)
            elif st.get("finishing"):  # written and served; its process scores the pool before it exits
                assert st["result"] == "DONE" and info["polyp_al"]["model"].startswith(f"model {number},"), st
            else:
                assert st.get("status") == "DONE" and st.get("model_number") == number, st
            if st.get("status") == "RUNNING" and "step" in st:
                assert st["total_steps"] == 400 and st["eta_at"] and st["loss"] >= 0
                seen_progress = True
            if st.get("status") == "DONE" and st.get("model_number") == number:
                # the README's loop ends here: a new training can start at once (it got 429 while the
                # process scored the pool after writing DONE)
                task = http("GET", f"{url}/train/")[1]  # MONAI Label's task: done once the subprocess ended
                assert isinstance(task, dict) and task.get("status") not in ("RUNNING", "QUEUED"), task
                return seen_progress, st
            time.sleep(0.2)
        raise AssertionError(f"training did not finish\n{srv.tail()}")

    try:
        srv.wait_for(lambda: http("GET", f"{url}/info/")[1]["polyp_al"]["state"]["thumbnails"] == 14,
                     timeout=120, what="thumbnails")
        runs0 = len(re.findall(r"Scoring request", srv.log.read_text(errors="replace")))
        for i in next_ids(4, 1):
            label(i)
        progress, st = train_and_watch(1, "no model yet")
        assert progress, "no step/loss/ETA seen while training"
        assert st["model_number"] == 1
        # cycle 2: a batch planned with model 1 (after its scoring); its labels measure model 1
        srv.wait_for(lambda: http("GET", f"{url}/info/")[1]["polyp_al"]["state"]["plans"]
                     .get("bvsb_ta_coreset", {}).get("version", "").startswith("fallback") is False,
                     timeout=120, what="a plan made with model 1")
        dice = [label(i).get("model_dice") for i in next_ids(4, 2)]
        assert all(d is not None and 0 <= d <= 1 for d in dice), dice
        train_and_watch(2, " on 4 labels")
        train_and_watch(3, " on 8 labels")  # again at once: model 2 is never measured
        for i in next_ids(2, 3):
            label(i)
        q = http("GET", f"{url}/info/")[1]["polyp_al"]["quality"]
        # numbered as the trainings numbered them (a review: by rank among the measured ones, model 3 was "2")
        assert [m["labels"] for m in q["by_model"]] == [4, 2] and [m["model"] for m in q["by_model"]] == [1, 3], q
        assert "Failed To Trigger" not in srv.log.read_text(errors="replace")  # no refused trigger after training
        runs = len(re.findall(r"Scoring request", srv.log.read_text(errors="replace"))) - runs0
        assert runs <= 3 + 3, f"{runs} scoring runs for 3 models and 3 label batches"
        out = tmp_path / "export"
        from polypal.serving.export import main as export

        assert export([str(studies), str(out)]) == 0
        fs = load_folder(out, size=32)
        assert len(fs) == 10 and fs.masks is not None
    finally:
        srv.stop()


def test_an_ema_profile_trains_on_every_label(tmp_path):
    """cpu-lite keeps the EMA of its weights and never reads validation: the live training holds no label out
    (a review: only the library's rule was tested; the server could have gone on holding a fifth out)."""
    studies = make_studies(tmp_path / "studies", 8)
    ids = sorted(p.stem for p in studies.glob("*.jpg"))
    srv = Server(studies, tmp_path, conf={"profile": "cpu-lite", "train_steps": "2", "threads": "1",
                                          "collapse_retries": "0"}).start()
    try:
        for i in ids[:6]:
            body, ct = multipart({"params": "{}"}, {"label": (f"{i}.png", sample_mask(i).read_bytes())})
            s, r = http("PUT", f"{srv.url}/datastore/label?image={i}&tag=final", body, {"Content-Type": ct})
            assert s == 200, r
        s, r = http("POST", f"{srv.url}/train/polyp_seg?run_sync=true", timeout=600)
        st = http("GET", f"{srv.url}/info/")[1]["train_stats"]["polyp_seg"]
        assert st["status"] in ("DONE", "COLLAPSED") and st["train_frames"] == 6 and st["val_frames"] == 0, st
    finally:
        srv.stop()
