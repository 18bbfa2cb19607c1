"""BenchmarkManager: the bound on runs at once holds under concurrent starts; closing cancels and stores."""

from __future__ import annotations

import asyncio

from carml_mesh.bench.config import parse_config
from carml_mesh.bench.manager import BenchmarkManager, TooManyRuns
from carml_mesh.node.node import Node
from carml_mesh.web.bench_api import offers

BODY = {"scenario": "offline", "targets": [{"model": "digits-cnn"}], "min_queries": 5, "min_duration_s": 30}


async def test_concurrent_starts_cannot_slip_past_the_bound(node: Node) -> None:
    config = parse_config({**BODY, "warmup_queries": 0}, offers(node))
    async with BenchmarkManager(node, max_running=1) as manager:
        # both pass the check before either has stored its run (an await): only one may start
        answers = await asyncio.gather(manager.start(config), manager.start(config), return_exceptions=True)
        refused = [a for a in answers if isinstance(a, TooManyRuns)]
        started = [a for a in answers if not isinstance(a, BaseException)]
        assert len(refused) == 1 and len(started) == 1
        assert len(manager.running()) == 1
    assert started[0].status == "cancelled"  # closing the manager cancelled it
    doc = await node.benchmarks.store.get(started[0].id)
    assert doc is not None and doc["status"] == "cancelled"
