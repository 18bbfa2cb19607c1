"""Open Inference Protocol (KServe v2) REST bodies, with Triton's binary tensor data extension.

A pure module: bytes in, dataclasses and numpy arrays out, and back. No I/O and no HTTP; the web layer reads the
`Inference-Header-Content-Length` header, decompresses `Content-Encoding: gzip/deflate` bodies and sets headers.

Binary tensor data extension (as tritonclient speaks it):

* request: the JSON header is followed by the raw bytes of each input that has `parameters.binary_data_size`, in
  input order; the HTTP header `Inference-Header-Content-Length` gives the JSON length (absent: all JSON);
* response: an output asked for in binary (`parameters.binary_data: true` on the requested output, or the request's
  `parameters.binary_data_output: true` for outputs that do not say) has `parameters.binary_data_size` and no
  `data`; its bytes follow the JSON in output order, and the caller sends the JSON length in
  `Inference-Header-Content-Length`;
* fixed-size datatypes travel as little-endian C-order bytes (BOOL as one 0/1 byte); BYTES elements as a 4-byte
  little-endian length followed by the bytes. In JSON, BYTES elements are UTF-8 strings.

Choices where the spec leaves room:

* JSON `data` may be nested or flat; it is flattened row-major and only its element count must match the shape.
* JSON elements must have the datatype's JSON type: booleans for BOOL, integers in range for INT*/UINT*, numbers
  for FP* (also the JSON extensions `NaN`/`Infinity`/`-Infinity` and the strings "NaN", "Infinity", "-Infinity"),
  strings for BYTES. Nothing is coerced.
* NaN and +/-inf in JSON outputs are written as the strings "NaN", "Infinity" and "-Infinity", so the body stays
  strict JSON and nothing is lost: tritonclient's `as_numpy` (`np.array(data, dtype=float32)`) turns them back into
  nan/inf, and this parser accepts them in requests. Binary outputs carry them bit for bit.
* Shapes have at most 32 dimensions (numpy 1.x's limit), each at most 2**63-1 (numpy's intp; the spec says uint64).
* `parameters` values must be strings, numbers or booleans, as the spec says. Unknown top-level and tensor keys
  are ignored; unknown parameters are passed through in `InferRequest.parameters`.
* Binary BOOL bytes other than 0 read as True.
* An empty `outputs` list means all outputs, as if it were absent.
* Shared memory parameters are refused (400).
* With a compressed response (`Accept-Encoding`), `Inference-Header-Content-Length` is still the length of the JSON
  in the uncompressed body: tritonclient decompresses first, then splits.
* Classification (`parameters.classification: N` on a requested output): the output becomes a BYTES tensor of the
  top N "score:index" strings (score:index:label with labels) per row, Triton's format (`%f` for float scores).
  An output of 1 dimension is one row (result shape [N]); with 2 or more, the first dimension is the batch and the
  rest is flattened (result shape [batch, N]). Ties go to the lower index, NaN ranks last.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from carml_mesh.errors import BadRequest, InferenceFailed, PayloadTooLarge

__all__ = [
    "DATATYPES",
    "InferInput",
    "InferRequest",
    "RequestedOutput",
    "datatype_of",
    "encode_error",
    "encode_infer_response",
    "parse_infer_request",
]

DATATYPES: Mapping[str, np.dtype] = MappingProxyType(
    {
        "BOOL": np.dtype(np.bool_),
        "UINT8": np.dtype("<u1"),
        "UINT16": np.dtype("<u2"),
        "UINT32": np.dtype("<u4"),
        "UINT64": np.dtype("<u8"),
        "INT8": np.dtype("<i1"),
        "INT16": np.dtype("<i2"),
        "INT32": np.dtype("<i4"),
        "INT64": np.dtype("<i8"),
        "FP16": np.dtype("<f2"),
        "FP32": np.dtype("<f4"),
        "FP64": np.dtype("<f8"),
        "BYTES": np.dtype(object),
    }
)
"""KServe datatype -> numpy dtype (little-endian; BYTES is an object array of `bytes`)."""

_BY_KIND_SIZE: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"
}
_INT_TYPES = frozenset(n for n, dt in DATATYPES.items() if dt.kind in "iu")
_FLOAT_TYPES = frozenset(n for n, dt in DATATYPES.items() if dt.kind == "f")
_NONFINITE_IN: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_MAX_RANK = 32  # numpy 1.x's limit; numpy 2 allows 64
_MAX_DIM = 2**63 - 1  # numpy's intp; the spec allows uint64 but no array can be that large
_LEN = struct.Struct("<I")
_MAX_SHOWN = 80


def datatype_of(dtype: np.dtype | type) -> str | None:
    """The KServe datatype for a numpy dtype (str, bytes and object dtypes are BYTES), or None if there is none.

    Byte order is ignored: encoding converts to little-endian.
    """
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    return _BY_KIND_SIZE.get((dt.kind, dt.itemsize))


@dataclass(frozen=True, slots=True, eq=False)
class InferInput:
    """One decoded input tensor; `array` is C-contiguous, owns its data and has `DATATYPES[datatype]`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One requested output: in binary or in JSON, and optionally as top-`class_count` classification."""

    name: str
    binary: bool
    class_count: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class InferRequest:
    """A decoded inference request; `outputs` None means all outputs, binary per `binary_data_output`."""

    id: str | None
    parameters: dict[str, Any]
    inputs: tuple[InferInput, ...]
    outputs: tuple[RequestedOutput, ...] | None

    @property
    def binary_data_output(self) -> bool:
        """The request-wide default for outputs that do not say whether they want binary."""
        return self.parameters.get("binary_data_output", False) is True


# --------------------------------------------------------------------------------------------------- helpers


def _show(value: object) -> str:
    """A short JSON-ish rendering of an attacker-controlled value for an error message."""
    try:
        text = json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _nm(name: str) -> str:
    """A name for an error message, cut short."""
    return name if len(name) <= _MAX_SHOWN else name[: _MAX_SHOWN - 3] + "..."


def _num(n: int) -> str:
    """A count for an error message; astronomically large ones as a power of ten."""
    return str(n) if n < 10**30 else f"at least 10**{len(str(n)) - 1}"


def _shape_str(shape: Sequence[int]) -> str:
    """A shape as `[2,3]`."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def _json_type(value: object) -> str:
    """The JSON type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _parse_parameters(raw: object, where: str) -> dict[str, Any]:
    """Validate a `parameters` object: a JSON object of strings, numbers and booleans."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}'parameters' must be a JSON object, got {_json_type(raw)}")
    for key, value in raw.items():
        if not isinstance(value, str | int | float):  # bool is an int
            raise BadRequest(
                f"{where}parameter '{_nm(key)}' must be a string, number or boolean, got {_json_type(value)}"
            )
    return dict(raw)


def _load_json(raw: memoryview) -> object:
    """Decode the JSON header."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"malformed JSON: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and ints over sys.get_int_max_str_digits()
        raise BadRequest(f"malformed JSON: {e}") from None


def _flatten(data: list[Any]) -> list[Any]:
    """Flatten nested JSON arrays row-major, without recursion."""
    if not any(isinstance(item, list) for item in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _parse_shape(where: str, raw: object) -> tuple[int, ...]:
    """Validate a shape: a list of at most 32 non-negative integers."""
    if not isinstance(raw, list):
        raise BadRequest(f"{where}'shape' must be a list of integers, got {_json_type(raw)}")
    if len(raw) > _MAX_RANK:
        raise BadRequest(f"{where}shape has {len(raw)} dimensions, at most {_MAX_RANK} are supported")
    for dim in raw:
        if type(dim) is not int:
            raise BadRequest(f"{where}shape {_show(raw)} has a non-integer dimension {_show(dim)}")
        if dim < 0:
            raise BadRequest(f"{where}shape {_show(raw)} has a negative dimension {dim}")
        if dim > _MAX_DIM:
            raise BadRequest(f"{where}shape {_show(raw)} has a dimension over 2**63-1")
    return tuple(raw)


def _first_bad(flat: list[Any], ok: type | tuple[type, ...]) -> tuple[int, Any]:
    """Index and value of the first element whose exact type is not in `ok`."""
    oks = ok if isinstance(ok, tuple) else (ok,)
    for i, value in enumerate(flat):
        if type(value) not in oks:
            return i, value
    raise AssertionError("no bad element")  # pragma: no cover


def _json_array(where: str, datatype: str, flat: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Build the array of a JSON-data input from its flattened, count-checked elements."""
    dtype = DATATYPES[datatype]
    types = set(map(type, flat))
    if datatype == "BOOL":
        if types - {bool}:
            i, v = _first_bad(flat, bool)
            raise BadRequest(f"{where}BOOL data must be booleans, element {i} is {_json_type(v)} {_show(v)}")
        return np.array(flat, dtype=dtype).reshape(shape)
    if datatype in _INT_TYPES:
        if types - {int}:
            i, v = _first_bad(flat, int)
            raise BadRequest(f"{where}{datatype} data must be integers, element {i} is {_json_type(v)} {_show(v)}")
        if flat:
            info = np.iinfo(dtype)
            if min(flat) < info.min or max(flat) > info.max:
                i, v = next((i, v) for i, v in enumerate(flat) if not info.min <= v <= info.max)
                raise BadRequest(
                    f"{where}element {i} = {_show(v)} is out of range for {datatype} [{info.min}, {info.max}]"
                )
        return np.array(flat, dtype=dtype).reshape(shape)
    if datatype in _FLOAT_TYPES:
        if types - {int, float, str}:
            i, v = _first_bad(flat, (int, float, str))
            raise BadRequest(f"{where}{datatype} data must be numbers, element {i} is {_json_type(v)} {_show(v)}")
        if str in types:
            for i, v in enumerate(flat):
                if type(v) is str and v not in _NONFINITE_IN:
                    raise BadRequest(
                        f"{where}{datatype} data must be numbers, element {i} is string {_show(v)}"
                        ' (only "NaN", "Infinity" and "-Infinity" are accepted as strings)'
                    )
            flat = [_NONFINITE_IN[v] if type(v) is str else v for v in flat]
        try:
            with np.errstate(over="raise"):
                return np.array(flat, dtype=dtype).reshape(shape)
        except (FloatingPointError, OverflowError):
            for i, v in enumerate(flat):
                try:
                    with np.errstate(over="raise"):
                        np.array([v], dtype=dtype)
                except (FloatingPointError, OverflowError):
                    raise BadRequest(f"{where}element {i} = {_show(v)} is out of range for {datatype}") from None
            raise  # pragma: no cover
    # BYTES
    if types - {str}:
        i, v = _first_bad(flat, str)
        raise BadRequest(f"{where}BYTES data must be strings, element {i} is {_json_type(v)} {_show(v)}")
    out = np.empty(len(flat), dtype=object)
    for i, s in enumerate(flat):
        try:
            out[i] = s.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"{where}BYTES element {i} is not valid Unicode (a lone surrogate)") from None
    return out.reshape(shape)


def _binary_array(where: str, datatype: str, shape: tuple[int, ...], count: int, chunk: memoryview) -> np.ndarray:
    """Build the array of a binary-data input from its slice of the body, whose size is already checked."""
    if datatype == "BOOL":
        flags: np.ndarray = np.frombuffer(chunk, dtype=np.uint8) != 0
        return flags.reshape(shape)
    if datatype != "BYTES":
        return np.frombuffer(chunk, dtype=DATATYPES[datatype]).reshape(shape).copy()
    size = len(chunk)
    out = np.empty(count, dtype=object)
    offset = n = 0
    while offset < size:
        if n == count:
            raise BadRequest(
                f"{where}shape {_shape_str(shape)} needs {count} BYTES elements, binary data has more"
                f" ({size - offset} bytes left over)"
            )
        if size - offset < _LEN.size:
            raise BadRequest(f"{where}BYTES element {n} has a truncated 4-byte length ({size - offset} bytes)")
        (length,) = _LEN.unpack_from(chunk, offset)
        offset += _LEN.size
        if length > size - offset:
            raise BadRequest(
                f"{where}BYTES element {n} declares {length} bytes but only {size - offset} remain in its"
                " binary_data_size"
            )
        out[n] = bytes(chunk[offset : offset + length])
        offset += length
        n += 1
    if n != count:
        raise BadRequest(f"{where}shape {_shape_str(shape)} needs {count} BYTES elements, binary data has {n}")
    return out.reshape(shape)


def _parse_outputs(raw: object, binary_default: bool) -> tuple[RequestedOutput, ...] | None:
    """Validate the requested outputs."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest(f"'outputs' must be a list, got {_json_type(raw)}")
    if not raw:
        return None
    seen: set[str] = set()
    result = []
    for j, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(f"outputs[{j}] must be a JSON object, got {_json_type(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"outputs[{j}]: 'name' must be a non-empty string")
        if name in seen:
            raise BadRequest(f"duplicate output name '{_nm(name)}'")
        seen.add(name)
        where = f"output '{_nm(name)}': "
        params = _parse_parameters(item.get("parameters"), where)
        if "shared_memory_region" in params:
            raise BadRequest(f"{where}shared memory is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"{where}binary_data must be a boolean, got {_show(binary)}")
        class_count = params.get("classification", 0)
        if type(class_count) is not int or class_count < 0:
            raise BadRequest(f"{where}classification must be a non-negative integer, got {_show(class_count)}")
        result.append(RequestedOutput(name, binary, class_count))
    return tuple(result)


# --------------------------------------------------------------------------------------------------- requests


def parse_infer_request(
    body: bytes | bytearray | memoryview, header_length: int | None, *, max_elements: int = 64_000_000
) -> InferRequest:
    """Decode and validate an inference request body.

    `header_length` is the value of the `Inference-Header-Content-Length` header (None when absent: the whole body
    is JSON). Every tensor is checked against the data actually present before anything is allocated, and the
    arrays returned are copies, so `body` may be released afterwards.

    Raises BadRequest naming what is wrong, and PayloadTooLarge when the inputs hold more than `max_elements`
    elements in all (or a shape with a zero dimension has more than that in its other dimensions).
    """
    view = memoryview(body).cast("B")
    size = len(view)
    if header_length is None:
        json_end = size
    elif header_length < 0:
        raise BadRequest(f"Inference-Header-Content-Length {header_length} is negative")
    elif header_length > size:
        raise BadRequest(f"Inference-Header-Content-Length {header_length} exceeds body length {size}")
    else:
        json_end = header_length

    doc = _load_json(view[:json_end])
    if not isinstance(doc, dict):
        raise BadRequest(f"the request must be a JSON object, got {_json_type(doc)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {_json_type(request_id)}")
    parameters = _parse_parameters(doc.get("parameters"), "")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest(f"parameter 'binary_data_output' must be a boolean, got {_show(binary_default)}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")

    offset = json_end
    total = 0
    seen: set[str] = set()
    inputs: list[InferInput] = []
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise BadRequest(f"inputs[{i}] must be a JSON object, got {_json_type(raw)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in seen:
            raise BadRequest(f"duplicate input name '{_nm(name)}'")
        seen.add(name)
        where = f"input '{_nm(name)}': "
        datatype = raw.get("datatype")
        if not isinstance(datatype, str):
            raise BadRequest(f"{where}'datatype' must be a string, got {_json_type(datatype)}")
        if datatype not in DATATYPES:
            raise BadRequest(f"{where}unknown datatype '{_nm(datatype)}' (supported: {', '.join(DATATYPES)})")
        shape = _parse_shape(where, raw.get("shape"))
        count = math.prod(shape)
        params = _parse_parameters(raw.get("parameters"), where)
        if "shared_memory_region" in params:
            raise BadRequest(f"{where}shared memory is not supported")
        binary_size = params.get("binary_data_size")

        if binary_size is not None:
            if type(binary_size) is not int or binary_size < 0:
                raise BadRequest(f"{where}binary_data_size must be a non-negative integer, got {_show(binary_size)}")
            if "data" in raw:
                raise BadRequest(f"{where}has both 'data' and parameters.binary_data_size; give one")
            remaining = size - offset
            if binary_size > remaining:
                hint = " (no Inference-Header-Content-Length was given)" if header_length is None else ""
                raise BadRequest(f"{where}binary_data_size {binary_size} but only {remaining} bytes remain{hint}")
            chunk = view[offset : offset + binary_size]
            offset += binary_size
            if datatype != "BYTES":
                need = count * DATATYPES[datatype].itemsize
                if need != binary_size:
                    raise BadRequest(
                        f"{where}shape {_shape_str(shape)} needs {_num(need)} bytes of {datatype},"
                        f" binary_data_size is {binary_size}"
                    )
            elif count * _LEN.size > binary_size:
                raise BadRequest(
                    f"{where}shape {_shape_str(shape)} needs {_num(count)} BYTES elements (at least"
                    f" {_num(count * _LEN.size)} bytes), binary_data_size is {binary_size}"
                )
            total = _count_elements(where, shape, count, total, max_elements)
            array = _binary_array(where, datatype, shape, count, chunk)
        else:
            if "data" not in raw:
                raise BadRequest(f"{where}needs 'data' or parameters.binary_data_size")
            data = raw["data"]
            if not isinstance(data, list):
                raise BadRequest(f"{where}'data' must be a JSON array, got {_json_type(data)}")
            flat = _flatten(data)
            if len(flat) != count:
                raise BadRequest(f"{where}shape {_shape_str(shape)} needs {_num(count)} elements, data has {len(flat)}")
            total = _count_elements(where, shape, count, total, max_elements)
            array = _json_array(where, datatype, flat, shape)
        inputs.append(InferInput(name, datatype, shape, array))

    if offset != size:
        if offset == json_end:
            raise BadRequest(
                f"{size - offset} bytes follow the JSON header but no input has parameters.binary_data_size"
            )
        raise BadRequest(f"{size - offset} trailing bytes after the binary data of the last binary input")
    return InferRequest(
        id=request_id,
        parameters=parameters,
        inputs=tuple(inputs),
        outputs=_parse_outputs(doc.get("outputs"), binary_default),
    )


def _count_elements(where: str, shape: tuple[int, ...], count: int, total: int, max_elements: int) -> int:
    """Add an input's elements to the running total, refusing totals and degenerate shapes over the limit."""
    total += count
    if total > max_elements:
        raise PayloadTooLarge(f"{where}the inputs hold {_num(total)} elements so far, over the limit of {max_elements}")
    if count == 0 and math.prod(d for d in shape if d) > max_elements:
        raise PayloadTooLarge(f"{where}shape {_shape_str(shape)} is over the limit of {max_elements} elements")
    return total


# --------------------------------------------------------------------------------------------------- responses


def _as_bytes(name: str, value: object) -> bytes:
    """One BYTES element of an output: bytes as is, str as UTF-8."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    raise InferenceFailed(f"output '{name}': BYTES element of type {type(value).__name__} is not bytes or str")


def _normalize(name: str, array: object) -> tuple[str, np.ndarray]:
    """An output as (datatype, C-contiguous little-endian array; object array of bytes for BYTES)."""
    arr = np.asarray(array)
    datatype = datatype_of(arr.dtype)
    if datatype is None:
        raise InferenceFailed(f"output '{name}' has dtype {arr.dtype}, which has no KServe datatype")
    if datatype == "BYTES":
        out = np.empty(arr.shape, dtype=object)
        flat_out = out.reshape(-1)
        for i, value in enumerate(arr.reshape(-1).tolist()):
            flat_out[i] = _as_bytes(name, value)
        return datatype, out
    return datatype, arr.astype(DATATYPES[datatype], order="C", copy=False)  # ascontiguousarray makes 0-d 1-d


def _classify(name: str, array: object, class_count: int, labels: Sequence[str] | None) -> np.ndarray:
    """Triton's classification extension: the top `class_count` "score:index[:label]" per row, as BYTES."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf" or datatype_of(arr.dtype) is None:
        raise BadRequest(f"output '{_nm(name)}': classification needs a numeric output, it is {arr.dtype}")
    if arr.ndim == 0:
        raise BadRequest(f"output '{_nm(name)}': classification needs an output with at least one dimension")
    batch = arr.shape[0] if arr.ndim > 1 else 1
    width = math.prod(arr.shape[1:]) if arr.ndim > 1 else arr.shape[0]
    rows = arr.reshape(batch, width)
    keys = rows.astype(np.float64)
    k = min(class_count, width)
    index = np.arange(width)
    out = np.empty((batch, k), dtype=object)
    is_float = arr.dtype.kind == "f"
    for r in range(batch):
        for c, j in enumerate(np.lexsort((index, -keys[r]))[:k].tolist()):
            value = rows[r, j]
            text = f"{float(value):f}:{j}" if is_float else f"{int(value)}:{j}"
            if labels is not None and j < len(labels):
                text += f":{labels[j]}"
            out[r, c] = text.encode("utf-8")
    return out.reshape(k) if arr.ndim == 1 else out


def _nonfinite_out(value: float) -> float | str:
    """A float for JSON: NaN and inf as the strings "NaN", "Infinity", "-Infinity"."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _json_data(name: str, datatype: str, arr: np.ndarray) -> list[Any]:
    """An output's elements as a flat JSON list."""
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        result = []
        for i, value in enumerate(flat.tolist()):
            try:
                result.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRequest(
                    f"output '{_nm(name)}': BYTES element {i} is not valid UTF-8 and cannot be sent in JSON;"
                    " request this output with parameters.binary_data: true"
                ) from None
        return result
    if datatype in _FLOAT_TYPES and not np.isfinite(flat).all():
        return [_nonfinite_out(v) for v in flat.tolist()]
    return flat.tolist()


def _binary_data(datatype: str, arr: np.ndarray) -> bytes:
    """An output's bytes for the binary section."""
    if datatype != "BYTES":
        return arr.tobytes(order="C")
    parts = []
    for value in arr.reshape(-1).tolist():
        parts.append(_LEN.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def _json_default(value: object) -> object:
    """Serialize numpy scalars and arrays in response parameters."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray]],
    requested: tuple[RequestedOutput, ...] | None,
    binary_default: bool,
    parameters: dict[str, Any] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an inference response; returns (body, JSON header length or None when nothing is binary).

    `outputs` are the model's outputs in model order. With `requested` None all of them are sent, binary per
    `binary_default` (the request's `binary_data_output`); otherwise only the requested ones, in requested order.
    `labels` name the classes of classification outputs (`class_count` > 0). Arrays of any byte order are sent
    little-endian; str/bytes/object arrays are BYTES. `model_version` and `request_id` are left out when None.

    Raises BadRequest for an unknown requested output, classification of a non-numeric output, or non-UTF-8 BYTES
    asked for in JSON; InferenceFailed for an output whose dtype has no KServe datatype.
    """
    by_name = dict(outputs)
    if requested is None:
        selection = [RequestedOutput(name, binary_default) for name, _ in outputs]
    else:
        unknown = [r.name for r in requested if r.name not in by_name]
        if unknown:
            available = ", ".join(f"'{_nm(n)}'" for n in by_name) or "none"
            raise BadRequest(f"unknown output '{_nm(unknown[0])}'; the model's outputs are {available}")
        selection = list(requested)

    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for req in selection:
        array = by_name[req.name]
        if req.class_count > 0:
            array = _classify(req.name, array, req.class_count, labels)
        datatype, arr = _normalize(req.name, array)
        entry: dict[str, Any] = {"name": req.name, "datatype": datatype, "shape": list(arr.shape)}
        if req.binary:
            blob = _binary_data(datatype, arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(req.name, datatype, arr)
        entries.append(entry)

    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_json_default).encode("ascii")
    if not any(req.binary for req in selection):
        return header, None
    return header + b"".join(blobs), len(header)


def encode_error(message: str) -> bytes:
    """The error body: {"error": message}."""
    return json.dumps({"error": message}, separators=(",", ":")).encode("ascii")
