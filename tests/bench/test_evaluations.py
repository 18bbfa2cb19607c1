"""The evaluations manager: what it refuses, its bound, cancelling, and a node that stops while one runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from carml_mesh.bench.config import Target
from carml_mesh.bench.evaluations import Evaluations
from carml_mesh.errors import BadRequest, Conflict, NotFound
from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


async def test_the_manager_refuses_what_it_cannot_run_and_cancels(node) -> None:
    evaluations: Evaluations = node.evaluations
    digits = await evaluations.open_digits(node.catalog.get("digits-cnn"))
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        await evaluations.start(Target("nope"), digits)
    digits = await evaluations.open_digits(node.catalog.get("digits-cnn"))
    with pytest.raises(NotFound, match="no tensorflow artifact"):
        await evaluations.start(Target("digits-cnn", framework="tensorflow"), digits)
    with pytest.raises(BadRequest, match="dataset 'digits' holds 8x8 grey digits"):
        await evaluations.open_digits(node.catalog.get("efficientnet-lite0"))
    # bounded: the third at once is refused; a cancelled one says so
    started = [
        await evaluations.start(Target("digits-cnn"), await evaluations.open_digits(node.catalog.get("digits-cnn")))
        for _ in range(evaluations.max_running)
    ]
    with pytest.raises(Conflict, match="evaluations are running"):
        await evaluations.start(Target("digits-cnn"), await evaluations.open_digits(node.catalog.get("digits-cnn")))
    for s in started:
        cancelled = await evaluations.cancel(s["id"])
        assert cancelled is not None
        assert cancelled["status"] in ("cancelled", "done")
    doc = await evaluations.get(started[0]["id"])
    assert doc is not None and doc["status"] in ("cancelled", "done")
    assert await evaluations.get("0" * 32) is None
    await asyncio.sleep(0)


async def test_a_stopping_node_cancels_its_evaluations_and_a_restart_closes_stale_ones(tmp_path: Path) -> None:
    config = NodeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "n",
        manifests_dirs=(MANIFESTS,),
        preload=False,
        executor="local",
        gossip=False,
    )
    async with Node(config) as node:
        evaluations: Evaluations = node.evaluations
        digits = await evaluations.open_digits(node.catalog.get("digits-cnn"))
        started = await evaluations.start(Target("digits-cnn"), digits, batch_size=1)
        task = evaluations._running[started["id"]].task
        await evaluations.db.run(
            lambda c: c.execute(  # as a killed node leaves it
                "INSERT INTO evaluations (id, created_at, status, model, config, dataset) VALUES (?, 0, 'running', "
                "'digits-cnn', '{}', '{\"images\": 3}')",
                ("f" * 32,),
            )
        )
    assert task is not None and task.done()
    async with Node(config) as node:
        stopped = await node.evaluations.get(started["id"])
        assert stopped is not None and stopped["status"] == "cancelled" and stopped["error"] == "the node stopped"
        stale = await node.evaluations.get("f" * 32)
        assert stale is not None and stale["status"] == "failed" and "stopped during" in stale["error"]
