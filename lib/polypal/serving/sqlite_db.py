"""One SQLite database shared by several processes: WAL mode, a connection per thread.

WAL lets readers proceed while one writer commits; ``synchronous=NORMAL`` in
WAL mode keeps every committed transaction across a process crash (SIGKILL).
``tx()`` takes the write lock at BEGIN (IMMEDIATE), so a read-modify-write
inside it cannot interleave with another process's.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager


class SQLiteDB:
    def __init__(self, path, schema: str = ""):
        self.path = str(path)
        self._local = threading.local()
        if schema:
            self.conn().executescript(schema)

    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = c
        return c

    @contextmanager
    def tx(self):
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
