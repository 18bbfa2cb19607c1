"""The carml REST API under /api: node, models, predict (JSON, msgpack or multipart), samples, OpenAPI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry.trace import SpanKind

from ..dataplane.document import reply_document
from ..dataplane.types import InferRequest
from ..errors import BadRequest, PayloadTooLarge
from ..headers import Hop, hop_from
from ..trace.setup import NONE, extract, hex_trace_id, reset_level, set_level
from . import bodies, forms
from .openapi import openapi_document

if TYPE_CHECKING:
    from ..node.node import Node

LARGE_BODY = 64 << 10  # a body this large is read into one buffer (see _read_body)
_BUFFERS = bodies.BodyBuffers()  # one event loop per process: no lock needed
IMAGE_FIELDS = ("image", "images", "file", "files")


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/node", node_info)
    app.router.add_get("/api/cluster", cluster)
    app.router.add_get("/api/models", list_models)
    app.router.add_get("/api/models/{name}", get_model)
    app.router.add_post("/api/predict", predict)
    app.router.add_get("/api/samples", samples)
    app.router.add_get("/api/openapi.json", openapi)


def _reply(request: web.Request, payload: object, *, as_msgpack: bool | None = None) -> web.Response:
    if as_msgpack is None:
        as_msgpack = bodies.wants_msgpack(request.headers.get("Accept", ""), request.content_type)
    body = bodies.encode(payload, as_msgpack)
    return web.Response(body=body, content_type=bodies.MSGPACK if as_msgpack else bodies.JSON)


async def health(request: web.Request) -> web.Response:
    node = _node(request)
    return _reply(
        request,
        {
            "status": "ok" if node.ready else "starting",
            "ready": node.ready,
            "node": node.id,
            "uptime_s": round(time.monotonic() - node.started_monotonic, 3),
        },
    )


async def node_info(request: web.Request) -> web.Response:
    return _reply(request, _node(request).info())


async def cluster(request: web.Request) -> web.Response:
    return _reply(request, cluster_document(_node(request)))


def cluster_document(node: Node) -> dict[str, Any]:
    """GET /api/cluster's document (also the payload of /api/events)."""
    if node.mesh is None:
        me = {"id": node.id, "self": True, "state": "alive", "card": None}
        return {
            "self": node.id,
            "cluster": None,
            "members": [me],
            "gossip": None,
            "discovery": None,
            "note": "gossip is off on this node (--no-gossip)",
        }
    return node.mesh.cluster_view()


async def list_models(request: web.Request) -> web.Response:
    node = _node(request)
    return _reply(request, {"models": [node.describe_model(m) for m in node.catalog]})


async def get_model(request: web.Request) -> web.Response:
    node = _node(request)
    name = request.match_info["name"]
    version = request.query.get("version")
    model = node.catalog.get(name, version)
    described = node.describe_model(model)
    described["manifest"] = node.manifest_document(model)
    return _reply(request, described)


async def predict(request: web.Request) -> web.Response:
    """Traced at the request's level: the server span (joined to the caller's trace) and ``trace_id`` in the answer.

    The level is the body's ``trace`` field, else the X-Carml-Trace-Level header, else the node's default.
    """
    node = _node(request)
    level = node.tracing.request_level(request.headers)
    if level == NONE:  # not a span, not a context lookup on the hot path, unless the body asks for one
        started_ns = time.time_ns()
        parsed = await _parse_predict(request, node)
        if not parsed.trace_level:
            return _reply(request, reply_document(await node.routed.infer(parsed)))
        return _reply(request, await _traced_predict(request, node, parsed.trace_level, parsed, started_ns))
    return _reply(request, await _traced_predict(request, node, level, None, None))


async def _traced_predict(
    request: web.Request, node: Node, level: int, parsed: InferRequest | None, started_ns: int | None
) -> dict[str, Any]:
    token = set_level(level)
    try:
        attributes = {"http.method": "POST", "http.route": "/api/predict", "carml.node.name": node.name}
        with node.tracing.span(
            "POST /api/predict",
            kind=SpanKind.SERVER,
            context=extract(request.headers),
            attributes=attributes,
            start_time=started_ns,
        ) as span:
            if parsed is None:
                parsed = await _parse_predict(request, node)
                if parsed.trace_level is not None:  # the body's word over the header's
                    set_level(parsed.trace_level)
                    if parsed.trace_level == NONE and span is not None:
                        node.tracing.discard(span)
                        span = None
            reply = await node.routed.infer(parsed)
            answer = reply_document(reply, trace_id=hex_trace_id(span) if span is not None else None)
            if span is not None:
                span.set_attributes({"carml.model": reply.model, "http.status_code": 200})
    finally:
        reset_level(token)
    return answer


async def _parse_predict(request: web.Request, node: Node) -> InferRequest:
    content_type = bodies.check_content_type(request.content_type)
    if request.content_length is not None and request.content_length > node.config.max_body_bytes:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes exceeds the limit of {node.config.max_body_bytes}"
        )
    hop = hop_from(request.headers)
    if content_type == "multipart/form-data":
        return await _parse_multipart(request, node.config.max_body_bytes, hop)
    if content_type == bodies.JSON:
        return bodies.parse_json_body(await request.read(), hop)
    return bodies.parse_msgpack_body(await _read_body(request), hop)


async def _read_body(request: web.Request) -> bytes | bytearray:
    """The body, copied once from aiohttp's chunks into a reusable buffer of its Content-Length (``request.read()``
    joins chunks, extends a bytearray and copies that into bytes: three copies of a 602 KB tensor, in fresh memory
    each time). The length was checked against the limit; a small body, or one without a length (chunked), is
    ``request.read()``, with aiohttp's own limit."""
    size = request.content_length
    if not size or size < LARGE_BODY or request.body_exists is False:
        return await request.read()
    content = request.content
    content.set_read_chunk_size(size)  # as request.read() does: no pause/resume of reading mid-body
    buffer = _BUFFERS.get(size)
    view, got = memoryview(buffer), 0
    while True:
        chunk, _ = await content.readchunk()
        if not chunk:
            break
        end = got + len(chunk)
        if end > size:  # cannot happen with Content-Length framing; refuse rather than trust it
            raise BadRequest(f"the body is longer than its Content-Length of {size} bytes")
        view[got:end] = chunk
        got = end
    if got != size:
        raise BadRequest(f"the body ended after {got} of its Content-Length of {size} bytes")
    return buffer


async def _parse_multipart(request: web.Request, limit: int, hop: Hop) -> InferRequest:
    """Fields model, version, framework, device, top_k; every file part is one image of the batch."""
    form = await forms.open_form(request)
    fields: dict[str, str] = {}
    images: list[bytes] = []
    total = 0
    while (part := await form.next_part()) is not None:
        name = part.name
        if part.filename is not None or name in IMAGE_FIELDS:
            data = bytearray()
            async for chunk in part.chunks():
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
                data.extend(chunk)
            images.append(bytes(data))
        elif name in ("model", "version", "framework", "device", "node", "top_k", "trace"):
            fields[name] = await part.field()
        else:
            raise BadRequest(
                f"unknown form field {name[:80]!r}; send model, version, framework, device, top_k and image files"
            )
    if not images:
        raise BadRequest("the form holds no image file; add one or more files under 'image'")
    doc: dict[str, object] = {k: v for k, v in fields.items() if v}
    doc["inputs"] = [{"image": b} for b in images]
    return bodies.parse_document(doc, binary=True, hop=hop)


async def samples(request: web.Request) -> web.Response:
    node = _node(request)
    folder = node.config.samples_dir
    items = []
    if folder is not None and folder.is_dir():
        index = _samples_index(folder)
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"):
                about = index.get(path.name, {})
                items.append(
                    {
                        "name": path.name,
                        "url": f"/samples/{path.name}",
                        "models": about.get("models", []),
                        "label": about.get("label", ""),
                    }
                )
    return _reply(request, {"samples": items})


def _samples_index(folder: Path) -> dict[str, dict[str, Any]]:
    """samples.json beside the images: which models each sample suits and what it shows (optional)."""
    try:
        data = json.loads((folder / "samples.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
