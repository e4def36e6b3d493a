"""End to end: a real monailabel server with apps/polyp_al, driven by MONAILabelClient and HTTP."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypal.data import read_mask, write_label
from server_utils import Server, http, make_studies, multipart, sample_mask

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


def test_cold_start_falls_back_and_says_so(server, client):
    # start-up scoring computes thumbnails; wait for it so the fallback is PCA-Coreset
    server.wait_for(lambda: client.info()["polyp_al"]["state"]["thumbnails"] >= 15, what="thumbnails")
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


def test_train_publishes_model_then_scoring_reruns(server, client):
    client.train_start("polyp_seg", {})
    model = server.workdir / "model" / "polyp_seg-smoke.pt"
    server.wait_for(model.exists, timeout=300, every=1, what="the published model file")
    server.wait_for(lambda: client.info()["train_stats"]["polyp_seg"].get("status") == "DONE", timeout=60,
                    what="training stats")
    info = client.info()
    stats = info["train_stats"]["polyp_seg"]
    assert stats["status"] == "DONE" and stats["train_frames"] + stats["val_frames"] == 6
    # scoring reruns by itself for the new model: every readable frame gets a score
    server.wait_for(lambda: any(n >= 15 for n in client.info()["polyp_al"]["state"]["versions"].values()),
                    timeout=120, what="scores for the new model")


def test_infer_png_and_nrrd_at_frame_size(server, client):
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


def test_infer_on_rgb_tiff(server, client):
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


def test_every_strategy_returns_unlabeled_ids(server, client):
    labeled = labeled_ids(server)
    for name in STRATEGIES:
        r = client.next_sample(name, {})
        assert r["id"] not in labeled and r["id"] != "zz_corrupt", name
        assert list(server.studies.glob(f"{r['id']}.*"))
        if name in ("bvsb", "bvsb_ta_coreset", "ta_coreset"):
            assert r["model_version"] != "none"
            assert "note" not in r or "fell back" not in r["note"], r


def test_concurrent_clients_get_different_frames(server):
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
    served = []
    for _ in range(20):
        r = client.next_sample("ta_coreset", {})
        if not r:
            break
        assert r["id"] not in labeled_ids(server)
        served.append(r["id"])
        client.save_label(r["id"], str(mask_for(server, r["id"])), tag="final")
    assert not client.next_sample("ta_coreset", {})  # nothing left: a clean empty answer
    assert len(served) == len(set(served))
    assert http("GET", server.url + "/info/")[0] == 200
