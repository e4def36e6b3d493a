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
    srv = Server(studies, tmp_path, conf={"batch_size": "100", "threads": "1"}).start()
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
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$", st["finished_at"]), st
        assert st["train_frames"] + st["val_frames"] == 3
        # a label saved for a frame the model never trained on: its Dice, equal to the library's
        new = ids[4]
        body, ct = multipart({"params": "{}"}, {"label": (f"{new}.png", sample_mask(new).read_bytes())})
        s, r = http("PUT", f"{url}/datastore/label?image={new}&tag=final", body, {"Content-Type": ct})
        assert s == 200 and "model_dice" in r, r
        from polypal.data import read_mask, read_rgb, resize_mask, resize_rgb
        from polypal.learner import predict
        from polypal.model import load_checkpoint
        from polypal.quality import label_dice

        model, prof, _ = load_checkpoint(tmp_path / "model" / "polyp_seg-smoke.pt", device="cpu")
        rgb = read_rgb(studies / f"{new}.jpg")
        prob = predict(model, resize_rgb(rgb, prof.size)[None], aggregations=()).probs[0]
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
        # the labeled set as a zip in the export layout, with the manifest
        import io
        import zipfile

        s, data = http("GET", f"{url}/datastore/dataset")
        assert s == 200
        z = zipfile.ZipFile(io.BytesIO(data))
        names = set(z.namelist())
        for i in ids[:3] + [new]:
            assert f"images/{i}.jpg" in names and f"masks/{i}.png" in names
        frames = json.loads(z.read("manifest.json"))["frames"]
        assert sorted(r["id"] for r in frames) == sorted(ids[:3] + [new])
    finally:
        srv.stop()
