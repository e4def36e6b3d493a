"""Live active learning for an annotation server: scores, plans, leases.

Server-independent: the MONAI Label app calls this, and tests call it directly.

State lives in one folder (SQLite in WAL mode, safe across the server and its
scoring/training subprocesses, plus append-only memory-mapped arrays):

- per model version: one BvSB score per frame (SQLite) and its latent vector
  (a float32 memmap, row number in SQLite); frames already scored by a version
  are skipped, and only the current version's scores are ever read;
- small thumbnails of every frame (uint8 memmap) for PCA-Coreset, computed
  before any model exists;
- frames that could not be decoded, with the reason (never served);
- per strategy, a planned batch of B frames (one AL cycle), selected with
  polypal.strategies.select, served one per request in order;
- leases: a served frame belongs to its client until it is labeled, the same
  client asks again, or the lease times out.

A plan is replaced (next cycle) when a new model version is published and
scored, or when none of its frames is left to serve.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .sqlite_db import SQLiteDB
from .strategies import PoolInfo, pca_features, resolve, select, server_strategies

logger = logging.getLogger(__name__)

NO_MODEL = "none"
# the version a plan records when it was made by a fallback: it is replaced once the better inputs exist
FALLBACK_PCA = "fallback:pca_coreset"  # no (scored) model yet: PCA-Coreset on thumbnails
FALLBACK_RANDOM = "fallback:random"  # no thumbnails yet either: random (the chain is in the registry)


def is_fallback(plan_version) -> bool:
    return isinstance(plan_version, str) and plan_version.startswith("fallback")
THUMB = 32  # thumbnails for PCA-Coreset are THUMB x THUMB x 3 uint8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (version TEXT, image_id TEXT, score REAL, row INTEGER,
                                   PRIMARY KEY (version, image_id));
CREATE TABLE IF NOT EXISTS thumbs (image_id TEXT PRIMARY KEY, row INTEGER);
CREATE TABLE IF NOT EXISTS bad (image_id TEXT PRIMARY KEY, error TEXT);
CREATE TABLE IF NOT EXISTS plans (strategy TEXT, cycle INTEGER, pos INTEGER, image_id TEXT, score REAL,
                                  picked_by TEXT, PRIMARY KEY (strategy, cycle, pos));
CREATE TABLE IF NOT EXISTS plan_meta (strategy TEXT, cycle INTEGER, version TEXT, created REAL, size INTEGER,
                                      note TEXT, PRIMARY KEY (strategy, cycle));
CREATE TABLE IF NOT EXISTS versions (version TEXT PRIMARY KEY, dim INTEGER);
CREATE TABLE IF NOT EXISTS leases (image_id TEXT PRIMARY KEY, client_id TEXT, strategy TEXT, expires REAL);
CREATE TABLE IF NOT EXISTS effort (image_id TEXT PRIMARY KEY, client_id TEXT, served REAL, labeled REAL,
                                   version TEXT);
CREATE TABLE IF NOT EXISTS quality (image_id TEXT, version TEXT, dice REAL, ts REAL, PRIMARY KEY (image_id, version));
"""


def model_version(model_path: str | os.PathLike | None) -> str:
    """A model's version: its file's mtime and size ("none" when there is no model yet)."""
    if not model_path or not os.path.exists(model_path):
        return NO_MODEL
    st = os.stat(model_path)
    return f"{st.st_mtime_ns}-{st.st_size}"


class _RowStore:
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


@dataclass
class Served:
    """What next_frame answers (as a dict for the client)."""

    id: str
    strategy: str
    score: float | None
    picked_by: str
    cycle: int
    position: int
    batch_size: int
    model_version: str
    note: str | None = None

    def to_dict(self) -> dict:
        d = self.__dict__.copy()
        d["al_strategy"] = d.pop("strategy")  # "strategy" is taken by MONAI Label's image info
        if d["note"] is None:
            d.pop("note")
        return d


class ActiveLearningState:
    def __init__(self, folder: str | os.PathLike, batch_size: int = 100, gamma: float = 0.5,
                 lease_seconds: float = 3600.0, seed: int = 0, background: bool = False,
                 studies: str | os.PathLike | None = None):
        """``background``: a re-plan for a newer model runs in a thread while the current batch keeps
        being served (the server); otherwise next_frame plans before answering (tests, scripts).
        ``studies``: a folder with ingested video (polypal.video): batches are planned over one clean
        representative per group of near-duplicates."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.gamma, self.lease_seconds, self.seed = int(batch_size), float(gamma), lease_seconds, seed
        self._db = SQLiteDB(self.folder / "state.sqlite", _SCHEMA)
        self.thumbs = _RowStore(self.folder / "thumbs.u8", THUMB * THUMB * 3, np.uint8)
        self.background = background
        self.studies = str(studies) if studies else None
        self._planning: set[str] = set()
        self._not_before: dict[tuple[str, str], float] = {}
        self._planning_lock = threading.Lock()

    # -- storage -------------------------------------------------------------------------
    def _conn(self):
        return self._db.conn()

    def _tx(self):
        return self._db.tx()

    def _latents(self, version: str, dim: int) -> _RowStore:
        return _RowStore(self.folder / "latents" / f"{version}.f32", dim, np.float32)

    # -- features ------------------------------------------------------------------------
    def missing_thumbs(self, image_ids: Iterable[str]) -> list[str]:
        n = self.thumbs.rows()  # rows past the end of a torn file are computed again
        have = {r[0] for r in self._conn().execute("SELECT image_id FROM thumbs WHERE row < ?", (n,))}
        have |= self.bad_ids()
        return [i for i in image_ids if i not in have]

    def add_thumbs(self, image_ids: list[str], thumbs: np.ndarray) -> None:
        if not image_ids:
            return
        start = self.thumbs.append(thumbs)
        with self._tx() as c:
            c.executemany("INSERT OR REPLACE INTO thumbs VALUES (?, ?)",
                          [(i, start + k) for k, i in enumerate(image_ids)])

    def mark_bad(self, image_id: str, error: str) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO bad VALUES (?, ?)", (image_id, error))

    def bad_ids(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT image_id FROM bad")}

    def bad(self) -> dict[str, str]:
        return dict(self._conn().execute("SELECT image_id, error FROM bad"))

    def unscored(self, version: str, image_ids: Iterable[str]) -> list[str]:
        dim = self._conn().execute("SELECT dim FROM versions WHERE version=?", (version,)).fetchone()
        n = self._latents(version, int(dim[0])).rows() if dim else 0
        have = {r[0] for r in self._conn().execute("SELECT image_id FROM scores WHERE version=? AND row < ?",
                                                   (version, n))}
        have |= self.bad_ids()
        return [i for i in image_ids if i not in have]

    def add_scores(self, version: str, image_ids: list[str], scores: np.ndarray, latents: np.ndarray) -> None:
        if not image_ids:
            return
        start = self._latents(version, latents.shape[1]).append(latents)
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO versions VALUES (?, ?)", (version, int(latents.shape[1])))
            c.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?)",
                          [(version, i, float(s), start + k) for k, (i, s) in enumerate(zip(image_ids, scores))])

    def scores_for(self, version: str, image_ids: list[str]):
        """(scores, latents) of these frames under this model version; None if any is missing."""
        dim = self._conn().execute("SELECT dim FROM versions WHERE version=?", (version,)).fetchone()
        n = self._latents(version, int(dim[0])).rows() if dim else 0
        rows = dict((r[0], (r[1], r[2])) for r in self._conn().execute(
            "SELECT image_id, score, row FROM scores WHERE version=? AND row < ?", (version, n)))
        if any(i not in rows for i in image_ids):
            return None
        s = np.array([rows[i][0] for i in image_ids], dtype=np.float32)
        lat = self._latents(version, int(dim[0])).read(np.array([rows[i][1] for i in image_ids], dtype=np.int64))
        return s, lat

    def thumbs_for(self, image_ids: list[str]) -> np.ndarray | None:
        rows = dict(self._conn().execute("SELECT image_id, row FROM thumbs WHERE row < ?", (self.thumbs.rows(),)))
        if any(i not in rows for i in image_ids):
            return None
        return self.thumbs.read(np.array([rows[i] for i in image_ids], dtype=np.int64))

    # -- planning ------------------------------------------------------------------------
    def current_plan(self, strategy: str):
        m = self._conn().execute(
            "SELECT cycle, version, size, note FROM plan_meta WHERE strategy=? ORDER BY cycle DESC LIMIT 1",
            (strategy,)).fetchone()
        if m is None:
            return None
        rows = self._conn().execute(
            "SELECT pos, image_id, score, picked_by FROM plans WHERE strategy=? AND cycle=? ORDER BY pos",
            (strategy, m[0])).fetchall()
        return {"cycle": m[0], "version": m[1], "size": m[2], "note": m[3], "rows": rows}

    def plan(self, strategy: str, all_ids: list[str], labeled: set[str], version: str) -> dict | None:
        """Select a new batch (next cycle) for a server strategy; None when nothing is left."""
        servable = server_strategies()
        if strategy not in servable:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(servable)}")
        spec = servable[strategy]
        bad = self.bad_ids()
        universe = sorted(i for i in all_ids if i not in bad)
        notes = []
        if self.studies:  # ingested video: never two near-duplicates (or a useless frame) in one batch
            from .video import load_index, plan_universe

            vi = load_index(self.studies)
            if vi.groups:
                n0 = len(universe)
                universe = plan_universe(universe, labeled, vi.groups, vi.flagged, vi.representatives)
                if len(universe) < n0:
                    notes.append(f"video: {n0 - len(universe)} near-duplicate or flagged frames set aside")
        labeled_idx = np.array([k for k, i in enumerate(universe) if i in labeled], dtype=np.int64)
        if len(universe) - len(labeled_idx) <= 0:
            return None
        plan_version = version
        info = PoolInfo(n=len(universe))
        # the registry's fallback chain: while this strategy's inputs are missing, use its fallback
        while True:
            missing, universe, labeled_idx, info = self._inputs(spec, info, universe, labeled, labeled_idx, version)
            if missing is None:
                break
            if spec.fallback is None:
                raise RuntimeError(f"strategy {spec.name!r} lacks {missing} and has no fallback")
            notes.append(f"{missing}: fell back to {spec.fallback}" +
                         (" on image features" if spec.fallback == "pca_coreset" else ""))
            plan_version = f"fallback:{spec.fallback}"  # differs from every model version: replaced once inputs exist
            spec = resolve(spec.fallback)
        lib_name, scores = spec.name, info.scores
        note = "; ".join(notes) or None
        last = self._last_cycle(strategy)
        cycle = last + 1
        # the selection (seconds at 100,000 frames) runs outside any lock: other annotators keep being served
        sel = select(lib_name, info, labeled_idx, self.batch_size, seed=self.seed * 1000 + cycle, gamma=self.gamma)
        if sel.notes:
            note = "; ".join(([note] if note else []) + sel.notes)
        rows = [(strategy, cycle, k + 1, universe[j], None if scores is None else float(scores[j]), by)
                for k, (j, by) in enumerate(zip(sel.indices.tolist(), sel.picked_by))]
        with self._tx() as c:  # swapped in atomically, unless another process planned this cycle meanwhile
            now_last = c.execute("SELECT MAX(cycle) FROM plan_meta WHERE strategy=?", (strategy,)).fetchone()[0] or 0
            if now_last != last:
                logger.info(f"{strategy}: cycle {cycle} was planned elsewhere meanwhile; keeping that plan")
                rows = None
            else:
                c.executemany("INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?)", rows)
                c.execute("INSERT INTO plan_meta VALUES (?, ?, ?, ?, ?, ?)",
                          (strategy, cycle, plan_version, time.time(), len(rows), note))
        if rows is not None:
            logger.info(f"planned {strategy} cycle {cycle}: {len(rows)} frames (model {version})"
                        f"{'; ' + note if note else ''}")
        return self.current_plan(strategy)

    def _inputs(self, spec, info, universe, labeled, labeled_idx, version):
        """Fill what ``spec`` needs into ``info``: (what is missing or None, universe, labeled_idx, info)."""
        if {"scores", "latents"} & set(spec.needs):
            if version == NO_MODEL:
                return "no model yet", universe, labeled_idx, info
            # labeled frames are k-center's initial centers: use their latents when this model has them
            full = self.scores_for(version, universe)
            if full is None:
                # labeled before this model (no latents): diversity among the unlabeled, no labeled centers
                unl = [i for i in universe if i not in labeled]
                full = self.scores_for(version, unl)
                if full is None:
                    return f"model {version} not scored yet", universe, labeled_idx, info
                universe, labeled_idx, info = unl, np.empty(0, dtype=np.int64), PoolInfo(n=len(unl))
            info.scores, info.latents = full
        if "image_features" in spec.needs:
            th = self.thumbs_for(universe)
            if th is None:
                return "thumbnails not computed yet", universe, labeled_idx, info
            info.image_features = pca_features(th.reshape(len(universe), THUMB, THUMB, 3), seed=self.seed)
        return None, universe, labeled_idx, info

    def _last_cycle(self, strategy: str) -> int:
        return self._conn().execute("SELECT MAX(cycle) FROM plan_meta WHERE strategy=?",
                                    (strategy,)).fetchone()[0] or 0

    def plan_is_stale(self, strategy: str, version: str, all_ids: list[str], labeled: set[str]) -> bool:
        """True when a (re)plan is due: none yet, or a newer model is published and scored."""
        p = self.current_plan(strategy)
        return p is None or self._needs_replan(strategy, p, version, all_ids, labeled)

    # -- serving -------------------------------------------------------------------------
    def next_frame(self, strategy: str, client_id: str, all_ids, labeled: set[str],
                   version: str, now: float | None = None) -> Served | None:
        """The next frame of the strategy's batch for this client, leased to it; None if none left.

        ``all_ids`` is the list of frame ids, or a callable returning it: it is only
        needed when a batch has to be (re)planned.
        """
        now = time.time() if now is None else now
        client_id = client_id or "anonymous"
        ids_cache = []

        def ids():
            if not ids_cache:
                ids_cache.append(all_ids() if callable(all_ids) else list(all_ids))
            return ids_cache[0]

        p = self.current_plan(strategy)
        if p is not None and self.background and self._may_need_replan(strategy, p, version):
            # a newer model: checking its scores and re-planning run in a thread; this batch keeps being
            # served until the new one is swapped in
            self._plan_in_background(strategy, all_ids, labeled, version)
        elif p is None or (not self.background and self._needs_replan(strategy, p, version, ids, labeled)):
            p = self.plan(strategy, ids(), labeled, version)
        for attempt in range(2):
            if p is None:
                return None
            with self._tx() as c:
                c.execute("DELETE FROM leases WHERE expires < ?", (now,))
                # the client moved on: its unlabeled leases go back to the pool
                c.execute("DELETE FROM leases WHERE client_id=?", (client_id,))
                held = {r[0] for r in c.execute("SELECT image_id FROM leases")}
                for pos, image_id, score, by in p["rows"]:
                    if image_id in labeled or image_id in held:
                        continue
                    c.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                              (image_id, client_id, strategy, now + self.lease_seconds))
                    return Served(image_id, strategy, score, by, p["cycle"], pos, p["size"], p["version"], p["note"])
            if attempt == 0:  # nothing servable left in this batch: plan the next cycle once
                p = self.plan(strategy, ids(), labeled | held, version)
        return None

    def _plan_in_background(self, strategy: str, all_ids, labeled: set[str], version: str) -> None:
        with self._planning_lock:
            if strategy in self._planning or time.time() < self._not_before.get((strategy, version), 0):
                return
            self._planning.add(strategy)

        def run():
            try:
                ids = all_ids() if callable(all_ids) else list(all_ids)
                p = self.current_plan(strategy)
                if p is None or self._needs_replan(strategy, p, version, ids, labeled):
                    self.plan(strategy, ids, set(labeled), version)
                else:  # the new model is not scored yet: look again in a while, not at every request
                    self._not_before[(strategy, version)] = time.time() + 2.0
            except Exception:  # noqa: BLE001 - logged; the previous plan keeps being served
                logger.exception(f"background re-plan of {strategy} failed")
            finally:
                with self._planning_lock:
                    self._planning.discard(strategy)

        threading.Thread(target=run, name=f"polypal-plan-{strategy}", daemon=True).start()

    def planning(self) -> set[str]:
        """Strategies whose re-plan is running in a background thread of this process."""
        with self._planning_lock:
            return set(self._planning)

    def _may_need_replan(self, strategy, p, version) -> bool:
        """The cheap part of _needs_replan: a plan made by the random fallback, or a newer model than the
        plan's for a strategy that uses it."""
        if p["version"] == FALLBACK_RANDOM:
            return True
        return not (p["version"] == version or not server_strategies()[strategy].needs_model or version == NO_MODEL)

    def _needs_replan(self, strategy, p, version, all_ids, labeled) -> bool:
        if p["version"] == FALLBACK_RANDOM:  # thumbnails of the whole pool computed since: plan properly
            ids = all_ids() if callable(all_ids) else all_ids
            bad = self.bad_ids()
            n = self.thumbs.rows()
            have = {r[0] for r in self._conn().execute("SELECT image_id FROM thumbs WHERE row < ?", (n,))}
            if all(i in have for i in ids if i not in bad):
                return True
        if p["version"] == version or version == NO_MODEL or not server_strategies()[strategy].needs_model:
            return False
        # a newer model: re-plan once its scores cover the unlabeled pool
        bad = self.bad_ids()
        ids = all_ids() if callable(all_ids) else all_ids
        scored = self._scored_ids(version)
        return all(i in scored for i in ids if i not in labeled and i not in bad)

    def _scored_ids(self, version: str) -> set[str]:
        """Frames with a score and a whole latent row under this version (no latent is read)."""
        dim = self._conn().execute("SELECT dim FROM versions WHERE version=?", (version,)).fetchone()
        if not dim:
            return set()
        n = self._latents(version, int(dim[0])).rows()
        return {r[0] for r in self._conn().execute("SELECT image_id FROM scores WHERE version=? AND row < ?",
                                                   (version, n))}

    # -- quality -------------------------------------------------------------------------
    def add_quality(self, image_id: str, version: str, dice: float, ts: float | None = None) -> None:
        """The Dice of a model's prediction against a label saved while it was current (once per frame)."""
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO quality VALUES (?, ?, ?, ?)",
                      (image_id, version, float(dice), time.time() if ts is None else ts))

    def has_quality(self, image_id: str, version: str) -> bool:
        return self._conn().execute("SELECT 1 FROM quality WHERE image_id=? AND version=?",
                                    (image_id, version)).fetchone() is not None

    def quality(self) -> dict:
        """The per-model curve and the stopping signal (polypal.quality)."""
        from .quality import stopping_signal, summarize

        curve = summarize(self._conn().execute("SELECT version, dice, ts FROM quality").fetchall())
        for c in curve:
            c["first_measured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(c["first_measured"]))
        return {"by_model": curve, "stopping": stopping_signal(curve)}

    # -- annotation effort -----------------------------------------------------------------
    def add_effort(self, image_id: str, client_id: str, served: float | None, labeled: float, version: str) -> None:
        """Who labeled a frame, when it was served and labeled, and the model current at the time."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO effort VALUES (?, ?, ?, ?, ?)",
                      (image_id, client_id, served, labeled, version))

    def annotators(self) -> dict:
        """Per annotator: labels saved and the median seconds from serving to saving."""
        out: dict[str, list] = {}
        for client, served, labeled in self._conn().execute("SELECT client_id, served, labeled FROM effort"):
            out.setdefault(client, []).append(None if served is None else labeled - served)
        res = {}
        for client, secs in sorted(out.items()):
            known = sorted(x for x in secs if x is not None and x >= 0)
            res[client] = {"labels": len(secs),
                           "median_seconds_per_label": round(float(np.median(known)), 1) if known else None}
        return res

    def release(self, image_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM leases WHERE image_id=?", (image_id,))

    def summary(self) -> dict:
        c = self._conn()
        return {
            "versions": dict(c.execute("SELECT version, COUNT(*) FROM scores GROUP BY version")),
            "thumbnails": c.execute("SELECT COUNT(*) FROM thumbs").fetchone()[0],
            "bad_frames": self.bad(),
            "plans": {r[0]: {"cycle": r[1], "version": r[2], "size": r[3], "note": r[4],
                             "planned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(r[5]))}
                      for r in c.execute("SELECT strategy, MAX(cycle), version, size, note, created FROM plan_meta "
                                         "GROUP BY strategy")},
            "leases": c.execute("SELECT COUNT(*) FROM leases").fetchone()[0],
        }
