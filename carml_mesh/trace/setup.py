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
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..errors import ConfigError
from .zipkin_store import (
    MAX_ANNOTATIONS_PER_SPAN,
    MAX_LABEL_BYTES,
    MAX_TAG_VALUE_BYTES,
    MAX_TAGS_PER_SPAN,
    SpanStore,
)

log = logging.getLogger("carml.trace")

SERVICE_NAME = "carml-node"
LEVEL_HEADER = "X-Carml-Trace-Level"
LEVELS = ("none", "application", "model", "framework")
NONE, APPLICATION, MODEL, FRAMEWORK = range(4)
EXPORT_TIMEOUT_S = 2  # one POST to the Zipkin server
FLUSH_DELAY_S = 0.25  # ended spans wait at most this long before they are stored (a query drains them anyway)
MAX_PENDING = 256  # ...or until this many have ended

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


def to_store_span(span: ReadableSpan) -> dict[str, Any]:
    """One finished span of ours straight in the store's canonical form (what :func:`validate_spans` returns).

    Our own spans need no validation: ids are lower-case hex of the right length and never zero, times are
    integers; only names are lower-cased, tags sorted and bounded, as the validator would.
    """
    ctx = span.context
    start = span.start_time or 0
    end = span.end_time or start
    doc: dict[str, Any] = {"traceId": format(ctx.trace_id, "032x")}  # type: ignore[union-attr]
    parent = span.parent
    if parent is not None and parent.span_id != ctx.span_id:  # type: ignore[union-attr]
        doc["parentId"] = format(parent.span_id, "016x")
    doc["id"] = format(ctx.span_id, "016x")  # type: ignore[union-attr]
    kind = _KINDS.get(span.kind)
    if kind is not None:
        doc["kind"] = kind
    name = span.name.lower()[:MAX_LABEL_BYTES]
    if name:
        doc["name"] = name
    if start > 0:
        doc["timestamp"] = start // 1000
    doc["duration"] = max(1, (end - start) // 1000)
    resource = span.resource.attributes
    doc["localEndpoint"] = {"serviceName": str(resource.get("service.name", SERVICE_NAME)).lower()}
    if span.events:
        marks = {(e.timestamp // 1000, e.name[:MAX_TAG_VALUE_BYTES]) for e in span.events if e.timestamp}
        doc["annotations"] = [{"timestamp": t, "value": v} for t, v in sorted(marks)[:MAX_ANNOTATIONS_PER_SPAN]]
    tags = {k[:MAX_LABEL_BYTES]: _tag(v)[:MAX_TAG_VALUE_BYTES] for k, v in (span.attributes or {}).items()}
    for key in ("carml.node.id", "host.name"):
        if key in resource and key not in tags:
            tags[key] = _tag(resource[key])
    status = span.status
    if status.status_code is StatusCode.ERROR:
        tags.setdefault("otel.status_code", "ERROR")
        if status.description:
            tags["error"] = status.description[:MAX_TAG_VALUE_BYTES]
    if tags:
        doc["tags"] = dict(sorted(tags.items())[:MAX_TAGS_PER_SPAN])
    return doc


class StoreProcessor(SpanProcessor):
    """Finished spans into the node's own span store, converted and stored in batches off the request's path.

    Ending a span only appends it to a list. The list is converted (:func:`to_store_span`) and stored a moment
    later on the event loop, or at once when it grows long, or whenever the store is read: the store drains this
    processor before it answers (:meth:`SpanStore.add_source`), so a trace is queryable as soon as its spans end.
    Spans end on the event loop only; outside a running loop (a script, a test) they are stored at once.
    """

    def __init__(self, store: SpanStore, *, delay_s: float = FLUSH_DELAY_S, max_pending: int = MAX_PENDING) -> None:
        self.store = store
        self.delay_s = delay_s
        self.max_pending = max_pending
        self._pending: list[ReadableSpan] = []
        self._timer: asyncio.TimerHandle | None = None
        store.add_source(self.flush)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        pending = self._pending
        pending.append(span)
        if len(pending) >= self.max_pending:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.delay_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            self.store.add([to_store_span(s) for s in pending])
        except Exception:
            log.exception("could not store %d span(s)", len(pending))

    def shutdown(self) -> None:
        self.flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush()
        return True


# ------------------------------------------------------------------------------------------------ the node's tracer


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext(None)


class _Scope:
    """``start_as_current_span`` without its generator layers: this is on every traced request's path."""

    __slots__ = ("attributes", "context", "kind", "name", "span", "start_time", "token", "tracer")

    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        kind: SpanKind,
        context: Context | None,
        attributes: Any,
        start_time: int | None,
    ) -> None:
        self.tracer, self.name, self.kind, self.context, self.attributes = tracer, name, kind, context, attributes
        self.start_time = start_time

    def __enter__(self) -> Span:
        span = self.span = self.tracer.start_span(
            self.name, context=self.context, kind=self.kind, attributes=self.attributes, start_time=self.start_time
        )
        self.token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        otel_context.detach(self.token)
        span = self.span
        if exc is not None:
            if isinstance(exc, Exception):
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


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
        # the store: batched on the event loop; a query drains the batch first, so a trace is queryable at once
        self.store_processor = StoreProcessor(store)
        self.provider.add_span_processor(self.store_processor)
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

    def span(
        self,
        name: str,
        *,
        level: int = APPLICATION,
        kind: SpanKind = SpanKind.INTERNAL,
        context: Context | None = None,
        attributes: Mapping[str, Any] | None = None,
        start_time: int | None = None,
    ) -> contextlib.AbstractContextManager[Span | None]:
        """A current span when the request's level reaches ``level``; else nothing at all (yields None).

        ``start_time`` (ns since the epoch) backdates the span: to when the request arrived, say.
        """
        if _level.get() < level or self._closed:
            return _NO_SPAN
        return _Scope(self.tracer, name, kind, context, attributes, start_time)

    def child(
        self, parent: Span, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None
    ) -> Span:
        """A finished span under ``parent`` with given times (stages another process measured); it may parent more."""
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(parent),
            start_time=start_ns,
            attributes=dict(attributes or {}),
        )
        span.end(end_time=max(start_ns, end_ns))
        return span

    def _shutdown(self, timeout_s: float) -> None:
        self.provider.force_flush(timeout_millis=int(timeout_s * 1000))
        self.provider.shutdown()

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Flush what is batched for Zipkin (bounded) and stop; spans ended later are dropped."""
        if self._closed:
            return
        self._closed = True
        self.store_processor.flush()  # on the loop, where the store lives
        await asyncio.to_thread(self._shutdown, timeout_s)
