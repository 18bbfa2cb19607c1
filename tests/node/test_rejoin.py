"""The join schedule: capped exponential backoff, giving up, and starting over once in a mesh (pure, no sockets)."""

from __future__ import annotations

import asyncio
import random

import pytest

from carml_mesh.node.rejoin import JITTER, JoinPolicy, JoinSchedule, serve_rejoin

SEED = ("10.0.0.5", 7946)


def schedule(**policy: float) -> JoinSchedule:
    return JoinSchedule(JoinPolicy(**policy), (SEED,), rng=random.Random(0))  # type: ignore[arg-type]


def test_the_backoff_doubles_up_to_its_cap() -> None:
    s = schedule(interval=1.0, max_interval=8.0)
    waits = [s.record(100.0 + n, [SEED], joined=0) for n in range(7)]
    for wait, base in zip(waits, [1, 2, 4, 8, 8, 8, 8], strict=True):
        assert wait is not None and base * (1 - JITTER) <= wait <= base * (1 + JITTER)
    assert s.attempts == 7 and not s.gave_up
    view = s.view()
    assert view["seeds"] == ["10.0.0.5:7946"] and view["last_result"] == "no answer from 10.0.0.5:7946"
    assert view["next_attempt_unix"] == pytest.approx(106.0 + waits[-1])  # type: ignore[operator]


def test_a_join_resets_the_backoff() -> None:
    s = schedule(interval=1.0)
    for n in range(4):
        s.record(float(n), [SEED], joined=0)
    assert s.record(5.0, [SEED], joined=1) is None
    assert (s.attempts, s.joins, s.total_attempts, s.last_result) == (0, 1, 5, "joined 1 of 1")
    assert s.view()["next_attempt_unix"] is None
    wait = s.record(6.0, [SEED], joined=0)  # alone again later: the first short retry again
    assert wait is not None and wait <= 1.0 * (1 + JITTER)


def test_max_attempts_gives_up_until_the_node_is_in_a_mesh_again() -> None:
    s = schedule(interval=1.0, max_attempts=3)
    assert s.record(0.0, [SEED], joined=0) is not None
    assert s.record(1.0, [SEED], joined=0) is not None
    assert s.record(3.0, [SEED], joined=0) is None
    assert s.gave_up and s.view()["gave_up"] is True and s.view()["retry_max_attempts"] == 3
    s.in_mesh()  # a peer found us (mDNS, or it joined us): a later time alone retries again
    assert not s.gave_up and s.attempts == 0


async def test_the_loop_retries_only_while_alone() -> None:
    s = schedule(interval=0.01, max_interval=0.02)
    answers = iter([0, 0, 1])
    calls: list[list[tuple[str, int]]] = []
    in_mesh = asyncio.Event()

    async def join(addrs: list[tuple[str, int]]) -> int:
        calls.append(addrs)
        joined = next(answers)
        if joined:
            in_mesh.set()
        return joined

    task = asyncio.create_task(serve_rejoin(s, alone=lambda: not in_mesh.is_set(), targets=lambda: [SEED], join=join))
    try:
        async with asyncio.timeout(5):
            await in_mesh.wait()
        await asyncio.sleep(0.05)  # in the mesh: no further attempt
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert calls == [[SEED]] * 3 and s.joins == 1 and s.attempts == 0


async def test_nothing_to_join_is_no_attempt() -> None:
    """mDNS alone, nobody found yet (the first node of a LAN): not an attempt, no warning."""
    s = schedule(interval=0.01)
    joined: list[object] = []

    async def join(addrs: list[tuple[str, int]]) -> int:
        joined.append(addrs)
        return 0

    task = asyncio.create_task(serve_rejoin(s, alone=lambda: True, targets=lambda: [], join=join))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert joined == [] and s.total_attempts == 0
