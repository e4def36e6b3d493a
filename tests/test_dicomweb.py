"""DICOMweb: Orthanc on loopback with our frames, and polyp-al serving them (skips without Orthanc)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypal.serving import dicomweb
from conftest import always_polyp_model
from server_utils import SAMPLE, Server, free_port, http, multipart

pytestmark = pytest.mark.server


def up_reaped(data: Path, **kw) -> str:
    """``dicomweb.up``, and reap Orthanc (this process's child) when it exits, so that ``dicomweb.down``
    (which waits for the pid to vanish) returns at once instead of waiting 10 s on a zombie."""
    import os
    import threading

    url = dicomweb.up(data, **kw)
    pid = json.loads((Path(data).resolve() / "polypal-orthanc.json").read_text())["pid"]

    def reap():
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # reaped elsewhere (subprocess's own clean-up), or not our child
            pass

    threading.Thread(target=reap, daemon=True).start()
    return url


def timed_down(data: Path) -> float:
    t0 = time.monotonic()
    dicomweb.down(data)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()):
        pytest.skip("Orthanc not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)")
    try:
        dicomweb.find_dicomweb_plugin()
    except SystemExit as e:
        pytest.skip(str(e))
    data = tmp_path_factory.mktemp("orthanc")
    url = up_reaped(data, port=free_port(), dicom_port=free_port())
    yield url, data
    assert timed_down(data) < 5  # reaped: no 10 s wait on a zombie


def test_load_is_idempotent_and_traceable(orthanc, tmp_path):
    url, _ = orthanc
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, frames / p.name)
    (frames / "broken.png").write_bytes(b"not a png")
    first = dicomweb.load(url, frames)
    again = dicomweb.load(url, frames)
    assert first["new"] == 3 and again == {"new": 0, "already": 3, "failed": {"broken.png": again["failed"]["broken.png"]}}
    series = http("GET", url + "/dicom-web/series?Modality=ES")[1]
    names = [s["0008103E"]["Value"][0] for s in series]  # other tests' frames may share this Orthanc
    assert all(names.count(p.stem) == 1 for p in frames.glob("*.jpg")) and "broken" not in names
    sop = http("GET", url + "/dicom-web/instances")[1][0]
    assert sop["00080016"]["Value"][0] == dicomweb.VL_ENDOSCOPIC
    # the UIDs come from the file name: another frame of a loaded name (another folder's, or the file edited)
    # was counted "already" and never loaded; two files of one name in a folder got one frame's UIDs
    other = tmp_path / "other"
    other.mkdir()
    first_jpg = sorted(frames.glob("*.jpg"))[0]
    Image.open(first_jpg).transpose(Image.FLIP_LEFT_RIGHT).save(other / first_jpg.name)
    Image.open(first_jpg).save(other / (first_jpg.stem + ".png"))
    res = dicomweb.load(url, other)
    assert res["new"] == 0 and res["already"] == 0, res
    assert "pixels differ" in res["failed"][first_jpg.name] and "same name as" in res["failed"][first_jpg.stem + ".png"]


def test_polyp_al_serves_dicomweb_frames(orthanc, tmp_path):
    url, _ = orthanc
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.jpg"))[3:6]:
        shutil.copy(p, frames / p.name)
    dicomweb.load(url, frames)
    tmp = tmp_path / "tmp"  # the server's temp folder: each frame's conversion was left there (a review)
    tmp.mkdir()
    cache = tmp_path / "cache"  # MONAI Label's copy of the DICOMweb server's series
    srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "2"},
                 env={"TMPDIR": str(tmp), "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(cache),
                      "POLYPAL_DICOMWEB_LIST_EVERY": "2"}).start()  # (the server's frame list: 2 s old at most)
    try:
        s, r = http("POST", srv.url + "/activelearning/random", json.dumps({"client_id": "a"}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 200 and r["id"] and r["Modality"] == "ES"
        # OHIF's searches through the proxy keep their query (MONAI Label's proxy sent the path alone: a search
        # for one series, or a study list's limit, answered every series in the server)
        assert len(http("GET", f"{url}/dicom-web/series")[1]) >= 3
        for query in (f"SeriesInstanceUID={r['id']}", "limit=1"):
            s, found = http("GET", f"{srv.url}/proxy/dicom/qido/series?{query}")
            if isinstance(found, bytes):  # relayed as Orthanc sent it (Content-Encoding: gzip)
                import gzip

                found = json.loads(gzip.decompress(found))
            assert s == 200 and len(found) == 1, (query, len(found))
        # the series' address on the DICOMweb server, with its port (dicomweb_client's Host header drops it,
        # and Orthanc builds the address from that header)
        assert r["RetrieveURL"] == f"{url}/dicom-web/studies/{r['StudyInstanceUID']}/series/{r['id']}", r
        body, ct = multipart({"info": json.dumps({"RetrieveURL": "http://elsewhere.example/"})}, {})
        s, _ = http("PUT", f"{srv.url}/datastore/image/info?image={r['id']}", body, {"Content-Type": ct})
        assert s == 400, s  # a link shown to annotators (OHIF's panel) is the server's to write
        # the frame converts to a (W, H, 1, 1, 3) NIfTI, which the library reads back as (H, W, 3)
        from polypal.data import read_rgb

        rgb = read_rgb(r["path"])
        desc = http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={r['id']}")[1][0]["0008103E"]["Value"][0]
        orig = np.asarray(Image.open(SAMPLE / "images" / f"{desc}.jpg").convert("RGB"))
        assert rgb.shape == orig.shape
        np.testing.assert_array_equal(rgb, orig)
        s, _ = http("POST", f"{srv.url}/infer/polyp_seg?image={r['id']}", b"", {})
        assert s == 409  # no model yet: a clear answer
        # a PNG mask saved from a client arrives in Orthanc as a DICOM SEG on that frame
        from monailabel.client import MONAILabelClient

        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path), client_id="a")
        frame_study = http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={r['id']}")[1][0]["0020000D"]["Value"][0]
        all_before = len(http("GET", f"{url}/dicom-web/series?Modality=SEG")[1])  # other tests' SEGs included
        client.save_label(r["id"], str(SAMPLE / "masks" / f"{desc}.png"), tag="final")
        assert len(http("GET", f"{url}/dicom-web/series?Modality=SEG")[1]) == all_before + 1
        segs = _segs_on(url, frame_study)  # the new SEG is on the frame's study
        assert len(segs) == 1
        # the SEG read back from Orthanc is the uploaded mask, pixel for pixel
        mask = np.asarray(Image.open(SAMPLE / "masks" / f"{desc}.png").convert("L")) > 127
        np.testing.assert_array_equal(_seg_pixels(url, segs[0]["0020000E"]["Value"][0]), mask)
        # a mask of the wrong size is refused and nothing new reaches Orthanc
        bad = tmp_path / "bad.png"
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
        with pytest.raises(Exception, match="422"):
            client.save_label(r["id"], str(bad), tag="final")
        assert len(http("GET", f"{url}/dicom-web/series?Modality=SEG")[1]) == all_before + 1
        # training reads that label; scoring then covers the DICOMweb frames; infer answers at frame size
        client.train_start("polyp_seg", {})
        model = tmp_path / "model" / "polyp_seg-smoke.pt"
        srv.wait_for(model.exists, timeout=300, every=1, what="a model trained on the DICOMweb label")
        n_frames = len(http("GET", f"{url}/dicom-web/series?Modality=ES")[1])
        srv.wait_for(lambda: any(v >= n_frames for v in client.info()["polyp_al"]["state"]["versions"].values()),
                     timeout=300, every=2, what="scores for every DICOMweb frame")
        out, _ = client.infer("polyp_seg", r["id"], {})
        assert np.asarray(Image.open(out)).shape == orig.shape[:2]
        # a label on a frame the model did not train on: the model's Dice on it, in the answer and in /info
        # (it was not measured for a DICOMweb server: its labels are SEGs on the PACS)
        s, r2 = http("POST", srv.url + "/activelearning/random", json.dumps({"client_id": "b"}).encode(),
                     {"Content-Type": "application/json"})
        assert s == 200 and r2["id"] not in ("", r["id"]), r2
        desc2 = http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={r2['id']}")[1][0]["0008103E"]["Value"][0]
        saved = client.save_label(r2["id"], str(SAMPLE / "masks" / f"{desc2}.png"), tag="final")
        from polypal.data import read_mask, read_rgb, resize_mask, resize_rgb
        from polypal.learner import load_checkpoint, predict
        from polypal.serving.quality import label_dice

        net, prof, _ = load_checkpoint(model, device="cpu")
        rgb2 = read_rgb(SAMPLE / "images" / f"{desc2}.jpg")
        prob = predict(net, resize_rgb(rgb2, prof.size)[None], scorers=()).probs[0]
        want = label_dice(prob > 0.5, resize_mask(read_mask(SAMPLE / "masks" / f"{desc2}.png"), prof.size))
        assert abs(saved["model_dice"] - want) < 1e-4, (saved, want)
        q = client.info()["polyp_al"]["quality"]
        assert q["by_model"][0]["labels"] == 1 and abs(q["by_model"][0]["mean_dice"] - want) < 1e-4, q
        # every frame was converted (scored, served, trained on): none of the conversions stayed behind, nor the
        # refused label's upload (MONAI Label deletes it only on success)
        left = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.suffix != ".json")  # (its log config)
        assert not left and not [p.name for p in tmp.rglob("*.nii.gz")], sorted(p.name for p in tmp.rglob("*"))
        # frames and labels live in the DICOMweb server: uploads and deletes of them here are refused (a frame
        # upload put any file, a text file too, in the cache unchecked; a delete dropped a frame's cached copy
        # and its label record, not the series)
        cached = sorted(cache.rglob("*"))
        assert any(p.name == f"{r['id']}.nii.gz" for p in cached), cached
        for method, path in (("PUT", "/datastore/?image=1.2.3"), ("PUT", "/datastore/image?image=abc"),
                             ("DELETE", f"/datastore/?id={r['id']}"), ("DELETE", f"/datastore/image?id={r['id']}"),
                             ("DELETE", f"/datastore/label?id={r['id']}&tag=final")):
            body, ct = multipart({"params": "{}"}, {"file": ("x.txt", b"hello")}) if method == "PUT" else (b"", "")
            s, res = http(method, srv.url + path, body, {"Content-Type": ct} if ct else {})
            assert s == 405 and "DICOMweb server" in res["detail"], (method, path, s, res)
        assert sorted(cache.rglob("*")) == cached
        # a frame's label by the frame's id: the mask saved (MONAI Label fetched the frame's own series as if it
        # were the SEG, into the label cache, and answered 500)
        s, got = http("GET", f"{srv.url}/datastore/label?label={r['id']}&tag=final")
        assert s == 200, got
        (tmp_path / "got.nii.gz").write_bytes(got)
        import nibabel as nib

        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "got.nii.gz").dataobj)[:, :, 0].T > 0, mask)
        assert http("GET", f"{srv.url}/datastore/label?label=1.2.3&tag=final")[0] == 404
        assert not list(cache.rglob(f"labels/final/{r['id']}/*"))  # (the frame's series, there as a "SEG")
        # a frame deleted in the DICOMweb server (still in the cache): its label is refused, not stored as a
        # SEG on no listed frame (answered 200, never trained on)
        s, r3 = http("POST", srv.url + "/activelearning/random", json.dumps({"client_id": "c"}).encode(),
                     {"Content-Type": "application/json"})
        assert s == 200 and r3["id"] not in (r["id"], r2["id"]), r3
        assert http("GET", f"{srv.url}/datastore/image?image={r3['id']}")[0] == 200  # (cached)
        desc3 = http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={r3['id']}")[1][0]["0008103E"]["Value"][0]
        orthanc_id = http("POST", f"{url}/tools/lookup", r3["id"].encode())[1][0]["ID"]
        total = http("GET", srv.url + "/info/")[1]["datastore"]["total"]
        assert http("DELETE", f"{url}/series/{orthanc_id}")[0] == 200
        segs_before = len(http("GET", f"{url}/dicom-web/series?Modality=SEG")[1])
        body, ct = multipart({"params": "{}"}, {"label": ("m.png", (SAMPLE / "masks" / f"{desc3}.png").read_bytes())})
        s, res = http("PUT", f"{srv.url}/datastore/label?image={r3['id']}&tag=final", body, {"Content-Type": ct})
        assert s == 404 and "DICOMweb server" in res["detail"], (s, res)
        assert len(http("GET", f"{url}/dicom-web/series?Modality=SEG")[1]) == segs_before
        # nor is it served from the cache any more once the frame list is made again (MONAI Label kept its list
        # 2 h and served the cached copy for ever), and a frame loaded into the PACS meanwhile is listed
        time.sleep(2.5)
        s, res = http("GET", f"{srv.url}/datastore/image?image={r3['id']}")
        assert s == 404 and "no longer in the DICOMweb server" in res["detail"], (s, res)
        assert not list(cache.rglob(f"{r3['id']}*")), sorted(cache.rglob(f"{r3['id']}*"))
        assert http("GET", srv.url + "/info/")[1]["datastore"]["total"] == total - 1
        late = tmp_path / "late"
        late.mkdir()
        shutil.copy(sorted((SAMPLE / "images").glob("*.jpg"))[20], late)
        assert dicomweb.load(url, late)["new"] == 1
        time.sleep(2.5)
        assert http("GET", srv.url + "/info/")[1]["datastore"]["total"] == total
    finally:
        srv.stop()


def _seg_pixels(url: str, seg_series: str) -> np.ndarray:
    """The one segment of a single-frame SEG series, fetched from Orthanc as a DICOM file: bool (H, W)."""
    import io

    from pydicom import dcmread

    sops = http("GET", f"{url}/dicom-web/instances?SeriesInstanceUID={seg_series}")[1]
    assert len(sops) == 1
    found = http("POST", url + "/tools/lookup", sops[0]["00080018"]["Value"][0].encode())[1]
    raw = http("GET", f"{url}/instances/{found[0]['ID']}/file")[1]
    ds = dcmread(io.BytesIO(raw))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY" and len(ds.SegmentSequence) == 1
    px = ds.pixel_array
    px = px[0] if px.ndim == 3 else px
    assert px.shape == (ds.Rows, ds.Columns)
    return px.astype(bool)


def _browser():
    from browser import Browser, chromium_path

    if not chromium_path():
        pytest.skip("Chromium not installed (apt-get install chromium; scripts/setup.sh does it as root)")
    return Browser()


VIEWPORT = (slice(170, 600), slice(300, 1230))  # the viewer's viewport in headless Chromium's 1280x657 page, below
#   the SEG prompt OHIF shows at its top


def _overlay_fraction(px: np.ndarray) -> float:
    """Share of viewport pixels under a SEG overlay. Mucosa is red; OHIF blends the segment's colour (green or
    cyan here) over it, so an overlaid pixel is greener or bluer than red."""
    v = px[VIEWPORT]
    r, gb = v[..., 0], np.maximum(v[..., 1], v[..., 2])
    return float(((gb > r + 30) & (gb > 110)).mean())


def _open_seg(browser, description: str):
    """Double-click the study browser's thumbnail of the SEG series with this description (as a user would)."""
    xy = browser.wait_js(f"""(() => {{
        const els = [...document.querySelectorAll('div')].filter(e => e.children.length > 0 && e.innerText
            && e.innerText.trim().startsWith('SEG') && e.innerText.includes({json.dumps(description)}));
        const e = els[els.length - 1]; if (!e) return null;
        e.scrollIntoView({{block: 'center'}});
        const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()""",
                         60, f"the SEG thumbnail {description!r}")
    for count in (1, 2):
        for kind in ("mousePressed", "mouseReleased"):
            browser.send("Input.dispatchMouseEvent", type=kind, x=xy[0], y=xy[1], button="left", clickCount=count)


def test_ohif_lists_frames_and_shows_seg_overlays(orthanc, tmp_path):
    """OHIF as served by polyp-al: the study list names the frames, the viewer shows one in colour, and both a
    saved label and our model's prediction show over it as DICOM SEG overlays."""
    url, _ = orthanc
    names = _load_sample_frames(url, tmp_path, slice(6, 8))
    frame = _series_by_name(url, names[0])
    srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "2"}).start()
    browser = _browser()
    try:
        from monailabel.client import MONAILabelClient

        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path), client_id="a")
        client.save_label(frame["series"], str(SAMPLE / "masks" / f"{names[0]}.png"), tag="final")
        labeled = http("GET", srv.url + "/datastore/?output=stats")[1]["completed"]
        assert labeled >= 1
        always_polyp_model(tmp_path / "model" / "polyp_seg-smoke.pt")
        _, params = client.infer("polyp_seg", frame["series"], {"store_seg": True})
        assert params["seg_series"], params
        preds = [s for s in _segs_on(url, frame["study"]) if "prediction" in s["0008103E"]["Value"][0]]
        assert [s["0020000E"]["Value"][0] for s in preds] == [params["seg_series"]]
        # a prediction is not a label: the labeled frames are the same as before
        s, ds = http("GET", srv.url + "/datastore/?output=stats")
        assert ds["completed"] == labeled, ds

        browser.goto(f"{srv.url}/ohif/")
        browser.wait_js(" && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in names), 90,
                        "the frames' names in OHIF's study list")
        assert "Study List" in browser.text()

        browser.goto(f"{srv.url}/ohif/viewer?StudyInstanceUIDs={frame['study']}")
        browser.wait_js("document.body.innerText.includes('polyp-al prediction')", 90, "the viewer's series list")
        # dismiss OHIF's "investigational use only" banner, which covers the lower part of the page
        browser.js("[...document.querySelectorAll('button')].filter(b => b.innerText.includes('Confirm and Hide'))"
                   ".forEach(b => b.click())")
        # wait for the frame itself to be drawn (no fixed sleep): the viewport turns reddish
        t0, shown = time.time(), 0.0
        while time.time() - t0 < 60:
            px = browser.screenshot(tmp_path / "frame.png")
            v = px[VIEWPORT]
            shown = float(((v[..., 0] > 120) & (v[..., 0] > v[..., 2] + 40)).mean())
            if shown > 0.2:
                break
            time.sleep(0.5)
        assert shown > 0.2, f"viewport shows no endoscopy frame ({shown:.3f} reddish pixels); see frame.png"
        before = _overlay_fraction(px)
        assert before < 0.01, before

        mask = np.asarray(Image.open(SAMPLE / "masks" / f"{names[0]}.png").convert("L")) > 127
        _open_seg(browser, "polyp-al label")
        label = _wait_fraction(browser, 0.25 * mask.mean(), tmp_path / "label.png")
        assert label < 2.0 * mask.mean() + 0.05, f"the label overlay covers far more than the polyp ({label:.3f})"
        _open_seg(browser, "polyp-al prediction")
        _wait_fraction(browser, max(0.3, 2 * label), tmp_path / "prediction.png")  # this model: polyp everywhere
    finally:
        browser.close()
        srv.stop()


def _wait_fraction(browser, least: float, shot: Path, timeout: float = 60) -> float:
    t0, f = time.time(), 0.0
    while time.time() - t0 < timeout:
        f = _overlay_fraction(browser.screenshot(shot))
        if f > least:
            return f
        time.sleep(1)
    raise AssertionError(f"no SEG overlay in the viewer ({f:.3f} of the viewport, expected > {least:.3f}); "
                         f"see {shot}")


def _load_sample_frames(url: str, tmp_path: Path, which: slice) -> list[str]:
    """Upload some sample frames to the DICOMweb server; returns their names."""
    frames = tmp_path / "frames"
    frames.mkdir()
    names = [p.stem for p in sorted((SAMPLE / "images").glob("*.jpg"))[which]]
    for n in names:
        shutil.copy(SAMPLE / "images" / f"{n}.jpg", frames / f"{n}.jpg")
    dicomweb.load(url, frames)
    return names


def _series_by_name(url: str, name: str) -> dict:
    for s in http("GET", url + "/dicom-web/series?Modality=ES")[1]:
        if s["0008103E"]["Value"][0] == name:
            return {"series": s["0020000E"]["Value"][0], "study": s["0020000D"]["Value"][0]}
    raise AssertionError(f"{name} not in the DICOMweb server")


def _segs_on(url: str, study: str) -> list:
    return [s for s in http("GET", url + "/dicom-web/series?Modality=SEG")[1] if s["0020000D"]["Value"][0] == study]


def _grey16_dicom(name: str) -> bytes:
    """An ES frame that is 16-bit grey, not 8-bit RGB (as another modality's export might be)."""
    import io

    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicomweb.frame_to_dicom(SAMPLE / "images" / f"{name}.jpg")))
    from pydicom.uid import generate_uid

    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesDescription = generate_uid(), "grey16"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    del ds.PlanarConfiguration
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = (np.arange(ds.Rows * ds.Columns, dtype=np.uint16) % 4096).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


REJECT_SEG_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
   return dicom.Modality ~= 'SEG'
end
"""


def test_dicomweb_server_down_or_rejecting_loses_no_label(tmp_path):
    """Orthanc down at start-up, down mid-session, then refusing SEGs: clear answers, and every label arrives."""
    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()):
        pytest.skip("Orthanc not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)")
    from monailabel.client import MONAILabelClient

    data, port = tmp_path / "orthanc", free_port()
    url = f"http://127.0.0.1:{port}"
    lua = tmp_path / "reject-seg.lua"
    lua.write_text(REJECT_SEG_LUA)
    srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "2", "lease_timeout": "5"}).start(timeout=120)
    try:
        # down at start-up: the server starts, /info says why, next-sample answers 503 naming the server
        s, info = http("GET", srv.url + "/info/")
        assert s == 200 and str(port) in info["datastore"]["error"]
        s, r = http("POST", srv.url + "/activelearning/random", b"{}", {"Content-Type": "application/json"})
        assert s == 503 and f"127.0.0.1:{port}" in r["detail"], r
        # the server comes up: frames are served, a label arrives as SEG
        up_reaped(data, port=port, dicom_port=free_port())
        names = _load_sample_frames(url, tmp_path, slice(8, 10))
        a, b = (_series_by_name(url, n) for n in names)
        s, r = http("POST", srv.url + "/activelearning/random", b"{}", {"Content-Type": "application/json"})
        assert s == 200 and r["id"] in (a["series"], b["series"])
        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path), client_id="a")
        client.save_label(a["series"], str(SAMPLE / "masks" / f"{names[0]}.png"), tag="final")
        assert len(_segs_on(url, a["study"])) == 1
        # an empty mask cannot become a DICOM SEG: a clear 422 rather than a label that silently vanishes
        empty = tmp_path / "empty.png"
        h, w = np.asarray(Image.open(SAMPLE / "masks" / f"{names[1]}.png")).shape[:2]
        Image.fromarray(np.zeros((h, w), np.uint8)).save(empty)
        with pytest.raises(Exception, match="422.*no polyp pixels"):
            client.save_label(b["series"], str(empty), tag="final")
        # a frame that is not 8-bit RGB: a clear 422, nothing stored
        assert http("POST", url + "/instances", _grey16_dicom(names[0]), {"Content-Type": "application/dicom"})[0] == 200
        grey = next(s["0020000E"]["Value"][0] for s in http("GET", url + "/dicom-web/series?Modality=ES")[1]
                    if s["0008103E"]["Value"][0] == "grey16")
        with pytest.raises(Exception, match="422.*8-bit"):
            client.save_label(grey, str(SAMPLE / "masks" / f"{names[0]}.png"), tag="final")
        # down mid-session: the label is refused with 502, kept, and reported; the server keeps serving
        assert http("GET", f"{srv.url}/datastore/image?image={b['series']}")[0] == 200  # frame now cached
        assert timed_down(data) < 5
        with pytest.raises(Exception, match="502.*kept"):
            client.save_label(b["series"], str(SAMPLE / "masks" / f"{names[1]}.png"), tag="final")
        s, info = http("GET", srv.url + "/info/")
        assert s == 200 and info["datastore"]["pending_labels"] == 1
        # back up, but refusing every SEG while answering "stored": caught by the check, still kept
        up_reaped(data, port=port, dicom_port=free_port(), extra={"LuaScripts": [str(lua)]})
        with pytest.raises(Exception, match="502.*does not have SEG"):
            client.save_label(b["series"], str(SAMPLE / "masks" / f"{names[1]}.png"), tag="final")
        assert _segs_on(url, b["study"]) == [] and http("GET", srv.url + "/info/")[1]["datastore"]["pending_labels"] == 1
        # its info cut, as a kill mid-write left it before 2026-12-07: the label is still sent (each retry failed)
        pending = Path(http("GET", srv.url + "/info/")[1]["datastore"]["pending_dir"])
        [meta] = pending.glob("*.json")
        assert json.loads(meta.read_text())["client_id"] == "a"
        meta.write_text('{"client_id": "a", "t')
        # its frame has a label (kept here): not served again once any lease on it has timed out (5 s here)
        time.sleep(5.5)
        for who in ("a", "z"):
            s, r = http("POST", srv.url + "/activelearning/random", json.dumps({"client_id": who}).encode(),
                        {"Content-Type": "application/json"})
            assert s == 200 and r.get("id") not in (a["series"], b["series"]), r
        # a normal server again: the next save also sends the kept label
        dicomweb.down(data)
        up_reaped(data, port=port, dicom_port=free_port())
        client.save_label(a["series"], str(SAMPLE / "masks" / f"{names[0]}.png"), tag="final")
        # sent by this save's retry, or by a scoring subprocess's retry that held the pending folder's lock
        srv.wait_for(lambda: len(_segs_on(url, b["study"])) == 1, timeout=120, what="the kept label sent")
        srv.wait_for(lambda: http("GET", srv.url + "/info/")[1]["datastore"]["pending_labels"] == 0, timeout=60,
                     what="no pending label")
        assert len(_segs_on(url, b["study"])) == 1
        # a label kept after a failed store, then a new label of that frame saved: the older is dropped, never
        # sent after the newer (its SEG would have been the frame's latest, its mask what training reads)
        dicomweb.down(data)
        up_reaped(data, port=port, dicom_port=free_port(), extra={"LuaScripts": [str(lua)]})
        with pytest.raises(Exception, match="502.*does not have SEG"):
            client.save_label(b["series"], str(SAMPLE / "masks" / f"{names[1]}.png"), tag="final")
        dicomweb.down(data)
        up_reaped(data, port=port, dicom_port=free_port())
        half = np.asarray(Image.open(SAMPLE / "masks" / f"{names[1]}.png").convert("L")) > 127
        half[:, : half.shape[1] // 2] = False
        assert half.any()
        Image.fromarray(half.astype(np.uint8) * 255).save(tmp_path / "half.png")
        client.save_label(b["series"], str(tmp_path / "half.png"), tag="final")
        client.save_label(a["series"], str(SAMPLE / "masks" / f"{names[0]}.png"), tag="final")  # a retry runs
        time.sleep(2)
        segs = _segs_on(url, b["study"])
        assert len(segs) == 2, segs  # the first label's SEG and the new one: not the dropped one after them
        assert http("GET", srv.url + "/info/")[1]["datastore"]["pending_labels"] == 0
        assert srv.proc.poll() is None
        log = srv.log.read_text(errors="replace")
        assert "kept at" in log and "unreachable" in log
    finally:
        srv.stop()
        dicomweb.down(data)


def _not_a_seg(url: str, frame: dict, name: str) -> bytes:
    """A "SEG" put straight into the DICOMweb server by another tool: Modality SEG, referencing the frame,
    but not a Segmentation Storage object (as OHIF's own store or a misconfigured exporter can produce)."""
    import io

    from pydicom import Dataset, dcmread
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    ds = dcmread(io.BytesIO(dicomweb.frame_to_dicom(SAMPLE / "images" / f"{name}.jpg")))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesDescription, ds.Modality = generate_uid(), "not a seg", "SEG"
    ds.StudyInstanceUID = frame["study"]
    ref = Dataset()
    ref.SeriesInstanceUID = frame["series"]
    ds.ReferencedSeriesSequence = Sequence([ref])
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_an_unreadable_seg_in_the_server_does_not_stop_training(orthanc, tmp_path):
    """One bad SEG stored around polyp-al is left out of training with its reason; the good labels train."""
    url, _ = orthanc
    good, bad = _load_sample_frames(url, tmp_path, slice(12, 14))
    srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "2"}).start()
    try:
        from monailabel.client import MONAILabelClient

        client = MONAILabelClient(srv.url, tmpdir=str(tmp_path), client_id="a")
        client.save_label(_series_by_name(url, good)["series"], str(SAMPLE / "masks" / f"{good}.png"), tag="final")
        frame = _series_by_name(url, bad)
        s, _ = http("POST", url + "/instances", _not_a_seg(url, frame, bad), {"Content-Type": "application/dicom"})
        assert s == 200 and _segs_on(url, frame["study"])  # Orthanc holds the bad SEG on that frame
        client.train_start("polyp_seg", {})
        stats = tmp_path / "model" / "polyp_seg-smoke.pt.stats.json"
        srv.wait_for(lambda: stats.exists() and json.loads(stats.read_text()).get("status") in ("DONE", "FAILED"),
                     timeout=300, every=1, what="the training to end")
        st = json.loads(stats.read_text())
        assert st["status"] == "DONE", st
        # trained on the good label (others' labels in this shared Orthanc may add to it), the bad one named
        assert st["train_frames"] + st["val_frames"] >= 1
        assert frame["series"] in st["skipped"] and "not a readable DICOM SEG" in st["skipped"][frame["series"]]
    finally:
        srv.stop()


def _instance(name: str, **tags) -> bytes:
    """A sample frame as DICOM, with some of its UIDs replaced (what anyone who can store in Orthanc sends)."""
    import io

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(io.BytesIO(dicomweb.frame_to_dicom(SAMPLE / "images" / f"{name}.jpg")))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = tags.pop("sop", generate_uid())
    ds.SeriesInstanceUID = tags.pop("series", generate_uid())
    for k, v in tags.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_hostile_series_write_nothing_outside_the_cache_and_get_4xx(orthanc, tmp_path):
    """UIDs come from whoever stored the DICOM: a SOPInstanceUID that is a path ("/abs/x", "../../x") was the
    file name MONAI Label saved the instance under; an unknown or non-frame series id was a 500, and a label
    could be put on a SEG series. Also: Orthanc's DICOM listener (every interface, C-STORE from anyone) is off."""
    import socket

    url, data = orthanc
    cfg = json.loads((Path(data).resolve() / "orthanc.json").read_text())
    assert cfg["DicomServerEnabled"] is False
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", cfg["DicomPort"]), timeout=2).close()
    names = [p.stem for p in sorted((SAMPLE / "images").glob("*.jpg"))[6:8]]
    out_abs, out_rel = tmp_path / "ABS", tmp_path / "REL"
    series = {}
    for key, sop, extra in (("abs", str(out_abs), {}), ("rel", "../../../../../../../../.." + str(out_rel), {}),
                            ("huge", "1.2.3.4.999", {"Rows": 20000, "Columns": 20000})):
        body = _instance(names[0], sop=sop, SeriesDescription=f"hostile-{key}", **extra)
        assert http("POST", url + "/instances", body, {"Content-Type": "application/dicom"})[0] == 200
        series[key] = next(s["0020000E"]["Value"][0] for s in http("GET", url + "/dicom-web/series?Modality=ES")[1]
                           if s["0008103E"]["Value"][0] == f"hostile-{key}")
    (tmp_path / "srv").mkdir()
    srv = Server(url + "/dicom-web", tmp_path / "srv", conf={"batch_size": "2"},
                 env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp_path / "cache")}).start()
    try:
        for key, sid in series.items():
            s, r = http("GET", f"{srv.url}/datastore/image?image={sid}")
            if key == "huge":  # a small file declaring 400 MP: refused before anything converts it
                assert s == 413 and "capped" in r["detail"], (key, s, r)
            else:
                assert s == 422 and "SOPInstanceUID" in r["detail"], (key, s, r)
        assert not list(tmp_path.glob("ABS*")) and not list(tmp_path.glob("REL*"))
        s, r = http("GET", f"{srv.url}/datastore/image?image=1.2.3.4.5.6")
        assert s == 404, (s, r)
        # the proxy stays in /dicom-web: a double-encoded ".." reached Orthanc's whole REST API (decoded twice)
        assert http("GET", f"{srv.url}/proxy/dicom/studies")[0] == 200
        for path in ("%252e%252e/system", "%252e%252e/instances", "%25252e%25252e/system"):
            s, r = http("GET", f"{srv.url}/proxy/dicom/{path}")
            assert s == 404, (path, s, r)
        served = []
        for k in range(12):  # next-sample skips them (marked bad), never a 500
            s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": f"c{k}"}).encode(),
                        {"Content-Type": "application/json"})
            assert s == 200, (s, r)
            served.append(r.get("id"))
        assert not set(served) & set(series.values()), served
        # a label on a label (a SEG series) is refused: only the frames the search filter lists take labels
        body = _instance(names[1], SeriesDescription="hostile-ok")
        assert http("POST", url + "/instances", body, {"Content-Type": "application/dicom"})[0] == 200
        frame = next(s["0020000E"]["Value"][0] for s in http("GET", url + "/dicom-web/series?Modality=ES")[1]
                     if s["0008103E"]["Value"][0] == "hostile-ok")
        mask = SAMPLE / "masks" / f"{names[1]}.png"
        # params over the info cap (256 KiB): 413 before anything is converted or sent, as on a folder
        big = multipart({"params": json.dumps({"comment": "A" * 900_000})}, {"label": ("m.png", mask.read_bytes())})
        s, r = http("PUT", f"{srv.url}/datastore/label?image={frame}&tag=final", big[0], {"Content-Type": big[1]})
        assert s == 413 and "info of" in r["detail"], (s, r)
        study = http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={frame}")[1][0]["0020000D"]["Value"][0]
        assert not _segs_on(url, study)
        body_ct = multipart({"params": "{}"}, {"label": ("m.png", mask.read_bytes())})
        s, r = http("PUT", f"{srv.url}/datastore/label?image={frame}&tag=final", body_ct[0],
                    {"Content-Type": body_ct[1]})
        assert s == 200, r
        seg = _segs_on(url, study)[0]["0020000E"]["Value"][0]
        s, r = http("PUT", f"{srv.url}/datastore/label?image={seg}&tag=final", body_ct[0], {"Content-Type": body_ct[1]})
        assert s == 404, (s, r)
        assert http("GET", srv.url + "/info/")[1]["datastore"]["pending_labels"] == 0
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_load_errors_are_one_line(tmp_path, capsys):
    """A missing folder, or an Orthanc that does not answer: one line naming the problem, exit 2 (a
    DataError traceback before). Needs no Orthanc."""
    data = tmp_path / "orthanc"
    data.mkdir()
    (data / "polypal-orthanc.json").write_text(json.dumps({"port": free_port()}))  # started once, now gone
    assert dicomweb.main(["load", "--data", str(data), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope: not a directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a dataset folder (frames under images/) loaded nothing and said {"new": 0, ...}, exit 0 (a fresh user's
    # walkthrough): now the folder to load is named (before Orthanc is asked: it is not running here)
    (tmp_path / "kvasir" / "images").mkdir(parents=True)
    assert dicomweb.main(["load", "--data", str(data), str(tmp_path / "kvasir")]) == 2
    err = capsys.readouterr().err
    assert "kvasir: no frames at the top of the folder" in err and "under images/: load that folder" in err, err
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "f1.png")
    assert dicomweb.main(["load", "--data", str(data), str(frames)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("polypal-dicomweb load: error:") and len(err.strip().splitlines()) == 1, err


def test_a_retrieve_url_never_carries_the_dicomweb_servers_credentials(monkeypatch):
    """``--studies http://user:secret@host/dicom-web``: the RetrieveURL built from the client's address goes
    to every client in next-sample answers (a review found the password in it)."""
    from types import SimpleNamespace

    from dicomweb_client.api import DICOMwebClient

    from server_utils import APP

    monkeypatch.syspath_prepend(str(APP))
    from lib.dicomweb_datastore import PolypDICOMWebDatastore

    for url, base in (("http://orthanc:s3cret@127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web"),
                      ("http://[::1]:8042/dicom-web", "http://[::1]:8042/dicom-web")):
        ds = SimpleNamespace(_client=DICOMwebClient(url=url))
        assert PolypDICOMWebDatastore._retrieve_url(ds, "1.2", "1.2.3") == f"{base}/studies/1.2/series/1.2.3"


def test_the_dicomweb_password_in_studies_never_reaches_a_client(tmp_path):
    """``--studies http://user:secret@host/dicom-web`` with that server down: the 503 of a next sample and
    /info's datastore error named the server by its address with the password in it (a review, 2026-12-08).
    Needs no Orthanc: nothing listens on the port."""
    js = {"Content-Type": "application/json"}
    srv = Server(f"http://pacs:s3cretpw@127.0.0.1:{free_port()}/dicom-web", tmp_path, conf={"batch_size": "2"}).start()
    try:
        s, r = http("POST", srv.url + "/activelearning/random", b"{}", js)
        assert s == 503 and "unreachable" in r["detail"] and "127.0.0.1" in r["detail"], (s, r)
        s2, info = http("GET", srv.url + "/info/")
        assert s2 == 200 and info["datastore"].get("error"), info.get("datastore")
        for answer in (r, info):
            assert "s3cretpw" not in json.dumps(answer) and "pacs:" not in json.dumps(answer)
        # MONAI Label logs the address before the app is loaded, and in every training and scoring subprocess:
        # /logs, /scoring/ and /train/ answered those lines (a probe)
        srv.wait_for(lambda: "s3cretpw" in srv.tail(100000), timeout=30, what="the address in the server's log")
        for path in ("/logs/?lines=5000", "/scoring/", "/train/"):
            s3, body = http("GET", srv.url + path)
            text = body.decode(errors="replace") if isinstance(body, bytes) else json.dumps(body)
            assert s3 in (200, 404) and "s3cretpw" not in text, (path, s3, text[:300])  # (404: no training yet)
        assert "pacs:***@127.0.0.1" in http("GET", srv.url + "/logs/?lines=5000")[1].decode()  # (the line is there)
    finally:
        srv.stop()


def test_the_label_listing_reads_each_segs_metadata_once(orthanc, tmp_path, monkeypatch):
    """MONAI Label's label listing (at the next /info or next sample after every save) read every SEG's
    metadata again, one request each, and searched the whole frame list once per SEG: thousands of requests
    at a few thousand labels (a review). Each SEG's frame is read once now; the list is the one MONAI Label
    makes."""
    from monailabel.datastore.dicom import DICOMWebDatastore

    from server_utils import APP

    url, _ = orthanc
    names = _load_sample_frames(url, tmp_path, slice(8, 11))
    monkeypatch.syspath_prepend(str(APP))
    import os
    import sys

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # dcmqi
    from lib.dicomweb_datastore import LABEL_DESCRIPTION, PolypDICOMwebClient, PolypDICOMWebDatastore

    ds = PolypDICOMWebDatastore(client=PolypDICOMwebClient(url=url + "/dicom-web"),
                                search_filter={"Modality": "ES"}, cache_path=str(tmp_path / "cache"))  # (as main.py)
    by_name = {http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={i}")[1][0]["0008103E"]["Value"][0]: i
               for i in ds.list_images()}
    labeled = [by_name[n] for n in names[:2]]
    for i in labeled:  # two labels stored as a save stores them
        desc = next(k for k, v in by_name.items() if v == i)
        image_dir, nii = ds._frame_nifti(i, str(SAMPLE / "masks" / f"{desc}.png"))
        ds._store_seg(image_dir, nii, LABEL_DESCRIPTION)
    calls = []
    real = ds._client.retrieve_series_metadata
    monkeypatch.setattr(ds._client, "retrieve_series_metadata", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = ds.get_labeled_images()
    segs = len([x for x in http("GET", f"{url}/dicom-web/series?Modality=SEG")[1]  # (other tests' included,
                if not (x.get("0008103E", {}).get("Value") or [""])[0].startswith("polyp-al prediction")])  # not
    # their prediction SEGs, which are never labels
    assert set(labeled) <= set(first) and len(calls) == segs, (len(calls), segs)
    ds._labeled_memo = None  # as after a save
    DICOMWebDatastore.get_labeled_images.cache_clear()
    again = ds.get_labeled_images()
    assert again == first and len(calls) == segs  # no SEG read twice
    assert sorted(again) == sorted(set(i for i in DICOMWebDatastore.get_labeled_images(ds) if i in ds.list_images()))
    # the first frame labeled again, with another mask: listed once (a SEG per save: /info counted SEGs as
    # labels); a cache made again (another cache folder) takes the newest SEG, not the first listed, and
    # leaves none of its conversions in the temp folder
    import tempfile

    desc = next(k for k, v in by_name.items() if v == labeled[0])
    newer = np.asarray(Image.open(SAMPLE / "masks" / f"{desc}.png").convert("L"))[:, ::-1]
    Image.fromarray(newer).save(tmp_path / "newer.png")
    image_dir, nii = ds._frame_nifti(labeled[0], str(tmp_path / "newer.png"))
    ds._store_seg(image_dir, nii, LABEL_DESCRIPTION)
    listed = ds.get_labeled_images()
    assert len(listed) == len(set(listed)) and set(labeled) <= set(listed)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    ds2 = PolypDICOMWebDatastore(client=PolypDICOMwebClient(url=url + "/dicom-web"), search_filter={"Modality": "ES"},
                                 cache_path=str(tmp_path / "cache2"))
    ds2.datalist()
    from polypal.data import read_mask

    got = read_mask(ds2.saved_label_uri(labeled[0]))  # (a .nrrd made from the SEG)
    assert got.shape == newer.shape, (got.shape, newer.shape)
    np.testing.assert_array_equal(got, newer > 127)
    assert not [p.name for p in tmp.iterdir() if p.is_file()], sorted(p.name for p in tmp.iterdir())


def test_the_cache_index_is_written_per_burst_and_its_records_heal(orthanc, tmp_path, monkeypatch):
    """MONAI Label rewrote its whole cache index (datastore_v2.json) for every frame it converted, and its file
    watcher reconciled the whole cache at every file: per frame over the whole pool (3000 frames: 60 ms a
    frame by the end). The index is now written after a burst; a record not yet written survives another
    process's write, and one rebuilt from the cached file alone (the write lost with a killed process) gets
    its DICOM tags again when asked."""
    from server_utils import APP

    url, _ = orthanc
    names = _load_sample_frames(url, tmp_path, slice(14, 17))
    monkeypatch.syspath_prepend(str(APP))
    import lib.dicomweb_datastore as dwd

    monkeypatch.setattr(dwd, "INDEX_EVERY", 600.0)  # (written by the explicit flush below, not by the clock)
    monkeypatch.setattr(dwd, "REFRESH_AFTER", 600.0)  # (the watchers' reconciles: not during this part)

    def store(cache):
        return dwd.PolypDICOMWebDatastore(client=dwd.PolypDICOMwebClient(url=url + "/dicom-web"),
                                          search_filter={"Modality": "ES"}, cache_path=str(cache))

    ds, other = store(tmp_path / "cache"), store(tmp_path / "cache")  # (two processes' datastores on one cache)
    series = {s["0008103E"]["Value"][0]: s["0020000E"]["Value"][0]
              for s in http("GET", f"{url}/dicom-web/series?Modality=ES")[1]}
    ids = [series[n] for n in names]
    index = Path(ds._datastore_config_path)

    def on_disk() -> dict:
        return json.loads(index.read_text())["objects"] if index.exists() else {}

    ds.get_image_uri(ids[0])  # written at once (the first in a while)
    ds.get_image_uri(ids[1])  # waits (MONAI Label: written at each frame)
    assert ids[0] in on_disk() and ids[1] not in on_disk()
    # the other process writes the index as it knows it (without ids[1]); this one reloads it: the record not yet
    # written stays (it was dropped, and a label save on that frame failed: "Image ... not found")
    other.get_image_uri(ids[2])
    deadline = time.monotonic() + 30
    while ids[2] not in ds._datastore.objects and time.monotonic() < deadline:  # (its watcher's reload)
        time.sleep(0.1)
    assert ids[2] in ds._datastore.objects and ids[1] in ds._datastore.objects
    from monailabel.datastore.local import LocalDatastore

    LocalDatastore.save_label(ds, ids[1], ds.get_image_uri(ids[1]), "final", {})  # (any file stands in for a label)
    ds._flush_index()
    written = on_disk()
    assert set(ids) <= set(written), "the deferred records were never written"
    assert all(written[i]["image"]["info"]["StudyInstanceUID"] not in ("", "UNK") for i in ids)
    assert "final" in written[ids[1]]["labels"]
    # an index cut short (a process killed while writing it): set aside, records made again (MONAI Label: no start)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "cache", cut)
    bad = next(cut.rglob("datastore_v2.json"))
    bad.write_text(bad.read_text()[:200])
    made = store(cut)
    assert set(ids) <= set(made._datastore.objects) and list(bad.parent.glob("datastore_v2.json.unreadable-*"))
    # cut again while a process watches it: set aside, and that process writes what it knows (its file watcher
    # died on the error before, and the cut file stayed for every process to trip on)
    bad.write_text(bad.read_text()[:200])

    def rewritten() -> set:
        try:
            return set(json.loads(bad.read_text())["objects"])
        except (OSError, ValueError):
            return set()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (len(list(bad.parent.glob("datastore_v2.json.unreadable-*"))) == 2
                                               and set(ids) <= rewritten()):
        time.sleep(0.2)
    assert len(list(bad.parent.glob("datastore_v2.json.unreadable-*"))) == 2
    assert set(ids) <= rewritten()
    made._observer.stop()
    monkeypatch.setattr(dwd, "REFRESH_AFTER", 2.0)
    # the index lost (a process killed before its write): a datastore on that cache rebuilds the records from
    # the files, without tags, and asks the DICOMweb server again for them
    cache2 = tmp_path / "cache2"
    shutil.copytree(tmp_path / "cache", cache2)
    for p in cache2.rglob("datastore_v2.json"):
        p.unlink()
    ds2 = dwd.PolypDICOMWebDatastore(client=dwd.PolypDICOMwebClient(url=url + "/dicom-web"),
                                     search_filter={"Modality": "ES"}, cache_path=str(cache2))
    assert "StudyInstanceUID" not in ds2._datastore.objects[ids[0]].image.info  # (rebuilt bare)
    info = ds2.get_image_info(ids[0])
    assert info["StudyInstanceUID"] == written[ids[0]]["image"]["info"]["StudyInstanceUID"], info
    assert info["RetrieveURL"].endswith(f"/series/{ids[0]}") and info["Modality"] == "ES", info
    # a record missing in memory (this process reloaded an index another wrote before it had the frame): made
    # again when the frame is asked for (a label save on it failed: "Image ... not found")
    del ds2._datastore.objects[ids[2]]
    ds2.get_image_uri(ids[2])
    assert ds2._datastore.objects[ids[2]].image.info["StudyInstanceUID"] == \
        written[ids[2]]["image"]["info"]["StudyInstanceUID"]
    # a frame put in the cache by another process is still recorded by the file watcher (once, after its burst)
    src = Path(ds2._datastore.image_path()) / f"{ids[1]}.nii.gz"
    shutil.copy(src, src.with_name("1.2.826.0.1.3680043.99.1.nii.gz"))
    deadline = time.monotonic() + 30
    while "1.2.826.0.1.3680043.99.1" not in ds2._datastore.objects and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "1.2.826.0.1.3680043.99.1" in ds2._datastore.objects
    # a local label whose SEG is not in the DICOMweb server goes before a training, its record with it (left to
    # the next reconcile, the training just after skipped the frame: "label: file not found"; a review)
    LocalDatastore.save_label(ds2, ids[1], ds2.get_image_uri(ids[1]), "final", {})
    assert "final" in ds2._datastore.objects[ids[1]].labels
    listed = ds2.datalist()  # (as a training lists its labels)
    assert "final" not in ds2._datastore.objects[ids[1]].labels
    assert not any(ids[1] in d["label"] for d in listed), listed
    for d in (ds, other, ds2):
        d._observer.stop()


def test_a_dicomweb_server_with_a_password(tmp_path):
    """A PACS that asks for a password: with MONAI_LABEL_DICOMWEB_USERNAME/PASSWORD polyp-al serves its
    frames and stores labels there; with a wrong password next sample says the credentials were refused (it
    said "unreachable"), and the OHIF proxy answers 502 without relaying the PACS's Basic challenge (a
    browser then asked the annotator for the PACS password, which the proxy never sends on)."""
    import base64
    import urllib.error
    import urllib.request

    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()):
        pytest.skip("Orthanc not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)")
    data = tmp_path / "orthanc"
    url = up_reaped(data, port=free_port(), dicom_port=free_port(),
                    extra={"AuthenticationEnabled": True, "RegisteredUsers": {"pacs": "s3cret"}})
    basic = {"Authorization": "Basic " + base64.b64encode(b"pacs:s3cret").decode()}
    try:
        assert http("GET", url + "/dicom-web/series")[0] == 401
        names = []
        for p in sorted((SAMPLE / "images").glob("*.jpg"))[:2]:
            s, _ = http("POST", url + "/instances", dicomweb.frame_to_dicom(p), {**basic, "Content-Type": "application/dicom"})
            assert s == 200
            names.append(p.stem)
        js = {"Content-Type": "application/json"}
        wrong = Server(url + "/dicom-web", tmp_path / "wrong", conf={"batch_size": "2"},
                       env={"MONAI_LABEL_DICOMWEB_USERNAME": "pacs", "MONAI_LABEL_DICOMWEB_PASSWORD": "nope"})
        (tmp_path / "wrong").mkdir()
        wrong.start()
        try:
            s, r = http("POST", wrong.url + "/activelearning/random", b"{}", js)
            assert s == 503 and "refused polyp-al's credentials" in r["detail"], (s, r)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(wrong.url + "/proxy/dicom/qido/studies", timeout=30)
            assert e.value.code == 502 and "www-authenticate" not in {k.lower() for k in e.value.headers.keys()}
            assert b"credentials" in e.value.read()
        finally:
            wrong.stop()
        srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "2"},
                     env={"MONAI_LABEL_DICOMWEB_USERNAME": "pacs", "MONAI_LABEL_DICOMWEB_PASSWORD": "s3cret"}).start()
        try:
            s, r = http("POST", srv.url + "/activelearning/random", json.dumps({"client_id": "a"}).encode(), js)
            assert s == 200 and r.get("id"), r
            desc = http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={r['id']}", headers=basic)[1][0]
            desc = desc["0008103E"]["Value"][0]
            body, ct = multipart({"params": "{}"}, {"label": ("m.png", (SAMPLE / "masks" / f"{desc}.png").read_bytes())})
            s, res = http("PUT", f"{srv.url}/datastore/label?image={r['id']}&tag=final", body, {"Content-Type": ct})
            assert s == 200, res
            assert len(http("GET", f"{url}/dicom-web/series?Modality=SEG", headers=basic)[1]) == 1
            s, studies = http("GET", srv.url + "/proxy/dicom/qido/studies")
            if isinstance(studies, bytes):  # relayed as Orthanc sent it (Content-Encoding: gzip)
                import gzip

                studies = json.loads(gzip.decompress(studies))
            assert s == 200 and len(studies) == 2
        finally:
            srv.stop()
    finally:
        assert timed_down(data) < 5
