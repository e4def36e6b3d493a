"""The datastore across crashes and races: a frame replace killed half-way, an export racing replaces, a
label save racing a delete, uploads stranded by a crash. Real files, real SQLite, a real SIGKILL."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypal.serving.framestore import REPLACE_JOURNAL, FrameStore

REPO = Path(__file__).resolve().parents[1]

# a replace in its own process, killed with SIGKILL just before its Nth os.replace (1: moving the old frame,
# 2: moving its label, 3: the upload becoming the frame) or, with "settle", just before the journal goes
KILLED_REPLACE = """
import os, signal, sys
sys.path.insert(0, {lib!r})
from polypal.serving import framestore
from polypal.serving.framestore import FrameStore
at = {at!r}
calls, uploaded = [0], [False]
real_replace, real_unlink = os.replace, os.unlink

def replace(src, dst, **kw):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    out = real_replace(src, dst, **kw)
    uploaded[0] = uploaded[0] or os.path.basename(str(src)).startswith(".upload-")
    return out

def unlink(p, **kw):
    if at == "settle" and str(p).endswith(framestore.REPLACE_JOURNAL):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_unlink(p, **kw)

real_fsync_dir = framestore._fsync_dir

def fsync_dir(p):
    if at == "renamed" and os.path.realpath(p) == store.root and uploaded[0]:  # the upload is in place
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync_dir(p)

store = FrameStore({root!r}, read_only=True)  # as the server, which reconciled at its start
framestore.os.replace, framestore.os.unlink, framestore._fsync_dir = replace, unlink, fsync_dir
store.add_image("x", {new!r}, {{"note": "new"}}, replace=True)
print("not killed")
"""


def _frame(tmp_path, name, value, size=(24, 32)):
    p = tmp_path / name
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(p)
    return p


def _setup(tmp_path, new_ext=".jpg"):
    root = tmp_path / "studies"
    root.mkdir()
    old = _frame(root, "x.png", 10)
    old_bytes = old.read_bytes()
    store = FrameStore(root)
    m = tmp_path / "m.png"
    Image.fromarray(np.eye(24, 32, dtype=np.uint8)).save(m)
    store.save_label("x", str(m), "final", {"by": "annotator"})
    label_bytes = Path(store.label_path("x", "final")).read_bytes()
    new = _frame(tmp_path, "up" + new_ext, 200)  # .jpg: the old x.png must not linger beside it
    return root, old_bytes, label_bytes, new


def _kill_replace(root, new, at):
    code = KILLED_REPLACE.format(lib=str(REPO / "lib"), at=at, root=str(root), new=str(new))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _journals(root):
    return list((root / ".polypal" / "trash").glob(f"*/{REPLACE_JOURNAL}"))


@pytest.mark.parametrize("at", [1, 2, 3, "renamed", "settle"])
def test_a_replace_killed_half_way_is_finished_at_the_next_start(tmp_path, at):
    """kill -9 during PUT /datastore/?image=x with replace: before, a kill between moving the old frame and
    its label to the trash and renaming the upload into place made x and its acknowledged label vanish from
    the datastore at the next start (the row dropped as missing, the upload stranded as .upload-*). The
    upload was whole on disk, so the next start finishes the replace: the new frame, no old label on it,
    the old frame and label in the trash."""
    root, old_bytes, label_bytes, new = _setup(tmp_path)
    r = _kill_replace(root, new, at)
    assert r.returncode == -9, (r.stdout, r.stderr)
    store = FrameStore(root)  # the next start
    assert store.image_ids() == ["x"] and store.image_ext("x") == ".jpg"
    assert Path(store.image_path("x")).read_bytes() == new.read_bytes()
    assert store.labels_of("x") == {} and store.image_info("x").get("note") == "new"
    assert not (root / "x.png").exists() and not list(root.glob(".upload-*")) and not _journals(root)
    kept = [d for d in (root / ".polypal" / "trash").iterdir()]
    assert len(kept) == 1
    assert (kept[0] / "x.png").read_bytes() == old_bytes
    assert (kept[0] / "labels-final-x.png").read_bytes() == label_bytes
    assert json.loads((kept[0] / "manifest.json").read_text())["files"] == {"x.png": "x.png",
                                                                           "labels-final-x.png": "labels/final/x.png"}
    assert store.recovered == ([] if at == "settle" else ["x"])  # a committed replace changed nothing more
    assert not store._conn().execute("SELECT * FROM meta WHERE key LIKE 'replace:%'").fetchall()


def test_a_replace_killed_whose_upload_is_gone_is_undone(tmp_path):
    """The same crash after the old files moved, with the upload no longer there (e.g. deleted by hand):
    nothing can finish the replace, so the old frame and its label go back where they were."""
    root, old_bytes, label_bytes, new = _setup(tmp_path)
    assert _kill_replace(root, new, 3).returncode == -9
    for p in root.glob(".upload-*"):
        p.unlink()
    store = FrameStore(root)
    assert store.image_ext("x") == ".png" and (root / "x.png").read_bytes() == old_bytes
    assert Path(store.label_path("x", "final")).read_bytes() == label_bytes
    assert store.label_info("x", "final").get("by") == "annotator"
    assert not _journals(root) and not list((root / ".polypal" / "trash").iterdir())


@pytest.mark.parametrize("upload", ["here", "gone"])
def test_a_replace_journal_of_an_earlier_version_is_settled(tmp_path, upload):
    """A replace killed under a version whose journal had no record of the rows ("before": 2026-12-06 before
    22:20; found by an upgrade probe): it was never settled (every start logged "could not settle ... 'before'"
    and kept the frame's rows without its files; exports refused; polypal-trash restore refused while the
    journal was there; after an hour the upload was deleted). Now it is settled as that version did: finished
    when the upload is there, else undone."""
    from polypal.serving.fileops import file_signature

    root, old_bytes, label_bytes, new = _setup(tmp_path)
    assert _kill_replace(root, new, 3).returncode == -9  # old frame and label moved, upload not yet renamed
    (journal,) = _journals(root)
    intent = json.loads(journal.read_text())
    (up,) = root.glob(".upload-*")
    legacy = {"id": intent["id"], "ext": intent["ext"], "upload": intent["upload"], "signature": file_signature(up),
              "info": intent["info"], "files": intent["files"]}  # that version's journal
    journal.write_text(json.dumps(legacy))
    if upload == "gone":
        up.unlink()
    store = FrameStore(root)
    assert not _journals(root) and store.recovered == ["x"]
    if upload == "here":
        assert store.image_ext("x") == ".jpg" and Path(store.image_path("x")).read_bytes() == new.read_bytes()
        assert store.labels_of("x") == {} and not (root / "x.png").exists()
        (kept,) = list((root / ".polypal" / "trash").iterdir())
        assert (kept / "x.png").read_bytes() == old_bytes and (kept / "labels-final-x.png").read_bytes() == label_bytes
    else:
        assert store.image_ext("x") == ".png" and (root / "x.png").read_bytes() == old_bytes
        assert Path(store.label_path("x", "final")).read_bytes() == label_bytes
        assert not list((root / ".polypal" / "trash").iterdir())


def test_a_legacy_replace_journal_left_while_the_id_was_written_again_keeps_its_labels_off_the_new_frame(tmp_path):
    """The same legacy journal, its upload gone, found only after a version that did not settle it ran a
    committed replace of the id (another picture at x.png, the old label's row gone). A review: the undo put
    the old label back, and the next start attached it to that other picture. Now the journal is stale: its
    folder stays as trash, x keeps its own picture and no label."""
    from polypal.serving.fileops import file_signature

    root, old_bytes, label_bytes, new = _setup(tmp_path, new_ext=".png")
    assert _kill_replace(root, new, 3).returncode == -9
    (journal,) = _journals(root)
    intent = json.loads(journal.read_text())
    (up,) = root.glob(".upload-*")
    journal.write_text(json.dumps({"id": "x", "ext": intent["ext"], "upload": intent["upload"],
                                   "signature": file_signature(up), "info": intent["info"], "files": intent["files"]}))
    up.unlink()
    # what the version in between left: a third picture committed as x, the old label's row gone
    third = _frame(tmp_path, "third.png", 90)
    shutil.copy(third, root / "x.png")
    import sqlite3

    db = sqlite3.connect(root / ".polypal" / "datastore.sqlite")
    with db:
        db.execute("DELETE FROM labels WHERE image_id='x'")
        db.execute("UPDATE images SET info='{}' WHERE id='x'")
    db.close()
    store = FrameStore(root)
    assert store.image_ext("x") == ".png" and (root / "x.png").read_bytes() == third.read_bytes()
    assert store.labels_of("x") == {} and not (root / "labels" / "final" / "x.png").exists()
    (kept,) = list((root / ".polypal" / "trash").iterdir())
    assert (kept / "labels-final-x.png").read_bytes() == label_bytes and not _journals(root)


def test_a_replace_that_fails_is_undone_at_once(tmp_path, monkeypatch):
    """An error (not a crash) after the old files moved: the files go back before the transaction rolls back,
    and no journal or trash folder is left."""
    from polypal.serving import framestore

    root, old_bytes, label_bytes, new = _setup(tmp_path)
    store = FrameStore(root)
    real = os.replace

    def failing(src, dst, **kw):
        if str(dst).endswith("x.jpg"):
            raise OSError(28, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(framestore.os, "replace", failing)
    with pytest.raises(OSError):
        store.add_image("x", str(new), replace=True)
    monkeypatch.setattr(framestore.os, "replace", real)
    assert (root / "x.png").read_bytes() == old_bytes and Path(store.label_path("x", "final")).read_bytes() == label_bytes
    assert not list(root.glob(".upload-*")) and not list((root / ".polypal" / "trash").iterdir())
    assert list(FrameStore(root).labels_of("x")) == ["final"]


def test_an_interrupted_replace_is_not_restored_by_hand(tmp_path):
    """polypal-trash restore refuses a trash folder whose replace is unfinished (the next start settles it)."""
    from polypal.serving.trash import restore

    root, _, _, new = _setup(tmp_path)
    assert _kill_replace(root, new, 3).returncode == -9
    folder = _journals(root)[0].parent
    with pytest.raises(ValueError, match="crash interrupted"):
        restore(root, folder.name)


def test_uploads_stranded_by_a_crash_are_cleaned_up_after_an_hour(tmp_path):
    """Frame uploads cut off by a crash left hidden .upload-* files in the studies folder for ever (those in
    the label folders were already removed after an hour)."""
    root = tmp_path / "studies"
    root.mkdir()
    _frame(root, "a.png", 5)
    stale, fresh = root / ".upload-stale", root / ".upload-fresh"
    stale.write_bytes(b"x" * 1000)
    fresh.write_bytes(b"y" * 1000)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    FrameStore(root)
    assert not stale.exists() and fresh.exists()  # a fresh one may be an upload in flight


def test_an_export_racing_replaces_pairs_each_frame_with_its_own_label(tmp_path):
    """Frame x replaced over and over (two versions, each then labelled with its own mask) while the labeled
    set is exported: every exported pair must match, and no export may fail. Before, the export read the
    label, then copied the frame file, which a replace could swap in between (a frame with the mask of the
    frame it replaced), or found no file mid-replace (a 500)."""
    from polypal.serving.export import export_labeled

    root = tmp_path / "studies"
    root.mkdir()
    versions = []
    for k in range(2):
        f = _frame(tmp_path, f"v{k}.png", 40 + 150 * k)
        m = np.zeros((24, 32), np.uint8)
        m[: 6 + 10 * k] = 1  # version k's mask: 6 or 16 rows
        Image.fromarray(m).save(tmp_path / f"m{k}.png")
        versions.append((f, tmp_path / f"m{k}.png", int(m.sum())))
    _frame(root, "x.png", 40)
    store = FrameStore(root)
    store.save_label("x", str(versions[0][1]), "final")
    stop, errors = threading.Event(), []

    def replacer():
        k = 0
        try:
            while not stop.is_set():
                k ^= 1
                FrameStore(root, read_only=True).add_image("x", str(versions[k][0]), replace=True)
                FrameStore(root, read_only=True).save_label("x", str(versions[k][1]), "final")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=replacer)
    t.start()
    exported, n = 0, 0
    try:
        t0 = time.time()
        while time.time() - t0 < 6:
            n += 1
            rows = export_labeled(root, tmp_path / f"out{n}")
            for r in rows:
                value = int(np.asarray(Image.open(tmp_path / f"out{n}" / r["image"]))[0, 0, 0])
                expected = [p for (f, _, p), v in zip(versions, (40, 190)) if v == value]
                assert expected == [r["polyp_pixels"]], (value, r)
                exported += 1
    finally:
        stop.set()
        t.join()
    assert not errors and exported > 10, (errors, exported, n)


def test_a_label_racing_the_delete_of_its_frame_is_404_or_409_not_unusable(tmp_path):
    """PUT /datastore/label and DELETE /datastore/?id= of the same frame at once, through the real server:
    the label answer was 422 "frame ... is unusable: file not found", logged as an ERROR about a frame that
    was only deleted (13 of 25 tries). Now 200 (the label came first, and went to the trash with its frame),
    404 or 409; a deleted frame keeps no label."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(REPO / "tests"))
    from server_utils import Server, http, multipart

    studies = tmp_path / "studies"
    studies.mkdir()
    n = 24
    for i in range(n):
        _frame(studies, f"r{i}.png", 3 * i, size=(240, 320))  # big enough that reading it takes a moment
    buf = io.BytesIO()
    Image.fromarray(np.eye(240, 320, dtype=np.uint8)).save(buf, format="PNG")
    srv = Server(studies, tmp_path).start()
    seen = []
    try:
        with ThreadPoolExecutor(2) as pool:
            for i in range(n):
                body, ct = multipart({"params": "{}"}, {"label": (f"r{i}.png", buf.getvalue())})
                put = pool.submit(http, "PUT", f"{srv.url}/datastore/label?image=r{i}&tag=final", body,
                                  {"Content-Type": ct})
                time.sleep(0.002 * (i % 8))
                dele = pool.submit(http, "DELETE", f"{srv.url}/datastore/?id=r{i}")
                (p_st, p_body), (d_st, _) = put.result(), dele.result()
                seen.append((p_st, d_st) if p_st in (200, 404, 409) else (p_st, d_st, p_body))
        st, listing = http("GET", f"{srv.url}/datastore/?output=all")
        log = srv.tail(400)
    finally:
        srv.stop()
    assert all(s[1] == 200 for s in seen), seen
    assert {s[0] for s in seen} <= {200, 404, 409}, seen
    assert st == 200 and not any(k.startswith("r") for k in listing["objects"]), listing
    assert not list((studies / "labels" / "final").glob("r*")) and "is unusable" not in log


def test_a_same_name_replace_killed_after_the_upload_landed_is_finished_in_a_copied_folder(tmp_path):
    """x.png replaced by another x.png, killed once the upload is in place, then the folder copied (a backup
    restored: every inode changes). The first journal told the upload by its inode, so the copy was 'undone':
    the old frame's label went back onto the new picture. Now the old frame's place in the trash says it."""
    import shutil

    root, _, label_bytes, new = _setup(tmp_path, new_ext=".png")
    assert _kill_replace(root, new, "renamed").returncode == -9
    copy = tmp_path / "restored"
    shutil.copytree(root, copy, symlinks=True)
    store = FrameStore(copy)
    assert store.image_ext("x") == ".png" and (copy / "x.png").read_bytes() == new.read_bytes()
    assert store.labels_of("x") == {} and not (copy / "labels" / "final" / "x.png").exists()
    [kept] = list((copy / ".polypal" / "trash").iterdir())
    assert (kept / "labels-final-x.png").read_bytes() == label_bytes and not _journals(copy)


def test_a_failed_replace_that_could_not_be_undone_then_retried_keeps_old_labels_off_the_new_frame(tmp_path,
                                                                                                 monkeypatch):
    """Two I/O errors: the upload's rename fails, and so does moving the label back. The journal stays; the
    client retries and the replace succeeds. The next start must not undo the stale journal onto the new
    frame (it put the old frame back beside it and its label on the new one)."""
    from polypal.serving import framestore

    root, _, _, new = _setup(tmp_path)
    store = FrameStore(root)
    real = os.replace
    fail = {"upload": True, "label back": True}

    def flaky(src, dst, **kw):
        if fail["upload"] and str(dst).endswith("x.jpg"):
            raise OSError(5, "Input/output error")
        if fail["label back"] and str(dst).endswith(os.path.join("labels", "final", "x.png")):
            raise OSError(5, "Input/output error")
        return real(src, dst, **kw)

    monkeypatch.setattr(framestore.os, "replace", flaky)
    with pytest.raises(OSError):
        store.add_image("x", str(new), replace=True)
    assert len(_journals(root)) == 1
    fail["upload"] = fail["label back"] = False
    store.add_image("x", str(new), {"try": 2}, replace=True)
    monkeypatch.setattr(framestore.os, "replace", real)
    store = FrameStore(root)  # the next start
    assert store.image_ids() == ["x"] and store.image_ext("x") == ".jpg" and store.labels_of("x") == {}
    assert not (root / "x.png").exists() and not list((root / "labels" / "final").iterdir())
    assert store.image_info("x").get("try") == 2 and not _journals(root)


def test_purge_keeps_an_unfinished_replace(tmp_path):
    """polypal-trash purge deleted a folder whose replace a crash interrupted: the old frame and its labels
    went, and the next start lost the frame. Such a folder is shown as unfinished and kept."""
    from polypal.serving.trash import list_trash, purge

    root, _, _, new = _setup(tmp_path)
    assert _kill_replace(root, new, 2).returncode == -9
    [entry] = list_trash(root)
    assert entry["pending"] and "unfinished" in entry["reason"]
    assert purge(root, 0, dry_run=False) == [] and len(_journals(root)) == 1
    store = FrameStore(root)
    assert store.image_ext("x") == ".jpg" and Path(store.image_path("x")).read_bytes() == new.read_bytes()


@pytest.mark.parametrize("case", ["registered", "stray"])
def test_a_dangling_symlink_does_not_block_a_replace(tmp_path, case):
    """A frame that is a link whose target is gone (or such a link of the same id beside the frame) made
    every replace of that id fail with a 500."""
    root = tmp_path / "studies"
    root.mkdir()
    target = _frame(tmp_path, "elsewhere.png", 1)
    if case == "registered":
        os.symlink(target, root / "x.png")
    else:
        _frame(root, "x.jpg", 3)
    store = FrameStore(root)
    if case == "stray":
        os.symlink(target, root / "x.png")
    target.unlink()
    new = _frame(tmp_path, "up.tif", 99)
    store.add_image("x", str(new), replace=True)
    assert store.image_ext("x") == ".tif" and not os.path.lexists(root / "x.png")
    assert not (case == "stray" and (root / "x.jpg").exists())


def test_a_commit_mark_left_by_a_crash_is_dropped(tmp_path):
    """A crash inside the settling of a committed replace (journal gone, mark not yet) left the mark for good."""
    root, _, _, new = _setup(tmp_path)
    store = FrameStore(root)
    store.set_meta("replace:20990101-000000-gone", "1")
    FrameStore(root)
    assert not store._conn().execute("SELECT * FROM meta WHERE key LIKE 'replace:%'").fetchall()


def test_a_label_for_a_frame_whose_file_is_missing_is_422_not_409(tmp_path):
    """A frame whose file went (a link whose target was removed) is not a race: the label answer is 422
    naming the frame, not a 409 'replaced' that a client would retry for ever."""
    import io

    sys.path.insert(0, str(REPO / "tests"))
    from server_utils import Server, http, multipart

    studies = tmp_path / "studies"
    studies.mkdir()
    target = _frame(tmp_path, "target.png", 7)
    os.symlink(target, studies / "gone.png")
    _frame(studies, "other.png", 8)
    srv = Server(studies, tmp_path).start()
    try:
        target.unlink()
        buf = io.BytesIO()
        Image.fromarray(np.eye(24, 32, dtype=np.uint8)).save(buf, format="PNG")
        body, ct = multipart({"params": "{}"}, {"label": ("gone.png", buf.getvalue())})
        st, r = http("PUT", f"{srv.url}/datastore/label?image=gone&tag=final", body, {"Content-Type": ct})
    finally:
        srv.stop()
    assert st == 422 and "gone" in r["detail"] and "file not found" in r["detail"], (st, r)


KILLED_RECOVERY = """
import os, signal, sys
sys.path.insert(0, {lib!r})
from polypal.serving import framestore
at, root = {at!r}, os.path.realpath({root!r})
real_fsync_dir, real_unlink = framestore._fsync_dir, os.unlink

def fsync_dir(p):
    if at == "before commit" and os.path.realpath(p) == root:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync_dir(p)

def unlink(p, **kw):
    if at == "after commit" and str(p).endswith(framestore.REPLACE_JOURNAL):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_unlink(p, **kw)

framestore._fsync_dir, framestore.os.unlink = fsync_dir, unlink
framestore.FrameStore(root)
print("not killed")
"""


@pytest.mark.parametrize("at", ["before commit", "after commit"])
def test_a_recovery_killed_in_turn_is_finished_by_the_next_start(tmp_path, at):
    """The start-up that finishes an interrupted replace is itself killed, before or after its commit (before,
    a kill after its journal went and before its commit gave the new frame the old frame's info)."""
    root, _, label_bytes, new = _setup(tmp_path)
    assert _kill_replace(root, new, 2).returncode == -9
    code = KILLED_RECOVERY.format(lib=str(REPO / "lib"), at=at, root=str(root))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, (r.stdout, r.stderr)
    store = FrameStore(root)
    assert store.image_ext("x") == ".jpg" and Path(store.image_path("x")).read_bytes() == new.read_bytes()
    assert store.labels_of("x") == {} and store.image_info("x").get("note") == "new" and not _journals(root)
    [kept] = list((root / ".polypal" / "trash").iterdir())
    assert (kept / "labels-final-x.png").read_bytes() == label_bytes
    assert not store._conn().execute("SELECT * FROM meta WHERE key LIKE 'replace:%'").fetchall()


def test_a_same_name_replace_of_a_frame_whose_file_was_missing_keeps_its_label_off_the_new_frame(tmp_path):
    """x.png's file gone by hand (its rows still there), then replaced by another x.png and killed once the
    upload is in place: the journal named an old frame that was never moved, which read as 'still in place',
    so the replace was undone and x's old label put back on the new picture."""
    root, _, _, new = _setup(tmp_path, new_ext=".png")
    (root / "x.png").unlink()
    assert _kill_replace(root, new, "renamed").returncode == -9
    store = FrameStore(root)
    assert (root / "x.png").read_bytes() == new.read_bytes() and store.labels_of("x") == {}
    assert not (root / "labels" / "final" / "x.png").exists()


def test_a_new_id_that_reads_like_part_of_another_frames_name_leaves_that_frame_alone(tmp_path):
    """Frame x stored as x.seg.nrrd: a replace of a new id "x.seg" took x's file for its own stray and moved
    it to the trash, leaving x's rows on a missing file."""
    root = tmp_path / "studies"
    root.mkdir()
    (root / "x.seg.nrrd").write_bytes(b"NRRD0004\n")  # registered by its name; never decoded here
    store = FrameStore(root)
    assert store.image_ids() == ["x"]
    store.add_image("x.seg", str(_frame(tmp_path, "a.png", 4)), replace=True)
    assert (root / "x.seg.nrrd").exists() and sorted(FrameStore(root).image_ids()) == ["x", "x.seg"]


def test_a_torn_manifest_is_rewritten_from_the_journal(tmp_path):
    """A crash while the trash manifest was written left it empty: the trash tools listed nothing to restore
    and purge would delete the old frame and labels. The journal rewrites it."""
    from polypal.serving.trash import list_trash

    root, _, _, new = _setup(tmp_path)
    assert _kill_replace(root, new, 2).returncode == -9
    (_journals(root)[0].parent / "manifest.json").write_text("")
    FrameStore(root)
    [entry] = list_trash(root)
    assert entry["files"] == {"x.png": "x.png", "labels-final-x.png": "labels/final/x.png"} and not entry["pending"]


def test_a_stale_journal_of_the_same_shape_leaves_a_new_label_alone(tmp_path, monkeypatch):
    """After a replace that failed and could not be undone, the retry succeeded and a new label was saved:
    the rows had the old rows' shape again (a .png frame, a final .png label), so the next start 'finished'
    the old journal, deleting the new label's row or moving its file to the trash. Whole rows are compared."""
    from polypal.serving import framestore

    root, _, _, new = _setup(tmp_path, new_ext=".png")
    store = FrameStore(root)
    real = os.replace
    fail = {"on": True}

    def flaky(src, dst, **kw):
        if fail["on"] and (str(src).endswith(os.sep + "x.png") and ".upload-" in str(dst)
                           or os.path.basename(str(src)).startswith(".upload-")):
            raise OSError(5, "Input/output error")
        if fail["on"] and str(dst).endswith(os.path.join("labels", "final", "x.png")):
            raise OSError(5, "Input/output error")
        return real(src, dst, **kw)

    monkeypatch.setattr(framestore.os, "replace", flaky)
    with pytest.raises(OSError):
        store.add_image("x", str(new), replace=True)
    fail["on"] = False
    monkeypatch.setattr(framestore.os, "replace", real)
    assert len(_journals(root)) == 1
    store.add_image("x", str(new), replace=True)
    m = tmp_path / "m2.png"
    Image.fromarray(np.ones((24, 32), np.uint8)).save(m)
    time.sleep(1.1)  # another second than the first label's
    store.save_label("x", str(m), "final", {"by": "second annotator"})
    new_label = Path(store.label_path("x", "final")).read_bytes()
    store = FrameStore(root)  # the next start
    assert Path(store.label_path("x", "final")).read_bytes() == new_label
    assert store.label_info("x", "final").get("by") == "second annotator" and not _journals(root)



def test_a_journal_cut_off_while_written_leaves_no_folder(tmp_path):
    """A crash while the journal's temporary file was written (nothing moved yet) left a trash folder holding
    only that file, listed as '(no readable manifest)'. The next start removes it."""
    root, old_bytes, _, _ = _setup(tmp_path)
    stray = root / ".polypal" / "trash" / "20990101-000000-cut"
    stray.mkdir(parents=True)
    (stray / "replace.json.tmp").write_text('{"id": "x", "ext"')
    store = FrameStore(root)
    assert not stray.exists() and (root / "x.png").read_bytes() == old_bytes and list(store.labels_of("x")) == ["final"]


def test_a_write_that_fails_at_its_commit_puts_its_files_back(tmp_path):
    """A full disk fails a write at its COMMIT, after its files moved: the rows rolled back, the files did
    not (a hostile probe on a 12 MB tmpfs: a label save answered 500 replaced the acknowledged label, served
    from then on with the old label's info; a refused delete left rows without files). Here the database
    refuses the write (a trigger: the same failure inside the transaction), and every file is back: the
    acknowledged label with its bytes, a deleted label or frame where it was, no trash folder left over."""
    import sqlite3

    studies = tmp_path / "studies"
    studies.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(studies / "x.png")
    Image.fromarray(np.full((20, 30, 3), 60, np.uint8)).save(studies / "y.png")
    store = FrameStore(studies)
    first, second = tmp_path / "first.png", tmp_path / "second.nii.gz"
    Image.fromarray(np.eye(20, 30, dtype=np.uint8)).save(first)
    store.save_label("x", str(first), "final", {"k": 1})
    store.save_label("y", str(first), "final", {"k": 1})
    label = studies / "labels" / "final" / "x.png"
    acknowledged = label.read_bytes()
    trash = studies / ".polypal" / "trash"

    def state():
        files = sorted(str(p.relative_to(studies)) for p in studies.rglob("*") if p.is_file()
                       and ".polypal" not in p.parts)
        return files, store.label_info("x", "final").get("k"), store.labels_of("y")

    before, trashed = state(), sorted(trash.iterdir()) if trash.exists() else []
    db = sqlite3.connect(studies / ".polypal" / "datastore.sqlite")

    def refuse(sql):
        db.execute(sql)
        db.commit()

    # a save over the acknowledged label (same format, then another: the old file is unlinked at the end)
    refuse("CREATE TRIGGER full BEFORE INSERT ON labels BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    same = tmp_path / "same.png"
    Image.fromarray((1 - np.eye(20, 30)).astype(np.uint8)).save(same)
    for upload in (same,):
        with pytest.raises(sqlite3.DatabaseError, match="disk is full"):
            store.save_label("x", str(upload), "final", {"k": 2})
        assert label.read_bytes() == acknowledged and state() == before
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.eye(30, 20, dtype=np.uint8)[:, :, None], np.eye(4)), second)
    with pytest.raises(sqlite3.DatabaseError, match="disk is full"):
        store.save_label("x", str(second), "final", {"k": 3})
    assert label.read_bytes() == acknowledged and state() == before
    refuse("DROP TRIGGER full")
    # a delete of a label, of a frame with its label
    refuse("CREATE TRIGGER full BEFORE DELETE ON labels BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(sqlite3.DatabaseError, match="disk is full"):
        store.remove_label("x", "final")
    with pytest.raises(sqlite3.DatabaseError, match="disk is full"):
        store.remove_image("y")
    assert label.read_bytes() == acknowledged and state() == before
    assert (sorted(trash.iterdir()) if trash.exists() else []) == trashed  # no folder of a failed write
    refuse("DROP TRIGGER full")
    db.close()
    store.save_label("x", str(same), "final", {"k": 4})  # and the store works on
    assert label.read_bytes() != acknowledged


def test_a_clean_stop_leaves_the_databases_whole_and_a_lost_one_is_told(tmp_path, caplog):
    """After a stop the data sat in the -wal files (datastore.sqlite was 4 KB): a backup or rsync of the
    .sqlite files alone held nothing, and a server started on a folder whose database was lost or empty
    registered the labels again from their files without a word, their info gone (a crash probe). Now the
    logs are copied into the databases after writes, and a lost database is a warning naming what is gone."""
    import json as _json
    import logging
    import sqlite3
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from server_utils import Server, http, make_studies, multipart, sample_mask

    studies = make_studies(tmp_path / "studies", 3)
    some = sorted(p.stem for p in studies.glob("*.jpg"))[0]
    # (a checkpoint after every write here; 30 s apart at most by default)
    srv = Server(studies, tmp_path, env={"POLYPAL_CHECKPOINT_SECONDS": "0"}).start()
    try:
        body, ct = multipart({"params": _json.dumps({"client_id": "dr-a"})},
                             {"label": ("m.png", sample_mask(some).read_bytes())})
        s, r = http("PUT", f"{srv.url}/datastore/label?image={some}&tag=final", body, {"Content-Type": ct})
        assert s == 200, r
    finally:
        srv.stop()
    backup = tmp_path / "backup.sqlite"  # the .sqlite file alone, without its -wal
    shutil.copy(studies / ".polypal" / "datastore.sqlite", backup)
    with sqlite3.connect(backup) as c:
        info = c.execute("SELECT info FROM labels WHERE image_id=?", (some,)).fetchone()
    assert info and _json.loads(info[0]).get("client_id") == "dr-a"
    # the database lost (only the files left): registered again, and said
    for p in (studies / ".polypal").glob("datastore.sqlite*"):
        p.unlink()
    with caplog.at_level(logging.WARNING, logger="polypal.serving.framestore"):
        store = FrameStore(studies)
    assert store.label_path(some, "final")
    assert any("was missing or empty, and this folder has labels" in r.getMessage() for r in caplog.records)


def test_a_damaged_database_is_named_and_a_label_deleted_by_hand_is_told(tmp_path, caplog):
    """A database damaged on disk made the server fail with a bare traceback naming no file, or (garbage in
    its pages) start and write on it; a label file deleted by hand lost its record without a word (a crash
    probe). Now the database is checked at open and named with what to do; the lost label is a warning."""
    import logging
    import sqlite3

    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(40):
        Image.fromarray(np.full((20, 30, 3), i, np.uint8)).save(studies / f"f{i:02d}.png")
    store = FrameStore(studies)
    m = tmp_path / "m.png"
    Image.fromarray(np.eye(20, 30, dtype=np.uint8)).save(m)
    for i in ("f01", "f02"):
        store.save_label(i, str(m), "final", {"client_id": "dr-a"})
    store.save_label("f03", str(m), "final", {"client_id": "dr-a"})
    (studies / "labels" / "final" / "f02.png").unlink()  # by hand
    (studies / "labels" / "final" / "f03.png").write_bytes(b"")  # emptied by hand: was served as 0 bytes
    with caplog.at_level(logging.WARNING, logger="polypal.serving.framestore"):
        store = FrameStore(studies)
    assert store.label_path("f01", "final") and not store.label_path("f02", "final")
    assert not store.label_path("f03", "final") and not (studies / "labels" / "final" / "f03.png").exists()
    assert any("empty label file final/f03.png" in json.loads(p.read_text())["reason"]
               for p in (studies / ".polypal" / "trash").glob("*/manifest.json"))
    assert any("missing from the studies folder" in r.getMessage() and "final/f02" in r.getMessage()
               and "final/f03" in r.getMessage() for r in caplog.records)
    db = studies / ".polypal" / "datastore.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 3 * page
    data[page:2 * page] = os.urandom(page)  # garbage over a page
    db.write_bytes(bytes(data))
    with pytest.raises(sqlite3.DatabaseError, match="(?s)datastore.sqlite: cannot be used .*backup"):
        FrameStore(studies)
    db.write_bytes(b"not a database" * 400)
    with pytest.raises(sqlite3.DatabaseError, match="datastore.sqlite: cannot be used"):
        FrameStore(studies)


class _CommitFails:
    """The store's SQLite connection, whose next COMMIT fails as on a full disk: SQLite rolls the
    transaction back and raises (the failure itself is SQLite's, simulated; the store's code is real)."""

    def __init__(self, conn, times=1, between=None):
        self._conn, self.times, self.between = conn, times, between

    def execute(self, sql, *a):
        if sql.strip().upper() == "COMMIT" and self.times > 0:
            self.times -= 1
            self._conn.execute("ROLLBACK")
            if self.between:  # another writer, once the failed COMMIT let the lock go
                self.between()
            import sqlite3

            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *a)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_write_whose_commit_fails_leaves_rows_and_files_together(tmp_path):
    """The COMMIT itself failing (a full disk; after the write's files moved, SQLite rolls back): the
    acknowledged label stays, byte for byte, in every format change; a refused delete leaves the file in
    place; a new frame whose row did not commit leaves no file (a retry would be refused as existing); a
    replace that moved everything is finished and answered as done (it did happen)."""
    import sqlite3

    import nibabel as nib

    studies = tmp_path / "studies"
    studies.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(studies / "x.png")
    store = FrameStore(studies)
    first = tmp_path / "first.png"
    Image.fromarray(np.eye(20, 30, dtype=np.uint8)).save(first)
    store.save_label("x", str(first), "final", {"k": 1})
    label = studies / "labels" / "final" / "x.png"
    acknowledged = label.read_bytes()
    trash = studies / ".polypal" / "trash"
    trashed = sorted(trash.iterdir()) if trash.exists() else []
    other = tmp_path / "other.png"
    Image.fromarray((1 - np.eye(20, 30)).astype(np.uint8)).save(other)
    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.eye(30, 20, dtype=np.uint8)[:, :, None], np.eye(4)), vol)

    def failing():
        store._db._local.conn = _CommitFails(store._db.conn())

    for upload in (other, vol):
        failing()
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            store.save_label("x", str(upload), "final", {"k": 2})
        assert label.read_bytes() == acknowledged and store.label_info("x", "final")["k"] == 1
        assert sorted(p.name for p in label.parent.iterdir() if not p.name.startswith(".")) == ["x.png"]
        assert (sorted(trash.iterdir()) if trash.exists() else []) == trashed
    failing()
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.remove_label("x", "final")
    assert label.read_bytes() == acknowledged and store.label_path("x", "final")
    assert (sorted(trash.iterdir()) if trash.exists() else []) == trashed
    frame = tmp_path / "y.png"
    Image.fromarray(np.full((20, 30, 3), 30, np.uint8)).save(frame)
    failing()
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.add_image("y", str(frame))
    assert not (studies / "y.png").exists() and store.image_ext("y") is None
    store.add_image("y", str(frame))  # the retry
    assert store.image_ext("y") == ".png"
    new = tmp_path / "x-new.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(new)
    failing()
    assert store.add_image("x", str(new), replace=True) == "x"  # finished after its failed COMMIT
    assert (studies / "x.png").read_bytes() == new.read_bytes() and not store.label_path("x", "final")
    assert any((d / "x.png").exists() or list(d.rglob("x.png")) for d in trash.iterdir())
    # a file another writer put where the undo would go is never overwritten: the undone one stays in the trash
    store.save_label("y", str(first), "final", {"k": 5})
    ylabel = studies / "labels" / "final" / "y.png"
    kept = ylabel.read_bytes()
    store._db._local.conn = _CommitFails(store._db.conn(), between=lambda: ylabel.write_bytes(b"another writer"))
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.remove_label("y", "final")
    assert ylabel.read_bytes() == b"another writer"
    assert any(p.read_bytes() == kept for p in trash.rglob("*-y.png"))


def test_the_log_is_copied_into_the_database_after_writes_with_no_later_write(tmp_path):
    """The copy of the write-ahead log into the database ran only at a later write (a review: two saves and
    then quiet, and the .sqlite file alone held nothing). It runs on its own within POLYPAL_CHECKPOINT_SECONDS
    (1 s here) of a write."""
    script = f"""
import os, shutil, sqlite3, sys, time
sys.path.insert(0, {str(REPO / 'lib')!r})
from polypal.serving.sqlite_db import SQLiteDB
db = SQLiteDB({str(tmp_path / 't.sqlite')!r}, "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
with db.tx() as c:
    c.execute("INSERT INTO t VALUES (1)")
time.sleep(3)
shutil.copy({str(tmp_path / 't.sqlite')!r}, {str(tmp_path / 'copy.sqlite')!r})
print(sqlite3.connect({str(tmp_path / 'copy.sqlite')!r}).execute("SELECT COUNT(*) FROM t").fetchone()[0])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "POLYPAL_CHECKPOINT_SECONDS": "1"})
    assert out.stdout.strip() == "1", out


def test_every_database_syncs_each_commit(tmp_path):
    """WAL with synchronous=NORMAL keeps commits across a kill -9 but may lose the last ones at a power cut:
    a label answered 200 then came back from its file alone, without who drew it, or with the record of the
    label it replaced (a review, 2026-12-07). Each database of a studies folder now syncs every commit."""
    from polypal.serving.state import ActiveLearningState
    from polypal.video.store import VideoDB

    root = tmp_path / "studies"
    root.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "f0.png")
    conns = {"datastore": FrameStore(root)._conn(),
             "state": ActiveLearningState(tmp_path / "state")._db.conn(),
             "video": VideoDB(str(root)).db.conn()}
    FULL = 2
    assert {k: c.execute("PRAGMA synchronous").fetchone()[0] for k, c in conns.items()} == dict.fromkeys(conns, FULL)
    assert {c.execute("PRAGMA journal_mode").fetchone()[0] for c in conns.values()} == {"wal"}
