"""The Zipkin v2 HTTP API (/api/v2, per specs/zipkin2-api.yaml) on every node, over its own :class:`SpanStore`.

There is no central collector: each node keeps the spans sent to it, and GET /api/v2/trace/{traceId} (and
/api/v2/traceMany) assembles a whole trace by also asking every peer for its part, concurrently and with a short
timeout, then merging the parts (:func:`~carml_mesh.trace.zipkin_store.merge`). A peer that fails, is slow or
answers nonsense only leaves its spans out. Peers are asked with ``X-Carml-Local-Only: 1``, which makes them answer
from their own store only, so a request fans out one hop and never loops.

GET /api/v2/traces, /services, /spans, /remoteServices and /dependencies answer from this node's store only: a
search across the mesh would cost every node a scan per query, and a UI finds a trace here and then opens it with
/trace/{traceId}, which is mesh-wide.

Where the spec leaves room:

- POST /api/v2/spans takes Zipkin v2 JSON (``application/json``, ``*/*+json``, ``application/octet-stream`` as
  generic clients label raw bytes, or no Content-Type); gzip or deflate
  ``Content-Encoding`` is undone by aiohttp. ``application/x-protobuf`` (and anything else) is 415. The answer is
  202 with no body; spans already older than the store's retention are accepted and dropped.
- GET /api/v2/spans answers the span names of a service as a list of strings: that is what its description says,
  what Zipkin's server does and what its UI reads, although this copy of the spec gives ``ListOfSpans`` as the
  schema. GET /api/v2/remoteServices (served by Zipkin, absent from this copy of the spec) is served the same way.
- /autocompleteKeys is always [] (no keys are configured) and /autocompleteValues?key= is [].
- Errors are raised as carml_mesh.errors (BadRequest 400, NotFound 404, UnsupportedMediaType 415,
  PayloadTooLarge 413); the app's middleware answers them as ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from ..errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from ..trace.zipkin_store import Span, SpanStore, group_by_trace, merge, normalize_trace_id, validate_spans

log = logging.getLogger("carml.zipkin")

API = "/api/v2"
LOCAL_ONLY = "X-Carml-Local-Only"  # "1": answer from this node's store, do not ask the peers
PEER_TIMEOUT_S = 2.0
MAX_PEER_BYTES = 64 << 20  # the most of a peer's answer this node reads
MAX_PEER_SPANS = 1_000_000
JSON_TYPES = ("application/json", "text/json")
_INT = re.compile(r"-?[0-9]{1,19}")
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("zipkin_peer_session", aiohttp.ClientSession)


def add_routes(
    app: web.Application,
    store_key: web.AppKey[SpanStore],
    *,
    peers: Callable[[], Iterable[str]] | None = None,
    peer_timeout_s: float = PEER_TIMEOUT_S,
    peer_headers: Mapping[str, str] | None = None,
) -> None:
    """Serve the Zipkin v2 API under /api/v2 from ``app[store_key]``.

    ``peers()`` gives the base URLs (``http://host:port``) of the other nodes, asked for their part of a trace;
    ``peer_headers`` go with those requests (e.g. the mesh's ``Authorization``). With peers, the app gets one
    ClientSession, opened and closed by its cleanup context.
    """
    api = _ZipkinApi(store_key, peers, peer_timeout_s)
    r = app.router
    r.add_post(f"{API}/spans", api.post_spans)
    r.add_get(f"{API}/services", api.services)
    r.add_get(f"{API}/spans", api.span_names)
    r.add_get(f"{API}/remoteServices", api.remote_services)
    r.add_get(f"{API}/traces", api.traces)
    r.add_get(f"{API}/trace/{{traceId}}", api.trace)
    r.add_get(f"{API}/traceMany", api.trace_many)
    r.add_get(f"{API}/dependencies", api.dependencies)
    r.add_get(f"{API}/autocompleteKeys", api.autocomplete_keys)
    r.add_get(f"{API}/autocompleteValues", api.autocomplete_values)
    if peers is not None:
        headers = dict(peer_headers or {})

        async def peer_session(app: web.Application) -> AsyncIterator[None]:
            async with aiohttp.ClientSession(headers=headers) as session:
                app[SESSION] = session
                yield

        app.cleanup_ctx.append(peer_session)


def _json(payload: Any) -> web.Response:
    return web.Response(body=json.dumps(payload, separators=(",", ":")).encode(), content_type="application/json")


def _is_json(content_type: str) -> bool:
    """JSON, or the raw bytes generic HTTP clients label octet-stream; never protobuf, thrift or a form."""
    return content_type in JSON_TYPES or content_type.endswith("+json") or content_type == "application/octet-stream"


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name, "")
    if not raw:
        return None
    if not _INT.fullmatch(raw):
        raise BadRequest(f"query parameter {name} must be an integer, got {raw[:40]!r}")
    return int(raw)


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not value:
        raise BadRequest(f"query parameter {name} is required")
    return value


def _trace_ids(raw: str) -> list[str]:
    ids = [normalize_trace_id(t.strip(), "traceIds") for t in raw.split(",") if t.strip()]
    if len(ids) < 2:
        raise BadRequest("traceIds needs at least two comma-separated trace ids; use /api/v2/trace/{traceId} for one")
    if len(set(ids)) != len(ids):
        raise BadRequest("traceIds lists the same trace id twice")
    return ids


class _ZipkinApi:
    def __init__(
        self,
        store_key: web.AppKey[SpanStore],
        peers: Callable[[], Iterable[str]] | None,
        peer_timeout_s: float,
    ) -> None:
        self.store_key = store_key
        self.peers = peers
        self.timeout = aiohttp.ClientTimeout(total=peer_timeout_s)

    def store(self, request: web.Request) -> SpanStore:
        return request.app[self.store_key]

    # -- collector

    async def post_spans(self, request: web.Request) -> web.Response:
        if "Content-Type" in request.headers and not _is_json(request.content_type):
            raise UnsupportedMediaType(
                f"spans must be Zipkin v2 JSON (Content-Type: application/json), not {request.content_type}"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = request.client_max_size
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes; send smaller batches") from None
        except web.RequestPayloadError as exc:  # e.g. a gzip body that does not decode
            raise BadRequest(f"the body could not be read: {exc}") from None
        if not body.strip():
            raise BadRequest("the body is empty; send a JSON list of spans")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # ValueError covers bad UTF-8 and bad JSON alike
            raise BadRequest(f"malformed JSON: {exc}") from None
        spans = validate_spans(doc)
        self.store(request).add(spans)
        return web.Response(status=202)

    # -- names

    async def services(self, request: web.Request) -> web.Response:
        return _json(self.store(request).services())

    async def span_names(self, request: web.Request) -> web.Response:
        return _json(self.store(request).span_names(_required(request, "serviceName")))

    async def remote_services(self, request: web.Request) -> web.Response:
        return _json(self.store(request).remote_services(_required(request, "serviceName")))

    async def autocomplete_keys(self, request: web.Request) -> web.Response:
        return _json([])

    async def autocomplete_values(self, request: web.Request) -> web.Response:
        _required(request, "key")
        return _json([])

    # -- traces

    async def traces(self, request: web.Request) -> web.Response:
        q = request.query
        found = self.store(request).traces(
            service_name=q.get("serviceName"),
            span_name=q.get("spanName"),
            remote_service_name=q.get("remoteServiceName"),
            annotation_query=q.get("annotationQuery"),
            min_duration=_int_param(request, "minDuration"),
            max_duration=_int_param(request, "maxDuration"),
            end_ts=_int_param(request, "endTs"),
            lookback=_int_param(request, "lookback"),
            limit=_int_param(request, "limit"),
        )
        return _json(found)

    async def dependencies(self, request: web.Request) -> web.Response:
        end_ts = _int_param(request, "endTs")
        if end_ts is None:
            raise BadRequest("query parameter endTs is required (epoch milliseconds)")
        return _json(self.store(request).dependencies(end_ts, _int_param(request, "lookback")))

    async def trace(self, request: web.Request) -> web.Response:
        trace_id = normalize_trace_id(request.match_info["traceId"])
        local = self.store(request).trace(trace_id)
        remote = await self._ask_peers(request, f"{API}/trace/{trace_id}", None, many=False)
        spans = [s for s in merge([local, *remote]) if s["traceId"] == trace_id]
        if not spans:
            raise NotFound(f"trace {trace_id} not found")
        return _json(spans)

    async def trace_many(self, request: web.Request) -> web.Response:
        ids = _trace_ids(_required(request, "traceIds"))
        local = self.store(request).trace_many(ids)
        remote = await self._ask_peers(request, f"{API}/traceMany", {"traceIds": ",".join(ids)}, many=True)
        groups = group_by_trace(merge([*local, *remote]))
        return _json([groups[t] for t in ids if t in groups])

    # -- the peers

    async def _ask_peers(
        self, request: web.Request, path: str, params: dict[str, str] | None, *, many: bool
    ) -> list[list[Span]]:
        """The spans each peer holds for ``path``, as lists of spans; [] when local-only or without peers."""
        if self.peers is None or request.headers.get(LOCAL_ONLY) == "1":
            return []
        try:
            urls = list(dict.fromkeys(self.peers()))
        except Exception:
            log.exception("peers() failed; answering from this node only")
            return []
        if not urls:
            return []
        session = request.app[SESSION]
        answers = await asyncio.gather(*(self._ask(session, url, path, params, many) for url in urls))
        return [spans for answer in answers for spans in answer]

    async def _ask(
        self, session: aiohttp.ClientSession, base: str, path: str, params: dict[str, str] | None, many: bool
    ) -> list[list[Span]]:
        url = base.rstrip("/") + path
        try:
            async with session.get(url, params=params, headers={LOCAL_ONLY: "1"}, timeout=self.timeout) as resp:
                if resp.status == 404:
                    return []
                if resp.status != 200:
                    log.info("peer %s answered %d for %s", base, resp.status, path)
                    return []
                if resp.content_length is not None and resp.content_length > MAX_PEER_BYTES:
                    raise ValueError(f"answer of {resp.content_length} bytes is over {MAX_PEER_BYTES}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_PEER_BYTES:
                        raise ValueError(f"answer is over {MAX_PEER_BYTES} bytes")
            doc = json.loads(body)
            if not many:
                return [validate_spans(doc, max_spans=MAX_PEER_SPANS)]
            if not isinstance(doc, list):
                raise ValueError("traceMany answered something other than a list of traces")
            return [validate_spans(trace, max_spans=MAX_PEER_SPANS) for trace in doc]
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError, BadRequest) as exc:
            log.info("peer %s left out of %s: %s", base, path, str(exc) or type(exc).__name__)
            return []


# --- the OpenAPI paths (merged into web/openapi.py's document) ------------------------------------------------------


def openapi_paths() -> dict[str, Any]:
    """The routes above in OpenAPI 3.1, after specs/zipkin2-api.yaml (Swagger 2.0), with the choices made here."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    hex_id = {"type": "string", "pattern": "^[a-f0-9]{16}$"}
    endpoint = {
        "type": "object",
        "properties": {
            "serviceName": {"type": "string"},
            "ipv4": {"type": "string"},
            "ipv6": {"type": "string"},
            "port": {"type": "integer"},
        },
    }
    span = {
        "type": "object",
        "required": ["traceId", "id"],
        "properties": {
            "traceId": {"type": "string", "pattern": "^[a-f0-9]{16,32}$"},
            "name": {"type": "string"},
            "parentId": hex_id,
            "id": hex_id,
            "kind": {"enum": ["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]},
            "timestamp": {"type": "integer", "minimum": 0, "description": "epoch microseconds"},
            "duration": {"type": "integer", "minimum": 0, "description": "microseconds"},
            "debug": {"type": "boolean"},
            "shared": {"type": "boolean"},
            "localEndpoint": endpoint,
            "remoteEndpoint": endpoint,
            "annotations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["timestamp", "value"],
                    "properties": {"timestamp": {"type": "integer"}, "value": {"type": "string"}},
                },
            },
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    spans = {"type": "array", "items": span}
    names = {"type": "array", "items": {"type": "string"}}
    link = {
        "type": "object",
        "required": ["parent", "child", "callCount"],
        "properties": {
            "parent": {"type": "string"},
            "child": {"type": "string"},
            "callCount": {"type": "integer"},
            "errorCount": {"type": "integer"},
        },
    }

    def query(name: str, *, required: bool = False, integer: bool = False, about: str = "") -> dict[str, Any]:
        schema = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1} if integer else {"type": "string"}
        param = {"name": name, "in": "query", "required": required, "schema": schema}
        return {**param, "description": about} if about else param

    def ok(schema: dict[str, Any], *errors: int, summary: str, parameters: list[Any] | None = None) -> dict[str, Any]:
        reasons = {400: "A query parameter is missing or malformed", 404: "No span of the trace on any node"}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}
        responses.update({str(c): {"description": reasons[c], "content": error} for c in errors})
        return {"get": {"summary": summary, "parameters": parameters or [], "responses": responses}}

    service = query("serviceName", required=True, about="lower-case label of a node in the service graph")
    return {
        f"{API}/spans": {
            "post": {
                "summary": "Zipkin v2: upload spans (JSON; gzip or deflate Content-Encoding undone)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": spans}, "application/octet-stream": {}},
                },
                "responses": {
                    "202": {"description": "Accepted (spans past the store's retention are dropped)"},
                    "415": {"description": "Not Zipkin v2 JSON (protobuf, thrift, a form)", "content": error},
                },
            },
            **ok(names, 400, summary="Zipkin v2: the span names of a service", parameters=[service]),
        },
        f"{API}/services": ok(names, summary="Zipkin v2: the service names in this node's store"),
        f"{API}/remoteServices": ok(
            names, 400, summary="Zipkin v2: the remote service names of a service", parameters=[service]
        ),
        f"{API}/traces": ok(
            {"type": "array", "items": spans},
            400,
            summary="Zipkin v2: traces in this node's store that match the query",
            parameters=[
                query("serviceName"),
                query("spanName"),
                query("remoteServiceName"),
                query("annotationQuery", about="e.g. http.uri=/foo and retried"),
                query("minDuration", integer=True, about="microseconds"),
                query("maxDuration", integer=True, about="microseconds"),
                query("endTs", integer=True, about="epoch milliseconds"),
                query("lookback", integer=True, about="milliseconds before endTs"),
                query("limit", integer=True),
            ],
        ),
        f"{API}/trace/{{traceId}}": ok(
            spans,
            400,
            404,
            summary="Zipkin v2: one trace, assembled from this node's spans and every peer's",
            parameters=[
                {
                    "name": "traceId",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "16 or 32 hex digits",
                }
            ],
        ),
        f"{API}/traceMany": ok(
            {"type": "array", "items": spans},
            400,
            summary="Zipkin v2: several traces by id, from this node and every peer",
            parameters=[query("traceIds", required=True, about="two or more comma-separated trace ids")],
        ),
        f"{API}/dependencies": ok(
            {"type": "array", "items": link},
            400,
            summary="Zipkin v2: the service dependency links in this node's store",
            parameters=[query("endTs", required=True, integer=True), query("lookback", integer=True)],
        ),
        f"{API}/autocompleteKeys": ok(names, summary="Zipkin v2: autocomplete keys (none are configured: [])"),
        f"{API}/autocompleteValues": ok(
            names, 400, summary="Zipkin v2: an autocomplete key's values ([])", parameters=[query("key", required=True)]
        ),
    }
