"""The live AL cycle for an annotation server: features, plans, leases, in one folder.

Server-independent: the MONAI Label app calls this, and tests call it directly.
``ActiveLearningState`` ties together the feature store (``features``), the pure
planner (``planner``), the plan and lease books (``plans``) and the annotation log
(``annotations``); all share one SQLite database in WAL mode, safe across the server
and its scoring/training subprocesses. ``refresh`` brings it up to date for a model.

A plan is replaced (next cycle) when a new model version is published and scored, or
when none of its frames is left to serve. With ``background=True`` (the server), a
re-plan runs in a thread while the previous batch keeps being served, and the new one
is swapped in atomically.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from polypal.sampler import server_strategies
from polypal.serving import annotations, features, plans
from polypal.serving.annotations import AnnotationLog
from polypal.serving.features import NO_MODEL, FeatureStore
from polypal.serving.planner import FALLBACK_RANDOM, plan_batch
from polypal.serving.plans import ANONYMOUS, LeaseBook, PlanBook
from polypal.serving.sqlite_db import SQLiteDB

logger = logging.getLogger(__name__)


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
                 studies: str | os.PathLike | None = None, video_cap: int | str = "auto"):
        """``background``: a re-plan for a newer model runs in a thread while the current batch keeps
        being served (the server); otherwise next_frame plans before answering (tests, scripts).
        ``studies``: a folder with ingested video (polypal.video): batches are planned over one clean
        representative per group of near-duplicates, at most ``video_cap`` frames of one video per batch
        ('auto': ceil(batch / videos); 'off'; polypal.video.capped_select)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.gamma, self.lease_seconds, self.seed = int(batch_size), float(gamma), lease_seconds, seed
        self._db = SQLiteDB(self.folder / "state.sqlite", features.SCHEMA + plans.SCHEMA + annotations.SCHEMA)
        self.features = FeatureStore(self.folder, self._db)
        self.plans, self.leases = PlanBook(self._db), LeaseBook(self._db, lease_seconds)
        self.log = AnnotationLog(self._db)
        self.background = background
        self.studies = str(studies) if studies else None
        self.video_cap = video_cap
        self._planning: set[str] = set()
        self._not_before: dict[tuple[str, str], float] = {}
        self._planning_lock = threading.Lock()
        self._next_batch_locks: dict[str, threading.Lock] = {}  # one next-batch selection at a time, per strategy
        f, lg = self.features, self.log  # the parts' API, as the app and tests use it
        self.missing_thumbs, self.add_thumbs, self.thumbs_for = f.missing_thumbs, f.add_thumbs, f.thumbs_for
        self.mark_bad, self.bad_ids, self.bad = f.mark_bad, f.bad_ids, f.bad
        self.unscored, self.add_scores, self.scores_for = f.unscored, f.add_scores, f.scores_for
        self.add_quality, self.has_quality, self.quality = lg.add_quality, lg.has_quality, lg.quality
        self.stopping = lg.stopping
        self.add_effort, self.annotators = lg.add_effort, lg.annotators
        self.current_plan, self.release = self.plans.current, self.leases.release

    def _conn(self):
        return self._db.conn()

    # -- planning ------------------------------------------------------------------------
    def plan(self, strategy: str, all_ids: list[str], labeled: set[str], version: str) -> dict | None:
        """Select a new batch (next cycle) for a server strategy; None when nothing is left.

        The selection (seconds at 100,000 frames) runs outside any lock: other annotators keep
        being served; the batch is swapped in atomically unless another process planned it meanwhile."""
        servable = server_strategies()
        if strategy not in servable:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(servable)}")
        video = None
        if self.studies:
            from polypal.video import load_index

            video = load_index(self.studies)
        cycle = self.plans.last_cycle(strategy) + 1
        p = plan_batch(strategy, all_ids, labeled, version, self.features, self.batch_size, self.gamma, self.seed,
                       cycle, video=video, video_cap=self.video_cap)
        if p is None:
            return None
        if self.plans.swap_in(strategy, cycle, p):
            logger.info(f"planned {strategy} cycle {cycle}: {len(p.rows)} frames (model {version})"
                        f"{'; ' + p.note if p.note else ''}")
        return self.current_plan(strategy)

    def plan_is_stale(self, strategy: str, version: str, all_ids: list[str], labeled: set[str]) -> bool:
        """True when a (re)plan is due: none yet, or a newer model is published and scored."""
        p = self.current_plan(strategy)
        return p is None or self._needs_replan(strategy, p, version, all_ids, labeled)

    def _may_need_replan(self, strategy, p, version) -> bool:
        """The cheap part of _needs_replan: a plan made by the random fallback, or a newer model than the
        plan's for a strategy that uses it."""
        if p["version"] == FALLBACK_RANDOM:
            return True
        return not (p["version"] == version or not server_strategies()[strategy].needs_model or version == NO_MODEL)

    def _needs_replan(self, strategy, p, version, all_ids, labeled) -> bool:
        ids = all_ids() if callable(all_ids) else all_ids
        if p["version"] == FALLBACK_RANDOM:  # thumbnails of the whole pool computed since: plan properly
            bad, have = self.bad_ids(), self.features.thumbed_ids()
            if all(i in have for i in ids if i not in bad):
                return True
        if p["version"] == version or version == NO_MODEL or not server_strategies()[strategy].needs_model:
            return False
        # a newer model: re-plan once its scores cover the unlabeled pool
        bad, scored = self.bad_ids(), self.features.scored_ids(version)
        return all(i in scored for i in ids if i not in labeled and i not in bad)

    def _plan_in_background(self, strategy: str, all_ids, labeled: set[str], version: str, relabel=None) -> None:
        with self._planning_lock:
            if strategy in self._planning or time.time() < self._not_before.get((strategy, version), 0):
                return
            self._planning.add(strategy)

        def run():
            try:
                ids = all_ids() if callable(all_ids) else list(all_ids)
                # not beside a request selecting the next batch (one of the two would be thrown away): after
                # it, the batch it made is judged (it may be for the new model already)
                with self._next_batch_lock(strategy):
                    now = set(relabel()) if relabel is not None else set(labeled)  # labeled while it waited too
                    p = self.current_plan(strategy)
                    if p is None or self._needs_replan(strategy, p, version, ids, now):
                        self.plan(strategy, ids, now, version)
                    else:  # the new model is not scored yet: look again in a while, not at every request
                        self._not_before[(strategy, version)] = time.time() + 2.0
            except Exception:  # noqa: BLE001 - logged; the previous plan keeps being served
                logger.exception(f"background re-plan of {strategy} failed")
                self._not_before[(strategy, version)] = time.time() + 2.0  # not again at every request
            finally:
                with self._planning_lock:
                    self._planning.discard(strategy)

        threading.Thread(target=run, name=f"polypal-plan-{strategy}", daemon=True).start()

    def planning(self) -> set[str]:
        """Strategies whose re-plan is running in a background thread of this process."""
        with self._planning_lock:
            return set(self._planning)

    # -- serving -------------------------------------------------------------------------
    MAX_PLAN_TRIES = 8  # batches planned (or found planned by another request) for one next-sample request

    def next_frame(self, strategy: str, client_id: str, all_ids, labeled: set[str],
                   version: str, now: float | None = None, exists=None, relabel=None) -> Served | None:
        """The next frame of the strategy's batch for this client, leased to it; None if none left.

        ``all_ids`` is the list of frame ids, or a callable returning it: it is only
        needed when a batch has to be (re)planned. ``exists(id)``, when given, skips frames deleted
        (or labeled) since the batch was planned. ``relabel()``, when given, reads the labeled set again
        for a next batch (frames labeled during this request are centres of a coreset, not left out).
        """
        now = time.time() if now is None else now
        client_id = client_id or ANONYMOUS
        ids_cache = []

        def ids():
            if not ids_cache:
                ids_cache.append(all_ids() if callable(all_ids) else list(all_ids))
            return ids_cache[0]

        p = self.current_plan(strategy)
        if p is not None and self.background and self._may_need_replan(strategy, p, version):
            # a newer model: checking its scores and re-planning run in a thread; this batch keeps being
            # served until the new one is swapped in
            self._plan_in_background(strategy, all_ids, labeled, version, relabel)
        elif p is None or (not self.background and self._needs_replan(strategy, p, version, ids, labeled)):
            with self._next_batch_lock(strategy):  # the first batch too: requests at once take turns (below)
                cur = self.current_plan(strategy)
                if cur is not None and (p is None or cur["cycle"] > p["cycle"]):
                    p = cur  # planned by a request before this one, while it waited
                else:
                    p = self.plan(strategy, ids(), labeled, version)
        if p is None:
            return None
        row, held, gone = self.leases.lease_next(strategy, p, client_id, labeled, now, exists=exists)
        if row is not None:
            return self._served(strategy, p, row)
        # nothing servable left in this batch: the next one. Requests that find the batch used up at once (many
        # annotators) take turns: the first selects the next batch and leases from it, the others lease from
        # that one, and only select again when it is used up too (each selecting its own, and all but one
        # thrown away, cost K selections per batch, seconds each on a large pool, and requests that lost
        # every race answered {} with most frames left)
        gone_all, held_all = set(gone), set(held)
        with self._next_batch_lock(strategy):
            for _ in range(self.MAX_PLAN_TRIES):
                cur = self.current_plan(strategy)
                if cur is not None and cur["cycle"] > p["cycle"]:  # planned meanwhile (by a request before us)
                    p = cur
                else:
                    if relabel is not None:
                        labeled = set(relabel())
                    # without the frames that could not be served (else a batch of only those is planned again
                    # at every request) nor those held by others
                    p = self.plan(strategy, [i for i in ids() if i not in gone_all or i in labeled],
                                  set(labeled) | held_all, version)
                    if p is None:
                        return None
                row, held, gone = self.leases.lease_next(strategy, p, client_id, labeled, now, exists=exists)
                if row is not None:
                    return self._served(strategy, p, row)
                gone_all |= gone
                held_all |= held
        return None

    def _next_batch_lock(self, strategy: str) -> threading.Lock:
        with self._planning_lock:
            return self._next_batch_locks.setdefault(strategy, threading.Lock())

    @staticmethod
    def _served(strategy: str, p: dict, row) -> Served:
        pos, image_id, score, by = row
        return Served(image_id, strategy, score, by, p["cycle"], pos, p["size"], p["version"], p["note"])

    def summary(self, labeled: set[str] | None = None, present: set[str] | None = None) -> dict:
        """Counts for /info; with ``labeled``, each plan also says how many of its frames are left to label
        (of those still in the datastore, when ``present`` is given: a deleted frame is never served)."""
        plans = self.plans.summary()
        if labeled is not None:
            for name, p in plans.items():
                cur = self.current_plan(name)
                p["left_to_label"] = sum(1 for r in cur["rows"] if r[1] not in labeled
                                         and (present is None or r[1] in present)) if cur else 0
        leases = self.leases.count(present=present, labeled=labeled)
        return {**self.features.summary(), "plans": plans, "leases": leases}
