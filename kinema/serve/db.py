"""One small SQL interface over SQLite (default) and PostgreSQL (a queue shared by several hosts).

Statements are written once with ``?`` placeholders; the PostgreSQL side rewrites them to ``%s``.
Each thread gets its own connection. Writes that must be atomic run in ``transaction()``, which is
``BEGIN IMMEDIATE`` on SQLite (one writer at a time, others wait) and an ordinary transaction on
PostgreSQL, where claims use ``FOR UPDATE SKIP LOCKED`` instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

from ..config import ConfigError

Row = dict[str, Any]


class Database:
    """A thread-safe handle on one SQLite file or PostgreSQL database, opened from a URL."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            if importlib.util.find_spec("psycopg") is None:  # fail at startup, with the install hint
                raise ConfigError("a postgresql:// job store needs psycopg: pip install 'psycopg[binary]'")
        elif url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self.path = Path(url[len("sqlite:///"):])
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            raise ConfigError(f"job store URL must start with sqlite:/// or postgresql://, got {url!r}")
        self._local = threading.local()

    # -- connections ---------------------------------------------------------------------------------------
    def _connect(self):
        if self.dialect == "sqlite":
            # isolation_level=None: autocommit, so transactions are exactly the BEGIN ... COMMIT we write.
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn
        import psycopg
        from psycopg.rows import dict_row
        return psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=10)

    def _conn(self):
        held = getattr(self._local, "held", None)
        if held is None or (self.dialect == "postgresql" and held.conn.closed):
            held = self._local.held = _Held(self._connect())
        return held.conn

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        held = getattr(self._local, "held", None)
        if held is not None:
            held.close()
            self._local.held = None

    # -- statements ----------------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _run(self, conn, sql: str, params: tuple) -> list[Row]:
        cur = conn.execute(self._sql(sql), params)
        if cur.description is None:
            return []
        return [dict(r) for r in cur.fetchall()]

    def execute(self, sql: str, params: tuple = ()) -> list[Row]:
        """Run one statement on its own; rows as dicts (empty for statements that return none)."""
        if self.dialect == "postgresql":
            import psycopg
            try:
                return self._run(self._conn(), sql, params)
            except psycopg.OperationalError:  # the server restarted or dropped us: reconnect once
                self.close()
                return self._run(self._conn(), sql, params)
        return self._run(self._conn(), sql, params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A block whose statements commit together, or not at all if it raises."""
        conn = self._conn()
        if self.dialect == "postgresql":
            import psycopg
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(conn.transaction())  # BEGIN: where a connection the server dropped fails
                except psycopg.OperationalError:  # reconnect once, as execute() does
                    self.close()
                    conn = self._conn()
                    stack.enter_context(conn.transaction())
                yield Transaction(self, conn)
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield Transaction(self, conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def store_error_types() -> tuple[type, ...]:
    """The drivers' errors for a job store that cannot be reached (a database restart, a network blip): sqlite3's,
    and psycopg's where it is installed."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.OperationalError,)
    return (sqlite3.OperationalError, psycopg.OperationalError, psycopg.InterfaceError)


def is_store_error(err: BaseException) -> bool:
    """Whether ``err`` is the job store being unreachable, not a fault of the job."""
    return isinstance(err, store_error_types())


class _Held:
    """A thread's connection, closed when the thread ends (its thread-local slot is dropped) or the handle is:
    a connection only dropped would be closed by the driver's finaliser, which psycopg warns about."""

    def __init__(self, conn):
        self.conn = conn

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 -- a connection the server already dropped has nothing left to close
            pass

    def __del__(self):
        self.close()


class Transaction:
    """Statements inside one ``Database.transaction()`` block."""

    def __init__(self, db: Database, conn):
        self.db, self.conn, self.dialect = db, conn, db.dialect

    def execute(self, sql: str, params: tuple = ()) -> list[Row]:
        """Run one statement in this transaction; rows as dicts."""
        return self.db._run(self.conn, sql, params)
