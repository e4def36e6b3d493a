"""polypal-export: the labeled set in the Kvasir layout, readable by polypal.data, with a manifest."""

import csv
from pathlib import Path
import json

import numpy as np
from PIL import Image

from conftest import synth_frame
from polypal.data import load_folder
from polypal.serving.export import main
from polypal.serving.framestore import FrameStore


def test_export_round_trip(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    masks = {}
    for i in range(5):
        img, m = synth_frame(rng, 40, 56)
        Image.fromarray(img).save(studies / f"fr{i}.png")
        masks[f"fr{i}"] = m
    store = FrameStore(studies)
    for i in ("fr1", "fr3"):  # saved as 0/1 label maps, exported as 0/255
        Image.fromarray(masks[i].astype(np.uint8)).save(tmp_path / "l.png")
        store.save_label(i, str(tmp_path / "l.png"), "final", {"client_id": "dr-a"})
    store.update_image_info("fr3", {"served": {"al_strategy": "bvsb", "picked_by": "uncertainty", "cycle": 2,
                                               "model_version": "v9", "client_id": "dr-b"}})
    out = tmp_path / "out"
    assert main([str(studies), str(out)]) == 0
    fs = load_folder(out, size=32)
    assert fs.names == ["fr1", "fr3"]
    for i in ("fr1", "fr3"):
        got = np.asarray(Image.open(out / "masks" / f"{i}.png"))
        assert set(np.unique(got)) <= {0, 255} and ((got > 0) == masks[i]).all()
    rows = json.loads((out / "manifest.json").read_text())["frames"]
    r3 = next(r for r in rows if r["id"] == "fr3")
    assert r3["annotator"] == "dr-a" and r3["picked_by"] == "uncertainty" and r3["cycle"] == 2
    assert r3["served_by_strategy"] == "bvsb" and r3["model_version"] == "v9" and r3["labeled_at"]
    with open(out / "manifest.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["fr1", "fr3"]
    assert main([str(studies), str(out)]) == 2  # never into a non-empty folder
    assert not (out / "quality.png").exists()  # never served: no quality curve
    # served: the annotator is the one the server credited (the signed-in user who saved it), not what the
    # label's info says (a client's to write: any annotator could rename the author after the fact)
    from polypal.serving import ActiveLearningState

    import time

    log = ActiveLearningState(studies / ".polypal")
    log.add_effort("fr3", "dr-server", None, time.time(), "v9")  # (the server's record of that save)
    log.add_effort("fr1", "dr-earlier", None, time.time() - 7200, "v8")  # of an older save: not this label's
    store.update_label_info("fr3", "final", {"client_id": "mallory"})
    assert main([str(studies), str(tmp_path / "out2")]) == 0
    rows = {r["id"]: r for r in json.loads((tmp_path / "out2" / "manifest.json").read_text())["frames"]}
    assert rows["fr3"]["annotator"] == "dr-server" and rows["fr1"]["annotator"] == "dr-a"


def test_export_carries_the_quality_curve(tmp_path):
    """Once the folder was served, the export has the per-model quality curve as JSON and as a PNG."""
    from polypal.serving import ActiveLearningState

    studies = tmp_path / "studies"
    studies.mkdir()
    img, m = synth_frame(np.random.default_rng(1), 40, 56)
    Image.fromarray(img).save(studies / "fr0.png")
    FrameStore(studies)  # served: the datastore exists
    st = ActiveLearningState(studies / ".polypal")  # where the server keeps its state (--conf state_dir)
    for k, d in enumerate((0.4, 0.5, 0.6)):
        st.add_quality(f"a{k}", "v1", d, ts=100.0 + k)
    st.add_quality("b0", "v2", 0.8, ts=200.0)
    out = tmp_path / "out"
    assert main([str(studies), str(out)]) == 0
    q = json.loads((out / "quality.json").read_text())
    assert [(c["model"], c["labels"], c["mean_dice"]) for c in q["by_model"]] == [(1, 3, 0.5), (2, 1, 0.8)]
    png = Image.open(out / "quality.png")
    assert png.format == "PNG" and png.size[0] > 300


def test_export_cli_errors_leave_nothing_half_written(tmp_path, capsys):
    """A label that does not fit its frame: an error naming it, and no output folder (a half export would
    make the next try refuse a non-empty folder); a missing studies folder is not created."""
    import numpy as np
    from PIL import Image

    from polypal.serving.export import main
    from polypal.serving.framestore import FrameStore

    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 50 * i, np.uint8)).save(studies / f"f{i}.png")
    store = FrameStore(studies)
    for i in range(3):
        m = tmp_path / f"m{i}.png"
        Image.fromarray(np.ones((20, 30), np.uint8)).save(m)
        store.save_label(f"f{i}", str(m), "final")
    Image.fromarray(np.ones((5, 5), np.uint8)).save(studies / "labels" / "final" / "f1.png")  # by hand
    assert main([str(studies), str(tmp_path / "out")]) == 1
    assert "f1.png" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    assert main([str(tmp_path / "nope"), str(tmp_path / "out2")]) == 2 and not (tmp_path / "nope").exists()
    dataset = tmp_path / "kvasir"  # a dataset folder, never served: refused, and nothing written into it
    (dataset / "images").mkdir(parents=True)
    (dataset / "masks").mkdir()
    capsys.readouterr()
    assert main([str(dataset), str(tmp_path / "out3")]) == 2
    err = capsys.readouterr().err
    assert "not a studies folder a polyp-al server has used" in err and "images/" in err, err
    assert sorted(p.name for p in dataset.iterdir()) == ["images", "masks"] and not (tmp_path / "out3").exists()
    Image.fromarray(np.ones((20, 30), np.uint8)).save(studies / "labels" / "final" / "f1.png")
    assert main([str(studies), str(tmp_path / "out")]) == 0 and (tmp_path / "out" / "manifest.csv").exists()
    # a tag that is no tag, or that no label has (a typo): refused before anything is written, not an
    # empty export that looks like a success
    capsys.readouterr()
    for tag, said in (("../x", "label tag"), ("fianl", "no label has the tag 'fianl'; tags in")):
        assert main([str(studies), str(tmp_path / "out4"), "--tag", tag]) == 2, tag
        assert said in capsys.readouterr().err
        assert not (tmp_path / "out4").exists()
    store.save_label("f0", str(tmp_path / "m0.png"), "second-reader")
    assert main([str(studies), str(tmp_path / "out4"), "--tag", "second-reader"]) == 0
    assert "exported 1 labeled frames" in capsys.readouterr().out


def test_a_frame_gone_during_the_export_is_left_out_and_a_broken_label_is_an_error(tmp_path):
    """A labeled frame deleted after the export took its list: left out, the rest exported (every export
    answered 500 while frames were deleted). A label or frame whose row is there but whose file is
    unreadable or missing stays an error."""
    import pytest

    from polypal.data import DataError
    from polypal.serving.export import export_labeled

    studies = tmp_path / "studies"
    studies.mkdir()
    rng = np.random.default_rng(1)
    masks = []
    for i in range(3):
        img, m = synth_frame(rng, 40, 56)
        Image.fromarray(img).save(studies / f"fr{i}.png")
        masks.append(m)
    store = FrameStore(studies)
    for i, m in enumerate(masks):
        Image.fromarray(m.astype(np.uint8)).save(tmp_path / "l.png")
        store.save_label(f"fr{i}", str(tmp_path / "l.png"), "final", {})
    ids = store.labeled_ids("final")  # the export's list, taken before a delete
    store.remove_image("fr1")
    rows = export_labeled(studies, tmp_path / "out", ids=ids)
    assert [r["id"] for r in rows] == ["fr0", "fr2"]
    Path(store.label_path("fr2", "final")).write_bytes(b"not a png")
    with pytest.raises(DataError, match="fr2"):
        export_labeled(studies, tmp_path / "out2")
    Path(store.image_path("fr0")).unlink()  # its row is there, its file is not: an error, not left out
    with pytest.raises(DataError, match="fr0"):
        export_labeled(studies, tmp_path / "out3")


def test_export_of_unserved_empty_or_damaged_folders_and_stale_copies(tmp_path, capsys):
    """A probe: an ingested-only folder (.polypal/ with video.sqlite) got a datastore created in it and
    "exported 0 labeled frames", exit 0; an emptied datastore.sqlite beside labels exported 0 frames, exit
    0; a damaged one gave a traceback; copies left by a killed export stayed beside OUT for ever."""
    import numpy as np
    from PIL import Image

    from polypal.serving.export import main
    from polypal.serving.framestore import FrameStore

    ingested = tmp_path / "ingested"
    (ingested / ".polypal").mkdir(parents=True)
    (ingested / ".polypal" / "video.sqlite").write_bytes(b"")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(ingested / "v_000000.png")
    assert main([str(ingested), str(tmp_path / "o1")]) == 2
    assert "not a studies folder a polyp-al server has used" in capsys.readouterr().err
    assert sorted(p.name for p in (ingested / ".polypal").iterdir()) == ["video.sqlite"]
    assert not (ingested / "labels").exists() and not (tmp_path / "o1").exists()

    studies = tmp_path / "studies"
    studies.mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(studies / "f0.png")
    m = tmp_path / "m.png"
    Image.fromarray(np.ones((20, 30), np.uint8)).save(m)
    FrameStore(studies).save_label("f0", str(m), "final")
    db = studies / ".polypal" / "datastore.sqlite"
    import sqlite3

    c = sqlite3.connect(db)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, to keep it as bytes
    c.close()

    def only_main_file():
        for f in studies.glob(".polypal/datastore.sqlite-*"):
            f.unlink()

    kept = db.read_bytes()
    only_main_file()
    db.write_bytes(b"")
    assert main([str(studies), str(tmp_path / "o2")]) == 1
    assert "is empty while" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    db.write_bytes(b"this is not a database" * 300)
    assert main([str(studies), str(tmp_path / "o3")]) == 1
    err = capsys.readouterr().err
    assert "cannot be used" in err and "Traceback" not in err and not (tmp_path / "o3").exists(), err
    assert err.count("backup") == 1, err  # the advice once (it was given twice)
    db.write_bytes(kept)
    only_main_file()
    from polypal.serving.export import _host

    dead = tmp_path / f".o4.partial-{_host()}-999999999"  # a pid no process here has
    elsewhere = tmp_path / ".o4.partial-otherhost-999999999"  # another machine's (a shared folder)
    for d in (dead, elsewhere):
        (d / "images").mkdir(parents=True)
    assert main([str(studies), str(tmp_path / "o4")]) == 0
    assert not dead.exists() and elsewhere.exists() and (tmp_path / "o4" / "manifest.json").exists()


def test_an_annotator_is_always_a_plain_name_and_csv_cells_never_start_a_formula(tmp_path):
    """Labels saved before saves checked their client_id could hold a list, a dict or control characters in
    their info, which the export wrote out as the annotator (a probe). Such values credit no one now. A cell
    starting with spaces or a line break and then a formula is escaped too."""
    from polypal.serving.export import _cell, export_labeled

    studies = tmp_path / "studies"
    studies.mkdir()
    clients = (["x", "y"], {"a": 1}, "alice\x00\x1b[31m", "dr-a")
    for k in range(len(clients)):
        Image.fromarray(np.full((20, 30, 3), 40 * k, np.uint8)).save(studies / f"f{k}.png")
    store = FrameStore(studies)
    m = tmp_path / "m.png"
    Image.fromarray(np.ones((20, 30), np.uint8)).save(m)
    for k, client in enumerate(clients):  # (the store takes any info: the server's checks are before it)
        store.save_label(f"f{k}", str(m), "final", {"client_id": client})
    # the server's own credit, as an older version wrote it (any string): a name with a terminal escape
    from polypal.serving import ActiveLearningState

    ts = store.label_info("f3", "final")["ts"]
    ActiveLearningState(studies / ".polypal").add_effort("f3", "bob\x1b[31m\x07", None, ts, "v1")
    rows = {r["id"]: r["annotator"] for r in export_labeled(studies, tmp_path / "out")}
    assert rows == {"f0": None, "f1": None, "f2": None, "f3": "dr-a"}, rows
    for v in (" =1+1", "\n=1+1", "  @SUM(A1)"):
        assert _cell(v) == "'" + v
    assert _cell("dr-a") == "dr-a"


def test_the_servers_export_makes_one_archive_at_a_time(tmp_path):
    """GET /datastore/dataset copies and zips the whole labeled set into the temp dir: 200 requests at once
    from one client ran 16 exports in parallel, past the disk floor (a review, 2026-12-07). One at a time
    now; a request while one is being made gets 429."""
    import sys
    import zipfile

    import pytest
    from fastapi import HTTPException

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "polyp_al"))
    try:
        from lib import datastore, infer
    finally:
        sys.path.pop(0)
    root = tmp_path / "studies"
    root.mkdir()
    frame, m = synth_frame(np.random.default_rng(0), 32, 32)
    Image.fromarray(frame).save(root / "f0.png")
    Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / "m.png")
    ds = datastore.PolypDatastore(str(root))
    ds.store.save_label("f0", str(tmp_path / "m.png"), "final")
    with datastore._EXPORTING:  # an export under way
        with pytest.raises(HTTPException) as e:
            ds.get_dataset_archive(None)
        assert e.value.status_code == 429 and "one at a time" in e.value.detail
    path = ds.get_dataset_archive(None)
    try:  # in the server's own folder, which the next start removes once this server is gone (a kill left it)
        assert Path(path).parent == Path(infer._result_dir()) and Path(path).parent.name.startswith("polypal-res-")
        assert not [p for p in Path(path).parent.iterdir() if p.is_dir()]  # the copy it zipped is gone
        z = zipfile.ZipFile(path)
        assert any(n.startswith("images/") for n in z.namelist())
        assert json.loads(z.read("manifest.json"))["source"] == "studies"  # not where the server keeps it
    finally:
        Path(path).unlink()
