"""The node <-> worker wire format: length-prefixed msgpack frames and raw-bytes tensors."""

from __future__ import annotations

import re
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carml_mesh.exec.worker import protocol
from carml_mesh.exec.worker.protocol import (
    DTYPES,
    HEADER,
    MAX_FRAME,
    ProtocolError,
    decode_tensor,
    encode_tensor,
    frame_length,
    pack,
    unpack,
)

# --- frames -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"op": "predict", "id": 7, "args": [1, 2.5, None, True], "nested": {"a": {"b": [b"\x00\xff"]}}},
        {"text": "h\u00e9llo \u2603", "big": 2**63, "neg": -(2**63), "bytes": b"x" * 70_000},
        {1: "integer keys are allowed"},
    ],
)
def test_pack_frame_length_unpack_round_trip(message: dict[Any, Any]) -> None:
    frame = pack(message)
    header, body = frame[: HEADER.size], frame[HEADER.size :]
    assert HEADER.size == 4
    assert frame_length(header) == len(body)
    assert header == struct.pack(">I", len(body))
    assert unpack(body) == message


def test_bytes_stay_bytes_and_strings_stay_strings() -> None:
    out = unpack(pack({"b": b"abc", "s": "abc"})[4:])
    assert type(out["b"]) is bytes and type(out["s"]) is str


def test_frame_length_limits() -> None:
    assert frame_length(struct.pack(">I", 0)) == 0
    assert frame_length(struct.pack(">I", MAX_FRAME)) == MAX_FRAME
    with pytest.raises(ProtocolError, match=f"frame length {MAX_FRAME + 1} exceeds {MAX_FRAME}"):
        frame_length(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        frame_length(b"\xff\xff\xff\xff")


def test_pack_refuses_a_frame_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_FRAME", 16)
    assert len(pack({"a": b"x" * 8})) <= 4 + 16
    with pytest.raises(ProtocolError, match="exceeds 16"):
        pack({"a": b"x" * 32})


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "undecodable frame"),
        (b"\xc1", "undecodable frame"),  # a reserved msgpack byte
        (b"\x82\xa1a", "undecodable frame"),  # a map cut short
        (msgpack.packb({"a": 1}) + b"\x01", "undecodable frame"),  # extra data after the map
        (b"\xa3\xff\xfe\xfd", "undecodable frame"),  # a str that is not UTF-8
    ],
)
def test_unpack_garbage(body: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        unpack(body)


@pytest.mark.parametrize(
    ("value", "kind"), [([1, 2], "list"), (3, "int"), ("x", "str"), (None, "NoneType"), (b"m", "bytes")]
)
def test_unpack_refuses_a_frame_that_is_not_a_map(value: Any, kind: str) -> None:
    with pytest.raises(ProtocolError, match=f"frame is a {kind}, not a map"):
        unpack(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64))
def test_unpack_of_arbitrary_bytes_raises_only_protocol_error(body: bytes) -> None:
    try:
        result = unpack(body)
    except ProtocolError:
        return
    assert isinstance(result, dict)


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"\x81", b"\x82", b"\xde\x00\x02", b"\xdf\x00\x00\x00\x01"]),
    rest=st.binary(max_size=32),
)
def test_unpack_of_map_like_garbage_raises_only_protocol_error(prefix: bytes, rest: bytes) -> None:
    try:
        result = unpack(prefix + rest)
    except ProtocolError:
        return
    assert isinstance(result, dict)


# --- tensors ------------------------------------------------------------------------------------------------------


def sample(name: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(name)
    n = int(np.prod(shape))
    if dtype.kind == "b":
        return (np.arange(n) % 3 == 0).reshape(shape)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = np.array([0.0, -0.0, 1.5, -2.25, info.max, info.min, info.tiny, np.inf, -np.inf], dtype=dtype)
    else:
        info = np.iinfo(dtype)
        values = np.array([0, 1, info.max, info.min, info.max - 1], dtype=dtype)
    return np.resize(values, n).reshape(shape).astype(dtype)


SHAPES = [(), (0,), (3, 0, 2), (5,), (2, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(DTYPES))
def test_tensor_round_trip_for_every_wire_dtype(name: str, shape: tuple[int, ...]) -> None:
    array = sample(name, shape)
    wire = encode_tensor(array)
    assert wire["dtype"] == name
    assert wire["shape"] == list(shape)
    assert isinstance(wire["data"], bytes)
    assert len(wire["data"]) == array.size * array.dtype.itemsize
    # through a real frame, as it crosses the pipe
    back = decode_tensor(unpack(pack({"t": wire})[4:])["t"])
    assert back.dtype == DTYPES[name]
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert not back.flags.writeable  # a view of the frame's bytes


def test_float_nan_survives_the_round_trip() -> None:
    array = np.array([np.nan, 1.0], dtype=np.float32)
    back = decode_tensor(encode_tensor(array))
    assert np.isnan(back[0]) and back[1] == 1.0


def test_data_is_little_endian_whatever_the_input_byte_order() -> None:
    big = np.array([1, 256], dtype=">u2")
    wire = encode_tensor(big)
    assert wire["dtype"] == "uint16"
    assert wire["data"] == b"\x01\x00\x00\x01"
    np.testing.assert_array_equal(decode_tensor(wire), [1, 256])
    assert decode_tensor({"dtype": "int32", "shape": [1], "data": b"\x01\x00\x00\x00"})[0] == 1


def test_non_contiguous_arrays_are_encoded_in_logical_order() -> None:
    base = np.arange(24, dtype=np.int64).reshape(4, 6)
    for view in (base.T, base[:, ::2], base[::-1]):
        back = decode_tensor(encode_tensor(view))
        np.testing.assert_array_equal(back, view)


@pytest.mark.parametrize("data", [bytearray(b"\x00" * 8), memoryview(b"\x00" * 8)], ids=["bytearray", "memoryview"])
def test_decode_accepts_bytes_like_data(data: Any) -> None:
    np.testing.assert_array_equal(decode_tensor({"dtype": "float32", "shape": [2], "data": data}), [0.0, 0.0])


@pytest.mark.parametrize(
    "array", [np.zeros(2, np.complex64), np.array(["a"]), np.array([None], dtype=object), np.zeros(1, "M8[s]")]
)
def test_encode_refuses_dtypes_that_cannot_cross_the_wire(array: np.ndarray) -> None:
    with pytest.raises(ProtocolError, match=re.escape(f"dtype {array.dtype.name} cannot cross the wire")):
        encode_tensor(array)


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([1, 2], "tensor must be a map with dtype, shape and data"),
        (None, "tensor must be a map with dtype, shape and data"),
        ({"dtype": "complex64", "shape": [1], "data": b"\x00" * 8}, "unsupported tensor dtype 'complex64'; use one of"),
        ({"dtype": "object", "shape": [1], "data": b"\x00" * 8}, "unsupported tensor dtype 'object'"),
        ({"dtype": "<f4", "shape": [1], "data": b"\x00" * 4}, "unsupported tensor dtype '<f4'"),
        ({"shape": [1], "data": b"\x00"}, "unsupported tensor dtype None"),
        ({"dtype": ["float32"], "shape": [1], "data": b"\x00" * 4}, "unsupported tensor dtype ['float32']"),
        ({"dtype": "uint8", "shape": [-1], "data": b""}, "shape must be a list of non-negative integers, got [-1]"),
        ({"dtype": "uint8", "shape": [2.0], "data": b"\x00\x00"}, "non-negative integers, got [2.0]"),
        ({"dtype": "uint8", "shape": ["2"], "data": b"\x00\x00"}, "non-negative integers"),
        ({"dtype": "uint8", "shape": [True], "data": b"\x00"}, "non-negative integers, got [True]"),
        ({"dtype": "uint8", "shape": 2, "data": b"\x00\x00"}, "non-negative integers, got 2"),
        ({"dtype": "uint8", "data": b""}, "non-negative integers, got None"),
        ({"dtype": "uint8", "shape": [2], "data": [0, 0]}, "tensor data must be raw bytes"),
        ({"dtype": "uint8", "shape": [2], "data": "\x00\x00"}, "tensor data must be raw bytes"),
        ({"dtype": "uint8", "shape": [2]}, "tensor data must be raw bytes"),
        (
            {"dtype": "float32", "shape": [2, 3], "data": b"\x00" * 20},
            "tensor of shape [2, 3] and dtype float32 needs 24 bytes, got 20",
        ),
        ({"dtype": "int64", "shape": [], "data": b""}, "needs 8 bytes, got 0"),
        ({"dtype": "uint8", "shape": [0], "data": b"\x00"}, "needs 0 bytes, got 1"),
        ({"dtype": "uint8", "shape": [0, 2**70], "data": b""}, f"tensor shape [0, {2**70}] is not possible"),
        ({"dtype": "uint8", "shape": [1] * 65, "data": b"\x00"}, "is not possible"),
    ],
)
def test_decode_tensor_refusals(obj: Any, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_tensor(obj)
    assert fragment in str(info.value)


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.binary(max_size=16)
_any = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=8
)
_tensor_like = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from([*DTYPES, "complex64", "object", "f4"]) | _any,
        "shape": st.lists(st.integers(-2, 2**66) | st.booleans() | _scalars, max_size=70) | _any,
        "data": st.binary(max_size=64) | _any,
    },
)


@settings(max_examples=400, deadline=None)
@given(obj=_tensor_like | _any)
def test_decode_tensor_of_arbitrary_dicts_raises_only_protocol_error(obj: Any) -> None:
    try:
        array = decode_tensor(obj)
    except ProtocolError:
        return
    assert isinstance(array, np.ndarray)
    assert array.nbytes == len(obj["data"])


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(list(DTYPES)),
    shape=st.lists(st.integers(0, 4), max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_tensors_round_trip(name: str, shape: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * DTYPES[name].itemsize, dtype=np.uint8).tobytes()
    array = np.frombuffer(raw, dtype=DTYPES[name]).reshape(shape)
    back = decode_tensor(unpack(pack({"t": encode_tensor(array)})[4:])["t"])
    assert back.tobytes() == array.tobytes()
    assert back.shape == tuple(shape)


# --- unpackb_views: msgpack.unpackb without copying large bins --------------------------------------------------


def _plain(obj: Any) -> Any:
    """``obj`` with every memoryview turned back into bytes (what msgpack.unpackb would have returned)."""
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def test_unpackb_views_returns_large_bins_as_views_of_the_body() -> None:
    tensor = np.arange(3 * 224 * 224, dtype=np.float32).tobytes()
    doc = {
        "model": "m",
        "version": 2,
        "top_k": -3,
        "ints": [0, 127, 128, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -1, -32, -33, -128, -129, -(2**63)],
        "floats": [0.5, -1e300, float("inf")],
        "text": "h\u00e9llo" * 20 + "x" * 300,
        "flags": [None, True, False],
        "small": b"\x00\xff",
        "inputs": [{"tensor": {"dtype": "float32", "shape": [3, 224, 224], "data": tensor}}],
        "map16": {str(n): n for n in range(20)},
    }
    body = bytearray(msgpack.packb(doc, use_bin_type=True) + msgpack.packb(1.5, use_single_float=True)[:0])
    out = protocol.unpackb_views(body, raw=False)
    data = out["inputs"][0]["tensor"]["data"]
    assert isinstance(data, memoryview) and data.obj is body  # a view of the body, not a copy
    assert type(out["small"]) is bytes and type(out["text"]) is str
    assert _plain(out) == msgpack.unpackb(bytes(body), raw=False) == doc
    single = msgpack.packb({"f": 1.25, "pad": b"\x01" * (70 << 10)}, use_bin_type=True, use_single_float=True)
    assert _plain(protocol.unpackb_views(single)) == msgpack.unpackb(single)


@pytest.mark.parametrize(
    "body",
    [
        msgpack.packb({"a": b"x" * (70 << 10)}) + b"\x00",  # trailing data
        msgpack.packb({"a": b"x" * (70 << 10)})[:-1],  # truncated
        msgpack.packb({1: b"x" * (70 << 10)}),  # an integer key
        msgpack.packb({"a": b"x" * (70 << 10), "e": msgpack.ExtType(5, b"ab")}),  # an ext type
        b"\x81\xa1a\xc1" + b"x" * (70 << 10),  # the never-used byte 0xc1
        b"\x81\xa1a\xa2\xff\xfe" + b"x" * (70 << 10),  # a string of invalid UTF-8, then trailing data
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_unpackb_views_accepts_and_refuses_exactly_as_unpackb(body: bytes, strict: bool) -> None:
    kwargs = {"raw": False, "strict_map_key": strict}
    try:
        expected: Any = msgpack.unpackb(body, **kwargs)
    except Exception as exc:
        with pytest.raises(type(exc)):
            protocol.unpackb_views(body, **kwargs)
    else:
        assert _plain(protocol.unpackb_views(body, **kwargs)) == expected


def test_unpackb_views_leaves_many_small_objects_to_msgpack() -> None:
    doc = {"data": list(range(10_000)), "pad": b"x" * (70 << 10)}  # over its object budget: msgpack decodes it all
    out = protocol.unpackb_views(msgpack.packb(doc))
    assert out == doc and type(out["pad"]) is bytes


_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary()
_docs = st.recursive(
    _leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20
)


@given(_docs, st.integers(0, 2))
@settings(max_examples=150, deadline=None)
def test_unpackb_views_matches_unpackb_on_arbitrary_documents(doc: Any, big: int) -> None:
    body = msgpack.packb([doc, b"\x07" * (big * (40 << 10))], use_bin_type=True)  # 0, 40 or 80 KiB of bin
    # compared packed again: NaN != NaN would fail an equality of the documents themselves
    assert msgpack.packb(_plain(protocol.unpackb_views(body, raw=False))) == msgpack.packb(msgpack.unpackb(body))


def test_unpack_of_a_large_frame_keeps_tensors_as_views() -> None:
    array = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    body = bytearray(pack({"op": "infer", "tensors": {"x": encode_tensor(array)}})[HEADER.size :])
    wire = unpack(body)["tensors"]["x"]
    assert isinstance(wire["data"], memoryview)
    decoded = decode_tensor(wire)
    np.testing.assert_array_equal(decoded, array)
    assert np.shares_memory(decoded, np.frombuffer(body, np.uint8))


def test_encode_tensor_view_shares_memory_and_falls_back_to_bytes() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    wire = encode_tensor(array, view=True)
    assert isinstance(wire["data"], memoryview) and wire["data"].readonly
    assert np.shares_memory(np.frombuffer(wire["data"], np.float32), array)
    assert bytes(wire["data"]) == encode_tensor(array)["data"]
    for other in (array.T, np.asarray(np.float32(3.0))):  # strided, 0-d: copied into bytes as before
        copied = encode_tensor(other, view=True)
        assert type(copied["data"]) is bytes and copied == encode_tensor(other)
    swapped = array.astype(">f4")  # converted to little-endian first: a view of that conversion, the same bytes
    assert bytes(encode_tensor(swapped, view=True)["data"]) == encode_tensor(swapped)["data"] == array.tobytes()
