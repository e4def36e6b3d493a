"""What next sample and /info keep between requests (polypal.serving.sqlite_db.cached): the labeled set, the
annotators' pace and the quality curve are read again whenever their table changes, whoever changes it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypal.serving.annotations import SCHEMA, AnnotationLog
from polypal.serving.framestore import FrameStore
from polypal.serving.sqlite_db import SQLiteDB, counted

LIB = Path(__file__).resolve().parents[1] / "lib"


def make_store(tmp_path, n=3):
    root = tmp_path / "s"
    root.mkdir()
    for i in range(n):
        Image.fromarray(np.full((20, 30, 3), i, np.uint8)).save(root / f"f{i:03d}.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "m.png")
    return root, tmp_path / "m.png"


def test_the_labeled_set_follows_labels_saved_and_removed_by_another_process(tmp_path):
    root, mask = make_store(tmp_path)
    fs = FrameStore(root)
    assert fs.labeled_set() == frozenset() and fs.labeled_set() is fs.labeled_set()  # kept between requests
    other = ("import sys; from polypal.serving.framestore import FrameStore; fs = FrameStore(sys.argv[1], read_only=True); "
             "getattr(fs, sys.argv[2])('f001', *sys.argv[3:])")
    run = lambda *a: subprocess.run([sys.executable, "-c", other, str(root), *a], check=True,  # noqa: E731
                                    env={"PYTHONPATH": str(LIB)}, timeout=120)
    run("save_label", str(mask), "final")
    assert fs.labeled_set() == {"f001"} and fs.labeled_ids() == ["f001"]
    run("save_label", str(mask), "original")  # another tag: the final set is the same
    assert fs.labeled_set() == {"f001"} and fs.labeled_set("original") == {"f001"}
    run("remove_label", "final")
    assert fs.labeled_set() == frozenset() and fs.labeled_ids() == [] and fs.labeled_set("original") == {"f001"}


def test_a_value_read_inside_a_rolled_back_transaction_is_never_served_later(tmp_path):
    """Inside a transaction the count already includes its own uncommitted change: kept, the value would be
    served again when another connection's commit brings the count back to the same number."""
    db = SQLiteDB(tmp_path / "d.sqlite", "CREATE TABLE t (x INTEGER);" + counted("t"))
    read = lambda: db.cached("k", "t", lambda: sorted(r[0] for r in db.conn().execute("SELECT x FROM t")))  # noqa: E731
    assert read() == []
    with pytest.raises(RuntimeError):
        with db.tx() as c:
            c.execute("INSERT INTO t VALUES (1)")
            assert read() == [1]
            raise RuntimeError("rolled back")
    with SQLiteDB(db.path).tx() as c:  # another connection: the count moves to where the rolled-back one was
        c.execute("INSERT INTO t VALUES (2)")
    assert read() == [2]


def test_opening_a_database_waits_for_no_other_writer(tmp_path):
    """The schema writes no row: a store opened (an export, a CLI) while the server holds the write lock."""
    root, _ = make_store(tmp_path)
    fs = FrameStore(root)
    with fs._tx():
        db = SQLiteDB(fs.db_path, "")
        db.conn().execute("PRAGMA busy_timeout = 200")
        from polypal.serving.framestore import _SCHEMA
        db.conn().executescript(_SCHEMA)  # raised "database is locked" when the schema inserted a count row


def reference_annotators(rows):
    out = {}
    for client, served, labeled in rows:
        out.setdefault(client, []).append(None if served is None else labeled - served)
    res = {}
    for client, secs in sorted(out.items()):
        known = sorted(x for x in secs if x is not None and x >= 0)
        res[client] = {"labels": len(secs),
                       "median_seconds_per_label": round(float(np.median(known)), 1) if known else None}
    return res


def test_annotators_pace_equals_numpy_and_follows_each_save(tmp_path):
    """Counts and medians from SQL (one indexed walk per annotator) equal numpy's over every row: odd and even
    counts, unknown serving times, clocks that put a save before its serving, an annotator with none known."""
    log = AnnotationLog(SQLiteDB(tmp_path / "s.sqlite", SCHEMA))
    rng = np.random.default_rng(5)
    rows = {}
    for k in range(801):
        client = ["dr-a", "dr-b", "dr-c", "Dr-A"][k % 4] if k < 800 else "late"
        served = None if rng.random() < 0.1 or client == "late" else float(rng.uniform(0, 1e6))
        labeled = (served or 5e5) + float(rng.choice([rng.normal(45, 30), 12.0]))
        rows[f"f{k}"] = (client, served, labeled)
        log.add_effort(f"f{k}", client, served, labeled, "v1")
    assert log.annotators() == reference_annotators(rows.values())
    assert log.annotators()["late"] == {"labels": 1, "median_seconds_per_label": None}
    for k, client in ((0, "dr-b"), (1, "new")):  # a frame labeled again (by another annotator), and a new one
        rows[f"f{k}"] = (client, 100.0, 130.0 + k)
        log.add_effort(f"f{k}", client, 100.0, 130.0 + k, "v2")
        assert log.annotators() == reference_annotators(rows.values())
    res = log.annotators()
    res["dr-a"]["labels"] = -1  # a caller's edit never reaches the next caller
    assert log.annotators()["dr-a"]["labels"] == reference_annotators(rows.values())["dr-a"]["labels"]
    # labels since deleted or trashed (not in the labeled set /info passes) are not counted (a probe: /info's
    # annotators added up to one more than the datastore's labels after a label went to the trash)
    labeled = frozenset(rows) - {"f2", "f800"}
    got = log.annotators(labeled)
    want = reference_annotators(v for k, v in rows.items() if k in labeled)
    assert {k: v["labels"] for k, v in got.items()} == {k: v["labels"] for k, v in want.items()}
    assert "late" not in got and sum(v["labels"] for v in got.values()) == len(labeled)
    # kept between calls, and computed again when the labeled set or the log changes
    assert log.annotators(labeled) == got
    assert sum(v["labels"] for v in log.annotators(labeled - {"f3"}).values()) == len(labeled) - 1
    log.add_effort("f2", "dr-z", 1.0, 2.0, "v3")
    assert log.annotators(labeled | {"f2"})["dr-z"]["labels"] == 1
    assert "dr-z" not in log.annotators(labeled)


def test_the_quality_curve_follows_each_measurement(tmp_path):
    log = AnnotationLog(SQLiteDB(tmp_path / "s.sqlite", SCHEMA))
    assert log.quality()["by_model"] == []
    log.add_quality("f1", "m1", 0.5, ts=1.0)
    assert [(c["version"], c["labels"]) for c in log.quality()["by_model"]] == [("m1", 1)]
    other = AnnotationLog(SQLiteDB(tmp_path / "s.sqlite", SCHEMA))  # another connection, as the training's
    other.add_quality("f2", "m1", 0.7, ts=2.0)
    other.add_quality("f2", "m2", 0.9, ts=3.0)
    curve = log.quality()["by_model"]
    assert [(c["version"], c["labels"], c["mean_dice"]) for c in curve] == [("m1", 2, 0.6), ("m2", 1, 0.9)]


# -- what a review found (each failed on the first version of the caches) ----------------------------------
def test_a_relabel_between_the_counts_and_the_medians_never_fails_info(tmp_path):
    """The annotators' counts and medians are read in one snapshot: a frame labeled again by another
    annotator, committed between the two reads, pointed the old count past the end of the paces
    (ZeroDivisionError: /info, and so every next sample, answered 500)."""
    path = tmp_path / "s.sqlite"
    db = SQLiteDB(path, SCHEMA)
    log = AnnotationLog(db)
    log.add_effort("f1", "alice", 100.0, 130.0, "v1")
    other = AnnotationLog(SQLiteDB(path, SCHEMA))  # another request's connection

    class RelabelAfterTheCounts:  # the connection, with the other annotator's save landing after the GROUP BY
        def __init__(self, c):
            self.c, self.done = c, False

        def __getattr__(self, name):
            return getattr(self.c, name)

        def execute(self, sql, *a):
            r = self.c.execute(sql, *a)
            if "GROUP BY client_id" in sql and not self.done:
                self.done = True
                rows = r.fetchall()
                other.add_effort("f1", "bob", 100.0, 150.0, "v1")
                return _Rows(rows)
            return r

    db._local.conn = RelabelAfterTheCounts(db.conn())
    try:
        assert log.annotators() == {"alice": {"labels": 1, "median_seconds_per_label": 30.0}}  # before the relabel
    finally:
        db._local.conn = db._local.conn.c
    assert log.annotators() == {"bob": {"labels": 1, "median_seconds_per_label": 50.0}}


class _Rows(list):
    def fetchall(self):
        return list(self)


OLD_STATE = """
CREATE TABLE effort (image_id TEXT PRIMARY KEY, client_id TEXT, served REAL, labeled REAL, version TEXT);
CREATE TABLE quality (image_id TEXT, version TEXT, dice REAL, ts REAL, PRIMARY KEY (image_id, version));
"""


def test_an_earlier_versions_database_read_without_this_versions_schema(tmp_path):
    """polypal-export reads the state database without its schema (read only): one written before the change
    counts existed gave no quality curve (the export left quality.json out, silently)."""
    import sqlite3

    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as c:
        c.executescript(OLD_STATE)
        c.executemany("INSERT INTO quality VALUES (?, ?, ?, ?)", [(f"f{i}", "m1", 0.5, float(i)) for i in range(12)])
        c.executemany("INSERT INTO effort VALUES (?, ?, ?, ?, ?)", [("f1", "dr-a", 1.0, 21.0, "m1")])
    log = AnnotationLog(SQLiteDB(path))
    assert [(c["version"], c["labels"]) for c in log.quality()["by_model"]] == [("m1", 12)]
    assert log.annotators() == {"dr-a": {"labels": 1, "median_seconds_per_label": 20.0}}


def test_info_counts_a_plans_frames_left_with_monai_labels_own_datastore(tmp_path):
    """``--conf datastore local`` (MONAI Label's LocalDatastore, for comparisons) has no cached labeled set:
    /info lost each plan's ``left_to_label``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "polyp_al"))
    try:
        from lib.datastore import labeled_set
        from monailabel.datastore.local import LocalDatastore
    finally:
        sys.path.pop(0)
    root, mask = make_store(tmp_path)
    ds = LocalDatastore(str(root), extensions=["*.png"])
    ds.save_label("f001", str(mask), "final", {})
    assert labeled_set(ds) == {"f001"}


def test_through_the_server_a_label_put_back_by_another_process_is_never_served_again(tmp_path):
    """The running server keeps its labeled set between requests: a label that `polypal-trash restore` (another
    process) puts back while it runs is in the next answer, so that frame is not served for labeling again,
    and /info counts it."""
    import io
    import json
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from server_utils import Server, http, multipart

    root, _ = make_store(tmp_path, n=4)
    srv = Server(root, tmp_path, conf={"batch_size": "4"}, env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}).start()
    JSON = {"Content-Type": "application/json"}

    def ask(client):
        s, r = http("POST", f"{srv.url}/activelearning/random", json.dumps({"client_id": client}).encode(), JSON)
        assert s == 200, r
        return r.get("id")

    try:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(buf, format="PNG")
        body, ct = multipart({"params": "{}"}, {"label": ("f001.png", buf.getvalue())})
        assert http("PUT", f"{srv.url}/datastore/label?image=f001&tag=final", body, {"Content-Type": ct})[0] == 200
        assert http("DELETE", f"{srv.url}/datastore/label?id=f001&tag=final")[0] == 200  # to the trash
        ask("warm")  # a batch of all four frames is planned; the server now knows f001 as unlabeled
        assert http("GET", f"{srv.url}/info/")[1]["polyp_al"]["state"]["plans"]["random"]["left_to_label"] == 4
        folder = os.listdir(root / ".polypal" / "trash")
        assert len(folder) == 1, folder
        done = subprocess.run([str(Path(sys.executable).parent / "polypal-trash"), "restore", str(root), folder[0]],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        served = [ask(c) for c in ("warm", "b", "c", "d")]
        assert "f001" not in served and {i for i in served if i} == {"f000", "f002", "f003"}, served
        assert http("GET", f"{srv.url}/info/")[1]["polyp_al"]["state"]["plans"]["random"]["left_to_label"] == 3
    finally:
        srv.stop()
