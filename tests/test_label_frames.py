"""A label stays with the picture it was drawn on, whatever happens to the studies folder between two starts.

Each test opens the store as the server does at start-up (``FrameStore(root)`` reconciles), changes files
by hand as a user or a flaky share would, and opens it again.
"""
import os
import shutil

import numpy as np
from PIL import Image

from polypal.serving.framestore import FrameStore
from polypal.serving.trash import list_trash, restore


def picture(path, value, size=(20, 30)):
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def labeled_store(tmp_path, n=3):
    root = tmp_path / "s"
    root.mkdir()
    for i in range(n):
        picture(root / f"f{i:03d}.png", 10 * i)
    fs = FrameStore(root)
    mask = tmp_path / "m.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(mask)
    fs.save_label("f001", str(mask), "final", {"user": "dr-a"})
    return root, fs


def trashed_labels(root):
    return [(e["reason"], list(e["files"].values())) for e in list_trash(root)]


def test_a_different_picture_under_a_deleted_frames_id_does_not_get_its_label(tmp_path):
    root, _ = labeled_store(tmp_path)
    os.unlink(root / "f001.png")  # deleted by hand
    assert "f001" not in FrameStore(root).image_ids()
    picture(root / "f001.png", 200)  # later: another picture under the same id (a re-ingest, an upload)
    fs = FrameStore(root)
    assert "f001" in fs.image_ids() and fs.labeled_ids() == []
    assert not (root / "labels" / "final" / "f001.png").exists()
    (reason, files), = trashed_labels(root)
    assert "another picture" in reason and files == ["labels/final/f001.png"]


def test_another_extension_under_a_deleted_frames_id_does_not_get_its_label(tmp_path):
    root, _ = labeled_store(tmp_path)
    os.unlink(root / "f001.png")
    FrameStore(root)
    picture(root / "f001.jpg", 200)
    fs = FrameStore(root)
    assert fs.image_ext("f001") == ".jpg" and fs.labeled_ids() == []


def test_a_frame_back_from_a_share_outage_gets_its_label_and_its_info_back(tmp_path):
    """A frame missing at one start (a share not mounted) and back at the next, byte for byte: its label
    goes back on it, with the info it was saved with (who drew it, when)."""
    root, fs = labeled_store(tmp_path)
    info = fs.label_info("f001", "final")
    away = tmp_path / "share"
    away.mkdir()
    shutil.move(root / "f001.png", away / "f001.png")
    assert FrameStore(root).labeled_ids() == []
    shutil.copy(away / "f001.png", root / "f001.png")  # back: same bytes, another inode and time
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"]
    assert fs.label_info("f001", "final") == info and info["user"] == "dr-a"
    assert list_trash(root) == []


def test_a_labeled_frame_overwritten_by_hand_loses_its_label_to_the_trash(tmp_path):
    root, fs = labeled_store(tmp_path)
    picture(root / "f001.png", 250)  # another picture copied over it while no server ran
    fs = FrameStore(root)
    assert fs.labeled_ids() == [] and "f001" in fs.image_ids()
    (reason, files), = trashed_labels(root)
    assert "changed on disk" in reason and files == ["labels/final/f001.png"]
    # a restore puts it back only onto the picture it was drawn on (a restore after the frame was
    # overwritten while the server ran recorded the new picture as its own, and no later start caught it)
    refused = restore(root, list_trash(root)[0]["name"])["refused"]
    assert list(refused.values()) == ["frame 'f001' is another picture than the one this label was drawn on "
                                      "(put that picture back first)"]
    assert FrameStore(root).labeled_ids() == []


def test_a_label_written_with_its_new_frame_without_a_record_stays_on_it(tmp_path):
    """A frame and its label both rewritten by something that keeps no record (a version before 2026-12-07
    after a downgrade: it replaced a labeled frame through the API and saved the new picture's label; or a
    frame and label copied in together from a backup): the label is the new picture's, not the record's. An
    upgrade probe found such labels moved to the trash as "another picture than the one its label was drawn
    on", and polypal-trash restore refused them. A frame overwritten under an unchanged label still loses
    it (the test above)."""
    root, fs = labeled_store(tmp_path)
    picture(root / "f001.png", 250)
    Image.fromarray(np.eye(20, 30, dtype=np.uint8) * 255).save(root / "labels" / "final" / "f001.png")
    from polypal.serving.label_frames import off_their_picture

    assert off_their_picture(fs, ["f001"]) == {}  # a training or export now: not left out
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and list_trash(root) == []
    # and it is now recorded on that picture: overwriting the frame again takes it away, the label file's
    # bytes unchanged whatever else happened to it (a chmod, a touch, a copy: a review found those counted
    # as a new label, which then stayed on the other picture)
    picture(root / "f001.png", 120)
    label = root / "labels" / "final" / "f001.png"
    os.chmod(label, 0o600)
    os.utime(label, ns=(1, 1))
    assert list(off_their_picture(FrameStore(root, read_only=True), ["f001"])) == ["f001"]
    assert FrameStore(root).labeled_ids() == [] and len(list_trash(root)) == 1


def test_a_frame_touched_or_copied_back_byte_for_byte_keeps_its_label(tmp_path):
    root, fs = labeled_store(tmp_path)
    os.utime(root / "f001.png", ns=(1, 1))
    assert FrameStore(root).labeled_ids() == ["f001"]
    data = (root / "f001.png").read_bytes()
    os.unlink(root / "f001.png")
    (root / "f001.png").write_bytes(data)  # restored from a backup
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-a"
    assert list_trash(root) == []


def test_labels_saved_before_the_frame_record_existed_are_hashed_once_and_then_guarded(tmp_path):
    root, fs = labeled_store(tmp_path)
    with fs._tx() as c:  # a datastore from an older version: no record of the frame each label was drawn on
        c.execute("DELETE FROM label_frames")
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"]
    assert fs._conn().execute("SELECT COUNT(*) FROM label_frames").fetchone()[0] == 1
    picture(root / "f001.png", 250)
    assert FrameStore(root).labeled_ids() == []


def test_a_new_label_put_by_hand_for_the_returning_id_is_that_frames_label(tmp_path):
    root, _ = labeled_store(tmp_path)
    os.unlink(root / "f001.png")
    FrameStore(root)
    picture(root / "f001.png", 200)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "labels" / "final" / "f001.png")  # drawn for it
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and list_trash(root) == []


def test_a_label_kept_aside_is_replaced_by_a_save_for_the_new_picture(tmp_path):
    """The frame comes back as another picture through an upload while the server runs; the annotator
    saves a label for it: the old file goes to the trash, and the next start keeps the new label."""
    root, fs = labeled_store(tmp_path)
    os.unlink(root / "f001.png")
    fs = FrameStore(root)
    fs.add_image("f001", str(picture(tmp_path / "up.png", 200)))
    mask = tmp_path / "m2.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask)
    fs.save_label("f001", str(mask), "final", {"user": "dr-b"})
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-b"
    assert fs._conn().execute("SELECT COUNT(*) FROM detached_labels").fetchone()[0] == 0


def test_through_the_server_labels_follow_their_pictures_across_restarts(tmp_path):
    """Labels saved through a real server; between starts one frame is overwritten by hand with another
    picture and another is away (a share not mounted), then back: the first label goes to the trash, the
    second comes back with its info."""
    import io

    import pytest

    from server_utils import Server, http, multipart

    pytest.importorskip("monailabel")
    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(4):
        picture(studies / f"fr{i:03d}.png", 30 * i, size=(48, 64))
    srv = Server(studies, tmp_path).start()
    try:
        for fid in ("fr000", "fr001"):
            buf = io.BytesIO()
            Image.fromarray(np.full((48, 64), 255, np.uint8)).save(buf, format="PNG")
            body, ct = multipart({"params": '{"client_id": "dr-a"}'}, {"label": (f"{fid}.png", buf.getvalue())})
            s, r = http("PUT", f"{srv.url}/datastore/label?image={fid}&tag=final", body, {"Content-Type": ct})
            assert s == 200, r
        s, ds = http("GET", srv.url + "/datastore/?output=all")
        info = ds["objects"]["fr001"]["labels"]["final"]["info"]
    finally:
        srv.stop()

    def labels(server):
        s, ds = http("GET", server.url + "/datastore/?output=all")
        assert s == 200
        return {k: v["labels"]["final"]["info"] for k, v in ds["objects"].items() if "final" in v["labels"]}

    picture(studies / "fr000.png", 250, size=(48, 64))  # another picture over a labeled frame
    away = tmp_path / "share"
    away.mkdir()
    shutil.move(studies / "fr001.png", away / "fr001.png")
    srv = Server(studies, tmp_path, port=srv.port).start()
    try:
        assert labels(srv) == {}
    finally:
        srv.stop()
    shutil.move(away / "fr001.png", studies / "fr001.png")
    srv = Server(studies, tmp_path, port=srv.port).start()
    try:
        assert labels(srv) == {"fr001": info}
    finally:
        srv.stop()
    (reason, files), = trashed_labels(studies)
    assert "changed on disk" in reason and files == ["labels/final/fr000.png"]


# -- what a review found (each failed on the first version of this check) ----------------------------------

def test_a_frame_re_encoded_with_the_same_pixels_keeps_its_label_and_info(tmp_path):
    root, fs = labeled_store(tmp_path)
    p = root / "f001.png"
    arr = np.asarray(Image.open(p)).copy()
    Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE).save(p, optimize=True)  # a palette PNG
    assert np.array_equal(np.asarray(Image.open(p).convert("RGB")), arr)  # other bytes, the same picture
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-a"
    assert list_trash(root) == []
    picture(p, 251)  # and then really another picture
    assert FrameStore(root).labeled_ids() == []


def test_a_frame_half_copied_at_a_start_keeps_its_label_until_it_can_be_read(tmp_path):
    root, fs = labeled_store(tmp_path)
    data = (root / "f001.png").read_bytes()
    (root / "f001.png").write_bytes(data[: len(data) // 2])  # cp writing the same picture in place
    assert FrameStore(root).labeled_ids() == ["f001"]  # cannot be told yet: left as it is
    (root / "f001.png").write_bytes(data)
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and list_trash(root) == []
    # the same while the label is kept aside
    os.unlink(root / "f001.png")
    FrameStore(root)
    (root / "f001.png").write_bytes(data[: len(data) // 2])
    assert FrameStore(root).labeled_ids() == []
    (root / "f001.png").write_bytes(data)
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-a"
    assert list_trash(root) == []


def test_a_label_kept_aside_is_known_by_its_content_not_its_file_time(tmp_path):
    """cp -r of the studies folder (or a backup restore) gives every label file a new time: the kept-aside
    label is still that label, and still never goes onto another picture."""
    import subprocess

    root, _ = labeled_store(tmp_path)
    os.unlink(root / "f001.png")
    FrameStore(root)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(root), str(copy)], check=True)
    picture(copy / "f001.png", 200)
    fs = FrameStore(copy)
    assert fs.labeled_ids() == [] and len(list_trash(copy)) == 1


def test_a_label_that_cannot_go_to_the_trash_is_kept_aside_and_the_start_goes_on(tmp_path, monkeypatch):
    import polypal.serving.framestore as framestore

    root, _ = labeled_store(tmp_path)
    picture(root / "f001.png", 250)
    picture(root / "f003.png", 77)  # a new frame, registered by the same start
    real = os.replace

    def full_disk(src, dst, *a, **k):
        if "/trash/" in str(dst):
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(framestore.os, "replace", full_disk)
    fs = FrameStore(root)
    assert "f003" in fs.image_ids() and fs.labeled_ids() == []  # never left on the other picture
    assert (root / "labels" / "final" / "f001.png").exists() and list_trash(root) == []
    monkeypatch.setattr(framestore.os, "replace", real)
    fs = FrameStore(root)
    assert fs.labeled_ids() == [] and not (root / "labels" / "final" / "f001.png").exists()
    assert len(list_trash(root)) == 1


def test_a_trashed_label_goes_back_with_its_info_once_its_picture_is_back(tmp_path):
    root, _ = labeled_store(tmp_path)
    backup = (root / "f001.png").read_bytes()
    picture(root / "f001.png", 250)  # overwritten by mistake
    assert FrameStore(root).labeled_ids() == []
    (root / "f001.png").write_bytes(backup)  # the original back
    FrameStore(root)
    assert restore(root, list_trash(root)[0]["name"])["refused"] == {}
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-a"


def test_a_removed_label_is_restored_with_its_info(tmp_path):
    root, fs = labeled_store(tmp_path)
    fs.remove_label("f001", "final")
    assert restore(root, list_trash(root)[0]["name"])["refused"] == {}
    assert FrameStore(root).label_info("f001", "final")["user"] == "dr-a"


def test_a_second_file_of_the_id_does_not_hide_an_overwrite_of_the_frame(tmp_path):
    root, _ = labeled_store(tmp_path)
    picture(root / "f001.jpg", 123)  # a stray beside the registered f001.png
    FrameStore(root)
    picture(root / "f001.png", 250)
    assert FrameStore(root).labeled_ids() == []


def test_a_label_file_put_by_hand_goes_with_its_frame_when_the_frame_is_replaced_or_deleted(tmp_path):
    """A label file of the id that no row points to yet (copied in by hand, registered at the next start)
    leaves with the frame it was meant for, and never lands on the upload that replaces it."""
    root, fs = labeled_store(tmp_path)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "labels" / "final" / "f002.png")  # not yet registered
    fs.add_image("f002", str(picture(tmp_path / "up.png", 222)), replace=True)
    assert FrameStore(root).labeled_ids() == ["f001"]
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "labels" / "final" / "f000.png")
    fs.remove_image("f000")
    picture(root / "f000.png", 99)  # a new f000 later
    assert FrameStore(root).labeled_ids() == ["f001"]
    assert not (root / "labels" / "final" / "f000.png").exists()


# -- a second review ---------------------------------------------------------------------------------------

def test_a_label_kept_aside_waits_for_its_picture_through_another_frame_of_its_id(tmp_path):
    """The frame is away at a start; meanwhile another picture is uploaded under its id, labeled, deleted:
    none of that takes the kept-aside label, which goes back, with its info, when its picture returns."""
    root, fs = labeled_store(tmp_path)
    shutil.move(root / "f001.png", tmp_path / "A.png")
    fs = FrameStore(root)
    fs.add_image("f001", str(picture(tmp_path / "B.png", 77)))
    fs.remove_image("f001")
    shutil.move(tmp_path / "A.png", root / "f001.png")
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-a"
    # now labeled over by a save for another picture under the id: the kept-aside label goes to the trash
    # with its info and picture, and a restore puts it back only once that picture is there again
    shutil.move(root / "f001.png", tmp_path / "A.png")
    fs = FrameStore(root)
    fs.add_image("f001", str(picture(tmp_path / "B.png", 77)))
    mask = tmp_path / "m2.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask)
    fs.save_label("f001", str(mask), "final", {"user": "dr-b"})
    name = next(e["name"] for e in list_trash(root) if "kept aside" in e["reason"])
    assert restore(root, name)["refused"]  # B is there, and B has a label
    fs.remove_image("f001")
    shutil.move(tmp_path / "A.png", root / "f001.png")
    FrameStore(root)
    assert restore(root, name)["refused"] == {}
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-a"


def test_no_first_record_of_a_half_copied_frame(tmp_path):
    root, fs = labeled_store(tmp_path)
    with fs._tx() as c:  # saved by an earlier version
        c.execute("DELETE FROM label_frames")
    data = (root / "f001.png").read_bytes()
    (root / "f001.png").write_bytes(data[: len(data) // 2])
    FrameStore(root)
    (root / "f001.png").write_bytes(data)
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and list_trash(root) == []


def test_label_files_of_any_case_leave_with_their_frame_and_a_stray_txt_is_no_label(tmp_path):
    root, fs = labeled_store(tmp_path)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "labels" / "final" / "f000.PNG")
    (root / "labels" / "final" / "f002.txt").write_text("notes")
    fs.remove_image("f000")
    picture(root / "f000.png", 99)
    fs = FrameStore(root)
    assert fs.labels_of("f000") == {} and fs.labels_of("f002") == {}


def test_a_replaced_frames_labels_come_back_with_their_info(tmp_path):
    root, fs = labeled_store(tmp_path)
    fs.add_image("f001", str(picture(tmp_path / "B.png", 77)), replace=True)
    fs.remove_image("f001")
    name = next(e["name"] for e in list_trash(root) if "replaced" in e["reason"])
    assert restore(root, name)["refused"] == {}
    fs = FrameStore(root)
    assert fs.labeled_ids() == ["f001"] and fs.label_info("f001", "final")["user"] == "dr-a"


def test_a_trash_folder_cut_before_its_first_move_is_removed_at_start(tmp_path):
    root, fs = labeled_store(tmp_path)
    base = root / ".polypal" / "trash"
    for name, files in (("20260101-000000-a", {"manifest.json.tmp": "{"}),
                        ("20260101-000000-b", {"manifest.json": '{"reason": "x", "time": 1, "files": {"f001.png": "f001.png"}}'})):
        (base / name).mkdir(parents=True)
        for f, text in files.items():
            (base / name / f).write_text(text)
    FrameStore(root)
    assert list_trash(root) == [] and fs.image_ids() == ["f000", "f001", "f002"]


def test_a_save_landing_during_a_restore_keeps_its_own_info(tmp_path, monkeypatch):
    import polypal.serving.trash as trash

    root, fs = labeled_store(tmp_path)
    fs.remove_label("f001", "final")
    name = list_trash(root)[0]["name"]
    mask = tmp_path / "m2.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask)

    class SaveRightAfterTheReconcile(FrameStore):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if not k.get("read_only"):  # the restore's own reconcile; then a server save lands
                FrameStore(root, read_only=True).save_label("f001", str(mask), "final", {"user": "dr-b"})

    monkeypatch.setattr(trash, "FrameStore", SaveRightAfterTheReconcile)
    assert restore(root, name)["refused"] == {}
    assert FrameStore(root, read_only=True).label_info("f001", "final")["user"] == "dr-b"


# -- a third review, through the server ----------------------------------------------------------------------

def test_a_later_label_of_another_extension_is_never_displaced_by_one_kept_aside(tmp_path):
    """A PNG label kept aside for a frame that was away; the same frame back, and a Slicer volume saved for
    it (another extension, so another path): the volume stays its label at every start, the PNG goes to
    the trash with its info."""
    root, fs = labeled_store(tmp_path)
    shutil.move(root / "f001.png", tmp_path / "A.png")
    fs = FrameStore(root)
    fs.add_image("f001", str(tmp_path / "A.png"))  # the same picture back, by upload
    vol = tmp_path / "l2.nii.gz"
    vol.write_bytes(b"a volume label")
    fs.save_label("f001", str(vol), "final", {"user": "dr-b"})
    for _ in range(2):
        fs = FrameStore(root)
        assert fs.label_path("f001", "final").endswith("f001.nii.gz") and fs.label_info("f001", "final")["user"] == "dr-b"
    assert sorted(os.listdir(root / "labels" / "final")) == ["f001.nii.gz"]
    [entry] = [e for e in list_trash(root) if "kept aside" in e["reason"]]
    assert entry["files"] == {"labels-final-f001.png": "labels/final/f001.png"}


def test_a_second_label_file_put_by_hand_beside_a_label_goes_to_the_trash(tmp_path):
    root, fs = labeled_store(tmp_path)
    (root / "labels" / "final" / "f001.nii.gz").write_bytes(b"another label of the same frame")
    fs = FrameStore(root)
    assert fs.label_path("f001", "final").endswith("f001.png") and fs.label_info("f001", "final")["user"] == "dr-a"
    assert not (root / "labels" / "final" / "f001.nii.gz").exists()
    assert [e["reason"] for e in list_trash(root)] == ["a second label file of frame f001 (labels/final/f001.png "
                                                      "is its 'final' label)"]


def test_a_label_removed_after_its_frame_was_overwritten_goes_back_only_onto_its_picture(tmp_path):
    root, fs = labeled_store(tmp_path)
    backup = (root / "f001.png").read_bytes()
    picture(root / "f001.png", 250)  # overwritten while the server runs (no start in between)
    fs.remove_label("f001", "final")
    name = list_trash(root)[0]["name"]
    assert "another picture" in next(iter(restore(root, name)["refused"].values()))
    (root / "f001.png").write_bytes(backup)
    assert restore(root, name)["refused"] == {}
    assert FrameStore(root).label_info("f001", "final")["user"] == "dr-a"


def test_training_and_export_leave_out_a_label_whose_frame_changed_while_the_server_runs(tmp_path, capsys):
    from polypal.serving import label_frames
    from polypal.serving.export import main as export

    root, fs = labeled_store(tmp_path)
    mask = tmp_path / "m.png"
    fs.save_label("f002", str(mask), "final")
    os.utime(root / "f002.png")  # touched: the same picture
    picture(root / "f001.png", 250)  # another picture, no start in between
    off = label_frames.off_their_picture(fs, fs.labeled_ids())
    assert list(off) == ["f001"] and "changed on disk" in off["f001"]
    assert export([str(root), str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out" / "images")) == ["f002.png"] and "left out f001" in capsys.readouterr().err


def test_two_frames_of_one_size_and_time_swapped_by_hand_are_told_apart(tmp_path):
    """Uncompressed TIFFs of one size, extracted from one archive (one mtime): swapped by mv, the label does
    not follow the name onto the other picture."""
    root = tmp_path / "s"
    root.mkdir()
    for i in range(2):
        Image.fromarray(np.full((20, 30, 3), 40 * i + 5, np.uint8)).save(root / f"f{i}.tif")
        os.utime(root / f"f{i}.tif", ns=(1_700_000_000 * 10**9,) * 2)
    assert (root / "f0.tif").stat().st_size == (root / "f1.tif").stat().st_size
    fs = FrameStore(root)
    mask = tmp_path / "m.png"
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(mask)
    fs.save_label("f0", str(mask), "final")
    os.rename(root / "f0.tif", root / "t.tif")
    os.rename(root / "f1.tif", root / "f0.tif")
    os.rename(root / "t.tif", root / "f1.tif")
    assert FrameStore(root).labeled_ids() == []


def test_folders_are_neither_labels_nor_frames(tmp_path):
    root, fs = labeled_store(tmp_path)
    (root / "labels" / "final" / "f002.png").mkdir()
    os.unlink(root / "f001.png")
    (root / "f001.png").mkdir()  # a folder in the labeled frame's place
    fs = FrameStore(root)
    assert fs.labeled_ids() == [] and "f001" not in fs.image_ids()
    assert fs._conn().execute("SELECT COUNT(*) FROM detached_labels").fetchone()[0] == 1  # kept aside


def test_through_the_server_a_label_is_not_served_over_another_picture_put_in_its_frames_place(tmp_path):
    """A labeled frame overwritten by hand with another picture while the server runs: downloading its label
    is refused with why (an annotator shown it over the new picture could save it as that picture's label)
    until a new label is saved; the same picture copied back byte for byte is served its label again."""
    import io

    import pytest

    from server_utils import Server, http, multipart

    pytest.importorskip("monailabel")
    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(3):
        picture(studies / f"fr{i:03d}.png", 40 * i, size=(48, 64))
    original = (studies / "fr001.png").read_bytes()
    srv = Server(studies, tmp_path).start()

    def save(value):
        buf = io.BytesIO()
        Image.fromarray(np.full((48, 64), value, np.uint8)).save(buf, format="PNG")
        body, ct = multipart({"params": "{}"}, {"label": ("fr001.png", buf.getvalue())})
        s, r = http("PUT", f"{srv.url}/datastore/label?image=fr001&tag=final", body, {"Content-Type": ct})
        assert s == 200, r

    def download():
        return http("GET", f"{srv.url}/datastore/label?label=fr001&tag=final")

    try:
        save(255)
        assert download()[0] == 200
        picture(studies / "fr001.png", 200, size=(48, 64))  # another picture, by hand
        s, r = download()
        assert s == 409 and "fr001.png was changed on disk" in r["detail"], (s, r)
        (studies / "fr001.png").write_bytes(original)  # the drawn-on picture back
        assert download()[0] == 200
        picture(studies / "fr001.png", 200, size=(48, 64))
        assert download()[0] == 409
        save(0)  # the annotator labels the new picture
        s, body = download()
        assert s == 200 and np.asarray(Image.open(io.BytesIO(body))).max() == 0
    finally:
        srv.stop()
