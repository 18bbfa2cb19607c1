"""Tracing of /api/predict and the KServe API with OpenTelemetry, exported in Zipkin v2 form.

Each :class:`~carml_mesh.node.node.Node` makes one :class:`Tracing` (never a global tracer, so several nodes in one
process do not mix), with service name ``carml-node`` and the node's id and host as resource attributes. Its spans
follow OpenTelemetry's span API but are lean (:mod:`carml_mesh.trace.spans`): the SDK's own spans cost several
times the 3 % budget of level ``application``. Finished spans always go to the node's own
:class:`~carml_mesh.trace.zipkin_store.SpanStore` (so ``GET /api/v2/trace/{id}`` on any node shows a whole trace
with no external collector), batched off the request's path; with ``--zipkin URL`` also to a Zipkin server
through the SDK's ``BatchSpanProcessor`` and ``ZipkinExporter`` (JSON v2).

Trace levels, as in MLModelScope, from the least to the most detail:

- ``none``: no spans at all;
- ``application``: the HTTP server span of /api/predict (and /v2/models/.../infer), the routing decision, a CLIENT
  span per forwarded hop and the SERVER span on the peer, joined by W3C ``traceparent`` (and B3) headers;
- ``model``: also the executor call and what happened under it, rebuilt from the worker's reply: ``container.start``
  and ``model.load`` on a cold start, ``batch.wait`` when a batcher formed a batch, and the worker's stages
  (queue, decode, preprocess, compute, postprocess);
- ``framework``: also the framework's operators under ``worker.compute``: the worker profiles that one run with
  onnxruntime's profiler or torch.profiler (``"profile": true`` in its request) and returns the longest ops.

The level of a request is the one its body names (``"trace"`` in /api/predict, ``parameters.trace_level`` in
KServe), else the ``X-Carml-Trace-Level`` header, else the node's default (``--trace-level``); it travels to peers in
the header. It lives in a context variable for the request's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..errors import ConfigError
from . import spans
from .zipkin_store import SpanStore

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
_TRACE_KEYS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled")
_EMPTY = Context()


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
    if isinstance(span, spans.LeanSpan):
        return format(span.trace_id, "032x")
    return format(span.get_span_context().trace_id, "032x")


# ------------------------------------------------------------------------------------------------ propagation


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's span context from W3C ``traceparent``, else from B3 (single ``b3`` or multi ``X-B3-*``)."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):  # an aiohttp request's: look the few names up
        carrier = {k: headers[k] for k in _TRACE_KEYS if k in headers}
        if not carrier:
            return _EMPTY
    else:
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


# ------------------------------------------------------------------------------------------------ the node's tracer


_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext(None)


class _Scope:
    """A span made current for a block, ended at its end (with the error, if one escapes): a few attribute
    stores, no generator, as this is on every traced request's path."""

    __slots__ = ("attributes", "context", "kind", "name", "sink", "span", "start_ns", "token")

    def __init__(
        self,
        sink: Callable[[spans.LeanSpan], None],
        name: str,
        kind: SpanKind,
        context: Context | None,
        attributes: Mapping[str, Any] | None,
        start_ns: int | None,
    ) -> None:
        self.sink, self.name, self.kind, self.context, self.attributes = sink, name, kind, context, attributes
        self.start_ns = start_ns

    def __enter__(self) -> Span:
        span = self.span = spans.start_span(
            self.sink,
            self.name,
            context=self.context,
            kind=self.kind,
            attributes=self.attributes,
            start_ns=self.start_ns,
        )
        self.token = spans.current.set(span)
        return span

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        spans.current.reset(self.token)
        span = self.span
        if exc is not None:
            if isinstance(exc, Exception):
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


class Tracing:
    """The node's tracer: spans at the request's level, batched into the node's store and, optionally, to Zipkin.

    Ending a span only appends it to a list. The list is converted (:func:`~carml_mesh.trace.spans.to_store_span`)
    and stored a moment later on the event loop (at most ``flush_delay_s``, sooner once ``max_pending`` spans
    wait), or whenever the store is read: the store drains the list before it answers
    (:meth:`SpanStore.add_source`), so a trace is queryable as soon as its spans have ended. Spans end on the
    event loop only; outside a running loop (a script, a test) they are stored at once.
    """

    def __init__(
        self,
        *,
        node_id: str,
        host: str,
        store: SpanStore,
        zipkin_url: str | None = None,
        level: str = "application",
        flush_delay_s: float = FLUSH_DELAY_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        try:
            self.level = parse_level(level)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.resource = Resource.create({"service.name": SERVICE_NAME, "carml.node.id": node_id, "host.name": host})
        self.service = SERVICE_NAME
        self.resource_tags = {"carml.node.id": node_id, "host.name": host}
        self.store = store
        self.flush_delay_s = flush_delay_s
        self.max_pending = max_pending
        self._pending: list[spans.LeanSpan] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        store.add_source(self.flush)
        self.zipkin_url = zipkin_url
        self._export: BatchSpanProcessor | None = None
        if zipkin_url:
            from opentelemetry.exporter.zipkin.encoder import Protocol
            from opentelemetry.exporter.zipkin.json import ZipkinExporter

            exporter = ZipkinExporter(version=Protocol.V2, endpoint=zipkin_url, timeout=EXPORT_TIMEOUT_S)
            self._export = BatchSpanProcessor(exporter, schedule_delay_millis=500)
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

        ``context`` (from :func:`extract`) gives the parent, or none; without it the task's current span is the
        parent. ``start_time`` (ns since the epoch) backdates the span: to when the request arrived, say.
        """
        if _level.get() < level or self._closed:
            return _NO_SPAN
        return _Scope(self._ended, name, kind, context, attributes, start_time)

    def child(
        self, parent: Span, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None
    ) -> Span:
        """A finished span under ``parent`` with given times (stages another process measured); it may parent more."""
        span = spans.start_span(self._ended, name, parent=parent, attributes=attributes, start_ns=start_ns)
        span.end(end_time=max(start_ns, end_ns))
        return span

    @staticmethod
    def discard(span: Span) -> None:
        """Record nothing of a started span after all (a request whose body asks for level none)."""
        if isinstance(span, spans.LeanSpan):
            span.discard()

    # -- finished spans

    def _ended(self, span: spans.LeanSpan) -> None:
        pending = self._pending
        pending.append(span)
        if self._export is not None:
            self._export.on_end(spans.to_readable(span, self.resource))
        if self._timer is not None and (len(pending) < self.max_pending or self._soon is not None):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer is None:
            self._timer = loop.call_later(self.flush_delay_s, self.flush)
        elif self._soon is None:  # many spans wait: store them once this request's step is done
            self._soon = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Store the spans that have ended (the store calls this before it answers)."""
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            self.store.add([spans.to_store_span(s, self.service, self.resource_tags) for s in pending])
        except Exception:
            log.exception("could not store %d span(s)", len(pending))

    def _shutdown(self, timeout_s: float) -> None:
        if self._export is not None:
            self._export.force_flush(timeout_millis=int(timeout_s * 1000))
            self._export.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Store what has ended, flush what is batched for Zipkin (bounded) and stop; later spans are dropped."""
        if self._closed:
            return
        self._closed = True
        self.flush()  # on the loop, where the store lives
        await asyncio.to_thread(self._shutdown, timeout_s)
