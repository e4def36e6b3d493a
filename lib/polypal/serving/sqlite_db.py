"""One SQLite database shared by several processes: WAL mode, a connection per thread.

WAL lets readers proceed while one writer commits; ``synchronous=FULL`` keeps
every committed transaction across a process crash (SIGKILL) and a power cut
(NORMAL, until 2026-12-07, only across the first: a label saved and answered
just before a power cut could come back with no record of who drew it, or the
label it replaced's; about 0.5 ms a commit here).
``tx()`` takes the write lock at BEGIN (IMMEDIATE), so a read-modify-write
inside it cannot interleave with another process's.

``counted(table)`` adds triggers that count a table's changes, and ``cached(key, table, compute)``
keeps a value computed from it until that count moves: a request that reads the whole labeled set
or annotation log costs one lookup while nothing changed, whichever process or connection writes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager

CHECKPOINT_S = float(os.environ.get("POLYPAL_CHECKPOINT_SECONDS", 30))


def counted(table: str, columns: str | None = None) -> str:
    """SQL: triggers that count the inserts and deletes of ``table`` (and updates of ``columns``, a comma
    list; of any column when None) in table ``changes``. They run in the writing transaction, so a count
    moves with every commit by any process and never with a rolled-back one."""
    # no row is written when the schema runs: opening a database must not wait for another's write lock
    bump = f"BEGIN INSERT INTO changes VALUES ('{table}', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;"
    return f"""
CREATE TABLE IF NOT EXISTS changes (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS {table}_inserted AFTER INSERT ON {table} {bump}
CREATE TRIGGER IF NOT EXISTS {table}_deleted AFTER DELETE ON {table} {bump}
CREATE TRIGGER IF NOT EXISTS {table}_updated AFTER UPDATE {'OF ' + columns + ' ' if columns else ''}ON {table} {bump}
"""


_dirty: set = set()  # databases written since their last checkpoint
_dirty_lock = threading.Lock()
_checkpointer: list = []  # the background thread, once started


def _checkpoint_soon(db) -> None:
    with _dirty_lock:
        _dirty.add(db)
        if not _checkpointer:
            t = threading.Thread(target=_checkpoint_loop, name="polypal-sqlite-checkpoint", daemon=True)
            _checkpointer.append(t)
            t.start()


def _checkpoint_loop() -> None:
    while True:
        time.sleep(CHECKPOINT_S)
        with _dirty_lock:
            dbs = list(_dirty)
            _dirty.clear()
        for db in dbs:
            db.checkpoint()


class DamagedDatabase(sqlite3.DatabaseError):
    """A database file damaged on disk; the message names the file and says what to do (a caller adds no
    advice of its own)."""


class SQLiteDB:
    def __init__(self, path, schema: str = "", check: bool = False):
        self.path = str(path)
        self._local = threading.local()
        self._cache: dict = {}
        try:
            if check:  # a database damaged on disk (a bad sector, a bad copy) is refused, not written on
                problem = self.conn().execute("PRAGMA quick_check(1)").fetchone()[0]
                if problem != "ok":
                    raise sqlite3.DatabaseError(problem)
            if schema:
                self.conn().executescript(schema)
        except sqlite3.OperationalError as e:  # locked, read-only, cannot be opened: not damage
            raise sqlite3.OperationalError(f"{self.path}: {e}") from None
        except sqlite3.DatabaseError as e:
            raise DamagedDatabase(
                f"{self.path}: cannot be used ({e}); put it back from a backup (with its -wal file beside it), "
                f"or move it aside to start afresh") from None

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            self._local.conn = c
        return c

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file, without waiting for readers (within
        ``CHECKPOINT_S`` seconds of a write, by a background thread: SQLite's own checkpoint waits for 4 MB
        of log, and until then the data is in the ``-wal`` file alone, which a backup or an rsync of the
        ``.sqlite`` files may leave out; a server stopped by SIGTERM does not run one)."""
        try:
            self.conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass

    @contextmanager
    def tx(self):
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:  # (a COMMIT that failed, e.g. on a full disk, has rolled back already:
                c.execute("ROLLBACK")  # a ROLLBACK then raised and hid the real error)
            raise
        if CHECKPOINT_S <= 0:  # (after the commit, outside it: the write is done whatever happens here)
            self.checkpoint()
        else:
            _checkpoint_soon(self)

    @contextmanager
    def snapshot(self):
        """Several reads that see one state of the database (a deferred transaction: WAL readers take their
        snapshot at the first read); within ``tx()`` they see its state already."""
        c = self.conn()
        if c.in_transaction:
            yield c
            return
        c.execute("BEGIN")
        try:
            yield c
        finally:
            c.execute("COMMIT")

    def changes(self, table: str) -> int | None:
        """How many times ``table`` changed (``counted`` triggers); None when the database has no count (an
        earlier version's, read without the schema, as polypal-export reads the AL state)."""
        try:
            row = self.conn().execute("SELECT n FROM changes WHERE name=?", (table,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return 0 if row is None else row[0]

    def cached(self, key, table: str, compute):
        """``compute()``, kept until ``table`` changes. Inside a transaction it is computed afresh and not kept
        (it may see writes that are rolled back). The count is read before computing: a change committed in
        between makes the value newer than its count says, and the next call computes it again."""
        c = self.conn()
        if c.in_transaction:
            return compute()
        n = self.changes(table)
        if n is None:
            return compute()
        hit = self._cache.get(key)
        if hit is not None and hit[0] == n:
            return hit[1]
        value = compute()
        self._cache[key] = (n, value)
        return value
