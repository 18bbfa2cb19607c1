"""Lean spans: OpenTelemetry's span API (``opentelemetry.trace.Span``) without the SDK's per-span machinery.

The SDK's spans cost about 20 µs each on the node's request path (a sampler, locks, bounded attribute maps, span
processors, context objects), which alone is several times the 3 % budget of tracing at level ``application``
on a 0.5 ms request. These spans hold plain fields: two random ids, a name, a kind, a dict of attributes, times
in ns. They are what ``Tracing.span`` yields, so callers use the OTel API as usual (``set_attribute``,
``get_span_context``, ``trace.set_span_in_context`` for propagation). On ``end()`` a span goes to its sink,
which batches it into the node's span store (:func:`to_store_span`) and, with ``--zipkin``, hands it to the
SDK's ``BatchSpanProcessor`` + ``ZipkinExporter`` as an SDK ``ReadableSpan`` (:func:`to_readable`).

The current span of a task lives in a context variable of this module (not in OTel's context), set by
``Tracing.span`` for its block. A remote parent that is not sampled yields non-recording spans, as the SDK's
default ``ParentBased(ALWAYS_ON)`` sampler does.
"""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .. import __version__
from .zipkin_store import MAX_ANNOTATIONS_PER_SPAN, MAX_LABEL_BYTES, MAX_TAG_VALUE_BYTES, MAX_TAGS_PER_SPAN

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_SCOPE = InstrumentationScope("carml_mesh", __version__)  # the Zipkin exporter sends both as tags
_KINDS = {SpanKind.SERVER: "SERVER", SpanKind.CLIENT: "CLIENT", SpanKind.PRODUCER: "PRODUCER"}
_KINDS[SpanKind.CONSUMER] = "CONSUMER"

current: contextvars.ContextVar[trace.Span | None] = contextvars.ContextVar("carml_current_span", default=None)
_bits = random.getrandbits


def _span_id() -> int:
    while not (n := _bits(64)):
        pass
    return n


def _trace_id() -> int:
    while not (n := _bits(128)):
        pass
    return n


class LeanSpan(trace.Span):
    """A recording span; ``end()`` hands it to its sink once."""

    def __init__(
        self,
        sink: Callable[[LeanSpan], None],
        name: str,
        trace_id: int,
        span_id: int,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        start_ns: int | None,
    ) -> None:
        self._sink = sink
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent = parent
        self.kind = kind
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.events: list[tuple[int, str, Mapping[str, Any]]] = []
        self.error: str | None = None  # set: the span's status is ERROR, with this description
        self.start_ns = start_ns if start_ns is not None else time.time_ns()
        self.end_ns: int | None = None
        self._context: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        if self._context is None:
            self._context = SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=_SAMPLED)
        return self._context

    def set_attribute(self, key: str, value: Any) -> None:
        if self.end_ns is None:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        if self.end_ns is None:
            self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        if self.end_ns is None:
            self.events.append((timestamp if timestamp is not None else time.time_ns(), name, attributes or {}))

    def update_name(self, name: str) -> None:
        self.name = name

    def is_recording(self) -> bool:
        return self.end_ns is None

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        code = status.status_code if isinstance(status, Status) else status
        if isinstance(status, Status):
            description = status.description
        if code is StatusCode.ERROR:
            self.error = description or ""
        elif code is StatusCode.OK:
            self.error = None

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        about = {"exception.type": type(exception).__name__, "exception.message": str(exception)}
        self.add_event("exception", {**about, **(attributes or {})}, timestamp)

    def discard(self) -> None:
        """Ending this span records nothing."""
        self._sink = _drop

    def end(self, end_time: int | None = None) -> None:
        if self.end_ns is None:
            self.end_ns = end_time if end_time is not None else time.time_ns()
            self._sink(self)


def _drop(span: LeanSpan) -> None:
    pass


def start_span(
    sink: Callable[[LeanSpan], None],
    name: str,
    *,
    parent: trace.Span | None = None,
    context: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    start_ns: int | None = None,
) -> trace.Span:
    """A started span under ``parent``, else under the span of ``context`` (a root when it holds none), else
    under the task's current span."""
    if parent is None:
        parent = trace.get_current_span(context) if context is not None else current.get()
    parent_ctx = parent.get_span_context() if parent is not None else None
    if parent_ctx is not None and parent_ctx.is_valid:
        if not parent_ctx.trace_flags.sampled:  # the caller does not record this trace: neither do we
            return NonRecordingSpan(SpanContext(parent_ctx.trace_id, _span_id(), False, trace_flags=_UNSAMPLED))
        return LeanSpan(sink, name, parent_ctx.trace_id, _span_id(), parent_ctx, kind, attributes, start_ns)
    return LeanSpan(sink, name, _trace_id(), _span_id(), None, kind, attributes, start_ns)


# ------------------------------------------------------------------------------------------------ conversions


def _tag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ",".join(_tag(v) for v in value)
    return str(value)


def to_store_span(span: LeanSpan, service: str, resource_tags: Mapping[str, str]) -> dict[str, Any]:
    """A finished span straight in the span store's canonical form (what ``validate_spans`` returns).

    Our spans need no validation: ids are non-zero and formatted to length, times are integers; names are
    lower-cased and tags sorted and bounded as the validator would. ``resource_tags`` (the node id, the host)
    are added to every span's tags.
    """
    start = span.start_ns
    end = span.end_ns if span.end_ns is not None else start
    doc: dict[str, Any] = {"traceId": format(span.trace_id, "032x")}
    if span.parent is not None and span.parent.span_id != span.span_id:
        doc["parentId"] = format(span.parent.span_id, "016x")
    doc["id"] = format(span.span_id, "016x")
    kind = _KINDS.get(span.kind)
    if kind is not None:
        doc["kind"] = kind
    name = span.name.lower()[:MAX_LABEL_BYTES]
    if name:
        doc["name"] = name
    if start > 0:
        doc["timestamp"] = start // 1000
    doc["duration"] = max(1, (end - start) // 1000)
    doc["localEndpoint"] = {"serviceName": service}
    if span.events:
        marks = {(t // 1000, n[:MAX_TAG_VALUE_BYTES]) for t, n, _ in span.events if t > 0}
        doc["annotations"] = [{"timestamp": t, "value": v} for t, v in sorted(marks)[:MAX_ANNOTATIONS_PER_SPAN]]
    tags = {k[:MAX_LABEL_BYTES]: _tag(v)[:MAX_TAG_VALUE_BYTES] for k, v in span.attributes.items()}
    for key, value in resource_tags.items():
        tags.setdefault(key, value)
    if span.error is not None:
        tags["otel.status_code"] = "ERROR"
        if span.error:
            tags["error"] = span.error[:MAX_TAG_VALUE_BYTES]
    doc["tags"] = dict(sorted(tags.items())[:MAX_TAGS_PER_SPAN])
    return doc


def to_readable(span: LeanSpan, resource: Resource) -> ReadableSpan:
    """A finished span as the SDK's ``ReadableSpan``, for the SDK's exporters."""
    status = Status(StatusCode.ERROR, span.error) if span.error is not None else Status(StatusCode.UNSET)
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=resource,
        attributes={k: _otel_value(v) for k, v in span.attributes.items()},
        events=[Event(n, {k: _otel_value(v) for k, v in a.items()}, t) for t, n, a in span.events],
        kind=span.kind,
        status=status,
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=_SCOPE,
    )


def _otel_value(value: Any) -> Any:
    """An attribute value the SDK's exporters take: str, bool, int, float or a list of one of them."""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    return _tag(value)
