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


def test_restore_never_overwrites_and_keeps_what_it_refuses(tmp_path, capsys):
    root, fs, m = make_store(tmp_path)
    fs.save_label("f000", str(m), "final")
    fs.save_label("f000", str(m), "final")  # an overwrite: the first label goes to the trash
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
