"""What ingest knows about videos and their frames: ``<studies>/.polypal/video.sqlite``.

Kept apart from the datastore's own database (``datastore.sqlite``), whose schema
is not touched. Tables:

- ``videos``: one row per ingested video (its id prefix ``name``, source path,
  size, a content fingerprint, the rate settings, frames decoded and kept,
  ``done`` once all its frames are in the studies folder);
- ``frames``: one row per ingested frame: ``id`` (the image id), ``video``,
  ``frame`` (0-based index in the decoded stream), ``time_s``, the dHash (hex),
  the quality measures (``lapvar``, ``sharp``, ``mean``, ``bright``, ``red``), ``flags`` (comma-separated, '' when fine), ``grp``
  (the id of the group's first frame), ``representative`` (1 for the one
  frame of its group to annotate) and ``placed`` (1 once its file was moved
  into the studies folder: a placed frame whose file is gone was deleted, and
  a re-ingest never writes it again);
- ``runs``: one row per finished run of a video with given settings
  (``fingerprint``, ``settings``): a re-run with those settings adds nothing.

``load_index(studies)`` reads it back for the server or ``polypal-sim``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from polypal.serving.sqlite_db import SQLiteDB
from polypal.video import frames as F

DB_NAME = "video.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (name TEXT PRIMARY KEY, source TEXT NOT NULL, size INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, settings TEXT NOT NULL, fps REAL, decoded INTEGER, kept INTEGER,
    ingested_at TEXT, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS frames (id TEXT PRIMARY KEY, video TEXT NOT NULL, frame INTEGER NOT NULL,
    time_s REAL, dhash TEXT NOT NULL, lapvar REAL, sharp REAL, mean REAL, bright REAL, red REAL, flags TEXT NOT NULL DEFAULT '',
    grp TEXT, representative INTEGER NOT NULL DEFAULT 0, placed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS runs (fingerprint TEXT NOT NULL, settings TEXT NOT NULL, name TEXT NOT NULL,
    decoded INTEGER, kept INTEGER, PRIMARY KEY (fingerprint, settings));
CREATE INDEX IF NOT EXISTS frames_by_video ON frames (video, frame);
"""


def db_path(studies) -> str:
    return os.path.join(str(studies), ".polypal", DB_NAME)


class VideoDB:
    def __init__(self, studies):
        os.makedirs(os.path.join(str(studies), ".polypal"), exist_ok=True)
        self.studies = str(studies)
        self.db = SQLiteDB(db_path(studies), _SCHEMA)
        with self.db.tx() as c:  # records written before the out-of-body measure existed: add its column
            cols = {r[1] for r in c.execute("PRAGMA table_info(frames)")}
            if "red" not in cols:
                c.execute("ALTER TABLE frames ADD COLUMN red REAL")
            if "placed" not in cols:  # (records of a version with one finished run per video: its frames were
                c.execute("ALTER TABLE frames ADD COLUMN placed INTEGER NOT NULL DEFAULT 0")  # all moved in)
                c.execute("UPDATE frames SET placed=1 WHERE video IN (SELECT name FROM videos WHERE done=1)")
                c.execute("INSERT OR IGNORE INTO runs (fingerprint, settings, name, decoded, kept) "
                          "SELECT fingerprint, settings, name, decoded, kept FROM videos WHERE done=1")

    def find(self, fingerprint: str, settings: str) -> dict | None:
        r = self.db.conn().execute("SELECT name, decoded, kept FROM runs WHERE fingerprint=? AND settings=?",
                                   (fingerprint, settings)).fetchone()
        return None if r is None else {"name": r[0], "decoded": r[1], "kept": r[2]}

    def name_for(self, base: str, fingerprint: str, settings: str = "") -> str:
        """``base``, or ``base-2``, ``base-3``... when another video already uses that name; the name is
        reserved for this video (a row, not done) in the same transaction. Before, it was reserved only
        when the frames were recorded, so two videos of one file name ingested at once both took it, and
        the second's row replaced the first's over the first's frame records."""
        with self.db.tx() as c:
            k, name = 1, base
            while True:
                r = c.execute("SELECT fingerprint FROM videos WHERE name=?", (name,)).fetchone()
                if r is None:
                    c.execute("INSERT INTO videos (name, source, size, fingerprint, settings, done) "
                              "VALUES (?, '', 0, ?, ?, 0)", (name, fingerprint, settings))
                    return name
                if r[0] == fingerprint:
                    return name
                k += 1
                name = f"{base}-{k}"

    def rename_fingerprint(self, old: str, new: str) -> None:
        """Rows recorded under a file's older fingerprint value take its current one."""
        with self.db.tx() as c:
            c.execute("UPDATE videos SET fingerprint=? WHERE fingerprint=?", (new, old))
            c.execute("UPDATE OR IGNORE runs SET fingerprint=? WHERE fingerprint=?", (new, old))

    def release(self, name: str, fingerprint: str) -> None:
        """Give back a name ``name_for`` reserved for a video that recorded nothing under it (it failed,
        or was ingested under another name)."""
        with self.db.tx() as c:
            c.execute("DELETE FROM videos WHERE name=? AND fingerprint=? AND source='' AND done=0 AND NOT EXISTS "
                      "(SELECT 1 FROM frames WHERE video=?)", (name, fingerprint, name))

    def add(self, video: dict, rows: list[dict], max_bits: int) -> dict:
        """Record a video (not done yet: its name is reserved) and its frames, and regroup all of that
        video's frames, in one transaction."""
        with self.db.tx() as c:
            r = c.execute("SELECT fingerprint, done FROM videos WHERE name=?", (video["name"],)).fetchone()
            if r is not None and r[0] != video["fingerprint"]:  # (name_for reserved it: never another video's)
                raise ValueError(f"video name {video['name']!r} is another video's in {db_path(self.studies)}")
            interrupted = r is not None and not r[1]
            c.execute("INSERT OR REPLACE INTO videos (name, source, size, fingerprint, settings, fps, decoded, kept, "
                      "ingested_at, done) VALUES (:name, :source, :size, :fingerprint, :settings, :fps, :decoded, "
                      ":kept, :ingested_at, 0)", video)
            # records of an earlier run of this video that was stopped before its frames were moved in and
            # that this run does not write (another --every/--fps): no file will ever be there (before, they
            # stayed, and were grouped and chosen as representatives of frames that do not exist). Only after
            # a stopped run: a finished one wrote every frame it recorded, and one missing now was deleted
            # through the server (its records stay, for a restore from the trash)
            if interrupted:
                new_ids = {r["id"] for r in rows}
                gone = [(i,) for (i,) in c.execute("SELECT id FROM frames WHERE video=? AND placed=0",
                                                   (video["name"],))
                        if i not in new_ids and not os.path.exists(os.path.join(self.studies, i + ".png"))]
                c.executemany("DELETE FROM frames WHERE id=?", gone)
            c.executemany("INSERT OR IGNORE INTO frames (id, video, frame, time_s, dhash, lapvar, sharp, mean, bright, "
                          "red, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [(r["id"], video["name"], r["frame"], r["time_s"], r["dhash"], r["lapvar"], r["sharp"],
                            r["mean"], r["bright"], r.get("red"), ",".join(F.flags(r))) for r in rows])
            allf, groups = _regroup(c, video["name"], max_bits)
        return {"frames": len(allf), "groups": len(groups),
                "flagged": sum(1 for f in allf if F.flags(f))}

    def recorded(self, ids) -> set[str]:
        """Those of ``ids`` that have a frame record."""
        ids, out, con = list(ids), set(), self.db.conn()
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            out.update(i for (i,) in con.execute(f"SELECT id FROM frames WHERE id IN ({','.join('?' * len(chunk))})",
                                                 chunk))
        return out

    def forget(self, name: str, ids, max_bits: int) -> None:
        """Drop the records of frames a failed run recorded and took out again (never placed), and regroup
        what is left of the video."""
        with self.db.tx() as c:
            c.executemany("DELETE FROM frames WHERE id=? AND video=? AND placed=0", [(i, name) for i in ids])
            _regroup(c, name, max_bits)

    def placed(self, ids) -> set[str]:
        """Those of ``ids`` whose frames were once moved into the studies folder."""
        ids, out, con = list(ids), set(), self.db.conn()
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            out.update(i for (i,) in con.execute(
                f"SELECT id FROM frames WHERE placed=1 AND id IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def mark_placed(self, ids) -> None:
        """These frames are in the studies folder (moved there by this run or an earlier one)."""
        with self.db.tx() as c:
            c.executemany("UPDATE frames SET placed=1 WHERE id=?", [(i,) for i in ids])

    def finish(self, name: str, fingerprint: str = "", settings: str = "", decoded: int | None = None,
               kept: int | None = None, ids=()) -> None:
        """Mark a video ingested (after its frames are in place): a re-run with its settings adds nothing.
        Each finished (fingerprint, settings) is kept: before, one row per video held the last run's settings
        only, so after a run at another rate the first command ran again and wrote its frames anew."""
        with self.db.tx() as c:
            c.execute("UPDATE videos SET done=1 WHERE name=?", (name,))
            c.executemany("UPDATE frames SET placed=1 WHERE id=?", [(i,) for i in ids])
            if fingerprint:
                c.execute("INSERT OR REPLACE INTO runs (fingerprint, settings, name, decoded, kept) "
                          "VALUES (?, ?, ?, ?, ?)", (fingerprint, settings, name, decoded, kept))


def _regroup(c, name: str, max_bits: int) -> tuple[list[dict], dict[int, list[int]]]:
    """Group all of a video's recorded frames again and choose each group's representative."""
    allf = [dict(zip(("id", "dhash", "lapvar", "sharp", "mean", "bright", "red", "damaged"), t)) for t in c.execute(
        "SELECT id, dhash, lapvar, sharp, mean, bright, red, ',' || flags || ',' LIKE '%,damaged,%' FROM frames "
        "WHERE video=? ORDER BY frame", (name,))]
    gi = F.group_consecutive([f["dhash"] for f in allf], max_bits)
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(gi):
        groups.setdefault(g, []).append(i)
    upd = []
    for members in groups.values():
        rep = F.representative(members, allf)
        upd += [(allf[members[0]]["id"], int(i == rep), allf[i]["id"]) for i in members]
    c.executemany("UPDATE frames SET grp=?, representative=? WHERE id=?", upd)
    return allf, groups


@dataclass
class VideoIndex:
    """Groups and flags of every ingested frame (ids not in ``video_of`` came from elsewhere)."""

    groups: dict[str, str] = field(default_factory=dict)  # frame id -> group id
    flagged: dict[str, str] = field(default_factory=dict)  # frame id -> "blurred" / "black" / ...
    representatives: set[str] = field(default_factory=set)
    video_of: dict[str, str] = field(default_factory=dict)  # frame id -> video name

    problem: str | None = None  # the records could not be read (a damaged file): what was wrong

    def summary(self) -> dict:
        if self.problem:
            return {"problem": self.problem}
        if "_summary" not in self.__dict__:  # (an index is not changed once read: counted once)
            self.__dict__["_summary"] = {"videos": len(set(self.video_of.values())), "frames": len(self.video_of),
                                         "groups": len(set(self.groups.values())), "flagged": len(self.flagged)}
        return dict(self.__dict__["_summary"])


_CACHE: dict[str, tuple] = {}  # db path -> (the files' signature, VideoIndex, summary)


def _signature(p: str):
    out = []
    for f in (p, p + "-wal"):
        try:
            st = os.stat(f)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def load_index(studies) -> VideoIndex:
    """The ingest records of a studies folder (an empty index when nothing was ingested). Read-only.

    Read again only when ``video.sqlite`` or its write-ahead log changed (the server asks at every /info
    and every plan: at 150,000 frames a read took 0.2 s); the index returned is shared, so callers never
    modify it. A file that cannot be read (damaged) gives an empty index whose ``problem`` says why,
    logged once: no near-duplicate groups or video caps until it is fixed, and no request fails on it."""
    p = db_path(studies)
    if not os.path.exists(p):
        return VideoIndex()
    sig = _signature(p)
    hit = _CACHE.get(p)
    if hit is not None and hit[0] == sig:
        return hit[1]
    import logging
    import sqlite3

    idx = VideoIndex()
    if sig[0] is not None and sig[0][2] == 0 and time.time() - sig[0][1] / 1e9 < 5:
        return VideoIndex()  # (being created by an ingest this moment: its schema lands within milliseconds)
    if sig[0] is not None and sig[0][2] == 0:  # emptied (a failed copy, a truncation): said, not "no table"
        idx = VideoIndex(problem=f"{p}: empty, so the video records are gone; near-duplicate groups and video "
                                 f"caps are off until it is restored from a backup")
        logging.getLogger(__name__).error(idx.problem)
        _CACHE[p] = (sig, idx)
        return idx
    try:  # (a second at most: a file another process holds locked must not hold up /info and next-sample)
        c = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=1)
        try:
            for i, video, grp, rep, fl in c.execute("SELECT id, video, grp, representative, flags FROM frames"):
                idx.video_of[i] = video
                idx.groups[i] = grp or i
                if rep:
                    idx.representatives.add(i)
                if fl:
                    idx.flagged[i] = fl
        finally:
            c.close()
    except sqlite3.OperationalError as e:  # locked, cannot open: passing, so read again next time
        logging.getLogger(__name__).warning(f"{p}: video records not read this time ({e})")
        return VideoIndex(problem=f"{p}: video records not read ({e}); asked again at the next request")
    except sqlite3.Error as e:
        idx = VideoIndex(problem=f"{p}: video records unreadable ({e}); near-duplicate groups and video caps "
                                 f"are off until the file is restored from a backup or removed")
        logging.getLogger(__name__).error(idx.problem)
    if _signature(p) == sig:  # (not cached when an ingest wrote meanwhile: read again next time)
        _CACHE[p] = (sig, idx)
    return idx


FRAME_ID = re.compile(r"^(?P<video>.+)_(?P<frame>\d{6,})$")  # polypal-ingest's ids: <video>_<frame, 6+ digits>


def folder_index(root) -> VideoIndex:
    """The ingest records of a dataset folder: ``root/.polypal/video.sqlite`` (a studies folder) or
    ``root/images/.polypal/video.sqlite`` (images/ + masks/); an empty index when there are none."""
    for d in (Path(root), Path(root) / "images"):
        if os.path.exists(db_path(d)):
            return load_index(d)
    return VideoIndex()


def videos_from_ids(names) -> dict[str, str]:
    """frame name -> video for the names shaped like polypal-ingest's ids (``<video>_<6 or more digits>``)."""
    out = {}
    for n in names:
        m = FRAME_ID.match(n)
        if m:
            out[n] = m.group("video")
    return out
