"""POST /api/benchmarks bodies: normalised when valid, BadRequest naming the field when not."""

from __future__ import annotations

from typing import Any

import pytest

from carml_mesh.bench import stats
from carml_mesh.bench.config import BenchConfig, Offers, Target, parse_config
from carml_mesh.errors import BadRequest

OFFERS = Offers(
    models={"digits-cnn": frozenset({"onnxruntime", "pytorch"}), "efficientnet-lite0": frozenset({"onnxruntime"})},
    nodes=frozenset({"a1b2c3", "lab-1", "lab-2"}),
    max_batch=64,
)
BASE: dict[str, Any] = {"scenario": "single-stream", "targets": [{"model": "digits-cnn"}]}


def parse(**changes: Any) -> BenchConfig:
    return parse_config({**BASE, **changes}, OFFERS)


def test_defaults_are_filled_in_per_scenario() -> None:
    c = parse()
    assert c.targets == (Target("digits-cnn"),)
    assert (c.batch_sizes, c.concurrency, c.seed, c.input) == ((1,), (1,), 0, "sample")
    assert c.min_queries == stats.DEFAULT_MIN_QUERIES["single-stream"]
    assert c.min_duration_s == stats.DEFAULT_MIN_DURATION_S
    assert c.warmup_queries == stats.DEFAULT_WARMUP_QUERIES
    assert c.name.startswith("single-stream: digits-cnn")
    offline = parse(scenario="offline")
    assert offline.concurrency == (4,)
    assert offline.min_queries == stats.DEFAULT_MIN_QUERIES["offline"]
    server = parse(scenario="server", qps=50)
    assert server.qps == 50.0 and server.concurrency == (16,)


def test_a_full_configuration_round_trips() -> None:
    c = parse(
        scenario="server",
        name="sweep",
        targets=[
            {"model": "digits-cnn", "framework": "pytorch", "node": "lab-2"},
            {"model": "efficientnet-lite0", "version": "1.0.0", "device": "cpu"},
        ],
        batch_sizes=[1, 2, 4],
        concurrency=[1, 8],
        qps=120.5,
        p99_bound_ms=20,
        min_queries=32,
        min_duration_s=0.5,
        warmup_queries=0,
        seed=99,
        input="random",
    )
    assert len(c.points()) == 2 * 3 * 2
    assert c.points()[0] == (0, Target("digits-cnn", None, "pytorch", None, "lab-2"), 1, 1)
    doc = c.to_dict()
    assert doc["targets"][1] == {"model": "efficientnet-lite0", "version": "1.0.0", "device": "cpu"}
    assert parse_config({k: v for k, v in doc.items() if k != "max_duration_s"}, OFFERS) == c
    assert c.rule == stats.StopRule(32, 0.5, stats.DEFAULT_MAX_DURATION_S)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scenario": "batch"}, "scenario: must be one of single-stream, server, offline"),
        ({"targets": []}, "targets: must be a non-empty list"),
        ({"targets": [{"model": "digits-cnn"}] * 17}, "targets: at most 16 targets"),
        ({"targets": [{"model": "digits-cnn"}, {"model": "x"}]}, "targets[1].model: unknown model 'x'"),
        ({"targets": [{"framework": "pytorch"}]}, "targets[0].model: is required"),
        ({"targets": [{"model": "digits-cnn", "frame": "pytorch"}]}, "targets[0].frame: unknown field"),
        ({"targets": [{"model": "efficientnet-lite0", "framework": "pytorch"}]}, "targets[0].framework: model"),
        ({"targets": [{"model": "digits-cnn", "node": "lab-9"}]}, "targets[0].node: unknown node 'lab-9'"),
        ({"targets": [{"model": 5}]}, "targets[0].model: must be a non-empty string"),
        ({"batch_sizes": [0]}, "batch_sizes[0]: must be an integer ≥ 1"),
        ({"batch_sizes": [1, "2"]}, "batch_sizes[1]: must be an integer ≥ 1"),
        ({"batch_sizes": [1, 65]}, "batch_sizes[1]: must be at most 64"),
        ({"batch_sizes": [2, 2]}, "batch_sizes: lists a value twice"),
        ({"batch_sizes": []}, "batch_sizes: must be a non-empty list"),
        ({"scenario": "offline", "concurrency": [257]}, "concurrency[0]: must be at most 256"),
        ({"scenario": "offline", "concurrency": [1.5]}, "concurrency[0]: must be an integer ≥ 1"),
        ({"concurrency": [4]}, "concurrency: single-stream issues one query at a time"),
        ({"qps": 10}, "qps: only the server scenario takes it"),
        ({"scenario": "server"}, "qps: the server scenario needs"),
        ({"scenario": "server", "qps": -1}, "qps: must be positive"),
        ({"scenario": "server", "qps": True}, "qps: must be a number"),
        ({"scenario": "server", "p99_bound_ms": 0}, "p99_bound_ms: must be positive"),
        ({"min_queries": 0}, "min_queries: must be an integer ≥ 1"),
        ({"min_queries": 10**6}, "min_queries: must be at most 200000"),
        ({"min_queries": float("nan")}, "min_queries: must be an integer"),
        ({"min_queries": 1e300}, "min_queries: must be at most"),
        ({"min_duration_s": float("inf")}, "min_duration_s: must be a number"),
        ({"scenario": "server", "qps": float("nan")}, "qps: must be a number"),
        ({"scenario": "server", "qps": 100_000, "min_duration_s": 3600}, "qps: 100000 qps for min_duration_s 3600"),
        ({"seed": True}, "seed: must be an integer"),
        ({"targets": "digits-cnn"}, "targets: must be a non-empty list"),
        ({"targets": [{"model": "digits-cnn", "node": 7}]}, "targets[0].node: must be a non-empty string"),
        ({"min_duration_s": 3601}, "min_duration_s: must be at most 3600"),
        ({"min_duration_s": -1}, "min_duration_s: must not be negative"),
        ({"min_duration_s": 10, "max_duration_s": 5}, "max_duration_s: 5 is shorter than min_duration_s 10"),
        ({"warmup_queries": -1}, "warmup_queries: must be an integer ≥ 0"),
        ({"seed": "x"}, "seed: must be an integer"),
        ({"input": "noise"}, "input: must be one of sample, random"),
        ({"name": ""}, "name: must be a non-empty string"),
        ({"colour": "red"}, "colour: unknown field"),
        (
            {
                "scenario": "offline",
                "targets": [{"model": "digits-cnn"}] * 16,
                "batch_sizes": [1, 2, 4],
                "concurrency": [1, 2, 4, 8, 16, 32],
            },
            "at most 256",
        ),
    ],
)
def test_invalid_configurations_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(**changes)
    assert message in str(info.value)


def test_a_body_that_is_not_an_object() -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        parse_config([1, 2], OFFERS)
