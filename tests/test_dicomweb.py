"""DICOMweb: Orthanc on loopback with our frames, and polyp-al serving them (skips without Orthanc)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypal import dicomweb
from server_utils import SAMPLE, Server, free_port, http

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if not (shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()):
        pytest.skip("Orthanc not installed (apt-get install orthanc orthanc-dicomweb; scripts/setup.sh does it as root)")
    try:
        dicomweb.find_dicomweb_plugin()
    except SystemExit as e:
        pytest.skip(str(e))
    data = tmp_path_factory.mktemp("orthanc")
    url = dicomweb.up(data, port=free_port(), dicom_port=free_port())
    yield url, data
    dicomweb.down(data)


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
    names = sorted(s["0008103E"]["Value"][0] for s in series)
    assert names == sorted(p.stem for p in frames.glob("*.jpg"))
    sop = http("GET", url + "/dicom-web/instances")[1][0]
    assert sop["00080016"]["Value"][0] == dicomweb.VL_ENDOSCOPIC


def test_polyp_al_serves_dicomweb_frames(orthanc, tmp_path):
    url, _ = orthanc
    frames = tmp_path / "frames"
    frames.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.jpg"))[3:6]:
        shutil.copy(p, frames / p.name)
    dicomweb.load(url, frames)
    srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "2"}).start()
    try:
        s, r = http("POST", srv.url + "/activelearning/random", json.dumps({"client_id": "a"}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 200 and r["id"] and r["Modality"] == "ES"
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
        client.save_label(r["id"], str(SAMPLE / "masks" / f"{desc}.png"), tag="final")
        segs = http("GET", f"{url}/dicom-web/series?Modality=SEG")[1]
        assert len(segs) == 1
        seg_study = segs[0]["0020000D"]["Value"][0]
        frame_study = http("GET", f"{url}/dicom-web/series?SeriesInstanceUID={r['id']}")[1][0]["0020000D"]["Value"][0]
        assert seg_study == frame_study
        # a mask of the wrong size is refused and nothing new reaches Orthanc
        bad = tmp_path / "bad.png"
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
        with pytest.raises(Exception, match="422"):
            client.save_label(r["id"], str(bad), tag="final")
        assert len(http("GET", f"{url}/dicom-web/series?Modality=SEG")[1]) == 1
        # training reads that label; scoring then covers the DICOMweb frames; infer answers at frame size
        client.train_start("polyp_seg", {})
        model = tmp_path / "model" / "polyp_seg-smoke.pt"
        srv.wait_for(model.exists, timeout=300, every=1, what="a model trained on the DICOMweb label")
        n_frames = len(http("GET", f"{url}/dicom-web/series?Modality=ES")[1])
        srv.wait_for(lambda: any(v >= n_frames for v in client.info()["polyp_al"]["state"]["versions"].values()),
                     timeout=300, every=2, what="scores for every DICOMweb frame")
        out, _ = client.infer("polyp_seg", r["id"], {})
        assert np.asarray(Image.open(out)).shape == orig.shape[:2]
    finally:
        srv.stop()


def chromium(*args, timeout=120) -> str:
    import subprocess
    import tempfile

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("Chromium not installed (apt-get install chromium; scripts/setup.sh does it as root)")
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--window-size=1280,800", "--virtual-time-budget=20000",
                            *args], capture_output=True, text=True, timeout=timeout)
    return r.stdout


def page_text(html: str) -> str:
    import re

    t = re.sub(r"<script.*?</script>|<style.*?</style>", "", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", t))


def test_ohif_lists_and_shows_frames(orthanc, tmp_path):
    url, _ = orthanc
    frames = tmp_path / "frames"
    frames.mkdir()
    names = [p.stem for p in sorted((SAMPLE / "images").glob("*.jpg"))[6:8]]
    for n in names:
        shutil.copy(SAMPLE / "images" / f"{n}.jpg", frames / f"{n}.jpg")
    dicomweb.load(url, frames)
    srv = Server(url + "/dicom-web", tmp_path, conf={"batch_size": "2"}).start()
    try:
        # the study list, as served by the MONAI Label server's bundled OHIF, names our frames
        text = page_text(chromium("--dump-dom", f"{srv.url}/ohif/"))
        assert "Study List" in text, text[:500]
        for n in names:
            assert n in text, f"{n} not in OHIF's study list"
        # the viewer opens one frame: its name is on the page and the viewport shows the colour frame
        study = next(s["0020000D"]["Value"][0] for s in http("GET", url + "/dicom-web/studies")[1]
                     if s["00100010"]["Value"][0]["Alphabetic"] == names[0])
        viewer = f"{srv.url}/ohif/viewer?StudyInstanceUIDs={study}"
        assert names[0] in page_text(chromium("--dump-dom", viewer))
        shot = tmp_path / "viewer.png"
        chromium(f"--screenshot={shot}", viewer)
        px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        viewport = px[60:700, 300:1230]
        reddish = (viewport[..., 0] > 120) & (viewport[..., 0] > viewport[..., 2] + 40)
        assert reddish.mean() > 0.2, f"viewport shows no endoscopy frame ({reddish.mean():.3f} reddish pixels)"
    finally:
        srv.stop()
