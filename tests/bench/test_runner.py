"""Small real benchmarks of digits-cnn through the session node: each scenario, the breakdown, storage, cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from carml_mesh.bench.config import parse_config
from carml_mesh.bench.runner import BREAKDOWN_KEYS, breakdown
from carml_mesh.bench.store import INTERRUPTED, BenchStore
from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node
from carml_mesh.store.db import FILENAME as DB_FILENAME
from carml_mesh.store.db import Database
from carml_mesh.web.bench_api import offers

REPO = Path(__file__).resolve().parents[2]
SHORT = {"min_queries": 30, "min_duration_s": 0.2, "warmup_queries": 3}


async def run(node: Node, **body: Any) -> dict[str, Any]:
    started = await node.benchmarks.start(parse_config({**SHORT, **body}, offers(node)))
    await node.benchmarks.wait(started.id)
    doc = await node.benchmarks.store.get(started.id)  # read back from SQLite, not from memory
    assert doc is not None
    return doc


def check_result(result: dict[str, Any], *, batch: int) -> None:
    assert result["errors"] == 0
    assert result["queries"] >= 30
    assert result["batch_size"] == batch
    target = result["target"]
    assert (target["model"], target["version"], target["device"]) == ("digits-cnn", "1.0.0", "cpu")
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["throughput_ips"] == pytest.approx(result["throughput_qps"] * batch)
    assert result["throughput_qps"] == pytest.approx(result["queries"] / result["duration_s"], rel=1e-3)
    parts = result["breakdown_ms"]
    assert set(parts) == {*BREAKDOWN_KEYS, "total"}
    assert parts["compute"] > 0 and parts["network"] > 0
    assert sum(parts[k] for k in BREAKDOWN_KEYS) == pytest.approx(parts["total"], rel=0.05)
    cdf = result["cdf"]
    assert 1 <= len(cdf) <= 100 and cdf[-1][1] == 1.0 and cdf[-1][0] == pytest.approx(lat["max"], abs=1e-3)
    util = result["utilisation"]
    assert util["cpu_percent"] is None or util["cpu_percent"] >= 0
    assert util["rss_mb"] is not None and util["rss_mb"] > 10  # the local worker's resident memory
    assert util["gpu_percent"] is None or 0 <= util["gpu_percent"] <= 100


async def test_single_stream_stored_with_per_query_rows_whose_parts_add_up(node: Node) -> None:
    doc = await run(node, scenario="single-stream", targets=[{"model": "digits-cnn", "framework": "onnxruntime"}])
    assert doc["status"] == "done", doc["error"]
    assert doc["progress"]["fraction"] == 1.0
    [result] = doc["results"]
    check_result(result, batch=1)
    assert result["input"] == "sample"
    assert result["target"]["framework"] == "onnxruntime" and result["target"]["node"] == node.name
    env = doc["environment"]
    card = env["cards"][node.id]
    assert card["hardware"]["cores"] >= 1
    shas = {m["sha256"] for m in card["models"] if m["name"] == "digits-cnn"}
    assert len(shas) == 2 and all(len(s) == 64 for s in shas)
    assert env["carml_mesh"]
    rows = await node.benchmarks.store.queries(doc["id"])
    assert len(rows) == result["queries"]
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    for r in rows:  # every query's parts add up to its end-to-end latency
        parts = sum(r[f"{k}_ms"] for k in BREAKDOWN_KEYS)
        assert parts == pytest.approx(r["latency_ms"], rel=0.05)
        assert r["server_total_ms"] <= r["latency_ms"]


async def test_offline_sweeps_batch_sizes_with_random_tensors(node: Node) -> None:
    doc = await run(
        node,
        scenario="offline",
        targets=[{"model": "digits-cnn", "framework": "pytorch"}],
        batch_sizes=[1, 4],
        concurrency=[2],
        input="random",
    )
    assert doc["status"] == "done", doc["error"]
    assert [(r["batch_size"], r["concurrency"]) for r in doc["results"]] == [(1, 2), (4, 2)]
    for r in doc["results"]:
        check_result(r, batch=r["batch_size"])
        assert r["input"] == "random" and r["target"]["framework"] == "pytorch"


async def test_server_at_a_fixed_load_and_the_p99_search(node: Node) -> None:
    doc = await run(node, scenario="server", targets=[{"model": "digits-cnn"}], qps=100, concurrency=[4])
    assert doc["status"] == "done", doc["error"]
    [result] = doc["results"]
    check_result(result, batch=1)
    assert result["qps"] == 100
    # LoadGen's schedule: max(min_queries, qps * min_duration) queries
    assert result["queries"] == 30
    searched = await run(
        node, scenario="server", targets=[{"model": "digits-cnn"}], qps=400, p99_bound_ms=1000, concurrency=[4]
    )
    [result] = searched["results"]
    search = result["search"]
    # a bound no query comes near: the upper bound passes at once and is the answer
    assert search["met"] and search["best_qps"] == 400 and len(search["steps"]) == 1
    assert result["qps"] == 400 and result["latency_ms"]["p99"] <= 1000
    tight = await run(
        node, scenario="server", targets=[{"model": "digits-cnn"}], qps=4000, p99_bound_ms=0.001, min_queries=10
    )
    search = tight["results"][0]["search"]
    # a bound nothing meets: bisection halves the load step after step, and reports it as not met
    assert not search["met"] and search["best_qps"] is None
    assert [s["qps"] for s in search["steps"]] == [4000 / 2**n for n in range(7)]
    assert tight["status"] == "done" and tight["results"][0]["qps"] == 62.5


async def test_cancel_stops_soon_and_keeps_what_was_measured(node: Node) -> None:
    started = await node.benchmarks.start(
        parse_config(
            {
                "scenario": "single-stream",
                "targets": [{"model": "digits-cnn"}],
                "min_duration_s": 60,
                "warmup_queries": 1,
            },
            offers(node),
        )
    )
    async with asyncio.timeout(20):
        while started.progress.done < 20:
            await asyncio.sleep(0.05)
    answer = await node.benchmarks.cancel(started.id)
    assert answer == {"id": started.id, "status": "cancelled"}  # cancel waits (bounded) for the run to stop
    doc = await node.benchmarks.store.get(started.id)
    assert doc is not None and doc["status"] == "cancelled" and doc["finished_at"]
    [result] = doc["results"]
    assert result["queries"] >= 20 and result["errors"] == 0 and result["cut_short"]
    assert len(await node.benchmarks.store.queries(started.id)) == result["queries"]


async def test_a_run_whose_every_query_fails_ends_failed_with_the_first_error(node: Node) -> None:
    doc = await run(node, scenario="single-stream", targets=[{"model": "digits-cnn", "device": "cuda:7"}])
    assert doc["status"] == "failed"
    assert "cuda:7" in doc["error"]
    [result] = doc["results"]
    assert result["errors"] == result["queries"] > 0
    assert result["latency_ms"]["p50"] is None


def test_breakdown_of_one_answer() -> None:
    answer = {
        "results": [
            {"timings_ms": {"decode": 0.5, "preprocess": 0.25, "queue": 0.2, "compute": 2.0, "postprocess": 0.1}},
            {"timings_ms": {"decode": 0.5, "preprocess": 0.25, "queue": 0.2, "compute": 2.0, "postprocess": 0.1}},
        ],
        "timings_ms": {"total": 5.0, "worker": 3.8, "load": 0.0, "node": 1.2},
        "batching": {"batch_size": 4, "requests": 2, "wait_ms": 0.4},
    }
    parts, total = breakdown(answer, client_ms=6.0, wait_ms=0.5)
    assert total == 5.0
    assert parts == pytest.approx(
        {"network": 1.0, "queue": 0.2 + 0.4 + 0.5, "preprocess": 1.5, "compute": 2.0, "postprocess": 0.1, "node": 0.8}
    )
    assert sum(parts.values()) == pytest.approx(6.5)  # client wait + HTTP exchange


async def test_node_shutdown_cancels_a_running_benchmark_and_stores_it(models_dir, tmp_path) -> None:
    config = NodeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "node",
        manifests_dirs=(REPO / "manifests",),
        name="short-lived",
        preload=False,
        executor="local",
        gossip=False,
    )
    async with Node(config) as node:
        body = {"scenario": "offline", "targets": [{"model": "digits-cnn"}], "min_duration_s": 60, "warmup_queries": 1}
        started = await node.benchmarks.start(parse_config(body, offers(node)))
        async with asyncio.timeout(30):
            while started.progress.done < 5:
                await asyncio.sleep(0.05)
    assert started.status == "cancelled"
    async with Database(tmp_path / "node" / DB_FILENAME) as db:
        doc = await BenchStore(db).get(started.id)
        assert doc is not None and doc["status"] == "cancelled" and doc["results"][0]["queries"] >= 5
        # a run a killed process left 'running' is failed, with the reason, when the node starts again
        doc["status"] = "running"
        await BenchStore(db).save(doc)
    async with Node(config) as node:
        doc = await node.benchmarks.document(started.id)
        assert doc is not None and doc["status"] == "failed" and doc["error"] == INTERRUPTED


async def test_a_server_schedule_is_reproducible_from_its_seed(node: Node) -> None:
    body = {"scenario": "server", "targets": [{"model": "digits-cnn"}], "qps": 300, "concurrency": [4]}
    first, second, other = [await run(node, **body, seed=seed) for seed in (5, 5, 6)]
    issued = [
        [r["issued_ms"] for r in await node.benchmarks.store.queries(doc["id"])] for doc in (first, second, other)
    ]
    assert issued[0] == issued[1]  # the same arrival times, to the microsecond
    assert issued[0] != issued[2]
    assert issued[0] == sorted(issued[0])
    # LoadGen's rule: at least 30 queries, and arrivals until one at or past 0.2 s (about 300 qps x 0.2 s = 60)
    assert len(issued[0]) >= 30 and issued[0][-1] >= 200.0 > issued[0][-2]
