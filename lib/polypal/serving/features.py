"""The feature store: what the server knows about each frame, kept across restarts.

- per model version: one image score per frame (SQLite) and its latent vector (a float32
  row file, row number in SQLite); only the current version's scores are ever read, and a
  scoring run drops the older versions' (``prune``);
- small thumbnails of every frame (uint8 rows) for PCA-Coreset, computed before any model exists;
- frames that could not be decoded, with the reason (never served).

Rows are append-only files read back as memory maps (``RowStore``); SQLite (WAL) is shared
safely by the server and its scoring/training subprocesses.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable

import numpy as np

logger = logging.getLogger(__name__)

NO_MODEL = "none"
ORPHAN_S = 86400  # a latent file with no version row (a crash between its append and its commit) goes this old
THUMB = 32  # thumbnails for PCA-Coreset are THUMB x THUMB x 3 uint8

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (version TEXT, image_id TEXT, score REAL, row INTEGER,
                                   PRIMARY KEY (version, image_id));
CREATE TABLE IF NOT EXISTS thumbs (image_id TEXT PRIMARY KEY, row INTEGER);
CREATE TABLE IF NOT EXISTS bad (image_id TEXT PRIMARY KEY, error TEXT);
CREATE TABLE IF NOT EXISTS versions (version TEXT PRIMARY KEY, dim INTEGER, n INTEGER);
CREATE TABLE IF NOT EXISTS changed (image_id TEXT PRIMARY KEY, ts REAL);
"""


def model_version(model_path: str | os.PathLike | None) -> str:
    """A model's version: its file's mtime and size ("none" when there is no model yet)."""
    if not model_path or not os.path.exists(model_path):
        return NO_MODEL
    st = os.stat(model_path)
    return f"{st.st_mtime_ns}-{st.st_size}"


class RowStore:
    """Append-only float32/uint8 rows in a flat file, read back as a memmap.

    A torn append (a crash mid-write, stray bytes) leaves a partial last row: appends
    trim it first, and readers only see whole rows (``rows()``); row numbers recorded
    beyond the file's end count as missing, so the frames are scored again."""

    def __init__(self, path: Path, width: int, dtype):
        self.path, self.width, self.dtype = path, width, np.dtype(dtype)
        self.row_bytes = self.width * self.dtype.itemsize

    def rows(self) -> int:
        try:
            return os.path.getsize(self.path) // self.row_bytes
        except FileNotFoundError:
            return 0

    def append(self, rows: np.ndarray) -> int:
        rows = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1, self.width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            end = f.seek(0, os.SEEK_END)
            if end % self.row_bytes:
                logger.warning(f"{self.path}: {end % self.row_bytes} stray bytes after the last whole row; trimmed")
                f.truncate(end - end % self.row_bytes)
                f.seek(0, os.SEEK_END)
            start = f.tell() // self.row_bytes
            f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
        return start

    def read(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) == 0:
            return np.empty((0, self.width), self.dtype)
        n = self.rows()
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(n, self.width))
        return np.asarray(mm[np.asarray(rows)])


class FeatureStore:
    """Scores, latents, thumbnails and undecodable frames, in ``folder`` and the shared SQLite ``db``."""

    def __init__(self, folder: Path, db):
        self.folder, self._db = Path(folder), db
        self.thumbs = RowStore(self.folder / "thumbs.u8", THUMB * THUMB * 3, np.uint8)
        self._add_count_column()

    def _add_count_column(self) -> None:
        """Stores made before the per-version count (``versions.n``) get the column, filled once.
        Two processes may race here: the loser's "duplicate column" is harmless."""
        if "n" in {r[1] for r in self._conn().execute("PRAGMA table_info(versions)")}:
            return
        try:
            with self._db.tx() as c:
                c.execute("ALTER TABLE versions ADD COLUMN n INTEGER")
                c.execute("UPDATE versions SET n=(SELECT COUNT(*) FROM scores WHERE scores.version=versions.version)")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):
                raise

    def _conn(self):
        return self._db.conn()

    def _latents(self, version: str, dim: int) -> RowStore:
        return RowStore(self.folder / "latents" / f"{version}.f32", dim, np.float32)

    def _latent_rows(self, version: str) -> tuple[int | None, int]:
        """(latent dim, whole rows on disk) of a version; (None, 0) before its first score."""
        dim = self._conn().execute("SELECT dim FROM versions WHERE version=?", (version,)).fetchone()
        return (int(dim[0]), self._latents(version, int(dim[0])).rows()) if dim else (None, 0)

    # -- thumbnails ------------------------------------------------------------------------
    def thumbed_ids(self) -> set[str]:
        n = self.thumbs.rows()  # rows past the end of a torn file are computed again
        return {r[0] for r in self._conn().execute("SELECT image_id FROM thumbs WHERE row < ?", (n,))}

    def has_thumb(self, image_id: str) -> bool:
        """One frame's thumbnail is stored (it decoded once): a single indexed lookup."""
        return self._conn().execute("SELECT 1 FROM thumbs WHERE image_id=? AND row < ?",
                                    (image_id, self.thumbs.rows())).fetchone() is not None

    def missing_thumbs(self, image_ids: Iterable[str]) -> list[str]:
        have = self.thumbed_ids() | self.bad_ids()
        return [i for i in image_ids if i not in have]

    @staticmethod
    def _changed_since(c, image_ids, read_since: float | None) -> set:
        """Of these frames, those whose file changed (``forget``) at or after ``read_since``: what a reader
        computed from them describes the old file, and is not stored (checked in the storing transaction)."""
        if read_since is None or not image_ids:
            return set()
        ids = list(image_ids)
        out = set()
        for s in range(0, len(ids), 500):
            part = ids[s:s + 500]
            out |= {r[0] for r in c.execute(
                f"SELECT image_id FROM changed WHERE ts >= ? AND image_id IN ({','.join('?' * len(part))})",
                (read_since, *part))}
        return out

    def add_thumbs(self, image_ids: list[str], thumbs: np.ndarray, read_since: float | None = None) -> None:
        if not image_ids:
            return
        start = self.thumbs.append(thumbs)
        with self._db.tx() as c:
            skip = self._changed_since(c, image_ids, read_since)
            c.executemany("INSERT OR REPLACE INTO thumbs VALUES (?, ?)",
                          [(i, start + k) for k, i in enumerate(image_ids) if i not in skip])

    def thumbs_for(self, image_ids: list[str]) -> np.ndarray | None:
        rows = dict(self._conn().execute("SELECT image_id, row FROM thumbs WHERE row < ?", (self.thumbs.rows(),)))
        if any(i not in rows for i in image_ids):
            return None
        return self.thumbs.read(np.array([rows[i] for i in image_ids], dtype=np.int64))

    def forget(self, image_id: str) -> None:
        """Drop what is known about a frame (thumbnail, scores under every version, a bad mark): its file
        was replaced or deleted, so all of it describes another image. It is computed again when next
        needed (rows in the flat files stay, unreferenced). One lookup by primary key per version kept
        (before: a scan of every score row ever written, inside the write transaction that every lease
        waits for: 0.6 s at 2 million rows)."""
        with self._db.tx() as c:
            for (v,) in c.execute("SELECT version FROM versions").fetchall():
                if c.execute("DELETE FROM scores WHERE version=? AND image_id=?", (v, image_id)).rowcount:
                    c.execute("UPDATE versions SET n=n-1 WHERE version=? AND n > 0", (v,))
            for table in ("thumbs", "bad"):
                c.execute(f"DELETE FROM {table} WHERE image_id=?", (image_id,))
            # when: a reader that started before this (add_*/mark_bad with read_since) read the old file
            c.execute("INSERT OR REPLACE INTO changed VALUES (?, ?)", (image_id, time.time()))

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Drop the scores and the latent file of every model version not in ``keep``; returns those
        dropped. Only the current model's are read, and each version's are about 1 KiB per frame (more
        for the paper profile): kept for ever, a unit retraining ten times a day filled its disk within
        months. Each version's rows and file go in one transaction (the write lock): a writer of that
        version (another server's scoring run on the same folder) then finds its file gone when it
        commits and stores nothing (``add_scores``), so no row ever points into another file. Latent
        files without a row (a crash between the append and the commit) go when a day old. The
        database file keeps its size and reuses the freed pages (VACUUM, with the server stopped, gives
        them back)."""
        keep = set(keep)
        old = [v for (v,) in self._conn().execute("SELECT version FROM versions").fetchall() if v not in keep]
        listed = set(old) | keep
        old += [v for (v,) in self._conn().execute(
            "SELECT DISTINCT version FROM scores WHERE version NOT IN (SELECT version FROM versions)").fetchall()
            if v not in keep]  # (rows of a store older than the versions table)
        for v in old:
            with self._db.tx() as c:
                c.execute("DELETE FROM scores WHERE version=?", (v,))
                c.execute("DELETE FROM versions WHERE version=?", (v,))
                self._unlink_latents(v)
        folder = self.folder / "latents"
        for f in (os.listdir(folder) if folder.is_dir() else []):
            v = f[:-4]
            if f.endswith(".f32") and v not in listed:
                with self._db.tx() as c:  # (a row committed since the listing keeps it)
                    if c.execute("SELECT 1 FROM versions WHERE version=?", (v,)).fetchone() is None:
                        try:
                            if time.time() - os.stat(folder / f).st_mtime > ORPHAN_S:
                                self._unlink_latents(v)
                        except FileNotFoundError:
                            pass
        return old

    def _unlink_latents(self, version: str) -> None:
        try:
            os.unlink(self.folder / "latents" / f"{version}.f32")
        except FileNotFoundError:
            pass

    # -- undecodable frames ----------------------------------------------------------------
    def mark_bad(self, image_id: str, error: str, read_since: float | None = None) -> None:
        with self._db.tx() as c:
            if image_id not in self._changed_since(c, [image_id], read_since):
                c.execute("INSERT OR REPLACE INTO bad VALUES (?, ?)", (image_id, error))

    def bad_ids(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT image_id FROM bad")}

    def bad(self) -> dict[str, str]:
        return dict(self._conn().execute("SELECT image_id, error FROM bad"))

    # -- scores and latents ------------------------------------------------------------------
    def scored_ids(self, version: str) -> set[str]:
        """Frames with a score and a whole latent row under this version (no latent is read)."""
        dim, n = self._latent_rows(version)
        if dim is None:
            return set()
        return {r[0] for r in self._conn().execute("SELECT image_id FROM scores WHERE version=? AND row < ?",
                                                   (version, n))}

    def unscored(self, version: str, image_ids: Iterable[str]) -> list[str]:
        have = self.scored_ids(version) | self.bad_ids()
        return [i for i in image_ids if i not in have]

    def add_scores(self, version: str, image_ids: list[str], scores: np.ndarray, latents: np.ndarray,
                   read_since: float | None = None) -> None:
        if not image_ids:
            return
        store = self._latents(version, latents.shape[1])
        start = store.append(latents)
        with self._db.tx() as c:
            if store.rows() < start + len(image_ids):  # its file was pruned since the append: stored nowhere
                logger.info(f"scores of model {version} not stored: an older model's, dropped meanwhile")
                return
            skip = self._changed_since(c, image_ids, read_since)
            c.execute("INSERT OR IGNORE INTO versions (version, dim) VALUES (?, ?)", (version, int(latents.shape[1])))
            c.execute("UPDATE versions SET dim=? WHERE version=?", (int(latents.shape[1]), version))
            c.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)",
                          [(version, i, float(s), start + k) for k, (i, s) in enumerate(zip(image_ids, scores))
                           if i not in skip])
            # kept here so that /info (read on every next-sample request) never counts 100,000s of rows
            c.execute("UPDATE versions SET n=(SELECT COUNT(*) FROM scores WHERE version=?) WHERE version=?",
                      (version, version))

    def scores_for(self, version: str, image_ids: list[str]):
        """(scores, latents) of these frames under this model version; None if any is missing."""
        dim, n = self._latent_rows(version)
        if dim is None:
            return None
        rows = dict((r[0], (r[1], r[2])) for r in self._conn().execute(
            "SELECT image_id, score, row FROM scores WHERE version=? AND row < ?", (version, n)))
        if any(i not in rows for i in image_ids):
            return None
        s = np.array([rows[i][0] for i in image_ids], dtype=np.float32)
        try:
            lat = self._latents(version, dim).read(np.array([rows[i][1] for i in image_ids], dtype=np.int64))
        except (FileNotFoundError, IndexError, ValueError):  # pruned meanwhile (a newer model is scored): unscored
            return None
        return s, lat

    def summary(self) -> dict:
        c = self._conn()
        versions = dict(c.execute("SELECT version, n FROM versions"))
        for v in [v for v, n in versions.items() if n is None]:  # a store made before the count was kept
            versions[v] = c.execute("SELECT COUNT(*) FROM scores WHERE version=?", (v,)).fetchone()[0]
        return {"versions": versions,
                "thumbnails": c.execute("SELECT COUNT(*) FROM thumbs").fetchone()[0], "bad_frames": self.bad()}
