"""Tests of the pure KServe v2 codec, including exact interoperability with tritonclient.http."""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carml_mesh.errors import BadRequest, InferenceFailed, PayloadTooLarge
from carml_mesh.web.kserve_codec import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    datatype_of,
    encode_error,
    encode_infer_response,
    parse_infer_request,
)

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
ALL = [*NUMERIC, "BYTES"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """A deterministic array of `datatype` with extreme values where the type has them."""
    n = int(np.prod(shape))
    if datatype == "BYTES":
        values = [b"", b"hello", "h\u00e9llo \u2603".encode(), b"x" * 300, b"a\x00b", b"z"]
        return np.array([values[i % len(values)] for i in range(n)], dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return (np.arange(n) % 2 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        base = [info.min, info.max, 0, 1, info.max // 3, info.min // 7 if info.min else 5]
        return np.array([base[i % len(base)] for i in range(n)], dtype=dtype).reshape(shape)
    info = np.finfo(dtype)
    base = [0.0, -1.5, float(info.max), float(info.tiny), 0.1, -3.25]
    return np.array([base[i % len(base)] for i in range(n)], dtype=dtype).reshape(shape)


def request(inputs: list[dict[str, Any]], binary: bytes = b"", **extra: Any) -> tuple[bytes, int | None]:
    """A request body from JSON inputs and an optional binary section."""
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + binary, (len(header) if binary else None)


def tensor(name: str = "x", datatype: str = "FP32", shape: Any = (2,), **fields: Any) -> dict[str, Any]:
    """One JSON input; `data` defaults to zeros of the right count."""
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape), **fields}
    if "data" not in fields and "parameters" not in fields:
        entry["data"] = [0] * int(np.prod(shape))
    return entry


def bad(body: bytes, header_length: int | None, fragment: str, **kwargs: Any) -> None:
    """Assert the body is refused with BadRequest naming `fragment`."""
    with pytest.raises(BadRequest) as info:
        parse_infer_request(body, header_length, **kwargs)
    assert fragment in str(info.value), str(info.value)
    assert info.value.status == 400


def triton_result(body: bytes, header_length: int | None) -> Any:
    """Parse a response body the way tritonclient does."""
    return th.InferenceServerClient.parse_response_body(body, header_length=header_length)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values, shape and dtype; NaN equal to NaN."""
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(got, want)
    else:
        assert got.tolist() == want.tolist()


# ------------------------------------------------------------------------------------------------ datatypes


def test_datatype_table_is_little_endian_and_reversible() -> None:
    for name, dtype in DATATYPES.items():
        assert dtype.byteorder in "<|="
        assert datatype_of(dtype) == name
        assert datatype_of(dtype.newbyteorder(">")) == name
    assert datatype_of(np.dtype("U3")) == "BYTES"
    assert datatype_of(np.dtype("S3")) == "BYTES"
    assert datatype_of(np.complex64) is None
    assert datatype_of(np.dtype("M8[s]")) is None


# ------------------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ALL)
def test_tritonclient_request_round_trip(datatype: str, binary: bool) -> None:
    want = sample(datatype)
    inp = th.InferInput("in", list(want.shape), datatype)
    inp.set_data_from_numpy(want, binary_data=binary)
    body, json_size = th.InferenceServerClient.generate_request_body(
        [inp], outputs=[th.InferRequestedOutput("out", binary_data=False)], request_id="r1"
    )
    assert (json_size is not None) == binary
    req = parse_infer_request(body, json_size)
    assert req.id == "r1"
    assert req.outputs == (RequestedOutput("out", binary=False),)
    (got,) = req.inputs
    assert (got.name, got.datatype, got.shape) == ("in", datatype, want.shape)
    assert got.array.dtype == DATATYPES[datatype]
    assert got.array.flags.c_contiguous and got.array.flags.writeable
    assert_same(got.array, want)
    if datatype == "BYTES":
        assert all(type(v) is bytes for v in got.array.flat)


def test_tritonclient_mixed_inputs_and_defaults() -> None:
    a, b, c = sample("FP32", (2, 2)), sample("BYTES", (3,)), sample("INT64", (1, 2))
    inputs = [th.InferInput("a", [2, 2], "FP32"), th.InferInput("b", [3], "BYTES"), th.InferInput("c", [1, 2], "INT64")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    inputs[2].set_data_from_numpy(c)
    body, json_size = th.InferenceServerClient.generate_request_body(
        inputs, priority=3, timeout=100, parameters={"custom": "yes"}
    )
    req = parse_infer_request(body, json_size)
    assert req.outputs is None  # no outputs -> all, and tritonclient asks binary_data_output
    assert req.binary_data_output is True
    assert req.parameters == {"priority": 3, "timeout": 100, "binary_data_output": True, "custom": "yes"}
    assert req.id is None
    for got, want in zip(req.inputs, (a, b, c), strict=True):
        assert_same(got.array, want)


def test_requested_outputs_binary_and_classification() -> None:
    inp = th.InferInput("x", [1], "FP32")
    inp.set_data_from_numpy(np.zeros(1, np.float32))
    outs = [
        th.InferRequestedOutput("p", binary_data=True, class_count=3),
        th.InferRequestedOutput("q", binary_data=False),
    ]
    req = parse_infer_request(*th.InferenceServerClient.generate_request_body([inp], outputs=outs))
    assert req.outputs == (RequestedOutput("p", True, 3), RequestedOutput("q", False, 0))


def test_output_binary_follows_binary_data_output_unless_said() -> None:
    outputs = [{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}]
    body, hl = request([tensor()], outputs=outputs, parameters={"binary_data_output": True})
    assert parse_infer_request(body, hl).outputs == (RequestedOutput("a", True), RequestedOutput("b", False))
    body, hl = request([tensor()], outputs=outputs)
    assert parse_infer_request(body, hl).outputs == (RequestedOutput("a", False), RequestedOutput("b", False))
    body, hl = request([tensor()], outputs=[])
    assert parse_infer_request(body, hl).outputs is None


def test_nested_and_flat_json_data() -> None:
    nested = tensor(datatype="INT32", shape=(2, 3), data=[[1, 2, 3], [4, 5, 6]])
    flat = tensor("y", datatype="INT32", shape=(3, 2), data=[1, 2, 3, 4, 5, 6])
    deep = tensor("z", datatype="INT32", shape=(6,), data=[[[1]], [2, [3, [4]]], 5, [[6]]])
    req = parse_infer_request(*request([nested, flat, deep]))
    assert req.inputs[0].array.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert req.inputs[1].array.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert req.inputs[2].array.tolist() == [1, 2, 3, 4, 5, 6]


def test_scalar_and_empty_shapes() -> None:
    body, hl = request(
        [
            tensor("s", "FP64", (), data=[2.5]),
            tensor("e", "BYTES", (0, 4), data=[]),
            {"name": "b", "datatype": "INT8", "shape": [3, 0], "parameters": {"binary_data_size": 0}},
        ]
    )
    req = parse_infer_request(body, hl)
    assert req.inputs[0].array.shape == () and req.inputs[0].array.item() == 2.5
    assert req.inputs[1].array.shape == (0, 4) and req.inputs[1].array.dtype == object
    assert req.inputs[2].array.shape == (3, 0) and req.inputs[2].array.dtype == np.int8


def test_nonfinite_json_floats_accepted() -> None:
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[5],"data":[NaN,Infinity,-Infinity,"NaN","-Infinity"]}]}'
    arr = parse_infer_request(body, None).inputs[0].array
    assert np.isnan(arr[0]) and np.isnan(arr[3])
    assert arr[1] == np.inf and arr[2] == -np.inf and arr[4] == -np.inf


def test_binary_bool_nonzero_is_true() -> None:
    body, hl = request(
        [{"name": "b", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}}], b"\x00\x01\x07"
    )
    arr = parse_infer_request(body, hl).inputs[0].array
    assert arr.dtype == np.bool_ and arr.tolist() == [False, True, True]


def test_arrays_are_copies_of_the_body() -> None:
    raw = np.arange(4, dtype="<f4").tobytes()
    body, hl = request([tensor(shape=(4,), parameters={"binary_data_size": 16})], raw)
    buf = bytearray(body)
    arr = parse_infer_request(buf, hl).inputs[0].array
    buf[hl:] = b"\xff" * 16
    assert arr.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert arr.base is None


# ------------------------------------------------------------------------------------------------ request errors


ERRORS: list[tuple[str, bytes, int | None, str]] = [
    ("malformed", b'{"inputs": [', None, "malformed JSON: "),
    ("not utf-8", b'{"inputs": "\xff"}', None, "malformed JSON: not valid UTF-8"),
    ("deep", b"[" * 100_000, None, "malformed JSON"),
    ("not object", b"[1, 2]", None, "the request must be a JSON object, got array"),
    ("no inputs", b"{}", None, "'inputs' must be a non-empty list"),
    ("empty inputs", b'{"inputs": []}', None, "'inputs' must be a non-empty list"),
    ("inputs not list", b'{"inputs": {"name": "x"}}', None, "'inputs' must be a non-empty list"),
    ("input not object", b'{"inputs": [3]}', None, "inputs[0] must be a JSON object, got number"),
    ("header too long", b'{"inputs": []}', 900, "Inference-Header-Content-Length 900 exceeds body length 14"),
    ("header negative", b"{}", -1, "Inference-Header-Content-Length -1 is negative"),
    ("id type", b'{"id": 5, "inputs": []}', None, "'id' must be a string, got number"),
]


@pytest.mark.parametrize(("body", "header_length", "fragment"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_request_errors_raw(body: bytes, header_length: int | None, fragment: str) -> None:
    bad(body, header_length, fragment)


INPUT_ERRORS: list[tuple[str, list[dict[str, Any]], str]] = [
    ("count", [tensor(shape=(2, 3), data=[1, 2, 3, 4, 5])], "input 'x': shape [2,3] needs 6 elements, data has 5"),
    ("datatype", [tensor(datatype="FP8")], "input 'x': unknown datatype 'FP8'"),
    ("bf16", [tensor(datatype="BF16")], "unknown datatype 'BF16'"),
    ("datatype type", [tensor(datatype=3)], "input 'x': 'datatype' must be a string"),
    ("duplicate", [tensor(), tensor()], "duplicate input name 'x'"),
    ("no name", [{"datatype": "FP32", "shape": [1], "data": [1]}], "inputs[0]: 'name' must be a non-empty string"),
    ("empty name", [tensor(name="")], "inputs[0]: 'name' must be a non-empty string"),
    ("negative dim", [tensor(shape=(2, -1), data=[])], "input 'x': shape [2,-1] has a negative dimension -1"),
    ("float dim", [tensor(shape=(2.0,), data=[1, 2])], "input 'x': shape [2.0] has a non-integer dimension 2.0"),
    ("bool dim", [tensor(shape=(True,), data=[1])], "has a non-integer dimension true"),
    ("str dim", [tensor(shape=("2",), data=[1, 2])], 'has a non-integer dimension "2"'),
    ("shape type", [tensor(shape=(), data=[1]) | {"shape": 3}], "input 'x': 'shape' must be a list of integers"),
    ("rank", [tensor(shape=(1,) * 33, data=[1])], "shape has 33 dimensions, at most 32"),
    ("no data", [{"name": "x", "datatype": "FP32", "shape": [1]}], "needs 'data' or parameters.binary_data_size"),
    ("data type", [tensor(shape=(1,), data={"a": 1})], "input 'x': 'data' must be a JSON array, got object"),
    ("bool as int", [tensor(datatype="BOOL", data=[True, 1])], "BOOL data must be booleans, element 1 is number 1"),
    ("int as float", [tensor(datatype="INT32", data=[1, 1.5])], "INT32 data must be integers, element 1 is number 1.5"),
    ("int as bool", [tensor(datatype="INT8", data=[True, 1])], "INT8 data must be integers, element 0 is boolean"),
    ("int range", [tensor(datatype="UINT8", data=[255, 256])], "element 1 = 256 is out of range for UINT8 [0, 255]"),
    ("int negative", [tensor(datatype="UINT64", data=[-1, 0])], "element 0 = -1 is out of range for UINT64"),
    ("int64 range", [tensor(datatype="INT64", data=[2**63, 0])], "out of range for INT64"),
    ("float str", [tensor(data=[1.0, "abc"])], 'FP32 data must be numbers, element 1 is string "abc"'),
    ("float null", [tensor(data=[None, 1.0])], "FP32 data must be numbers, element 0 is null"),
    ("float bool", [tensor(data=[1.0, False])], "FP32 data must be numbers, element 1 is boolean"),
    ("fp16 range", [tensor(datatype="FP16", data=[1.0, 70000.0])], "element 1 = 70000.0 is out of range for FP16"),
    ("fp32 range", [tensor(data=[1e300, 0.0])], "element 0 = 1e+300 is out of range for FP32"),
    ("fp64 big int", [tensor(datatype="FP64", data=[10**400, 0])], "is out of range for FP64"),
    ("bytes number", [tensor(datatype="BYTES", data=["a", 3])], "BYTES data must be strings, element 1 is number 3"),
    ("surrogate", [tensor(datatype="BYTES", shape=(1,), data=["\ud800"])], "BYTES element 0 is not valid Unicode"),
    ("params type", [tensor(parameters=[1])], "input 'x': 'parameters' must be a JSON object, got array"),
    ("param value", [tensor(data=[1, 2], parameters={"a": [1]})], "input 'x': parameter 'a' must be a string, number"),
    ("shm", [tensor(parameters={"shared_memory_region": "r"})], "input 'x': shared memory is not supported"),
    ("binary size type", [tensor(parameters={"binary_data_size": "8"})], "binary_data_size must be a non-negative"),
    ("binary size neg", [tensor(parameters={"binary_data_size": -8})], "binary_data_size must be a non-negative"),
    ("both", [tensor(data=[1, 2], parameters={"binary_data_size": 0})], "has both 'data' and parameters.binary_data"),
    (
        "binary no header",
        [tensor(parameters={"binary_data_size": 8})],
        "(no Inference-Header-Content-Length was given)",
    ),
]


@pytest.mark.parametrize(("inputs", "fragment"), [e[1:] for e in INPUT_ERRORS], ids=[e[0] for e in INPUT_ERRORS])
def test_request_errors_inputs(inputs: list[dict[str, Any]], fragment: str) -> None:
    bad(*request(inputs), fragment)


REQUEST_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("params type", {"parameters": "x"}, "'parameters' must be a JSON object, got string"),
    ("param value", {"parameters": {"k": None}}, "parameter 'k' must be a string, number or boolean, got null"),
    ("bdo type", {"parameters": {"binary_data_output": 1}}, "parameter 'binary_data_output' must be a boolean"),
    ("outputs type", {"outputs": {"name": "y"}}, "'outputs' must be a list, got object"),
    ("output type", {"outputs": ["y"]}, "outputs[0] must be a JSON object, got string"),
    ("output name", {"outputs": [{"name": 1}]}, "outputs[0]: 'name' must be a non-empty string"),
    ("output dup", {"outputs": [{"name": "y"}, {"name": "y"}]}, "duplicate output name 'y'"),
    ("output binary", {"outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, "binary_data must be a boolean"),
    ("class neg", {"outputs": [{"name": "y", "parameters": {"classification": -1}}]}, "classification must be a non-"),
    ("class float", {"outputs": [{"name": "y", "parameters": {"classification": 1.5}}]}, "classification must be a"),
    ("output shm", {"outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}]}, "output 'y': shared"),
]


@pytest.mark.parametrize(("extra", "fragment"), [e[1:] for e in REQUEST_ERRORS], ids=[e[0] for e in REQUEST_ERRORS])
def test_request_errors_fields(extra: dict[str, Any], fragment: str) -> None:
    bad(*request([tensor()], **extra), fragment)


def binary_input(datatype: str, shape: list[int], size: int, name: str = "x") -> dict[str, Any]:
    """A binary input entry."""
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def test_binary_size_over_remaining() -> None:
    bad(
        *request([binary_input("FP32", [2, 3], 24)], b"\0" * 16),
        "input 'x': binary_data_size 24 but only 16 bytes remain",
    )


def test_binary_size_mismatch_shape() -> None:
    bad(*request([binary_input("FP32", [2, 3], 20)], b"\0" * 20), "input 'x': shape [2,3] needs 24 bytes of FP32")


def test_trailing_binary_bytes() -> None:
    bad(*request([binary_input("INT8", [2], 2)], b"\0" * 5), "3 trailing bytes after the binary data")
    body = json.dumps({"inputs": [tensor()]}).encode()
    bad(body + b"junk", len(body), "4 bytes follow the JSON header but no input has parameters.binary_data_size")


def test_header_length_cuts_json() -> None:
    body, _ = request([tensor()])
    bad(body, len(body) - 1, "malformed JSON")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (struct.pack("<I", 4) + b"abcd", "shape [2] needs 2 BYTES elements, binary data has 1"),
        (struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) * 2, "binary data has more (4 bytes left over)"),
        (struct.pack("<I", 2) + b"ab" + b"\0\0", "BYTES element 1 has a truncated 4-byte length (2 bytes)"),
        (struct.pack("<I", 9) + b"a" + struct.pack("<I", 0), "BYTES element 0 declares 9 bytes but only 5 remain"),
        (b"\0\0\0", "needs 2 BYTES elements (at least 8 bytes), binary_data_size is 3"),
    ],
)
def test_binary_bytes_errors(payload: bytes, fragment: str) -> None:
    bad(*request([binary_input("BYTES", [2], len(payload))], payload), fragment)


def test_second_binary_input_reports_remaining() -> None:
    inputs = [binary_input("INT32", [2], 8, "a"), binary_input("INT32", [3], 12, "b")]
    bad(*request(inputs, b"\0" * 16), "input 'b': binary_data_size 12 but only 8 bytes remain")


@pytest.mark.parametrize(
    ("inputs", "binary", "fragment"),
    [
        (
            [tensor(shape=(10**12,), data=[1, 2, 3])],
            b"",
            "shape [1000000000000] needs 1000000000000 elements, data has 3",
        ),
        ([binary_input("FP32", [10**12], 12)], b"\0" * 12, "needs 4000000000000 bytes of FP32, binary_data_size is 12"),
        ([binary_input("BYTES", [10**6, 10**6], 12)], b"\0" * 12, "needs 1000000000000 BYTES elements"),
        ([tensor(shape=(10**6,) * 32, data=[1])], b"", "needs at least 10**192 elements, data has 1"),
        ([tensor(shape=(2**63,), data=[1])], b"", "shape [9223372036854775808] has a dimension over 2**63-1"),
    ],
)
def test_huge_shapes_fail_fast_without_allocating(inputs: list[dict[str, Any]], binary: bytes, fragment: str) -> None:
    tracemalloc.start()
    try:
        bad(*request(inputs, binary), fragment)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_payload_too_large() -> None:
    inputs = [tensor("a", shape=(3,)), tensor("b", shape=(3,))]
    parse_infer_request(*request(inputs), max_elements=6)
    with pytest.raises(PayloadTooLarge, match="input 'b': the inputs hold 7 elements so far, over the limit of 6"):
        parse_infer_request(*request([tensor("a", shape=(3,)), tensor("b", shape=(4,))]), max_elements=6)
    with pytest.raises(PayloadTooLarge, match=r"shape \[0,1000000000000\] is over the limit of 64000000"):
        parse_infer_request(*request([tensor(shape=(0, 10**12), data=[])]))
    with pytest.raises(PayloadTooLarge) as info:
        parse_infer_request(*request([binary_input("UINT8", [10], 10)], b"\0" * 10), max_elements=9)
    assert info.value.status == 413


def test_long_names_are_cut_in_messages() -> None:
    with pytest.raises(BadRequest) as info:
        parse_infer_request(*request([tensor(name="n" * 10_000, datatype="FP8")]))
    assert len(str(info.value)) < 400


# ------------------------------------------------------------------------------------------------ responses


def encode(
    outputs: list[tuple[str, np.ndarray]],
    requested: tuple[RequestedOutput, ...] | None = None,
    binary_default: bool = False,
    **kwargs: Any,
) -> tuple[bytes, int | None]:
    """encode_infer_response with defaults."""
    return encode_infer_response(
        model_name="m",
        model_version="1",
        request_id="r",
        outputs=outputs,
        requested=requested,
        binary_default=binary_default,
        **kwargs,
    )


def header_of(body: bytes, header_length: int | None) -> dict[str, Any]:
    """The response JSON, parsed strictly (no NaN/Infinity literals)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(body[:header_length] if header_length is not None else body, parse_constant=refuse)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ALL)
def test_tritonclient_response_round_trip(datatype: str, binary: bool) -> None:
    want = sample(datatype)
    body, hl = encode([("out", want)], (RequestedOutput("out", binary),))
    assert (hl is not None) == binary
    header = header_of(body, hl)
    assert header["outputs"][0]["datatype"] == datatype
    got = triton_result(body, hl).as_numpy("out")
    if datatype == "BYTES" and not binary:
        # JSON BYTES reach tritonclient as str
        assert got.tolist() == [[v.decode() for v in row] for row in want.tolist()]
    else:
        assert_same(got, want)


def test_response_header_fields_and_order() -> None:
    a, b, c = sample("FP32", (2,)), sample("INT16", (3, 1)), sample("BYTES", (2, 2))
    requested = (RequestedOutput("c", True), RequestedOutput("a", False), RequestedOutput("b", True))
    body, hl = encode([("a", a), ("b", b), ("c", c)], requested, parameters={"n": np.int64(3)})
    header = header_of(body, hl)
    assert header["model_name"] == "m" and header["model_version"] == "1" and header["id"] == "r"
    assert header["parameters"] == {"n": 3}
    assert [o["name"] for o in header["outputs"]] == ["c", "a", "b"]
    assert "data" not in header["outputs"][0] and header["outputs"][1]["data"] == a.tolist()
    assert hl == len(body) - header["outputs"][0]["parameters"]["binary_data_size"] - 6
    result = triton_result(body, hl)
    for name, want in (("b", b), ("c", c)):
        assert_same(result.as_numpy(name), want)
    np.testing.assert_array_equal(result.as_numpy("a"), a)


def test_response_all_outputs_by_default() -> None:
    outputs = [("a", sample("UINT8", (4,))), ("b", sample("FP64", (1,)))]
    body, hl = encode(outputs, None, binary_default=True)
    header = header_of(body, hl)
    assert [o["name"] for o in header["outputs"]] == ["a", "b"]
    assert all(o["parameters"]["binary_data_size"] > 0 for o in header["outputs"])
    body, hl = encode(outputs, None, binary_default=False)
    assert hl is None and [o["data"] for o in header_of(body, hl)["outputs"]] == [v.tolist() for _, v in outputs]


def test_response_omits_version_and_id_when_none() -> None:
    body, hl = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=[], requested=None, binary_default=False
    )
    assert (json.loads(body), hl) == ({"model_name": "m", "outputs": []}, None)


def test_response_numbers_are_plain_json() -> None:
    body, _ = encode([("i", np.array([[1, 2], [3, 4]], dtype=np.uint64)), ("b", np.array([True, False]))])
    assert b'"data":[1,2,3,4]' in body and b'"data":[true,false]' in body
    body, _ = encode([("h", np.array([0.1, 2.5], dtype=np.float16))])
    data = json.loads(body)["outputs"][0]["data"]
    assert all(type(v) is float for v in data) and np.array(data, np.float16).tolist() == [np.float16(0.1), 2.5]


def test_response_nonfinite_floats() -> None:
    want = np.array([[np.nan, np.inf], [-np.inf, 1.5]], dtype=np.float32)
    body, hl = encode([("f", want)])
    assert header_of(body, hl)["outputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 1.5]
    assert_same(triton_result(body, hl).as_numpy("f"), want)
    # and our own parser takes them back
    entry = {k: v for k, v in header_of(body, hl)["outputs"][0].items() if k != "name"}
    req = parse_infer_request(json.dumps({"inputs": [{"name": "f", **entry}]}).encode(), None)
    assert_same(req.inputs[0].array, want)


def test_response_big_endian_and_noncontiguous() -> None:
    want = np.arange(12, dtype=">i4").reshape(3, 4).T
    body, hl = encode([("x", want)], (RequestedOutput("x", True),))
    got = triton_result(body, hl).as_numpy("x")
    assert got.dtype == np.dtype("<i4") and got.tolist() == want.tolist()


def test_response_scalar_output_keeps_empty_shape() -> None:
    for binary in (True, False):
        body, hl = encode([("s", np.float64(2.5)), ("b", np.array(True))], binary_default=binary)
        assert [o["shape"] for o in header_of(body, hl)["outputs"]] == [[], []]
        result = triton_result(body, hl)
        assert_same(result.as_numpy("s"), np.array(2.5))
        assert_same(result.as_numpy("b"), np.array(True))


def test_response_str_arrays_are_bytes() -> None:
    body, hl = encode([("u", np.array(["h\u00e9", "b"])), ("s", np.array([b"x", b"yz"]))], binary_default=True)
    result = triton_result(body, hl)
    assert result.as_numpy("u").tolist() == ["h\u00e9".encode(), b"b"]
    assert result.as_numpy("s").tolist() == [b"x", b"yz"]


def test_response_errors() -> None:
    with pytest.raises(BadRequest, match="unknown output 'nope'; the model's outputs are 'a', 'b'"):
        encode([("a", np.zeros(1)), ("b", np.zeros(1))], (RequestedOutput("a", False), RequestedOutput("nope", False)))
    with pytest.raises(BadRequest, match=r"BYTES element 1 is not valid UTF-8.*parameters.binary_data: true"):
        encode([("b", np.array([b"ok", b"\xff"], dtype=object))], (RequestedOutput("b", False),))
    with pytest.raises(InferenceFailed, match="output 'c' has dtype complex64"):
        encode([("c", np.zeros(2, np.complex64))])
    with pytest.raises(InferenceFailed, match="BYTES element of type int"):
        encode([("o", np.array([b"a", 3], dtype=object))])
    with pytest.raises(BadRequest, match="classification needs a numeric output"):
        encode([("o", np.array([b"a"], dtype=object))], (RequestedOutput("o", True, 1),))
    with pytest.raises(BadRequest, match="at least one dimension"):
        encode([("o", np.float32(1.0))], (RequestedOutput("o", True, 1),))


def test_classification_like_triton() -> None:
    scores = np.array([[0.1, 0.7, 0.2, 0.7], [0.5, np.nan, 0.25, 0.0]], dtype=np.float32)
    requested = (RequestedOutput("p", True, 3),)
    body, hl = encode([("p", scores)], requested, labels=["cat", "dog", "emu"])
    got = triton_result(body, hl).as_numpy("p")
    assert got.shape == (2, 3)
    assert got.tolist() == [
        [b"0.700000:1:dog", b"0.700000:3", b"0.200000:2:emu"],
        [b"0.500000:0:cat", b"0.250000:2:emu", b"0.000000:3"],
    ]
    body, hl = encode([("p", np.array([3, 9, 1], dtype=np.int64))], (RequestedOutput("p", False, 5),))
    assert header_of(body, hl)["outputs"][0] == {
        "name": "p",
        "datatype": "BYTES",
        "shape": [3],
        "data": ["9:1", "3:0", "1:2"],
    }
    body, hl = encode([("p", np.zeros((0, 4), np.float32))], (RequestedOutput("p", False, 2),))
    assert header_of(body, hl)["outputs"][0]["shape"] == [0, 2]


def test_tritonclient_full_exchange() -> None:
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    inp = th.InferInput("x", [2, 5], "FP32")
    inp.set_data_from_numpy(x)
    outs = [th.InferRequestedOutput("probs", class_count=2), th.InferRequestedOutput("logits", binary_data=False)]
    req = parse_infer_request(*th.InferenceServerClient.generate_request_body([inp], outputs=outs, request_id="7"))
    assert isinstance(req, InferRequest)
    logits = req.inputs[0].array * 2
    body, hl = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=req.id,
        outputs=[("logits", logits), ("probs", logits)],
        requested=req.outputs,
        binary_default=req.binary_data_output,
    )
    result = triton_result(body, hl)
    assert result.get_response()["id"] == "7"
    np.testing.assert_array_equal(result.as_numpy("logits"), x * 2)
    top = result.as_numpy("probs")
    assert top.shape == (2, 2)
    assert [int(v.split(b":")[1]) for v in top[0]] == np.argsort(-x[0])[:2].tolist()


def test_encode_error() -> None:
    assert json.loads(encode_error('bad \u2603 "x"')) == {"error": 'bad \u2603 "x"'}


# ------------------------------------------------------------------------------------------------ fuzzing

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(body=st.binary(max_size=200), header_length=st.none() | st.integers(-5, 250))
def test_fuzz_bytes_only_request_errors(body: bytes, header_length: int | None) -> None:
    with contextlib.suppress(BadRequest, PayloadTooLarge):
        parse_infer_request(body, header_length, max_elements=1000)


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


def mostly(good: st.SearchStrategy[Any], garbage: st.SearchStrategy[Any] = json_values) -> st.SearchStrategy[Any]:
    """`good` most of the time, else `garbage`, so the fuzz reaches the deeper checks."""
    return st.integers(0, 9).flatmap(lambda i: garbage if i == 5 else good)


ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "BOOL": st.booleans(),
    "BYTES": st.text(max_size=3),
    **{t: st.integers(-(2**64), 2**64) for t in NUMERIC if t[0] in "IU"},
    **{
        t: st.floats() | st.integers(-(2**70), 2**70) | st.sampled_from(["NaN", "-Infinity"])
        for t in NUMERIC
        if t[0] == "F"
    },
}


@st.composite
def near_valid_inputs(draw: st.DrawFn, name: str) -> tuple[Any, bytes]:
    """An input entry (and its binary bytes) that is usually consistent and sometimes slightly wrong."""
    datatype = draw(mostly(st.sampled_from(ALL), st.sampled_from(["FP8", "BF16", "", 3])))
    shape = draw(mostly(st.lists(st.integers(0, 3), max_size=3), st.lists(st.integers(-2, 10**12) | json_scalars)))
    count = int(np.prod(shape)) if all(type(d) is int and 0 <= d <= 3 for d in shape) else 2
    count += draw(mostly(st.just(0), st.integers(-2, 2)))
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if draw(st.booleans()):
        elements = ELEMENTS.get(datatype, json_scalars) if isinstance(datatype, str) else json_scalars
        values = draw(st.lists(mostly(elements, json_scalars), min_size=max(count, 0), max_size=max(count, 0)))
        entry["data"] = values if draw(st.booleans()) or not values else [values[:1], values[1:]]
        return draw(mostly(st.just(entry), json_values)), b""
    itemsize = DATATYPES[datatype].itemsize if datatype in DATATYPES and datatype != "BYTES" else 0
    if itemsize:
        raw = draw(st.binary(min_size=max(count, 0) * itemsize, max_size=max(count, 0) * itemsize))
    else:
        items = draw(st.lists(st.binary(max_size=5), min_size=max(count, 0), max_size=max(count, 0)))
        raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
    size = len(raw) + draw(mostly(st.just(0), st.integers(-5, 5)))
    entry["parameters"] = {"binary_data_size": size}
    return entry, raw


@st.composite
def near_valid_requests(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A request body built from near-valid inputs and outputs, with occasional garbage."""
    some_names = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)
    names = draw(mostly(some_names, st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3)))
    parts = [draw(near_valid_inputs(name)) for name in names]
    doc: dict[str, Any] = {"inputs": [p[0] for p in parts]}
    if draw(st.booleans()):
        doc["id"] = draw(mostly(st.text(max_size=3), json_scalars))
    if draw(st.booleans()):
        doc["parameters"] = draw(mostly(st.fixed_dictionaries({"binary_data_output": mostly(st.booleans())})))
    if draw(st.booleans()):
        output_params = st.fixed_dictionaries(
            {}, optional={"binary_data": mostly(st.booleans()), "classification": mostly(st.integers(0, 3))}
        )
        doc["outputs"] = draw(
            mostly(
                st.lists(
                    st.fixed_dictionaries({"name": st.sampled_from(["y", "z"]), "parameters": output_params}),
                    unique_by=lambda o: o["name"],
                )
            )
        )
    header = json.dumps(doc).encode()
    binary = b"".join(p[1] for p in parts) + draw(mostly(st.just(b""), st.binary(max_size=4)))
    if not binary and draw(st.booleans()):
        return header, None
    return header + binary, len(header) + draw(mostly(st.just(0), st.integers(-3, 3)))


@FAST
@given(request_body=near_valid_requests())
def test_fuzz_json_documents(request_body: tuple[bytes, int | None]) -> None:
    try:
        req = parse_infer_request(*request_body, max_elements=1000)
    except (BadRequest, PayloadTooLarge):
        return
    for inp in req.inputs:
        assert inp.array.shape == inp.shape
        assert inp.array.dtype == DATATYPES[inp.datatype]
        assert inp.array.flags.c_contiguous


@FAST
@given(
    datatype=st.sampled_from(ALL),
    shape=st.lists(st.integers(0, 3), max_size=3),
    binary=st.booleans(),
    data=st.data(),
)
def test_fuzz_round_trip_through_tritonclient(datatype: str, shape: list[int], binary: bool, data: Any) -> None:
    n = int(np.prod(shape))
    if datatype == "BYTES":
        alphabet = st.binary(max_size=6) if binary else st.text(max_size=4).map(lambda s: s.encode("utf-8", "replace"))
        want = np.empty(n, dtype=object)
        want[:] = data.draw(st.lists(alphabet, min_size=n, max_size=n))
    else:
        size = n * DATATYPES[datatype].itemsize
        raw = data.draw(st.binary(min_size=size, max_size=size))
        want = np.frombuffer(raw, dtype=DATATYPES[datatype]).copy()
        if datatype == "BOOL":
            want = want.view(np.uint8) % 2 == 1
    want = want.reshape(shape)
    inp = th.InferInput("x", shape, datatype)
    inp.set_data_from_numpy(want, binary_data=binary)
    req = parse_infer_request(*th.InferenceServerClient.generate_request_body([inp]))
    assert_same(req.inputs[0].array, want)
    body, hl = encode([("y", req.inputs[0].array)], (RequestedOutput("y", binary),))
    got = triton_result(body, hl).as_numpy("y")
    if datatype == "BYTES" and not binary:
        assert got.tolist() == np.vectorize(lambda b: b.decode(), otypes=[object])(want).tolist()
    else:
        assert_same(got, want)
