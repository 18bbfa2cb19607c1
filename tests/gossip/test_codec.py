"""Tests of the gossip codec: exact round trips, sizes, every refusal, and garbage that raises only CodecError."""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carml_mesh.errors import CodecError
from carml_mesh.gossip.codec import (
    MAX_MESSAGES,
    MAX_PACKET,
    MAX_STATES,
    MAX_STREAM_FRAME,
    PROTOCOL_VERSION,
    decode_message,
    decode_packet,
    encode_message,
    encode_packet,
    encode_packet_raw,
    frame,
    frame_length,
    message_budget,
    message_size,
    packet_overhead,
)
from carml_mesh.gossip.crypto import OVERHEAD
from carml_mesh.gossip.messages import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    State,
    Suspect,
)

ADDR = ("192.168.1.20", 7946)
META = {"v": 3, "d": "0123456789abcdef", "http": 7450}
SENDER = "node-0123456789a"  # 16 characters

EXAMPLES: list[Message] = [
    Ping(seq=7, target="node-b", source="node-a", source_addr=ADDR),
    Ping(seq=0, target="", source="node-a", source_addr=("::1", 1)),
    IndirectPing(seq=2**64 - 1, target="node-c", target_addr=("10.0.0.3", 65535), source="node-a", source_addr=ADDR),
    IndirectPing(seq=3, target="node-c", target_addr=("10.0.0.3", 7946), source="a", source_addr=ADDR, nack=False),
    Ack(seq=9),
    Nack(seq=10),
    Alive(incarnation=1, node="node-a", addr=ADDR),
    Alive(incarnation=5, node="node-a", addr=ADDR, meta=META),
    Alive(
        incarnation=6,
        node="n" * 255,
        addr=("h" * 255, 80),
        meta={"a": {"b": {"c": [1, 2.5, None, True, b"\x00", "x"]}}, "neg": -(2**63), "big": 2**64 - 1},
    ),
    Suspect(incarnation=2, node="node-b", source="node-a"),
    Dead(incarnation=3, node="node-b", source="node-b"),
    PushPull(join=True, states=()),
    PushPull(
        join=False,
        states=(
            MemberState("node-a", ADDR, 4, State.ALIVE, META),
            MemberState("node-b", ("10.0.0.2", 7946), 0, State.SUSPECT),
            MemberState("node-c", ("10.0.0.3", 7946), 2**64 - 1, State.DEAD),
            MemberState("node-d", ("10.0.0.4", 7946), 1, State.LEFT, {"x": []}),
        ),
    ),
]


def packet(*messages: Any, version: Any = PROTOCOL_VERSION, cluster: Any = "default", sender: Any = "node-a") -> bytes:
    """A packet of raw message arrays (not validated: for refusals)."""
    return msgpack.packb([version, cluster, sender, list(messages)], use_bin_type=True)


def refused(data: bytes, fragment: str) -> CodecError:
    with pytest.raises(CodecError) as info:
        decode_packet(data)
    assert fragment in str(info.value), str(info.value)
    return info.value


# -- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert decode_message(msgpack.unpackb(data)) == msg
    assert type(decode_message(data)) is type(msg)
    assert message_size(msg) == len(data)
    assert decode_packet(encode_packet("default", "node-a", [msg])) == ("default", "node-a", [msg])


def test_decoded_fields_have_exact_types() -> None:
    (ms,) = decode_message(encode_message(EXAMPLES[-1])).states[:1]  # type: ignore[union-attr]
    assert type(ms.state) is State
    assert ms.addr == ADDR and type(ms.addr) is tuple
    (ping,) = decode_packet(encode_packet("c", "s", [EXAMPLES[0]]))[2]
    assert type(ping.source_addr) is tuple  # type: ignore[union-attr]


def test_compound_packet_round_trips() -> None:
    data = encode_packet("default", SENDER, EXAMPLES)
    assert decode_packet(data) == ("default", SENDER, EXAMPLES)
    assert decode_packet(encode_packet("", SENDER, [])) == ("", SENDER, [])


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 64, 65, MAX_MESSAGES])
def test_raw_path_equals_encode_packet(count: int) -> None:
    messages = [EXAMPLES[i % len(EXAMPLES)] for i in range(count)]
    pre = [encode_message(m) for m in messages]
    data = encode_packet_raw("default", SENDER, pre)
    assert data == encode_packet("default", SENDER, messages)
    assert data == msgpack.packb([PROTOCOL_VERSION, "default", SENDER, [msgpack.unpackb(p) for p in pre]])
    assert decode_packet(data) == ("default", SENDER, messages)


def test_tuple_meta_goes_out_as_a_list() -> None:
    msg = Alive(incarnation=1, node="a", addr=ADDR, meta={"t": (1, 2)})
    assert decode_message(encode_message(msg)) == Alive(incarnation=1, node="a", addr=ADDR, meta={"t": [1, 2]})


def test_large_push_pull_round_trips() -> None:
    states = tuple(MemberState(f"node-{i}", ("10.0.0.1", 7946), i, State(i % 4), META) for i in range(MAX_STATES))
    msg = PushPull(join=True, states=states)
    assert decode_packet(encode_packet("default", "x", [msg]))[2] == [msg]


# -- sizes -------------------------------------------------------------------------------------------------------


def test_sizes() -> None:
    ping = Ping(seq=123456, target="node-0123456789a", source="node-fedcba98765", source_addr=ADDR)
    alive = Alive(incarnation=5, node="node-0123456789a", addr=ADDR, meta=META)
    assert message_size(ping) == 58
    assert message_size(alive) == 68
    overhead = packet_overhead("default", SENDER)
    assert overhead == 30
    for messages in ([], [ping], [ping, alive], [Ack(1)] * 16, [Ack(2**40)] * MAX_MESSAGES):
        body = sum(message_size(m) for m in messages)
        assert len(encode_packet("default", SENDER, messages)) <= overhead + body
    assert message_budget("default", SENDER, sealed=True) == MAX_PACKET - OVERHEAD - overhead
    assert message_budget("default", SENDER, sealed=False) == MAX_PACKET - 1 - overhead


def test_filling_a_packet_to_the_budget_fits() -> None:
    budget = message_budget("default", SENDER, sealed=True)
    alive = Alive(incarnation=5, node="node-0123456789a", addr=ADDR, meta=META)
    chosen: list[bytes] = []
    used = 0
    encoded = encode_message(alive)
    while used + len(encoded) <= budget:
        chosen.append(encoded)
        used += len(encoded)
    data = encode_packet_raw("default", SENDER, chosen)
    assert len(data) + OVERHEAD <= MAX_PACKET
    assert len(decode_packet(data)[2]) == len(chosen) > 15


# -- refusals ----------------------------------------------------------------------------------------------------

PING_OK = [0, 1, "b", "a", ["10.0.0.1", 7946]]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"\xc1", "malformed msgpack"),
        (b"\xc1" * 50, "malformed msgpack"),
        (b"\x94\x01", "malformed msgpack"),
        (b"\xd4\x01\x00", "malformed msgpack"),  # ext
        (b"\xc7\x00\x05", "expected a msgpack array, got ExtType"),  # ext of length 0
        (b"\xd6\xff\x00\x00\x00\x00", "malformed msgpack"),  # timestamp
        (b"\x94\x01\xa3\xff\xfe\xfd", "malformed msgpack"),  # invalid UTF-8
        (msgpack.packb({"a": 1}), "expected a msgpack array"),
        (msgpack.packb([]), "expected a msgpack array"),
        (msgpack.packb(5), "expected a msgpack array"),
        (packet(version=2), "protocol version mismatch"),
        (packet(version=0), "this node speaks 1"),
        (packet(version=True), "protocol version mismatch"),
        (packet(version="1"), "protocol version mismatch"),
        (msgpack.packb([1, "c", "s"]), "expected [version, cluster, sender, messages]"),
        (msgpack.packb([1, "c", "s", [], 5]), "expected [version, cluster, sender, messages]"),
        (packet(cluster=5), "cluster: expected a str"),
        (packet(cluster="c" * 256), "256"),
        (packet(sender=""), "sender: expected 1..255 characters, got 0"),
        (packet(sender=b"node"), "sender: expected a str"),
        (packet(sender="s" * 256), "got 256"),
        (msgpack.packb([1, "c", "s", {}]), "packet messages: expected an array"),
        (packet(*[[2, 1]] * (MAX_MESSAGES + 1)), "257 messages, at most 256"),
        (packet(5), "message 0: a message must be a non-empty array"),
        (packet([]), "a message must be a non-empty array"),
        (packet([99, 1]), "unknown message type code int 99"),
        (packet([-1, 1]), "unknown message type code"),
        (packet(["ping", 1]), "message type code must be an int"),
        (packet([True, 1]), "message type code must be an int"),
        (packet([2, 1], [2]), "message 1: Ack: expected 1 fields, got 0"),
        (packet([0, 1, "b", "a"]), "Ping: expected 4 fields, got 3"),
        (packet([*PING_OK, 1]), "Ping: expected 4 fields, got 5"),
        (packet([2, True]), "Ack.seq: expected an integer in 0..2**64-1, got a bool"),
        (packet([11, False]), "Nack.seq"),
        (packet([2, -1]), "got int -1"),
        (packet([2, 1.0]), "got float"),
        (packet([2, "1"]), "Ack.seq"),
        (packet([4, -5, "n", ADDR, {}]), "Alive.incarnation: expected an integer in 0..2**64-1"),
        (packet([3, 2**63, 5, "s"]), "Suspect.node: expected a str"),
        (packet([5, 1, "n", b"s"]), "Dead.source: expected a str"),
        (packet([5, 1, "n" * 256, "s"]), "Dead.node: expected 1..255 characters, got 256"),
        (packet([5, 1, "", "s"]), "Dead.node: expected 1..255 characters, got 0"),
        (packet([0, 1, "t" * 256, "a", ADDR]), "Ping.target: expected 0..255 characters"),
        (packet([0, 1, "b", "a", ["h", 0]]), "port must be an integer in 1..65535, got int 0"),
        (packet([0, 1, "b", "a", ["h", -1]]), "port must be"),
        (packet([0, 1, "b", "a", ["h", 65536]]), "port must be"),
        (packet([0, 1, "b", "a", ["h", 2**64 - 1]]), "port must be"),
        (packet([0, 1, "b", "a", ["h", True]]), "port must be an integer in 1..65535, got a bool"),
        (packet([0, 1, "b", "a", ["h", "80"]]), "port must be"),
        (packet([0, 1, "b", "a", ["", 80]]), "Ping.source_addr host"),
        (packet([0, 1, "b", "a", [5, 80]]), "Ping.source_addr host: expected a str"),
        (packet([0, 1, "b", "a", ["h"]]), "Ping.source_addr: expected an address [host, port]"),
        (packet([0, 1, "b", "a", ["h", 1, 2]]), "expected an address"),
        (packet([0, 1, "b", "a", "h:80"]), "expected an address"),
        (packet([1, 1, "c", ADDR, "a", ADDR, 1]), "IndirectPing.nack: expected a bool"),
        (packet([4, 1, "n", ADDR, None]), "Alive.meta: expected a map"),
        (packet([4, 1, "n", ADDR, []]), "Alive.meta: expected a map"),
        (packet([4, 1, "n", ADDR, {"a": {"b": {"c": {"d": {}}}}}]), "nested deeper than 4 levels"),
        (packet([4, 1, "n", ADDR, {"a": [[[[]]]]}]), "nested deeper than 4 levels"),
        (packet([4, 1, "n", ADDR, {b"k": 1}]), "map keys must be str"),
        (packet([4, 1, "n", ADDR, {"f": [1.5, float("nan")]}]), "NaN is not a valid meta value"),
        (packet([4, 1, "n", ADDR, {"a": {b"k": 1}}]), "map keys must be str"),
        (packet([6, 1, []]), "PushPull.join: expected a bool"),
        (packet([6, True, {}]), "PushPull.states: expected an array"),
        (packet([6, True, [None] * (MAX_STATES + 1)]), "10001 states, at most 10000"),
        (packet([6, True, [None] * (MAX_STATES + 100)]), "10100 states, at most 10000"),
        (packet([4, 1, "n", ADDR, {"a": msgpack.ExtType(5, b"")}]), "unsupported value of type ExtType"),
        (packet([6, True, [["n", ADDR, 1, 0]]]), "PushPull.states[0]: expected [name, addr, incarnation, state, meta]"),
        (packet([6, True, [["n", ADDR, 1, 4, {}]]]), "PushPull.states[0].state: unknown member state int 4"),
        (packet([6, True, [["n", ADDR, 1, -1, {}]]]), "unknown member state"),
        (packet([6, True, [["n", ADDR, 1, True, {}]]]), "state: expected a member state (int), got a bool"),
        (packet([6, True, [["n", ADDR, 1, 0, {}], ["n", ADDR, 1, 0, 5]]]), "PushPull.states[1].meta"),
        (packet([6, True, [["n", ADDR, 1.5, 0, {}]]]), "PushPull.states[0].incarnation"),
        (packet([2, 1]) + b"\x00", "1 trailing bytes"),
        (packet([2, 1]) + b"garbage", "7 trailing bytes"),
    ],
)
def test_refusals(data: bytes, fragment: str) -> None:
    refused(data, fragment)


def test_int_keys_are_refused() -> None:
    refused(packet([4, 1, "n", ADDR, {"a": 1}]).replace(b"\xa1a", b"\x01"), "malformed msgpack")


def test_refusal_names_the_message() -> None:
    err = refused(packet([2, 1], [2, 1], [4, 1, "n", ADDR, 5]), "message 2: Alive.meta")
    assert isinstance(err, CodecError)


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(CodecError, match="expected bytes"):
        decode_packet("text")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="expected bytes"):
        decode_packet(None)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="a message must be a non-empty array"):
        decode_message({"a": 1})
    with pytest.raises(CodecError, match="trailing"):
        decode_message(encode_message(Ack(1)) + b"\x00")
    assert decode_packet(memoryview(encode_packet("c", "s", [Ack(1)]))) == ("c", "s", [Ack(1)])
    assert decode_packet(bytearray(encode_packet("c", "s", [Ack(1)]))) == ("c", "s", [Ack(1)])


def test_deep_or_long_arrays_take_the_careful_path() -> None:
    # long arrays (> the fast path's bound) still decode exactly, nested deep ones are refused
    msgs = [Ack(i) for i in range(200)]
    assert decode_packet(encode_packet("c", "s", msgs))[2] == msgs
    refused(b"\x91" * 5000, "nested deeper than")
    refused(b"\xdc\xff\xff" * 400, "malformed msgpack")
    refused(b"\x81\xa1a" * 400, "nested deeper than")
    refused(b"\x94\x01\xa1c\xa1s\xdd\xff\xff\xff\xff", "claims")


@pytest.mark.parametrize(
    "data",
    [
        (b"\xdc\x05\x78" * 467)[:MAX_PACKET],  # nested arrays each claiming 1400 items
        (b"\xdc\x00\x40" * 467)[:MAX_PACKET],  # ... claiming the fast path's most
        (b"\xdc\x27\x11" * 2000),  # ... claiming 10001 items
        (b"\xdd\x00\x01\x00\x00" * 1000),
        b"\x9f" * 2000,
        b"\x8f\xa1a" * 1000,
    ],
)
def test_small_packets_cannot_allocate_much(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_packet(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


# -- encoding refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "fragment"),
    [
        (Ack(seq=-1), "Ack.seq"),
        (Ack(seq=2**64), "Ack.seq: expected an integer in 0..2**64-1, got int 18446744073709551616"),
        (Ack(seq=True), "got a bool"),
        (Ack(seq=1.0), "got float"),  # type: ignore[arg-type]
        (Alive(incarnation=2**64, node="n", addr=ADDR), "Alive.incarnation"),
        (Alive(incarnation=1, node="n", addr=("h", 0)), "port must be"),
        (Alive(incarnation=1, node="n", addr=("h", 80), meta={"x": object()}), "unsupported value of type object"),
        (Alive(incarnation=1, node="n", addr=("h", 80), meta={1: 2}), "map keys must be str"),  # type: ignore[dict-item]
        (Alive(incarnation=1, node="n", addr=("h", 80), meta={"x": {"y": {"z": [{}]}}}), "nested deeper"),
        (Alive(incarnation=1, node="n", addr=("h", 80), meta={"x": 2**64}), "cannot encode"),
        (Alive(incarnation=1, node="n", addr=("h", 80), meta={"x": float("nan")}), "NaN"),
        (Alive(incarnation=1, node="n", addr=("h", 80), meta=[]), "expected a map"),  # type: ignore[arg-type]
        (Suspect(incarnation=1, node="n" * 256, source="s"), "Suspect.node"),
        (Dead(incarnation=1, node="n", source=""), "Dead.source"),
        (Ping(seq=1, target="t", source="s", source_addr=("h",)), "expected an address"),  # type: ignore[arg-type]
        (IndirectPing(1, "t", ADDR, "s", ADDR, nack=None), "IndirectPing.nack"),  # type: ignore[arg-type]
        (PushPull(join=True, states=(1,)), "PushPull.states[0]: expected a MemberState"),  # type: ignore[arg-type]
        (PushPull(join=True, states=(MemberState("n", ADDR, 1, 9),)), "unknown member state"),  # type: ignore[arg-type]
        (PushPull(join=True, states=None), "PushPull.states"),  # type: ignore[arg-type]
        ("ping", "not a gossip message"),
    ],
)
def test_encode_refuses_invalid_messages(msg: Any, fragment: str) -> None:
    with pytest.raises(CodecError) as info:
        encode_message(msg)
    assert fragment in str(info.value), str(info.value)


def test_encode_packet_refusals() -> None:
    with pytest.raises(CodecError, match="257 messages"):
        encode_packet("c", "s", [Ack(1)] * 257)
    with pytest.raises(CodecError, match="sender"):
        encode_packet("c", "", [])
    with pytest.raises(CodecError, match="cluster"):
        encode_packet("c" * 256, "s", [])
    with pytest.raises(CodecError, match="must be str"):
        encode_packet_raw(None, "s", [])  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="must be bytes"):
        encode_packet_raw("c", "s", ["x"])  # type: ignore[list-item]
    with pytest.raises(CodecError, match="cannot encode"):
        encode_packet("c", "\ud800", [])
    with pytest.raises(CodecError):
        encode_message(Dead(incarnation=1, node="\udcff", source="s"))


# -- framing -----------------------------------------------------------------------------------------------------


def test_frames() -> None:
    payload = b"hello"
    framed = frame(payload)
    assert framed == b"\x00\x00\x00\x05hello"
    assert frame_length(framed[:4]) == 5
    assert frame_length(b"\x00\x00\x00\x00") == 0
    assert frame_length(MAX_STREAM_FRAME.to_bytes(4, "big")) == MAX_STREAM_FRAME
    with pytest.raises(CodecError, match="at most"):
        frame_length((MAX_STREAM_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(CodecError, match="at most"):
        frame_length(b"\xff\xff\xff\xff")
    with pytest.raises(CodecError, match="4 bytes"):
        frame_length(b"\x00\x00\x05")
    with pytest.raises(CodecError, match="4 bytes"):
        frame_length(None)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="at most"):
        frame(bytes(MAX_STREAM_FRAME + 1))
    with pytest.raises(CodecError, match="bytes"):
        frame("text")  # type: ignore[arg-type]


def test_oversized_input_is_refused_before_unpacking() -> None:
    with pytest.raises(CodecError, match="at most"):
        decode_packet(bytes(MAX_STREAM_FRAME + 1))


# -- hypothesis --------------------------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=255)
small_names = st.text(min_size=1, max_size=12)
addrs = st.tuples(st.text(min_size=1, max_size=40), st.integers(1, 65535))
u64 = st.integers(0, 2**64 - 1)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)


def meta_values(level: int) -> st.SearchStrategy[Any]:
    """Values inside meta; a container here sits at nesting ``level`` (meta itself is level 1)."""
    if level > 4:
        return scalars
    inner = meta_values(level + 1)
    return scalars | st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


metas = st.dictionaries(st.text(max_size=8), meta_values(2), max_size=5)
member_states = st.builds(MemberState, small_names, addrs, u64, st.sampled_from(list(State)), metas)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, u64, st.text(max_size=255), names, addrs),
    st.builds(IndirectPing, u64, names, addrs, names, addrs, st.booleans()),
    st.builds(Ack, u64),
    st.builds(Nack, u64),
    st.builds(Alive, u64, names, addrs, metas),
    st.builds(Suspect, u64, names, names),
    st.builds(Dead, u64, names, names),
    st.builds(PushPull, st.booleans(), st.lists(member_states, max_size=5).map(tuple)),
)
packets = st.tuples(st.text(max_size=20), small_names, st.lists(messages, max_size=6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_packet(data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
        max_leaves=12,
    )
)
def test_arbitrary_msgpack_raises_only_codec_error(obj: Any) -> None:
    for shaped in (obj, [1, "c", "s", obj], [1, "c", "s", [obj]], [1, "c", "s", [[4, 1, "n", ["h", 1], obj]]]):
        with contextlib.suppress(CodecError):
            decode_packet(msgpack.packb(shaped))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets)
def test_valid_packets_round_trip_exactly(pkt: tuple[str, str, list[Message]]) -> None:
    cluster, sender, msgs = pkt
    data = encode_packet(cluster, sender, msgs)
    assert decode_packet(data) == (cluster, sender, msgs)
    assert encode_packet_raw(cluster, sender, [encode_message(m) for m in msgs]) == data
    for m in msgs:
        assert decode_message(encode_message(m)) == m


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    cluster, sender, msgs = draw(packets)
    data = bytearray(encode_packet(cluster, sender, msgs))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[i:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[i]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_packets_raise_only_codec_error_or_decode_validly(data: bytes) -> None:
    try:
        cluster, sender, msgs = decode_packet(data)
    except CodecError:
        return
    again = encode_packet(cluster, sender, msgs)  # what decoded is valid: it encodes and decodes to itself
    assert decode_packet(again) == (cluster, sender, msgs)
