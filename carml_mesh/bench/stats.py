"""Benchmark arithmetic, pure: percentiles, CDFs, throughput, Poisson arrival schedules, LoadGen's stopping rule.

Percentiles are *nearest-rank*, as MLPerf LoadGen reports them: the p-th percentile of n sorted latencies is the
value at 1-based rank ceil(p/100 · n), so it is always a latency that was measured, never an interpolation. With
few queries the high percentiles are therefore the maximum (p99 of 50 queries is the 50th value).

A run of one configuration lasts until both its ``min_queries`` and ``min_duration_s`` are met (LoadGen's rule;
its defaults are 1024 queries / 60 s for single-stream, sized for a datacenter submission; a lab tool keeps the
rule and scales the numbers down: see :data:`DEFAULT_MIN_QUERIES` and :data:`DEFAULT_MIN_DURATION_S`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

DEFAULT_MIN_QUERIES = {"single-stream": 256, "server": 256, "offline": 512}
DEFAULT_MIN_DURATION_S = 5.0
DEFAULT_WARMUP_QUERIES = 16
DEFAULT_MAX_DURATION_S = 300.0  # a configuration stops here even if its minimums are not met (reported)
# LoadGen's max_query_count: a configuration stops here whatever its minimums say, so a long or fast run holds a
# bounded number of per-query records in memory (and rows in the database)
DEFAULT_MAX_QUERIES = 200_000
PERCENTILES = (50, 90, 95, 99)
MAX_CDF_POINTS = 100


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (0 < p <= 100); ``values`` need not be sorted."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is outside (0, 100]")
    ordered = sorted(values)
    return ordered[_rank(p, len(ordered)) - 1]


def _rank(p: float, n: int) -> int:
    """The 1-based nearest rank ceil(p/100 · n), without float noise: 99.9/100 · 1000 is 999.0000000000001."""
    return max(1, math.ceil(round(p * n / 100, 6)))


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """mean, p50, p90, p95, p99 and max, in ms; all None when there is no latency."""
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
    if not latencies_ms:
        return dict.fromkeys(keys)
    ordered = sorted(latencies_ms)
    out: dict[str, float | None] = {"mean": sum(ordered) / len(ordered)}
    for p in PERCENTILES:
        out[f"p{p}"] = ordered[_rank(p, len(ordered)) - 1]
    out["max"] = ordered[-1]
    return out


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cdf(latencies_ms: Sequence[float], max_points: int = MAX_CDF_POINTS) -> list[tuple[float, float]]:
    """The empirical CDF as (latency, fraction ≤ it), at most ``max_points`` points, the last one (max, 1.0).

    Points are taken at evenly spaced ranks, so the curve keeps its shape whatever the number of queries.
    """
    if not latencies_ms:
        return []
    if max_points < 1:
        raise ValueError("a CDF needs at least one point")
    ordered = sorted(latencies_ms)
    n = len(ordered)
    k = min(n, max_points)
    ranks = sorted({math.ceil((i + 1) * n / k) for i in range(k)})  # 1-based, the last one n
    return [(ordered[r - 1], r / n) for r in ranks]


def throughput(count: int, duration_s: float) -> float:
    """Events per second over a duration; 0 for an empty or zero-length run."""
    return count / duration_s if duration_s > 0 and count > 0 else 0.0


def poisson_arrivals(qps: float, seed: int) -> Iterator[float]:
    """Arrival times in seconds from 0 of a Poisson process at ``qps``: the same seed gives the same schedule."""
    if not qps > 0:
        raise ValueError(f"qps must be positive, got {qps}")
    rng = random.Random(seed)
    t = 0.0
    while True:
        t += rng.expovariate(qps)
        yield t


def server_schedule(qps: float, seed: int, rules: StopRule) -> Iterator[float]:
    """LoadGen's server schedule, lazily: Poisson arrivals until there are at least ``min_queries`` of them *and*
    they span ``min_duration_s``; none at or past ``max_duration_s``, at most ``max_queries``."""
    for count, t in enumerate(poisson_arrivals(qps, seed), start=1):
        if t >= rules.max_duration_s or count > rules.max_queries:
            return
        yield t
        if count >= rules.min_queries and t >= rules.min_duration_s:
            return


def poisson_schedule(qps: float, seed: int, rules: StopRule) -> list[float]:
    """:func:`server_schedule` as a list (for tests and small runs)."""
    return list(server_schedule(qps, seed, rules))


@dataclass(frozen=True)
class StopRule:
    """A configuration's run ends when both minimums are met, or at ``max_duration_s`` whatever they say."""

    min_queries: int
    min_duration_s: float
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    max_queries: int = DEFAULT_MAX_QUERIES

    def done(self, queries: int, elapsed_s: float) -> bool:
        return (
            (queries >= self.min_queries and elapsed_s >= self.min_duration_s)
            or elapsed_s >= self.max_duration_s
            or queries >= self.max_queries
        )

    def fraction(self, queries: int, elapsed_s: float) -> float:
        """How far along the run is, 0..1: the lesser of the two minimums' progress."""
        if self.done(queries, elapsed_s):
            return 1.0
        by_queries = queries / self.min_queries if self.min_queries else 1.0
        by_time = elapsed_s / self.min_duration_s if self.min_duration_s else 1.0
        return max(0.0, min(1.0, by_queries, by_time))

    def cut_short(self, queries: int, elapsed_s: float) -> bool:
        """Whether the run ended on max_duration_s or max_queries before its minimums were met."""
        return (elapsed_s >= self.max_duration_s or queries >= self.max_queries) and not (
            queries >= self.min_queries and elapsed_s >= self.min_duration_s
        )
