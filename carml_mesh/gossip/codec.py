"""Gossip messages <-> msgpack bytes, compound packets, TCP stream framing. Pure: no I/O.

Wire format, protocol version 1 (type codes are memberlist's message types)::

    packet        [1, cluster, sender, [message, ...]]           at most 256 messages
    Ping          [0, seq, target, source, [host, port]]           target "" = whoever holds the address
    IndirectPing  [1, seq, target, [host, port], source, [host, port], nack]
    Ack           [2, seq]
    Suspect       [3, incarnation, node, source]
    Alive         [4, incarnation, node, [host, port], meta]
    Dead          [5, incarnation, node, source]
    PushPull      [6, join, [[name, [host, port], incarnation, state, meta], ...]]   at most 10,000 states
    Nack          [11, seq]

seq and incarnation are uint64; ports 1..65535; names and hosts are 1..255 characters; the cluster name at most 255;
state is a State value; meta is a map with str keys whose values are nil, bool, int, float (not NaN), str, bin,
arrays and maps (str keys), nested at most MAX_META_DEPTH levels counting meta itself. Tuples in meta go out as arrays
and come back as lists.

Messages are encoded once (:func:`encode_message`) and the bytes reused: :func:`encode_packet_raw` splices
pre-encoded messages into a packet without re-encoding them. To fill a UDP packet, keep
``packet_overhead(cluster, sender) + sum(message sizes) <= message_budget(...)`` (that is MAX_PACKET less the sealing
overhead of crypto.py).

:func:`decode_packet` validates everything and raises :class:`CodecError`, and only that, on any other input. The
msgpack unpacking is bounded (see _unpack): what a packet makes decoding allocate is proportional to its length.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from carml_mesh.errors import CodecError
from carml_mesh.gossip.crypto import OVERHEAD, PLAIN_OVERHEAD
from carml_mesh.gossip.messages import (
    Ack,
    Address,
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

__all__ = [
    "MAX_MESSAGES",
    "MAX_META_DEPTH",
    "MAX_NAME",
    "MAX_PACKET",
    "MAX_STATES",
    "MAX_STREAM_FRAME",
    "PROTOCOL_VERSION",
    "TYPE_CODES",
    "decode_message",
    "decode_packet",
    "encode_message",
    "encode_packet",
    "encode_packet_raw",
    "frame",
    "frame_length",
    "message_budget",
    "message_size",
    "packet_overhead",
]

PROTOCOL_VERSION: Final = 1
MAX_PACKET: Final = 1400  # memberlist's UDP buffer: a sealed packet we send fits in it
MAX_MESSAGES: Final = 256  # per packet
MAX_STATES: Final = 10_000  # per PushPull
MAX_NAME: Final = 255  # characters, for node names, hosts and the cluster name
MAX_META_DEPTH: Final = 4  # meta map itself is level 1
MAX_UINT64: Final = 2**64 - 1
MAX_STREAM_FRAME: Final = 16 * 1024 * 1024
FRAME_HEADER: Final = 4

PING: Final = 0
INDIRECT_PING: Final = 1
ACK: Final = 2
SUSPECT: Final = 3
ALIVE: Final = 4
DEAD: Final = 5
PUSH_PULL: Final = 6
NACK: Final = 11

TYPE_CODES: Final[dict[type, int]] = {
    Ping: PING,
    IndirectPing: INDIRECT_PING,
    Ack: ACK,
    Suspect: SUSPECT,
    Alive: ALIVE,
    Dead: DEAD,
    PushPull: PUSH_PULL,
    Nack: NACK,
}

_STATES: Final[dict[int, State]] = {s.value: s for s in State}
_MSGS_HEADER_SLACK: Final = 3  # array16 header of the message list: the largest one we write (<= 256 messages)
_FRAME = struct.Struct(">I")


# -- field validation, shared by encoding (our bugs) and decoding (their bytes) --------------------------------------


def _show(value: object) -> str:
    """A short description of a bad value, never echoing much of it."""
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return f"int {value}" if -(10**30) < value < 10**30 else "a huge int"
    if isinstance(value, str | bytes | list | dict):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _uint64(value: Any, where: str) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{where}: expected an integer in 0..2**64-1, got {_show(value)}")
        value = int(value)
    if value < 0 or value > MAX_UINT64:
        raise CodecError(f"{where}: expected an integer in 0..2**64-1, got {_show(value)}")
    return int(value)


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise CodecError(f"{where}: expected a bool, got {_show(value)}")
    return value


def _name(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CodecError(f"{where}: expected a str, got {_show(value)}")
    n = len(value)
    if n > MAX_NAME or (n == 0 and not empty):
        raise CodecError(f"{where}: expected {0 if empty else 1}..{MAX_NAME} characters, got {n}")
    return value


def _addr(value: Any, where: str) -> Address:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise CodecError(f"{where}: expected an address [host, port], got {_show(value)}")
    host, port = value
    _name(host, f"{where} host")
    if type(port) is not int:
        if isinstance(port, bool) or not isinstance(port, int):
            raise CodecError(f"{where}: port must be an integer in 1..65535, got {_show(port)}")
        port = int(port)
    if not 0 < port < 65536:
        raise CodecError(f"{where}: port must be an integer in 1..65535, got {_show(port)}")
    return (host, port)


def _state(value: Any, where: str) -> State:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"{where}: expected a member state (int), got {_show(value)}")
    state = _STATES.get(value)
    if state is None:
        raise CodecError(f"{where}: unknown member state {_show(value)}")
    return state


_SCALARS: Final = (str, bytes, int, type(None))  # bool is an int; floats are checked apart (NaN)


def _check_tree(value: Any, depth: int, where: str) -> None:
    """Raise unless ``value`` (a container at ``depth``) holds only msgpack-plain values within the depth limit."""
    if depth > MAX_META_DEPTH:
        raise CodecError(f"{where}: nested deeper than {MAX_META_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"{where}: map keys must be str, got {_show(key)}")
            if not isinstance(item, _SCALARS):
                _check_item(item, depth + 1, where)
    else:
        for item in value:
            if not isinstance(item, _SCALARS):
                _check_item(item, depth + 1, where)


def _check_item(item: Any, depth: int, where: str) -> None:
    if isinstance(item, float):
        if item != item:  # NaN never equals itself: a meta holding one would look changed at every comparison
            raise CodecError(f"{where}: NaN is not a valid meta value")
    elif isinstance(item, dict | list | tuple) and not isinstance(item, msgpack.ExtType):  # ExtType: a namedtuple
        _check_tree(item, depth, where)
    else:
        raise CodecError(f"{where}: unsupported value of type {type(item).__name__}")


def _meta(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CodecError(f"{where}: expected a map, got {_show(value)}")
    if value:
        _check_tree(value, 1, where)
    return value


# -- encoding ----------------------------------------------------------------------------------------------------


def _enc_ping(m: Ping) -> list[Any]:
    return [
        PING,
        _uint64(m.seq, "Ping.seq"),
        _name(m.target, "Ping.target", empty=True),
        _name(m.source, "Ping.source"),
        _addr(m.source_addr, "Ping.source_addr"),
    ]


def _enc_indirect(m: IndirectPing) -> list[Any]:
    return [
        INDIRECT_PING,
        _uint64(m.seq, "IndirectPing.seq"),
        _name(m.target, "IndirectPing.target"),
        _addr(m.target_addr, "IndirectPing.target_addr"),
        _name(m.source, "IndirectPing.source"),
        _addr(m.source_addr, "IndirectPing.source_addr"),
        _bool(m.nack, "IndirectPing.nack"),
    ]


def _enc_ack(m: Ack) -> list[Any]:
    return [ACK, _uint64(m.seq, "Ack.seq")]


def _enc_nack(m: Nack) -> list[Any]:
    return [NACK, _uint64(m.seq, "Nack.seq")]


def _enc_suspect(m: Suspect) -> list[Any]:
    return [
        SUSPECT,
        _uint64(m.incarnation, "Suspect.incarnation"),
        _name(m.node, "Suspect.node"),
        _name(m.source, "Suspect.source"),
    ]


def _enc_alive(m: Alive) -> list[Any]:
    return [
        ALIVE,
        _uint64(m.incarnation, "Alive.incarnation"),
        _name(m.node, "Alive.node"),
        _addr(m.addr, "Alive.addr"),
        _meta(m.meta, "Alive.meta"),
    ]


def _enc_dead(m: Dead) -> list[Any]:
    return [
        DEAD,
        _uint64(m.incarnation, "Dead.incarnation"),
        _name(m.node, "Dead.node"),
        _name(m.source, "Dead.source"),
    ]


def _enc_member(s: Any, i: int) -> list[Any]:
    if not isinstance(s, MemberState):
        raise CodecError(f"PushPull.states[{i}]: expected a MemberState, got {type(s).__name__}")
    where = f"PushPull.states[{i}]"
    return [
        _name(s.name, f"{where}.name"),
        _addr(s.addr, f"{where}.addr"),
        _uint64(s.incarnation, f"{where}.incarnation"),
        int(_state(s.state, f"{where}.state")),
        _meta(s.meta, f"{where}.meta"),
    ]


def _enc_push_pull(m: PushPull) -> list[Any]:
    states = m.states
    if not isinstance(states, tuple | list):
        raise CodecError(f"PushPull.states: expected a tuple of MemberState, got {type(states).__name__}")
    if len(states) > MAX_STATES:
        raise CodecError(f"PushPull.states: {len(states)} states, at most {MAX_STATES}")
    return [PUSH_PULL, _bool(m.join, "PushPull.join"), [_enc_member(s, i) for i, s in enumerate(states)]]


_ENCODERS: Final[dict[type, Callable[[Any], list[Any]]]] = {
    Ping: _enc_ping,
    IndirectPing: _enc_indirect,
    Ack: _enc_ack,
    Nack: _enc_nack,
    Suspect: _enc_suspect,
    Alive: _enc_alive,
    Dead: _enc_dead,
    PushPull: _enc_push_pull,
}


def encode_message(msg: Message) -> bytes:
    """The msgpack bytes of one message; CodecError if it is not a valid message (it would be refused anyway)."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise CodecError(f"not a gossip message: {type(msg).__name__}")
    fields = encoder(msg)
    try:
        return bytes(msgpack.packb(fields, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an int in meta beyond msgpack's 64 bits
        raise CodecError(f"{type(msg).__name__}: cannot encode: {exc}") from None


def message_size(msg: Message) -> int:
    """Bytes of ``encode_message(msg)``."""
    return len(encode_message(msg))


def _array_header(n: int) -> bytes:
    return bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


@functools.lru_cache(maxsize=256)
def _envelope(cluster: str, sender: str) -> bytes:
    """``[PROTOCOL_VERSION, cluster, sender,`` of a packet: everything before the message list's array header."""
    _name(cluster, "cluster", empty=True)
    _name(sender, "sender")
    try:
        head: bytes = msgpack.packb(PROTOCOL_VERSION) + msgpack.packb(cluster) + msgpack.packb(sender)
        return b"\x94" + head
    except ValueError as exc:  # a str that is not valid UTF-8 (lone surrogates)
        raise CodecError(f"cannot encode the cluster or sender name: {exc}") from None


def encode_packet_raw(cluster: str, sender: str, encoded: Sequence[bytes]) -> bytes:
    """A packet of messages already encoded by :func:`encode_message`, spliced in as they are."""
    if not isinstance(cluster, str) or not isinstance(sender, str):
        raise CodecError("cluster and sender must be str")
    n = len(encoded)
    if n > MAX_MESSAGES:
        raise CodecError(f"{n} messages in one packet, at most {MAX_MESSAGES}")
    try:
        return b"".join((_envelope(cluster, sender), _array_header(n), *encoded))
    except TypeError:
        raise CodecError("pre-encoded messages must be bytes") from None


def encode_packet(cluster: str, sender: str, messages: Sequence[Message]) -> bytes:
    """``msgpack [PROTOCOL_VERSION, cluster, sender, [messages...]]``."""
    return encode_packet_raw(cluster, sender, [encode_message(m) for m in messages])


def packet_overhead(cluster: str, sender: str) -> int:
    """Bytes of a packet besides its encoded messages (envelope plus the largest message-list header we write)."""
    if not isinstance(cluster, str) or not isinstance(sender, str):
        raise CodecError("cluster and sender must be str")
    return len(_envelope(cluster, sender)) + _MSGS_HEADER_SLACK


def message_budget(cluster: str, sender: str, *, sealed: bool) -> int:
    """Bytes left for encoded messages in one UDP packet of at most MAX_PACKET bytes on the wire, once sealed
    (``sealed``: with a cluster key) or flagged as plain."""
    return MAX_PACKET - (OVERHEAD if sealed else PLAIN_OVERHEAD) - packet_overhead(cluster, sender)


# -- decoding ----------------------------------------------------------------------------------------------------


def _dec_ping(o: list[Any]) -> Ping:
    return Ping(
        _uint64(o[1], "Ping.seq"),
        _name(o[2], "Ping.target", empty=True),
        _name(o[3], "Ping.source"),
        _addr(o[4], "Ping.source_addr"),
    )


def _dec_indirect(o: list[Any]) -> IndirectPing:
    return IndirectPing(
        _uint64(o[1], "IndirectPing.seq"),
        _name(o[2], "IndirectPing.target"),
        _addr(o[3], "IndirectPing.target_addr"),
        _name(o[4], "IndirectPing.source"),
        _addr(o[5], "IndirectPing.source_addr"),
        _bool(o[6], "IndirectPing.nack"),
    )


def _dec_ack(o: list[Any]) -> Ack:
    return Ack(_uint64(o[1], "Ack.seq"))


def _dec_nack(o: list[Any]) -> Nack:
    return Nack(_uint64(o[1], "Nack.seq"))


def _dec_suspect(o: list[Any]) -> Suspect:
    return Suspect(_uint64(o[1], "Suspect.incarnation"), _name(o[2], "Suspect.node"), _name(o[3], "Suspect.source"))


def _dec_alive(o: list[Any]) -> Alive:
    return Alive(
        _uint64(o[1], "Alive.incarnation"),
        _name(o[2], "Alive.node"),
        _addr(o[3], "Alive.addr"),
        _meta(o[4], "Alive.meta"),
    )


def _dec_dead(o: list[Any]) -> Dead:
    return Dead(_uint64(o[1], "Dead.incarnation"), _name(o[2], "Dead.node"), _name(o[3], "Dead.source"))


def _dec_member(o: Any, i: int) -> MemberState:
    where = f"PushPull.states[{i}]"
    if type(o) is not list or len(o) != 5:
        raise CodecError(f"{where}: expected [name, addr, incarnation, state, meta], got {_show(o)}")
    return MemberState(
        _name(o[0], f"{where}.name"),
        _addr(o[1], f"{where}.addr"),
        _uint64(o[2], f"{where}.incarnation"),
        _state(o[3], f"{where}.state"),
        _meta(o[4], f"{where}.meta"),
    )


def _dec_push_pull(o: list[Any]) -> PushPull:
    states = o[2]
    if type(states) is not list:
        raise CodecError(f"PushPull.states: expected an array, got {_show(states)}")
    if len(states) > MAX_STATES:
        raise CodecError(f"PushPull.states: {len(states)} states, at most {MAX_STATES}")
    return PushPull(_bool(o[1], "PushPull.join"), tuple([_dec_member(s, i) for i, s in enumerate(states)]))


# type code -> (name, array length including the code, decoder)
_DECODERS: Final[dict[int, tuple[str, int, Callable[[list[Any]], Message]]]] = {
    PING: ("Ping", 5, _dec_ping),
    INDIRECT_PING: ("IndirectPing", 7, _dec_indirect),
    ACK: ("Ack", 2, _dec_ack),
    NACK: ("Nack", 2, _dec_nack),
    SUSPECT: ("Suspect", 4, _dec_suspect),
    ALIVE: ("Alive", 5, _dec_alive),
    DEAD: ("Dead", 4, _dec_dead),
    PUSH_PULL: ("PushPull", 3, _dec_push_pull),
}


# msgpack allocates an array's list when it reads the header, before its items: nested headers each claiming many
# items would let a few bytes allocate megabytes. The fast path (msgpack.unpackb) therefore admits only short arrays
# (the depth times this bound caps what it can allocate); anything else goes through _Walker, which builds every
# container item by item, checks each claim against the bytes left and bounds the nesting.
_FAST_ARRAY_LEN: Final = 64
_MAX_DEPTH: Final = 12  # deepest legitimate: packet, messages, PushPull, states, state, meta (4 levels) = 9

_SCALAR, _ARRAY, _MAP, _EXT, _INVALID = range(5)


def _kinds() -> bytes:
    kinds = bytearray([_SCALAR]) * 256  # positive/negative fixint, nil, bool, bin, float, int, str
    for b in (*range(0x80, 0x90), 0xDE, 0xDF):
        kinds[b] = _MAP
    for b in (*range(0x90, 0xA0), 0xDC, 0xDD):
        kinds[b] = _ARRAY
    for b in (0xC7, 0xC8, 0xC9, *range(0xD4, 0xD9)):
        kinds[b] = _EXT
    kinds[0xC1] = _INVALID
    return bytes(kinds)


_KIND: Final = _kinds()


class _Walker:
    """Unpacks one msgpack value with msgpack.Unpacker, one header or scalar at a time (see above)."""

    __slots__ = ("data", "size", "unpacker")

    def __init__(self, data: bytes) -> None:
        n = len(data)
        self.data = data
        self.size = n
        self.unpacker = msgpack.Unpacker(
            None, raw=False, strict_map_key=True, max_buffer_size=n, max_str_len=n, max_bin_len=n, max_ext_len=0
        )
        self.unpacker.feed(data)

    def _kind(self) -> int:
        pos = self.unpacker.tell()
        if pos >= self.size:
            raise CodecError("truncated")
        return int(_KIND[self.data[pos]])

    def _claim(self, count: int, item_bytes: int) -> None:
        if count * item_bytes > self.size - self.unpacker.tell():
            raise CodecError(f"truncated: a container claims {count} items, more than the bytes left")

    def value(self, depth: int) -> Any:
        kind = self._kind()
        if kind == _SCALAR:
            return self.unpacker.unpack()
        if kind in (_ARRAY, _MAP):
            if depth >= _MAX_DEPTH:
                raise CodecError(f"nested deeper than {_MAX_DEPTH} levels")
            if kind == _ARRAY:
                count = self.unpacker.read_array_header()
                self._claim(count, 1)
                return [self.value(depth + 1) for _ in range(count)]
            count = self.unpacker.read_map_header()
            self._claim(count, 2)
            out: dict[Any, Any] = {}
            for _ in range(count):
                if self._kind() != _SCALAR:
                    raise CodecError("a map key is not a str")
                key = self.unpacker.unpack()
                if not isinstance(key, str | bytes):
                    raise CodecError(f"a map key is not a str but {_show(key)}")
                out[key] = self.value(depth + 1)
            return out
        if kind == _EXT:
            raise CodecError("msgpack ext types are not part of the gossip protocol")
        raise CodecError("invalid msgpack byte 0xc1")

    def document(self) -> Any:
        value = self.value(0)
        extra = self.size - self.unpacker.tell()
        if extra:
            raise CodecError(f"{extra} trailing bytes after the msgpack value")
        return value


def _unpack(data: Any, what: str) -> Any:
    """msgpack-unpack ``data`` with bounded allocation; CodecError on anything wrong."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise CodecError(f"{what}: empty")
    if n > MAX_STREAM_FRAME:
        raise CodecError(f"{what}: {n} bytes, at most {MAX_STREAM_FRAME}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=min(n, _FAST_ARRAY_LEN),
            max_map_len=min(n // 2, MAX_STATES + 1),  # maps are not presized: no amplification
            max_ext_len=0,  # no ext types at all (timestamps included)
        )
    except Exception:  # any failure, a long array included: the careful path decides, and says why
        pass
    try:
        return _Walker(data).document()
    except CodecError as exc:
        raise CodecError(f"{what}: malformed msgpack: {exc}") from None
    except msgpack.OutOfData:
        raise CodecError(f"{what}: malformed msgpack: truncated") from None
    except Exception as exc:  # FormatError, UnicodeDecodeError, limits, ...
        raise CodecError(f"{what}: malformed msgpack: {str(exc)[:120] or type(exc).__name__}") from None


def _message_from(obj: Any) -> Message:
    if type(obj) is not list or not obj:
        raise CodecError(f"a message must be a non-empty array, got {_show(obj)}")
    code = obj[0]
    if type(code) is not int:
        raise CodecError(f"message type code must be an int, got {_show(code)}")
    spec = _DECODERS.get(code)
    if spec is None:
        raise CodecError(f"unknown message type code {_show(code)}")
    name, arity, decoder = spec
    if len(obj) != arity:
        raise CodecError(f"{name}: expected {arity - 1} fields, got {len(obj) - 1}")
    return decoder(obj)


def decode_message(obj: Any) -> Message:
    """The message of an unpacked msgpack object (the array :func:`encode_message` wrote), or of its bytes."""
    if isinstance(obj, bytes | bytearray | memoryview):
        obj = _unpack(obj, "message")
    try:
        return _message_from(obj)
    except CodecError:
        raise
    except Exception as exc:  # a safety net: nothing but CodecError leaves the codec
        raise CodecError(f"invalid message: {type(exc).__name__}") from None


def decode_packet(data: bytes) -> tuple[str, str, list[Message]]:
    """``(cluster, sender, messages)`` of a packet; CodecError, and only that, on anything else."""
    obj = _unpack(data, "packet")
    try:
        if type(obj) is not list or not obj:
            raise CodecError(f"packet: expected a msgpack array, got {_show(obj)}")
        version = obj[0]
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise CodecError(
                f"protocol version mismatch: the packet has {_show(version)}, this node speaks {PROTOCOL_VERSION}"
            )
        if len(obj) != 4:
            raise CodecError(f"packet: expected [version, cluster, sender, messages], got {len(obj)} items")
        _, cluster, sender, items = obj
        _name(cluster, "packet cluster", empty=True)
        _name(sender, "packet sender")
        if type(items) is not list:
            raise CodecError(f"packet messages: expected an array, got {_show(items)}")
        if len(items) > MAX_MESSAGES:
            raise CodecError(f"packet: {len(items)} messages, at most {MAX_MESSAGES}")
        messages: list[Message] = []
        for i, item in enumerate(items):
            try:
                messages.append(_message_from(item))
            except CodecError as exc:
                raise CodecError(f"message {i}: {exc}") from None
        return cluster, sender, messages
    except CodecError:
        raise
    except Exception as exc:  # a safety net: nothing but CodecError leaves the codec
        raise CodecError(f"invalid packet: {type(exc).__name__}") from None


# -- TCP stream framing ------------------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """``payload`` behind its 4-byte big-endian length, for a TCP stream (push-pull, fallback ping)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"a stream frame carries bytes, got {type(payload).__name__}")
    n = len(payload)
    if n > MAX_STREAM_FRAME:
        raise CodecError(f"stream frame of {n} bytes, at most {MAX_STREAM_FRAME}")
    return _FRAME.pack(n) + bytes(payload)


def frame_length(header: bytes) -> int:
    """The payload length announced by a 4-byte frame header; CodecError over MAX_STREAM_FRAME."""
    if not isinstance(header, bytes | bytearray | memoryview) or len(header) != FRAME_HEADER:
        raise CodecError(f"a stream frame header is {FRAME_HEADER} bytes")
    (n,) = _FRAME.unpack(header)
    if n > MAX_STREAM_FRAME:
        raise CodecError(f"stream frame of {n} bytes announced, at most {MAX_STREAM_FRAME}")
    return int(n)
