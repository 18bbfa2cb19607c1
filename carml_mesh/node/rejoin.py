"""Joining the mesh whatever the boot order: seeds retried with capped exponential backoff while this node is alone.

As Serf's ``retry_join``: a node started before its seeds, or one that lost every peer (a partition, all the others
restarted), keeps trying its ``--join`` seeds and the addresses mDNS found, first after ``interval`` seconds, then
twice as long each time up to ``max_interval``, for ever unless ``max_attempts`` is set. A node with any live peer
does not retry: gossip keeps it in the mesh from there.

``JoinSchedule`` is the pure part (attempt count, backoff, what ``/api/cluster`` shows); ``serve_rejoin`` runs it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ..gossip.messages import Address

__all__ = [
    "DEFAULT_JOIN_RETRY_INTERVAL",
    "DEFAULT_JOIN_RETRY_MAX_INTERVAL",
    "JoinPolicy",
    "JoinSchedule",
    "serve_rejoin",
]

log = logging.getLogger("carml.mesh")

DEFAULT_JOIN_RETRY_INTERVAL = 1.0  # seconds before the first retry; doubled after each failed attempt
DEFAULT_JOIN_RETRY_MAX_INTERVAL = 30.0  # the cap, Serf's retry_interval
ALONE_CHECK_INTERVAL = 1.0  # how often a node with peers checks that it still has some
JITTER = 0.1  # +-10 % on each delay, so that nodes restarted together do not retry in lockstep
WARN_EVERY = 10  # failed attempts after the first are logged at INFO, every WARN_EVERY-th at WARNING


@dataclass(frozen=True)
class JoinPolicy:
    interval: float = DEFAULT_JOIN_RETRY_INTERVAL
    max_interval: float = DEFAULT_JOIN_RETRY_MAX_INTERVAL
    max_attempts: int = 0  # 0: for ever


def _fmt(addrs: Sequence[Address]) -> str:
    return ", ".join(f"{h}:{p}" for h, p in addrs)


@dataclass
class JoinSchedule:
    """Attempts of one time alone: counted from the first failure, reset when the node has peers again."""

    policy: JoinPolicy
    seeds: tuple[Address, ...]
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0  # failed attempts since this node was last in a mesh
    total_attempts: int = 0
    joins: int = 0  # attempts that reached at least one peer
    last_attempt_unix: float | None = None
    last_result: str | None = None  # "joined N of M" or "failed: ..."
    next_attempt_unix: float | None = None
    gave_up: bool = False

    def delay(self) -> float:
        """Seconds until the next attempt after ``attempts`` failures: interval * 2^(attempts-1), capped, jittered."""
        base = min(self.policy.max_interval, self.policy.interval * 2 ** max(0, self.attempts - 1))
        return float(base * (1 + self.rng.uniform(-JITTER, JITTER)))

    def record(self, now_unix: float, targets: Sequence[Address], joined: int) -> float | None:
        """One attempt's outcome; returns the delay before the next one, or None when there is to be none."""
        self.total_attempts += 1
        self.last_attempt_unix = now_unix
        self.next_attempt_unix = None
        if joined:
            self.joins += 1
            self.last_result = f"joined {joined} of {len(targets)}"
            self.attempts = 0
            return None
        self.attempts += 1
        self.last_result = f"no answer from {_fmt(targets)}"
        if self.policy.max_attempts and self.attempts >= self.policy.max_attempts:
            self.gave_up = True
            return None
        wait = self.delay()
        self.next_attempt_unix = now_unix + wait
        return wait

    def in_mesh(self) -> None:
        """The node has a live peer (however it got it): a later time alone starts from the first retry again."""
        self.attempts = 0
        self.gave_up = False
        self.next_attempt_unix = None

    def view(self) -> dict[str, object]:
        return {
            "seeds": [f"{h}:{p}" for h, p in self.seeds],
            "retry_interval_s": self.policy.interval,
            "retry_max_interval_s": self.policy.max_interval,
            "retry_max_attempts": self.policy.max_attempts or None,
            "attempts": self.attempts,
            "total_attempts": self.total_attempts,
            "joins": self.joins,
            "last_attempt_unix": self.last_attempt_unix,
            "last_result": self.last_result,
            "next_attempt_unix": self.next_attempt_unix,
            "gave_up": self.gave_up,
        }


async def serve_rejoin(
    schedule: JoinSchedule,
    *,
    alone: Callable[[], bool],
    targets: Callable[[], list[Address]],
    join: Callable[[list[Address]], Awaitable[int]],
) -> None:
    """Run for ever: while ``alone()``, join ``targets()`` (the seeds and mDNS's finds) on the schedule."""
    while True:
        if not alone():
            schedule.in_mesh()
            await asyncio.sleep(ALONE_CHECK_INTERVAL)
            continue
        if schedule.gave_up:  # until a peer finds us (mDNS, or it joins us), nothing more to do
            await asyncio.sleep(ALONE_CHECK_INTERVAL)
            continue
        addrs = targets()
        if not addrs:  # mDNS alone, and it found nobody yet: the first node of a LAN; nothing to retry
            await asyncio.sleep(ALONE_CHECK_INTERVAL)
            continue
        joined = await join(addrs)
        wait = schedule.record(time.time(), addrs, joined)
        if joined:
            log.info("joined the mesh through %d of %s", joined, _fmt(addrs))
            continue
        n = schedule.attempts
        if schedule.gave_up:
            log.error("could not join any of %s after %d attempts; giving up (--join-retry-max)", _fmt(addrs), n)
            continue
        assert wait is not None
        level = logging.WARNING if n == 1 or n % WARN_EVERY == 0 else logging.INFO
        log.log(level, "could not join any of %s (attempt %d); retrying in %.1f s", _fmt(addrs), n, wait)
        await asyncio.sleep(wait)
