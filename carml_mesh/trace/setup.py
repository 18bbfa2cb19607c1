"""Tracing of /api/predict with OpenTelemetry, exported in Zipkin v2 form.

Each :class:`~carml_mesh.node.node.Node` makes one :class:`Tracing`: its own ``TracerProvider`` (never the global
one, so several nodes in one process do not mix) with service name ``carml-node`` and the node's id and host as
resource attributes. Finished spans always go to the node's own :class:`~carml_mesh.trace.zipkin_store.SpanStore`
(so ``GET /api/v2/trace/{id}`` on any node shows a whole trace with no external collector), and also to a Zipkin
server (JSON v2, batched) when the node was given ``--zipkin URL``.

Trace levels, as in MLModelScope, from the least to the most detail:

- ``none``: no spans at all;
- ``application``: the HTTP server span of /api/predict, the routing decision, a CLIENT span per forwarded hop and
  the SERVER span on the peer, joined by W3C ``traceparent`` (and B3) headers;
- ``model``: also the executor call and the worker's stages (queue, decode, preprocess, compute, postprocess),
  rebuilt from the worker's reply;
- ``framework``: accepted, and traced as ``model`` (per-operator spans are not collected yet).

The level of a request is the node's default (``--trace-level``) unless the ``X-Carml-Trace-Level`` header names
another; it travels to peers in the same header. It lives in a context variable for the request's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..errors import ConfigError
from .zipkin_store import SpanStore, validate_spans

log = logging.getLogger("carml.trace")

SERVICE_NAME = "carml-node"
LEVEL_HEADER = "X-Carml-Trace-Level"
LEVELS = ("none", "application", "model", "framework")
NONE, APPLICATION, MODEL, FRAMEWORK = range(4)
EXPORT_TIMEOUT_S = 2  # one POST to the Zipkin server

_level: contextvars.ContextVar[int] = contextvars.ContextVar("carml_trace_level", default=NONE)
_w3c = TraceContextTextMapPropagator()


def parse_level(value: str | None, where: str = "trace level") -> int:
    text = (value or "").strip().lower()
    if text not in LEVELS:
        raise ValueError(f"{where} {value!r}: use one of {', '.join(LEVELS)}")
    return LEVELS.index(text)


def current_level() -> int:
    return _level.get()


def set_level(level: int) -> contextvars.Token[int]:
    return _level.set(level)


def reset_level(token: contextvars.Token[int]) -> None:
    _level.reset(token)


def hex_trace_id(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


# ------------------------------------------------------------------------------------------------ propagation


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's span context from W3C ``traceparent``, else from B3 (single ``b3`` or multi ``X-B3-*``)."""
    carrier = {k.lower(): v for k, v in headers.items()}
    if "traceparent" in carrier:
        return _w3c.extract(carrier)
    trace_id = span_id = sampled = None
    if "b3" in carrier:
        parts = carrier["b3"].split("-")
        if len(parts) >= 2:
            trace_id, span_id = parts[0], parts[1]
            sampled = parts[2] if len(parts) > 2 else None
    elif "x-b3-traceid" in carrier and "x-b3-spanid" in carrier:
        trace_id, span_id, sampled = carrier["x-b3-traceid"], carrier["x-b3-spanid"], carrier.get("x-b3-sampled")
    try:
        tid, sid = int(trace_id or "", 16), int(span_id or "", 16)
    except ValueError:
        return Context()
    if not 0 < tid < 1 << 128 or not 0 < sid < 1 << 64:
        return Context()
    flags = TraceFlags(TraceFlags.DEFAULT if sampled == "0" else TraceFlags.SAMPLED)
    parent = SpanContext(tid, sid, is_remote=True, trace_flags=flags)
    return trace.set_span_in_context(NonRecordingSpan(parent))


def inject(span: Span) -> dict[str, str]:
    """W3C and B3 (multi) headers that make ``span`` the parent of the peer's server span."""
    headers: dict[str, str] = {}
    _w3c.inject(headers, context=trace.set_span_in_context(span))
    ctx = span.get_span_context()
    headers["X-B3-TraceId"] = format(ctx.trace_id, "032x")
    headers["X-B3-SpanId"] = format(ctx.span_id, "016x")
    headers["X-B3-Sampled"] = "1" if ctx.trace_flags.sampled else "0"
    return headers


# ------------------------------------------------------------------------------------------------ export


_KINDS = {SpanKind.SERVER: "SERVER", SpanKind.CLIENT: "CLIENT", SpanKind.PRODUCER: "PRODUCER"}
_KINDS[SpanKind.CONSUMER] = "CONSUMER"


def _tag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ",".join(_tag(v) for v in value)
    return str(value)


def to_zipkin(span: ReadableSpan) -> dict[str, Any]:
    """One finished OTel span as a Zipkin v2 JSON span (ids in hex, times in µs)."""
    ctx = span.get_span_context()
    assert ctx is not None
    start = span.start_time or 0
    end = span.end_time or start
    doc: dict[str, Any] = {
        "traceId": format(ctx.trace_id, "032x"),
        "id": format(ctx.span_id, "016x"),
        "name": span.name,
        "timestamp": start // 1000,
        "duration": max(1, (end - start) // 1000),
        "localEndpoint": {"serviceName": str(span.resource.attributes.get("service.name", SERVICE_NAME))},
    }
    if span.parent is not None:
        doc["parentId"] = format(span.parent.span_id, "016x")
    if span.kind in _KINDS:
        doc["kind"] = _KINDS[span.kind]
    tags = {k: _tag(v) for k, v in (span.attributes or {}).items()}
    for key in ("carml.node.id", "host.name"):
        if key in span.resource.attributes:
            tags.setdefault(key, _tag(span.resource.attributes[key]))
    if not span.status.is_ok and span.status.description:
        tags["error"] = span.status.description
    doc["tags"] = tags
    if span.events:
        doc["annotations"] = [{"timestamp": e.timestamp // 1000, "value": e.name} for e in span.events]
    return doc


class StoreExporter(SpanExporter):
    """Finished spans into the node's own span store, as Zipkin v2 spans."""

    def __init__(self, store: SpanStore) -> None:
        self.store = store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.store.add(validate_spans([to_zipkin(s) for s in spans]))
        except Exception:
            log.exception("could not store %d span(s)", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ the node's tracer


class Tracing:
    def __init__(
        self,
        *,
        node_id: str,
        host: str,
        store: SpanStore,
        zipkin_url: str | None = None,
        level: str = "application",
    ) -> None:
        try:
            self.level = parse_level(level)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        resource = Resource.create({"service.name": SERVICE_NAME, "carml.node.id": node_id, "host.name": host})
        self.store = store
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        # the store: synchronous and cheap (a dict insert on the event loop), so a trace is queryable at once
        self.provider.add_span_processor(SimpleSpanProcessor(StoreExporter(store)))
        self.zipkin_url = zipkin_url
        if zipkin_url:
            from opentelemetry.exporter.zipkin.json import Protocol, ZipkinExporter

            exporter = ZipkinExporter(version=Protocol.V2, endpoint=zipkin_url, timeout=EXPORT_TIMEOUT_S)
            self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self.tracer = self.provider.get_tracer("carml_mesh")
        self._closed = False

    def request_level(self, headers: Mapping[str, str]) -> int:
        """The level a request asks for in ``X-Carml-Trace-Level``, else the node's default."""
        raw = headers.get(LEVEL_HEADER)
        if raw is None:
            return self.level
        try:
            return parse_level(raw, LEVEL_HEADER)
        except ValueError as exc:
            from ..errors import BadRequest

            raise BadRequest(str(exc)) from None

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        *,
        level: int = APPLICATION,
        kind: SpanKind = SpanKind.INTERNAL,
        context: Context | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Span | None]:
        """A current span when the request's level reaches ``level``; else nothing at all (yields None)."""
        if current_level() < level or self._closed:
            yield None
            return
        with self.tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=dict(attributes or {})
        ) as span:
            yield span

    def child(
        self, parent: Span, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None
    ) -> None:
        """A finished span under ``parent`` with given times (stages another process measured)."""
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(parent),
            start_time=start_ns,
            attributes=dict(attributes or {}),
        )
        span.end(end_time=max(start_ns, end_ns))

    def _shutdown(self, timeout_s: float) -> None:
        self.provider.force_flush(timeout_millis=int(timeout_s * 1000))
        self.provider.shutdown()

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Flush what is batched for Zipkin (bounded) and stop; spans ended later are dropped."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown, timeout_s)
