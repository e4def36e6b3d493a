"""The plan book and the lease book: planned batches and who holds which frame.

- ``PlanBook``: per strategy, the batches (cycles) planned so far; a new one is swapped in
  atomically, unless another process planned that cycle meanwhile.
- ``LeaseBook``: a served frame belongs to its client until it is labeled, the same client
  asks again, or the lease times out.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (strategy TEXT, cycle INTEGER, pos INTEGER, image_id TEXT, score REAL,
                                  picked_by TEXT, PRIMARY KEY (strategy, cycle, pos));
CREATE TABLE IF NOT EXISTS plan_meta (strategy TEXT, cycle INTEGER, version TEXT, created REAL, size INTEGER,
                                      note TEXT, PRIMARY KEY (strategy, cycle));
CREATE TABLE IF NOT EXISTS leases (image_id TEXT PRIMARY KEY, client_id TEXT, strategy TEXT, expires REAL);
"""


class PlanBook:
    def __init__(self, db):
        self._db = db
        # a stored batch never changes (plans are append-only, one transaction each), so its rows are
        # read from SQLite once per process: the latest cycle per strategy, {strategy: (cycle, rows)}
        self._rows: dict[str, tuple[int, list]] = {}

    def current(self, strategy: str) -> dict | None:
        """The latest batch: {"cycle", "version", "size", "note", "rows": [(pos, id, score, picked_by)]}."""
        c = self._db.conn()
        m = c.execute("SELECT cycle, version, size, note FROM plan_meta WHERE strategy=? ORDER BY cycle DESC LIMIT 1",
                      (strategy,)).fetchone()
        if m is None:
            return None
        cached = self._rows.get(strategy)
        if cached is not None and cached[0] == m[0]:
            rows = cached[1]
        else:
            rows = c.execute("SELECT pos, image_id, score, picked_by FROM plans WHERE strategy=? AND cycle=? "
                             "ORDER BY pos", (strategy, m[0])).fetchall()
            self._rows[strategy] = (m[0], rows)
        return {"cycle": m[0], "version": m[1], "size": m[2], "note": m[3], "rows": rows}

    def last_cycle(self, strategy: str) -> int:
        return self._db.conn().execute("SELECT MAX(cycle) FROM plan_meta WHERE strategy=?",
                                       (strategy,)).fetchone()[0] or 0

    def swap_in(self, strategy: str, cycle: int, plan) -> bool:
        """Store ``plan`` as ``cycle``; False (nothing stored) when a cycle >= it exists already."""
        rows = [(strategy, cycle, k + 1, i, s, by) for k, (i, s, by) in enumerate(plan.rows)]
        with self._db.tx() as c:
            now_last = c.execute("SELECT MAX(cycle) FROM plan_meta WHERE strategy=?", (strategy,)).fetchone()[0] or 0
            if now_last != cycle - 1:
                logger.info(f"{strategy}: cycle {cycle} was planned elsewhere meanwhile; keeping that plan")
                return False
            c.executemany("INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?)", rows)
            c.execute("INSERT INTO plan_meta VALUES (?, ?, ?, ?, ?, ?)",
                      (strategy, cycle, plan.version, time.time(), len(rows), plan.note))
        return True

    def summary(self) -> dict:
        return {r[0]: {"cycle": r[1], "version": r[2], "size": r[3], "note": r[4],
                       "planned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(r[5]))}
                for r in self._db.conn().execute(
                    "SELECT strategy, MAX(cycle), version, size, note, created FROM plan_meta GROUP BY strategy")}


ANONYMOUS = "anonymous"  # the client id of requests that send none


class LeaseBook:
    def __init__(self, db, lease_seconds: float):
        self._db, self.lease_seconds = db, lease_seconds

    def lease_next(self, strategy: str, plan: dict, client_id: str, labeled: set[str], now: float, exists=None):
        """Lease this client the first frame of ``plan`` that is neither labeled nor held by another
        client (and, with ``exists``, still in the datastore: a frame deleted after its batch was planned
        is skipped); (plan row or None, ids held by others, ids ``exists`` refused). The client's earlier
        leases are released, except for ``ANONYMOUS`` (requests without a client id): those cannot say
        who moved on, so each keeps its frame until it is labeled or the lease times out."""
        gone: set[str] = set()
        with self._db.tx() as c:
            c.execute("DELETE FROM leases WHERE expires < ?", (now,))
            if client_id != ANONYMOUS:  # the client moved on: its unlabeled leases go back to the pool
                c.execute("DELETE FROM leases WHERE client_id=?", (client_id,))
            held = {r[0] for r in c.execute("SELECT image_id FROM leases")}
            for row in plan["rows"]:
                image_id = row[1]
                if image_id in labeled or image_id in held:
                    continue
                if exists is not None and not exists(image_id):
                    gone.add(image_id)
                    continue
                c.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                          (image_id, client_id, strategy, now + self.lease_seconds))
                return row, held, gone
        return None, held, gone

    def release(self, image_id: str) -> None:
        with self._db.tx() as c:
            c.execute("DELETE FROM leases WHERE image_id=?", (image_id,))

    def shorten_to_timeout(self, now: float | None = None) -> int:
        """Leases kept from an earlier run end no later than this run's timeout from now (a server restarted
        with a shorter ``lease_timeout`` held the old run's frames for the old timeout); how many changed."""
        now = time.time() if now is None else now
        with self._db.tx() as c:
            return c.execute("UPDATE leases SET expires=? WHERE expires > ?",
                             (now + self.lease_seconds, now + self.lease_seconds)).rowcount

    def release_client(self, client_id: str) -> int:
        """The client's leases go back to the pool (it signed out); how many."""
        with self._db.tx() as c:
            return c.execute("DELETE FROM leases WHERE client_id=?", (client_id,)).rowcount

    def count(self, now: float | None = None, present=None, labeled=None) -> int:
        """Leases not timed out (expired rows are only deleted when a frame is next leased), of frames still
        in the datastore when ``present`` (a set of ids) is given, and not labeled when ``labeled`` is (a label
        that did not come through a save, e.g. put back from the trash, leaves its lease until it times out)."""
        now = time.time() if now is None else now
        if present is None and labeled is None:
            return self._db.conn().execute("SELECT COUNT(*) FROM leases WHERE expires >= ?", (now,)).fetchone()[0]
        return sum(1 for (i,) in self._db.conn().execute("SELECT image_id FROM leases WHERE expires >= ?", (now,))
                   if (present is None or i in present) and (labeled is None or i not in labeled))
