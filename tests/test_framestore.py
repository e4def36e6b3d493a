import os
import threading

import numpy as np
import pytest
from PIL import Image

from polypal.framestore import FrameStore, InvalidName, check_name


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
    assert not any(n.startswith(".upload-") for n in os.listdir(root / "labels" / "final"))


def test_info_updates_from_two_processes_are_not_lost(tmp_path):
    root = make_frames(tmp_path / "s", 3)
    a, b = FrameStore(root), FrameStore(root)  # two independent handles, as server + subprocess
    a.update_image_info("f000", {"x": 1})
    b.update_image_info("f000", {"y": 2})
    assert a.image_info("f000")["x"] == 1 and a.image_info("f000")["y"] == 2


def test_concurrent_label_saves_and_info_updates(tmp_path):
    root = make_frames(tmp_path / "s", 40)
    fs = FrameStore(root)
    m = mask_file(tmp_path)
    errors = []

    def saver(k):
        try:
            other = FrameStore(root, read_only=True)
            for i in range(k, 40, 4):
                other.save_label(f"f{i:03d}", str(m), "final")
                other.update_image_info(f"f{i:03d}", {"score": i})
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=saver, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(fs.labeled_ids()) == 40
    assert all(fs.image_info(f"f{i:03d}")["score"] == i for i in range(40))


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
