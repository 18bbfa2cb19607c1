"""The benchmark store: per-query rows read back in order, a page at a time (an export never holds a long run)."""

from __future__ import annotations

from pathlib import Path

from carml_mesh.bench.runner import Query
from carml_mesh.bench.store import BenchStore
from carml_mesh.store.db import Database

PARTS = dict.fromkeys(("network", "node", "queue", "preprocess", "compute", "postprocess"), 0.5)


def doc(run_id: str) -> dict:
    return {
        "id": run_id,
        "name": "paged",
        "scenario": "offline",
        "status": "done",
        "node": {"id": "n1", "name": "one"},
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "finished_at": None,
        "config": {},
        "environment": {},
        "progress": {},
        "results": [],
    }


async def test_rows_come_back_in_order_a_page_at_a_time(tmp_path: Path) -> None:
    async with Database(tmp_path / "db.sqlite") as db:
        store = BenchStore(db)
        await store.ensure()
        for run_id in ("a" * 16, "b" * 16):
            await store.save(doc(run_id))
            for point, count in ((0, 23), (1, 7), (2, 0), (3, 11)):
                result = {"target": {"model": "m"}, "batch_size": 1, "concurrency": 2, "qps": None}
                queries = [Query(i, float(i), 1.0 + point, i % 5 != 0, None, PARTS, 3.0) for i in range(count)]
                await store.add_queries(run_id, point, result, queries)
        pages = [page async for page in store.query_pages("a" * 16, page_size=5)]
        assert [len(p) for p in pages] == [5] * 8 + [1]  # 41 rows
        rows = [row for page in pages for row in page]
        assert [(r["point"], r["idx"]) for r in rows] == [
            (p, i) for p, n in ((0, 23), (1, 7), (3, 11)) for i in range(n)
        ]
        assert rows == await store.queries("a" * 16)  # the other run's rows are not in it
        assert rows[1]["network_ms"] == 0.5 and rows[0]["network_ms"] is None  # a failed query has no parts
        assert [page async for page in store.query_pages("c" * 16)] == []
