"""polypal-trash: list, restore and purge the datastore's trash (a real FrameStore on generated frames)."""

import json
import os
import time

import numpy as np
from PIL import Image

from polypal.serving.framestore import FrameStore
from polypal.serving.trash import list_trash, main, purge, restore


def make_store(tmp_path, n=3):
    root = tmp_path / "studies"
    root.mkdir()
    for i in range(n):
        Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)).save(root / f"f{i:03d}.png")
    m = tmp_path / "m.png"
    Image.fromarray((np.arange(600).reshape(20, 30) % 2).astype(np.uint8)).save(m)
    return root, FrameStore(root), m


def test_a_deleted_frame_and_its_label_come_back(tmp_path, capsys):
    root, fs, m = make_store(tmp_path)
    fs.save_label("f001", str(m), "final")
    before = (root / "f001.png").read_bytes(), (root / "labels" / "final" / "f001.png").read_bytes()
    fs.remove_image("f001")
    assert fs.image_ext("f001") is None
    [entry] = list_trash(root)
    assert entry["reason"] == "image f001 removed"
    assert sorted(entry["files"].values()) == ["f001.png", os.path.join("labels", "final", "f001.png")]
    assert main(["list", str(root)]) == 0 and entry["name"] in capsys.readouterr().out
    assert main(["restore", str(root), entry["name"]]) == 0
    # back in place, byte for byte, and listed by the store (a running server reads the same database)
    assert ((root / "f001.png").read_bytes(), (root / "labels" / "final" / "f001.png").read_bytes()) == before
    assert fs.image_ext("f001") == ".png" and fs.label_path("f001", "final")
    assert list_trash(root) == []


def test_a_restore_stopped_half_way_is_finished_by_the_next(tmp_path):
    """A restore stopped (Ctrl-C, a kill) after it put the frame back and before its label: the next restore
    of the folder refused both for ever ("missing from the trash folder", "its frame was not restored"), and
    a purge would then delete the acknowledged label (a crash probe). Now the next restore finishes it: the
    frame in place is the trash's own file, or the picture the label was drawn on."""
    root, fs, m = make_store(tmp_path)
    for i in ("f001", "f002"):
        fs.save_label(i, str(m), "final", {"client_id": "dr-a"})
    label_bytes = (root / "labels" / "final" / "f001.png").read_bytes()
    for i, unlinked in (("f001", True), ("f002", False)):
        fs.remove_image(i)
        entry = next(e for e in list_trash(root) if e["reason"] == f"image {i} removed")
        folder = root / ".polypal" / "trash" / entry["name"]
        frame_in_trash = next(folder / n for n, rel in entry["files"].items() if rel == f"{i}.png")
        os.link(frame_in_trash, root / f"{i}.png")  # where the restore stopped: the frame linked back,
        if unlinked:  # and (f001) its trash copy removed, or (f002) not yet, and its label linked back too
            os.unlink(frame_in_trash)
        else:
            label_in_trash = next(folder / n for n, rel in entry["files"].items() if rel.startswith("labels"))
            os.link(label_in_trash, root / "labels" / "final" / f"{i}.png")
        got = restore(root, entry["name"])
        assert not got["refused"] and sorted(got["restored"]) == sorted(entry["files"].values()), got
        assert (root / "labels" / "final" / f"{i}.png").read_bytes() == label_bytes
        assert fs.image_ext(i) == ".png" and fs.label_path(i, "final")
        assert fs.label_info(i, "final").get("client_id") == "dr-a"
    assert list_trash(root) == []
    # a symlink in a trash folder to the frame in place is no file of the trash: not taken as put back
    fs.remove_image("f000")
    entry = list_trash(root)[0]
    folder = root / ".polypal" / "trash" / entry["name"]
    frame_in_trash = next(folder / n for n, rel in entry["files"].items() if rel == "f000.png")
    Image.fromarray(np.full((20, 30, 3), 77, np.uint8)).save(root / "other.png")
    os.replace(frame_in_trash, tmp_path / "kept.png")
    os.link(root / "other.png", root / "f000.png")
    os.symlink(root / "f000.png", frame_in_trash)
    got = restore(root, entry["name"])
    assert "f000.png" in got["refused"], got


def test_a_restore_stopped_before_the_labels_info_is_finished_with_it(tmp_path, monkeypatch):
    """A restore killed after it linked a label back and before it put back the label's info: the next
    restore puts the info back and empties the folder. Before, the label had already left the trash, so the
    next restore refused it for ever ("missing from the trash folder") and the label stayed without its info
    (who drew it, when)."""
    import polypal.serving.trash as trash

    root, fs, m = make_store(tmp_path)
    fs.save_label("f001", str(m), "final", {"client_id": "dr-a"})
    fs.remove_image("f001")
    [entry] = list_trash(root)
    real = trash._restore_info

    def killed(*a, **k):
        raise KeyboardInterrupt  # where the kill lands

    monkeypatch.setattr(trash, "_restore_info", killed)
    try:
        restore(root, entry["name"])
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(trash, "_restore_info", real)
    got = restore(root, entry["name"])
    assert not got["refused"], got
    assert fs.label_path("f001", "final") and fs.label_info("f001", "final").get("client_id") == "dr-a"
    assert list_trash(root) == []


def test_restore_never_overwrites_and_keeps_what_it_refuses(tmp_path, capsys):
    root, fs, m = make_store(tmp_path)
    fs.save_label("f000", str(m), "final")
    m2 = tmp_path / "m2.png"
    Image.fromarray((np.arange(600).reshape(20, 30) % 3 == 0).astype(np.uint8)).save(m2)
    fs.save_label("f000", str(m2), "final")  # an overwrite: the first label goes to the trash
    new = (root / "labels" / "final" / "f000.png").read_bytes()
    fs.remove_image("f002")
    Image.fromarray(np.full((20, 30, 3), 99, np.uint8)).save(tmp_path / "other.png")
    fs.add_image("f002", str(tmp_path / "other.png"))  # the id is taken again by another frame
    other = (root / "f002.png").read_bytes()
    names = {e["reason"]: e["name"] for e in list_trash(root)}
    # the label's place is taken by the newer label; the frame id by the other frame: both refused, kept
    r = restore(root, names["label final of f000 replaced"])
    assert r["restored"] == [] and "has a 'final' label again" in r["refused"][os.path.join("labels", "final", "f000.png")]
    assert main(["restore", str(root), names["image f002 removed"]]) == 1
    assert "frame id 'f002' is in the datastore again" in capsys.readouterr().err
    assert (root / "labels" / "final" / "f000.png").read_bytes() == new and (root / "f002.png").read_bytes() == other
    assert len(list_trash(root)) == 2  # nothing refused left the trash
    # a label whose frame is gone is not restored either
    fs.remove_image("f000")  # trashes f000 and its current label
    r = restore(root, names["label final of f000 replaced"])
    assert "its frame 'f000' is not in the datastore" in next(iter(r["refused"].values()))
    # a folder name that is not a trash folder: a clear error, nothing read outside the trash
    assert main(["restore", str(root), "../.."]) == 2 and "no trash folder" in capsys.readouterr().err


def test_purge_says_first_and_deletes_only_old_folders_with_yes(tmp_path, capsys):
    root, fs, m = make_store(tmp_path)
    fs.remove_image("f000")
    fs.remove_image("f001")
    old, young = sorted(list_trash(root), key=lambda e: e["name"])
    man = root / ".polypal" / "trash" / old["name"] / "manifest.json"
    data = json.loads(man.read_text())
    data["time"] = time.time() - 40 * 86400
    man.write_text(json.dumps(data))
    assert [e["name"] for e in purge(root, 30)] == [old["name"]] and len(list_trash(root)) == 2  # a dry run
    assert main(["purge", str(root), "--older-than", "30"]) == 0 and "add --yes" in capsys.readouterr().out
    assert main(["purge", str(root), "--older-than", "30", "--yes"]) == 0
    assert [e["name"] for e in list_trash(root)] == [young["name"]]
    assert main(["list", str(tmp_path)]) == 2  # not a studies folder a server has used


def test_a_purge_never_deletes_the_files_of_a_write_under_way(tmp_path, monkeypatch):
    """A delete moves its files into a trash folder inside its transaction and moves them back when the
    transaction fails (a full disk). A purge with --older-than 0 running meanwhile deleted that folder, and
    the frame with it (a race found by reading the code). Now a purge takes each folder under the datastore's
    write lock, and finds it gone once the failed write put its files back."""
    import threading

    import pytest

    import polypal.serving.trash as trash

    root, fs, m = make_store(tmp_path)
    fs.remove_image("f000")
    assert purge(root, 0, dry_run=True) == []  # under a minute old: never purged (a failed COMMIT's undo
    monkeypatch.setattr(trash, "MIN_AGE_S", 0.0)  # takes the lock again before moving files back); the lock:
    assert len(purge(root, 0, dry_run=False)) == 1
    before = (root / "f001.png").read_bytes()
    got = {}
    purger = threading.Thread(target=lambda: got.setdefault("purged", purge(root, 0, dry_run=False)))
    with pytest.raises(OSError, match="disk full"):
        with fs._undoable():
            fs.trash({"f001.png": str(root / "f001.png")}, "image f001 removed", frame="f001")
            purger.start()
            purger.join(1.0)  # the purge sees the folder (its time is past the cutoff) while the write is on
            raise OSError("disk full")  # and the write fails: its files go back
    purger.join(30)
    assert not purger.is_alive()
    assert (root / "f001.png").read_bytes() == before and fs.image_ext("f001") == ".png"
    assert got["purged"] == [] and list_trash(root) == []


def test_a_frame_deleted_while_its_label_is_restored_never_gets_it_back(tmp_path, monkeypatch):
    """A restore checked that the label's frame was the picture it was drawn on, then linked the label back
    without the datastore's write lock: a delete of the frame in between (a server answering a client) left
    the label in labels/final with no frame, and a new picture uploaded under that id later took it at the
    next start (a review, 2026-12-07). The check and the link are now one step under the lock: the delete
    waits, and takes the label to the trash with its frame."""
    import threading

    import polypal.serving.trash as trash

    root, fs, m = make_store(tmp_path)
    fs.save_label("f001", str(m), "final", {"client_id": "dr-a"})
    fs.remove_label("f001", "final")
    [entry] = list_trash(root)
    deleter = threading.Thread(target=lambda: FrameStore(root).remove_image("f001"))
    checked = trash._why_not

    def then_a_delete(*a, **k):  # the frame's delete arrives right after the check
        why = checked(*a, **k)
        if not deleter.is_alive() and deleter.ident is None:
            deleter.start()
            deleter.join(1.0)
        return why

    monkeypatch.setattr(trash, "_why_not", then_a_delete)
    got = restore(root, entry["name"])
    deleter.join(30)
    assert not deleter.is_alive()
    assert fs.image_ext("f001") is None
    # restored, then trashed with its frame: never a label without its frame, where a new f001 would take it
    assert got["restored"] == [os.path.join("labels", "final", "f001.png")], got
    assert not (root / "labels" / "final" / "f001.png").exists()
    assert any(os.path.join("labels", "final", "f001.png") in e["files"].values() for e in list_trash(root))


def test_labels_of_a_replaced_frame_never_land_on_the_new_one(tmp_path):
    root, fs, m = make_store(tmp_path)
    fs.save_label("f000", str(m), "final")
    fs.save_label("f001", str(m), "final")
    fs.remove_label("f001", "final")  # kept with the signature of f001's file at that time
    Image.fromarray(np.full((20, 30, 3), 77, np.uint8)).save(tmp_path / "new.jpg")
    fs.add_image("f000", str(tmp_path / "new.jpg"), replace=True)  # old f000.png and its label to the trash
    fs.add_image("f001", str(tmp_path / "new.jpg"), replace=True)  # f001 replaced after its label was kept
    names = {e["reason"]: e["name"] for e in list_trash(root)}
    r = restore(root, names["image f000 replaced by an upload"])
    assert r["restored"] == [] and "is in the datastore again" in r["refused"]["f000.png"]
    assert "was not restored" in r["refused"][os.path.join("labels", "final", "f000.png")]
    r = restore(root, names["label final of f001 removed"])
    assert "another picture than the one this label was drawn on" in next(iter(r["refused"].values()))
    assert not fs.label_path("f000", "final") and not fs.label_path("f001", "final")


def test_a_crafted_trash_folder_brings_nothing_in(tmp_path, capsys):
    root, fs, m = make_store(tmp_path)
    fs.remove_image("f002")
    [entry] = list_trash(root)
    folder = root / ".polypal" / "trash" / entry["name"]
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(outside)
    (folder / "zz.png").symlink_to(outside)  # a link to a file outside the studies folder
    (folder / "d.json").write_text("{}")
    man = json.loads((folder / "manifest.json").read_text())
    man["files"].update({"zz.png": "zz.png", "d.json": "datastore_v2.json", "f002.png": "../f002.png"})
    (folder / "manifest.json").write_text(json.dumps(man))
    r = restore(root, entry["name"])
    assert r["restored"] == [] and set(r["refused"]) == {"zz.png", "datastore_v2.json", "../f002.png"}
    assert "not a plain file" in r["refused"]["zz.png"]
    assert not (root / "zz.png").exists() and not (root / "datastore_v2.json").exists() and fs.image_ext("zz") is None
    # a trash folder that is a link to another folder is not one; manifests that are not objects are skipped
    (root / ".polypal" / "trash" / "linked").symlink_to(tmp_path)
    assert main(["restore", str(root), "linked"]) == 2 and "no trash folder" in capsys.readouterr().err
    (folder / "manifest.json").write_text("[1, 2]")
    os.utime(folder, (time.time() - 3600, time.time() - 3600))  # (its time is the folder's: an hour old)
    assert [e["reason"] for e in list_trash(root)] == ["(no readable manifest)"] and purge(root, 0, dry_run=True)


def test_a_frame_file_on_disk_without_its_row_blocks_a_restore_of_its_id(tmp_path):
    root, fs, m = make_store(tmp_path)
    fs.remove_image("f001")
    [entry] = list_trash(root)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "f001.jpg")  # dropped in; no row yet
    r = restore(root, entry["name"])
    assert "is in the datastore again" in r["refused"]["f001.png"] and not (root / "f001.png").exists()


def test_odd_manifests_neither_crash_nor_bring_the_manifest_back(tmp_path, capsys):
    import pytest

    root, fs, m = make_store(tmp_path)
    fs.remove_image("f001")
    [entry] = list_trash(root)
    folder = root / ".polypal" / "trash" / entry["name"]
    man = json.loads((folder / "manifest.json").read_text())
    for when in ("nan", 1e300, -5, "inf"):
        (folder / "manifest.json").write_text(json.dumps({**man, "time": when}))
        assert main(["list", str(root)]) == 0  # shown with the folder's own time, no traceback
        assert abs(list_trash(root)[0]["time"] - folder.lstat().st_mtime) < 1
    capsys.readouterr()
    (folder / "manifest.json").write_text(json.dumps({**man, "files": {**man["files"], "manifest.json": "x.png"}}))
    r = restore(root, entry["name"])
    assert r["restored"] == ["f001.png"] and not (root / "x.png").exists()
    for bad in ("nan", "-1", "inf"):
        with pytest.raises(SystemExit):
            main(["purge", str(root), "--older-than", bad])
    assert "--older-than must be" in capsys.readouterr().err


def test_a_damaged_datastore_database_is_said_not_a_traceback(tmp_path, capsys, monkeypatch):
    import sqlite3

    import polypal.serving.trash as trash

    monkeypatch.setattr(trash, "MIN_AGE_S", 0.0)

    root, fs, m = make_store(tmp_path)
    fs.remove_image("f001")
    [entry] = list_trash(root)
    db = root / ".polypal" / "datastore.sqlite"
    c = sqlite3.connect(db)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    for f in root.glob(".polypal/datastore.sqlite-*"):
        f.unlink()
    db.write_bytes(b"not a database" * 500)
    assert main(["restore", str(root), entry["name"]]) == 1
    err = capsys.readouterr().err
    assert "datastore.sqlite: cannot be used" in err and err.count("backup") == 1, err  # its advice once
    assert main(["purge", str(root), "--older-than", "0", "--yes"]) == 1
    assert "purge stopped" in capsys.readouterr().err
    assert [e["name"] for e in list_trash(root)] == [entry["name"]]


def test_a_purge_leaves_a_folder_being_restored_alone(tmp_path, monkeypatch, capsys):
    """A restore and a purge at once: the purge deleted the folder half-way through the restore, which
    ended in a traceback with a frame restored but not reported (a probe). The restore's marker now keeps
    the purge off; a folder purged before a restore starts is said in a sentence."""
    import polypal.serving.trash as trash

    monkeypatch.setattr(trash, "MIN_AGE_S", 0.0)
    root, fs, m = make_store(tmp_path)
    fs.remove_image("f000")
    fs.remove_image("f001")
    by = {e["reason"]: e["name"] for e in list_trash(root)}
    a, b = by["image f000 removed"], by["image f001 removed"]
    marker = root / ".polypal" / "trash" / a / f"{trash.RESTORING}{os.getpid()}"  # a restore of a, under way
    marker.touch()
    assert [e["name"] for e in purge(root, 0, dry_run=False)] == [b]
    marker.unlink()
    (marker.parent / f"{trash.RESTORING}999999999").touch()  # a restore killed before (a pid no process has)
    assert restore(root, a)["restored"] == ["f000.png"] and list_trash(root) == []  # finished, folder gone
    fs.remove_image("f000")
    [c] = [e["name"] for e in list_trash(root)]
    real = trash._restore

    def purged_meanwhile(studies, folder):
        import shutil

        shutil.rmtree(folder)
        return real(studies, folder)

    monkeypatch.setattr(trash, "_restore", purged_meanwhile)
    assert main(["restore", str(root), c]) == 2
    err = capsys.readouterr().err
    assert "changed while it was restored" in err and "Traceback" not in err, err


def test_a_purge_says_which_folders_it_kept_and_why(tmp_path, monkeypatch, capsys):
    """`purge --older-than 0` within a minute of deletes printed "would delete 0 trash folders, 0 B" and
    nothing about the folders it left for being under a minute old or being restored. Now it says how many
    it kept and why, in a dry run and with --yes."""
    import polypal.serving.trash as trash

    root, fs, m = make_store(tmp_path)
    fs.remove_image("f000")
    fs.remove_image("f001")
    assert main(["purge", str(root), "--older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert "would delete 0 trash folders" in out and "would keep 2 trash folders: 2 under a minute old" in out, out
    assert "run it again in a minute" in out
    assert main(["purge", str(root), "--older-than", "30"]) == 0
    assert "would keep 2 trash folders: 2 newer than --older-than 30 days" in capsys.readouterr().out
    monkeypatch.setattr(trash, "MIN_AGE_S", 0.0)
    a = sorted(e["name"] for e in list_trash(root))[0]
    (root / ".polypal" / "trash" / a / f"{trash.RESTORING}{os.getpid()}").touch()  # a restore of a, under way
    assert main(["purge", str(root), "--older-than", "0"]) == 0
    out = capsys.readouterr().out
    assert "would delete 1 trash folders" in out and "would keep 1 trash folders: 1 being restored" in out, out
    kept = {}
    assert len(purge(root, 0, dry_run=True, kept=kept)) == 1 and kept == {"restoring": 1}
    assert main(["purge", str(root), "--older-than", "0", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "deleted 1 trash folders" in out and "kept 1 trash folders: 1 being restored" in out, out
    assert [e["name"] for e in list_trash(root)] == [a]


def test_a_label_is_never_restored_through_a_linked_folder(tmp_path):
    """``labels/<tag>`` made a symbolic link after a label of that tag went to the trash: a restore would
    link the label into the folder the link names, outside the studies folder. Refused, saying why; the
    server refuses saves and deletes through such a folder too (tests/test_hostile.py)."""
    import pytest

    from polypal.serving.framestore import LinkedFolder

    root, fs, m = make_store(tmp_path)
    fs.save_label("f001", str(m), "extra")
    fs.remove_label("f001", "extra")
    [entry] = list_trash(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "labels" / "extra").rmdir()
    (root / "labels" / "extra").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="labels/extra in the studies folder is a symbolic link"):
        restore(root, entry["name"])
    assert list(outside.iterdir()) == [] and list_trash(root) == [entry]
    with pytest.raises(LinkedFolder, match="labels/extra in the studies folder is a symbolic link"):
        fs.save_label("f002", str(m), "extra")
    assert list(outside.iterdir()) == []
    fs.save_label("f002", str(m), "final")  # another tag's folder: unaffected


def test_a_linked_trash_takes_no_file_out_and_a_purge_deletes_nothing_through_it(tmp_path, capsys):
    """``.polypal/trash`` made a symbolic link: every delete moved its frame and labels out of the studies
    folder, and ``polypal-trash purge --yes`` deleted every old folder where the link pointed. Now a delete is
    refused (the server answers 409, as for a linked label folder), a purge too, and a datastore does not
    open on such a folder (the server does not start)."""
    import pytest

    from polypal.serving.framestore import LinkedFolder

    root, fs, m = make_store(tmp_path)
    fs.save_label("f001", str(m), "final")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "project-2019").mkdir(parents=True)
    old = time.time() - 90 * 86400
    os.utime(elsewhere / "project-2019", (old, old))
    trash = root / ".polypal" / "trash"
    if trash.exists():
        trash.rmdir()
    trash.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(LinkedFolder, match=r"\.polypal/trash in the studies folder is a symbolic link"):
        fs.remove_image("f001")
    with pytest.raises(LinkedFolder, match=r"\.polypal/trash"):
        fs.remove_label("f001", "final")
    assert (root / "f001.png").exists() and (root / "labels" / "final" / "f001.png").exists()
    assert os.listdir(elsewhere) == ["project-2019"]
    with pytest.raises(ValueError, match=r"\.polypal/trash in the studies folder is a symbolic link"):
        purge(root, 30, dry_run=False)
    assert main(["purge", str(root), "--older-than", "30", "--yes"]) == 1
    assert "symbolic link" in capsys.readouterr().err and (elsewhere / "project-2019").is_dir()
    with pytest.raises(LinkedFolder, match=r"\.polypal/trash"):
        FrameStore(root)
