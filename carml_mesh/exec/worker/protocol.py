"""Node <-> worker wire format, pure: a 4-byte big-endian length, then one msgpack map.

Tensors travel as ``{"dtype": "float32", "shape": [..], "data": <raw little-endian bytes>}``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # 1 GiB: far above any request the node accepts

# The dtypes that may cross the wire. Anything else is refused, so a frame cannot name an arbitrary numpy type.
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    )
}


class ProtocolError(Exception):
    """A frame or tensor that does not follow the wire format."""


def pack(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
    return int(length)


def unpack(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable frame: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"frame is a {type(message).__name__}, not a map")
    return message


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    name = array.dtype.name
    if name not in DTYPES:
        raise ProtocolError(f"dtype {name} cannot cross the wire")
    data = np.asarray(array, dtype=DTYPES[name])  # not ascontiguousarray: it turns a 0-d array into shape (1,)
    return {"dtype": name, "shape": list(data.shape), "data": data.tobytes()}  # tobytes(): C order, any strides


def decode_tensor(obj: Any) -> np.ndarray:
    """The array a wire tensor describes; a read-only view of its bytes, no copy."""
    if not isinstance(obj, dict):
        raise ProtocolError("tensor must be a map with dtype, shape and data")
    dtype = DTYPES.get(obj["dtype"]) if isinstance(obj.get("dtype"), str) else None
    if dtype is None:
        raise ProtocolError(f"unsupported tensor dtype {obj.get('dtype')!r}; use one of {', '.join(DTYPES)}")
    shape = obj.get("shape")
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"tensor shape must be a list of non-negative integers, got {shape!r}")
    data = obj.get("data")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("tensor data must be raw bytes")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(data):
        raise ProtocolError(
            f"tensor of shape {list(shape)} and dtype {obj['dtype']} needs {count * dtype.itemsize} bytes, "
            f"got {len(data)}"
        )
    try:
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError as exc:  # more than 64 dimensions, or a dimension numpy cannot index (with another one 0)
        raise ProtocolError(f"tensor shape {list(shape)} is not possible: {exc}") from None
