"""The Open Inference Protocol (KServe v2) REST API, binary tensor extension included, so tritonclient works."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web
from opentelemetry.trace import SpanKind

from .. import __version__
from ..dataplane.types import InferRequest
from ..errors import BadRequest, PayloadTooLarge
from ..headers import hop_from
from ..manifest.schema import Manifest
from ..trace.setup import NONE, extract, hex_trace_id, reset_level, set_level
from . import bodies
from . import kserve_codec as codec

if TYPE_CHECKING:
    from ..node.node import Node

HEADER_LENGTH = "Inference-Header-Content-Length"
PLATFORMS = {"onnxruntime": "onnx_onnxv1", "pytorch": "pytorch_torchscript"}
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", ready)
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_get(base, model_metadata)
        r.add_get(base + "/ready", model_ready)
        r.add_post(base + "/infer", infer)


async def server_metadata(request: web.Request) -> web.Response:
    return _json({"name": "carml-mesh", "version": __version__, "extensions": EXTENSIONS})


async def live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def ready(request: web.Request) -> web.Response:
    is_ready = _node(request).ready
    return _json({"ready": is_ready}, 200 if is_ready else 503)


def _datatype(element_type: str) -> str:
    return codec.datatype_of(np.dtype(element_type)) or "BYTES"


def _metadata(manifest: Manifest, versions: list[str], platform: str) -> dict[str, Any]:
    out = manifest.output
    # Classification outputs are logits over the labels; their per-item shape is the label count when known.
    out_dims = list(out.dimensions)
    return {
        "name": manifest.name,
        "versions": versions,
        "platform": platform,
        "inputs": [
            {"name": i.name, "datatype": _datatype(i.element_type), "shape": [-1, *i.dimensions]}
            for i in manifest.inputs
        ],
        "outputs": [{"name": out.name, "datatype": _datatype(out.element_type), "shape": [-1, *out_dims]}],
    }


async def model_metadata(request: web.Request) -> web.Response:
    node = _node(request)
    model = node.catalog.get(request.match_info["name"], request.match_info.get("version"))
    available = model.available_frameworks() or [f.name for f in model.manifest.frameworks]
    return _json(_metadata(model.manifest, node.catalog.versions(model.name), PLATFORMS[available[0]]))


async def model_ready(request: web.Request) -> web.Response:
    node = _node(request)
    model = node.catalog.get(request.match_info["name"], request.match_info.get("version"))
    assert node.executor is not None
    is_ready = False
    for framework in model.available_frameworks():
        spec = node.inference.select(model, framework, None)
        is_ready = is_ready or node.executor.is_loaded(spec)
    return _json({"name": model.name, "ready": is_ready}, 200 if is_ready else 503)


async def infer(request: web.Request) -> web.Response:
    """Traced like /api/predict: a server span, the executor and worker below it at level model, and the answer's
    ``parameters.trace_id``. The level is ``parameters.trace_level`` in the request, else X-Carml-Trace-Level, else
    the node's default. Routed like /api/predict too: one `InferRequest` to `RoutedInference.infer`."""
    node = _node(request)
    level = node.tracing.request_level(request.headers)
    if level == NONE:  # the hot path: no span unless the body asks for one
        started_ns = time.time_ns()
        parsed = await _parse(request, node)
        body_level = _trace_level(parsed)
        if not body_level:
            return await _infer(request, node, parsed, None)
        return await _traced_infer(request, node, body_level, parsed, started_ns)
    return await _traced_infer(request, node, level, None, None)


async def _traced_infer(
    request: web.Request, node: Node, level: int, parsed: codec.InferRequest | None, started_ns: int | None
) -> web.Response:
    token = set_level(level)
    try:
        attributes = {"http.method": "POST", "http.route": "/v2/models/{name}/infer", "carml.node.name": node.name}
        with node.tracing.span(
            f"POST {request.path}",
            kind=SpanKind.SERVER,
            context=extract(request.headers),
            attributes=attributes,
            start_time=started_ns,
        ) as span:
            if parsed is None:
                parsed = await _parse(request, node)
                body_level = _trace_level(parsed)
                if body_level is not None:  # the body's word over the header's
                    set_level(body_level)
                    if body_level == NONE and span is not None:
                        node.tracing.discard(span)
                        span = None
            trace_id = hex_trace_id(span) if span is not None else None
            response = await _infer(request, node, parsed, trace_id)
            if span is not None:
                span.set_attributes({"carml.model": request.match_info["name"], "http.status_code": response.status})
            return response
    finally:
        reset_level(token)


def _trace_level(parsed: codec.InferRequest) -> int | None:
    return bodies.trace_level(parsed.parameters.get("trace_level"), "parameters.trace_level")


async def _parse(request: web.Request, node: Node) -> codec.InferRequest:
    raw_length = request.headers.get(HEADER_LENGTH)
    header_length = None
    if raw_length is not None:
        if not raw_length.strip().isdigit():
            raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {raw_length!r}")
        header_length = int(raw_length)
    body = await request.read()
    max_elements = node.config.max_body_bytes  # no tensor may hold more elements than the body has bytes
    return codec.parse_infer_request(body, header_length, max_elements=max_elements)


def infer_request(request: web.Request, parsed: codec.InferRequest) -> InferRequest:
    """The protocol-neutral request: raw output tensors (the codec does classification), exact element types."""
    tensors: dict[str, np.ndarray] = {}
    for item in parsed.inputs:
        if item.datatype == "BYTES":
            raise BadRequest(f"input {item.name!r}: BYTES tensors are not accepted by this model")
        tensors[item.name] = item.array
    if not tensors:
        raise BadRequest("'inputs' must hold at least one tensor")
    params = parsed.parameters
    return InferRequest(
        model=request.match_info["name"],
        version=request.match_info.get("version"),
        framework=_param(params, "framework"),
        device=_param(params, "device"),
        node=_param(params, "node"),
        tensors=tensors,
        outputs=True,
        exact_dtypes=True,
        hop=hop_from(request.headers),
    )


def _param(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    return value if isinstance(value, str) and value else None


async def _infer(request: web.Request, node: Node, parsed: codec.InferRequest, trace_id: str | None) -> web.Response:
    reply = await node.routed.infer(infer_request(request, parsed))
    parameters: dict[str, Any] = {"framework": reply.framework, "device": reply.device, "node": reply.node.id}
    if trace_id is not None:
        parameters["trace_id"] = trace_id
    try:
        body, json_length = codec.encode_infer_response(
            model_name=reply.model,
            model_version=reply.version,
            request_id=parsed.id,
            outputs=list(reply.outputs.items()),
            requested=parsed.outputs,
            binary_default=parsed.binary_data_output,
            parameters=parameters,
            labels=list(reply.labels) or None,
        )
    except MemoryError:
        raise PayloadTooLarge("the response would be too large") from None
    headers = {HEADER_LENGTH: str(json_length)} if json_length is not None else {}
    content_type = "application/octet-stream" if json_length is not None else "application/json"
    return web.Response(body=body, headers=headers, content_type=content_type)
