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
    finally:
        srv.stop()
