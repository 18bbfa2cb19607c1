"""The node's SQLite database (``<data dir>/carml.sqlite3``): benchmark runs, evaluations, feedback.

One connection, used from one dedicated thread, so the event loop never blocks on disk and callers never share a
connection across threads. Each feature declares its own tables with :meth:`Database.ensure` (``CREATE TABLE IF NOT
EXISTS``; idempotent), so modules stay independent of each other.

    async with Database(path) as db:
        await db.ensure("feedback", "CREATE TABLE IF NOT EXISTS feedback (...)")
        rows = await db.run(lambda c: c.execute("SELECT ...").fetchall())
        await db.run(lambda c: insert_many(c, ...))   # inside: ``with transaction(c): ...`` for atomic writes

The connection is in autocommit mode: a lone statement commits by itself; :func:`transaction` groups several.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from ..errors import ConfigError

T = TypeVar("T")

FILENAME = "carml.sqlite3"


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN ... COMMIT, or ROLLBACK when the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._schemas: set[str] = set()
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carml-db")
        try:
            self._conn = await self._call(self._connect)
        except sqlite3.Error as exc:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise ConfigError(f"cannot open the database {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            raise ConfigError("the database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the database thread (wrap several writes in :func:`transaction`)."""
        conn = self._conn
        if conn is None:
            raise ConfigError("the database is closed")
        return await self._call(lambda: fn(conn))

    async def ensure(self, name: str, *statements: str) -> None:
        """Run a feature's ``CREATE ... IF NOT EXISTS`` statements once per process."""
        async with self._lock:
            if name in self._schemas:
                return

            def create(conn: sqlite3.Connection) -> None:
                with transaction(conn):
                    for statement in statements:
                        conn.execute(statement)

            await self.run(create)
            self._schemas.add(name)

    async def aclose(self) -> None:
        conn, pool = self._conn, self._pool
        self._conn = None
        if conn is not None and pool is not None:
            await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        if pool is not None:
            pool.shutdown(wait=True)
        self._pool = None
