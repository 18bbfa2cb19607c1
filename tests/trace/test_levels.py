"""Trace levels on the session's real node: framework-level operator spans from onnxruntime and torch.profiler, the
level asked for in a body (/api/predict and KServe), and every span valid against the Zipkin v2 spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import msgpack
import numpy as np
import pytest
import yaml

from carml_mesh.node.node import Node
from carml_mesh.trace.setup import LEVEL_HEADER

SPEC = yaml.safe_load((Path(__file__).resolve().parents[1] / "specs" / "zipkin2-api.yaml").read_text())
MSGPACK = "application/msgpack"


def check_trace(spans: Any) -> list[dict[str, Any]]:
    """A GET /api/v2/trace/{id} answer: valid against the spec, one root, every parent present."""
    schema = {
        **SPEC["paths"]["/trace/{traceId}"]["get"]["responses"]["200"]["schema"],
        "definitions": SPEC["definitions"],
    }
    jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER).validate(spans)
    ids = {s["id"] for s in spans}
    assert len(ids) == len(spans)
    assert len([s for s in spans if "parentId" not in s]) == 1
    assert all(s["parentId"] in ids for s in spans if "parentId" in s)
    return spans


async def get_trace(http: aiohttp.ClientSession, trace_id: str) -> list[dict[str, Any]]:
    async with http.get(f"/api/v2/trace/{trace_id}") as resp:
        assert resp.status == 200
        return check_trace(await resp.json())


def digit(digits_heldout: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return digits_heldout[0][0]  # one input, (1, 8, 8)


async def predict(
    http: aiohttp.ClientSession, x: np.ndarray, *, framework: str, trace: str | None, header: str | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model": "digits-cnn",
        "framework": framework,
        "inputs": [{"tensor": {"dtype": "float32", "shape": list(x.shape), "data": x.tobytes()}}],
    }
    if trace is not None:
        doc["trace"] = trace
    headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
    if header is not None:
        headers[LEVEL_HEADER] = header
    async with http.post("/api/predict", data=msgpack.packb(doc), headers=headers) as resp:
        answer = msgpack.unpackb(await resp.read())
        assert resp.status == 200, answer
        return answer


def descendants(spans: list[dict[str, Any]], root: dict[str, Any]) -> list[dict[str, Any]]:
    children: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        children.setdefault(s.get("parentId", ""), []).append(s)
    out, todo = [], list(children.get(root["id"], []))
    while todo:
        s = todo.pop()
        out.append(s)
        todo.extend(children.get(s["id"], []))
    return out


@pytest.mark.parametrize(
    ("framework", "op_type"), [("onnxruntime", "Conv"), ("pytorch", "aten::linear")], ids=["onnxruntime", "pytorch"]
)
async def test_framework_level_puts_the_profiled_operators_under_worker_compute(
    node: Node, http: aiohttp.ClientSession, digits_heldout, framework: str, op_type: str
) -> None:
    answer = await predict(http, digit(digits_heldout), framework=framework, trace="framework")
    assert answer["framework"] == framework
    spans = await get_trace(http, answer["trace_id"])
    by_name = {s["name"]: s for s in spans}
    compute = by_name["worker.compute"]
    assert compute["parentId"] == by_name["executor.infer"]["id"]
    ops = descendants(spans, compute)
    assert ops, "no operator spans under worker.compute"
    assert {s["tags"]["carml.op.type"] for s in ops} >= {op_type}
    assert len(ops) <= 200
    for op in ops:  # the operators ran within the compute stage (same clock; a little slack for rounding)
        assert op["tags"]["carml.node.id"] == node.id
        assert op["timestamp"] >= compute["timestamp"] - 1000
    if framework == "pytorch":  # torch nests its ops: aten::linear's children hang under it
        linear = next(s for s in ops if s["name"] == "aten::linear")
        assert descendants(spans, linear)
    # the next request at level model carries no operators: the profiler is on for that one request only
    answer = await predict(http, digit(digits_heldout), framework=framework, trace="model")
    spans = await get_trace(http, answer["trace_id"])
    compute = next(s for s in spans if s["name"] == "worker.compute")
    assert descendants(spans, compute) == []


async def test_the_body_field_sets_the_level_over_the_header(node: Node, http: aiohttp.ClientSession, digits_heldout):
    x = digit(digits_heldout)
    # the body's level wins over the header's, up...
    answer = await predict(http, x, framework="onnxruntime", trace="model", header="none")
    names = {s["name"] for s in await get_trace(http, answer["trace_id"])}
    assert {"post /api/predict", "executor.infer", "worker.compute"} <= names
    # ...and down
    answer = await predict(http, x, framework="onnxruntime", trace="application", header="model")
    names = {s["name"] for s in await get_trace(http, answer["trace_id"])}
    assert "post /api/predict" in names and "executor.infer" not in names
    before = len(node.tracing.store)
    answer = await predict(http, x, framework="onnxruntime", trace="none")
    assert "trace_id" not in answer and len(node.tracing.store) == before
    # a JSON body too, and a bad level is a 400 naming the field
    doc = {"model": "digits-cnn", "inputs": [{"tensor": x.tolist()}], "trace": "verbose"}
    async with http.post("/api/predict", json=doc) as resp:
        assert resp.status == 400
        assert "'trace'" in (await resp.json())["error"]
    doc["trace"] = "model"
    async with http.post("/api/predict", json=doc) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert "worker.compute" in {s["name"] for s in await get_trace(http, answer["trace_id"])}


def kserve_body(x: np.ndarray, **parameters: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": {"framework": "onnxruntime", **parameters},
    }


async def test_kserve_requests_are_traced_like_predict(node: Node, http: aiohttp.ClientSession, digits_heldout):
    x = digit(digits_heldout)
    async with http.post("/v2/models/digits-cnn/infer", json=kserve_body(x, trace_level="model")) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    trace_id = answer["parameters"]["trace_id"]
    spans = await get_trace(http, trace_id)
    by_name = {s["name"]: s for s in spans}
    server = by_name["post /v2/models/digits-cnn/infer"]
    assert server["kind"] == "SERVER" and "parentId" not in server
    assert by_name["executor.infer"]["parentId"] == server["id"]
    assert by_name["worker.compute"]["parentId"] == by_name["executor.infer"]["id"]
    # by header, at level application: the server span only
    async with http.post(
        "/v2/models/digits-cnn/infer", json=kserve_body(x), headers={LEVEL_HEADER: "application"}
    ) as r:
        answer = await r.json()
        assert r.status == 200, answer
    names = {s["name"] for s in await get_trace(http, answer["parameters"]["trace_id"])}
    assert names == {"post /v2/models/digits-cnn/infer"}
    # untraced: no trace id
    async with http.post("/v2/models/digits-cnn/infer", json=kserve_body(x), headers={LEVEL_HEADER: "none"}) as resp:
        assert "trace_id" not in (await resp.json())["parameters"]
    before = len(node.tracing.store)
    body = kserve_body(x, trace_level="none")
    async with http.post("/v2/models/digits-cnn/infer", json=body, headers={LEVEL_HEADER: "model"}) as resp:
        assert resp.status == 200
        assert "trace_id" not in (await resp.json())["parameters"]
    assert len(node.tracing.store) == before
    async with http.post("/v2/models/digits-cnn/infer", json=kserve_body(x, trace_level=3)) as resp:
        assert resp.status == 400
        assert "parameters.trace_level" in (await resp.json())["error"]
