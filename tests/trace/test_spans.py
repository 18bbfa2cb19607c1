"""Lean spans and the node's Tracing: parents, errors, sampling, and the batching of finished spans into the store."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.trace import SpanKind

from carml_mesh.trace.setup import APPLICATION, MODEL, Tracing, extract, hex_trace_id, reset_level, set_level
from carml_mesh.trace.zipkin_store import SpanStore, validate_spans


def make(**kw) -> Tracing:
    return Tracing(node_id="node-1", host="host-1", store=SpanStore(), **kw)


@pytest.fixture
def level_model():
    token = set_level(MODEL)
    yield
    reset_level(token)


def test_spans_nest_take_the_callers_context_and_are_stored_in_canonical_form(level_model) -> None:
    tracing = make()
    t0 = time.time_ns() // 1000 * 1000  # recent: the store drops spans older than its retention
    parent = extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    with tracing.span("POST /x", kind=SpanKind.SERVER, context=parent, attributes={"a": [1, 2], "b": True}) as root:
        assert root is not None and hex_trace_id(root) == "0af7651916cd43dd8448eb211c80319c"
        with tracing.span("inner", level=MODEL) as inner:
            assert inner is not None
            tracing.child(inner, "Stage", t0, t0 + 500_000, {"n": 1})
        with tracing.span("too deep", level=MODEL + 1) as none:
            assert none is None
    spans = tracing.store.trace("0af7651916cd43dd8448eb211c80319c")
    assert validate_spans(spans) == spans
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {"post /x", "inner", "stage"}
    assert by_name["post /x"]["parentId"] == "b7ad6b7169203331" and by_name["post /x"]["kind"] == "SERVER"
    assert by_name["inner"]["parentId"] == by_name["post /x"]["id"]
    assert by_name["stage"]["parentId"] == by_name["inner"]["id"]
    assert by_name["stage"]["timestamp"] == t0 // 1000 and by_name["stage"]["duration"] == 500
    assert by_name["post /x"]["tags"] == {"a": "1,2", "b": "true", "carml.node.id": "node-1", "host.name": "host-1"}
    assert by_name["post /x"]["localEndpoint"] == {"serviceName": "carml-node"}


def test_an_escaping_error_marks_the_span(level_model) -> None:
    tracing = make()
    with pytest.raises(KeyError), tracing.span("failing") as span:
        assert span is not None
        trace_id = hex_trace_id(span)
        raise KeyError("model")
    (stored,) = tracing.store.trace(trace_id)
    assert stored["tags"]["otel.status_code"] == "ERROR"
    assert stored["tags"]["error"] == "KeyError: 'model'"
    assert [a["value"] for a in stored["annotations"]] == ["exception"]


def test_an_unsampled_caller_and_a_discarded_span_record_nothing(level_model) -> None:
    tracing = make()
    unsampled = extract(
        {"X-B3-TraceId": "0af7651916cd43dd8448eb211c80319c", "X-B3-SpanId": "b7ad6b7169203331", "X-B3-Sampled": "0"}
    )
    with tracing.span("server", context=unsampled) as span:
        assert span is not None and not span.is_recording()
        assert hex_trace_id(span) == "0af7651916cd43dd8448eb211c80319c"  # the id still travels on
        with tracing.span("inner") as inner:
            assert inner is not None and not inner.is_recording()
    with tracing.span("dropped") as span:
        assert span is not None
        tracing.discard(span)
    assert len(tracing.store) == 0


def test_the_level_gates_spans() -> None:
    tracing = make()
    token = set_level(APPLICATION)
    try:
        with tracing.span("app") as a, tracing.span("model", level=MODEL) as m:
            assert a is not None and m is None
    finally:
        reset_level(token)
    with tracing.span("outside any request") as span:  # the default level of a task is none
        assert span is None
    assert len(tracing.store) == 1


async def test_on_the_loop_spans_are_batched_yet_a_query_sees_them_at_once(level_model) -> None:
    tracing = make(flush_delay_s=3600.0, max_pending=1000)
    with tracing.span("one") as span:
        assert span is not None
        trace_id = hex_trace_id(span)
    assert tracing.store.accepted == 0  # waiting in the batch...
    assert [s["name"] for s in tracing.store.trace(trace_id)] == ["one"]  # ...which a query drains first
    assert tracing.store.accepted == 1
    await tracing.aclose()


async def test_the_batch_is_stored_after_the_delay_or_once_it_is_long(level_model) -> None:
    tracing = make(flush_delay_s=0.01, max_pending=3)
    with tracing.span("a"):
        pass
    await asyncio.sleep(0.2)
    assert tracing.store.accepted == 1  # the timer stored it, no query needed
    tracing.flush_delay_s = 3600.0
    for name in ("b", "c", "d"):
        with tracing.span(name):
            pass
    assert tracing.store.accepted == 1
    await asyncio.sleep(0)  # one turn of the loop: three waited, so they are stored now
    assert tracing.store.accepted == 4
    await tracing.aclose()
    with tracing.span("after close") as span:
        assert span is None


@pytest.mark.parametrize(
    "headers",
    [
        {"X-B3-TraceId": "0af7651916cd43dd8448eb211c80319c", "X-B3-SpanId": "b7ad6b7169203331", "X-B3-Sampled": "1"},
        {"B3": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"},
        {"TraceParent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    ],
)
def test_an_aiohttp_requests_headers_are_read_case_blind(headers) -> None:
    from multidict import CIMultiDict, CIMultiDictProxy
    from opentelemetry import trace

    ctx = trace.get_current_span(
        extract(CIMultiDictProxy(CIMultiDict({"Accept": "*/*", **headers})))
    ).get_span_context()
    assert (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )
    assert (
        not trace.get_current_span(extract(CIMultiDictProxy(CIMultiDict({"Accept": "*/*"}))))
        .get_span_context()
        .is_valid
    )
