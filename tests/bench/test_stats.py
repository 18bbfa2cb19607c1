"""Benchmark arithmetic on synthetic data: nearest-rank percentiles, CDFs, Poisson schedules, LoadGen's rule."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from carml_mesh.bench import stats
from carml_mesh.bench.utilisation import cpu_percent, cpu_ticks, gpu_percent, rss_bytes


def test_nearest_rank_percentiles_are_measured_values() -> None:
    values = list(range(1, 101))  # 1..100
    assert stats.percentile(values, 50) == 50
    assert stats.percentile(values, 90) == 90
    assert stats.percentile(values, 99) == 99
    assert stats.percentile(values, 100) == 100
    # unsorted input, few values: rank ceil(p/100 * n)
    assert stats.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0  # rank 3
    assert stats.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 90) == 5.0  # rank 5
    assert stats.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 1) == 1.0  # rank 1, never 0
    # p99 of 50 queries is the maximum: nothing interpolated past what was measured
    assert stats.percentile([float(i) for i in range(50)], 99) == 49.0
    assert stats.percentile([7.5], 99) == 7.5


def test_a_fractional_percentile_has_no_float_noise_in_its_rank() -> None:
    values = list(range(1, 1001))
    assert stats.percentile(values, 99.9) == 999  # 99.9 / 100 * 1000 is 999.0000000000001 in floats
    assert stats.percentile(values * 2, 99.9) == 999  # rank 1998 of 2000
    assert stats.percentile(values, 99.95) == 1000
    assert stats.percentile(list(range(1, 41)), 97.5) == 39


def test_percentile_rejects_what_has_no_answer() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 0)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_latency_summary() -> None:
    values = [float(v) for v in range(1, 1001)]
    s = stats.latency_summary(values)
    assert s == {"mean": 500.5, "p50": 500.0, "p90": 900.0, "p95": 950.0, "p99": 990.0, "max": 1000.0}
    assert stats.latency_summary([]) == dict.fromkeys(["mean", "p50", "p90", "p95", "p99", "max"])
    assert stats.mean([]) is None
    assert stats.mean([1.0, 2.0]) == 1.5


def test_cdf_is_downsampled_monotonic_and_ends_at_one() -> None:
    values = [float((i * 7919) % 10_000) for i in range(10_000)]  # a permutation of 0..9999
    points = stats.cdf(values)
    assert len(points) == 100
    assert points[-1] == (9999.0, 1.0)
    assert points[0] == (99.0, 0.01)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(points))
    # every point is exact: the fraction of values at or below it
    for x, f in points[::17]:
        assert sum(v <= x for v in values) / len(values) == pytest.approx(f)
    few = stats.cdf([3.0, 1.0, 2.0])
    assert few == [(1.0, pytest.approx(1 / 3)), (2.0, pytest.approx(2 / 3)), (3.0, 1.0)]
    assert stats.cdf([]) == []
    assert len(stats.cdf(values, max_points=7)) == 7


def test_throughput() -> None:
    assert stats.throughput(500, 2.0) == 250.0
    assert stats.throughput(0, 2.0) == 0.0
    assert stats.throughput(10, 0.0) == 0.0


def test_poisson_schedule_has_the_asked_rate_and_exponential_gaps() -> None:
    qps = 200.0
    arrivals = list(itertools.islice(stats.poisson_arrivals(qps, seed=7), 20_000))
    assert all(b > a for a, b in itertools.pairwise(arrivals))
    rate = len(arrivals) / arrivals[-1]
    assert rate == pytest.approx(qps, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # exponential inter-arrival times: the standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(statistics.fmean(gaps), rel=0.05)
    # and the count in 1 s windows is Poisson: variance ≈ mean
    counts = [0] * math.ceil(arrivals[-1])
    for t in arrivals:
        counts[int(t)] += 1
    counts = counts[:-1]
    assert statistics.pvariance(counts) == pytest.approx(statistics.fmean(counts), rel=0.3)


def test_poisson_schedule_is_reproducible_from_its_seed() -> None:
    rule = stats.StopRule(min_queries=100, min_duration_s=1.0)
    a = stats.poisson_schedule(50.0, 1234, rule)
    b = stats.poisson_schedule(50.0, 1234, rule)
    c = stats.poisson_schedule(50.0, 1235, rule)
    assert a == b
    assert a != c
    with pytest.raises(ValueError):
        next(stats.poisson_arrivals(0.0, 1))


def test_poisson_schedule_meets_both_minimums_as_loadgen() -> None:
    # few queries wanted, long duration: the duration decides (about qps * min_duration arrivals)
    few = stats.poisson_schedule(100.0, 1, stats.StopRule(min_queries=10, min_duration_s=3.0))
    assert len(few) == pytest.approx(300, rel=0.2)
    # many queries wanted, short duration: the query count decides
    assert len(stats.poisson_schedule(100.0, 1, stats.StopRule(min_queries=1000, min_duration_s=1.0))) == 1000


@pytest.mark.parametrize("seed", range(40))
def test_a_server_schedule_always_spans_its_minimum_duration(seed: int) -> None:
    # qps x min_duration arrivals end before min_duration about half the time (a sum of exponentials); LoadGen
    # keeps generating until both the count and the duration are met
    rule = stats.StopRule(min_queries=10, min_duration_s=2.0)
    schedule = stats.poisson_schedule(50.0, seed, rule)
    assert len(schedule) >= 10
    assert schedule[-1] >= 2.0 > schedule[-2]  # the first arrival past the minimum duration ends it


def test_a_server_schedule_is_bounded_and_lazy() -> None:
    # 100k qps for an hour would be 360 M arrivals held in a list; the schedule stops at max_queries, lazily
    rule = stats.StopRule(min_queries=1, min_duration_s=3600.0, max_duration_s=3600.0, max_queries=1000)
    assert len(stats.poisson_schedule(100_000.0, 0, rule)) == 1000
    first = next(stats.server_schedule(100_000.0, 0, rule))
    assert 0 < first < 0.01
    # nothing at or past max_duration_s
    capped = stats.poisson_schedule(10.0, 0, stats.StopRule(min_queries=1000, min_duration_s=1.0, max_duration_s=5.0))
    assert capped and capped[-1] < 5.0 and len(capped) < 1000


def test_stop_rule_stops_at_max_queries_and_calls_it_cut_short() -> None:
    rule = stats.StopRule(min_queries=10, min_duration_s=60.0, max_duration_s=300.0, max_queries=500)
    assert not rule.done(499, 1.0)
    assert rule.done(500, 1.0)  # a fast closed loop cannot pile up records for 300 s
    assert rule.cut_short(500, 1.0)
    assert not rule.cut_short(500, 60.0)


def test_stop_rule_needs_both_minimums() -> None:
    rule = stats.StopRule(min_queries=256, min_duration_s=5.0, max_duration_s=60.0)
    assert not rule.done(1000, 4.9)  # enough queries, too short
    assert not rule.done(255, 30.0)  # long enough, too few queries
    assert rule.done(256, 5.0)
    assert rule.done(10, 60.0)  # the cap, whatever the minimums say
    assert rule.cut_short(10, 60.0)
    assert not rule.cut_short(256, 60.0)
    assert rule.fraction(128, 5.0) == 0.5
    assert rule.fraction(256, 1.0) == 0.2
    assert rule.fraction(300, 6.0) == 1.0


def test_proc_parsing() -> None:
    # a command name with spaces and a parenthesis, as /proc/<pid>/stat may hold
    stat = "4242 (python (worker) x) S 1 4242 4242 0 -1 4194304 1234 0 0 0 150 25 0 0 20 0 3 0 100 200 300"
    assert cpu_ticks(stat) == 175
    status = "Name:\tpython\nVmPeak:\t  300000 kB\nVmRSS:\t  123456 kB\nThreads:\t3\n"
    assert rss_bytes(status) == 123456 * 1024
    assert rss_bytes("Name:\tzombie\n") == 0
    assert cpu_percent(100, 300, 2.0, ticks_per_s=100) == 100.0  # one core busy
    assert cpu_percent(100, 100, 2.0, ticks_per_s=100) == 0.0
    assert gpu_percent("35\n45\n") == 40.0
    assert gpu_percent("[N/A]\n") is None
    assert gpu_percent("") is None
