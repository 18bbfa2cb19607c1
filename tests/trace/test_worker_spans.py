"""The spans the node builds from a worker's reply: cold start, batch formation, stages and operators."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.trace import Span

from carml_mesh.node.inference import worker_spans
from carml_mesh.trace.setup import MODEL, Tracing, hex_trace_id, reset_level, set_level
from carml_mesh.trace.zipkin_store import SpanStore, validate_spans

T0 = time.time_ns() // 1000 * 1000  # when the worker received the request: now (the store drops old spans), in µs


@pytest.fixture
def tracing() -> Tracing:
    return Tracing(node_id="n1", host="h", store=SpanStore(), level="model")


def spans_of(tracing: Tracing, reply: dict[str, Any], batch: int = 1) -> dict[str, dict[str, Any]]:
    """Run worker_spans under an executor span (outside an event loop the store gets spans at once)."""
    token = set_level(MODEL)
    try:
        with tracing.span("executor.infer", level=MODEL) as parent:
            assert isinstance(parent, Span)
            worker_spans(tracing, parent, reply, batch)
            trace_id = hex_trace_id(parent)
    finally:
        reset_level(token)
    spans = tracing.store.trace(trace_id)
    assert validate_spans(spans) == spans  # already in Zipkin's canonical form
    by_name = {s["name"]: s for s in spans}
    assert len(by_name) == len(spans), "a name twice: look them up another way"
    return by_name


def reply(**extra: Any) -> dict[str, Any]:
    timings = {"queue": 0.5, "compute": 2.0, "postprocess": 0.25, **extra.pop("timings", {})}
    return {"ok": True, "timings": timings, "received_unix_ns": T0, **extra}


def test_stages_follow_each_other_from_when_the_worker_received_the_request(tracing: Tracing) -> None:
    spans = spans_of(tracing, reply())
    queue, compute, post = spans["worker.queue"], spans["worker.compute"], spans["worker.postprocess"]
    assert queue["timestamp"] == T0 // 1000 and queue["duration"] == 500
    assert compute["timestamp"] == queue["timestamp"] + 500 and compute["duration"] == 2000
    assert post["timestamp"] == compute["timestamp"] + 2000
    assert {s["parentId"] for s in (queue, compute, post)} == {spans["executor.infer"]["id"]}
    assert not {"batch.wait", "model.load", "container.start"} & set(spans)


def test_a_batched_reply_gets_a_batch_wait_span_ending_when_the_batch_left(tracing: Tracing) -> None:
    batching = {"batch_size": 8, "requests": 3, "wait_ms": 1.5, "dispatched_unix_ns": T0 - 100_000}
    spans = spans_of(tracing, reply(batching=batching, timings={"batch_wait": 1.5}))
    wait = spans["batch.wait"]
    assert wait["parentId"] == spans["executor.infer"]["id"]
    assert wait["duration"] == 1500 and wait["timestamp"] + wait["duration"] == (T0 - 100_000) // 1000
    assert wait["tags"]["carml.batch.batch_size"] == "8" and wait["tags"]["carml.batch.requests"] == "3"
    assert wait["timestamp"] + wait["duration"] <= spans["worker.queue"]["timestamp"]


def test_batch_wait_falls_back_to_the_timings_and_the_worker_clock(tracing: Tracing) -> None:
    spans = spans_of(tracing, reply(batching={"batch_size": 2, "requests": 2}, timings={"batch_wait": 0.75}))
    wait = spans["batch.wait"]
    assert wait["duration"] == 750 and wait["timestamp"] + 750 == T0 // 1000


def test_a_local_cold_start_gets_a_model_load_span_before_the_request(tracing: Tracing) -> None:
    spans = spans_of(tracing, reply(load_ms=40.0))
    load = spans["model.load"]
    assert load["duration"] == 40_000 and load["timestamp"] + 40_000 == T0 // 1000
    assert spans["executor.infer"]["tags"]["carml.load_ms"] == "40.0"
    assert "container.start" not in spans


def test_a_docker_cold_run_gets_container_start_then_model_load(tracing: Tracing) -> None:
    began = T0 - 900_000_000
    cold = {"container_start_ms": 800.0, "load_ms": 50.0, "started_unix_ns": began}
    spans = spans_of(tracing, reply(load_ms=50.0, cold=cold))
    start, load = spans["container.start"], spans["model.load"]
    assert start["timestamp"] == began // 1000 and start["duration"] == 800_000
    assert load["timestamp"] == start["timestamp"] + 800_000 and load["duration"] == 50_000


def test_operators_nest_under_worker_compute_and_malformed_ones_are_skipped(tracing: Tracing) -> None:
    ops = [
        {"name": "forward", "op": "forward", "start_us": 10.0, "dur_us": 1500.0, "parent": -1},
        {"name": "aten::linear", "op": "aten::linear", "start_us": 20.0, "dur_us": 700.0, "parent": 0},
        {"name": 7, "op": "bad"},  # not a string name: skipped
        {"name": "aten::addmm", "op": "aten::addmm", "start_us": 30.0, "dur_us": 600.0, "parent": 1},
        {"name": "aten::relu", "op": "aten::relu", "start_us": 800.0, "dur_us": 50.0, "parent": 2},  # under the bad
        {"name": "aten::t", "op": "aten::t", "start_us": 900.0, "dur_us": 5.0, "parent": 99},  # no such parent
    ]
    spans = spans_of(tracing, reply(ops=ops))
    compute = spans["worker.compute"]
    assert spans["forward"]["parentId"] == compute["id"]
    assert spans["aten::linear"]["parentId"] == spans["forward"]["id"]
    assert spans["aten::addmm"]["parentId"] == spans["aten::linear"]["id"]
    assert spans["aten::relu"]["parentId"] == compute["id"]
    assert spans["aten::t"]["parentId"] == compute["id"]
    assert spans["forward"]["timestamp"] == compute["timestamp"] + 10
    assert spans["aten::linear"]["duration"] == 700 and spans["aten::linear"]["tags"]["carml.op.type"] == "aten::linear"
    assert len(spans) == 4 + 5  # executor, queue, compute, postprocess and five ops
