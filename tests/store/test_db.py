import sqlite3

import pytest

from carml_mesh.errors import ConfigError
from carml_mesh.store.db import Database, transaction


async def test_tables_rows_and_transactions(tmp_path):
    async with Database(tmp_path / "x.sqlite3") as db:
        await db.ensure("t", "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)")
        await db.ensure("t", "CREATE TABLE t (k TEXT)")  # once per process: not run again
        await db.run(lambda c: c.execute("INSERT INTO t VALUES ('a', 1)"))

        def failing(c: sqlite3.Connection) -> None:
            with transaction(c):
                c.execute("INSERT INTO t VALUES ('b', 2)")
                c.execute("INSERT INTO t VALUES ('a', 3)")  # primary key taken: the whole block rolls back

        with pytest.raises(sqlite3.IntegrityError):
            await db.run(failing)
        rows = await db.run(lambda c: [tuple(r) for r in c.execute("SELECT k, v FROM t ORDER BY k")])
        assert rows == [("a", 1)]
    async with Database(tmp_path / "x.sqlite3") as db:  # kept on disk
        assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    with pytest.raises(ConfigError, match="closed"):
        await db.run(lambda c: None)


async def test_unopenable_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot open the database"):
        async with Database(tmp_path / "missing" / "x.sqlite3"):
            pass
