"""The span store and the span validation: Zipkin's normalisation, eviction, retention, query semantics, merging."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zipkin_example import T0, example_trace

from carml_mesh.errors import BadRequest
from carml_mesh.trace.zipkin_store import (
    MAX_LABEL_BYTES,
    MAX_TAGS_PER_SPAN,
    SpanStore,
    dependency_links,
    group_by_trace,
    merge,
    normalize_trace_id,
    parse_annotation_query,
    validate_spans,
)

# the spec, vendored unchanged in tests/specs/ (Apache-2.0, openzipkin/zipkin-api)
SPEC = Path(__file__).resolve().parents[1] / "specs" / "zipkin2-api.yaml"


def span_validator() -> jsonschema.Draft4Validator:
    definitions = yaml.safe_load(SPEC.read_text())["definitions"]
    schema = {"definitions": definitions, "$ref": "#/definitions/Span"}
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


SPAN_SCHEMA = span_validator()


class Clock:
    """An injected clock, in seconds like time.time."""

    def __init__(self, now_us: int) -> None:
        self.now = now_us / 1e6

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def span(trace_id: str, span_id: str, ts: int | None = None, service: str = "svc", **fields: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"traceId": trace_id, "id": span_id, "localEndpoint": {"serviceName": service}}
    if ts is not None:
        s["timestamp"] = ts
    s.update(fields)
    return validate_spans([s])[0]


def tid(n: int) -> str:
    return f"{n:016x}"


# ------------------------------------------------------------------------------------------------------ validation


def test_example_trace_validates_unchanged() -> None:
    spans = example_trace()
    out = validate_spans(copy.deepcopy(spans))
    assert out == spans
    for s in out:
        SPAN_SCHEMA.validate(s)


def test_spec_example_span_validates_unchanged() -> None:
    example = yaml.safe_load(SPEC.read_text())["definitions"]["Span"]["example"]
    assert validate_spans([example]) == [example]


def test_normalisation_follows_zipkin() -> None:
    raw = {
        "traceId": "ABC",  # short: left-padded to 16, lower-cased
        "id": "F",
        "parentId": "0000000000000000",  # all zeros: no parent
        "name": "GET /Api",
        "kind": "CLIENT",
        "timestamp": 0,  # 0: absent
        "duration": 5,
        "debug": False,
        "shared": None,
        "localEndpoint": {"serviceName": "FrontEnd", "ipv6": "::ffff:10.0.0.1", "port": 0},
        "remoteEndpoint": {"serviceName": "", "ipv4": ""},  # empty: absent
        "annotations": [{"timestamp": 3, "value": "b"}, {"timestamp": 1, "value": "a"}, {"timestamp": 3, "value": "b"}],
        "tags": {"z": "1", "a": "2"},
        "unknownField": {"is": "dropped"},
    }
    (out,) = validate_spans([raw])
    assert out == {
        "traceId": "0000000000000abc",
        "id": "000000000000000f",
        "kind": "CLIENT",
        "name": "get /api",
        "duration": 5,
        "localEndpoint": {"serviceName": "frontend", "ipv4": "10.0.0.1"},
        "annotations": [{"timestamp": 1, "value": "a"}, {"timestamp": 3, "value": "b"}],
        "tags": {"a": "2", "z": "1"},
    }
    assert list(out) == ["traceId", "id", "kind", "name", "duration", "localEndpoint", "annotations", "tags"]
    assert list(out["tags"]) == ["a", "z"]
    SPAN_SCHEMA.validate(out)


@pytest.mark.parametrize(
    ("given_id", "expected"),
    [
        ("86154A4BA6E91385", "86154a4ba6e91385"),
        ("1", "0000000000000001"),
        ("463ac35c9f6413ad48485a3953bb6124", "463ac35c9f6413ad48485a3953bb6124"),
        ("000000000000000048485a3953bb6124", "48485a3953bb6124"),  # high 64 bits zero: the 64-bit id
        ("63ac35c9f6413ad48485a3953bb6124", "063ac35c9f6413ad48485a3953bb6124"),  # 31 digits: padded to 32
    ],
)
def test_trace_id_normalisation(given_id: str, expected: str) -> None:
    assert normalize_trace_id(given_id) == expected


def test_parent_equal_to_id_is_dropped() -> None:
    (out,) = validate_spans([{"traceId": "a" * 16, "id": "b" * 16, "parentId": "B" * 16}])
    assert "parentId" not in out and out["id"] == "b" * 16


GOOD = {"traceId": "a" * 16, "id": "b" * 16}


def bad(**fields: Any) -> list[dict[str, Any]]:
    """A good span, then a span with ``fields`` changed (None deletes): errors must name index 1."""
    s = dict(GOOD, **fields)
    return [dict(GOOD), {k: v for k, v in s.items() if v is not None}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"traceId": "a"}, "must be a JSON list of spans"),
        ("[]", "must be a JSON list of spans"),
        ([dict(GOOD), 3], "spans[1]: must be an object"),
        (bad(traceId=None), "spans[1].traceId: is required"),
        (bad(traceId="xyz0123456789abc"), "spans[1].traceId: must be 16 or 32 hex digits"),
        (bad(traceId="a" * 33), "spans[1].traceId: must be 16 or 32 hex digits"),
        (bad(traceId="0" * 32), "spans[1].traceId: must not be all zeros"),
        (bad(traceId=123), "spans[1].traceId: must be a string of hex digits, got a number"),
        (bad(id=None), "spans[1].id: is required"),
        (bad(id="b" * 17), "spans[1].id: must be 16 hex digits"),
        (bad(id="0" * 16), "spans[1].id: must not be all zeros"),
        (bad(parentId="-1"), "spans[1].parentId: must be 16 hex digits"),
        (bad(kind="server"), "spans[1].kind: must be one of CLIENT, SERVER, PRODUCER, CONSUMER"),
        (bad(kind=["SERVER"]), "spans[1].kind: must be one of"),
        (bad(name=5), "spans[1].name: must be a string, got a number"),
        (bad(name="x" * (MAX_LABEL_BYTES + 1)), "spans[1].name: is 1025 bytes, over the limit of 1024 bytes"),
        (bad(name="\ud800"), "spans[1].name: is not valid Unicode"),
        (bad(timestamp=-1), "spans[1].timestamp: must be 0 to"),
        (bad(timestamp=1.5), "spans[1].timestamp: must be an integer, got a number"),
        (bad(timestamp=True), "spans[1].timestamp: must be an integer, got a boolean"),
        (bad(timestamp=2**63), "spans[1].timestamp: must be 0 to 9223372036854775807"),
        (bad(duration="10"), "spans[1].duration: must be an integer, got a string"),
        (bad(debug="true"), "spans[1].debug: must be true or false, got a string"),
        (bad(shared=1), "spans[1].shared: must be true or false, got a number"),
        (bad(localEndpoint="frontend"), "spans[1].localEndpoint: must be an object, got a string"),
        (bad(localEndpoint={"serviceName": 7}), "spans[1].localEndpoint.serviceName: must be a string"),
        (bad(localEndpoint={"ipv4": "300.1.1.1"}), "spans[1].localEndpoint.ipv4: is not an IPv4 address"),
        (bad(localEndpoint={"ipv4": "::1"}), "spans[1].localEndpoint.ipv4: is not an IPv4 address"),
        (bad(remoteEndpoint={"ipv6": "1.2.3.4"}), "spans[1].remoteEndpoint.ipv6: is not an IPv6 address"),
        (bad(remoteEndpoint={"ipv6": "fe80::1%eth0"}), "spans[1].remoteEndpoint.ipv6: must not carry a zone id"),
        (bad(remoteEndpoint={"port": 70000}), "spans[1].remoteEndpoint.port: must be 0 to 65535, got 70000"),
        (bad(remoteEndpoint={"port": "80"}), "spans[1].remoteEndpoint.port: must be an integer, got a string"),
        (bad(annotations={"a": 1}), "spans[1].annotations: must be a list, got an object"),
        (bad(annotations=["ws"]), "spans[1].annotations[0]: must be an object, got a string"),
        (bad(annotations=[{"value": "ws"}]), "spans[1].annotations[0].timestamp: is required"),
        (bad(annotations=[{"timestamp": 1}]), "spans[1].annotations[0].value: is required"),
        (bad(annotations=[{"timestamp": 1, "value": 2}]), "spans[1].annotations[0].value: must be a string"),
        (bad(tags=["a"]), "spans[1].tags: must be an object of string values, got a list"),
        (bad(tags={"http.status_code": 200}), "spans[1].tags['http.status_code']: must be a string, got a number"),
        (bad(tags={"big": "x" * 65_537}), "spans[1].tags['big']: is 65537 bytes, over the limit of 65536 bytes"),
        (bad(tags={str(i): "" for i in range(MAX_TAGS_PER_SPAN + 1)}), "spans[1].tags: has 257 tags, over the limit"),
        ([GOOD] * 10_001, "10001 spans in one request, over the limit of 10000"),
    ],
)
def test_validation_errors_name_index_and_field(body: object, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        validate_spans(body)
    assert message in str(caught.value)
    assert caught.value.status == 400


def test_limits_are_parameters() -> None:
    with pytest.raises(BadRequest, match="3 spans in one request, over the limit of 2"):
        validate_spans([GOOD] * 3, max_spans=2)
    with pytest.raises(BadRequest, match="over the limit of 4 bytes"):
        validate_spans([dict(GOOD, tags={"k": "12345"})], max_tag_value_bytes=4)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(), max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
HEXISH = st.text("0123456789abcdefABCDEFxz", min_size=0, max_size=34)
FIELD_VALUES = {
    "traceId": HEXISH | JSON,
    "id": HEXISH | JSON,
    "parentId": HEXISH | JSON,
    "name": st.text(st.characters(), max_size=20) | JSON,
    "kind": st.sampled_from(["CLIENT", "SERVER", "PRODUCER", "CONSUMER", "client", ""]) | JSON,
    "timestamp": st.integers(min_value=-(2**64), max_value=2**64) | JSON,
    "duration": st.integers(min_value=-10, max_value=2**64) | JSON,
    "debug": JSON,
    "shared": JSON,
    "localEndpoint": st.fixed_dictionaries(
        {},
        optional={
            "serviceName": st.text(st.characters(), max_size=10) | JSON,
            "ipv4": st.ip_addresses(v=4).map(str) | st.ip_addresses().map(str) | JSON,
            "ipv6": st.ip_addresses(v=6).map(str) | st.ip_addresses().map(str) | JSON,
            "port": st.integers(min_value=-5, max_value=70_000) | JSON,
        },
    )
    | JSON,
    "annotations": st.lists(
        st.fixed_dictionaries({}, optional={"timestamp": st.integers(-5, 2**64) | JSON, "value": JSON}) | JSON,
        max_size=3,
    )
    | JSON,
    "tags": st.dictionaries(st.text(max_size=8), st.text(st.characters(), max_size=8) | JSON, max_size=4) | JSON,
}
FIELD_VALUES["remoteEndpoint"] = FIELD_VALUES["localEndpoint"]
SPANISH = st.fixed_dictionaries({}, optional=FIELD_VALUES)
HEX = "0123456789abcdefABCDEF"
ENDPOINT = st.fixed_dictionaries(
    {},
    optional={
        "serviceName": st.text(st.characters(), max_size=10),
        "ipv4": st.ip_addresses(v=4).map(str),
        "ipv6": st.ip_addresses(v=6).map(str),
        "port": st.integers(0, 65_535),
    },
)
VALIDISH = st.fixed_dictionaries(  # spans that are mostly valid, to reach the normalisation paths
    {"traceId": st.text(HEX, min_size=1, max_size=32), "id": st.text(HEX, min_size=1, max_size=16)},
    optional={
        "parentId": st.text(HEX, min_size=1, max_size=16) | st.none(),
        "name": st.text(st.characters(), max_size=20) | st.none(),
        "kind": st.sampled_from(["CLIENT", "SERVER", "PRODUCER", "CONSUMER"]) | st.none(),
        "timestamp": st.integers(0, 2**63 - 1) | st.none(),
        "duration": st.integers(0, 2**63 - 1),
        "debug": st.booleans(),
        "shared": st.booleans() | st.none(),
        "localEndpoint": ENDPOINT | st.none(),
        "remoteEndpoint": ENDPOINT,
        "annotations": st.lists(
            st.fixed_dictionaries({"timestamp": st.integers(0, 2**63 - 1), "value": st.text(max_size=8)}), max_size=4
        ),
        "tags": st.dictionaries(st.text(max_size=8), st.text(st.characters(), max_size=8), max_size=4),
        "extra": JSON,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=JSON | st.lists(SPANISH | JSON, max_size=4) | st.lists(VALIDISH, max_size=4))
def test_arbitrary_json_raises_only_bad_request(body: object) -> None:
    """Anything JSON can say is either valid spans, which then satisfy the spec's Span schema, or a BadRequest."""
    try:
        spans = validate_spans(body)
    except BadRequest as exc:
        assert str(exc)
        return
    for s in spans:
        SPAN_SCHEMA.validate(s)
        json.dumps(s, allow_nan=False)
        assert validate_spans([s]) == [s]  # normalising is idempotent


# ------------------------------------------------------------------------------------------------------ the store


def test_add_and_read_back() -> None:
    store = SpanStore(clock=Clock(T0 + 1_000_000))
    assert store.add(validate_spans(example_trace())) == 3
    assert len(store) == 3 and store.trace_count == 1
    assert store.trace("86154A4BA6E91385") == sorted(example_trace(), key=lambda s: s["timestamp"])
    assert store.trace("1234567890abcdef") == []
    assert store.services() == ["backend", "frontend"]
    assert store.span_names("frontend") == ["get", "get /"]
    assert store.span_names("FRONTEND") == ["get", "get /"]
    assert store.span_names("nobody") == []
    assert store.remote_services("frontend") == ["backend"]
    assert store.remote_services("backend") == []
    with pytest.raises(BadRequest):
        store.trace("not-hex")


def test_reports_of_one_span_merge() -> None:
    store = SpanStore(clock=Clock(T0))
    early = span(tid(1), tid(2), T0, name="get", tags={"a": "1", "b": "1"})
    late = span(tid(1), tid(2), None, duration=50, tags={"b": "2"}, annotations=[{"timestamp": T0, "value": "x"}])
    store.add([early])
    store.add([late])
    (merged,) = store.trace(tid(1))
    assert len(store) == 1
    assert merged["name"] == "get" and merged["timestamp"] == T0 and merged["duration"] == 50
    assert merged["tags"] == {"a": "1", "b": "2"}
    assert merged["annotations"] == [{"timestamp": T0, "value": "x"}]
    # the same id from another service, or shared, is another span
    store.add([span(tid(1), tid(2), T0, service="other"), span(tid(1), tid(2), T0, shared=True)])
    assert len(store) == 3


def test_eviction_drops_the_oldest_traces_first() -> None:
    clock = Clock(T0 + 100_000_000)
    store = SpanStore(max_spans=4, clock=clock)
    store.add([span(tid(2), tid(1), T0 + 2_000_000, service="b"), span(tid(2), tid(2), T0 + 2_000_000, service="b")])
    store.add([span(tid(1), tid(1), T0 + 1_000_000, service="a"), span(tid(1), tid(2), T0 + 3_000_000, service="a")])
    assert len(store) == 4
    store.add([span(tid(3), tid(1), T0 + 5_000_000, service="c")])  # over: the oldest trace (1, at +1s) goes
    assert len(store) == 3 and store.trace(tid(1)) == [] and store.evicted == 2
    assert store.services() == ["b", "c"]
    assert store.span_names("a") == [] and store.remote_services("a") == []
    store.add([span(tid(4), tid(i), T0 + 6_000_000 + i, service="d") for i in range(1, 5)])  # 4 spans: only d fits
    assert len(store) == 4 and store.services() == ["d"]
    store.add([span(tid(5), tid(i), T0 + 7_000_000, service="e") for i in range(1, 6)])  # alone over the limit
    assert len(store) == 0 and store.trace_count == 0


def test_eviction_by_bytes() -> None:
    store = SpanStore(max_bytes=20_000, clock=Clock(T0 + 100_000_000))
    for i in range(1, 30):
        store.add([span(tid(i), tid(1), T0 + i, tags={"k": "x" * 1000})])
    assert store.byte_estimate <= 20_000
    assert 0 < len(store) < 29
    assert store.trace(tid(29)) and not store.trace(tid(1))


def test_retention_on_add_and_on_query() -> None:
    clock = Clock(T0)
    store = SpanStore(retention_s=60, clock=clock)
    assert store.add([span(tid(1), tid(1), T0 - 61_000_000)]) == 0  # already too old
    assert store.expired == 1 and len(store) == 0
    store.add([span(tid(2), tid(1), T0 - 30_000_000, service="old"), span(tid(2), tid(2), T0, service="new")])
    store.add([span(tid(3), tid(1), None, service="untimed")])  # no timestamp: aged from its arrival
    store.add([span(tid(4), tid(1), T0 + 10**12, service="future")])  # the future: aged from its arrival too
    assert store.services() == ["future", "new", "old", "untimed"]
    clock.advance(40)  # the old span passes 60 s; its trace keeps the young one
    assert [s["id"] for s in store.trace(tid(2))] == [tid(2)]
    assert store.services() == ["future", "new", "untimed"]
    clock.advance(30)
    assert store.services() == [] and len(store) == 0 and store.trace_count == 0
    assert store.traces(end_ts=T0 // 1000 + 10**9, lookback=10**12) == []


def test_store_rejects_nonsense_bounds() -> None:
    for kwargs in ({"max_spans": 0}, {"retention_s": 0}, {"max_bytes": -1}):
        with pytest.raises(ValueError):
            SpanStore(**kwargs)


# ------------------------------------------------------------------------------------------------------ queries


@pytest.fixture
def populated() -> SpanStore:
    """Five traces, one a second apart after T0: trace n has a root of service s{n % 2}, 10n ms long."""
    store = SpanStore(clock=Clock(T0 + 100_000_000))
    store.add(validate_spans(example_trace()))  # trace 86154a4ba6e91385 at T0
    for n in range(1, 6):
        root = span(
            tid(n),
            tid(1),
            T0 + n * 1_000_000,
            service=f"s{n % 2}",
            name=f"op{n}",
            kind="SERVER",
            duration=n * 10_000,
            tags={"n": str(n), **({"error": "boom"} if n == 3 else {})},
        )
        child = span(
            tid(n),
            tid(2),
            T0 + n * 1_000_000 + 10,
            service="db-client",
            parentId=tid(1),
            kind="CLIENT",
            name="query",
            duration=5,
            remoteEndpoint={"serviceName": "mysql"},
            annotations=[{"timestamp": T0 + n * 1_000_000 + 11, "value": f"ann{n}"}],
        )
        store.add([root, child])
    return store


def ids(traces: list[list[dict[str, Any]]]) -> list[str]:
    return [t[0]["traceId"] for t in traces]


def test_traces_newest_first_with_limit(populated: SpanStore) -> None:
    assert ids(populated.traces()) == [tid(5), tid(4), tid(3), tid(2), tid(1), "86154a4ba6e91385"]
    assert ids(populated.traces(limit=2)) == [tid(5), tid(4)]


def test_traces_filters(populated: SpanStore) -> None:
    q = populated.traces
    assert ids(q(service_name="S1")) == [tid(5), tid(3), tid(1)]
    assert ids(q(service_name="nobody")) == []
    assert ids(q(span_name="OP2")) == [tid(2)]
    assert ids(q(span_name="all")) == ids(q())  # Zipkin's reserved "all"
    assert ids(q(service_name="s1", span_name="op2")) == []  # the service constrains the other filters
    assert ids(q(remote_service_name="mysql", limit=100)) == [tid(5), tid(4), tid(3), tid(2), tid(1)]
    assert ids(q(remote_service_name="backend")) == ["86154a4ba6e91385"]
    assert ids(q(service_name="s0", remote_service_name="mysql")) == []  # mysql is called by db-client, not s0
    # annotationQuery: key=value against tags, a bare word against tag keys and annotation values, all ANDed
    assert ids(q(annotation_query="n=4")) == [tid(4)]
    assert ids(q(annotation_query="error")) == [tid(3)]
    assert ids(q(annotation_query="ann2")) == [tid(2)]
    assert ids(q(annotation_query="n=3 and error")) == [tid(3)]
    assert ids(q(annotation_query="n=3 and ann2")) == []
    assert ids(q(annotation_query="http.path=/api and http.status_code=200")) == ["86154a4ba6e91385"]
    assert ids(q(service_name="db-client", annotation_query="ann5")) == [tid(5)]
    assert ids(q(service_name="s1", annotation_query="ann5")) == []  # the annotation is db-client's
    # durations are µs and match one span
    assert ids(q(min_duration=30_000)) == [tid(5), tid(4), tid(3), "86154a4ba6e91385"]
    assert ids(q(min_duration=20_000, max_duration=40_000)) == [tid(4), tid(3), tid(2)]
    assert ids(q(service_name="s1", min_duration=30_000)) == [tid(5), tid(3)]
    # endTs and lookback are ms; a trace is as old as its root
    end = (T0 + 3_000_000) // 1000
    assert ids(q(end_ts=end)) == [tid(3), tid(2), tid(1), "86154a4ba6e91385"]
    assert ids(q(end_ts=end, lookback=1_500)) == [tid(3), tid(2)]
    assert ids(q(end_ts=end, lookback=1)) == [tid(3)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit must be positive"),
        ({"end_ts": 0}, "endTs must be positive"),
        ({"lookback": -1}, "lookback must be positive"),
        ({"min_duration": 0}, "minDuration must be positive"),
        ({"max_duration": 5}, "maxDuration is only valid with minDuration"),
        ({"min_duration": 10, "max_duration": 5}, "maxDuration must not be less than minDuration"),
    ],
)
def test_traces_rejects_bad_filters(populated: SpanStore, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        populated.traces(**kwargs)


def test_trace_many(populated: SpanStore) -> None:
    found = populated.trace_many([tid(3), "ffffffffffffffff", tid(1), tid(3)])
    assert ids(found) == [tid(3), tid(1)]
    assert all(len(t) == 2 for t in found)


def test_parse_annotation_query() -> None:
    assert parse_annotation_query("http.uri=/foo and retried") == {"http.uri": "/foo", "retried": ""}
    assert parse_annotation_query(" a = b=c  and  and d ") == {"a": "b=c", "d": ""}
    assert parse_annotation_query("k=v and k") == {"k": "v"}  # a bare word never overrides key=value
    assert parse_annotation_query(None) == {}


# ------------------------------------------------------------------------------------------------------ merging


def test_merge_dedups_across_sources() -> None:
    trace = validate_spans(example_trace())
    local, peer = trace[:2], trace[1:]  # both hold the client span
    peer = [dict(peer[0], tags={**peer[0]["tags"], "peer": "yes"}), peer[1]]
    merged = merge([local, peer, []])
    assert len(merged) == 3
    client = next(s for s in merged if s["kind"] == "CLIENT")
    assert client["tags"]["peer"] == "yes" and client["tags"]["http.path"] == "/api"
    assert [s["timestamp"] for s in merged] == sorted(s["timestamp"] for s in merged)
    other = span(tid(9), tid(1), T0)
    groups = group_by_trace(merge([merged, [other]]))
    assert sorted(groups) == [tid(9), "86154a4ba6e91385"] and len(groups["86154a4ba6e91385"]) == 3


# ------------------------------------------------------------------------------------------------------ dependencies


def test_dependency_links() -> None:
    links = dependency_links([validate_spans(example_trace())])
    assert links == [{"parent": "frontend", "child": "backend", "callCount": 1, "errorCount": 0}]
    # an uninstrumented callee (a client leaf naming its remote), with an error
    t = tid(7)
    calls = {"service": "api", "kind": "CLIENT", "parentId": tid(1)}
    leaf = [
        span(t, tid(1), T0, service="api", kind="SERVER"),
        span(t, tid(2), T0, **calls, remoteEndpoint={"serviceName": "redis"}),
        span(t, tid(3), T0, **calls, remoteEndpoint={"serviceName": "redis"}),
        span(t, tid(4), T0, **calls, remoteEndpoint={"serviceName": "pg"}, tags={"error": "timeout"}),
    ]
    assert dependency_links([leaf]) == [
        {"parent": "api", "child": "pg", "callCount": 1, "errorCount": 1},
        {"parent": "api", "child": "redis", "callCount": 2, "errorCount": 0},
    ]
    # messaging: producer -> broker -> consumer
    t = tid(8)
    kafka = {"serviceName": "kafka"}
    messaging = [
        span(t, tid(1), T0, service="web", kind="PRODUCER", remoteEndpoint=kafka),
        span(t, tid(2), T0, service="worker", kind="CONSUMER", parentId=tid(1), remoteEndpoint=kafka),
    ]
    assert dependency_links([messaging]) == [
        {"parent": "kafka", "child": "worker", "callCount": 1, "errorCount": 0},
        {"parent": "web", "child": "kafka", "callCount": 1, "errorCount": 0},
    ]
    # cycles in bad data end
    cyclic = [
        span(tid(9), tid(1), T0, service="a", kind="SERVER", parentId=tid(2)),
        span(tid(9), tid(2), T0, service="b", parentId=tid(1)),
    ]
    assert dependency_links([cyclic]) == []


def test_store_dependencies_window(populated: SpanStore) -> None:
    links = populated.dependencies(end_ts=(T0 + 10_000_000) // 1000)
    assert {"parent": "frontend", "child": "backend", "callCount": 1, "errorCount": 0} in links
    assert {"parent": "db-client", "child": "mysql", "callCount": 5, "errorCount": 0} in links
    assert populated.dependencies(end_ts=(T0 - 1_000_000) // 1000) == []
    with pytest.raises(BadRequest, match="endTs must be positive"):
        populated.dependencies(end_ts=0)


# ------------------------------------------------------------------------------------------------------ invariants

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 12), st.integers(1, 4), st.integers(-90, 30)),
        st.tuples(st.just("tick"), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_store_bounds_and_indexes_hold(ops: list[tuple[Any, ...]]) -> None:
    """Under any sequence of adds and clock moves: within max_spans, nothing past retention, indexes exact."""
    clock = Clock(T0)
    store = SpanStore(max_spans=10, retention_s=60, clock=clock)
    for op in ops:
        if op[0] == "tick":
            clock.advance(op[1])
            continue
        _, trace_n, span_n, age_s = op
        ts = int(clock() * 1e6) - age_s * 1_000_000
        store.add([span(tid(trace_n), tid(span_n), ts, service=f"s{span_n}", name=f"n{trace_n}")])
        assert len(store) <= 10
    everything = store.traces(end_ts=int(clock() * 1000) + 10**8, lookback=10**12, limit=1000)
    spans = [s for t in everything for s in t]
    assert len(spans) == len(store)
    cutoff = (clock() - 60) * 1e6
    assert all(s["timestamp"] >= cutoff or s["timestamp"] > clock() * 1e6 for s in spans)
    assert store.services() == sorted({s["localEndpoint"]["serviceName"] for s in spans})
    for service in store.services():
        names = {s["name"] for s in spans if s["localEndpoint"]["serviceName"] == service}
        assert store.span_names(service) == sorted(names)
