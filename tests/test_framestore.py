import os
import threading

import numpy as np
import pytest
from PIL import Image

from polypal.serving.framestore import FrameStore
from polypal.vocab import InvalidName, check_name


def make_frames(root, n, size=(20, 30)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((*size, 3), i, np.uint8)).save(root / f"f{i:03d}.png")
    return root


def mask_file(tmp_path, name="m.png", size=(20, 30)):
    p = tmp_path / name
    Image.fromarray(np.zeros(size, np.uint8)).save(p)
    return p


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "a\\b", "/etc/passwd", "x\x00y", "", ".", "a..b", ".hidden"])
def test_check_name_rejects_traversal(bad):
    with pytest.raises(InvalidName):
        check_name("tag", bad)


def test_check_name_accepts_normal():
    assert check_name("id", "cju0qkwl35piu0993l0dewei2") and check_name("tag", "final")
    assert check_name("id", "frame_001.v2")


def test_layout_and_basic_flow(tmp_path):
    root = make_frames(tmp_path / "s", 5)
    fs = FrameStore(root)
    assert fs.image_ids() == [f"f{i:03d}" for i in range(5)]
    fs.save_label("f001", str(mask_file(tmp_path)), "final", {"user": "a"})
    assert (root / "labels" / "final" / "f001.png").exists()
    assert fs.labeled_ids() == ["f001"] and "f001" not in fs.unlabeled_ids()
    assert fs.label_info("f001", "final")["user"] == "a"
    # re-saving with another extension keeps one label file
    p = tmp_path / "m.nii.gz"
    p.write_bytes(b"x")
    fs.save_label("f001", str(p), "final")
    assert sorted(os.listdir(root / "labels" / "final")) == ["f001.nii.gz"]
    with pytest.raises(InvalidName):
        fs.save_label("f001", str(mask_file(tmp_path)), "../../../tmp/evil")
    assert uploads(root) == []


def uploads(root, tag="final"):
    return [n for n in os.listdir(root / "labels" / tag) if n.startswith(".upload-")]


def test_failed_saves_leave_no_upload_file_and_keep_the_old_label(tmp_path, monkeypatch):
    import polypal.serving.framestore as framestore

    root = make_frames(tmp_path / "s", 3)
    fs = FrameStore(root)
    good = mask_file(tmp_path)
    fs.save_label("f001", str(good), "final", {"v": 1})
    before = (root / "labels" / "final" / "f001.png").read_bytes()
    assert uploads(root) == []
    # 1. the rename fails after the upload was copied into the label folder
    seen = []
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(src).startswith(".upload-"):
            seen.append(sorted(uploads(root)))  # the temporary file really exists at this point
            raise OSError("disk full (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(framestore.os, "replace", failing_replace)
    other = tmp_path / "other.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(other)
    with pytest.raises(OSError, match="simulated"):
        fs.save_label("f001", str(other), "final", {"v": 2})
    monkeypatch.setattr(framestore.os, "replace", real_replace)
    assert len(seen) == 1 and len(seen[0]) == 1
    assert uploads(root) == []
    assert (root / "labels" / "final" / "f001.png").read_bytes() == before
    assert fs.label_info("f001", "final")["v"] == 1
    # 2. the copy itself fails half-way (the source vanishes or is unreadable)
    real_copy = framestore.shutil.copyfileobj

    def failing_copy(f, out, *a):
        out.write(b"partial")
        raise OSError("read error (simulated)")

    monkeypatch.setattr(framestore.shutil, "copyfileobj", failing_copy)
    with pytest.raises(OSError, match="simulated"):
        fs.save_label("f002", str(other), "final")
    monkeypatch.setattr(framestore.shutil, "copyfileobj", real_copy)
    assert uploads(root) == [] and fs.labeled_ids() == ["f001"]
    assert not (root / "labels" / "final" / "f002.png").exists()


def test_reconcile_removes_only_stale_uploads(tmp_path):
    root = make_frames(tmp_path / "s", 2)
    FrameStore(root)
    d = root / "labels" / "final"
    (d / ".upload-stale").write_bytes(b"x")
    os.utime(d / ".upload-stale", (0, 0))  # left by a crash long ago
    (d / ".upload-fresh").write_bytes(b"y")  # may be in flight in another process
    FrameStore(root)
    assert uploads(root) == [".upload-fresh"]


def test_info_updates_from_two_processes_are_not_lost(tmp_path):
    root = make_frames(tmp_path / "s", 3)
    a, b = FrameStore(root), FrameStore(root)  # two independent handles, as server + subprocess
    a.update_image_info("f000", {"x": 1})
    b.update_image_info("f000", {"y": 2})
    assert a.image_info("f000")["x"] == 1 and a.image_info("f000")["y"] == 2


def test_concurrent_label_saves_and_info_updates(tmp_path):
    """Four handles write the SAME frames at once, each its own mask and its own info key.

    Every label file must be one thread's mask whole (never a mix, never missing), its row
    must say so, and every thread's info key must survive (a lost read-modify-write drops one).
    """
    n_frames, n_threads, rounds = 10, 4, 3
    root = make_frames(tmp_path / "s", n_frames)
    fs = FrameStore(root)
    masks = []
    for k in range(n_threads):
        p = tmp_path / f"mask{k}.png"
        Image.fromarray(np.full((20, 30), 10 * (k + 1), np.uint8)).save(p)
        masks.append(p)
    errors = []
    start = threading.Barrier(n_threads)

    def saver(k):
        try:
            other = FrameStore(root, read_only=True)
            start.wait()
            for r in range(rounds):
                for i in range(n_frames):
                    other.save_label(f"f{i:03d}", str(masks[k]), "final", {"by": k})
                    other.update_image_info(f"f{i:03d}", {f"t{k}": r, "last": k})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=saver, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fs.labeled_ids() == [f"f{i:03d}" for i in range(n_frames)]
    contents = {p.read_bytes(): k for k, p in enumerate(masks)}
    for i in range(n_frames):
        fid = f"f{i:03d}"
        assert os.listdir(root / "labels" / "final").count(f"{fid}.png") == 1
        data = (root / "labels" / "final" / f"{fid}.png").read_bytes()
        assert data in contents, f"{fid}: the stored label is no thread's mask"
        info = fs.image_info(fid)
        assert all(info[f"t{k}"] == rounds - 1 for k in range(n_threads)), info  # no update lost
    assert uploads(root) == []
    assert FrameStore(root).labeled_ids() == fs.labeled_ids()  # a restart agrees with the rows


def test_reconcile_picks_up_files_and_crash_leftovers(tmp_path):
    root = make_frames(tmp_path / "s", 3)
    FrameStore(root)
    # a label file written but its row never committed (crash between the two steps)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "labels" / "final" / "f002.png")
    # a new frame dropped into the folder, and a frame deleted
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "new.jpg")
    os.unlink(root / "f000.png")
    fs2 = FrameStore(root)
    assert fs2.image_ids() == ["f001", "f002", "new"]
    assert fs2.labeled_ids() == ["f002"]


def test_migrates_monailabel_local_datastore_json(tmp_path):
    from monailabel.datastore.local import LocalDatastore

    root = make_frames(tmp_path / "s", 4)
    ml = LocalDatastore(str(root), extensions=["*.png"])
    ml.save_label("f001", str(mask_file(tmp_path)), "final", {"user": "dr-a"})
    ml.save_label("f002", str(mask_file(tmp_path, "o.png")), "original", {"model": "m1"})
    ml.update_image_info("f003", {"strategy": {"random": {"ts": 1, "client_id": "c"}}})
    before = (root / "datastore_v2.json").read_text()
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"]
    assert fs.labeled_ids("original") == ["f002"]
    assert fs.label_info("f001", "final")["user"] == "dr-a"
    assert fs.label_info("f002", "original")["model"] == "m1"
    assert fs.image_info("f003")["strategy"]["random"]["client_id"] == "c"
    assert (root / "datastore_v2.json").read_text() == before  # left untouched
    # second start: no double import, info kept
    fs.update_image_info("f003", {"note": "kept"})
    assert FrameStore(root).image_info("f003")["note"] == "kept"


def test_a_frame_added_again_while_its_delete_finishes_is_never_the_file_trashed(tmp_path):
    """Two clients: one deletes frame x, the other adds a new x at that moment. The delete's trashing of
    files is the interleaving point (the other client's add runs there, in its own thread and connection);
    whichever of the two wins, a frame row never points at a file the delete moved away."""
    root = make_frames(tmp_path / "s", 1)
    src = root / "f000.png"
    outcome = []

    class OtherClientAddsDuringTrash(FrameStore):
        def trash(self, files, reason, keep_source=False, **kw):
            if reason == "image x removed" and not outcome:
                def add():
                    try:
                        FrameStore(root, read_only=True).add_image("x", str(src))
                        outcome.append("added")
                    except Exception as e:
                        outcome.append(type(e).__name__)
                t = threading.Thread(target=add)
                t.start()
                t.join(30)
            return super().trash(files, reason, keep_source, **kw)

    fs = OtherClientAddsDuringTrash(root)
    fs.add_image("x", str(src))
    fs.remove_image("x")
    assert outcome in (["Exists"], ["added"]), outcome
    ext = fs.image_ext("x")
    assert ext is None or (root / f"x{ext}").exists(), (outcome, ext)


def test_a_trash_that_fails_half_way_puts_the_moved_files_back(tmp_path):
    """Deletes trash files inside their transaction; if trashing fails (here: the second file's name cannot be
    created in the trash folder), the transaction rolls back, so the first file must be where its row says."""
    root = make_frames(tmp_path / "s", 2)
    fs = FrameStore(root)
    a, b = root / "f000.png", root / "f001.png"
    before = a.read_bytes()
    with pytest.raises(OSError):
        fs.trash({"f000.png": str(a), "no-such-dir/f001.png": str(b)}, "test")
    assert a.read_bytes() == before and b.exists()
    assert not any((root / ".polypal" / "trash").iterdir())  # no half-filled trash folder left


def test_a_crafted_local_datastore_json_imports_no_path_outside(tmp_path):
    """datastore_v2.json is imported once; entries whose id, extension or tag are not plain names (a path
    out of the studies folder) are skipped, the rest imported."""
    import json

    root = make_frames(tmp_path / "s", 2)
    (tmp_path / "secret").write_text("x")
    (root / "datastore_v2.json").write_text(json.dumps({"objects": {
        "../secret": {"image": {"ext": ""}, "labels": {}},
        "f000": {"image": {"ext": ".png", "info": {"a": 1}}, "labels": {"../../x": {"ext": ".png"}}},
        "f001": {"image": {"ext": "/../../secret"}}}}))
    fs = FrameStore(root)
    assert fs.image_ids() == ["f000", "f001"] and fs.image_ext("f001") == ".png"
    assert fs.image_info("f000")["a"] == 1 and fs.labels_of("f000") == {}
    assert all(os.path.dirname(fs.image_path(i)) == str(root) for i in fs.image_ids())


def test_a_label_checked_against_a_frame_replaced_since_is_refused(tmp_path):
    """The server checks a label against its frame, then stores it. A frame replaced in between (same id,
    here even the same size) must not receive a label drawn for the old one."""
    from polypal.serving.framestore import FrameChanged

    root = make_frames(tmp_path / "s", 2)
    fs = FrameStore(root)
    sig = fs.frame_signature("f000")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "new.png")
    fs.add_image("f000", str(tmp_path / "new.png"), replace=True)
    with pytest.raises(FrameChanged, match="replaced while its label was being saved"):
        fs.save_label("f000", str(mask_file(tmp_path)), "final", frame_signature=sig)
    assert fs.label_path("f000", "final") == "" and not list((root / "labels" / "final").iterdir())
    # checked against the frame as it is now: stored
    fs.save_label("f000", str(mask_file(tmp_path)), "final", frame_signature=fs.frame_signature("f000"))
    assert fs.label_path("f000", "final")


def test_merged_info_is_capped_for_clients_not_for_the_servers_own_record(tmp_path):
    """Clients' info merges stop at MAX_INFO_BYTES (60 updates of 900 KB made every listing 55 MB); the
    server's own small record (how a frame was served) still lands on a frame clients filled to the cap."""
    import pytest

    from polypal.serving.framestore import MAX_INFO_BYTES, FrameStore, InfoTooLarge

    studies = tmp_path / "s"
    studies.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(studies / "a.png")
    store = FrameStore(studies)
    store.update_image_info("a", {"big": "x" * (MAX_INFO_BYTES - 100)})
    with pytest.raises(InfoTooLarge):
        store.update_image_info("a", {"more": "y" * 200})
    store.update_image_info("a", {"served": {"al_strategy": "bvsb", "cycle": 3, "client_id": "dr-a"}}, limit=None)
    assert store.image_info("a")["served"]["cycle"] == 3 and "more" not in store.image_info("a")


def test_a_dangling_link_in_a_label_place_is_kept_and_never_blocks_a_save(tmp_path):
    """A dangling symlink where a label goes (labels/final/x.png, put there by hand or left by a tool) made
    every save of that label fail (the trash dropped it as missing, then a TypeError: a 500 each time), and a
    delete of its frame left it in place for the next frame of that id (a review, 2026-12-07). The link itself
    is kept in the trash; nothing it points to is read or written."""
    root = make_frames(tmp_path / "s", 2)
    fs = FrameStore(root)
    target = tmp_path / "outside.png"  # never created: the link dangles
    place = root / "labels" / "final" / "f000.png"
    os.symlink(target, place)
    fs.save_label("f000", str(mask_file(tmp_path)), "final", {"client_id": "dr-a"})
    assert place.is_file() and not place.is_symlink() and fs.label_path("f000", "final")
    kept = [p for p in (root / ".polypal" / "trash").rglob("*") if p.is_symlink()]
    assert [os.readlink(p) for p in kept] == [str(target)] and not target.exists()
    # a frame deleted with such a link as its label: the link goes with it
    fs.save_label("f001", str(mask_file(tmp_path)), "final")
    other = root / "labels" / "final" / "f001.png"
    other.unlink()
    os.symlink(target, other)
    fs.remove_image("f001")
    assert not os.path.lexists(other) and not target.exists()
    # a link to a file outside: kept as the link (before, the trash took a hard link or a copy of that file)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not ours")
    os.unlink(place)
    fs.remove_label("f000", "final")
    os.symlink(outside, place)
    fs.save_label("f000", str(mask_file(tmp_path)), "final")
    assert os.stat(outside).st_nlink == 1
    assert not any(p.is_file() and not p.is_symlink() and p.read_bytes() == b"not ours"
                   for p in (root / ".polypal" / "trash").rglob("*"))


def test_the_same_label_saved_again_changes_nothing(tmp_path):
    """The same bytes on the same picture again: no write, no trash folder, the first save's info kept, and
    the store says so (the server then keeps the label's credit); another mask is a new save."""
    from polypal.serving.framestore import FrameStore

    root = tmp_path / "studies"
    root.mkdir()
    Image.fromarray(np.full((20, 30, 3), 50, np.uint8)).save(root / "f0.png")
    m1, m2 = tmp_path / "m1.png", tmp_path / "m2.png"
    Image.fromarray((np.arange(600).reshape(20, 30) % 2).astype(np.uint8)).save(m1)
    Image.fromarray((np.arange(600).reshape(20, 30) % 3 == 0).astype(np.uint8)).save(m2)
    fs = FrameStore(root)
    fs.save_label("f0", str(m1), "final", {"client_id": "first"})
    assert not fs.last_save_unchanged()
    trash = root / ".polypal" / "trash"
    fs.save_label("f0", str(m1), "final", {"client_id": "second"})
    assert fs.last_save_unchanged() and fs.label_info("f0", "final")["client_id"] == "first"
    assert not trash.exists() or not list(trash.iterdir())
    fs.save_label("f0", str(m2), "final", {"client_id": "second"})
    assert not fs.last_save_unchanged() and fs.label_info("f0", "final")["client_id"] == "second"
    assert len(list(trash.iterdir())) == 1
    # a label file changed by hand, then the same bytes saved: nothing written, but its records are taken
    # again (before, a stale record of the file hid a later change of the frame: off_picture said nothing)
    from polypal.serving import label_frames

    (root / "labels" / "final" / "f0.png").write_bytes(m1.read_bytes())
    fs.save_label("f0", str(m1), "final")
    assert fs.last_save_unchanged()
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(root / "f0.png")  # another picture, on disk
    assert label_frames.off_picture(fs, "f0", "final")
    Image.fromarray(np.full((20, 30, 3), 50, np.uint8)).save(root / "f0.png")
    fs.save_label("f0", str(m2), "final")
    # the same bytes after the frame became another picture: stored again (on the new picture)
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(root / "f0.png")
    fs.save_label("f0", str(m2), "final")
    assert not fs.last_save_unchanged()
