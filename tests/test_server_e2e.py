"""End to end: a real monailabel server with apps/polyp_al, driven by MONAILabelClient and HTTP."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypal.serving import model_version
from polypal.data import read_mask, write_label
from server_utils import APP, Server, http, make_studies, multipart, sample_mask

pytestmark = pytest.mark.server
STRATEGIES = ["random", "bvsb", "ta_coreset", "pca_coreset", "bvsb_ta_coreset"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("srv")
    studies = make_studies(work / "studies", n=14)
    # a corrupt frame in the studies folder must be skipped, not crash anything
    (studies / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    # a CVC-style RGB TIFF frame
    first = sorted(studies.glob("*.jpg"))[0]
    Image.open(first).save(studies / "cvc_style.tif")
    srv = Server(studies, work).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    from monailabel.client import MONAILabelClient

    return MONAILabelClient(server.url, tmpdir=str(server.workdir), client_id="annotator-1")


@pytest.fixture(scope="module")
def cold_server(tmp_path_factory):
    """A server that never gets a model, for the cold-start behaviour (whatever ran before)."""
    work = tmp_path_factory.mktemp("cold")
    studies = make_studies(work / "studies", n=5)
    (studies / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    srv = Server(studies, work).start()
    yield srv
    srv.stop()


def readable_ids(server):
    return sorted(p.stem for p in server.studies.iterdir()
                  if p.suffix in (".jpg", ".tif") and p.stem != "zz_corrupt")


def al_state(server):
    """The server's active-learning state (scores, plans, leases), opened from the test process."""
    from polypal.serving import ActiveLearningState

    return ActiveLearningState(server.studies / ".polypal")


def held_by_others(server, client_id):
    import time

    rows = al_state(server)._conn().execute("SELECT image_id, client_id, expires FROM leases").fetchall()
    return {i for i, c, exp in rows if c != client_id and exp > time.time()}


def library_prediction(model_path, frame_path):
    """What the library predicts for one frame: probabilities at the profile size, latent, BvSB mean score."""
    from polypal.data import read_rgb, resize_rgb
    from polypal.learner import load_checkpoint, predict
    from polypal.sampler import BvSB

    model, prof, _ = load_checkpoint(model_path, device="cpu")
    rgb = read_rgb(frame_path)
    pred = predict(model, resize_rgb(rgb, prof.size)[None], scorers=(BvSB("mean"),))
    return rgb.shape[:2], pred


N_TRAIN_LABELS = 6


@pytest.fixture(scope="module")
def trained(server, client):
    """A model trained through the server on the first 6 frames, and the pool scored with it.

    Any test that needs a model asks for this fixture, so tests pass alone and in any order."""
    model = server.workdir / "model" / "polyp_seg-smoke.pt"
    if not model.exists():
        have = labeled_ids(server)
        for i in sorted(p.stem for p in server.studies.glob("*.jpg"))[:N_TRAIN_LABELS]:
            if i not in have:
                client.save_label(i, str(sample_mask(i)), tag="final")
        assert len(labeled_ids(server)) == N_TRAIN_LABELS
        client.train_start("polyp_seg", {})
        server.wait_for(model.exists, timeout=300, every=1, what="the published model file")
    server.wait_for(lambda: client.info()["train_stats"]["polyp_seg"].get("status") == "DONE", timeout=60,
                    what="training stats")
    # scoring reruns by itself for the new model: every readable frame gets a score
    n = len(readable_ids(server))
    server.wait_for(lambda: client.info()["polyp_al"]["state"]["versions"].get(model_version(model), 0) >= n,
                    timeout=120, what="scores for the new model")
    return model


def frame_hw(server, image_id):
    return Image.open(next(server.studies.glob(f"{image_id}.*"))).size[::-1]


def mask_for(server, image_id):
    """The sample mask of a frame; the TIFF frame is a copy of the first JPEG frame."""
    m = sample_mask(image_id)
    return m if m.exists() else sample_mask(sorted(server.studies.glob("*.jpg"))[0].stem)


def labeled_ids(server):
    _, ds = http("GET", server.url + "/datastore/?output=all")
    return {k for k, v in ds["objects"].items() if "final" in v.get("labels", {})}


def test_info_lists_tasks(client):
    info = client.info()
    assert "polyp_seg" in info["models"] and "polyp_seg" in info["trainers"]
    assert "polyp_al" in info["scoring"]
    assert set(STRATEGIES) <= set(info["strategies"])
    assert info["labels"] == {"polyp": 1} or info["labels"] == ["polyp"]
    assert info["models"]["polyp_seg"]["labels"] == {"polyp": 1}


def test_cold_start_falls_back_and_says_so(cold_server):
    from monailabel.client import MONAILabelClient

    server = cold_server
    client = MONAILabelClient(server.url, tmpdir=str(server.workdir), client_id="annotator-1")
    # start-up scoring computes thumbnails; wait for it so the fallback is PCA-Coreset
    n = len(readable_ids(server))
    server.wait_for(lambda: client.info()["polyp_al"]["state"]["thumbnails"] >= n, what="thumbnails")
    r = client.next_sample("bvsb_ta_coreset", {})
    assert r["id"] and r["id"] != "zz_corrupt"
    assert r["al_strategy"] == "bvsb_ta_coreset"
    assert "fell back to pca_coreset" in r["note"]
    assert r["cycle"] >= 1 and r["position"] >= 1 and r["batch_size"] == 4
    assert r["picked_by"] in ("diversity", "uncertainty", "both")
    assert "zz_corrupt" in client.info()["polyp_al"]["state"]["bad_frames"]
    # no model yet: infer says so instead of answering with untrained weights
    s, body = http("POST", f"{server.url}/infer/polyp_seg?image={r['id']}", b"", {})
    assert s == 409 and "no model trained yet" in body["detail"]


def test_save_label_png_and_slicer_nifti(server, client):
    ids = sorted(p.stem for p in server.studies.glob("*.jpg") if p.stem != "zz_corrupt")
    for i in ids[:5]:
        r = client.save_label(i, str(sample_mask(i)), tag="final")
        assert r["image"] == i
    # a single-slice (W, H, 1) volume, as 3D Slicer saves a 2D frame's label
    i = ids[5]
    m = read_mask(sample_mask(i))
    vol = server.workdir / "slicer-label.nii.gz"
    write_label(m.astype(np.uint8), vol)
    client.save_label(i, str(vol), tag="final", params={"label_info": [{"name": "polyp", "idx": 1}]})
    assert {*ids[:6]} <= labeled_ids(server)
    stored = next((server.studies / "labels" / "final").glob(f"{i}.*"))
    np.testing.assert_array_equal(read_mask(stored, frame_hw(server, i)), m)


def test_bad_labels_rejected_and_datastore_unchanged(server):
    ids = sorted(p.stem for p in server.studies.glob("*.jpg") if p.stem != "zz_corrupt")
    target = ids[-1]
    before = sorted(p.name for p in (server.studies / "labels" / "final").iterdir())
    # wrong size
    buf = server.workdir / "small.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(buf)
    body, ct = multipart({"params": "{}"}, {"label": ("small.png", buf.read_bytes())})
    s, r = http("PUT", f"{server.url}/datastore/label?image={target}&tag=final", body, {"Content-Type": ct})
    assert s == 422 and "differs" in r["detail"]
    # not an image at all
    body, ct = multipart({"params": "{}"}, {"label": ("x.png", b"this is text, not a png")})
    s, r = http("PUT", f"{server.url}/datastore/label?image={target}&tag=final", body, {"Content-Type": ct})
    assert s == 422 and "not a readable image" in r["detail"]
    # path traversal in the tag and in the id
    body, ct = multipart({"params": "{}"}, {"label": ("m.png", sample_mask(target).read_bytes())})
    for q in (f"image={target}&tag=../../../../tmp/polypal-x", "image=../../etc&tag=final"):
        s, _ = http("PUT", f"{server.url}/datastore/label?{q}", body, {"Content-Type": ct})
        assert s in (400, 404)
    assert not Path("/tmp/polypal-x").exists()
    assert sorted(p.name for p in (server.studies / "labels" / "final").iterdir()) == before
    assert http("GET", server.url + "/info/")[0] == 200  # still serving


def test_train_publishes_model_then_scoring_reruns(server, client, trained):
    # the fixture trained through POST /train and waited for the published file and the new scores
    stats = client.info()["train_stats"]["polyp_seg"]
    assert stats["status"] == "DONE" and stats["train_frames"] + stats["val_frames"] == N_TRAIN_LABELS
    versions = client.info()["polyp_al"]["state"]["versions"]
    assert versions[model_version(trained)] == len(readable_ids(server))  # every readable frame, once


def test_infer_png_and_nrrd_at_frame_size(server, client, trained):
    i = sorted(p.stem for p in server.studies.glob("*.jpg"))[0]
    h, w = frame_hw(server, i)
    out, params = client.infer("polyp_seg", i, {})
    arr = np.asarray(Image.open(out))
    assert out.endswith(".png") and arr.shape == (h, w) and arr.dtype == np.uint8
    assert set(np.unique(arr)) <= {0, 1}
    # the parameters the 3D Slicer plugin sends
    slicer = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "restore_label_idx": False}
    out2, _ = client.infer("polyp_seg", i, slicer)
    import nrrd

    vol, hdr = nrrd.read(out2)
    assert vol.shape == (w, h, 1)  # (x, y, z) as Slicer expects, overlaying the frame
    np.testing.assert_array_equal(vol[:, :, 0].T, arr)
    out3, _ = client.infer("polyp_seg", i, {"result_extension": ".nii.gz"})
    np.testing.assert_array_equal(read_mask(out3, (h, w)), arr > 0)


def test_infer_on_rgb_tiff(server, client, trained):
    out, params = client.infer("polyp_seg", "cvc_style", {})
    assert np.asarray(Image.open(out)).shape == frame_hw(server, "cvc_style")


def test_infer_unknown_id_is_404(server):
    s, r = http("POST", f"{server.url}/infer/polyp_seg?image=no_such_frame", b"", {})
    assert s == 404 and "unknown image id" in r["detail"]


def test_store_seg_needs_a_dicomweb_datastore(server):
    """Storing the prediction as DICOM SEG is for DICOMweb frames: a folder datastore gets a clear 400."""
    i = http("GET", f"{server.url}/datastore/?output=all")[1]["objects"]
    some = sorted(i)[0]
    s, r = http("POST", f"{server.url}/infer/polyp_seg?image={some}", b'params={"store_seg": true}',
                {"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 400 and "DICOMweb" in r["detail"], (s, r)


def test_every_strategy_returns_unlabeled_ids(server, client, trained):
    labeled = labeled_ids(server)
    for name in STRATEGIES:
        r = client.next_sample(name, {})
        assert r["id"] not in labeled and r["id"] != "zz_corrupt", name
        assert list(server.studies.glob(f"{r['id']}.*"))
        if name in ("bvsb", "bvsb_ta_coreset", "ta_coreset"):
            assert r["model_version"] != "none"
            assert "note" not in r or "fell back" not in r["note"], r


def test_concurrent_clients_get_different_frames(server, trained):
    from monailabel.client import MONAILabelClient

    got = {}

    def ask(cid):
        got[cid] = MONAILabelClient(server.url, client_id=cid).next_sample("bvsb", {})["id"]

    threads = [threading.Thread(target=ask, args=(f"c{k}",)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got.values())) == 3, got


def test_labeled_frames_never_come_back_until_empty(server, client):
    before = labeled_ids(server)
    served = []
    try:
        for _ in range(20):
            r = client.next_sample("ta_coreset", {})
            if not r:
                break
            assert r["id"] not in labeled_ids(server)
            served.append(r["id"])
            client.save_label(r["id"], str(mask_for(server, r["id"])), tag="final")
        assert not client.next_sample("ta_coreset", {})  # nothing left: a clean empty answer
        assert len(served) == len(set(served))
        # every readable frame was served, labeled before, or leased to another client
        assert set(served) | before | held_by_others(server, "annotator-1") == set(readable_ids(server))
        assert http("GET", server.url + "/info/")[0] == 200
    finally:  # give the pool back, so the other tests do not depend on running before this one
        for i in served:
            s, _ = http("DELETE", f"{server.url}/datastore/label?id={i}&tag=final")
            assert s == 200, (i, s)
    assert labeled_ids(server) == before


# -- the app against the library ---------------------------------------------------------------

def test_server_inference_equals_library_prediction(server, client, trained):
    from polypal.data import resize_prob

    for i in readable_ids(server)[:3] + ["cvc_style"]:
        path = next(server.studies.glob(f"{i}.*"))
        out, _ = client.infer("polyp_seg", i, {})
        served = np.asarray(Image.open(out))
        hw, pred = library_prediction(trained, path)
        prob = resize_prob(pred.probs[0], hw)
        want = (prob > 0.5).astype(np.uint8)
        assert served.shape == want.shape
        differ = served != want
        # only pixels within float noise of the threshold may differ
        assert not differ.any() or np.abs(prob[differ] - 0.5).max() < 1e-4, (i, int(differ.sum()))
        assert want.sum() == served.sum() or differ.sum() <= 2, i


def test_stored_scores_equal_library_scores(server, trained):
    ids = readable_ids(server)
    stored = al_state(server).scores_for(model_version(trained), ids)
    assert stored is not None, "some readable frame has no score for the published model"
    scores, latents = stored
    for k, i in enumerate(ids):
        _, pred = library_prediction(trained, next(server.studies.glob(f"{i}.*")))
        assert scores[k] == pytest.approx(float(pred.scores["mean"][0]), abs=1e-5), i
        np.testing.assert_allclose(latents[k], pred.latents[0], rtol=1e-4, atol=1e-5, err_msg=i)


def test_bvsb_serves_the_top_scored_unlabeled_frame(server, trained):
    from monailabel.client import MONAILabelClient

    ids = readable_ids(server)
    scores, _ = al_state(server).scores_for(model_version(trained), ids)
    by_id = dict(zip(ids, scores.tolist()))
    for k in range(3):  # three clients in turn: each gets the best frame nobody else holds
        cid = f"bvsb-check-{k}"
        free = [i for i in ids if i not in labeled_ids(server) and i not in held_by_others(server, cid)]
        if not free:
            break
        best = max(by_id[i] for i in free)
        r = MONAILabelClient(server.url, client_id=cid).next_sample("bvsb", {})
        assert r["id"] in free
        assert by_id[r["id"]] == best, (r["id"], by_id[r["id"]], best)
        assert r["id"] == min(i for i in free if by_id[i] == best)  # ties: the first id
        assert r["model_version"] == model_version(trained)


def test_a_strategy_by_its_offline_name(server, trained):
    """polypal-sim and the paper call them unc_ta_coreset and uncertainty; the server answered 404 to those
    names (its own: bvsb_ta_coreset, bvsb), naming only its own (a fresh user's walkthrough). (After the
    bvsb test: a next sample before the model is scored starts a scoring run that the tests before count on
    not being there.)"""
    js = {"Content-Type": "application/json"}
    s, r = http("POST", f"{server.url}/activelearning/unc_ta_coreset", json.dumps({"client_id": "alias"}).encode(), js)
    assert s == 200 and r.get("id") and r["al_strategy"] == "bvsb_ta_coreset", (s, r)
    s, r = http("POST", f"{server.url}/activelearning/no_such", b"{}", js)
    assert s == 404 and "unc_ta_coreset" in r["detail"] and "'bvsb_ta_coreset'" in r["detail"], r


def test_the_training_floor_is_the_profiles_unless_told_otherwise(tmp_path):
    """cpu-lite's budget (40 epochs, 1200-3000 steps, endoscopy augmentation, 3 collapse retries) unless
    --conf min_steps moves its floor (results/calibration/README.md, "v3")."""
    studies = make_studies(tmp_path / "studies", 4)
    for conf, steps, floor in (({}, "1200-3000", 0.0), ({"min_steps": "600", "fit_floor": "0.55"}, "600-3000", 0.55),
                               ({"min_steps": "4000"}, "4000-4000", 0.0)):
        srv = Server(studies, tmp_path, conf={"profile": "cpu-lite", **conf}).start()
        try:
            info = http("GET", srv.url + "/info/")[1]
            cfg = info["trainers"]["polyp_seg"]["config"]
            assert cfg["steps"] == steps and cfg["augment"] == "endo" and cfg["collapse_retries"] == 3, cfg
            assert cfg["fit_floor"] == floor, cfg  # the fit check: off unless asked for
        finally:
            srv.stop()


def test_each_studies_folder_keeps_its_own_model_by_default(tmp_path):
    """Without --conf model_dir the model lives in <studies>/.polypal/model: a server started on other
    frames neither serves nor overwrites it (all folders shared apps/polyp_al/model before), and the
    model's files are not frames of the datastore."""
    from monailabel.client import MONAILabelClient

    a = make_studies(tmp_path / "a", 4)
    b = make_studies(tmp_path / "b", 4)
    srv = Server(a, tmp_path, conf={"model_dir": None}).start()
    try:
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path), client_id="annotator-1")
        for i in sorted(p.stem for p in a.glob("*.jpg"))[:3]:
            client.save_label(i, str(sample_mask(i)), tag="final")
        s, r = http("POST", srv.url + "/train/polyp_seg?run_sync=true", timeout=600)
        assert s == 200, r
        assert (a / ".polypal" / "model" / "polyp_seg-smoke.pt").is_file()
        pa = http("GET", srv.url + "/info/")[1]["polyp_al"]
        assert pa["model"].startswith("model 1, trained ") and pa["has_model"] is True, pa
        _, ds = http("GET", srv.url + "/datastore/?output=all")
        assert sorted(ds["objects"]) == sorted(p.stem for p in a.glob("*.jpg"))  # no model file among frames
    finally:
        srv.stop()
    other = Server(b, tmp_path, conf={"model_dir": None}).start()
    try:
        pa = http("GET", other.url + "/info/")[1]["polyp_al"]
        assert pa["model"] == "no model yet" and pa["has_model"] is False, pa  # (a flag: clients compared the text)
    finally:
        other.stop()
    assert not (b / ".polypal" / "model" / "polyp_seg-smoke.pt").exists()


def test_a_model_left_in_the_old_shared_place_is_named_at_start(tmp_path, caplog, monkeypatch):
    import importlib.util
    import logging
    import sys

    spec = importlib.util.spec_from_file_location("polyp_al_config_under_test", APP / "lib" / "config.py")
    config = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, config)  # its dataclass looks itself up there
    spec.loader.exec_module(config)
    app_dir, studies = tmp_path / "app", tmp_path / "studies"
    new = config.default_model_dir(str(app_dir), str(studies))
    assert new == str(studies / ".polypal" / "model")
    # a DICOMweb server's own folder, outside the code, one per server URL
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    dw = config.default_model_dir(str(app_dir), "http://127.0.0.1:8042/dicom-web")
    assert dw.startswith(str(tmp_path / "share" / "polypal" / "dicomweb" / "127.0.0.1-8042-")) and dw.endswith("model")
    assert dw != config.default_model_dir(str(app_dir), "http://127.0.0.1:8043/dicom-web")
    assert dw == config.default_model_dir(str(app_dir), "http://127.0.0.1:8042/dicom-web/")
    (app_dir / "model").mkdir(parents=True)
    (app_dir / "model" / "polyp_seg-smoke.pt").write_bytes(b"old")
    with caplog.at_level(logging.WARNING):
        config.warn_unused_model(str(app_dir), str(studies), {}, os.path.join(new, "polyp_seg-smoke.pt"))
    assert "polyp_seg-smoke.pt is not served" in caplog.text and "--conf model_dir" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # chosen explicitly: nothing to say
        config.warn_unused_model(str(app_dir), str(studies), {"model_dir": str(app_dir / "model")},
                                 str(app_dir / "model" / "polyp_seg-smoke.pt"))
    assert caplog.text == ""


def test_a_dataset_folder_given_as_studies_is_named_in_the_log(tmp_path):
    """A Kvasir-layout folder (images/ and masks/) given as --studies has no frame at the top: the server
    starts, says so with the --studies that would serve them, and next-sample answers {}."""
    import shutil

    from server_utils import SAMPLE

    data = tmp_path / "kvasir"
    shutil.copytree(SAMPLE, data, ignore=lambda d, names: names[3:] if d.endswith(("images", "masks")) else [])
    srv = Server(data, tmp_path).start()
    try:
        assert http("GET", srv.url + "/info/")[1]["datastore"]["total"] == 0
        assert http("POST", srv.url + "/activelearning/random", b"{}", {"Content-Type": "application/json"}) == (200, {})
        log = srv.tail(400)
        assert "frames go at the top of the studies folder" in log and f"--studies {data / 'images'}" in log, log
        assert "check the path" not in log
    finally:
        srv.stop()
    # a mistyped --studies: MONAI Label makes the folder, and the log says it was empty (a fresh user's walkthrough)
    srv = Server(tmp_path / "no-such-frames", tmp_path).start()
    try:
        assert http("GET", srv.url + "/info/")[1]["datastore"]["total"] == 0
        assert "MONAI Label makes a --studies folder that does not exist, so if you meant a folder of frames, " \
               "check the path" in srv.tail(400)
    finally:
        srv.stop()
