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


class Chunks:
    """Byte strings that cross the wire as one bin, their concatenation, and that the node writes one after the
    other (carml_mesh.exec.worker_process.write_frame) instead of joining them: the batcher's merged tensors, which
    would otherwise be copied into a new buffer of several MB (page faults and all) for every batch."""

    __slots__ = ("nbytes", "parts")

    def __init__(self, parts: list[bytes | bytearray | memoryview]) -> None:
        self.parts = [memoryview(p).cast("B") for p in parts]
        self.nbytes = sum(p.nbytes for p in self.parts)

    def __len__(self) -> int:
        return self.nbytes

    def join(self) -> bytes:
        return b"".join(self.parts)


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, Chunks):
        return obj.join()
    raise TypeError(f"cannot serialize {type(obj).__name__!r} object")


def pack(message: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True, default=_pack_default)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes | bytearray) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
    return int(length)


def unpack(body: bytes | bytearray) -> dict[str, Any]:
    """A frame's message; bins of VIEW_MIN bytes or more are memoryviews of ``body`` (see unpackb_views)."""
    try:
        message = unpackb_views(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable frame: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"frame is a {type(message).__name__}, not a map")
    return message


# --- msgpack without copying large byte strings ---------------------------------------------------------------------
# msgpack.unpackb copies every bin into a new bytes object; a request's 602 KB tensor would be copied once more for
# nothing. `unpackb_views` reads the common shapes (maps with str keys, arrays, str, numbers, nil, bool, bin) itself
# and returns each bin of VIEW_MIN bytes or more as a memoryview into ``body``; anything else (ext types, non-str map
# keys, bad UTF-8, truncated or trailing data, a document of many small objects) goes to msgpack.unpackb, so what is
# accepted, refused and raised is exactly unpackb's.
VIEW_MIN = 64 << 10
_MAX_OBJECTS = 4096  # more objects than this (a tensor as a list of numbers): msgpack's C decoder is faster
_MAX_DEPTH = 64
_U8, _U16, _U32, _U64 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")
_I8, _I16, _I32, _I64 = struct.Struct(">b"), struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">q")
_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")
_INTS = {0xCC: _U8, 0xCD: _U16, 0xCE: _U32, 0xCF: _U64, 0xD0: _I8, 0xD1: _I16, 0xD2: _I32, 0xD3: _I64}
_FLOATS = {0xCA: _F32, 0xCB: _F64}
_LENGTHS = {0xC4: _U8, 0xC5: _U16, 0xC6: _U32, 0xD9: _U8, 0xDA: _U16, 0xDB: _U32, 0xDC: _U16, 0xDD: _U32}
_LENGTHS |= {0xDE: _U16, 0xDF: _U32}


class _Unsupported(Exception):
    """Not for the view reader: msgpack.unpackb decides."""


def unpackb_views(body: bytes | bytearray | memoryview, **kwargs: Any) -> Any:
    """``msgpack.unpackb(body, **kwargs)``, except that bins of VIEW_MIN bytes or more are memoryviews of ``body``.

    Only with ``raw=False`` (unpackb's default); map keys must be strings for the fast path.
    """
    if len(body) >= VIEW_MIN and not kwargs.get("raw", False):
        view = memoryview(body).cast("B")
        reader = _ViewReader(view)
        try:
            obj = reader.read(0)
            if reader.pos == len(view):
                return obj
        except (_Unsupported, struct.error, IndexError, UnicodeDecodeError):
            pass
    return msgpack.unpackb(body, **kwargs)


class _ViewReader:
    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0
        self.objects = 0

    def _length(self, code: int) -> int:
        s = _LENGTHS[code]
        (n,) = s.unpack_from(self.view, self.pos)
        self.pos += s.size
        if n > len(self.view) - self.pos:  # each item or byte needs at least one byte: truncated or bogus
            raise _Unsupported
        return int(n)

    def _bytes(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.view):
            raise _Unsupported
        chunk = self.view[self.pos : end]
        self.pos = end
        return chunk

    def read(self, depth: int) -> Any:
        self.objects += 1
        if self.objects > _MAX_OBJECTS or depth > _MAX_DEPTH:
            raise _Unsupported
        code = self.view[self.pos]
        self.pos += 1
        if code <= 0x7F:
            return code
        if code >= 0xE0:
            return code - 0x100
        if 0xA0 <= code <= 0xBF:
            return str(self._bytes(code & 0x1F), "utf-8")
        if 0x80 <= code <= 0x8F:
            return self._map(code & 0x0F, depth)
        if 0x90 <= code <= 0x9F:
            return [self.read(depth + 1) for _ in range(code & 0x0F)]
        if code == 0xC0:
            return None
        if code in (0xC2, 0xC3):
            return code == 0xC3
        if (s := _INTS.get(code) or _FLOATS.get(code)) is not None:
            (value,) = s.unpack_from(self.view, self.pos)
            self.pos += s.size
            return value
        if code in (0xC4, 0xC5, 0xC6):
            data = self._bytes(self._length(code))
            return data if len(data) >= VIEW_MIN else bytes(data)
        if code in (0xD9, 0xDA, 0xDB):
            return str(self._bytes(self._length(code)), "utf-8")
        if code in (0xDC, 0xDD):
            return [self.read(depth + 1) for _ in range(self._length(code))]
        if code in (0xDE, 0xDF):
            return self._map(self._length(code), depth)
        raise _Unsupported  # ext types, 0xc1

    def _map(self, n: int, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _ in range(n):
            key = self.read(depth + 1)
            if not isinstance(key, str):
                raise _Unsupported
            out[key] = self.read(depth + 1)
        return out


def encode_tensor(array: np.ndarray, *, view: bool = False) -> dict[str, Any]:
    """The wire form of ``array``; ``view``: its data is a read-only memoryview of the array when that already is
    C-ordered little-endian (no copy; the array must not change until the tensor is written), else bytes."""
    name = array.dtype.name
    if name not in DTYPES:
        raise ProtocolError(f"dtype {name} cannot cross the wire")
    data = np.asarray(array, dtype=DTYPES[name])  # not ascontiguousarray: it turns a 0-d array into shape (1,)
    if view and data.ndim and data.flags.c_contiguous:
        return {"dtype": name, "shape": list(data.shape), "data": memoryview(data.data).cast("B").toreadonly()}
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
