"""Request bodies of /api/predict (JSON, msgpack, multipart) into InferRequests; answers into JSON or msgpack."""

from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from typing import Any

import msgpack
import numpy as np

from ..dataplane import tensors as wire
from ..dataplane.types import DEFAULT_TOP_K, InferRequest
from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ..headers import Hop
from ..trace.setup import LEVELS, parse_level

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = (MSGPACK, "application/x-msgpack", "application/vnd.msgpack")
MAX_JSON_ELEMENTS = 16_000_000  # numbers in one JSON tensor: bounded before any allocation
_FIELDS = ("model", "version", "framework", "device", "node", "top_k", "inputs", "outputs", "exact_dtypes", "trace")


def wants_msgpack(accept: str, content_type: str) -> bool:
    """Answer in msgpack when asked to, or when the request came in msgpack and Accept leaves it open."""
    accept = accept.lower()
    if any(t in accept for t in MSGPACK_TYPES):
        return True
    return content_type in MSGPACK_TYPES and accept in ("", "*/*")


def encode(payload: Any, as_msgpack: bool) -> bytes:
    if as_msgpack:
        packed: bytes = msgpack.packb(payload, use_bin_type=True, default=_msgpack_default)
        return packed
    try:
        return json.dumps(payload, default=_json_default, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:  # a NaN or inf outside an array (a score of a broken model): null, as JSON has no NaN
        return json.dumps(_nan_to_none(payload), default=_json_default, allow_nan=False, separators=(",", ":")).encode()


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        return {"dtype": obj.dtype.name, "shape": list(obj.shape), "data": a.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        data = obj.astype(np.float64).tolist() if obj.dtype.kind == "f" else obj.tolist()
        if obj.dtype.kind == "f" and not np.isfinite(obj).all():
            data = _nan_to_none(data)
        return {"dtype": obj.dtype.name, "shape": list(obj.shape), "data": data}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _nan_to_none(data: Any) -> Any:
    if isinstance(data, list | tuple):
        return [_nan_to_none(x) for x in data]
    if isinstance(data, dict):
        return {k: _nan_to_none(v) for k, v in data.items()}
    return None if isinstance(data, float) and not math.isfinite(data) else data


class BodyBuffers:
    """Buffers for large request bodies, reused once nothing refers to them any more.

    A msgpack body's tensor stays a view of its buffer until the worker frame is written (see unpackb_views), so a
    buffer is free again only when no memoryview or array holds it: its reference count says so. Reuse spares each
    602 KB tensor request a fresh allocation that the allocator, under a batching load, keeps handing back to the
    kernel and faulting in again (about 50 page faults and a 602 KB memset per request). At most ``max_bytes`` are
    kept; a body beyond that gets a buffer of its own.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self._held = 0
        self._by_size: dict[int, list[bytearray]] = {}

    def get(self, size: int) -> bytearray:
        kept = self._by_size.setdefault(size, [])
        for buffer in kept:
            # the list's reference, this loop's and getrefcount's argument: nothing else uses it
            if sys.getrefcount(buffer) == 3:
                return buffer
        buffer = bytearray(size)
        if self._held + size <= self.max_bytes:
            kept.append(buffer)
            self._held += size
        return buffer


def parse_json_body(body: bytes, hop: Hop | None = None) -> InferRequest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise BadRequest(f"malformed JSON: {exc}") from None
    return parse_document(doc, binary=False, hop=hop)


def parse_msgpack_body(body: bytes | bytearray, hop: Hop | None = None) -> InferRequest:
    """Large raw tensors stay views of ``body`` (no copy) all the way to the worker: ``body`` must not change."""
    try:
        doc = wire.unpackb_views(body, raw=False, strict_map_key=True, max_bin_len=len(body), max_str_len=len(body))
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise BadRequest(f"malformed msgpack: {exc}") from None
    return parse_document(doc, binary=True, hop=hop)


def parse_document(doc: Any, *, binary: bool, hop: Hop | None = None) -> InferRequest:
    if not isinstance(doc, dict):
        raise BadRequest(f"the body must be a map with {', '.join(_FIELDS)}; got {type(doc).__name__}")
    unknown = sorted(str(k) for k in doc if k not in _FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; fields are {', '.join(_FIELDS)}")
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise BadRequest("'inputs' must be a non-empty list of {image: ...} or {tensor: ...} items")
    images: list[bytes] = []
    tensors: dict[str, list[np.ndarray]] = {}
    for n, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ("image", "tensor", "tensors"):
            raise BadRequest(
                f"inputs[{n}] must be one of {{image: ...}}, {{tensor: ...}} or {{tensors: {{name: ...}}}}"
            )
        kind, value = next(iter(item.items()))
        if kind == "image":
            images.append(_image(value, n, binary))
        elif kind == "tensor":
            tensors.setdefault("", []).append(_tensor(value, f"inputs[{n}].tensor"))
        else:
            if not isinstance(value, dict) or not value:
                raise BadRequest(f"inputs[{n}].tensors must map input names to tensors")
            for name, t in value.items():
                tensors.setdefault(str(name), []).append(_tensor(t, f"inputs[{n}].tensors.{name}"))
    if images and tensors:
        raise BadRequest("one request holds either images or tensors, not both")
    stacked = None
    if tensors:
        counts = {len(v) for v in tensors.values()}
        if len(counts) != 1 or counts.pop() != len(items):
            raise BadRequest("every input item must give the same tensors")
        stacked = {}
        for name, arrays in tensors.items():
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1:
                raise BadRequest(f"tensors of input {name or 'the model'} differ in shape: {sorted(shapes)}")
            # one item: a view with the batch axis added (np.stack would copy the 602 KB of an image tensor)
            stacked[name] = arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)
    return InferRequest(
        model=_str(doc, "model", required=True),
        version=_str(doc, "version") or None,
        framework=_str(doc, "framework") or None,
        device=_str(doc, "device") or None,
        node=_str(doc, "node") or None,
        top_k=_top_k(doc.get("top_k", DEFAULT_TOP_K)),
        images=tuple(images),
        tensors=stacked,
        outputs=_outputs(doc.get("outputs", False)),
        exact_dtypes=_flag(doc, "exact_dtypes"),
        trace_level=trace_level(doc.get("trace")),
        hop=hop or Hop(),
    )


def _outputs(value: Any) -> bool | tuple[str, ...]:
    """'outputs': true for every raw output tensor, a list of output names for those, false (default) for the
    model's own answer (predictions, when it classifies)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise BadRequest(f"'outputs' must be true, false or a non-empty list of output names, got {value!r}")


def _flag(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false, got {value!r}")
    return value


def _str(doc: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise BadRequest(f"'{key}' is required")
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and key == "version":
        return str(value)
    if not isinstance(value, str):
        kind = "bytes" if isinstance(value, memoryview) else type(value).__name__  # a large bin: still bytes
        raise BadRequest(f"'{key}' must be a string, got {kind}")
    return value


def trace_level(value: Any, field: str = "trace") -> int | None:
    """The trace level a body asks for ('none' ... 'framework'), or None when it asks for none in particular."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field!r} must be a string: one of {', '.join(LEVELS)}; got {value!r}")
    try:
        return parse_level(value, repr(field))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _top_k(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdecimal():  # isdigit() admits '²', which int() refuses
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"'top_k' must be an integer, got {value!r}")
    return value


def _image(value: Any, n: int, binary: bool) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview):  # a large bin of a msgpack body (see unpackb_views)
        return bytes(value)
    if isinstance(value, str):
        if value.startswith("data:"):
            value = value.partition(",")[2]
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"inputs[{n}].image is not valid base64") from None
    kind = "raw bytes or a base64 string" if binary else "a base64 string"
    raise BadRequest(f"inputs[{n}].image must be {kind}")


def _tensor(value: Any, where: str) -> np.ndarray:
    """A tensor item: ``{dtype, shape, data: bytes}`` (msgpack), ``{dtype?, shape?, data: [..]}`` or a bare list."""
    if isinstance(value, list):
        value = {"data": value}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a list of numbers or a map with dtype, shape and data")
    data = value.get("data")
    if isinstance(data, bytes | memoryview):  # memoryview: a large bin of a msgpack body, not copied
        try:
            return wire.decode(value)
        except wire.TensorError as exc:
            raise BadRequest(f"{where}: {exc}") from None
    dtype_name = value.get("dtype", "float32")
    dtype = wire.DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise BadRequest(f"{where}: unsupported dtype {dtype_name!r}; use one of {', '.join(wire.DTYPES)}")
    if not isinstance(data, list):
        raise BadRequest(f"{where}.data must be a list of numbers (or raw bytes in msgpack)")
    flat = _flatten(data, where)
    shape = value.get("shape")
    try:
        with np.errstate(over="raise"):  # 1e300 as float32 would otherwise become inf with only a warning
            array = np.asarray(flat, dtype=dtype)
    except (ValueError, TypeError, OverflowError, FloatingPointError):
        raise BadRequest(f"{where}.data holds values that are not {dtype.name}") from None
    if shape is None:
        nested = _nested_shape(data)
        if math.prod(nested) != array.size or (array.size and not _is_rectangular(data, nested)):
            raise BadRequest(f"{where}.data is ragged: nested lists must all have the same length")
        return _reshape(array, nested, where)
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where}.shape must be a list of non-negative integers, got {shape!r}")
    if math.prod(shape) != array.size:
        raise BadRequest(f"{where}: shape {shape} needs {math.prod(shape)} values, data has {array.size}")
    return _reshape(array, shape, where)


def _reshape(array: np.ndarray, shape: Any, where: str) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError as exc:  # more than 64 dimensions, or a dimension numpy cannot index (with another one 0)
        raise BadRequest(f"{where}: shape {list(shape)} is not possible: {exc}") from None


def _is_rectangular(data: list[Any], shape: tuple[int, ...]) -> bool:
    """Whether every list at depth d has shape[d] items and numbers appear only at the innermost depth."""
    level: list[Any] = [data]
    for n in shape:
        nxt: list[Any] = []
        for x in level:
            if not isinstance(x, list) or len(x) != n:
                return False
            nxt.extend(x)
        level = nxt
    return not any(isinstance(x, list) for x in level)


def _flatten(data: list[Any], where: str) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            if not isinstance(x, int | float) or x is None:
                raise BadRequest(f"{where}.data must hold only numbers, found {type(x).__name__}")
            out.append(x)
            if len(out) > MAX_JSON_ELEMENTS:
                raise PayloadTooLarge(f"{where} holds more than {MAX_JSON_ELEMENTS} numbers")
        else:
            stack.pop()
    return out


def _nested_shape(data: list[Any]) -> tuple[int, ...]:
    shape = []
    level: Any = data
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
    total = math.prod(shape)
    return tuple(shape) if total else (0,)


def check_content_type(content_type: str) -> str:
    if content_type in (JSON, *MSGPACK_TYPES, "multipart/form-data"):
        return content_type
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'} is not accepted; send application/json, application/msgpack "
        "or multipart/form-data"
    )
