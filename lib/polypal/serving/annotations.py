"""The annotation log: who labeled what and when, and the model's Dice on each new label.

Feeds ``/info``: per-annotator counts and pace, and the per-model quality curve with the
stopping signal (``polypal.serving.quality``).
"""

from __future__ import annotations

import time

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS effort (image_id TEXT PRIMARY KEY, client_id TEXT, served REAL, labeled REAL,
                                   version TEXT);
CREATE TABLE IF NOT EXISTS quality (image_id TEXT, version TEXT, dice REAL, ts REAL, PRIMARY KEY (image_id, version));
"""


class AnnotationLog:
    def __init__(self, db):
        self._db = db

    def add_quality(self, image_id: str, version: str, dice: float, ts: float | None = None) -> None:
        """The Dice of a model's prediction against a label saved while it was current (once per frame)."""
        with self._db.tx() as c:
            c.execute("INSERT OR IGNORE INTO quality VALUES (?, ?, ?, ?)",
                      (image_id, version, float(dice), time.time() if ts is None else ts))

    def has_quality(self, image_id: str, version: str) -> bool:
        return self._db.conn().execute("SELECT 1 FROM quality WHERE image_id=? AND version=?",
                                       (image_id, version)).fetchone() is not None

    def quality(self) -> dict:
        """The per-model curve and the stopping signal (polypal.serving.quality)."""
        from polypal.serving.quality import stopping_signal, summarize_groups

        curve = summarize_groups(self._db.conn().execute(
            "SELECT version, COUNT(*), SUM(dice), SUM(dice * dice), MIN(ts) FROM quality GROUP BY version").fetchall())
        for c in curve:
            c["first_measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(c["first_measured"]))
        return {"by_model": curve, "stopping": stopping_signal(curve)}

    def add_effort(self, image_id: str, client_id: str, served: float | None, labeled: float, version: str) -> None:
        """Who labeled a frame, when it was served and labeled, and the model current at the time."""
        with self._db.tx() as c:
            c.execute("INSERT OR REPLACE INTO effort VALUES (?, ?, ?, ?, ?)",
                      (image_id, client_id, served, labeled, version))

    def annotators(self) -> dict:
        """Per annotator: labels saved and the median seconds from serving to saving."""
        out: dict[str, list] = {}
        for client, served, labeled in self._db.conn().execute("SELECT client_id, served, labeled FROM effort"):
            out.setdefault(client, []).append(None if served is None else labeled - served)
        res = {}
        for client, secs in sorted(out.items()):
            known = sorted(x for x in secs if x is not None and x >= 0)
            res[client] = {"labels": len(secs),
                           "median_seconds_per_label": round(float(np.median(known)), 1) if known else None}
        return res
