"""End-to-end traces of /api/predict: two in-process nodes joined by gossip, spans in Zipkin v2 on every node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
import pytest_asyncio

from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node
from carml_mesh.trace.setup import LEVEL_HEADER, extract, inject

REPO = Path(__file__).resolve().parents[2]
MSGPACK = "application/msgpack"
FAST = (
    ("probe_interval", 0.2),
    ("probe_timeout", 0.1),
    ("gossip_interval", 0.05),
    ("push_pull_interval", 2.0),
    ("leave_propagate_delay", 0.2),
)


def manifests_with(tmp: Path, name: str, models: list[str]) -> Path:
    folder = tmp / f"manifests-{name}"
    folder.mkdir()
    for model in models:
        text = (REPO / "manifests" / f"{model}.yml").read_text()
        (folder / f"{model}.yml").write_text(text.replace("../build/models", str(REPO / "build" / "models")))
    return folder


def config(tmp: Path, name: str, models: list[str], **kw) -> NodeConfig:
    return NodeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp / name,
        manifests_dirs=(manifests_with(tmp, name, models),),
        name=name,
        preload=False,
        executor="local",
        gossip_port=0,
        mdns=False,
        gossip_overrides=FAST,
        **{"trace_level": "application", **kw},  # the product's default too
    )


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module")
async def pair(models_dir, tmp_path_factory) -> AsyncIterator[tuple[Node, Node]]:
    """A has no model; B has digits-cnn and joined A. A request to A is forwarded to B."""
    tmp = tmp_path_factory.mktemp("tracing")
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node(config(tmp, "a", [])))
        assert a.mesh is not None
        b = await stack.enter_async_context(Node(config(tmp, "b", ["digits-cnn"], join=(a.mesh.gossip.addr,))))
        await eventually(lambda: b.id in a.mesh.cards)
        yield a, b


async def predict(http: aiohttp.ClientSession, url: str, level: str | None) -> dict:
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8) % 16
    doc = {
        "model": "digits-cnn",
        "top_k": 1,
        "inputs": [{"tensor": {"dtype": "float32", "shape": [1, 8, 8], "data": x.tobytes()}}],
    }
    headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
    if level:
        headers[LEVEL_HEADER] = level
    async with http.post(url + "/api/predict", data=msgpack.packb(doc), headers=headers) as resp:
        answer = msgpack.unpackb(await resp.read())
        assert resp.status == 200, answer
        return answer


async def test_a_forwarded_request_at_level_model_is_one_trace_across_nodes_and_worker(pair) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        answer = await predict(http, a.url(), "model")
        assert answer["node"]["id"] == b.id
        trace_id = answer["trace_id"]
        assert len(trace_id) == 32
        async with http.get(f"{a.url()}/api/v2/trace/{trace_id}") as resp:
            assert resp.status == 200
            spans = await resp.json()
    ids = {s["id"] for s in spans}
    assert len(ids) == len(spans)
    roots = [s for s in spans if "parentId" not in s]
    assert len(roots) == 1, roots
    assert all(s["parentId"] in ids for s in spans if "parentId" in s)
    assert {s["traceId"] for s in spans} == {trace_id}
    by_name = {s["name"]: s for s in spans}
    assert roots[0]["name"] == "post /api/predict" and roots[0]["tags"]["carml.node.id"] == a.id
    assert {s["tags"]["carml.node.id"] for s in spans} == {a.id, b.id}
    assert by_name["route"]["tags"]["carml.route.choice"] == b.id
    assert by_name["route"]["parentId"] == roots[0]["id"]
    # the hop: A's CLIENT span is the parent of B's SERVER span
    client = by_name["forward /api/predict"]
    assert client["kind"] == "CLIENT" and client["tags"]["carml.peer.id"] == b.id
    servers = [s for s in spans if s.get("kind") == "SERVER"]
    (b_server,) = [s for s in servers if s["tags"]["carml.node.id"] == b.id]
    assert b_server["parentId"] == client["id"]
    executor = by_name["executor.infer"]
    assert executor["parentId"] == b_server["id"]
    for stage in ("worker.queue", "worker.compute", "worker.postprocess"):
        span = by_name[stage]
        assert span["parentId"] == executor["id"]
        assert span["tags"]["carml.node.id"] == b.id
    # the worker's stages lie in order, within the executor call (same machine, same wall clock)
    queue, compute, post = by_name["worker.queue"], by_name["worker.compute"], by_name["worker.postprocess"]
    assert queue["timestamp"] <= compute["timestamp"] <= post["timestamp"]
    slack = 2000  # µs of rounding
    assert executor["timestamp"] - slack <= queue["timestamp"]
    assert post["timestamp"] + post["duration"] <= executor["timestamp"] + executor["duration"] + slack


async def test_level_none_makes_no_spans_and_application_no_worker_spans(pair) -> None:
    a, _ = pair
    before = [len(n.tracing.store) for n in pair]
    async with aiohttp.ClientSession() as http:
        answer = await predict(http, a.url(), "none")
        assert "trace_id" not in answer
        assert [len(n.tracing.store) for n in pair] == before
        answer = await predict(http, a.url(), None)  # these nodes' default: application
        async with http.get(f"{a.url()}/api/v2/trace/{answer['trace_id']}") as resp:
            spans = await resp.json()
        names = {s["name"] for s in spans}
        assert "forward /api/predict" in names and "route" in names
        assert not any(n.startswith(("worker.", "executor.")) for n in names)
        async with http.post(
            a.url() + "/api/predict", json={"model": "digits-cnn"}, headers={LEVEL_HEADER: "verbose"}
        ) as resp:
            assert resp.status == 400
            assert LEVEL_HEADER in (await resp.json())["error"]


async def test_the_exporter_sends_valid_zipkin_v2_spans_to_a_receiver(tmp_path) -> None:
    receiver_config = config(tmp_path, "receiver", [], gossip=False)
    async with Node(receiver_config) as receiver:
        sender_config = config(tmp_path, "sender", [], gossip=False, zipkin_url=f"{receiver.url()}/api/v2/spans")
        async with (
            Node(sender_config) as sender,
            aiohttp.ClientSession() as http,
            http.post(sender.url() + "/api/predict", json={"model": "nothing", "inputs": [{"tensor": [1]}]}) as resp,
        ):
            assert resp.status == 404
        # leaving the block flushed the batch to the receiver
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{receiver.url()}/api/v2/traces", params={"serviceName": "carml-node"}) as resp,
        ):
            traces = await resp.json()
        assert len(traces) == 1
        spans = traces[0]
        # alone (no gossip) the node makes no routing decision: only the server span, for a 404
        assert {s["name"] for s in spans} == {"post /api/predict"}
        (span,) = [s for s in spans if "parentId" not in s]
        assert span["name"] == "post /api/predict" and span["kind"] == "SERVER"
        assert span["localEndpoint"]["serviceName"] == "carml-node"
        assert len(span["traceId"]) == 32 and len(span["id"]) == 16 and span["duration"] >= 1
        assert span["tags"].get("error") or span["tags"].get("otel.status_code") == "ERROR"
        assert sender.id in str(span)  # the node id travels as a resource attribute


@pytest.mark.parametrize(
    "headers",
    [
        {"X-B3-TraceId": "0af7651916cd43dd8448eb211c80319c", "X-B3-SpanId": "b7ad6b7169203331", "X-B3-Sampled": "1"},
        {"b3": "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    ],
)
def test_b3_and_w3c_contexts_are_extracted_and_injected(headers) -> None:
    from opentelemetry import trace

    span = trace.get_current_span(extract(headers))
    ctx = span.get_span_context()
    assert format(ctx.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(ctx.span_id, "016x") == "b7ad6b7169203331"
    out = inject(span)
    assert out["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert out["X-B3-SpanId"] == "b7ad6b7169203331"


async def test_a_relayed_kserve_request_is_one_trace_across_nodes(pair) -> None:
    a, b = pair
    x = (np.arange(64, dtype=np.float32) % 16).tolist()
    doc = {
        "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x}],
        "parameters": {"trace_level": "model"},
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{a.url()}/v2/models/digits-cnn/infer", json=doc) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        assert answer["parameters"]["node"] == b.id
        trace_id = answer["parameters"]["trace_id"]
        async with http.get(f"{a.url()}/api/v2/trace/{trace_id}") as resp:
            spans = await resp.json()
    ids = {s["id"] for s in spans}
    assert all(s["parentId"] in ids for s in spans if "parentId" in s)
    (root,) = [s for s in spans if "parentId" not in s]
    # A: its server span (the header's level: application here) and the hop; B: the body's level, model
    assert root["tags"]["carml.node.id"] == a.id and root["name"] == "post /v2/models/digits-cnn/infer"
    (hop,) = [s for s in spans if s.get("kind") == "CLIENT"]
    assert hop["parentId"] == root["id"] and hop["tags"]["carml.peer.id"] == b.id
    (b_server,) = [s for s in spans if s.get("kind") == "SERVER" and s["tags"]["carml.node.id"] == b.id]
    assert b_server["parentId"] == hop["id"]
    executor = next(s for s in spans if s["name"] == "executor.infer")
    assert executor["parentId"] == b_server["id"] and executor["tags"]["carml.node.id"] == b.id
