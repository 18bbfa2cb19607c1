"""Zipkin v2 spans in memory: validation of uploads, a bounded store with retention, and Zipkin's query semantics.

Everything here is pure and thread-free: no I/O, no tasks, no locks. The one source of time is the ``clock``
given to :class:`SpanStore` (seconds since the epoch, like ``time.time``), so tests can move it.

Validation (:func:`validate_spans`) follows Zipkin's own JSON decoder where the spec leaves room:

- ``traceId``: 1 to 32 hex digits, any case, lower-cased. As Zipkin's ``Span.normalizeTraceId``: shorter than 16
  is left-padded with zeros to 16, 17 to 31 to 32, and a 32-digit id whose high 64 bits are zero becomes its low
  16 digits, so one trace always has one spelling. All zeros is rejected.
- ``id`` and ``parentId``: 1 to 16 hex digits, lower-cased and left-padded to 16. An all-zero ``id`` is rejected;
  an all-zero ``parentId``, or one equal to ``id``, means "no parent" (Zipkin undoes such circular links).
- ``name`` and ``serviceName`` are lower-cased (Zipkin's lookup labels are lower case); empty strings are absent.
- ``timestamp``, ``duration`` and annotation timestamps are JSON integers, 0 to 2**63-1 (µs). A 0 ``timestamp``
  or ``duration`` means absent, as in Zipkin (so answers keep the spec's ``duration >= 1``). Floats are rejected.
- ``debug`` and ``shared`` are booleans; only ``true`` is kept.
- Endpoints: ``ipv4`` and ``ipv6`` must parse as addresses (an IPv4-mapped ``ipv6`` moves to ``ipv4``, as
  Zipkin does; zone ids are rejected); ``port`` is 0 to 65535, 0 meaning absent. An empty endpoint is absent.
- ``annotations``: objects with an integer ``timestamp`` and a string ``value``; duplicates are dropped (the spec
  says ``uniqueItems``) and they are sorted by time. ``tags``: an object of string values, kept sorted by key.
- JSON ``null`` for an optional field means absent.
- Unknown fields are accepted and dropped: the spec's ``Span`` and ``Endpoint`` do not set
  ``additionalProperties: false``, and Zipkin's decoder skips unknown fields, so newer tracers keep working.
- Limits, each answered with a :class:`~carml_mesh.errors.BadRequest` that names the limit: spans per request,
  bytes of a tag or annotation value, bytes of a name, service name or tag key, tags and annotations per span.

Every error is a ``BadRequest`` whose message names the span's index and the field, e.g.
``spans[3].localEndpoint.port: must be 0 to 65535, got 70000``.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..errors import BadRequest

Span = dict[str, Any]
SpanKey = tuple[str, bool, str | None]  # (id, shared, local service name): one span within a trace

MAX_SPANS_PER_REQUEST = 10_000
MAX_TAG_VALUE_BYTES = 65_536  # a tag's value or an annotation's value, UTF-8
MAX_LABEL_BYTES = 1_024  # a span name, a service name or a tag key, UTF-8
MAX_TAGS_PER_SPAN = 256
MAX_ANNOTATIONS_PER_SPAN = 256
KINDS = ("CLIENT", "SERVER", "PRODUCER", "CONSUMER")
INT64_MAX = 2**63 - 1
DEFAULT_LIMIT = 10  # traces per query, as the spec's default

_HEX = frozenset("0123456789abcdef")
_FIELD_ORDER = (  # the order Zipkin's own JSON writer uses
    "traceId",
    "parentId",
    "id",
    "kind",
    "name",
    "timestamp",
    "duration",
    "localEndpoint",
    "remoteEndpoint",
    "annotations",
    "tags",
    "debug",
    "shared",
)


# ---------------------------------------------------------------------------------------------------- validation


def _fail(where: str, reason: str) -> NoReturn:
    raise BadRequest(f"{where}: {reason}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: object, where: str, max_bytes: int) -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string, got {_json_type(value)}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        _fail(where, "is not valid Unicode (a lone surrogate)")
    if size > max_bytes:
        _fail(where, f"is {size} bytes, over the limit of {max_bytes} bytes")
    return value


def _hex(value: object, where: str, max_digits: int) -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string of hex digits, got {_json_type(value)}")
    digits = value.lower()
    if not 1 <= len(digits) <= max_digits or not _HEX.issuperset(digits):
        expected = "16 or 32 hex digits" if max_digits == 32 else "16 hex digits"
        _fail(where, f"must be {expected}, got {_short(value)}")
    return digits


def normalize_trace_id(value: object, where: str = "traceId") -> str:
    """A trace id as Zipkin spells it: lower-hex, 16 or 32 digits (see the module's docstring); else BadRequest."""
    digits = _hex(value, where, 32)
    if digits.count("0") == len(digits):
        _fail(where, "must not be all zeros")
    if len(digits) not in (16, 32):
        digits = digits.rjust(16 if len(digits) < 16 else 32, "0")
    if len(digits) == 32 and digits.startswith("0" * 16):
        digits = digits[16:]
    return digits


def _span_id(value: object, where: str) -> str | None:
    """16 lower-hex digits, or None for all zeros."""
    digits = _hex(value, where, 16)
    if digits.count("0") == len(digits):
        return None
    return digits.rjust(16, "0")


def _uint(value: object, where: str, maximum: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"must be an integer, got {_json_type(value)}")
    if not 0 <= value <= maximum:
        _fail(where, f"must be 0 to {maximum}, got {_short(value)}")
    return value


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, f"must be true or false, got {_json_type(value)}")
    return value


def _endpoint(value: object, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        _fail(where, f"must be an object, got {_json_type(value)}")
    out: dict[str, Any] = {}
    service = value.get("serviceName")
    if service is not None:
        service = _text(service, f"{where}.serviceName", MAX_LABEL_BYTES).lower()
        if service:
            out["serviceName"] = service
    ipv4 = value.get("ipv4")
    if ipv4 is not None and _text(ipv4, f"{where}.ipv4", 64):
        try:
            out["ipv4"] = str(ipaddress.IPv4Address(ipv4))
        except ValueError:
            _fail(f"{where}.ipv4", f"is not an IPv4 address: {_short(ipv4)}")
    ipv6 = value.get("ipv6")
    if ipv6 is not None and _text(ipv6, f"{where}.ipv6", 64):
        try:
            address = ipaddress.IPv6Address(ipv6)
        except ValueError:
            _fail(f"{where}.ipv6", f"is not an IPv6 address: {_short(ipv6)}")
        if address.scope_id:
            _fail(f"{where}.ipv6", f"must not carry a zone id: {_short(ipv6)}")
        if address.ipv4_mapped is not None:
            out.setdefault("ipv4", str(address.ipv4_mapped))
        else:
            out["ipv6"] = str(address)
    port = value.get("port")
    if port is not None and _uint(port, f"{where}.port", 65_535):
        out["port"] = port
    return out or None


def _annotations(value: object, where: str, max_value_bytes: int) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        _fail(where, f"must be a list, got {_json_type(value)}")
    if len(value) > MAX_ANNOTATIONS_PER_SPAN:
        _fail(where, f"has {len(value)} annotations, over the limit of {MAX_ANNOTATIONS_PER_SPAN}")
    seen: set[tuple[int, str]] = set()
    for j, item in enumerate(value):
        at = f"{where}[{j}]"
        if not isinstance(item, Mapping):
            _fail(at, f"must be an object, got {_json_type(item)}")
        if item.get("timestamp") is None:
            _fail(f"{at}.timestamp", "is required")
        if item.get("value") is None:
            _fail(f"{at}.value", "is required")
        seen.add((_uint(item["timestamp"], f"{at}.timestamp"), _text(item["value"], f"{at}.value", max_value_bytes)))
    return [{"timestamp": ts, "value": v} for ts, v in sorted(seen)]


def _tags(value: object, where: str, max_value_bytes: int) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(where, f"must be an object of string values, got {_json_type(value)}")
    if len(value) > MAX_TAGS_PER_SPAN:
        _fail(where, f"has {len(value)} tags, over the limit of {MAX_TAGS_PER_SPAN}")
    out: dict[str, str] = {}
    for key, tag in value.items():
        key = _text(key, f"{where} key {_short(key)}", MAX_LABEL_BYTES)
        out[key] = _text(tag, f"{where}[{key[:40]!r}]", max_value_bytes)
    return dict(sorted(out.items()))


def _span(raw: object, where: str, max_value_bytes: int) -> Span:
    if not isinstance(raw, Mapping):
        _fail(where, f"must be an object, got {_json_type(raw)}")
    if raw.get("traceId") is None:
        _fail(f"{where}.traceId", "is required")
    if raw.get("id") is None:
        _fail(f"{where}.id", "is required")
    span: Span = {"traceId": normalize_trace_id(raw["traceId"], f"{where}.traceId")}
    span_id = _span_id(raw["id"], f"{where}.id")
    if span_id is None:
        _fail(f"{where}.id", "must not be all zeros")
    if raw.get("parentId") is not None:
        parent = _span_id(raw["parentId"], f"{where}.parentId")
        if parent is not None and parent != span_id:
            span["parentId"] = parent
    span["id"] = span_id
    kind = raw.get("kind")
    if kind is not None:
        if kind not in KINDS:  # an unhashable kind compares unequal to each: no TypeError
            _fail(f"{where}.kind", f"must be one of {', '.join(KINDS)}, got {_short(kind)}")
        span["kind"] = kind
    if raw.get("name") is not None:
        name = _text(raw["name"], f"{where}.name", MAX_LABEL_BYTES).lower()
        if name:
            span["name"] = name
    for key in ("timestamp", "duration"):
        if raw.get(key) is not None and _uint(raw[key], f"{where}.{key}"):
            span[key] = raw[key]
    for key in ("localEndpoint", "remoteEndpoint"):
        endpoint = _endpoint(raw.get(key), f"{where}.{key}")
        if endpoint is not None:
            span[key] = endpoint
    annotations = _annotations(raw.get("annotations"), f"{where}.annotations", max_value_bytes)
    if annotations:
        span["annotations"] = annotations
    tags = _tags(raw.get("tags"), f"{where}.tags", max_value_bytes)
    if tags:
        span["tags"] = tags
    for key in ("debug", "shared"):
        if raw.get(key) is not None and _bool(raw[key], f"{where}.{key}"):
            span[key] = True
    return span


def validate_spans(
    body: object,
    *,
    max_spans: int = MAX_SPANS_PER_REQUEST,
    max_tag_value_bytes: int = MAX_TAG_VALUE_BYTES,
) -> list[Span]:
    """The spans of a Zipkin v2 JSON upload (the parsed document), normalised; BadRequest naming index and field.

    The result holds fresh dicts in Zipkin's canonical form (see the module's docstring), ready for
    :meth:`SpanStore.add`.
    """
    if not isinstance(body, list | tuple):
        raise BadRequest(f"the body must be a JSON list of spans (Zipkin v2 JSON), got {_json_type(body)}")
    if len(body) > max_spans:
        raise BadRequest(f"{len(body)} spans in one request, over the limit of {max_spans}; send smaller batches")
    return [_span(raw, f"spans[{i}]", max_tag_value_bytes) for i, raw in enumerate(body)]


# ------------------------------------------------------------------------------------------------ spans and traces


def local_service(span: Span) -> str | None:
    endpoint = span.get("localEndpoint")
    return endpoint.get("serviceName") if endpoint else None


def remote_service(span: Span) -> str | None:
    endpoint = span.get("remoteEndpoint")
    return endpoint.get("serviceName") if endpoint else None


def span_key(span: Span) -> SpanKey:
    """What makes a span one span within its trace: its id, its shared flag and the service that recorded it."""
    return (span["id"], bool(span.get("shared")), local_service(span))


def _sort_key(span: Span) -> tuple[int, int, str, bool, str]:
    ts = span.get("timestamp")
    return (ts is None, ts or 0, span["id"], bool(span.get("shared")), local_service(span) or "")


def merge_span(first: Span, later: Span) -> Span:
    """Two reports of one span (same :func:`span_key`), as one: what ``first`` lacks comes from ``later``.

    Annotations are united (at most MAX_ANNOTATIONS_PER_SPAN, the earliest kept); tags are united with the later
    value winning (at most MAX_TAGS_PER_SPAN, the first report's keys kept first); endpoints merge field by field.
    """
    out = dict(first)
    for key in ("parentId", "kind", "name", "timestamp", "duration"):
        if key not in out and key in later:
            out[key] = later[key]
    for key in ("localEndpoint", "remoteEndpoint"):
        if key in later:
            out[key] = {**later[key], **out[key]} if key in out else later[key]
    if "annotations" in later:
        united = {(a["timestamp"], a["value"]) for a in (*first.get("annotations", ()), *later["annotations"])}
        out["annotations"] = [{"timestamp": t, "value": v} for t, v in sorted(united)[:MAX_ANNOTATIONS_PER_SPAN]]
    if "tags" in later:
        tags = dict(first.get("tags", {}))
        for key, value in later["tags"].items():
            if key in tags or len(tags) < MAX_TAGS_PER_SPAN:
                tags[key] = value
        out["tags"] = dict(sorted(tags.items()))
    for key in ("debug", "shared"):
        if later.get(key):
            out[key] = True
    return {key: out[key] for key in _FIELD_ORDER if key in out}


def merge(traces: Iterable[Iterable[Span]]) -> list[Span]:
    """Spans from several sources (this node's store, each peer's answer) as one list without duplicates.

    Spans are one span when they share (traceId, id, shared, localEndpoint.serviceName); their reports are
    merged with :func:`merge_span`, the earlier source first. The result is sorted by timestamp (spans without
    one last), then id; several trace ids may be mixed (see :func:`group_by_trace`).
    """
    merged: dict[tuple[str, SpanKey], Span] = {}
    for trace in traces:
        for span in trace:
            key = (span["traceId"], span_key(span))
            merged[key] = merge_span(merged[key], span) if key in merged else span
    return sorted(merged.values(), key=_sort_key)


def group_by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """Spans by trace id, each trace's spans in the order given."""
    groups: dict[str, list[Span]] = {}
    for span in spans:
        groups.setdefault(span["traceId"], []).append(span)
    return groups


def trace_timestamp(spans: Iterable[Span]) -> int | None:
    """A trace's time as Zipkin's queries see it: its root's timestamp, else its earliest one (µs)."""
    earliest: int | None = None
    for span in spans:
        ts = span.get("timestamp")
        if ts is None:
            continue
        if "parentId" not in span:
            return int(ts)
        if earliest is None or ts < earliest:
            earliest = ts
    return earliest


def parse_annotation_query(query: str | None) -> dict[str, str]:
    """``"http.path=/api and error"`` as ``{"http.path": "/api", "error": ""}``, as Zipkin parses it."""
    terms: dict[str, str] = {}
    for term in (query or "").split(" and "):
        key, eq, value = term.partition("=")
        key = key.strip()
        if not key:
            continue
        if eq:
            terms[key] = value.strip()  # a tag: the last one wins
        else:
            terms.setdefault(key, "")  # a bare word never overrides a more specific key=value
    return terms


@dataclass(frozen=True)
class TraceQuery:
    """The filters of GET /api/v2/traces, checked as Zipkin's QueryRequest does: endTs and lookback in ms,
    durations in µs. Build with :meth:`make`; :meth:`test` is Zipkin's ``QueryRequest.test``."""

    end_ts: int
    lookback: int
    service_name: str | None = None
    span_name: str | None = None
    remote_service_name: str | None = None
    annotation_query: Mapping[str, str] = field(default_factory=dict)
    min_duration: int | None = None
    max_duration: int | None = None
    limit: int = DEFAULT_LIMIT

    @classmethod
    def make(
        cls,
        *,
        now_ms: int,
        service_name: str | None = None,
        span_name: str | None = None,
        remote_service_name: str | None = None,
        annotation_query: str | None = None,
        min_duration: int | None = None,
        max_duration: int | None = None,
        end_ts: int | None = None,
        lookback: int | None = None,
        limit: int | None = None,
    ) -> TraceQuery:
        end_ts = now_ms if end_ts is None else end_ts
        lookback = end_ts if lookback is None else lookback
        limit = DEFAULT_LIMIT if limit is None else limit
        if end_ts <= 0:
            raise BadRequest("endTs must be positive (epoch milliseconds)")
        if lookback <= 0:
            raise BadRequest("lookback must be positive (milliseconds)")
        if limit <= 0:
            raise BadRequest("limit must be positive")
        if min_duration is not None:
            if min_duration <= 0:
                raise BadRequest("minDuration must be positive (microseconds)")
            if max_duration is not None and max_duration < min_duration:
                raise BadRequest("maxDuration must not be less than minDuration")
        elif max_duration is not None:
            raise BadRequest("maxDuration is only valid with minDuration")
        span_name = (span_name or "").lower()
        return cls(
            end_ts=end_ts,
            lookback=lookback,
            service_name=(service_name or "").lower() or None,
            span_name=None if span_name in ("", "all") else span_name,
            remote_service_name=(remote_service_name or "").lower() or None,
            annotation_query=parse_annotation_query(annotation_query),
            min_duration=min_duration,
            max_duration=max_duration,
            limit=limit,
        )

    def test(self, spans: list[Span]) -> bool:
        ts = trace_timestamp(spans)
        if ts is None or ts < (self.end_ts - self.lookback) * 1000 or ts > self.end_ts * 1000:
            return False
        service_found = self.service_name is None
        span_name = self.span_name
        remote = self.remote_service_name
        remaining = dict(self.annotation_query)
        duration_ok = self.min_duration is None
        for span in spans:
            if self.service_name is not None and self.service_name != local_service(span):
                continue  # the service name, when given, constrains every other filter
            service_found = True
            for annotation in span.get("annotations", ()):
                if remaining.get(annotation["value"]) == "":
                    del remaining[annotation["value"]]
            for key, value in span.get("tags", {}).items():
                wanted = remaining.get(key)
                if wanted is not None and (wanted == "" or wanted == value):
                    del remaining[key]
            if remote is not None and remote == remote_service(span):
                remote = None
            if span_name is not None and span_name == span.get("name"):
                span_name = None
            if not duration_ok and self.min_duration is not None:
                duration = span.get("duration", 0)
                duration_ok = duration >= self.min_duration and (
                    self.max_duration is None or duration <= self.max_duration
                )
        return service_found and span_name is None and remote is None and not remaining and duration_ok


# ------------------------------------------------------------------------------------------------ dependency links


def dependency_links(traces: Iterable[list[Span]]) -> list[dict[str, Any]]:
    """Service links of the spec's DependencyLink, derived as Zipkin's DependencyLinker does (one trace at a time).

    Links join server spans; a client span counts only at the bottom of the tree (an uninstrumented callee named by
    its remoteEndpoint); messaging spans link to and from their broker; a span with an ``error`` tag counts as an
    error. Sorted by (parent, child).
    """
    counts: dict[tuple[str, str], list[int]] = {}
    for spans in traces:
        for parent, child, error in _links(spans):
            count = counts.setdefault((parent, child), [0, 0])
            count[0] += 1
            count[1] += error
    return [
        {"parent": parent, "child": child, "callCount": calls, "errorCount": errors}
        for (parent, child), (calls, errors) in sorted(counts.items())
    ]


def _links(spans: list[Span]) -> Iterable[tuple[str, str, bool]]:
    by_id: dict[tuple[str, bool], Span] = {}
    for span in spans:
        by_id.setdefault((span["id"], bool(span.get("shared"))), span)

    def parent_of(span: Span) -> Span | None:
        if span.get("shared") and (span["id"], False) in by_id:
            return by_id[(span["id"], False)]  # the server half of an RPC hangs under its client half
        parent_id = span.get("parentId")
        if parent_id is None:
            return None
        return by_id.get((parent_id, True)) or by_id.get((parent_id, False))

    parents = {id(span): parent_of(span) for span in spans}
    has_children = {id(p) for p in parents.values() if p is not None}

    def remote_ancestor(span: Span) -> Span | None:
        seen = {id(span)}
        ancestor = parents.get(id(span))
        while ancestor is not None and id(ancestor) not in seen:  # cycles in bad data end the walk
            if ancestor.get("kind") is not None:
                return ancestor
            seen.add(id(ancestor))
            ancestor = parents.get(id(ancestor))
        return None

    for span in spans:
        kind = span.get("kind")
        if kind == "CLIENT" and id(span) in has_children:
            continue  # the server's own span names this link
        service, remote = local_service(span), remote_service(span)
        if kind is None:
            if service is None or remote is None:
                continue  # a local span
            kind = "CLIENT"
        if kind in ("SERVER", "CONSUMER"):
            child, parent = service, remote
            if parents[id(span)] is None and parent is None:
                continue  # the root's caller is unknown
        else:
            parent, child = service, remote
        error = "error" in span.get("tags", {})
        if kind in ("PRODUCER", "CONSUMER"):
            if parent is not None and child is not None:
                yield parent, child, error
            continue
        ancestor = remote_ancestor(span)
        ancestor_service = local_service(ancestor) if ancestor is not None else None
        if ancestor is not None and ancestor_service is not None:
            if kind == "CLIENT" and service is not None and ancestor_service != service:
                yield ancestor_service, service, False  # a missing link to this client
            if kind == "SERVER" or parent is None:
                parent = ancestor_service
            if not error and ancestor.get("kind") == "CLIENT" and span.get("parentId") == ancestor["id"]:
                error = "error" in ancestor.get("tags", {})
        if parent is not None and child is not None:
            yield parent, child, error


# ------------------------------------------------------------------------------------------------------ the store


def _approx_size(span: Span) -> int:
    """Bytes a span costs, roughly (its JSON size plus Python's overhead); what ``max_bytes`` bounds."""
    size = 400 + len(span.get("name", ""))
    for key in ("localEndpoint", "remoteEndpoint"):
        if key in span:
            size += 100 + sum(len(str(v)) for v in span[key].values())
    for annotation in span.get("annotations", ()):
        size += 80 + len(annotation["value"])
    for key, value in span.get("tags", {}).items():
        size += 80 + len(key) + len(value)
    return size


@dataclass(eq=False)
class _Trace:
    seq: int  # when the trace first arrived: breaks ties between equally old traces
    oldest: int  # µs: min(times.values()), the trace's place in the eviction and retention order
    spans: dict[SpanKey, Span] = field(default_factory=dict)
    times: dict[SpanKey, int] = field(default_factory=dict)  # µs: the span's timestamp (at most its arrival)
    sizes: dict[SpanKey, int] = field(default_factory=dict)


class SpanStore:
    """Zipkin v2 spans in memory, bounded by a span count and a byte estimate, and expired after a retention time.

    - A span's age is its ``timestamp`` (µs), or its arrival when it has none or one in the future. Spans older
      than ``retention_s`` are dropped when added and whenever the store is read.
    - Over ``max_spans`` spans (or ``max_bytes``), whole traces are evicted, the oldest first: a trace is as old
      as its oldest span.
    - Reports of one span (same traceId, id, shared flag and local service) are merged into one span
      (:func:`merge_span`), as Zipkin's UI does when it shows a trace.
    - Lookups by trace id are strict: a 16-digit id never matches a 32-digit one (Zipkin's ``STRICT_TRACE_ID``).

    The store keeps references to the spans it is given and returns them from queries: treat both as read-only.
    """

    def __init__(
        self,
        max_spans: int = 100_000,
        retention_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        *,
        max_bytes: int = 256 << 20,
    ) -> None:
        if max_spans <= 0 or max_bytes <= 0 or not retention_s > 0:
            raise ValueError("max_spans, max_bytes and retention_s must be positive")
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self._clock = clock
        self._traces: dict[str, _Trace] = {}
        self._heap: list[tuple[int, int, str]] = []  # (oldest, seq, traceId); stale entries skipped on pop
        self._seq = itertools.count()
        self._span_count = 0
        self._bytes = 0
        self._services: Counter[str] = Counter()  # local service -> spans
        self._names: dict[str, Counter[str]] = {}  # local service -> span name -> spans
        self._remotes: dict[str, Counter[str]] = {}  # local service -> remote service -> spans
        # counters, for a node's metrics
        self.accepted = 0
        self.expired = 0  # spans dropped for age, when added or later
        self.evicted = 0  # spans dropped to stay under max_spans / max_bytes
        self._sources: list[Callable[[], None]] = []

    def add_source(self, drain: Callable[[], None]) -> None:
        """Register a writer that holds spans back (to batch them): ``drain()`` must :meth:`add` what it holds.

        The store calls every source's ``drain`` before it answers anything, so a span that has ended is visible
        to the next query even when its writer has not flushed it yet.
        """
        self._sources.append(drain)

    def _drain(self) -> None:
        for drain in self._sources:
            drain()

    # -- sizes

    def __len__(self) -> int:
        self._drain()
        return self._span_count

    @property
    def trace_count(self) -> int:
        self._drain()
        return len(self._traces)

    @property
    def byte_estimate(self) -> int:
        self._drain()
        return self._bytes

    # -- writing

    def add(self, spans: Iterable[Span]) -> int:
        """Store spans as :func:`validate_spans` returns them; the number kept (those not already too old)."""
        now = self._now_us()
        self._expire(now)
        cutoff = now - self._retention_us
        kept = 0
        for span in spans:
            ts = span.get("timestamp")
            t = now if ts is None or ts > now else ts
            if t < cutoff:
                self.expired += 1
                continue
            self._put(span, t)
            kept += 1
        self.accepted += kept
        self._evict()
        return kept

    def _put(self, span: Span, t: int) -> None:
        trace_id = span["traceId"]
        key = span_key(span)
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = _Trace(seq=next(self._seq), oldest=t)
            heapq.heappush(self._heap, (t, trace.seq, trace_id))
        old = trace.spans.get(key)
        if old is not None:
            span = merge_span(old, span)
            self._index(old, -1)
            self._bytes -= trace.sizes[key]
            t = min(t, trace.times[key])
        else:
            self._span_count += 1
        size = _approx_size(span)
        trace.spans[key] = span
        trace.times[key] = t
        trace.sizes[key] = size
        self._bytes += size
        self._index(span, +1)
        if t < trace.oldest:
            trace.oldest = t
            heapq.heappush(self._heap, (t, trace.seq, trace_id))

    def _index(self, span: Span, delta: int) -> None:
        service = local_service(span)
        if service is None:
            return
        _count(self._services, service, delta)
        if "name" in span:
            _count(self._names.setdefault(service, Counter()), span["name"], delta)
            if not self._names[service]:
                del self._names[service]
        remote = remote_service(span)
        if remote is not None:
            _count(self._remotes.setdefault(service, Counter()), remote, delta)
            if not self._remotes[service]:
                del self._remotes[service]

    def _remove(self, trace: _Trace, key: SpanKey) -> None:
        self._index(trace.spans.pop(key), -1)
        del trace.times[key]
        self._bytes -= trace.sizes.pop(key)
        self._span_count -= 1

    def _pop_oldest(self) -> tuple[int, str] | None:
        while self._heap:
            t, seq, trace_id = heapq.heappop(self._heap)
            trace = self._traces.get(trace_id)
            if trace is not None and trace.seq == seq and trace.oldest == t:
                return t, trace_id
        return None

    def _evict(self) -> None:
        while self._span_count > self.max_spans or self._bytes > self.max_bytes:
            oldest = self._pop_oldest()
            if oldest is None:  # unreachable: every live trace has a heap entry
                break
            trace = self._traces.pop(oldest[1])
            self.evicted += len(trace.spans)
            for key in list(trace.spans):
                self._remove(trace, key)
        self._compact()

    def _expire(self, now: int) -> None:
        cutoff = now - self._retention_us
        while self._heap and self._heap[0][0] < cutoff:
            oldest = self._pop_oldest()
            if oldest is None:
                break
            if oldest[0] >= cutoff:  # a live entry that is young enough: put it back
                trace = self._traces[oldest[1]]
                heapq.heappush(self._heap, (trace.oldest, trace.seq, oldest[1]))
                break
            trace = self._traces[oldest[1]]
            for key in [k for k, t in trace.times.items() if t < cutoff]:
                self._remove(trace, key)
                self.expired += 1
            if trace.spans:
                trace.oldest = min(trace.times.values())
                heapq.heappush(self._heap, (trace.oldest, trace.seq, oldest[1]))
            else:
                del self._traces[oldest[1]]
        self._compact()

    def _compact(self) -> None:
        if len(self._heap) > 4 * len(self._traces) + 1024:  # stale entries from merges and partial expiry
            self._heap = [(tr.oldest, tr.seq, tid) for tid, tr in self._traces.items()]
            heapq.heapify(self._heap)

    # -- reading

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    @property
    def _retention_us(self) -> int:
        return int(self.retention_s * 1_000_000)

    def _fresh(self) -> None:
        self._drain()
        self._expire(self._now_us())

    def services(self) -> list[str]:
        """Local service names of the stored spans, sorted (GET /api/v2/services)."""
        self._fresh()
        return sorted(self._services)

    def span_names(self, service: str) -> list[str]:
        """Names of the spans a service recorded, sorted (GET /api/v2/spans?serviceName=)."""
        self._fresh()
        return sorted(self._names.get(service.lower(), ()))

    def remote_services(self, service: str) -> list[str]:
        """Remote service names a service's spans name, sorted (GET /api/v2/remoteServices?serviceName=)."""
        self._fresh()
        return sorted(self._remotes.get(service.lower(), ()))

    def trace(self, trace_id: str) -> list[Span]:
        """One trace's spans sorted by timestamp, or [] (GET /api/v2/trace/{traceId}). BadRequest for a bad id."""
        trace_id = normalize_trace_id(trace_id)
        self._fresh()
        trace = self._traces.get(trace_id)
        return sorted(trace.spans.values(), key=_sort_key) if trace else []

    def trace_many(self, trace_ids: Iterable[str]) -> list[list[Span]]:
        """The traces of the ids that are stored, in the order asked, each once (GET /api/v2/traceMany)."""
        ids = dict.fromkeys(normalize_trace_id(t) for t in trace_ids)
        self._fresh()
        return [sorted(self._traces[t].spans.values(), key=_sort_key) for t in ids if t in self._traces]

    def traces(
        self,
        *,
        service_name: str | None = None,
        span_name: str | None = None,
        remote_service_name: str | None = None,
        annotation_query: str | None = None,
        min_duration: int | None = None,
        max_duration: int | None = None,
        end_ts: int | None = None,
        lookback: int | None = None,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[list[Span]]:
        """Traces matching Zipkin's filters, newest first (GET /api/v2/traces); BadRequest for bad filters.

        ``end_ts`` (default now) and ``lookback`` (default ``end_ts``, i.e. everything) are epoch ms; a trace is
        as old as its root span (else its earliest span). ``min_duration``/``max_duration`` are µs and match one
        span of the service. ``annotation_query`` is ``key=value and word``: a ``key=value`` matches a tag, a bare
        word a tag key or an annotation value, all in spans of ``service_name`` when it is given.
        """
        self._fresh()
        query = TraceQuery.make(
            now_ms=self._now_us() // 1000,
            service_name=service_name,
            span_name=span_name,
            remote_service_name=remote_service_name,
            annotation_query=annotation_query,
            min_duration=min_duration,
            max_duration=max_duration,
            end_ts=end_ts,
            lookback=lookback,
            limit=limit,
        )
        if query.service_name is not None and query.service_name not in self._services:
            return []
        found: list[tuple[int, int, list[Span]]] = []
        for trace in self._traces.values():
            spans = sorted(trace.spans.values(), key=_sort_key)
            if query.test(spans):
                found.append((trace_timestamp(spans) or 0, trace.seq, spans))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [spans for _, _, spans in found[: query.limit]]

    def dependencies(self, end_ts: int, lookback: int | None = None) -> list[dict[str, Any]]:
        """Dependency links of the traces with a span in [end_ts - lookback, end_ts] (ms) (GET /dependencies)."""
        lookback = end_ts if lookback is None else lookback
        if end_ts <= 0:
            raise BadRequest("endTs must be positive (epoch milliseconds)")
        if lookback <= 0:
            raise BadRequest("lookback must be positive (milliseconds)")
        self._fresh()
        begin, end = (end_ts - lookback) * 1000, end_ts * 1000
        in_range = (
            list(trace.spans.values())
            for trace in self._traces.values()
            if any(begin <= s.get("timestamp", -1) <= end for s in trace.spans.values())
        )
        return dependency_links(in_range)


def _count(counter: Counter[str], key: str, delta: int) -> None:
    counter[key] += delta
    if counter[key] <= 0:
        del counter[key]
