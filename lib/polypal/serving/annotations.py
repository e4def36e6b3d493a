"""The annotation log: who labeled what and when, and the model's Dice on each new label.

Feeds ``/info``: per-annotator counts and pace, and the per-model quality curve with the
stopping signal (``polypal.serving.quality``).
"""

from __future__ import annotations

import copy
import time

from polypal.serving.sqlite_db import counted

# /info (which MONAI Label's next-sample endpoint calls at every request) reads both tables whole: the
# indexes let SQLite aggregate them without sorting, and the results are kept until a table changes
SCHEMA = """
CREATE TABLE IF NOT EXISTS effort (image_id TEXT PRIMARY KEY, client_id TEXT, served REAL, labeled REAL,
                                   version TEXT);
CREATE TABLE IF NOT EXISTS quality (image_id TEXT, version TEXT, dice REAL, ts REAL, PRIMARY KEY (image_id, version));
CREATE TABLE IF NOT EXISTS model_numbers (version TEXT PRIMARY KEY, number INTEGER);
CREATE INDEX IF NOT EXISTS effort_pace ON effort (client_id, labeled - served);
CREATE INDEX IF NOT EXISTS quality_by_version ON quality (version, dice, ts);
""" + counted("effort") + counted("quality")


class AnnotationLog:
    def __init__(self, db):
        self._db = db

    def add_quality(self, image_id: str, version: str, dice: float, ts: float | None = None,
                    model_number: int | None = None) -> None:
        """The Dice of a model's prediction against a label saved while it was current (once per frame), and
        the model's number as its training gave it (None when unknown)."""
        with self._db.tx() as c:  # (the number in a table of its own: an older version still writes quality)
            c.execute("INSERT OR IGNORE INTO quality VALUES (?, ?, ?, ?)",
                      (image_id, version, float(dice), time.time() if ts is None else ts))
            if isinstance(model_number, int):
                c.execute("INSERT OR IGNORE INTO model_numbers VALUES (?, ?)", (version, model_number))

    def has_quality(self, image_id: str, version: str) -> bool:
        return self._db.conn().execute("SELECT 1 FROM quality WHERE image_id=? AND version=?",
                                       (image_id, version)).fetchone() is not None

    def quality(self, last: int | None = None) -> dict:
        """The per-model curve and the stopping signal (polypal.serving.quality). ``last``: only the newest
        that many models (/info, read at every next-sample, grew by one entry per model: 259 KB at 1,800),
        with ``models`` (how many there are) and ``earlier_not_shown``; the export keeps the whole curve."""
        q = self._db.cached("quality", "quality", self._quality)
        curve = q["by_model"]
        if last is None or len(curve) <= last:
            return {**copy.deepcopy(q), "models": len(curve)}
        return {"by_model": copy.deepcopy(curve[len(curve) - last:]), "stopping": q["stopping"],
                "models": len(curve), "earlier_not_shown": len(curve) - last}

    def stopping(self) -> str | None:
        """The stopping signal alone (a string or None): next-sample asks at every request, and a copy of
        the whole curve grew with every model (10 ms at 1,800 models)."""
        return self._db.cached("quality", "quality", self._quality)["stopping"]

    def _quality(self) -> dict:
        from polypal.serving.quality import stopping_signal, summarize_groups

        curve = summarize_groups(self._db.conn().execute(
            "SELECT q.version, COUNT(*), SUM(q.dice), SUM(q.dice * q.dice), MIN(q.ts), " +
            ("MAX(m.number) FROM quality q LEFT JOIN model_numbers m ON m.version = q.version " if self._numbered()
             else "NULL FROM quality q ") + "GROUP BY q.version").fetchall())
        for c in curve:
            c["first_measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(c["first_measured"]))
        return {"by_model": curve, "stopping": stopping_signal(curve)}

    def _numbered(self) -> bool:
        """Whether the database has the model numbers' table (one written by an older version, read by the
        export, may not)."""
        return self._db.conn().execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='model_numbers'").fetchone() is not None

    def add_effort(self, image_id: str, client_id: str, served: float | None, labeled: float, version: str) -> None:
        """Who labeled a frame, when it was served and labeled, and the model current at the time."""
        with self._db.tx() as c:
            c.execute("INSERT OR REPLACE INTO effort VALUES (?, ?, ?, ?, ?)",
                      (image_id, client_id, served, labeled, version))

    def annotators(self, labeled=None) -> dict:
        """Per annotator: labels saved and the median seconds from serving to saving (of the labels whose
        serving time is known and not after the save). With ``labeled`` (the ids with a final label now),
        labels since deleted or moved to the trash are not counted, though their paces stay in the medians
        (before, /info counted them: its annotators' labels added up to more than the datastore's)."""
        if labeled is None:
            return copy.deepcopy(self._db.cached("annotators", "effort", self._annotators))
        # kept until the log or the labeled set changes: /info runs at every next-sample, and the walk over
        # every effort row takes 20 ms at 150,000 labels (a frozenset's hash is computed once per set)
        key = (self._db.changes("effort"), hash(frozenset(labeled)), len(labeled))
        hit = getattr(self, "_filtered", None)
        if key[0] is None or hit is None or hit[0] != key:
            res = copy.deepcopy(self._db.cached("annotators", "effort", self._annotators))
            who = self._db.cached("effort_ids", "effort", lambda: dict(
                self._db.conn().execute("SELECT image_id, client_id FROM effort").fetchall()))
            for i, client in who.items():
                if i not in labeled and client in res:
                    res[client]["labels"] -= 1
            hit = (key, {k: v for k, v in res.items() if v["labels"] > 0})
            if key[0] is not None:
                self._filtered = hit
        return copy.deepcopy(hit[1])

    def _annotators(self) -> dict:
        res = {}
        with self._db.snapshot() as c:  # the counts and the medians of one state (a relabel in between moved
            # a frame to another annotator: its old count pointed past the end of its paces)
            for client, n, k in c.execute("SELECT client_id, COUNT(*), SUM(labeled - served >= 0) FROM effort "
                                          "GROUP BY client_id ORDER BY client_id").fetchall():
                median = None
                if k:  # the middle one or two of the client's known paces, read in the order of the index
                    mid = [r[0] for r in c.execute(
                        "SELECT labeled - served FROM effort WHERE client_id IS ? AND labeled - served >= 0 "
                        "ORDER BY client_id, labeled - served LIMIT ? OFFSET ?",
                        (client, 2 - k % 2, (k - 1) // 2))]
                    median = round(sum(mid) / len(mid), 1) if mid else None
                res[client] = {"labels": n, "median_seconds_per_label": median}
        return res
