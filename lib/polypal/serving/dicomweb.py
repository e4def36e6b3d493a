"""Bring up a local DICOMweb server (Orthanc) and load endoscopy frames into it.

    polypal-dicomweb up   --data runs/orthanc [--port 8042]      # start Orthanc on 127.0.0.1
    polypal-dicomweb load --data runs/orthanc FRAMES_FOLDER       # convert + upload (idempotent)
    polypal-dicomweb status --data runs/orthanc
    polypal-dicomweb down --data runs/orthanc

Orthanc and its DICOMweb plugin come from Debian's packages
(``apt-get install orthanc orthanc-dicomweb``); Orthanc runs with the project's
own config and data folder, never the system service. Each frame (jpg, png,
tif) becomes one study with one series and one instance of VL Endoscopic Image
Storage (Modality ES, RGB, 8 bits). UIDs are derived from the frame's file
name, so loading a folder twice stores nothing new; the name is kept in
PatientName (OHIF's study list shows it), SeriesDescription and ImageComments
so results can be traced back.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from polypal.data import frames_subfolder, list_images, read_rgb
from polypal.errors import DataError, PolypalError
from polypal.vocab import IMAGE_EXTENSIONS

VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def find_orthanc() -> str:
    exe = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None)
    if not exe:
        raise SystemExit("Orthanc is not installed: run `apt-get install orthanc orthanc-dicomweb` (Debian/Ubuntu)")
    return exe


def find_dicomweb_plugin() -> str:
    for d in PLUGIN_DIRS:
        p = os.path.join(d, "libOrthancDicomWeb.so")
        if os.path.exists(p):
            return p
    raise SystemExit("Orthanc's DICOMweb plugin is missing: run `apt-get install orthanc-dicomweb`")


def _http(method, url, body=None, headers=None, timeout=30, raw=False):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = r.read()
    return data if raw else json.loads(data) if data[:1] in (b"{", b"[") else data


def _state(data: Path) -> dict:
    f = data / "polypal-orthanc.json"
    return json.loads(f.read_text()) if f.exists() else {}


def base_url(data: Path) -> str:
    st = _state(data)
    if not st:
        raise SystemExit(f"no Orthanc started from {data}: run `polypal-dicomweb up --data {data}` first")
    return f"http://127.0.0.1:{st['port']}"


def is_up(url: str) -> bool:
    try:
        _http("GET", url + "/system", timeout=3)
        return True
    except urllib.error.HTTPError as e:
        return e.code in (401, 403)  # answering, with a password (``extra`` turned Orthanc's users on)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def up(data: Path, port: int = 8042, dicom_port: int = 4243, timeout: float = 60, extra: dict | None = None) -> str:
    """Start Orthanc on 127.0.0.1 with a config and storage in ``data``; no-op when already up.

    ``extra`` is merged into Orthanc's configuration (e.g. ``{"LuaScripts": [...]}``)."""
    data = data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    st = _state(data)
    if st and is_up(f"http://127.0.0.1:{st['port']}"):
        return f"http://127.0.0.1:{st['port']}"
    cfg = {
        "Name": "polyp-al", "StorageDirectory": str(data / "storage"), "IndexDirectory": str(data / "storage"),
        "HttpPort": port, "DicomPort": dicom_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "HttpBindAddress": "127.0.0.1",
        # no DICOM listener: Orthanc binds it on every interface and takes C-STOREs from anyone there, which
        # would let any host on the network add frames and labels (polyp-al talks DICOMweb over HTTP only)
        "DicomServerEnabled": False, "Plugins": [find_dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, **(extra or {}),
    }
    (data / "orthanc.json").write_text(json.dumps(cfg, indent=1))
    log = open(data / "orthanc.log", "ab")
    proc = subprocess.Popen([find_orthanc(), str(data / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    (data / "polypal-orthanc.json").write_text(json.dumps({"pid": proc.pid, "port": port}))
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"Orthanc exited with {proc.returncode}; see {data / 'orthanc.log'}")
        if is_up(url):
            return url
        time.sleep(0.3)
    raise SystemExit(f"Orthanc did not answer on {url} within {timeout:.0f}s; see {data / 'orthanc.log'}")


def down(data: Path) -> bool:
    st = _state(data.resolve())
    if not st:
        return False
    try:
        os.killpg(st["pid"], signal.SIGTERM)
        for _ in range(100):
            os.kill(st["pid"], 0)
            time.sleep(0.1)
        os.killpg(st["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    (data.resolve() / "polypal-orthanc.json").unlink(missing_ok=True)
    return True


def _uid(name: str, kind: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["polyp-al", kind, name])


def frame_to_dicom(path: Path) -> bytes:
    """One frame as a VL Endoscopic Image Storage instance (explicit VR little endian)."""
    return _frame_dicom(path)[0]


def _frame_dicom(path: Path) -> tuple[bytes, bytes]:
    """(the instance, its pixel data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    rgb = read_rgb(path)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(path, f"not an 8-bit RGB frame (shape {rgb.shape}, dtype {rgb.dtype})")
    name = path.stem
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_ENDOSCOPIC
    meta.MediaStorageSOPInstanceUID = _uid(name, "instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = VL_ENDOSCOPIC
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(name, "study")
    ds.SeriesInstanceUID = _uid(name, "series")
    ds.Modality = "ES"
    ds.PatientID = "polyp-al"
    ds.PatientName = name  # shown in OHIF's study list
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDescription = f"frame {name}"
    ds.SeriesDescription = name
    ds.ImageComments = f"polyp-al frame: {path.name}"
    ds.StudyDate = ds.SeriesDate = time.strftime("%Y%m%d")
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()
    # plane geometry (optional in this IOD): lets dcmqi build a DICOM SEG on the frame
    ds.FrameOfReferenceUID = _uid(name, "frame-of-reference")
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True) if "enforce_file_format" in ds.save_as.__code__.co_varnames \
        else ds.save_as(buf, write_like_original=False)
    return buf.getvalue(), ds.PixelData


def load(url: str, folder: Path) -> dict:
    """Convert and upload every frame of ``folder``; returns counts (new, already stored, failed).

    A frame's UIDs come from its file name, so that loading a folder again stores nothing twice. A frame
    "already stored" is checked to be that frame (its pixels): another folder's frame of the same name, or
    this file edited since, was counted as stored and never loaded. Two files of one name in the folder
    (``a.jpg``, ``a.png``): the second fails."""
    out = {"new": 0, "already": 0, "failed": {}}
    names: dict[str, str] = {}
    frames = list_images(folder)
    if not frames:  # (a dataset folder loaded nothing and said {"new": 0, ...}, exit 0: an empty viewer)
        sub = frames_subfolder(folder)
        raise DataError(folder, f"no frames at the top of the folder ({', '.join(IMAGE_EXTENSIONS)})"
                                + (f"; its frames are under {sub}/: load that folder" if sub else ""))
    for p in frames:
        if p.stem in names:
            out["failed"][p.name] = (f"same name as {names[p.stem]}: both would get the same DICOM UIDs "
                                     f"(rename one to load it)")
            continue
        names[p.stem] = p.name
        try:
            body, pixels = _frame_dicom(p)
        except DataError as e:
            out["failed"][p.name] = e.problem
            continue
        r = _http("POST", url + "/instances", body, {"Content-Type": "application/dicom"})
        if r.get("Status") != "AlreadyStored":
            out["new"] += 1
            continue
        stored = _http("GET", f"{url}/instances/{r['ID']}/content/7fe0-0010/0", raw=True)  # (one frame)
        if stored[: len(pixels)] != pixels or len(stored) - len(pixels) > 1:  # (DICOM pads to an even length)
            out["failed"][p.name] = (f"another frame named {p.stem!r} is already stored (its pixels differ: "
                                     f"another folder's, or this file changed since); UIDs come from the file "
                                     f"name: rename this file to load it")
            continue
        out["already"] += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="polypal-dicomweb", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "load", "status", "down"])
    ap.add_argument("folder", nargs="?", help="frames to load (load)")
    ap.add_argument("--data", default="runs/orthanc", help="Orthanc's config, storage and log folder")
    ap.add_argument("--port", type=int, default=8042)
    ap.add_argument("--dicom-port", type=int, default=4243,
                    help="Orthanc's DICOM port in its config; its DICOM listener is off (HTTP/DICOMweb only)")
    a = ap.parse_intermixed_args(argv)
    try:
        return _run(ap, a)
    except (PolypalError, OSError, http.client.HTTPException) as e:  # one line naming the file or the problem
        print(f"polypal-dicomweb {a.command}: error: {e}", file=sys.stderr)
        return 2


def _run(ap, a) -> int:
    data = Path(a.data)
    if a.command == "up":
        url = up(data, a.port, a.dicom_port)
        print(f"Orthanc up: {url}  (DICOMweb: {url}/dicom-web)")
    elif a.command == "load":
        if not a.folder:
            ap.error("load needs a FOLDER of frames")
        res = load(base_url(data), Path(a.folder))
        print(json.dumps(res))
        return 1 if res["failed"] else 0
    elif a.command == "status":
        url = base_url(data)
        up_ = is_up(url)
        n = len(_http("GET", url + "/instances")) if up_ else 0
        print(json.dumps({"url": url, "up": up_, "instances": n}))
    else:
        print("stopped" if down(data) else "not running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
