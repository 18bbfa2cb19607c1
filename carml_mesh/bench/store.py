"""Benchmark runs in the node's SQLite database: ``bench_runs`` (one row per run: configuration, environment,
results and progress as JSON) and ``bench_queries`` (the raw per-query rows, for export)."""

from __future__ import annotations

import builtins
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..store.db import Database, transaction

if TYPE_CHECKING:
    from .runner import Query

TABLES = (
    """CREATE TABLE IF NOT EXISTS bench_runs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scenario TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        node_id TEXT NOT NULL,
        node_name TEXT NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        config TEXT NOT NULL,
        environment TEXT NOT NULL,
        progress TEXT NOT NULL,
        results TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS bench_runs_created ON bench_runs (created_at DESC)",
    """CREATE TABLE IF NOT EXISTS bench_queries (
        run_id TEXT NOT NULL REFERENCES bench_runs (id) ON DELETE CASCADE,
        point INTEGER NOT NULL,
        target TEXT NOT NULL,
        batch_size INTEGER NOT NULL,
        concurrency INTEGER NOT NULL,
        qps REAL,
        idx INTEGER NOT NULL,
        issued_ms REAL NOT NULL,
        latency_ms REAL NOT NULL,
        ok INTEGER NOT NULL,
        error TEXT,
        network_ms REAL,
        node_ms REAL,
        queue_ms REAL,
        preprocess_ms REAL,
        compute_ms REAL,
        postprocess_ms REAL,
        server_total_ms REAL
    )""",
    "CREATE INDEX IF NOT EXISTS bench_queries_run ON bench_queries (run_id, point, idx)",
)
EXPORT_COLUMNS = (
    "point",
    "target",
    "batch_size",
    "concurrency",
    "qps",
    "idx",
    "issued_ms",
    "latency_ms",
    "ok",
    "error",
    "network_ms",
    "node_ms",
    "queue_ms",
    "preprocess_ms",
    "compute_ms",
    "postprocess_ms",
    "server_total_ms",
)
INTERRUPTED = "the node stopped before the run finished"
EXPORT_PAGE = 5000


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts is not None else None


def epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def target_label(target: dict[str, Any]) -> str:
    """``model@version/framework/device@node``, the target column of the export."""
    where = "/".join(str(target.get(k) or "*") for k in ("framework", "device"))
    return f"{target.get('model')}@{target.get('version') or '*'}/{where}@{target.get('node') or '*'}"


def summary(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """A run in three figures, the best over its configurations: highest throughput, lowest p50 and p99."""
    ips = [r["throughput_ips"] for r in results if r.get("throughput_ips")]
    p50 = [r["latency_ms"]["p50"] for r in results if (r.get("latency_ms") or {}).get("p50") is not None]
    p99 = [r["latency_ms"]["p99"] for r in results if (r.get("latency_ms") or {}).get("p99") is not None]
    return {
        "throughput_ips": max(ips) if ips else None,
        "p50_ms": min(p50) if p50 else None,
        "p99_ms": min(p99) if p99 else None,
    }


def brief(doc: dict[str, Any]) -> dict[str, Any]:
    """A run as GET /api/benchmarks lists it."""
    return {
        "id": doc["id"],
        "name": doc["name"],
        "scenario": doc["scenario"],
        "status": doc["status"],
        "error": doc.get("error"),
        "created_at": doc["created_at"],
        "finished_at": doc.get("finished_at"),
        "node": doc["node"],
        "targets": doc["config"].get("targets", []),
        "progress": doc.get("progress"),
        "summary": summary(doc.get("results") or []),
    }


def _row_document(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "scenario": row["scenario"],
        "status": row["status"],
        "error": row["error"],
        "progress": json.loads(row["progress"]),
        "config": json.loads(row["config"]),
        "environment": json.loads(row["environment"]),
        "node": {"id": row["node_id"], "name": row["node_name"]},
        "created_at": iso(row["created_at"]),
        "finished_at": iso(row["finished_at"]),
        "results": json.loads(row["results"]),
    }


class BenchStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ensure(self) -> None:
        await self.db.ensure("bench", *TABLES)

    async def save(self, doc: dict[str, Any]) -> None:
        """Insert or update a run from its document (as :meth:`get` gives it back)."""
        values = (
            doc["id"],
            doc["name"],
            doc["scenario"],
            doc["status"],
            doc.get("error"),
            doc["node"]["id"],
            doc["node"]["name"],
            epoch(doc["created_at"]),
            epoch(doc.get("finished_at")),
            json.dumps(doc["config"]),
            json.dumps(doc["environment"], default=str),
            json.dumps(doc["progress"]),
            json.dumps(doc["results"], allow_nan=False),
        )
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO bench_runs (id, name, scenario, status, error, node_id, node_name, created_at, "
                "finished_at, config, environment, progress, results) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET status=excluded.status, error=excluded.error, "
                "finished_at=excluded.finished_at, environment=excluded.environment, progress=excluded.progress, "
                "results=excluded.results",
                values,
            )
        )

    async def add_queries(self, run_id: str, point: int, result: dict[str, Any], queries: Iterable[Query]) -> None:
        label = target_label(result["target"])
        batch, concurrency, qps = result["batch_size"], result["concurrency"], result.get("qps")
        rows = [
            (
                run_id,
                point,
                label,
                batch,
                concurrency,
                qps,
                q.index,
                round(q.issued_ms, 4),
                round(q.latency_ms, 4),
                int(q.ok),
                q.error,
                *(round(q.parts[k], 4) if q.ok else None for k in ("network", "node", "queue")),
                *(round(q.parts[k], 4) if q.ok else None for k in ("preprocess", "compute", "postprocess")),
                round(q.server_total_ms, 4) if q.server_total_ms is not None else None,
            )
            for q in queries
        ]

        def insert(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany(f"INSERT INTO bench_queries VALUES ({','.join('?' * 18)})", rows)

        await self.db.run(insert)

    async def get(self, run_id: str) -> dict[str, Any] | None:
        row = await self.db.run(lambda c: c.execute("SELECT * FROM bench_runs WHERE id = ?", (run_id,)).fetchone())
        return _row_document(row) if row is not None else None

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.run(
            lambda c: c.execute("SELECT * FROM bench_runs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        )
        return [brief(_row_document(r)) for r in rows]

    async def queries(self, run_id: str) -> builtins.list[dict[str, Any]]:
        """Every per-query row of a run, in order (a small run's: see :meth:`query_pages` for a large one)."""
        return [row async for page in self.query_pages(run_id) for row in page]

    async def query_pages(
        self, run_id: str, page_size: int = EXPORT_PAGE
    ) -> AsyncIterator[builtins.list[dict[str, Any]]]:
        """The per-query rows of a run in order (configuration, then query index), ``page_size`` at a time, so an
        export of a long run never holds it whole (keyset pagination on the (run_id, point, idx) index)."""
        cols = ", ".join(EXPORT_COLUMNS)
        after = (-1, -(2**62))
        while True:
            query = (
                f"SELECT {cols} FROM bench_queries WHERE run_id = ? AND (point, idx) > (?, ?) "
                "ORDER BY point, idx LIMIT ?"
            )
            rows = await self.db.run(functools.partial(_fetch_all, query, (run_id, *after, page_size)))
            if not rows:
                return
            yield [dict(r) for r in rows]
            if len(rows) < page_size:
                return
            after = (rows[-1]["point"], rows[-1]["idx"])

    async def mark_interrupted(self) -> int:
        """Runs a previous process left 'running' (it crashed or was killed): failed, with the reason."""
        return await self.db.run(
            lambda c: (
                c.execute(
                    "UPDATE bench_runs SET status = 'failed', error = ? WHERE status = 'running'", (INTERRUPTED,)
                ).rowcount
            )
        )


def _fetch_all(query: str, args: tuple[object, ...], c: sqlite3.Connection) -> builtins.list[sqlite3.Row]:
    return c.execute(query, args).fetchall()
