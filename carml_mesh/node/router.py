"""Choosing where a request runs: pure, fed with the members' cards and what this node has observed.

Candidates are the alive members (this node included) whose card offers the model at the requested version,
framework and device. Order of preference:
1. warm: the model is already loaded there (no load on the request's path);
2. power of two choices on load: of two random candidates, the one with fewer requests in flight, counting the load
   it gossips plus what this node itself has sent it and not yet had answered; ties broken by the latency EWMA;
3. this node when it is as good as the best peer (a hop costs something);
peers that failed recently are avoided for a while.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_AVOID_SECONDS = 10.0
EWMA_ALPHA = 0.2


@dataclass(frozen=True)
class Candidate:
    node: str  # node id
    url: str | None  # None for this node
    warm: bool
    load: float
    latency_ms: float | None = None

    @property
    def local(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class Decision:
    candidates: tuple[Candidate, ...]
    order: tuple[Candidate, ...]  # the chosen one first, then the fallbacks for retries
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.order[0].node if self.order else None,
            "reason": self.reason,
            "candidates": [
                {"node": c.node, "local": c.local, "warm": c.warm, "load": c.load, "latency_ms": c.latency_ms}
                for c in self.candidates
            ],
        }


@dataclass
class PeerHealth:
    in_flight: int = 0
    latency_ms: float | None = None
    avoid_until: float = 0.0
    failures: int = 0
    successes: int = 0


@dataclass
class Router:
    """What this node knows of its peers' behaviour; the choice itself is ``decide``."""

    rng: random.Random = field(default_factory=random.Random)
    avoid_seconds: float = DEFAULT_AVOID_SECONDS
    peers: dict[str, PeerHealth] = field(default_factory=dict)

    def health(self, node: str) -> PeerHealth:
        return self.peers.setdefault(node, PeerHealth())

    def started(self, node: str) -> None:
        self.health(node).in_flight += 1

    def finished(self, node: str, *, ok: bool, latency_ms: float | None = None, now: float | None = None) -> None:
        h = self.health(node)
        h.in_flight = max(0, h.in_flight - 1)
        if ok:
            h.successes += 1
            if latency_ms is not None:
                h.latency_ms = (
                    latency_ms if h.latency_ms is None else ((1 - EWMA_ALPHA) * h.latency_ms + EWMA_ALPHA * latency_ms)
                )
        else:
            h.failures += 1
            h.avoid_until = (time.monotonic() if now is None else now) + self.avoid_seconds

    def decide(self, candidates: list[Candidate], *, now: float | None = None) -> Decision:
        """Order the candidates: the first is where to run, the rest are the retries in order."""
        now = time.monotonic() if now is None else now
        if not candidates:
            return Decision((), (), "no capable member")
        usable = [c for c in candidates if c.local or self.health(c.node).avoid_until <= now]
        avoided = [c for c in candidates if c not in usable]
        pool = usable or candidates  # everyone failed lately: try anyway, in the same order
        warm = [c for c in pool if c.warm]
        tier, why = (warm, "warm") if warm else (pool, "none warm")
        effective = {c.node: c.load + (0 if c.local else self.health(c.node).in_flight) for c in tier}
        first = self._two_choices(tier, effective)
        local = next((c for c in tier if c.local), None)
        if local is not None and effective[local.node] <= effective[first.node]:
            first = local
        if first.local:
            why += ", this node: as good as the best peer" if len(tier) > 1 else ", this node"
        else:
            why += ", least loaded of two random" if len(tier) > 2 else (", least loaded" if len(tier) > 1 else "")
        rest = sorted(
            (c for c in pool if c is not first),
            key=lambda c: (not c.warm, c.load + (0 if c.local else self.health(c.node).in_flight), c.latency_ms or 0.0),
        )
        order = (first, *rest, *[c for c in avoided if pool is not candidates])
        if avoided and pool is not candidates:
            why += f"; avoiding {len(avoided)} recently failed"
        return Decision(tuple(candidates), tuple(order), why)

    def _two_choices(self, tier: list[Candidate], load: dict[str, float]) -> Candidate:
        picks = tier if len(tier) <= 2 else self.rng.sample(tier, 2)

        def key(c: Candidate) -> tuple[float, float, bool]:
            latency = self.health(c.node).latency_ms if not c.local else 0.0
            return (load[c.node], latency or 0.0, not c.local)

        return min(picks, key=key)
