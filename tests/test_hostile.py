"""A hostile client against the real server (issue 10): no code runs from uploads, nothing is written
outside the datastore, no request destroys a frame or an acknowledged label, every bad input gets a 4xx.

Each test names the item of the issue it covers. One shared server (smoke profile, generated frames,
an untrained model on disk) serves most tests; the others start their own.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.parse
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synth_frame
from server_utils import Server, http, multipart

pytestmark = pytest.mark.server

H, W = 48, 64


class Pwn:
    """A pickled object that creates a file when unpickled (what a hostile checkpoint carries)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_model(path: Path, profile_name="smoke", **arch):
    from polypal.learner.model import PolypUNet, save_checkpoint
    from polypal.learner import get_profile

    prof = get_profile(profile_name, **arch)
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, PolypUNet.from_profile(prof), prof)
    return path


def chunk_bomb_png(w: int, h: int, n: int = 200_000) -> bytes:
    """A grey PNG of w x h zeros with ``n`` empty ancillary chunks before its image data (12 bytes each)."""
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    empty = chunk(b"abCd", b"")
    good = png_bytes(np.zeros((h, w), np.uint8))
    return good[:33] + empty * n + good[33:]  # after the signature and IHDR (8 + 25 bytes)


def test_metadata_bombs_are_refused_from_their_headers(env):
    """A file's metadata is parsed in Python before its pixels are counted, at a cost growing with the file:
    a hostile client's PNG of 8x8 pixels and 3 million empty chunks took 20 s and 0.7 GB of the server, and
    was stored, then decoded again by every scoring run. Frames, labels and inference uploads are refused
    from their headers now (the library's test: tests/test_data_readers.py), and nothing is stored."""
    url, studies = env["url"], env["studies"]
    bomb = chunk_bomb_png(8, 8)
    s, r = put_image(url, "chunkbomb", bomb)
    assert s == 422 and "chunks" in r["detail"], (s, r)
    labels = sorted((studies / "labels" / "final").glob("fr007.*"))
    before = [p.read_bytes() for p in labels]
    s, r = put_label(url, "fr007", chunk_bomb_png(W, H))
    assert s == 422 and "chunks" in r["detail"], (s, r)
    assert sorted((studies / "labels" / "final").glob("fr007.*")) == labels
    assert [p.read_bytes() for p in labels] == before
    s, r = infer_upload(url, bomb)
    assert 400 <= s < 500 and "chunks" in str(r), (s, r)
    assert not list(studies.glob("chunkbomb*"))


def hostile_checkpoint(path: Path, target: Path):
    """A real smoke checkpoint whose metadata carries a pickled object that writes ``target``."""
    from polypal.learner import PolypUNet, get_profile

    prof = get_profile("smoke")
    payload = {"state_dict": PolypUNet.from_profile(prof).state_dict(), "profile": prof.to_dict(),
               "extra": {"x": Pwn(target)}}
    torch.save(payload, path)
    return path


def png_bytes(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes(arr, quality=90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def bomb_png(w: int, h: int) -> bytes:
    """A valid grey PNG of w x h zeros, a few KB compressed (built row by row, never held decoded)."""
    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * w
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(min(h, 64))]
    # the same row again and again compresses to almost nothing; feed it in blocks
    block = row * 64
    for _ in range(h // 64 - 1):
        parts.append(comp.compress(block))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def nifti_header_bomb() -> bytes:
    """A .nii.gz whose header declares a 20000 x 20000 slice (the data is never needed to refuse it)."""
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape((20000, 20000, 1))
    raw = hdr.binaryblock + b"\x00" * 4 + b"\x00" * 4096
    return gzip.compress(raw)


def put_image(url, image_id, data: bytes, name="f.png", params=None):
    body, ct = multipart({"params": json.dumps(params or {})}, {"file": (name, data)})
    return http("PUT", f"{url}/datastore/?image={urllib.parse.quote(image_id)}", body, {"Content-Type": ct})


def put_label(url, image_id, data: bytes, name="m.png", tag="final"):
    body, ct = multipart({"params": "{}"}, {"label": (name, data)})
    q = urllib.parse.urlencode({"image": image_id, "tag": tag})
    return http("PUT", f"{url}/datastore/label?{q}", body, {"Content-Type": ct})


def infer_upload(url, data: bytes, name="x.png"):
    body, ct = multipart({"params": "{}"}, {"file": (name, data)})
    return http("POST", f"{url}/infer/polyp_seg?output=json", body, {"Content-Type": ct}, timeout=120)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def stored_mask(studies: Path, image_id: str, tag="final") -> np.ndarray:
    from polypal.data import read_mask

    files = list((studies / "labels" / tag).glob(f"{image_id}.*"))
    assert len(files) == 1, files
    return read_mask(files[0])


def make_frames(root: Path, n: int):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    masks = {}
    for i in range(n):
        img, m = synth_frame(rng, H, W)
        Image.fromarray(img).save(root / f"fr{i:03d}.png")
        masks[f"fr{i:03d}"] = m
    return masks


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    studies = base / "studies"
    masks = make_frames(studies, 12)
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    (studies / "trap.png").mkdir()  # a folder where an upload's file would go: its rename fails
    model = write_model(base / "model" / "polyp_seg-smoke.pt")
    srv = Server(studies, base, env={"TMPDIR": str(tmpdir)}).start()
    yield {"srv": srv, "url": srv.url, "studies": studies, "masks": masks, "tmp": tmpdir, "model": model,
           "base": base}
    srv.stop()


def temp_leftovers(tmpdir: Path):
    """Files under the server's TMPDIR, sub-folders included (its result files go to a folder of its own
    there, which stays while the server runs)."""
    return sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*") if not p.is_dir())


def wait_clean(srv, tmpdir: Path, before):
    """Background deletes run after the answer: wait (on the condition) until the temp dir holds
    nothing new (``before``: what the server wrote at start, e.g. its log config)."""
    srv.wait_for(lambda: set(temp_leftovers(tmpdir)) <= set(before), timeout=20,
                 what=f"no new files in {tmpdir}")


# -- 1. code execution through the model endpoint ----------------------------------------------------
def test_library_refuses_pickled_code(tmp_path):
    from polypal.learner import CheckpointError, load_checkpoint

    target = tmp_path / "PWNED"
    ck = hostile_checkpoint(tmp_path / "evil.pt", target)
    with pytest.raises(CheckpointError, match="not a loadable") as e:
        load_checkpoint(ck, device="cpu")
    assert not target.exists()
    # said in a sentence, without torch's advice to load it with weights_only=False (which would run the code)
    assert "could run code" in str(e.value) and "weights_only" not in str(e.value), str(e.value)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint at all\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint file"):
        load_checkpoint(text, device="cpu")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or cut short"):
        load_checkpoint(cut, device="cpu")
    with pytest.raises(CheckpointError, match="cannot be read"):  # not called "not a PyTorch file" (a review)
        load_checkpoint(tmp_path, device="cpu")


def test_library_refuses_a_checkpoint_that_would_inflate(tmp_path):
    """torch.save stores a checkpoint's entries uncompressed; an upload whose entries are deflated zeros made
    torch.load allocate about 1000 times the file (a hostile probe: 195 KB to 200 MB) before refusing it."""
    import zipfile

    from polypal.learner import CheckpointError, load_checkpoint

    good = write_model(tmp_path / "good.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w") as dst:
        for e in src.infolist():  # the real checkpoint, plus one deflated entry of 64 MB of zeros
            dst.writestr(e, src.read(e.filename))
        dst.writestr(zipfile.ZipInfo(src.infolist()[0].filename.split("/")[0] + "/data/999"), bytes(64 << 20),
                     compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match="inflate to"):
        load_checkpoint(bomb, device="cpu")
    load_checkpoint(good, device="cpu")  # a real one loads


def test_library_refuses_a_checkpoint_directory_of_many_entries_before_parsing_it(tmp_path):
    """A zip of many empty entries: zipfile builds about 400 bytes of Python objects per 46-byte entry
    (86 MB of them: 520 MB and 6 s before the old entry-count refusal; a 1 GB upload: about 6 GB). Now the
    directory's size is read from its end record and refused first."""
    import zipfile

    from polypal.learner import CheckpointError, load_checkpoint

    many = tmp_path / "many.pt"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(100_000):
            z.writestr(zipfile.ZipInfo(f"{i:x}"), b"")
    with pytest.raises(CheckpointError, match=r"many.pt: archive directory of \d+ bytes"):
        load_checkpoint(many, device="cpu")


def test_a_linked_folder_is_never_written_through(env, tmp_path):
    """A request names the label file (image id and tag): with a local user's ``labels/<tag> -> /elsewhere``,
    a remote save of that tag wrote, and replaced, a file there, and a delete moved one away (a probe,
    2026-12-07). Writes through a linked label folder now get 409 naming it; other tags are unaffected."""
    url, studies, masks = env["url"], env["studies"], env["masks"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "fr010.png").write_bytes(b"IMPORTANT")
    (studies / "labels").mkdir(exist_ok=True)
    link = studies / "labels" / "elsewhere"
    link.symlink_to(outside, target_is_directory=True)
    try:
        for frame in ("fr009", "fr010"):
            s, r = put_label(url, frame, png_bytes(masks[frame].astype(np.uint8)), tag="elsewhere")
            assert s == 409 and "labels/elsewhere" in r["detail"] and "symbolic link" in r["detail"], (s, r)
        s, r = http("DELETE", f"{url}/datastore/label?id=fr010&tag=elsewhere")
        assert s in (404, 409), (s, r)
        assert sorted(os.listdir(outside)) == ["fr010.png"] and (outside / "fr010.png").read_bytes() == b"IMPORTANT"
        s, r = put_label(url, "fr009", png_bytes(masks["fr009"].astype(np.uint8)), tag="final")
        assert s == 200, r
        s, r = http("DELETE", f"{url}/datastore/label?id=fr009&tag=final")
        assert s == 200, r
        # a frame's delete or replace takes every label file of its id, in every tag folder: refused (a
        # review: the delete of fr010 moved the outside fr010.png into the trash)
        s, r = http("DELETE", f"{url}/datastore/?id=fr010")
        assert s == 409 and "labels/elsewhere" in r["detail"], (s, r)
        s, r = put_image(url, "fr010", (env["studies"] / "fr011.png").read_bytes(), params={"replace": True})
        assert s == 409 and "labels/elsewhere" in r["detail"], (s, r)
        assert (outside / "fr010.png").read_bytes() == b"IMPORTANT" and (studies / "fr010.png").exists()
        for path in ("/train/polyp_seg", "/scoring/polyp_al"):  # (their processes would not start: a traceback)
            s, r = http("POST", f"{url}{path}", b"{}", {"Content-Type": "application/json"})
            assert s == 409 and "labels/elsewhere" in r["detail"], (path, s, r)
    finally:
        link.unlink()
    # a server does not start on a folder with one: its start-up scan would read, register and move files
    # through it (it deleted an old .upload- file and trashed an empty label there)
    other = tmp_path / "studies"
    make_frames(other, 2)
    (other / "labels").mkdir()
    (other / "labels" / "ext").symlink_to(outside, target_is_directory=True)
    (outside / "fr000.png").write_bytes(b"")
    srv = Server(other, tmp_path)
    with pytest.raises(RuntimeError, match="server exited"):
        srv.start()
    log = srv.log.read_text()
    assert "polyp-al cannot start: labels/ext in the studies folder is a symbolic link" in log, log[-3000:]
    assert "Traceback" not in log and sorted(os.listdir(outside)) == ["fr000.png", "fr010.png"], log[-3000:]
    # nor on one whose .polypal is a link: refused before any database is made or opened through it (the
    # state database was, the datastore's refusal coming after it)
    third, state_elsewhere = tmp_path / "studies3", tmp_path / "state-elsewhere"
    make_frames(third, 2)
    state_elsewhere.mkdir()
    (third / ".polypal").symlink_to(state_elsewhere, target_is_directory=True)
    srv = Server(third, tmp_path)
    with pytest.raises(RuntimeError, match="server exited"):
        srv.start()
    assert "polyp-al cannot start: .polypal in the studies folder is a symbolic link" in srv.log.read_text()
    assert os.listdir(state_elsewhere) == []


def test_model_upload_is_off_by_default(env):
    url, model = env["url"], env["model"]
    before = sha(model)
    target = env["base"] / "PWNED-upload"
    evil = hostile_checkpoint(env["base"] / "evil.pt", target).read_bytes()
    body, ct = multipart({}, {"file": ("m.pt", evil)})
    s, r = http("PUT", f"{url}/model/polyp_seg", body, {"Content-Type": ct})
    assert s == 403 and "allow_model_upload" in r["detail"]
    s, r = http("DELETE", f"{url}/model/polyp_seg")
    assert s == 403
    assert sha(model) == before
    assert not target.exists()


def test_a_root_path_for_a_reverse_proxy_keeps_every_rule(tmp_path):
    """``monailabel start_server --root_path /al`` (MONAI Label's option for a server behind a proxy that
    strips /al): uvicorn puts /al in front of every request's path, the router takes it off, and the Gate
    compared its rules with /al/model/polyp_seg... and let everything through: a model upload with
    uploads off, the log viewer's CDN scripts, a replace without the admin role (a review, 2026-12-07)."""
    studies = tmp_path / "studies"
    make_frames(studies, 2)
    model = write_model(tmp_path / "model" / "polyp_seg-smoke.pt")
    before = sha(model)
    srv = Server(studies, tmp_path, args=["--root_path", "/al"]).start()
    try:
        body, ct = multipart({}, {"file": ("m.pt", model.read_bytes())})
        s, r = http("PUT", f"{srv.url}/model/polyp_seg", body, {"Content-Type": ct})
        assert s == 403 and "allow_model_upload" in r["detail"], (s, r)
        s, r = http("PUT", f"{srv.url}/al/model/polyp_seg", body, {"Content-Type": ct})  # the prefix sent too
        assert s in (403, 404), (s, r)
        s, r = http("GET", f"{srv.url}/logs/?lines=0")
        assert s == 400, (s, r)
        s, r = http("GET", f"{srv.url}/datastore/?output=train")
        assert s == 403, (s, r)
        s, r = http("GET", f"{srv.url}/info/")
        assert s == 200 and r["datastore"]["total"] == 2, (s, r)
        assert sha(model) == before
        from http.client import HTTPConnection  # a redirect keeps the root path (the proxy's address)

        for path, to in (("/info", "/al/info/"), ("/annotate?x=1", "/al/annotate/?x=1"), ("/docs", "/al/")):
            c = HTTPConnection("127.0.0.1", int(srv.url.rsplit(":", 1)[1]), timeout=30)
            c.request("GET", path)  # (the app's own redirects, /annotate and /docs, dropped /al: a probe)
            resp = c.getresponse()
            assert resp.status in (302, 307) and resp.getheader("location", "").endswith(to), \
                (path, resp.status, resp.getheader("location"))
            c.close()
    finally:
        srv.stop()


def test_hostile_model_file_never_runs_nor_is_served(tmp_path):
    """A hostile file placed as the model (not through the API): scoring, infer and a restart never
    unpickle it; infer answers 503 naming the problem; scoring logs and skips."""
    studies = tmp_path / "studies"
    make_frames(studies, 4)
    target = tmp_path / "PWNED"
    model = tmp_path / "model" / "polyp_seg-smoke.pt"
    model.parent.mkdir()
    hostile_checkpoint(model, target)
    srv = Server(studies, tmp_path).start()
    try:
        # the start-up scoring run may still be going (429): run it again once it has finished
        srv.wait_for(lambda: http("POST", f"{srv.url}/scoring/polyp_al?run_sync=true", timeout=120)[0] == 200,
                     timeout=120, what="a synchronous scoring run")
        s, r = http("POST", f"{srv.url}/activelearning/bvsb_ta_coreset", json.dumps({}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 200
        s, r = http("POST", f"{srv.url}/infer/polyp_seg?image=fr000&output=json")
        assert s == 503 and "cannot be served" in r["detail"], (s, r)
        assert "scoring skipped" in srv.tail(400)
    finally:
        srv.stop()
    assert not target.exists()


def test_model_upload_when_on_is_checked_and_atomic(tmp_path):
    studies = tmp_path / "studies"
    make_frames(studies, 4)
    model = write_model(tmp_path / "model" / "polyp_seg-smoke.pt")
    before = sha(model)
    target = tmp_path / "PWNED"
    srv = Server(studies, tmp_path, conf={"allow_model_upload": "true"}).start()
    try:
        def upload(data):
            body, ct = multipart({}, {"file": ("m.pt", data)})
            return http("PUT", f"{srv.url}/model/polyp_seg", body, {"Content-Type": ct})

        s, r = upload(hostile_checkpoint(tmp_path / "evil.pt", target).read_bytes())
        assert s == 422 and "refused" in r["detail"]
        s, r = upload(b"not a checkpoint at all")
        assert s == 422 and "not a PyTorch checkpoint file" in r["detail"], r  # (a "KeyError: 110" before)
        other = write_model(tmp_path / "other.pt", channels=(8, 16, 32))  # another architecture
        s, r = upload(other.read_bytes())
        assert s == 422 and "architecture" in r["detail"]
        nan = tmp_path / "nan.pt"  # the right U-Net with NaN weights: it would make every score NaN
        ck = torch.load(write_model(tmp_path / "base.pt"), weights_only=True)
        ck["state_dict"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
        torch.save(ck, nan)
        s, r = upload(nan.read_bytes())
        assert s == 422 and "NaN" in r["detail"], (s, r)
        assert sha(model) == before  # nothing refused ever became the served model
        assert not list(model.parent.glob(".upload-*"))
        good = write_model(tmp_path / "good.pt")
        torch.manual_seed(1)
        s, r = upload(good.read_bytes())
        assert s == 200, r
        assert sha(model) == sha(good)
        umask = os.umask(0o022)
        os.umask(umask)
        assert model.stat().st_mode & 0o777 == 0o666 & ~umask, oct(model.stat().st_mode)  # not mkstemp's 0600
        assert list(model.parent.glob("polyp_seg-smoke.pt.*.replaced"))
        s, r = http("POST", f"{srv.url}/infer/polyp_seg?image=fr000&output=json")
        assert s == 200, r
        s, r = upload(b"")
        assert s == 422
        s, _ = http("DELETE", f"{srv.url}/model/polyp_seg")
        assert s == 200 and not model.exists() and list(model.parent.glob("*.deleted"))
        # two replacements in one second: every replaced model is kept, none overwrites another's copy
        for p in model.parent.glob("*.replaced"):
            p.unlink()
        base = tmp_path / "base.pt"
        for m in (base, good, base):  # base replaced by good, good by base: two copies, usually in one second
            assert upload(m.read_bytes())[0] == 200
        copies = sorted(sha(p) for p in model.parent.glob("*.replaced"))
        assert copies == sorted([sha(base), sha(good)]), copies
        s, r = http("POST", f"{srv.url}/train/polyp_seg", json.dumps({"pad": "x" * 200_000}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 413, (s, r)  # MONAI Label would put it on a command line: E2BIG, a task that never runs
        # the form: one file part (300 parts of 1 MB each were held in memory, 450 MB for 48 s; a probe)
        now = sha(model)
        body, ct = multipart({}, {f"file{i}": ("m.pt", base.read_bytes()) for i in range(3)})
        s, r = http("PUT", f"{srv.url}/model/polyp_seg", body, {"Content-Type": ct})
        assert s == 400 and "one file" in r["detail"], (s, r)
        body, ct = multipart({"file": "not a file part"}, {})
        s, r = http("PUT", f"{srv.url}/model/polyp_seg", body, {"Content-Type": ct})
        assert s == 400 and "form field 'file'" in r["detail"], (s, r)
        s, r = http("PUT", f"{srv.url}/model/polyp_seg", b"x", {"Content-Type": "multipart/form-data"})
        assert s == 400 and "boundary" in r["detail"].lower(), (s, r)  # Starlette's words, not only "malformed"
        assert sha(model) == now
        # the model's info and download are each read from one open file (a delete in between was a 500)
        s, info = http("GET", f"{srv.url}/model/info/polyp_seg")
        assert s == 200 and info["checksum"] == "SHA256:" + now, info
        assert http("DELETE", f"{srv.url}/model/polyp_seg")[0] == 200
        assert http("GET", f"{srv.url}/model/info/polyp_seg")[0] == 404
        assert http("GET", f"{srv.url}/model/polyp_seg")[0] == 404
        assert http("POST", f"{srv.url}/infer/polyp_seg?image=fr000&output=json")[0] == 409
    finally:
        srv.stop()
    assert not target.exists()


# -- 2. tar slip through sessions ----------------------------------------------------------------
def test_sessions_are_off_no_archive_is_unpacked(env, tmp_path):
    buf = io.BytesIO()
    outside = env["base"] / "slip.txt"
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name in ("../../slip.txt", str(outside), "link"):
            info = tarfile.TarInfo(name)
            if name == "link":
                info.type, info.linkname = tarfile.SYMTYPE, str(env["base"])
                t.addfile(info)
            else:
                data = b"slip"
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    body, ct = multipart({}, {"files": ("x.tar", buf.getvalue())})
    s, r = http("PUT", f"{env['url']}/session/?uncompress=true", body, {"Content-Type": ct})
    assert s == 406, (s, r)
    assert not outside.exists()
    s, r = http("POST", f"{env['url']}/infer/polyp_seg?session_id=abc&output=json")
    assert 400 <= s < 500


# -- 3. cross-site requests ----------------------------------------------------------------------
def test_other_origins_and_hosts_are_refused(env):
    url = env["url"]
    s, r = http("OPTIONS", f"{url}/datastore/", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "PUT"})
    assert s == 403
    s, r = http("GET", f"{url}/datastore/dataset", headers={"Origin": "http://evil.example"})
    assert s == 403 and "evil.example" in r["detail"]
    body, ct = multipart({"params": "{}"}, {"label": ("m.png", png_bytes(np.zeros((H, W), np.uint8)))})
    s, r = http("PUT", f"{url}/datastore/label?image=fr000", body,
                {"Content-Type": ct, "Origin": "http://evil.example"})
    assert s == 403
    s, r = http("GET", f"{url}/datastore/", headers={"Host": "evil.example:80"})  # DNS rebinding
    assert s == 403
    # the same origin (OHIF served by this server) and plain clients work
    s, r = http("GET", f"{url}/datastore/", headers={"Origin": url})
    assert s == 200
    s, r = http("GET", f"{url}/datastore/")
    assert s == 200


# -- 4. frames and labels cannot be destroyed ------------------------------------------------------
def test_existing_frames_are_not_overwritten_and_deletes_are_recoverable(env):
    url, studies, masks = env["url"], env["studies"], env["masks"]
    m = masks["fr001"].astype(np.uint8)
    s, _ = put_label(url, "fr001", png_bytes(m))
    assert s == 200
    frame_before, label_before = sha(studies / "fr001.png"), sha(studies / "labels" / "final" / "fr001.png")
    other = synth_frame(np.random.default_rng(9), H, W)[0]
    s, r = put_image(url, "fr001", png_bytes(other))
    assert s == 409 and "replace" in r["detail"]
    s, r = put_image(url, "fr001", jpg_bytes(other), name="f.jpg")  # another extension: same id
    assert s == 409
    assert sha(studies / "fr001.png") == frame_before and not (studies / "fr001.jpg").exists()
    assert sha(studies / "labels" / "final" / "fr001.png") == label_before
    # replacing on purpose: the old frame and its label are kept, the label does not stay on the new frame
    s, r = put_image(url, "fr001", jpg_bytes(other), name="f.jpg", params={"replace": True})
    assert s == 200, r
    assert (studies / "fr001.jpg").exists() and not (studies / "fr001.png").exists()
    assert not (studies / "labels" / "final" / "fr001.png").exists()
    # stored with the mode the server's umask gives (mkstemp's 0600 before: unreadable to a backup job or a
    # viewer running as another user); the server inherited this process's umask
    umask = os.umask(0o022)
    os.umask(umask)
    for p in (studies / "fr001.jpg", studies / "labels" / "final" / "fr002.png"):
        if p.exists():
            assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p, oct(p.stat().st_mode))
    kept = {p.name: p for p in (studies / ".polypal" / "trash").rglob("*") if p.is_file()}
    assert any(sha(p) == frame_before for p in kept.values())
    assert any(sha(p) == label_before for p in kept.values())
    # deletes go to the trash
    s, _ = put_label(url, "fr002", png_bytes(masks["fr002"].astype(np.uint8)))
    assert s == 200
    lab = sha(studies / "labels" / "final" / "fr002.png")
    assert (studies / "labels" / "final" / "fr002.png").stat().st_mode & 0o777 == 0o666 & ~umask
    s, _ = http("DELETE", f"{url}/datastore/label?id=fr002&tag=final")
    assert s == 200
    s, _ = http("DELETE", f"{url}/datastore/?id=fr003")
    assert s == 200 and not (studies / "fr003.png").exists()
    kept = [p for p in (studies / ".polypal" / "trash").rglob("*") if p.is_file()]
    assert any(sha(p) == lab for p in kept)
    assert any(p.name == "fr003.png" for p in kept)
    manifests = [json.loads(p.read_text()) for p in kept if p.name == "manifest.json"]
    assert any("fr003.png" in m["files"].values() for m in manifests)
    s, _ = http("DELETE", f"{url}/datastore/?id=nosuchframe")
    assert s == 404


def test_relabeling_keeps_the_previous_label(env):
    url, studies, masks = env["url"], env["studies"], env["masks"]
    s, _ = put_label(url, "fr004", png_bytes(masks["fr004"].astype(np.uint8)))
    assert s == 200
    first = sha(studies / "labels" / "final" / "fr004.png")
    s, _ = put_label(url, "fr004", png_bytes(np.zeros((H, W), np.uint8)))
    assert s == 200
    assert stored_mask(studies, "fr004").sum() == 0
    assert any(sha(p) == first for p in (studies / ".polypal" / "trash").rglob("*.png"))


def test_predictions_never_overwrite_a_final_label(env):
    url, studies, masks = env["url"], env["studies"], env["masks"]
    s, _ = put_label(url, "fr005", png_bytes(masks["fr005"].astype(np.uint8)))
    before = sha(studies / "labels" / "final" / "fr005.png")
    body, ct = multipart({"params": json.dumps({"save_label": True, "label_tag": "final"})}, {})
    s, r = http("POST", f"{url}/infer/polyp_seg?image=fr005&output=json", body, {"Content-Type": ct})
    assert s == 200, r
    assert sha(studies / "labels" / "final" / "fr005.png") == before


# -- 5. labels stored as meant, or refused -----------------------------------------------------------
def test_labels_are_stored_as_the_uploader_meant(env):
    url, studies, masks = env["url"], env["studies"], env["masks"]
    m = masks["fr006"]
    cases = {
        "jpeg01": (jpg_bytes(m.astype(np.uint8)), "m.jpg"),  # 0/1 saved as JPEG: values 0..2
        "value5": (png_bytes(m.astype(np.uint8) * 5), "m.png"),
        "red": (png_bytes(np.stack([m * 255, 0 * m, 0 * m], -1).astype(np.uint8)), "m.png"),
        "alpha": (png_bytes(np.dstack([np.zeros((H, W, 3), np.uint8), (m * 255).astype(np.uint8)])), "m.png"),
    }
    for name, (data, fname) in cases.items():
        s, r = put_label(url, "fr006", data, name=fname)
        assert s == 200, (name, r)
        got = stored_mask(studies, "fr006")
        assert (got != m).mean() < 0.02, (name, int(got.sum()), int(m.sum()))
        assert got.sum() > 0.9 * m.sum(), name
        assert (studies / "labels" / "final" / "fr006.png").exists()  # stored as a 0/1 PNG
    # an empty label (a frame with no polyp) stays possible
    s, r = put_label(url, "fr006", png_bytes(np.zeros((H, W), np.uint8)))
    assert s == 200 and stored_mask(studies, "fr006").sum() == 0
    # a photograph of the frame is refused, and the empty label stays
    photo = np.asarray(Image.open(studies / "fr006.png").convert("RGB"))
    s, r = put_label(url, "fr006", png_bytes(photo))
    assert s == 422 and "photograph" in r["detail"], r
    assert stored_mask(studies, "fr006").sum() == 0


# -- 6. unbounded inputs -----------------------------------------------------------------------------
def test_pixel_bombs_get_413(env):
    url = env["url"]
    big = bomb_png(20000, 20000)
    assert len(big) < 1_000_000
    s, r = put_image(url, "bomb", big)
    assert s == 413 and "limit" in r["detail"], r
    s, r = put_label(url, "fr007", big)
    assert s == 413, r
    s, r = infer_upload(url, big)
    assert s == 413, r
    s, r = put_image(url, "big13k", bomb_png(13000, 13000))
    assert s == 413
    s, r = put_label(url, "fr007", nifti_header_bomb(), name="m.nii.gz")  # label volumes are capped too
    assert s == 413, r
    assert not (env["studies"] / "bomb.png").exists() and not (env["studies"] / "big13k.png").exists()
    # a body larger than any image at the pixel cap could be (284 MB at 4096 x 4096): 413 from its declared
    # size, before a byte of it is read (1 GiB was read and spooled)
    for target in ("/datastore/?image=huge", "/datastore/label?image=fr007&tag=final", "/infer/polyp_seg"):
        s, body = _declared(env["srv"].port, target, 300 << 20, wait=30)
        assert s == 413 and b"larger than" in body, (target, s, body[:200])


def test_other_requests_are_answered_while_an_inference_runs(env):
    """An inference of a large frame (4096x4096, under the cap) runs off the event loop: a datastore
    listing started after the inference began is answered before the inference ends."""
    url, srv = env["url"], env["srv"]
    yy, xx = np.mgrid[0:4096, 0:4096]
    frame = np.stack([(xx % 256), (yy % 256), ((xx + yy) % 256)], -1).astype(np.uint8)
    data = png_bytes(frame)
    done = {}
    marker = len(srv.log.read_bytes())

    def run():
        done["infer"] = infer_upload(url, data)
        done["infer_t"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    srv.wait_for(lambda: b"Infer Request" in srv.log.read_bytes()[marker:], timeout=60, every=0.05,
                 what="the inference to start")
    s, _ = http("GET", f"{url}/datastore/")
    got = time.monotonic()
    t.join(120)
    assert s == 200
    assert done["infer"][0] == 200, done["infer"]
    assert got < done["infer_t"], "the listing waited for the inference to finish"


# -- 7. temporary files ------------------------------------------------------------------------------
def test_result_folders_of_stopped_servers_are_removed_at_the_next_start(tmp_path):
    """A server stopped with SIGTERM never runs its exit handlers (uvicorn re-raises the signal after its
    shutdown): each stop left its empty result folder in the temp dir (a probe counted them). The next start
    removes those of servers that no longer run, and only those: a folder a live process holds locked
    stays (a pid check would call a server in another PID namespace dead), as does an older version's
    folder that is not empty."""
    import fcntl

    studies = tmp_path / "studies"
    make_frames(studies, 3)
    write_model(tmp_path / "model" / "polyp_seg-smoke.pt")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    live = tmpdir / "polypal-res-live1234"  # held by a running process (this one)
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    legacy_empty, legacy_full = tmpdir / "polypal-results-ab12cd34", tmpdir / "polypal-results-ef56gh78"
    legacy_empty.mkdir()
    legacy_full.mkdir()
    (legacy_full / "polypal-x.png").write_bytes(b"kept")  # an older version's, maybe still serving it
    try:
        srv = Server(studies, tmp_path, env={"TMPDIR": str(tmpdir)}).start()
        try:
            s, r = http("POST", f"{srv.url}/infer/polyp_seg?image=fr000&output=json")
            assert s == 200, r
            own = [p for p in tmpdir.glob("polypal-res-*") if p != live]
            assert len(own) == 1, list(tmpdir.iterdir())
        finally:
            srv.stop()
        assert own[0].is_dir()  # (SIGTERM: no exit handler ran)
        srv = Server(studies, tmp_path, env={"TMPDIR": str(tmpdir)}).start()
        try:
            left = sorted(p.name for p in tmpdir.glob("polypal-res*"))
            assert left == sorted([live.name, legacy_full.name]), left
        finally:
            srv.stop()
    finally:
        os.close(fd)


def test_no_temporary_files_are_left(env):
    url, tmpdir, studies = env["url"], env["tmp"], env["studies"]
    before = temp_leftovers(tmpdir)
    photo = np.asarray(Image.open(studies / "fr008.png").convert("RGB"))
    for _ in range(3):
        s, _ = put_label(url, "fr008", png_bytes(photo))
        assert s == 422
    s, _ = put_image(url, "junk", b"not an image")
    assert s == 422
    s, _ = infer_upload(url, b"not an image either")
    assert s == 422
    s, _ = put_label(url, "fr008", png_bytes(np.zeros((H + 1, W), np.uint8)))  # wrong size
    assert s == 422
    s, body = http("GET", f"{url}/datastore/dataset")
    assert s == 200 and body[:2] == b"PK"
    s, r = put_image(url, "trap", png_bytes(np.zeros((H, W, 3), np.uint8)))  # the rename fails
    assert 400 <= s < 600
    assert not [p for p in studies.iterdir() if p.name.startswith(".upload-")]
    wait_clean(env["srv"], tmpdir, before)


# -- 8. a torn append ----------------------------------------------------------------------------------
def test_torn_thumbnail_file_recovers(tmp_path):
    studies = tmp_path / "studies"
    make_frames(studies, 6)
    srv = Server(studies, tmp_path).start()
    try:
        srv.wait_for(lambda: http("GET", f"{srv.url}/info/")[1]["polyp_al"]["state"]["thumbnails"] == 6,
                     timeout=120, what="thumbnails of the 6 frames")
    finally:
        srv.stop()
    thumbs = studies / ".polypal" / "thumbs.u8"
    with open(thumbs, "ab") as f:
        f.write(b"\x01\x02")  # a torn append
    make_frames(studies / "more", 1)
    os.replace(studies / "more" / "fr000.png", studies / "fr100.png")
    srv = Server(studies, tmp_path).start()
    try:
        srv.wait_for(lambda: http("GET", f"{srv.url}/info/")[1]["polyp_al"]["state"]["thumbnails"] == 7,
                     timeout=120, what="the new frame's thumbnail")
        s, r = http("POST", f"{srv.url}/activelearning/pca_coreset", b"{}", {"Content-Type": "application/json"})
        assert s == 200 and r.get("id"), r
        assert "cannot reshape" not in srv.tail(400)
    finally:
        srv.stop()
    from polypal.serving import THUMB

    assert thumbs.stat().st_size % (THUMB * THUMB * 3) == 0


# -- 9. keys the app owns ----------------------------------------------------------------------------
def test_clients_cannot_set_the_apps_keys(env):
    url = env["url"]
    for key in ("id", "path", "al_strategy", "strategy"):
        body, ct = multipart({"info": json.dumps({key: "spoofed"})}, {})
        s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", body, {"Content-Type": ct})
        assert s == 400 and key in r["detail"], (key, s, r)
    body, ct = multipart({"info": json.dumps(["not", "a", "dict"])}, {})
    s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", body, {"Content-Type": ct})
    assert s == 400
    body, ct = multipart({"info": json.dumps({"comment": "blurry"})}, {})
    s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", body, {"Content-Type": ct})
    assert s == 200
    s, info = http("GET", f"{url}/datastore/image/info?image=fr009")
    assert info.get("comment") == "blurry" and "al_strategy" not in info and "path" not in info
    # a DICOMweb datastore's series tags are the server's; a folder's frames may carry such keys of their own
    body, ct = multipart({"info": json.dumps({"PatientID": "p17", "StudyDate": "20240101"})}, {})
    assert http("PUT", f"{url}/datastore/image/info?image=fr009", body, {"Content-Type": ct})[0] == 200
    s, info = http("GET", f"{url}/datastore/image/info?image=fr009")
    assert info.get("PatientID") == "p17" and info.get("StudyDate") == "20240101", info
    # each update is capped, their sum too: 60 updates of 900 KB made every listing 55 MB
    codes = []
    for k in range(4):
        body, ct = multipart({"info": json.dumps({f"k{k}": "x" * (90 << 10)})}, {})
        codes.append(http("PUT", f"{url}/datastore/image/info?image=fr009", body, {"Content-Type": ct})[0])
    assert codes == [200, 200, 413, 413], codes
    s, info = http("GET", f"{url}/datastore/image/info?image=fr009")
    assert s == 200 and len(json.dumps(info)) < 256 << 10 and info.get("comment") == "blurry"


# -- 10. paths where an id is expected ---------------------------------------------------------------
def test_infer_takes_ids_not_paths(env):
    url, studies = env["url"], env["studies"]
    for image in ("/etc/passwd", str(studies / "fr000.png"), str(env["tmp"]), "../studies/fr000", "nosuchid"):
        s, r = http("POST", f"{url}/infer/polyp_seg?{urllib.parse.urlencode({'image': image})}&output=json")
        assert s == 404 and "unknown image id" in r["detail"], (image, s, r)
        assert str(studies) not in json.dumps(r) and "/etc" not in r["detail"].replace(image, "")
    s, r = http("POST", f"{url}/infer/polyp?image=fr000&output=json")  # a model that does not exist
    assert s == 404
    s, r = infer_upload(url, b"garbage")
    assert s == 422 and str(env["tmp"]) not in json.dumps(r)


# -- 11. malformed names and values -------------------------------------------------------------------
def test_malformed_names_get_4xx(env):
    url, studies = env["url"], env["studies"]
    zeros = png_bytes(np.zeros((H, W), np.uint8))
    s, _ = put_image(url, "a" * 5000, png_bytes(np.zeros((H, W, 3), np.uint8)))
    assert s == 400
    s, _ = put_label(url, "fr010", zeros, tag="t" * 5000)
    assert 400 <= s < 500
    s, _ = put_label(url, "fr010\x00x", zeros)
    assert 400 <= s < 500
    s, r = put_label(url, "fr010", zeros, name="noextension")
    assert s == 415, r
    s, r = put_label(url, "fr010", zeros, name="x.exe")
    assert s == 415, r
    assert not list((studies / "labels" / "final").glob("fr010.*"))
    for cid in ({"a": 1}, ["a"], "c" * 1000):
        s, r = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": cid}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 400, (cid, s, r)
    s, r = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": "ok"}).encode(),
                {"Content-Type": "application/json"})
    assert s == 200 and r["id"]


# -- 12. a crash during training ------------------------------------------------------------------------
def test_interrupted_training_is_cleaned_at_start(tmp_path):
    import subprocess
    import sys

    studies = tmp_path / "studies"
    make_frames(studies, 4)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (model_dir / "polyp_seg-smoke.pt.stats.json").write_text(json.dumps(
        {"status": "RUNNING", "started": time.time() - 60, "labeled": 3, "pid": dead.pid, "model_number": 3}))
    (model_dir / "polyp_seg-smoke.pt.tmp").write_bytes(b"")
    srv = Server(studies, tmp_path).start()
    try:
        s, info = http("GET", f"{srv.url}/info/")
        stats = info["train_stats"]["polyp_seg"]
        assert stats["status"] == "INTERRUPTED" and stats["model_number"] == 2 and stats["attempt"] == 3, stats
        assert not (model_dir / "polyp_seg-smoke.pt.tmp").exists()
        on_disk = json.loads((model_dir / "polyp_seg-smoke.pt.stats.json").read_text())  # written once, at start
        assert on_disk["status"] == "INTERRUPTED" and on_disk["model_number"] == 2, on_disk
    finally:
        srv.stop()


def _smoke_train_task(tmp_path):
    """(the app's config for a smoke server on tmp_path, the app's train task class)."""
    import sys

    AppConfig = _app_config()
    (tmp_path / "studies").mkdir()
    cfg = AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {"profile": "smoke",
                                                                           "model_dir": str(tmp_path / "model")})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "polyp_al"))
    try:
        from lib.train import PolypSegTrain
    finally:
        sys.path.pop(0)
    return cfg, PolypSegTrain


def test_a_model_written_before_its_done_record_reads_as_done(tmp_path):
    """A training writes its model, fsyncs it, then its DONE record: /info read that moment as RUNNING with
    the new model served "on ? labels" (a CI run caught it). The record of a RUNNING training whose model
    file is newer than its start now reads as that model's DONE; an older model file changes nothing."""
    cfg, PolypSegTrain = _smoke_train_task(tmp_path)
    model = write_model(Path(cfg.model_path))
    os.utime(model, (time.time() - 120, time.time() - 120))  # the served model, from before this training
    Path(cfg.model_path + ".stats.json").write_text(json.dumps(
        {"status": "RUNNING", "started": time.time() - 60, "labeled": 7, "pid": os.getpid(), "model_number": 4,
         "served_labeled": 5}))
    task = PolypSegTrain(cfg)
    st = task.stats()
    assert st["status"] == "RUNNING" and st["served_labeled"] == 5, st
    os.utime(model)  # the training has just written its model
    st = task.stats()
    assert st["status"] == "DONE" and st["model_number"] == 4 and st["served_labeled"] == 7, st


def test_a_training_killed_after_publishing_is_recorded_done_at_the_next_start(tmp_path):
    """Killed between its model's write and its DONE record: the next start recorded it INTERRUPTED with the
    previous number, while the new model was served. recover() now records the published model as DONE; a
    dead RUNNING record with only an older model file stays INTERRUPTED."""
    import subprocess
    import sys

    cfg, PolypSegTrain = _smoke_train_task(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stats_path = Path(cfg.model_path + ".stats.json")
    model = write_model(Path(cfg.model_path))
    record = {"status": "RUNNING", "started": time.time() - 60, "labeled": 7, "pid": dead.pid,
              "model_number": 4, "served_labeled": 5}
    os.utime(model, (time.time() - 120, time.time() - 120))  # the model served before that training
    stats_path.write_text(json.dumps(record))
    PolypSegTrain(cfg)
    on_disk = json.loads(stats_path.read_text())
    assert on_disk["status"] == "INTERRUPTED" and on_disk["model_number"] == 3, on_disk
    os.utime(model)  # that training wrote its model, then was killed
    stats_path.write_text(json.dumps(record))
    task = PolypSegTrain(cfg)
    on_disk = json.loads(stats_path.read_text())
    assert on_disk["status"] == "DONE" and on_disk["model_number"] == 4 and on_disk["served_labeled"] == 7, on_disk
    assert task.stats()["status"] == "DONE"


# -- found by a second hostile probe --------------------------------------------------------------------
def test_bundle_path_cannot_put_an_upload_on_a_subprocess_path(env):
    """A frame with a ZIP appended (Python imports modules from a ZIP on PYTHONPATH) uploaded, then named
    as ``bundle_path`` in a scoring/training request: MONAI Label would put it on the subprocess's path."""
    import zipfile

    url, base = env["url"], env["base"]
    target = base / "PWNED-bundle"
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for mod in ("argparse", "json", "logging"):
            z.writestr(f"{mod}.py", f"open({str(target)!r}, 'a').write('{mod}')\n")
    frame = png_bytes(np.zeros((H, W, 3), np.uint8)) + zbuf.getvalue()
    s, _ = put_image(url, "polyglot", frame)
    stored = str(env["studies"] / "polyglot.png")
    for path in ("/scoring/polyp_al", "/train/polyp_seg", "/scoring/", "/batch/infer/polyp_seg"):
        s, r = http("POST", f"{url}{path}", json.dumps({"bundle_path": stored}).encode(),
                    {"Content-Type": "application/json"})
        assert s in (400, 404), (path, s, r)
    s, r = http("POST", f"{url}/scoring/nosuch?run_sync=true")
    assert s == 404
    s, r = http("POST", f"{url}/reload")
    assert s == 404
    assert not target.exists()


def test_concurrent_saves_in_two_formats_never_lose_the_label(env):
    import nibabel as nib

    url, studies, masks = env["url"], env["studies"], env["masks"]
    m = masks["fr011"]
    nii = env["base"] / "m.nii.gz"
    nib.save(nib.Nifti1Image(m.T[:, :, None].astype(np.uint8), np.eye(4)), str(nii))
    payloads = [(png_bytes(m.astype(np.uint8)), "m.png"), (nii.read_bytes(), "m.nii.gz")]
    for _ in range(6):
        res = []
        threads = [threading.Thread(target=lambda p=p: res.append(put_label(url, "fr011", p[0], name=p[1])))
                   for p in payloads]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [s for s, _ in res] == [200, 200], res
        s, data = http("GET", f"{url}/datastore/label?label=fr011&tag=final")
        assert s == 200, "the acknowledged label is gone"
        files = list((studies / "labels" / "final").glob("fr011.*"))
        assert len(files) == 1
        from polypal.data import read_mask

        assert (read_mask(files[0]) == m).all()


def test_ids_that_alias_another_file_are_refused(env):
    url, studies = env["url"], env["studies"]
    zeros = png_bytes(np.zeros((H, W), np.uint8))
    s, _ = put_label(url, "fr000", png_bytes(env["masks"]["fr000"].astype(np.uint8)))
    assert s == 200
    before = sha(studies / "labels" / "final" / "fr000.png")
    s, r = put_image(url, "fr000.seg", png_bytes(np.zeros((H, W, 3), np.uint8)))
    assert s == 200, r  # an odd id, but its own file
    import nrrd

    nrrd.write(str(env["base"] / "z.nrrd"), np.zeros((W, H, 1), np.uint8), index_order="F")
    s, r = put_label(url, "fr000.seg", (env["base"] / "z.nrrd").read_bytes(), name="z.nrrd")
    assert s == 400, r  # labels/final/fr000.seg.nrrd would read back as fr000's label
    s, r = put_image(url, "fr000.nii", b"\x1f\x8b" + zeros, name="x.gz")
    assert 400 <= s < 500
    assert sha(studies / "labels" / "final" / "fr000.png") == before
    s, r = put_image(url, "nl%0a", zeros)  # a trailing newline in an id
    assert 400 <= s < 500


def test_nrrd_labels_cannot_read_other_files_or_inflate(env):
    url = env["url"]
    hdr = f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {W} {H}\nencoding: raw\ndata file: /etc/passwd\n\n"
    s, r = put_label(url, "fr010", hdr.encode(), name="x.nrrd")
    assert s == 422 and "detached" in r["detail"], r
    import gzip

    bomb = f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {W} {H}\nencoding: gzip\n\n".encode() + \
        gzip.compress(b"\x00" * (100 << 20), compresslevel=9)  # ~100 KB inflating to 100 MB
    s, r = put_label(url, "fr010", bomb, name="x.nrrd")
    assert s == 422 and "declared" in r["detail"], r
    # smaller than the file-size check's headroom: bzip2 packs a GB of zeros into 785 bytes, gzip 48 MB into
    # 47 KB; pynrrd inflated them whole before any check (2 GB of server memory per 800 bytes sent)
    import bz2

    head = f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {W} {H}\nencoding: %s\n\n"
    for enc, data in (("bzip2", bz2.compress(b"\x00" * (64 << 20), 9)),
                      ("gzip", gzip.compress(b"\x00" * (48 << 20), compresslevel=9))):
        assert len(data) < 60 << 10
        s, r = put_label(url, "fr010", (head % enc).encode() + data, name="x.nrrd")
        assert s == 422 and "inflates past its declared" in r["detail"], (enc, r)
    assert not (env["studies"] / "labels" / "final" / "fr010.nrrd").exists()


def nifti_extension_bomb(shape=(W, H, 1, 1, 3), ext_bytes=32 << 20, vox_offset=None) -> bytes:
    """A .nii.gz of a small frame whose header extension declares ext_bytes (zeros: a few KB gzipped).
    nibabel reads an extension whole, at its declared size, before any data."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352 + ext_bytes if vox_offset is None else vox_offset
    ext = struct.pack("<ii", ext_bytes, 0) + b"\x00" * (ext_bytes - 8)
    return gzip.compress(hdr.binaryblock + b"\x01\x00\x00\x00" + ext + b"\x00" * int(np.prod(shape)), 9)


def test_nifti_header_extensions_cannot_inflate(env):
    """Frame, label and inference uploads: an extension past the header cap, one larger than the room before
    the data, and a vox_offset of 0 (nibabel then reads extensions to the end of the stream)."""
    url = env["url"]
    labels = env["studies"] / "labels" / "final"
    before = {p.name: sha(p) for p in labels.glob("fr011.*")} if labels.is_dir() else {}
    bombs = [nifti_extension_bomb(), nifti_extension_bomb(vox_offset=352 + 16),
             nifti_extension_bomb(vox_offset=0)]
    for k, bomb in enumerate(bombs):
        assert len(bomb) < 64 << 10
        s, r = put_image(url, f"niibomb{k}", bomb, name="f.nii.gz")
        assert s == 422 and "NIfTI header" in r["detail"], (k, s, r)
        s, r = put_label(url, "fr011", bomb, name="m.nii.gz")
        assert s == 422 and "NIfTI header" in r["detail"], (k, s, r)
        s, r = infer_upload(url, bomb, name="x.nii.gz")
        assert s == 422 and "NIfTI header" in r["detail"], (k, s, r)
    assert not list(env["studies"].glob("niibomb*"))
    assert ({p.name: sha(p) for p in labels.glob("fr011.*")} if labels.is_dir() else {}) == before  # untouched


def infer_at_once(url, images: list[str], timeout=120) -> list[int]:
    """POST /infer for every image id at once (one thread each); the status codes."""
    res = []
    threads = [threading.Thread(target=lambda i=i: res.append(http(
        "POST", f"{url}/infer/polyp_seg?image={i}&output=json", timeout=timeout)[0])) for i in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return res


def test_concurrent_inferences_all_answer(env):
    res = infer_at_once(env["url"], [f"fr00{k % 3}" for k in range(8)])
    assert res == [200] * 8, res


def test_upload_params_are_checked(env):
    url = env["url"]
    frame = png_bytes(np.zeros((H, W, 3), np.uint8))
    s, r = put_image(url, "spoof", frame, params={"id": "fr001", "path": "/etc/passwd"})
    assert s == 400 and "id" in r["detail"]
    body, ct = multipart({"params": "{bad"}, {"label": ("m.png", png_bytes(np.zeros((H, W), np.uint8)))})
    s, r = http("PUT", f"{url}/datastore/label?image=fr010", body, {"Content-Type": ct})
    assert s == 400, r
    body, ct = multipart({"params": json.dumps({"logging": "CRITICAL"})}, {})
    s, r = http("POST", f"{url}/infer/polyp_seg?image=fr000&output=json", body, {"Content-Type": ct})
    assert s == 400
    # an upload's or a save's info is capped as an update's is (256 KiB): 900 KB of params made every listing
    # carry them, and no update of that info could be stored after (a hostile probe)
    big = {"comment": "A" * 900_000}
    s, r = put_image(url, "bigparams", frame, params=big)
    assert s == 413 and "info of" in r["detail"], (s, r)
    assert not list(env["studies"].glob("bigparams*"))
    labels = env["studies"] / "labels" / "final"
    before = sorted((p.name, p.read_bytes()) for p in labels.glob("fr011.*"))
    body, ct = multipart({"params": json.dumps(big)}, {"label": ("m.png", png_bytes(np.zeros((H, W), np.uint8)))})
    s, r = http("PUT", f"{url}/datastore/label?image=fr011&tag=final", body, {"Content-Type": ct})
    assert s == 413 and "info of" in r["detail"], (s, r)
    assert sorted((p.name, p.read_bytes()) for p in labels.glob("fr011.*")) == before
    assert len(json.dumps(http("GET", f"{url}/datastore/?output=all")[1])) < 200_000


# -- 12. the Gate's checks hold whatever the encoding (found by a hostile probe, 2026-12-04) -------------
def test_forms_are_checked_whatever_their_encoding(env):
    url, tmpdir = env["url"], env["tmp"]
    spoof = json.dumps({"path": "/etc/passwd", "id": "fr002", "served": "x"})
    # urlencoded (what MONAI Label's own openapi.json gives for these endpoints)
    form = urllib.parse.urlencode({"info": spoof}).encode()
    s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", form,
                {"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 400 and "set by the server" in r["detail"], (s, r)
    form = urllib.parse.urlencode({"info": json.dumps({"ts": 1, "user": "x"})}).encode()
    s, r = http("PUT", f"{url}/datastore/label/info?label=fr009&tag=final", form,
                {"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 400, (s, r)
    # multipart with the media type in capitals
    body, ct = multipart({"info": spoof}, {})
    s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", body,
                {"Content-Type": ct.replace("multipart/form-data", "Multipart/Form-Data")})
    assert s == 400, (s, r)
    # a body over 64 MB (the old limit of the check): a big file part beside spoofed params
    body, ct = multipart({"params": json.dumps({"served": {"client_id": "spoofed"}, "path": "/etc/passwd"})},
                         {"file": ("f.png", png_bytes(np.zeros((H, W, 3), np.uint8)) + b"\0" * (65 << 20))})
    s, r = http("PUT", f"{url}/datastore/?image=big_spoof", body, {"Content-Type": ct}, timeout=120)
    assert s == 400, (s, r)
    # two copies of the field: both are checked (a parser may keep either)
    body = (f"info={urllib.parse.quote(json.dumps({'comment': 'ok'}))}&info={urllib.parse.quote(spoof)}").encode()
    s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", body,
                {"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 400, (s, r)
    s, info = http("GET", f"{url}/datastore/image/info?image=fr009")
    assert "path" not in info and info.get("id", "fr009") == "fr009" and "served" not in info
    s, _ = http("GET", f"{url}/datastore/dataset")
    assert s == 200
    # infer: a params image naming a temp file is refused in every encoding, and the file stays
    canary = tmpdir / "tmpcanary.txt"
    canary.write_text("not yours")
    for enc in ("urlencoded", "Multipart/Form-Data"):
        p = json.dumps({"image": str(canary)})
        if enc == "urlencoded":
            body, ct = urllib.parse.urlencode({"params": p}).encode(), "application/x-www-form-urlencoded"
        else:
            body, ct = multipart({"params": p}, {})
            ct = ct.replace("multipart/form-data", enc)
        s, r = http("POST", f"{url}/infer/polyp_seg?image=fr000&output=json", body, {"Content-Type": ct})
        assert s == 400 and "image" in r["detail"], (enc, s, r)
        assert canary.exists()
    canary.unlink()


def test_a_client_saving_results_in_the_servers_tmpdir_keeps_them(env):
    """MONAILabelClient saves an inference as <its tmpdir>/<the server's file name>. On one machine both
    default to the same TMPDIR: the server's result file was that very path, and its deletion after the
    answer sometimes took the client's copy with it (1-2 in 20 calls). The server's results now live in a
    folder of their own, so the client's copies stay, and the server's are still deleted."""
    from monailabel.client import MONAILabelClient

    url, tmpdir = env["url"], env["tmp"]
    before = temp_leftovers(tmpdir)
    client = MONAILabelClient(url, tmpdir=str(tmpdir), client_id="same-machine")
    got = []
    for _ in range(8):
        path, _ = client.infer("polyp_seg", "fr001", {})
        got.append(Path(path))
        s, body = http("POST", f"{url}/infer/polyp_seg?image=fr001&output=image")  # a second answer's clean-up meanwhile
        assert s == 200 and body[:4] == b"\x89PNG"
    assert all(p.parent == tmpdir and p.is_file() for p in got), [str(p) for p in got if not p.exists()]
    assert all(Image.open(p).size == (W, H) for p in got)
    results = [p for p in tmpdir.iterdir() if p.is_dir() and p.name.startswith("polypal-res-")]
    assert len(results) == 1, list(tmpdir.iterdir())  # the server's own folder, not TMPDIR itself
    for p in got:
        p.unlink()
    wait_clean(env["srv"], tmpdir, before)  # and the server's copies are deleted after each answer


def test_clients_that_never_read_downloads_cannot_hold_the_workers(tmp_path):
    """40 downloads of a large frame whose clients read nothing: each held one of anyio's 40 worker threads
    until the client read it, and the checks every request needs run on those threads, so the whole API
    stopped (no timeout). Downloads now take threads of their own (POLYPAL_DOWNLOAD_THREADS) and are
    abandoned after POLYPAL_SEND_TIMEOUT seconds of no reading."""
    import socket

    studies = tmp_path / "studies"
    make_frames(studies, 3)
    big = np.random.default_rng(0).integers(0, 256, (1800, 2400, 3), np.uint8)  # ~13 MB of PNG: no buffer holds it
    Image.fromarray(big).save(studies / "big.png", compress_level=0)
    srv = Server(studies, tmp_path, env={"POLYPAL_SEND_TIMEOUT": "4"}).start()
    host, port = "127.0.0.1", srv.port
    socks = []

    def server_sockets():
        n = 0
        for f in Path(f"/proc/{srv.proc.pid}/fd").iterdir():
            try:
                n += os.readlink(f).startswith("socket:")
            except FileNotFoundError:  # closed since the listing (a lock probe, a log file, a subprocess pipe)
                pass
        return n

    try:
        before = server_sockets()
        import monailabel.endpoints.ohif as ohif

        viewer = max((p for p in (Path(ohif.__file__).parent / "static" / "ohif").iterdir() if p.is_file()),
                     key=lambda p: p.stat().st_size)  # answered outside the worker threads (megabytes of JS)
        paths = ["/datastore/image?image=big"] * 40 + [f"/ohif/{viewer.name}"] * 2
        for path in paths:
            k = socket.socket()
            k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            k.connect((host, port))
            k.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            socks.append(k)
        time.sleep(1.0)
        t0 = time.time()
        s, info = http("GET", f"{srv.url}/info/", timeout=20)  # a check on a worker thread, then the answer
        assert s == 200 and time.time() - t0 < 10, (s, time.time() - t0)
        s, r = put_label(srv.url, "fr000", png_bytes(np.zeros((H, W), np.uint8)))
        assert s == 200, r
        # every stalled download is abandoned (16 at a time, 4 s each) and its connection aborted, socket and
        # buffers freed on the server without the client reading anything (a graceful close waited for ever)
        srv.wait_for(lambda: srv.log.read_text(errors="replace").count("the client read nothing for 4 s") >= 42,
                     timeout=120, what="42 abandoned answers")
        srv.wait_for(lambda: server_sockets() <= before + 2, timeout=30, what="the server's sockets freed")
        size = (studies / "big.png").stat().st_size
        for k in socks:
            k.settimeout(30)
            got = 0
            try:
                while True:
                    chunk = k.recv(1 << 20)
                    if not chunk:
                        break
                    got += len(chunk)
            except ConnectionResetError:
                pass
            assert got < size, got
        s, body = http("GET", f"{srv.url}/datastore/image?image=big", timeout=60)  # a reading client: whole
        assert s == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(body))), big)
        # a client reading 4 kB/s (one at 2 kB/s held a download thread for 100 minutes): aborted with a reset
        # once its send buffer has been full for 4 s, or longer at under 10 kB/s, long before the file is
        # through (the kernel's queue for it dropped too: a plain close delivered megabytes at its pace)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((host, port))
        slow.sendall(f"GET /datastore/image?image=big HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        slow.settimeout(10)
        got, t0 = 0, time.time()
        try:
            while time.time() - t0 < 60:
                chunk = slow.recv(1024)
                if not chunk:
                    break
                got += len(chunk)
                time.sleep(0.25)
        except (ConnectionResetError, socket.timeout):
            pass
        slow.close()
        assert got < size and time.time() - t0 < 60, (got, time.time() - t0)
        assert srv.log.read_text(errors="replace").count("; connection aborted") >= 43
    finally:
        for k in socks:
            k.close()
        srv.stop()


def test_inferences_at_once_are_capped(tmp_path):
    """Each inference decodes and resizes its frame (about 200 MB at the pixel cap): with 40 worker threads,
    40 at once could take 8 GB. POLYPAL_INFER_THREADS caps them (here 1); the others wait and all answer."""
    studies = tmp_path / "studies"
    make_frames(studies, 3)
    rng = np.random.default_rng(1)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), np.uint8)).save(studies / f"big{k}.png",
                                                                               compress_level=1)
    write_model(tmp_path / "model" / "polyp_seg-smoke.pt")
    srv = Server(studies, tmp_path, env={"POLYPAL_INFER_THREADS": "1"}).start()
    try:
        res = infer_at_once(srv.url, [f"big{k % 2}" for k in range(6)], timeout=300)
        assert res == [200] * 6, res
        running, most = 0, 0
        for line in srv.log.read_text(errors="replace").splitlines():
            if "Infer Request: {" in line and "'image': 'big" in line:
                running += 1
                most = max(most, running)
            elif "Result Json Keys" in line and running:
                running -= 1
        assert most == 1, most
    finally:
        srv.stop()


def test_connections_that_send_no_request_are_closed(tmp_path):
    """A socket that sends nothing, and one that sends a header byte now and then, stayed open for ever
    (uvicorn has no timeout before a request's head): about 20,000 took every file descriptor of the
    server. They are now closed after POLYPAL_HEADER_TIMEOUT seconds; a keep-alive client that asks
    again in time, and a slow upload whose head has arrived, are not cut off."""
    import socket

    studies = tmp_path / "studies"
    make_frames(studies, 3)
    srv = Server(studies, tmp_path, env={"POLYPAL_HEADER_TIMEOUT": "3"}).start()
    host, port = "127.0.0.1", srv.port

    def closed_within(k, seconds, drip=None):
        t0 = time.time()
        k.settimeout(0.5)
        while time.time() - t0 < seconds:
            if drip:
                try:
                    k.sendall(drip)
                except OSError:
                    return time.time() - t0
            try:
                data = k.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return time.time() - t0
            if not data:
                return time.time() - t0
        return None

    try:
        idle = socket.create_connection((host, port))
        drip = socket.create_connection((host, port))
        drip.sendall(b"GET /info/ HTTP/1.1\r\n")
        t_idle = closed_within(idle, 20)
        t_drip = closed_within(drip, 20, drip=b"X")
        assert t_idle is not None and t_drip is not None, (t_idle, t_drip)
        # a keep-alive client asking twice, 1 s apart, and an upload whose body comes slowly after its head
        import http.client

        c = http.client.HTTPConnection(host, port, timeout=30)
        socks = set()
        for _ in range(3):
            c.request("GET", "/info/")
            r = c.getresponse()
            assert r.status == 200 and r.read()
            socks.add(id(c.sock))
            time.sleep(1)
        c.close()
        assert len(socks) == 1  # one connection, kept
        frame = png_bytes(np.zeros((H, W, 3), np.uint8))
        body, ct = multipart({"params": "{}"}, {"file": ("f.png", frame)})
        up = socket.create_connection((host, port))
        up.sendall(f"PUT /datastore/?image=slow HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ct}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), max(1, len(body) // 5)):
            up.sendall(body[i:i + max(1, len(body) // 5)])
            time.sleep(1.2)  # 6 s in all, over the 3 s head timeout
        up.settimeout(30)
        assert up.recv(65536).startswith(b"HTTP/1.1 200")
        up.close()
        assert (studies / "slow.png").exists()
        # refused before its body (413: declared over 1 GiB), the client still sending at 100 kB/s for 6 s:
        # the connection stays until it has sent, and it reads the 413, not a reset
        big = socket.create_connection((host, port))
        big.sendall(f"PUT /datastore/?image=huge HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                    f"application/octet-stream\r\nContent-Length: {2 << 30}\r\n\r\n".encode())
        for _ in range(30):
            big.sendall(b"\x00" * 20_000)
            time.sleep(0.2)
        big.settimeout(30)
        assert big.recv(65536).startswith(b"HTTP/1.1 413")
        big.close()
    finally:
        srv.stop()


def test_refusals_cannot_flood_the_log(tmp_path):
    """8000 refused requests with 15 KB paths in 3 s rotated all 110 MB of app.log away (the audit trail).
    Refusal lines are now cut short and at most REFUSALS_PER_MINUTE a minute, with a count of the rest."""
    import http.client

    studies = tmp_path / "studies"
    make_frames(studies, 2)
    srv = Server(studies, tmp_path).start()
    try:
        before = srv.log.stat().st_size
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        for _ in range(400):
            c.request("GET", "/x/..%2f" + "b" * 15000)
            r = c.getresponse()
            r.read()
            assert r.status == 404
        c.close()
        time.sleep(0.5)
        text = srv.log.read_bytes()[before:].decode(errors="replace")
        lines = [line for line in text.splitlines() if "refused GET" in line]
        assert 100 <= len(lines) <= 121, len(lines)
        assert max(len(line) for line in lines) < 1000
        assert len(text) < 400_000, len(text)  # 400 x 15 KB before
    finally:
        srv.stop()


def test_failed_accepts_are_logged_once_a_minute():
    """Out of file descriptors, asyncio logs every failed accept with a traceback (954,000 in 90 s, which
    rotated every earlier line out of app.log): the server's filter keeps one a minute, with a count."""
    import importlib.util
    import logging

    spec = importlib.util.spec_from_file_location(
        "polyp_al_connections_under_test",
        Path(__file__).resolve().parents[1] / "apps" / "polyp_al" / "lib" / "connections.py")
    connections = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(connections)
    f = connections.OncePerMinute()

    def record(msg):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    kept = [f.filter(record("socket.accept() out of system resource\nsocket: ...")) for _ in range(1000)]
    assert kept.count(True) == 1 and kept[0]
    assert all(f.filter(record("Task exception was never retrieved")) for _ in range(3))  # others untouched
    f.last -= 61
    r = record("socket.accept() out of system resource")
    assert f.filter(r) and "999 more in the last minute" in r.msg


def test_viewer_folders_are_404_not_500(env):
    """MONAI Label's /ohif/<path> answered a folder ('.', 'assets') with a 500 and a traceback."""
    import http.client

    host, port = "127.0.0.1", env["srv"].port
    for path, want in (("/ohif/.", 404), ("/ohif/assets", 404), ("/ohif/index.html", 200)):
        c = http.client.HTTPConnection(host, port, timeout=30)
        c.request("GET", path)  # sent as is (no dot-segment removal)
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == want, (path, r.status)
    assert "is not a file" not in env["srv"].log.read_text(errors="replace")


def test_no_page_in_the_apis_origin_loads_scripts_from_elsewhere(env):
    """MONAI Label's API page (/, Swagger UI) and /docs (ReDoc) loaded unpinned scripts from a public CDN into
    the API's origin, where a script has every right the API gives, and so did the bundled viewer's
    /ohif/silent-refresh.html (a hostile probe). / is Swagger UI from the server's own files (set-up's
    build/api-docs), its answer forbidding scripts from elsewhere, or a page saying how to install it;
    /docs leads there; OHIF's extra page is not served."""
    import http.client as hc
    import re

    url = env["url"]
    c = hc.HTTPConnection("127.0.0.1", env["srv"].port, timeout=30)
    c.request("GET", "/")
    r = c.getresponse()
    page = r.read().decode()
    c.close()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/html"), r.status
    csp = r.getheader("Content-Security-Policy")
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert "default-src 'self'" in csp and "unsafe" not in script_src and "//" not in script_src, csp
    sources = re.findall(r'(?:src|href)=["\']([^"\']+)', page)
    assert sources and not [u for u in sources if "//" in u], sources  # every script, style and link: this server's
    installed = (Path(__file__).resolve().parents[1] / "build" / "api-docs" / "swagger-ui-bundle.js").exists()
    if installed:
        assert "/api-docs/swagger-ui-bundle.js" in page and "/openapi.json" in page
        s, js = http("GET", url + "/api-docs/swagger-ui-bundle.js")
        assert s == 200 and len(js) > 100_000
        assert http("GET", url + "/api-docs/package.json")[0] == 404  # only the page's own files
        assert http("GET", url + "/api-docs/..%2fohif%2fdist%2findex.html")[0] == 404
    else:
        print("SKIP part of test_no_page_in_the_apis_origin_loads_scripts_from_elsewhere: build/api-docs is not "
              "installed (scripts/install_api_docs.sh); checked the page that says so")
        assert "install_api_docs.sh" in page
    c = hc.HTTPConnection("127.0.0.1", env["srv"].port, timeout=30)
    c.request("GET", "/docs")
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status in (302, 307) and r.getheader("Location") == "/", (r.status, r.getheader("Location"))
    for path in ("/ohif/silent-refresh.html", "/ohif/SILENT-REFRESH.HTML", "/ohif/silent-refresh.htm",
                 "/static/ohif/silent-refresh.html", "/static/ohif/silent-refresh.html/", "/static//ohif/silent-refresh.html"):
        assert http("GET", url + path)[0] == 404, path
    assert http("GET", url + "/ohif/index.html")[0] == 200


def test_infer_keys_read_after_the_writer_are_refused_and_nothing_is_left(env):
    url, tmpdir = env["url"], env["tmp"]
    before = temp_leftovers(tmpdir)
    for params in ({"centroids": 5}, {"centroids": 5, "result_extension": ".nii"}, {"skip_writer": True}):
        body, ct = multipart({"params": json.dumps(params)}, {})
        s, r = http("POST", f"{url}/infer/polyp_seg?image=fr000&output=json", body, {"Content-Type": ct})
        assert s == 400 and "set by the server" in r["detail"], (params, s, r)
    wait_clean(env["srv"], tmpdir, before)


def test_requests_answered_before_their_body_is_read(env):
    import socket

    host, port = "127.0.0.1", int(env["url"].rsplit(":", 1)[1])
    for method, path in (("PUT", "/session/"), ("POST", "/session/"), ("PUT", "/session/abc")):
        with socket.create_connection((host, port), timeout=10) as sock:
            # a 300 MB body is announced; only its first bytes are sent: the answer must not wait for the rest
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
                         f"boundary=x\r\nContent-Length: 300000000\r\n\r\n--x\r\n".encode())
            head = sock.recv(4096).decode("latin-1")
        assert head.startswith("HTTP/1.1 406"), (path, head[:200])
    # a JSON body announced over its 64 KiB: 413 from the Content-Length (before, up to 1 GiB was written to the
    # temp dir first), and one sent chunked is cut as it passes 64 KiB
    for path in ("/activelearning/random", "/train/polyp_seg", "/scoring/polyp_al"):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 300000000\r\n\r\n{{".encode())
            head = sock.recv(4096)
            sock.settimeout(2)
            try:
                while b"KiB" not in head:
                    more = sock.recv(4096)
                    if not more:
                        break
                    head += more
            except socket.timeout:
                pass
        assert head.startswith(b"HTTP/1.1 413") and b"64 KiB" in head, (path, head[:600])
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"POST /activelearning/random HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                     f"application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b" " * 4096
        head = b""
        for _ in range(17):  # 68 KiB, and no end: the answer comes once 64 KiB have passed
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        sock.settimeout(10)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:300]


def test_trainings_are_not_queued_by_clients(env):
    url = env["url"]
    s, r = http("POST", f"{url}/train/polyp_seg?enqueue=true", b"{}", {"Content-Type": "application/json"})
    assert s == 400 and "queues none" in r["detail"], (s, r)
    s, r = http("POST", f"{url}/train/", b"{}", {"Content-Type": "application/json"})
    assert s == 400 and "/train/polyp_seg" in r["detail"], (s, r)
    s, r = http("POST", f"{url}/train/polyp_seg", json.dumps({"model": "zz"}).encode(),
                {"Content-Type": "application/json"})
    assert s == 400 and "model" in r["detail"], (s, r)
    s, r = http("GET", f"{url}/train/?all=true")  # 404: no training task was ever started
    assert s == 404 or (s == 200 and "SUBMITTED" not in json.dumps(r)), (s, r)


def test_deeply_nested_json_gets_400(env):
    url = env["url"]
    for path in ("/activelearning/random", "/train/polyp_seg"):
        s, r = http("POST", f"{url}{path}", b"[" * 60000, {"Content-Type": "application/json"})  # under 64 KiB
        assert s == 400, (path, s, r)
    s, _ = http("GET", f"{url}/info/")
    assert s == 200


def test_nan_masks_are_refused_not_stored_as_empty(env):
    url, studies = env["url"], env["studies"]
    before = stored_mask(studies, "fr011") if list((studies / "labels" / "final").glob("fr011.*")) else None
    buf = io.BytesIO()
    Image.fromarray(np.full((H, W), np.nan, np.float32)).save(buf, format="TIFF")
    s, r = put_label(url, "fr011", buf.getvalue(), name="m.tif")
    assert s == 422 and "NaN" in r["detail"], (s, r)
    after = stored_mask(studies, "fr011") if list((studies / "labels" / "final").glob("fr011.*")) else None
    assert (before is None and after is None) or np.array_equal(before, after)


def test_logs_are_capped_and_answers_refuse_framing(env):
    url = env["url"]
    for lines in ("0", "-5", "x", "100000"):
        s, r = http("GET", f"{url}/logs/?lines={lines}&text=true")
        assert s == 400, (lines, s)
    s, r = http("GET", f"{url}/logs/?lines=5&text=true")
    assert s == 200
    req = urllib.request.Request(f"{url}/info/")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"
        assert "frame-ancestors 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_unreadable_volumes_do_not_tell_the_server_path(env):
    url, tmpdir = env["url"], env["tmp"]
    s, r = infer_upload(url, b"NRRD0004\ntype: nonsense\n\n", name="x.nrrd")
    assert 400 <= s < 500 and str(tmpdir) not in json.dumps(r) and "/tmp" not in json.dumps(r), (s, r)
    s, r = put_image(url, "vol_junk", b"\x00" * 400, name="v.nii")
    assert 400 <= s < 500 and str(tmpdir) not in json.dumps(r), (s, r)


def test_deleting_a_frame_while_its_label_is_saved_leaves_no_orphan(env):
    url, studies, masks = env["url"], env["studies"], env["masks"]
    frame = (studies / "fr010.png").read_bytes()
    mask = png_bytes(masks["fr010"].astype(np.uint8))
    acked = []
    for k in range(12):
        rid = f"race{k}"
        s, r = put_image(url, rid, frame)
        assert s == 200, (s, r)
        res = {}
        q = urllib.parse.urlencode({"id": rid})
        threads = [threading.Thread(target=lambda: res.__setitem__("label", put_label(url, rid, mask))),
                   threading.Thread(target=lambda: res.__setitem__("delete", http("DELETE", f"{url}/datastore/?{q}")))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert res["delete"][0] == 200, res
        assert res["label"][0] in (200, 404, 409), res  # saved before the delete, or refused after it (not 422)
        if res["label"][0] == 200:
            acked.append(rid)
    # no label is left without its frame, on disk or in the store
    assert not list((studies / "labels" / "final").glob("race*")), "a label outlived its frame"
    s, objs = http("GET", f"{url}/datastore/?output=all")
    assert s == 200 and not [i for i in objs if str(i).startswith("race")], objs
    # every acknowledged label went to the trash with its frame
    trashed = {p.name for p in (studies / ".polypal" / "trash").rglob("labels-final-race*")}
    assert {f"labels-final-{rid}.png" for rid in acked} <= trashed, (acked, trashed)


def test_deleted_frames_are_not_served(tmp_path):
    studies = tmp_path / "studies"
    masks = make_frames(studies, 6)
    srv = Server(studies, tmp_path).start()
    try:
        def ask(cid, status=200):
            s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": cid}).encode(),
                        {"Content-Type": "application/json"})
            assert s == status, (s, r)
            return r

        first = ask("a")["id"]
        s, _ = http("DELETE", f"{srv.url}/datastore/?{urllib.parse.urlencode({'id': first})}")
        assert s == 200
        # "a" moves on (its lease is released): the deleted frame, still in the planned batch, is not served
        served = {ask("a")["id"]}
        for k in range(4):
            served.add(ask(f"mallory-{k}")["id"])
        assert first not in served and served == set(masks) - {first}, served
        # every unlabeled frame is leased to someone else: nothing to serve now ({}, what clients expect)
        assert ask("honest") == {}
        for i in set(masks) - {first}:
            s, _ = put_label(srv.url, i, png_bytes(masks[i].astype(np.uint8)))
            assert s == 200
        assert ask("honest") == {}  # all labeled: 200 with nothing in it
    finally:
        srv.stop()


def test_one_training_and_one_scoring_at_a_time_whatever_the_route(tmp_path):
    studies = tmp_path / "studies"
    masks = make_frames(studies, 8)
    srv = Server(studies, tmp_path).start()
    try:
        for i in list(masks)[:5]:
            s, _ = put_label(srv.url, i, png_bytes(masks[i].astype(np.uint8)))
            assert s == 200
        # queued trainings / scorings, in every spelling pydantic reads as true, and the run-all routes
        for q in ("enqueue=true", "enqueue=t", "enqueue=Y", "enqueue=on", "enqueue=1"):
            s, r = http("POST", f"{srv.url}/train/polyp_seg?{q}", b"{}", {"Content-Type": "application/json"})
            assert s == 400, (q, s, r)
        for path in ("/train/", "/scoring/"):
            s, r = http("POST", f"{srv.url}{path}?run_sync=true", b"{}", {"Content-Type": "application/json"})
            assert s == 400, (path, s, r)
        s, r = http("POST", f"{srv.url}/scoring/polyp_al", json.dumps({"method": "nosuch"}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 400, (s, r)
        # trainings run in the server's own threads (run_sync) at the same time: one at a time (a request waits
        # up to 2 s for the lock, then gets 429), never a 500, and the model numbers only go up, none twice
        numbers = []
        for _ in range(3):
            res = []
            threads = [threading.Thread(target=lambda: res.append(
                http("POST", f"{srv.url}/train/polyp_seg?run_sync=true", timeout=300))) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            codes = sorted(s for s, _ in res)
            assert set(codes) <= {200, 429} and 200 in codes, res
            # (a training that waited for the lock may answer before the one it waited for)
            numbers += sorted(r["model_number"] for s, r in res if s == 200)
            assert all("already running" in r["detail"] for s, r in res if s == 429)
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
        s, info = http("GET", f"{srv.url}/info/")
        assert info["train_stats"]["polyp_seg"]["model_number"] == max(numbers)
        # while a training holds the lock (held here by this test process, as a training subprocess would),
        # an in-server training gets 429 and an in-server scoring run stands aside
        import fcntl

        fd = os.open(str(tmp_path / "model" / "polyp_seg-smoke.pt.train.lock"), os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            s, r = http("POST", f"{srv.url}/train/polyp_seg?run_sync=true", timeout=120)
            assert s == 429, (s, r)
            got = []  # a scoring task started by the last training may still be running: 429 until it ends
            srv.wait_for(lambda: got.append(http("POST", f"{srv.url}/scoring/polyp_al?run_sync=true", timeout=120))
                         or got[-1][0] != 429, timeout=120, what="no scoring task running")
            s, r = got[-1]
            assert s == 200 and "a training is running" in r.get("skipped", ""), (s, r)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        s, r = http("POST", f"{srv.url}/scoring/polyp_al?run_sync=true", timeout=120)
        assert s == 200 and "a training is running" not in r.get("skipped", ""), (s, r)
    finally:
        srv.stop()


def test_values_that_would_break_later_answers_are_refused(env):
    url = env["url"]
    for path in ("/train/polyp_seg", "/scoring/polyp_al", "/activelearning/random"):
        s, r = http("POST", f"{url}{path}", b'{"x": 1e999}', {"Content-Type": "application/json"})
        assert s == 400, (path, s, r)
    for bad in ('{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e999}', '{"a": [-1e400]}'):
        form = urllib.parse.urlencode({"info": bad}).encode()
        s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", form,
                    {"Content-Type": "application/x-www-form-urlencoded"})
        assert s == 400, (bad, s, r)
    s, _ = http("GET", f"{url}/datastore/?output=all")
    assert s == 200
    s, r = http("POST", f"{url}/activelearning/random", json.dumps({"strategy": ["random"]}).encode(),
                {"Content-Type": "application/json"})
    assert s == 400, (s, r)
    body, ct = multipart({"params": "{}"}, {})  # neither an image id nor a file: MONAI Label answers 500
    s, r = http("POST", f"{url}/infer/polyp_seg?output=json", body, {"Content-Type": ct})
    assert s == 400 and "image" in r["detail"], (s, r)
    # a lone surrogate ("\ud800" is valid JSON, not valid Unicode): stored, it made every listing, /train
    # and lease query that met it a 500
    lone = json.dumps({"client_id": "\ud800", "x": ["ok", {"\udfff": 1}]}).encode()
    for path in ("/activelearning/random", "/train/polyp_seg", "/scoring/polyp_al"):
        s, r = http("POST", f"{url}{path}", lone, {"Content-Type": "application/json"})
        assert s == 400 and "surrogate" in r["detail"], (path, s, r)
    s, r = put_image(url, "sur1", png_bytes(np.zeros((H, W, 3), np.uint8)), params={"comment": "\ud800"})
    assert s == 400, (s, r)
    form = urllib.parse.urlencode({"info": json.dumps({"note": "\udfff"})}).encode()
    s, r = http("PUT", f"{url}/datastore/image/info?image=fr009", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert s == 400, (s, r)
    assert http("GET", f"{url}/datastore/?output=all")[0] == 200 and http("GET", f"{url}/info/")[0] == 200


def test_a_body_dripping_in_is_cut_off(tmp_path):
    import socket

    studies = tmp_path / "studies"
    make_frames(studies, 2)
    srv = Server(studies, tmp_path, env={"POLYPAL_BODY_TIMEOUT": "2"}).start()
    try:
        port = int(srv.url.rsplit(":", 1)[1])

        def drip(head: bytes, first: bytes = b"") -> tuple[bytes, float]:
            """Send ``head`` and ``first``, then one byte a second (never a pause over 2 s, far below the
            rate) until an answer comes: (its first bytes, seconds after ``first``)."""
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(head + first)
                t0 = time.time()
                got = b""
                sock.settimeout(0.5)
                while time.time() - t0 < 20 and not got:
                    try:
                        sock.sendall(b" ")
                    except OSError:
                        break
                    try:
                        got = sock.recv(4096)
                    except socket.timeout:
                        time.sleep(0.5)
            return got, time.time() - t0

        got, took = drip(f"POST /activelearning/random HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                         f"application/json\r\nContent-Length: 100\r\n\r\n".encode())
        assert got.startswith(b"HTTP/1.1 408") and took < 10, (got[:200], took)
        # a fast burst first, then the drip: the rate counts over the last stretch of time only (the average
        # since the start let 3 MB then a byte a second pass for 300 s)
        got, took = drip(f"PUT /datastore/image?image=drip HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                         f"multipart/form-data; boundary=x\r\nContent-Length: {8 << 20}\r\n\r\n".encode(),
                         b"--x\r\n" + b" " * (3 << 20))
        assert got.startswith(b"HTTP/1.1 408") and took < 10, (got[:200], took)
        s, _ = http("GET", f"{srv.url}/info/")
        assert s == 200
    finally:
        srv.stop()


def test_the_body_rate_forgives_one_stall_but_not_a_drip_after_a_burst(monkeypatch):
    """The rate rule at the body's reader: a link at 5 x the rate that stalls for most of the allowed pause,
    again and again, keeps going (windows measured each on its own cut one that stalled just after a window
    began); a burst followed by a drip is cut within two pauses' time (an average from the start let 200 MB
    then a byte a minute hold the socket for 5.5 h)."""
    import asyncio
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "polyp_al"))
    try:
        from lib import security
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(security, "BODY_TIMEOUT", 1.0)
    rate = security.MIN_BODY_RATE

    def receiver(plan):
        steps = list(plan)

        async def receive():
            delay, n = steps.pop(0)
            await asyncio.sleep(delay)
            return {"type": "http.request", "body": b" " * n, "more_body": bool(steps)}
        return receive

    stalling = []
    for k in range(8):  # 5 x the rate in 0.05 s chunks, with a 0.9 s stall at a shifting place in every 2 s
        stalling += [(0.05, rate // 4)] * (12 + 3 * (k % 4)) + [(0.9, rate // 4)]
    spool, total = asyncio.run(security._spool_body(receiver(stalling)))
    spool.close()
    assert total == len(stalling) * (rate // 4)

    t0 = time.monotonic()
    with pytest.raises(security._Refused) as e:
        asyncio.run(security._spool_body(receiver([(0, 50 * rate)] + [(0.3, 1)] * 100)))
    assert e.value.status == 408 and time.monotonic() - t0 < 4, (e.value.detail, time.monotonic() - t0)
    # a chunk just inside every pause, at 0.38 of the rate: the window counts only chunks inside it (a
    # mark before it counted 3 pauses' worth, and 3.3 kB/s held a socket for good; a review)
    t0 = time.monotonic()
    with pytest.raises(security._Refused) as e:
        asyncio.run(security._spool_body(receiver([(0.95, rate * 36 // 100)] * 12)))
    assert e.value.status == 408 and time.monotonic() - t0 < 6, (e.value.detail, time.monotonic() - t0)


def test_a_frame_that_cannot_be_decoded_is_never_served(tmp_path):
    studies = tmp_path / "studies"
    make_frames(studies, 3)
    good = (studies / "fr000.png").read_bytes()
    (studies / "broken.png").write_bytes(good[: len(good) // 2])  # truncated: only a full decode finds it
    srv = Server(studies, tmp_path).start()
    try:
        served = []
        for k in range(4):  # no model, no thumbnails yet: the random fallback's batch holds every frame
            s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": f"c{k}"}).encode(),
                        {"Content-Type": "application/json"})
            assert s == 200, (s, r)
            served.append(r.get("id"))
        assert sorted(x for x in served if x) == ["fr000", "fr001", "fr002"] and "broken" not in served, served
        # the file replaced with a good one (an upload with replace): it is a frame like any other again
        s, r = put_image(srv.url, "broken", good, params={"replace": True})
        assert s == 200, (s, r)
        s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": "c9"}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 200 and r.get("id") == "broken", (s, r)
    finally:
        srv.stop()


def test_the_dicomweb_proxy_without_a_dicomweb_server_is_404(env):
    for path in ("/proxy/dicom/studies", "/proxy/dicom/wado?requestType=WADO", "/proxy/dicom/qido/studies"):
        s, r = http("GET", env["url"] + path)
        assert s == 404 and "no DICOMweb server" in r["detail"], (path, s, r)


def test_head_requests_are_answered(env):
    url = env["url"]
    for path in ("/datastore/image?image=fr000", "/info/"):
        req = urllib.request.Request(url + path, method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status in (200, 405), (path, status)  # answered (405 where MONAI Label has no HEAD route)


def test_result_files_of_a_request_are_tracked_when_inference_runs_in_a_thread_pool(tmp_path, monkeypatch):
    """With MONAI_LABEL_INFER_CONCURRENCY > 0 MONAI Label runs the infer task in a pool thread (a deep copy
    of the request): the result file it writes is still known to the request, so a failure after the
    writer can delete it. The app's infer module and a real smoke model; the pool is the one MONAI Label
    uses (concurrent.futures)."""
    import copy
    import importlib.util
    from concurrent.futures import ThreadPoolExecutor

    from polypal.learner import get_profile

    spec = importlib.util.spec_from_file_location(
        "polyp_al_infer_under_test", Path(__file__).resolve().parents[1] / "apps" / "polyp_al" / "lib" / "infer.py")
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    model = write_model(tmp_path / "model" / "polyp_seg-smoke.pt")
    frame = tmp_path / "f.png"
    Image.fromarray(synth_frame(np.random.default_rng(0), H, W)[0]).save(frame)
    task = infer.PolypSegInfer(str(model), get_profile("smoke"), {"polyp": 1})
    request = {"image": str(frame), "model": "polyp_seg"}
    with infer.written_results(request) as files, ThreadPoolExecutor(1) as pool:
        path, _ = pool.submit(task, copy.deepcopy(request)).result(timeout=120)
        other, _ = pool.submit(task, {"image": str(frame), "model": "polyp_seg"}).result(timeout=120)
    try:
        assert files == [path] and os.path.exists(path), (files, path)  # another request's file is not ours
    finally:
        for f in (path, other):
            os.unlink(f)
    # MONAI Label stopped waiting (its infer timeout): the request has ended when the pool thread writes,
    # so that file is deleted at once instead of being left in TMPDIR
    gate = threading.Event()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the writer's mkstemp: only this test's files
    monkeypatch.setattr(infer, "_results_dir", None)  # its result folder is made again, under scratch
    with ThreadPoolExecutor(1) as pool:
        pool.submit(gate.wait, 60)  # the pool's one thread is busy
        request = {"image": str(frame), "model": "polyp_seg"}
        with infer.written_results(request) as files:
            late = pool.submit(task, copy.deepcopy(request))
        gate.set()
        with pytest.raises(TimeoutError, match="request ended"):
            late.result(timeout=120)
    assert files == [] and [p for p in scratch.rglob("*") if not p.is_dir()] == []


class _StallingDICOMweb:
    """A DICOMweb stand-in on loopback (not our code): answers '[]' at once, except paths holding 'stall',
    which it holds until ``release`` is set (at most 120 s). Counts the stalled requests it has open.
    Paths holding 'big' answer 3 MB (with its length declared unless the path holds 'undeclared'), paths
    holding 'trickle' send a byte every 0.2 s for a minute."""

    def __init__(self):
        import http.server

        self.release, self.open, self.lock = threading.Event(), 0, threading.Lock()
        self.paths = []  # every path asked, with its query
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.paths.append(self.path)
                if "big" in self.path or "trickle" in self.path:
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "application/dicom+json")
                        if "big" in self.path and "undeclared" not in self.path:
                            self.send_header("Content-Length", str(3 << 20))
                        self.end_headers()
                        if "big" in self.path:
                            self.wfile.write(b" " * (3 << 20))
                        else:
                            for _ in range(300):
                                self.wfile.write(b" ")
                                self.wfile.flush()
                                time.sleep(0.2)
                    except OSError:  # the proxy gave up on it
                        pass
                    return
                if "stall" in self.path:
                    with outer.lock:
                        outer.open += 1
                    outer.release.wait(120)
                    with outer.lock:
                        outer.open -= 1
                body = b"[]"
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/dicom+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the proxy gave up on it (timeout)
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.httpd.shutdown()


def test_a_stalled_dicomweb_server_holds_neither_the_workers_nor_the_proxy_for_ever(tmp_path):
    """MONAI Label's proxy calls the DICOMweb server without a timeout, in a worker thread. A server that
    stops answering (or a client asking it for slow things 50 times) used to hold every worker thread: then
    next-sample, uploads and inference waited too. Now the proxy has its own few threads and a timeout."""
    pacs = _StallingDICOMweb()
    srv = Server(pacs.url, tmp_path, env={"POLYPAL_PROXY_TIMEOUT": "20", "POLYPAL_PROXY_THREADS": "4"}).start()
    try:
        answers = []

        def stalled(k):
            answers.append(http("GET", f"{srv.url}/proxy/dicom/wado/stall/{k}", timeout=180)[0])

        threads = [threading.Thread(target=stalled, args=(k,)) for k in range(48)]  # more than anyio's 40 threads
        for t in threads:
            t.start()
        srv.wait_for(lambda: pacs.open >= 4, timeout=30, what="the proxy's threads all waiting on the DICOMweb server")
        time.sleep(1)
        assert pacs.open == 4  # the others wait for a proxy thread, holding none
        # a request that needs a worker thread is answered while the DICOMweb server still holds the proxy
        t0 = time.monotonic()
        s, r = http("POST", f"{srv.url}/activelearning/random", b"{}", {"Content-Type": "application/json"}, timeout=60)
        took = time.monotonic() - t0
        assert s == 200 and pacs.open == 4 and not pacs.release.is_set(), (s, r, took)
        pacs.release.set()  # the DICOMweb server answers again: every queued proxy request is answered
        for t in threads:
            t.join(120)
        assert sorted(answers) == [200] * 48, answers
        # stalled for longer than the timeout: 504 naming the cause, and the thread is free again
        pacs.release.clear()
        t0 = time.monotonic()
        s, r = http("GET", f"{srv.url}/proxy/dicom/wado/stall/once", timeout=120)
        assert s == 504 and "did not answer within 20 s" in r["detail"] and time.monotonic() - t0 < 60, (s, r)
    finally:
        pacs.stop()
        srv.stop()


def test_the_proxy_holds_no_answer_past_its_size_or_time(tmp_path):
    """MONAI Label's proxy holds a whole answer in memory before relaying it: any user could ask a real PACS
    for a whole large study, several at once, and a server trickling bytes (the timeout is per read) held a
    proxy thread for ever (a review). Now an answer over POLYPAL_PROXY_MAX_MB is 502, one still coming after
    POLYPAL_PROXY_DEADLINE seconds 504; small answers pass."""
    pacs = _StallingDICOMweb()
    srv = Server(pacs.url, tmp_path, env={"POLYPAL_PROXY_MAX_MB": "1", "POLYPAL_PROXY_DEADLINE": "4"}).start()
    try:
        for path in ("big", "big-undeclared"):
            s, r = http("GET", f"{srv.url}/proxy/dicom/wado/{path}", timeout=60)
            assert s == 502 and "over 1 MB" in r["detail"] and "POLYPAL_PROXY_MAX_MB" in r["detail"], (path, s, r)
        t0 = time.monotonic()
        s, r = http("GET", f"{srv.url}/proxy/dicom/wado/trickle", timeout=60)
        assert s == 504 and "within 4 s" in r["detail"] and time.monotonic() - t0 < 20, (s, r)
        s, r = http("GET", f"{srv.url}/proxy/dicom/qido/studies", timeout=60)
        assert s == 200 and r == [], (s, r)
        # a QIDO search keeps its query (OHIF's study search listed every study); no other path does (Orthanc's
        # /dicom-web/servers?expand lists its remote servers' addresses and user names; a review)
        for path, sent in (("qido/studies?PatientName=A*&limit=101", "/studies?PatientName=A*&limit=101"),
                           ("qido/studies/1.2/series?Modality=ES", "/studies/1.2/series?Modality=ES"),
                           ("servers?expand", "/servers"), ("wado/studies/1.2/series/1.3/metadata?x=1",
                                                            "/studies/1.2/series/1.3/metadata"),
                           ("studies?expand", "/studies")):  # (not through qido/: no query)
            assert http("GET", f"{srv.url}/proxy/dicom/{path}", timeout=60)[0] == 200, path
            assert pacs.paths[-1] == "/dicom-web" + sent, (path, pacs.paths[-1])
    finally:
        pacs.stop()
        srv.stop()


def test_a_download_survives_its_file_being_moved_and_a_gone_file_is_404(tmp_path):
    """Frame and label downloads open the file when the answer is made (the app's FileResponse for MONAI
    Label's datastore endpoints): a delete or replace that moves it to the trash just after still sends the
    whole file (before: a 500, or headers then a cut body); a file already gone is a 404."""
    import asyncio
    import importlib.util

    from fastapi import HTTPException

    spec = importlib.util.spec_from_file_location(
        "polyp_al_downloads_under_test",
        Path(__file__).resolve().parents[1] / "apps" / "polyp_al" / "lib" / "downloads.py")
    downloads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(downloads)
    Held = downloads.held_file_response()
    f = tmp_path / "fr.png"
    data = os.urandom(200_000)
    f.write_bytes(data)
    resp = Held(str(f), media_type="image/png", filename="fr.png")
    os.replace(f, tmp_path / "trashed.png")  # the delete lands between the answer and its body
    sent = []

    async def send(m):
        sent.append(m)

    def scope(method="GET", **headers):
        return dict(type="http", method=method, asgi={"spec_version": "2.4"},
                    headers=[(k.lower().encode(), v.encode()) for k, v in headers.items()])

    asyncio.run(resp(scope(), None, send))
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 200 and int(headers[b"content-length"]) == len(data)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == data and sent[-1]["more_body"] is False
    with pytest.raises(HTTPException) as e:
        Held(str(f), media_type="image/png", filename="fr.png")
    assert e.value.status_code == 404
    # Range requests are honoured again (Starlette's FileResponse did; a resumed model download), from the
    # file as it was when the answer was made: here it is replaced by other bytes after the answer is made
    for rng, status, want in (("bytes=100-199", 206, data[100:200]), ("bytes=-50", 206, data[-50:]),
                              ("bytes=199990-", 206, data[199990:])):
        g, other = tmp_path / "g.png", tmp_path / "other.png"
        g.write_bytes(data)
        resp = Held(str(g), media_type="image/png", filename="g.png")
        other.write_bytes(b"x" * len(data))
        os.replace(other, g)  # a replace just after the answer was made: another file under that name
        sent.clear()
        asyncio.run(resp(scope(range=rng), None, send))
        assert sent[0]["status"] == status and b"".join(m.get("body", b"") for m in sent[1:]) == want, rng
        assert dict(sent[0]["headers"])[b"content-range"].startswith(b"bytes "), sent[0]["headers"]
    g = tmp_path / "g.png"
    g.write_bytes(data)
    sent.clear()
    asyncio.run(Held(str(g), media_type="image/png")(scope(range="bytes=300000-"), None, send))
    assert sent[0]["status"] == 416  # past the end
    sent.clear()
    asyncio.run(Held(str(g), media_type="image/png")(scope(range="bytes=0-9,20-29"), None, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[0]["status"] == 206 and data[0:10] in body and data[20:30] in body  # multipart/byteranges
    sent.clear()
    asyncio.run(Held(str(g), media_type="image/png")(scope("HEAD", range="bytes=0-9"), None, send))
    assert sent[0]["status"] == 206 and b"".join(m.get("body", b"") for m in sent[1:]) == b"" 


def test_training_reports_a_skipped_label_without_server_paths(tmp_path):
    """A label that does not fit its frame (put on disk by hand, or left by a race) is skipped by training;
    /info names the frame and the problem, not where the server keeps its files."""
    studies = tmp_path / "studies"
    masks = make_frames(studies, 4)
    (studies / "labels" / "final").mkdir(parents=True)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(studies / "labels" / "final" / "fr003.png")  # wrong size
    srv = Server(studies, tmp_path).start()
    try:
        for i in ("fr000", "fr001"):
            assert put_label(srv.url, i, png_bytes(masks[i].astype(np.uint8)))[0] == 200
        s, r = http("POST", f"{srv.url}/train/polyp_seg?run_sync=true", b"{}", {"Content-Type": "application/json"},
                    timeout=300)
        assert s == 200, (s, r)
        info = http("GET", f"{srv.url}/info/")[1]
        skipped = info["train_stats"]["polyp_seg"]["skipped"]
        assert list(skipped) == ["fr003"] and skipped["fr003"].startswith("label: "), skipped
        assert str(tmp_path) not in json.dumps(info), json.dumps(info)[:500]
    finally:
        srv.stop()


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _raw_put(port: int, target: str, headers: str, body_chunks=(), wait: float = 60):
    """(status, body) of a PUT sent by hand (a declared size, or a chunked body), read as soon as the
    server answers (it may answer before the body is sent); None when it has not answered within ``wait``
    seconds of the last byte sent (it is waiting for the body)."""
    import http.client
    import select
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n".encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:  # answered already
                break
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server answered and closed: read its answer
                break
        if not select.select([sock], [], [], wait)[0]:
            return None
        r = http.client.HTTPResponse(sock)
        r.begin()
        return r.status, r.read()


def _declared(port: int, target: str, size: int, wait: float = 60):
    return _raw_put(port, target, f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {size}\r\n",
                    wait=wait)


def test_uploads_cannot_fill_the_disk(tmp_path):
    """A body that would leave less than --conf min_free_mb free gets 507 and stores nothing: by its
    declared size (charged 3 times: the copies a body has on disk while it is handled), while a chunked
    body arrives, with bodies in flight counted together, and every write once the disk is under the
    floor; reads, deletes, small labels and the rest of the server go on."""
    import socket

    studies = tmp_path / "studies"
    masks = make_frames(studies, 3)
    mb = 1 << 20
    free_mb = min(shutil.disk_usage(p).free for p in (tmp_path, tempfile.gettempdir())) // mb
    if free_mb < 3072:
        pytest.skip(f"needs 3 GB free on the test disks, has {free_mb} MB")
    # 1000 MB of room; a pixel cap of 8192 x 8192, so that uploads may be up to 1 GiB (at 4096 x 4096: 284 MB)
    srv = Server(studies, tmp_path, conf={"min_free_mb": str(free_mb - 1000), "max_pixels": str(8192 * 8192)}).start()
    try:
        port = int(srv.url.rsplit(":", 1)[1])
        s, r = put_label(srv.url, "fr000", _png(masks["fr000"]))  # small: stored
        assert s == 200, r
        before = sorted(p.name for p in studies.iterdir())
        s, body = _declared(port, "/datastore/?image=big", 400 * mb)  # 400 MB fits once, not 3 times
        assert s == 507, body[:300]
        assert b"min_free_mb" in body and b"polypal-trash purge" in body and str(tmp_path).encode() not in body
        chunks = (b"\0" * mb for _ in range(600))  # 600 MB with no declared size: cut off on the way
        s, body = _raw_put(port, "/datastore/?image=big2", "Content-Type: multipart/form-data; boundary=x\r\n"
                                                            "Transfer-Encoding: chunked\r\n", chunks)
        assert s == 507, body[:300]
        assert sorted(p.name for p in studies.iterdir()) == before
        # bodies in flight count together: one that has brought 200 MB (charged 3 times, and spooled) and
        # pauses leaves no room for 150 MB more, while a client that declares a size and sends nothing
        # reserves nothing
        with socket.create_connection(("127.0.0.1", port), timeout=60) as idle:
            idle.sendall(f"PUT /datastore/?image=big3 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                         f"multipart/form-data; boundary=x\r\nContent-Length: {300 * mb}\r\n\r\n".encode())
            assert _declared(port, "/datastore/?image=big4", 300 * mb, wait=3) is None  # let in: waits
            with socket.create_connection(("127.0.0.1", port), timeout=60) as held:
                held.sendall(f"PUT /datastore/?image=big5 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                             f"multipart/form-data; boundary=x\r\nContent-Length: {300 * mb}\r\n\r\n".encode())
                held.sendall(b"\0" * (200 * mb))
                srv.wait_for(lambda: _declared(port, "/datastore/?image=big6", 150 * mb, wait=2) is not None,
                             timeout=20, what="an upload refused while another holds the room")
                s, body = _declared(port, "/datastore/?image=big6", 150 * mb)
                assert s == 507, body[:300]
        # both went away: the room is given back (a 300 MB upload is let in and waits for its body)
        srv.wait_for(lambda: _declared(port, "/datastore/?image=big7", 300 * mb, wait=2) is None, timeout=20,
                     what="the room of requests that went away given back")
        s, _ = http("GET", f"{srv.url}/datastore/label?label=fr000&tag=final")
        assert s == 200
    finally:
        srv.stop()
    full = tmp_path / "full"
    full.mkdir()
    model = write_model(full / "model" / "polyp_seg-smoke.pt")
    srv = Server(studies, full, conf={"min_free_mb": str(free_mb * 1000),  # the disk is "full"
                                      "allow_model_upload": "true"}).start()
    try:
        body, ct = multipart({}, {"file": ("m.pt", write_model(tmp_path / "good.pt").read_bytes())})
        s, r = http("PUT", f"{srv.url}/model/polyp_seg", body, {"Content-Type": ct})
        assert s == 507, r
        assert not list(model.parent.glob("*.replaced"))
        s, r = put_label(srv.url, "fr001", _png(masks["fr001"]))
        assert s == 507 and "min_free_mb" in r["detail"], r
        s, r = put_image(srv.url, "fr009", _png(np.zeros((H, W, 3), np.uint8)))
        assert s == 507, r
        s, r = http("POST", f"{srv.url}/train/polyp_seg", b"{}", {"Content-Type": "application/json"})
        assert s == 507, r
        s, r = http("GET", f"{srv.url}/datastore/dataset?output=dataset")  # the export writes a zip: refused
        assert s == 507, r
        assert sorted(p.name for p in studies.iterdir()) == before
        s, _ = http("GET", f"{srv.url}/datastore/label?label=fr001&tag=final")
        assert s == 404  # nothing stored
        for path in ("/info/", "/datastore/?output=all", "/datastore/label?label=fr000&tag=final"):
            s, _ = http("GET", srv.url + path)
            assert s == 200, path
        s, r = http("DELETE", f"{srv.url}/datastore/label?id=fr000&tag=final")  # moves to the trash: allowed
        assert s == 200, r
    finally:
        srv.stop()


# -- 14. found by a hostile-client probe (2026-12-06) ---------------------------------------------------
def _kept(studies: Path) -> set[str]:
    return {sha(p) for p in (studies / ".polypal" / "trash").rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_frame_and_label_files_without_a_row_are_never_overwritten_unseen(env):
    url, studies = env["url"], env["studies"]
    # a frame copied into the studies folder while the server runs (not registered until the next start)
    shutil.copyfile(studies / "fr000.png", studies / "late.png")
    late = sha(studies / "late.png")
    new = png_bytes(synth_frame(np.random.default_rng(21), H, W)[0])
    s, r = put_image(url, "late", new)
    assert s == 409 and "late.png" in r["detail"] and "replace" in r["detail"], (s, r)
    assert sha(studies / "late.png") == late
    s, r = put_image(url, "late", new, params={"replace": True})
    assert s == 200, r
    assert sha(studies / "late.png") != late and late in _kept(studies)
    # one id under two extensions: the registered frame and the unregistered file are both kept on replace
    s, r = put_image(url, "dupe", png_bytes(synth_frame(np.random.default_rng(22), H, W)[0]))
    assert s == 200, r
    registered = sha(studies / "dupe.png")
    Image.fromarray(synth_frame(np.random.default_rng(23), H, W)[0]).save(studies / "dupe.jpg")
    stray = sha(studies / "dupe.jpg")
    s, r = put_image(url, "dupe", jpg_bytes(synth_frame(np.random.default_rng(24), H, W)[0]), name="f.jpg",
                     params={"replace": True})
    assert s == 200, r
    assert {registered, stray} <= _kept(studies)
    # a label file on disk that no row points to is kept in the trash when a label is saved over it
    s, r = put_image(url, "strayl", png_bytes(synth_frame(np.random.default_rng(25), H, W)[0]))
    assert s == 200, r
    (studies / "labels" / "final").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(studies / "labels" / "final" / "strayl.png")
    before = sha(studies / "labels" / "final" / "strayl.png")
    s, r = put_label(url, "strayl", png_bytes(np.zeros((H, W), np.uint8)))
    assert s == 200, r
    assert before in _kept(studies) and stored_mask(studies, "strayl").sum() == 0


def test_an_image_id_never_reaches_a_file_in_the_servers_working_directory(env):
    url, base = env["url"], env["base"]  # the server runs in base (server_utils.Server's workdir)
    Image.fromarray(np.zeros((2 * H + 3, 2 * W + 5, 3), np.uint8)).save(base / "outside.png")
    s, r = put_image(url, "outside.png", png_bytes(synth_frame(np.random.default_rng(26), H, W)[0]))
    assert s == 200, r
    s, r = http("POST", f"{url}/infer/polyp_seg?image=outside.png&output=json", timeout=120)
    assert s == 200, r
    assert (r["width"], r["height"]) == (W, H), r  # the frame, not ./outside.png
    # a frame whose id names a folder in the working directory is served too
    s, r = put_image(url, "model", png_bytes(synth_frame(np.random.default_rng(27), H, W)[0]))
    assert s == 200, r
    s, r = http("POST", f"{url}/infer/polyp_seg?image=model&output=json", timeout=120)
    assert s == 200 and (r["width"], r["height"]) == (W, H), (s, r)


def test_long_file_names_and_bad_check_sums_get_400(env):
    url, studies = env["url"], env["studies"]
    name = "a" + ".b" * 122 + ".png"  # 249 characters: within 255, but MONAI Label's temp copy keeps the suffixes
    frame = png_bytes(synth_frame(np.random.default_rng(28), H, W)[0])
    s, r = put_image(url, "longname", frame, name=name)
    assert s == 400 and "first '.'" in r["detail"], (s, r)
    s, r = put_label(url, "fr009", png_bytes(np.zeros((H, W), np.uint8)), name=name)
    assert s == 400, (s, r)
    s, r = infer_upload(url, frame, name=name)
    assert s == 400, (s, r)
    s, r = put_image(url, "shortname", frame, name="frame.0001.2026.png")  # dots in a name stay fine
    assert s == 200, r
    for name in ("a." + "\u00e9" * 150 + ".jpg", "a." + "\U0001F600" * 65 + ".png"):  # bytes, not characters
        s, r = put_image(url, "longbytes", frame, name=name)
        assert s == 400, (s, r)
        s, r = infer_upload(url, frame, name=name)
        assert s == 400, (s, r)

    def head(q):
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{url}/datastore/image?{q}", method="HEAD"),
                                        timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    digest = sha(studies / "fr000.png")
    for bad in ("FOO:abc", ":", "a:b:c", "sha1:" + digest, "zz"):
        assert head(urllib.parse.urlencode({"image": "fr000", "check_sum": bad})) == 400, bad
    assert head(urllib.parse.urlencode({"image": "fr000", "check_sum": "SHA256:" + digest})) == 200
    assert head(urllib.parse.urlencode({"image": "fr000", "check_sum": digest})) == 200
    assert head(urllib.parse.urlencode({"image": "fr000", "check_sum": "SHA256:" + "0" * 64})) == 404


def test_exported_csv_cells_cannot_be_formulas(env):
    import csv
    import zipfile

    url, masks = env["url"], env["masks"]
    body, ct = multipart({"params": json.dumps({"client_id": "=HYPERLINK(\"http://evil.example\",\"x\")"})},
                         {"label": ("m.png", png_bytes(masks["fr010"].astype(np.uint8)))})
    s, r = http("PUT", f"{url}/datastore/label?image=fr010&tag=final", body, {"Content-Type": ct})
    assert s == 200, r
    buf = io.BytesIO()  # an image id is chosen by the client too, and may start with "-"
    Image.open(env["studies"] / "fr010.png").save(buf, format="PNG")
    assert put_image(url, "-1-1", buf.getvalue())[0] == 200
    assert put_label(url, "-1-1", png_bytes(masks["fr010"].astype(np.uint8)))[0] == 200
    s, data = http("GET", f"{url}/datastore/dataset")
    assert s == 200 and data[:2] == b"PK"
    z = zipfile.ZipFile(io.BytesIO(data))
    rows = {row["id"]: row for row in csv.DictReader(io.StringIO(z.read("manifest.csv").decode()))}
    assert rows["fr010"]["annotator"].startswith("'="), rows["fr010"]
    assert "'-1-1" in rows and "-1-1" not in rows, sorted(rows)
    frames = {f["id"]: f for f in json.loads(z.read("manifest.json"))["frames"]}
    assert frames["fr010"]["annotator"].startswith("=")  # the JSON keeps what was sent
    assert "-1-1" in frames


def test_a_final_label_ends_its_lease_and_other_tags_are_not_labels(env):
    url, masks = env["url"], env["masks"]

    def leases():
        return http("GET", f"{url}/info/")[1]["polyp_al"]["state"]["leases"]

    s, r = http("POST", f"{url}/activelearning/random", json.dumps({"strategy": "bvsb_ta_coreset"}).encode(),
                {"Content-Type": "application/json"})
    assert s == 400 and "differs" in r["detail"], (s, r)  # the path names the strategy, not the body
    s, r = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": "leasetest"}).encode(),
                {"Content-Type": "application/json"})
    assert s == 200 and r["id"], r
    frame, before = r["id"], leases()
    assert before >= 1
    def labels_by_leasetest():
        return (http("GET", f"{url}/info/")[1]["polyp_al"]["annotators"].get("leasetest") or {}).get("labels", 0)

    m = png_bytes(masks[frame].astype(np.uint8)) if frame in masks else png_bytes(np.zeros((H, W), np.uint8))
    s, r = put_label(url, frame, m, tag="original")  # a prediction-like tag: not a label, the lease stays
    assert s == 200 and "model_dice" not in r, r
    assert leases() == before and labels_by_leasetest() == 0
    s, r = put_label(url, frame, m)
    assert s == 200, r
    assert leases() == before - 1 and labels_by_leasetest() == 1


def _app_config():
    """The app's AppConfig class (apps/polyp_al/lib/config.py), imported the way MONAI Label loads the app."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "polyp_al"))
    try:
        from lib.config import AppConfig
    finally:
        sys.path.pop(0)
    return AppConfig


@pytest.mark.parametrize("value", ["-60", "0", "nan", "inf"])
def test_lease_timeout_must_be_a_positive_number_of_seconds(tmp_path, value):
    """A negative lease expired at once (two annotators got the same frame); nan never expired."""
    AppConfig = _app_config()
    (tmp_path / "studies").mkdir()
    with pytest.raises(ValueError, match="lease_timeout must be"):
        AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {"lease_timeout": value})
    assert AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {"lease_timeout": "90"}).lease_seconds == 90


@pytest.mark.parametrize("value", ["-0.1", "1", "nan", "inf", "x"])
def test_fit_floor_must_be_a_dice_under_one(tmp_path, value):
    """--conf fit_floor is a polyp Dice in [0, 1): 1 or more would retry every training, nan none."""
    AppConfig = _app_config()
    (tmp_path / "studies").mkdir()
    with pytest.raises(ValueError, match="fit_floor must be"):
        AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {"fit_floor": value})
    assert AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {}).profile.fit_floor == 0
    assert AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {"fit_floor": "0.55"}).profile.fit_floor == 0.55


def test_every_conf_key_the_app_reads_is_a_known_setting():
    """The start-up warning for an unknown --conf key reads lib/config.py's SETTINGS, a list kept by hand beside
    the reads: a key read in the app but missing there would be warned about as misspelt, and one listed but no
    longer read would pass silently."""
    import re
    import sys

    app = Path(__file__).resolve().parents[1] / "apps" / "polyp_al"
    sys.path.insert(0, str(app))
    try:
        from lib.config import SETTINGS
    finally:
        sys.path.pop(0)
    reads = re.compile(r"""conf\.get\(\s*["']([A-Za-z_]+)["']|\bnum\(\s*["']([A-Za-z_]+)["']""")
    read = set()
    for f in [app / "main.py", *sorted((app / "lib").glob("*.py"))]:
        if f.name != "auth.py":  # its conf is a realm's OpenID configuration, not --conf
            read |= {a or b for a, b in reads.findall(f.read_text())}
    assert len(read) >= 15, read  # the scan finds the reads
    assert read - set(SETTINGS) == set(), "read but not in SETTINGS"
    assert set(SETTINGS) - read == set(), "in SETTINGS but never read"


@pytest.mark.parametrize("value", ["nosuch", "MEAN", ""])
def test_aggregation_is_checked_at_start(tmp_path, value):
    """A wrong --conf aggregation started the server; then scoring failed after every training (one log line)
    and every model-based strategy served PCA-Coreset's frames, saying there was no model yet."""
    AppConfig = _app_config()
    (tmp_path / "studies").mkdir()
    with pytest.raises(ValueError, match="aggregation must be one of mean, topk, region"):
        AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {"aggregation": value})
    assert AppConfig.from_conf(str(tmp_path), str(tmp_path / "studies"), {"aggregation": "topk"}).aggregation == "topk"


def test_a_start_that_cannot_be_is_said_in_one_line_and_a_misspelt_key_is_named(tmp_path):
    """A wrong --conf value or a damaged datastore database stopped the start with a 90-line traceback before
    the one line that said why; a misspelt key (batchsize) was ignored without a word (a walkthrough)."""
    studies = tmp_path / "studies"
    make_frames(studies, 2)
    for conf, why in (({"aggregation": "median"}, "--conf aggregation must be one of mean, topk, region"),
                      ({"batch_size": "abc"}, "--conf batch_size must be a whole number, got 'abc'"),
                      ({"profile": "gpu"}, "--conf profile: unknown profile 'gpu'")):
        srv = Server(studies, tmp_path, conf=conf)
        with pytest.raises(RuntimeError, match="server exited") as e:
            srv.start()
        log = srv.log.read_text()
        assert f"polyp-al cannot start: {why}" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    db = studies / ".polypal" / "datastore.sqlite"
    db.parent.mkdir(exist_ok=True)
    db.write_bytes(b"this is not a database" * 300)
    srv = Server(studies, tmp_path)
    with pytest.raises(RuntimeError, match="server exited"):
        srv.start()
    log = srv.log.read_text()
    assert f"polyp-al cannot start: {db}: cannot be used" in log and "Traceback" not in log, log[-3000:]
    db.unlink()
    srv = Server(studies, tmp_path, conf={"batchsize": "10"}).start()
    try:
        assert "--conf batchsize is not a polyp-al setting and is ignored: did you mean batch_size?" in \
            srv.log.read_text()
    finally:
        srv.stop()


def test_a_form_with_more_parts_than_its_route_reads_is_refused(env):
    """The Gate parsed an upload's form with Starlette's defaults (1000 files, each under 1 MB kept in memory):
    280 file parts of 1 MB were held whole while checked, and again by FastAPI, which used the last one (a
    review, 2026-12-07). A form may now carry 2 files and 4 other fields, as MONAI Label's routes read."""
    url = env["url"]
    frame = png_bytes(np.zeros((H, W, 3), np.uint8))

    def form(files: int, fields: int = 1) -> tuple[bytes, str]:
        b = "----polypal" + os.urandom(6).hex()
        parts = [f'--{b}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n'.encode()] * fields
        parts += [f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="f.png"\r\n'
                  f"Content-Type: image/png\r\n\r\n".encode() + frame + b"\r\n"] * files
        return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"

    for files, fields, route in ((3, 1, "/datastore/?image=manyparts"), (50, 1, "/datastore/?image=manyparts"),
                                 (1, 5, "/datastore/?image=manyparts"), (3, 1, "/infer/polyp_seg?output=json")):
        body, ct = form(files, fields)
        s, r = http("PUT" if route.startswith("/datastore") else "POST", url + route, body, {"Content-Type": ct})
        assert s == 400 and "too many parts" in r["detail"], (files, fields, route, s, r)
    assert http("GET", f"{url}/datastore/image?image=manyparts")[0] == 404
    body, ct = form(1, 1)  # the form a client sends: stored
    assert http("PUT", f"{url}/datastore/?image=manyparts", body, {"Content-Type": ct})[0] == 200
    assert http("DELETE", f"{url}/datastore/?id=manyparts")[0] == 200  # the module's frames as they were


def test_logs_are_plain_text_and_export_limits_are_checked(env):
    url = env["url"]
    for q in ("", "?lines=5", "?lines=5&text=false&html=true"):
        req = urllib.request.Request(f"{url}/logs/{q}")
        with urllib.request.urlopen(req, timeout=30) as resp:  # MONAI Label's HTML viewer pulls CDN scripts
            assert resp.headers["content-type"].startswith("text/plain"), (q, resp.headers["content-type"])
            assert b"<script" not in resp.read()
    for bad in ("-1", "0", "x"):
        s, r = http("GET", f"{url}/datastore/dataset?limit_cases={bad}")
        assert s == 400 and "limit_cases" in r["detail"], (bad, s, r)
    s, body = http("GET", f"{url}/datastore/dataset?limit_cases=2")
    assert s == 200 and body[:2] == b"PK"


def test_a_training_that_fails_says_so_and_keeps_no_broken_model(tmp_path):
    """Every label unreadable: 422 naming them, /info FAILED with the reasons. A save that fails (here the
    checkpoint's temporary path is taken by a folder): /info FAILED with the error, not RUNNING for ever,
    and no model is published."""
    studies = tmp_path / "studies"
    masks = make_frames(studies, 3)
    (studies / "labels" / "final").mkdir(parents=True)
    for i in ("fr000", "fr001"):  # wrong size, put there by hand
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(studies / "labels" / "final" / f"{i}.png")
    srv = Server(studies, tmp_path).start()
    try:
        train = lambda: http("POST", f"{srv.url}/train/polyp_seg?run_sync=true", b"{}",  # noqa: E731
                             {"Content-Type": "application/json"}, timeout=300)
        s, r = train()
        assert s == 422 and "no labeled frame could be read" in r["detail"] and "fr000" in r["detail"], (s, r)
        st = http("GET", f"{srv.url}/info/")[1]["train_stats"]["polyp_seg"]
        assert st["status"] == "FAILED" and set(st["skipped"]) == {"fr000", "fr001"}, st
        for i in ("fr000", "fr001"):
            assert put_label(srv.url, i, png_bytes(masks[i].astype(np.uint8)))[0] == 200
        model = Path(srv.conf["model_dir"]) / "polyp_seg-smoke.pt"
        (Path(str(model) + ".tmp")).mkdir(parents=True)
        s, r = train()
        assert s >= 500 or s == 422, (s, r)
        st = http("GET", f"{srv.url}/info/")[1]["train_stats"]["polyp_seg"]
        assert st["status"] == "FAILED" and "Error" in st["error"] and st["model_number"] == 0, st
        assert not model.exists()
    finally:
        srv.stop()


def test_odd_client_ids_digits_long_names_and_path_listings(env):
    """Found by a hostile probe (2026-12-06): a 24-digit integer client id (SQLite cannot hold it), a
    limit_cases of non-ASCII digits ("²".isdigit() is True) and a 128-character tag on a 120-character id
    (the label's name in the trash went over 255 bytes: its saves, deletes and the frame's delete all gave
    500) each answered 500; GET /datastore/?output=train listed every labeled file's absolute path."""
    url, studies, masks = env["url"], env["studies"], env["masks"]
    for cid in (10 ** 23, -(10 ** 23)):
        s, r = http("POST", f"{url}/activelearning/random", json.dumps({"client_id": cid}).encode(),
                    {"Content-Type": "application/json"})
        assert s == 200, (s, r)
    for v in ("%C2%B2", "%E2%91%A0", "1" * 5000):  # int() refuses more than 4300 digits
        s, r = http("GET", f"{url}/datastore/dataset?limit_cases={v}")
        assert s == 400 and "limit_cases" in r["detail"], (s, r)
    s, r = http("GET", f"{url}/datastore/?output=train")
    assert s == 403 and "output=all" in r["detail"], (s, r)
    assert str(studies) not in json.dumps(r)
    s, r = http("GET", f"{url}/datastore/?output=all")
    assert s == 200 and str(studies) not in json.dumps(r)

    long_id, long_tag = "a" * 120, "b" * 128
    frame = Image.open(studies / "fr011.png")
    buf = io.BytesIO()
    frame.save(buf, format="PNG")
    s, r = put_image(url, long_id, buf.getvalue())
    assert s == 200, r
    m = png_bytes(masks["fr011"].astype(np.uint8))
    for k in range(2):  # the second save (another mask: the same one again changes nothing) trashes the first
        s, r = put_label(url, long_id, png_bytes((~masks["fr011"]).astype(np.uint8)) if k else m, tag=long_tag)
        assert s == 200, r
    s, r = http("DELETE", f"{url}/datastore/label?id={long_id}&tag={long_tag}")
    assert s == 200, (s, r)
    s, r = put_label(url, long_id, m, tag=long_tag)
    assert s == 200, r
    # a second tag that is the first one's digest: its name in the trash must still differ
    import hashlib as _h
    digest_tag = _h.sha256(long_tag.encode()).hexdigest()[:32]
    s, r = put_label(url, long_id, m, tag=digest_tag)
    assert s == 200, r
    s, r = http("DELETE", f"{url}/datastore/?id={long_id}")
    assert s == 200, (s, r)
    assert not (studies / f"{long_id}.png").exists()
    assert not list((studies / "labels").rglob(f"{long_id}.*"))  # both labels went to the trash
    assert put_image(url, long_id, buf.getvalue())[0] == 200  # the id again: a new frame, without labels
    s, r = http("GET", f"{url}/datastore/?output=all")
    assert s == 200 and not r["objects"][long_id].get("labels"), r["objects"][long_id]
    assert http("DELETE", f"{url}/datastore/?id={long_id}")[0] == 200
    kept = [p for p in (studies / ".polypal" / "trash").rglob("*") if p.is_file() and p.name != "manifest.json"
            and long_id in p.name]
    assert len(kept) >= 6, kept  # replaced/removed labels, the last two labels and the frame (twice): kept
    assert all(len(p.name.encode()) <= 255 for p in kept)


def test_one_address_cannot_hold_every_upload_with_authentication_off(env):
    """With authentication off nothing capped one client's requests with a body: its slow uploads could hold
    the disk floor while every annotator's save got 507. Now at most POLYPAL_UPLOADS_PER_CLIENT (16) per client
    address; another address (X-Forwarded-For from 127.0.0.1, which uvicorn trusts, as a local proxy sends it)
    is not held up, and the slots come back when the uploads end."""
    import socket

    url, masks = env["url"], env["masks"]
    port = int(url.rsplit(":", 1)[1])
    held = []

    def save(headers=None):
        body, ct = multipart({"params": "{}"}, {"label": ("m.png", png_bytes(masks["fr004"]))})
        return http("PUT", f"{url}/datastore/label?image=fr004&tag=final", body,
                    {"Content-Type": ct, **(headers or {})})

    try:
        for _ in range(16):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(f"PUT /datastore/label?image=fr003&tag=final HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n".encode()
                      + b"x" * 1000)
            held.append(c)
        time.sleep(1)
        s, r = save()
        assert s == 429 and "from this address" in r["detail"], (s, r)
        s, r = save({"X-Forwarded-For": "10.1.2.3"})
        assert s == 200, (s, r)
        assert http("GET", f"{url}/info/")[0] == 200  # (requests without a body are not counted)
    finally:
        for c in held:
            c.close()
    deadline = time.time() + 20
    while (s := save()[0]) == 429 and time.time() < deadline:
        time.sleep(0.5)
    assert s == 200, s


def test_a_delete_body_an_infer_timeout_and_a_wrong_method_are_refused_plainly(env):
    """From a hostile probe (2026-12-07): a DELETE's body was spooled to disk up to 1 GiB and not charged
    against the disk floor (400 MB went 150 MB past it), the infer param ``timeout`` (MONAI Label's wait for
    a pooled inference) of 0 gave a 500 and left the inference queued past the cap, and a PUT on /infer/ was
    told to "send an image id" instead of 405."""
    import socket

    url = env["url"]
    port = int(url.rsplit(":", 1)[1])
    for target in ("/info/", "/datastore/?id=fr005", "/datastore/label?id=fr005&tag=final"):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(f"DELETE {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {100 << 20}\r\n\r\n"
                      .encode())
            head = c.recv(300).decode(errors="replace")  # answered before any of the body is sent
        assert head.startswith("HTTP/1.1 413"), (target, head)
    assert (env["studies"] / "fr005.png").exists()
    body, ct = multipart({"params": json.dumps({"timeout": 0})}, {})
    s, r = http("POST", f"{url}/infer/polyp_seg?image=fr002&output=json", body, {"Content-Type": ct})
    assert s == 400 and "timeout" in r["detail"], (s, r)
    for method in ("PUT", "DELETE", "PATCH"):
        s, _ = http(method, f"{url}/infer/polyp_seg", body, {"Content-Type": ct})
        assert s == 405, (method, s)


def test_clients_at_the_cap_one_request_at_a_time_are_never_refused(env):
    """A request's slot of the per-address cap came back only after its thread's clean-up, after the answer
    had reached the client: 16 clients each sending their next request as soon as an answer came got 429s (a
    probe: 34 of 240) though never more than 16 were in flight. It comes back with the answer's last byte."""
    import threading
    from collections import Counter

    url, masks = env["url"], env["masks"]
    assert put_label(url, "fr006", png_bytes(masks["fr006"]))[0] == 200
    seen, lock = Counter(), threading.Lock()

    def one_after_another(k):
        for i in range(10):
            body = urllib.parse.urlencode({"info": json.dumps({"n": i, "k": k})}).encode()
            s, _ = http("PUT", f"{url}/datastore/label/info?label=fr006&tag=final", body,
                        {"Content-Type": "application/x-www-form-urlencoded"})
            with lock:
                seen[s] += 1

    threads = [threading.Thread(target=one_after_another, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {200: 160}, seen


def test_downloads_honour_range_requests_again(env):
    """Frame, label and model downloads go through the app's held-file response, which sent the whole file
    whatever the Range (Starlette's own honoured it: a resumed model download)."""
    url = env["url"]
    whole = (env["studies"] / "fr002.png").read_bytes()
    s, part = http("GET", f"{url}/datastore/image?image=fr002", headers={"Range": "bytes=8-23"})
    assert s == 206 and part == whole[8:24], s
    model = env["model"].read_bytes()
    s, part = http("GET", f"{url}/model/polyp_seg", headers={"Range": f"bytes={len(model) - 100}-"})
    assert s == 206 and part == model[-100:], s
    # not the export: a new zip at every request, so a resumed download would splice two of them
    assert put_label(url, "fr002", png_bytes(env["masks"]["fr002"]))[0] == 200
    s, zipped = http("GET", f"{url}/datastore/dataset", headers={"Range": "bytes=0-99"}, timeout=120)
    assert s == 200 and isinstance(zipped, bytes) and len(zipped) > 100 and zipped[:2] == b"PK", s


def test_a_label_downloaded_while_its_frame_is_replaced_is_never_a_false_409(env):
    """A replace puts the new frame file in place inside its transaction: a download reading the committed
    rows saw the old label beside the new picture and answered 409 "changed on disk ... moved to the trash at
    the next start" (a probe: 63 of 2873 downloads). It is judged again once the write is over: the old
    label (200) or none (404)."""
    import threading

    url, masks = env["url"], env["masks"]
    frames = [png_bytes(np.full((H, W, 3), v, np.uint8)) for v in (40, 200)]
    assert put_image(url, "race7", frames[0])[0] == 200
    stop, seen, lock = threading.Event(), {}, threading.Lock()

    def replace():
        k = 0
        while not stop.is_set():
            k += 1
            put_image(url, "race7", frames[k % 2], params={"replace": True})
            put_label(url, "race7", png_bytes(masks["fr001"]))

    def download():
        while not stop.is_set():
            s, r = http("GET", f"{url}/datastore/label?label=race7&tag=final")
            with lock:
                seen.setdefault(s, r)
                seen[f"n{s}"] = seen.get(f"n{s}", 0) + 1

    threads = [threading.Thread(target=replace)] + [threading.Thread(target=download) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join()
    assert seen.get("n200", 0) > 20, seen.keys()
    assert set(k for k in seen if isinstance(k, int)) <= {200, 404}, {k: v for k, v in seen.items() if k == 409}
