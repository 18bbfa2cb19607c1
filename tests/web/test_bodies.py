"""/api/predict bodies (JSON and msgpack) into InferRequests, every refusal naming the field; answers encoded."""

from __future__ import annotations

import base64
import contextlib
import json
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carml_mesh.dataplane.types import DEFAULT_TOP_K, InferRequest
from carml_mesh.errors import BadRequest, PayloadTooLarge, RequestError, UnsupportedMediaType
from carml_mesh.exec.worker.protocol import DTYPES, decode_tensor, encode_tensor
from carml_mesh.web import bodies
from carml_mesh.web.bodies import (
    check_content_type,
    encode,
    parse_document,
    parse_json_body,
    parse_msgpack_body,
    wants_msgpack,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))  # only bytes here: decoding happens in the worker
B64 = base64.b64encode(PNG).decode()


def js(doc: Any) -> InferRequest:
    return parse_json_body(json.dumps(doc).encode())


def mp(doc: Any) -> InferRequest:
    return parse_msgpack_body(msgpack.packb(doc, use_bin_type=True))


def refused_json(doc: Any, fragment: str, error: type[RequestError] = BadRequest) -> RequestError:
    with pytest.raises(RequestError) as info:
        js(doc)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"
    return info.value


def refused_msgpack(doc: Any, fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        mp(doc)
    assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


# --- the request fields -------------------------------------------------------------------------------------------


def test_minimal_request_gets_defaults() -> None:
    req = js({"model": "digits-cnn", "inputs": [{"image": B64}]})
    assert req == InferRequest(model="digits-cnn", top_k=DEFAULT_TOP_K, images=(PNG,))
    assert (req.version, req.framework, req.device, req.tensors) == (None, None, None, None)
    assert req.batch_size == 1


def test_all_fields() -> None:
    req = js(
        {
            "model": "m",
            "version": "1.0.0",
            "framework": "pytorch",
            "device": "cuda",
            "top_k": 3,
            "inputs": [{"image": B64}],
        }
    )
    assert (req.model, req.version, req.framework, req.device, req.top_k) == ("m", "1.0.0", "pytorch", "cuda", 3)


@pytest.mark.parametrize(("version", "expected"), [(1.0, "1.0"), (2, "2"), ("", None), (None, None)])
def test_numeric_version_is_its_string(version: Any, expected: str | None) -> None:
    assert js({"model": "m", "version": version, "inputs": [{"image": B64}]}).version == expected


@pytest.mark.parametrize(("top_k", "expected"), [(1, 1), ("7", 7), (" 3 ", 3), (0, 0), (1000, 1000)])
def test_top_k_values(top_k: Any, expected: int) -> None:
    assert js({"model": "m", "top_k": top_k, "inputs": [{"image": B64}]}).top_k == expected


@pytest.mark.parametrize("top_k", [2.0, 2.5, "five", "-1", "", True, None, [5], {"k": 5}, "\u00b2", "1e3"])
def test_top_k_must_be_an_integer(top_k: Any) -> None:
    refused_json({"model": "m", "top_k": top_k, "inputs": [{"image": B64}]}, "'top_k' must be an integer")


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"inputs": [{"image": B64}]}, "'model' is required"),
        ({"model": None, "inputs": [{"image": B64}]}, "'model' is required"),
        ({"model": 5, "inputs": [{"image": B64}]}, "'model' must be a string, got int"),
        ({"model": "m", "version": True, "inputs": [{"image": B64}]}, "'version' must be a string, got bool"),
        ({"model": "m", "framework": 1, "inputs": [{"image": B64}]}, "'framework' must be a string, got int"),
        ({"model": "m", "device": ["cpu"], "inputs": [{"image": B64}]}, "'device' must be a string, got list"),
        (
            {"model": "m", "modle": "x", "inputs": [{"image": B64}]},
            "unknown field 'modle'; fields are model, version, framework, device, node, top_k, inputs",
        ),
        ({"model": "m"}, "'inputs' must be a non-empty list"),
        ({"model": "m", "inputs": []}, "'inputs' must be a non-empty list"),
        ({"model": "m", "inputs": {"image": B64}}, "'inputs' must be a non-empty list"),
        ({"model": "m", "inputs": [{"image": B64, "tensor": [1]}]}, "inputs[0] must be one of {image: ...}"),
        ({"model": "m", "inputs": [{"image": B64}, {}]}, "inputs[1] must be one of"),
        ({"model": "m", "inputs": [{"picture": B64}]}, "inputs[0] must be one of"),
        ({"model": "m", "inputs": [B64]}, "inputs[0] must be one of"),
    ],
)
def test_request_refusals(doc: dict[str, Any], fragment: str) -> None:
    refused_json(doc, fragment)


@pytest.mark.parametrize("body", [b"[1, 2]", b'"model"', b"null", b"3"])
def test_body_must_be_a_map(body: bytes) -> None:
    with pytest.raises(BadRequest, match="the body must be a map with model, version"):
        parse_json_body(body)


@pytest.mark.parametrize("body", [b"", b"{", b"{'model': 'm'}", b'{"model": "m",}', b"\xff\xfe\x00", b"[" * 100_000])
def test_malformed_json(body: bytes) -> None:
    with pytest.raises(BadRequest, match=r"^malformed JSON: "):
        parse_json_body(body)


@pytest.mark.parametrize("body", [b"", b"\xc1", b"\x82\xa5model", msgpack.packb({"a": 1}) + b"\x00", b"\x91" * 5000])
def test_malformed_msgpack(body: bytes) -> None:
    with pytest.raises(BadRequest, match=r"^malformed msgpack: "):
        parse_msgpack_body(body)


def test_msgpack_body_must_be_a_map_with_string_keys() -> None:
    with pytest.raises(BadRequest, match="the body must be a map"):
        parse_msgpack_body(msgpack.packb([1, 2]))
    with pytest.raises(BadRequest, match="malformed msgpack"):
        parse_msgpack_body(msgpack.packb({1: "model"}))


# --- images -------------------------------------------------------------------------------------------------------


def test_images_as_base64_and_data_url() -> None:
    req = js({"model": "m", "inputs": [{"image": B64}, {"image": f"data:image/png;base64,{B64}"}]})
    assert req.images == (PNG, PNG)
    assert req.tensors is None
    assert req.batch_size == 2


def test_images_as_raw_bytes_or_base64_in_msgpack() -> None:
    req = mp({"model": "m", "inputs": [{"image": PNG}, {"image": B64}]})
    assert req.images == (PNG, PNG)


@pytest.mark.parametrize("value", ["not base64!", "Q", "QUJ", "data:image/png;base64,@@@", "\u00e9\u00e9\u00e9\u00e9"])
def test_bad_base64(value: str) -> None:
    refused_json({"model": "m", "inputs": [{"image": B64}, {"image": value}]}, "inputs[1].image is not valid base64")


@pytest.mark.parametrize("value", [123, None, [1, 2], {"data": B64}])
def test_image_of_the_wrong_type(value: Any) -> None:
    refused_json({"model": "m", "inputs": [{"image": value}]}, "inputs[0].image must be a base64 string")
    refused_msgpack(
        {"model": "m", "inputs": [{"image": value}]}, "inputs[0].image must be raw bytes or a base64 string"
    )


# --- tensors ------------------------------------------------------------------------------------------------------


def test_tensor_as_nested_list() -> None:
    req = js({"model": "m", "inputs": [{"tensor": [[1, 2, 3], [4, 5, 6]]}]})
    assert req.images == ()
    assert req.tensors is not None and list(req.tensors) == [""]
    t = req.tensors[""]
    assert t.shape == (1, 2, 3) and t.dtype == np.float32
    assert t.tolist() == [[[1, 2, 3], [4, 5, 6]]]


def test_tensor_as_flat_list_with_shape_and_dtype() -> None:
    req = js({"model": "m", "inputs": [{"tensor": {"dtype": "int64", "shape": [2, 2], "data": [1, 2, 3, 4]}}]})
    t = req.tensors[""]  # type: ignore[index]
    assert t.dtype == np.int64 and t.tolist() == [[[1, 2], [3, 4]]]


def test_scalar_and_empty_tensors() -> None:
    assert js({"model": "m", "inputs": [{"tensor": {"shape": [], "data": [7]}}]}).tensors[""].shape == (1,)  # type: ignore[index]
    assert js({"model": "m", "inputs": [{"tensor": []}]}).tensors[""].shape == (1, 0)  # type: ignore[index]
    req = js({"model": "m", "inputs": [{"tensor": {"shape": [0, 3], "data": []}}]})
    assert req.tensors[""].shape == (1, 0, 3)  # type: ignore[index]


@pytest.mark.parametrize("name", list(DTYPES))
def test_tensor_as_raw_bytes_in_msgpack(name: str) -> None:
    array = (np.arange(6) % 2).astype(name).reshape(2, 3)
    req = mp({"model": "m", "inputs": [{"tensor": encode_tensor(array)}, {"tensor": encode_tensor(array)}]})
    t = req.tensors[""]  # type: ignore[index]
    assert t.shape == (2, 2, 3) and t.dtype == np.dtype(name)
    np.testing.assert_array_equal(t[1], array)


def test_lists_are_accepted_in_msgpack_too() -> None:
    req = mp({"model": "m", "inputs": [{"tensor": {"dtype": "uint8", "data": [1, 2]}}]})
    assert req.tensors[""].dtype == np.uint8  # type: ignore[index]


def test_items_are_stacked_into_a_batch() -> None:
    req = js({"model": "m", "inputs": [{"tensor": [i, i + 1]} for i in range(3)]})
    assert req.tensors[""].tolist() == [[0, 1], [1, 2], [2, 3]]  # type: ignore[index]
    assert req.batch_size == 3


def test_multi_input_tensors_items() -> None:
    req = js(
        {
            "model": "m",
            "inputs": [
                {"tensors": {"ids": {"dtype": "int64", "data": [1, 2, 3]}, "mask": [[1, 1, 0]]}},
                {"tensors": {"ids": {"dtype": "int64", "data": [4, 5, 6]}, "mask": [[1, 0, 0]]}},
            ],
        }
    )
    assert req.tensors is not None and sorted(req.tensors) == ["ids", "mask"]
    assert req.tensors["ids"].dtype == np.int64 and req.tensors["ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert req.tensors["mask"].shape == (2, 1, 3)
    assert req.batch_size == 2


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        ([[1, 2], [3]], "inputs[0].tensor.data is ragged"),
        ([[1, 2], [3], [4, 5, 6]], "inputs[0].tensor.data is ragged"),  # 3 x 2 values, but not 3 rows of 2
        ([1, [2]], "inputs[0].tensor.data is ragged"),
        ([[1, [2]], [3, 4]], "inputs[0].tensor.data is ragged"),
        ([[[1]], [2]], "inputs[0].tensor.data is ragged"),
        ([1, "2"], "inputs[0].tensor.data must hold only numbers, found str"),
        ([[1, None]], "inputs[0].tensor.data must hold only numbers, found NoneType"),
        ([{"x": 1}], "inputs[0].tensor.data must hold only numbers, found dict"),
        ({"data": "1,2"}, "inputs[0].tensor.data must be a list of numbers"),
        ({"shape": [2]}, "inputs[0].tensor.data must be a list of numbers"),
        ("1,2", "inputs[0].tensor must be a list of numbers or a map with dtype, shape and data"),
        (5, "inputs[0].tensor must be a list of numbers or a map"),
        ({"shape": [2, 3], "data": [1, 2, 3, 4]}, "inputs[0].tensor: shape [2, 3] needs 6 values, data has 4"),
        ({"shape": [-1], "data": [1]}, "inputs[0].tensor.shape must be a list of non-negative integers, got [-1]"),
        ({"shape": "2", "data": [1, 2]}, "inputs[0].tensor.shape must be a list of non-negative integers"),
        ({"shape": [True], "data": [1]}, "inputs[0].tensor.shape must be a list of non-negative integers"),
        ({"shape": [2.0], "data": [1, 2]}, "inputs[0].tensor.shape must be a list of non-negative integers"),
        ({"shape": [1] * 65, "data": [1]}, "inputs[0].tensor: shape"),
        ({"shape": [0, 2**70], "data": []}, "inputs[0].tensor: shape"),
        ({"dtype": "complex64", "data": [1]}, "inputs[0].tensor: unsupported dtype 'complex64'; use one of bool, "),
        ({"dtype": "<f4", "data": [1]}, "inputs[0].tensor: unsupported dtype '<f4'"),
        ({"dtype": 32, "data": [1]}, "inputs[0].tensor: unsupported dtype 32"),
        ({"dtype": "uint8", "data": [256]}, "inputs[0].tensor.data holds values that are not uint8"),
        ({"dtype": "uint8", "data": [-1]}, "inputs[0].tensor.data holds values that are not uint8"),
        ({"dtype": "int64", "data": [2**63]}, "inputs[0].tensor.data holds values that are not int64"),
        ({"dtype": "float16", "data": [1e10]}, "inputs[0].tensor.data holds values that are not float16"),
        ({"dtype": "float32", "data": [1e300]}, "inputs[0].tensor.data holds values that are not float32"),
        ({"dtype": "float64", "data": [2**1100]}, "inputs[0].tensor.data holds values that are not float64"),
    ],
)
def test_tensor_refusals(tensor: Any, fragment: str) -> None:
    refused_json({"model": "m", "inputs": [{"tensor": tensor}]}, fragment)


def test_deeply_nested_tensor_is_refused() -> None:
    data: Any = [1.0]
    for _ in range(70):
        data = [data]
    refused_json({"model": "m", "inputs": [{"tensor": data}]}, "inputs[0].tensor: shape")


def test_error_in_a_named_tensor_names_the_input() -> None:
    refused_json(
        {"model": "m", "inputs": [{"tensors": {"ids": [1], "mask": [1, "x"]}}]},
        "inputs[0].tensors.mask.data must hold only numbers",
    )


@pytest.mark.parametrize("value", [[1, 2], {}, "ids"])
def test_tensors_item_must_map_names(value: Any) -> None:
    refused_json({"model": "m", "inputs": [{"tensors": value}]}, "inputs[0].tensors must map input names to tensors")


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        (
            {"dtype": "float32", "shape": [2], "data": b"\x00" * 4},
            "inputs[0].tensor: tensor of shape [2] and dtype float32 needs 8 bytes, got 4",
        ),
        ({"dtype": "complex64", "shape": [1], "data": b"\x00" * 8}, "inputs[0].tensor: unsupported tensor dtype"),
        ({"dtype": ["x"], "shape": [1], "data": b"\x00"}, "inputs[0].tensor: unsupported tensor dtype"),
        ({"dtype": "uint8", "shape": [-1], "data": b""}, "inputs[0].tensor: tensor shape must be"),
    ],
)
def test_raw_bytes_tensor_refusals(tensor: dict[str, Any], fragment: str) -> None:
    refused_msgpack({"model": "m", "inputs": [{"tensor": tensor}]}, fragment)


def test_mixed_images_and_tensors() -> None:
    refused_json({"model": "m", "inputs": [{"image": B64}, {"tensor": [1]}]}, "either images or tensors, not both")


def test_items_with_different_shapes() -> None:
    refused_json(
        {"model": "m", "inputs": [{"tensor": [1, 2]}, {"tensor": [1, 2, 3]}]},
        "tensors of input the model differ in shape: [(2,), (3,)]",
    )
    refused_json(
        {"model": "m", "inputs": [{"tensors": {"a": [1]}}, {"tensors": {"a": [[1]]}}]},
        "tensors of input a differ in shape",
    )


@pytest.mark.parametrize(
    "items",
    [
        [{"tensors": {"a": [1]}}, {"tensors": {"b": [1]}}],
        [{"tensors": {"a": [1], "b": [1]}}, {"tensors": {"a": [1]}}],
        [{"tensor": [1]}, {"tensors": {"a": [1]}}],
    ],
)
def test_items_must_give_the_same_tensors(items: list[Any]) -> None:
    refused_json({"model": "m", "inputs": items}, "every input item must give the same tensors")


def test_too_many_json_numbers_is_payload_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "MAX_JSON_ELEMENTS", 5)
    assert js({"model": "m", "inputs": [{"tensor": [1, 2, 3, 4, 5]}]}).tensors[""].size == 5  # type: ignore[index]
    err = refused_json(
        {"model": "m", "inputs": [{"tensor": [[1, 2, 3], [4, 5, 6]]}]},
        "inputs[0].tensor holds more than 5 numbers",
        PayloadTooLarge,
    )
    assert err.status == 413


# --- content negotiation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type", "expected"),
    [
        ("application/msgpack", "application/json", True),
        ("application/x-msgpack", "", True),
        ("application/vnd.msgpack", "multipart/form-data", True),
        ("Application/MsgPack", "application/json", True),
        ("text/html, application/msgpack;q=0.9", "application/json", True),
        ("", "application/msgpack", True),
        ("*/*", "application/msgpack", True),
        ("", "application/x-msgpack", True),
        ("*/*", "application/vnd.msgpack", True),
        ("application/json", "application/msgpack", False),
        ("application/json, */*", "application/msgpack", False),
        ("", "application/json", False),
        ("*/*", "application/json", False),
        ("", "multipart/form-data", False),
        ("", "", False),
        ("application/json", "application/json", False),
    ],
)
def test_wants_msgpack(accept: str, content_type: str, expected: bool) -> None:
    assert wants_msgpack(accept, content_type) is expected


@pytest.mark.parametrize(
    "ct",
    [
        "application/json",
        "application/msgpack",
        "application/x-msgpack",
        "application/vnd.msgpack",
        "multipart/form-data",
    ],
)
def test_accepted_content_types(ct: str) -> None:
    assert check_content_type(ct) == ct


@pytest.mark.parametrize("ct", ["text/plain", "", "application/xml", "image/png"])
def test_unsupported_content_types(ct: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        check_content_type(ct)
    assert info.value.status == 415
    assert (ct or "(none)") in str(info.value)


# --- encoding answers ---------------------------------------------------------------------------------------------


def test_encode_json_arrays_with_nan_as_null() -> None:
    payload = {
        "f": np.array([1.5, np.nan, np.inf, -np.inf], dtype=np.float32),
        "m": np.array([[np.nan, 2.0], [3.0, 4.0]]),
        "i": np.arange(3, dtype=np.int16),
        "b": np.array([True, False]),
        "s": np.float32(0.25),
        "n": np.int64(7),
        "plain": [1, "x"],
    }
    doc = json.loads(encode(payload, as_msgpack=False))
    assert doc["f"] == {"dtype": "float32", "shape": [4], "data": [1.5, None, None, None]}
    assert doc["m"] == {"dtype": "float64", "shape": [2, 2], "data": [[None, 2.0], [3.0, 4.0]]}
    assert doc["i"] == {"dtype": "int16", "shape": [3], "data": [0, 1, 2]}
    assert doc["b"] == {"dtype": "bool", "shape": [2], "data": [True, False]}
    assert (doc["s"], doc["n"], doc["plain"]) == (0.25, 7, [1, "x"])


def test_encode_json_is_compact_and_float32_exact() -> None:
    body = encode({"a": np.array([0.1], dtype=np.float32)}, as_msgpack=False)
    assert b" " not in body
    assert json.loads(body)["a"]["data"][0] == float(np.float32(0.1))


def test_encode_json_refuses_unknown_objects() -> None:
    with pytest.raises(TypeError, match="cannot encode object"):
        encode({"x": object()}, as_msgpack=False)


def test_encode_msgpack_arrays_as_raw_bytes() -> None:
    payload = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "be": np.array([1, 256], dtype=">u2"),
        "zero_d": np.array(3.5),
        "nan": np.array([np.nan]),
        "s": np.float64(0.5),
        "n": np.uint8(9),
        "raw": b"\x00\x01",
    }
    doc = msgpack.unpackb(encode(payload, as_msgpack=True), raw=False)
    assert doc["a"]["dtype"] == "float32" and doc["a"]["shape"] == [2, 3]
    assert isinstance(doc["a"]["data"], bytes) and len(doc["a"]["data"]) == 24
    np.testing.assert_array_equal(decode_tensor(doc["a"]), payload["a"])
    assert doc["be"]["data"] == b"\x01\x00\x00\x01"  # little-endian on the wire
    np.testing.assert_array_equal(decode_tensor(doc["be"]), [1, 256])
    assert decode_tensor(doc["zero_d"]).shape == () and decode_tensor(doc["zero_d"])[()] == 3.5
    assert math.isnan(decode_tensor(doc["nan"])[0])
    assert (doc["s"], doc["n"], doc["raw"]) == (0.5, 9, b"\x00\x01")


def test_encode_msgpack_refuses_unknown_objects() -> None:
    with pytest.raises(TypeError, match="cannot encode set"):
        encode({"x": {1}}, as_msgpack=True)


def test_msgpack_answer_round_trips_into_a_request() -> None:
    array = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    body = encode({"model": "m", "inputs": [{"tensor": array}]}, as_msgpack=True)
    req = parse_msgpack_body(body)
    np.testing.assert_array_equal(req.tensors[""][0], array)  # type: ignore[index]


# --- robustness ---------------------------------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_json = st.recursive(
    _json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=20,
)
_numbers = st.integers(-(2**70), 2**70) | st.floats() | st.booleans()
_nested = st.recursive(_numbers, lambda c: st.lists(c, max_size=3), max_leaves=12)
_tensor_value = (
    st.lists(_nested, max_size=4)
    | st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.sampled_from([*DTYPES, "complex64", "f4"]) | _json_scalars,
            "shape": st.lists(st.integers(-1, 4) | st.booleans(), max_size=4) | _json,
            "data": st.lists(_nested, max_size=6) | st.binary(max_size=32) | _json,  # bytes: as msgpack delivers
        },
    )
    | _json
)
_item = (
    st.fixed_dictionaries(
        {"image": st.text(alphabet="QUJDRA=+/,:;data", max_size=12) | st.binary(max_size=8) | _json_scalars}
    )
    | st.fixed_dictionaries({"tensor": _tensor_value})
    | st.fixed_dictionaries(
        {"tensors": st.dictionaries(st.sampled_from(["a", "b"]), _tensor_value, max_size=2) | _json}
    )
    | _json
)
_structured = st.fixed_dictionaries(
    {"inputs": st.lists(_item, max_size=3) | _json},
    optional={
        "model": st.text(max_size=4) | _json_scalars,
        "version": _json_scalars,
        "top_k": _json_scalars,
        "framework": _json_scalars,
    },
)


@settings(max_examples=400, deadline=None)
@given(doc=_structured | _json, binary=st.booleans())
def test_arbitrary_documents_raise_only_request_errors(doc: Any, binary: bool) -> None:
    try:
        req = parse_document(doc, binary=binary)
    except RequestError:
        return
    assert isinstance(req, InferRequest)
    assert req.batch_size == len(doc["inputs"])


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=64))
def test_arbitrary_bodies_raise_only_request_errors(body: bytes) -> None:
    for parse in (parse_json_body, parse_msgpack_body):
        with contextlib.suppress(RequestError):
            parse(body)


# --- large msgpack tensors: views of the body, buffers reused when free --------------------------------------------


def test_a_large_msgpack_tensor_is_a_view_of_the_body() -> None:
    x = np.random.default_rng(3).standard_normal((3, 224, 224)).astype(np.float32)
    item = {"tensor": {"dtype": "float32", "shape": [3, 224, 224], "data": x.tobytes()}}
    body = bytearray(msgpack.packb({"model": "m", "inputs": [item]}, use_bin_type=True))
    request = bodies.parse_msgpack_body(body)
    tensor = request.tensors[""]  # type: ignore[index]
    assert tensor.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(tensor[0], x)
    assert np.shares_memory(tensor, np.frombuffer(body, np.uint8))  # not copied (nor stacked)
    two = bodies.parse_msgpack_body(msgpack.packb({"model": "m", "inputs": [item, item]}, use_bin_type=True))
    np.testing.assert_array_equal(two.tensors[""], np.stack([x, x]))  # type: ignore[index]


def test_body_buffers_are_reused_only_once_nothing_refers_to_them() -> None:
    buffers = bodies.BodyBuffers(max_bytes=3 * 1000)
    first = buffers.get(1000)
    kept = id(first)  # the pool keeps it alive, so its id stays its own
    view = np.frombuffer(memoryview(first), np.uint8)  # what a parsed request holds on to
    del first
    second = buffers.get(1000)  # the first is still viewed: a new one
    assert id(second) != kept
    del view
    third = buffers.get(1000)  # the first is free again: reused, not allocated
    assert id(third) == kept
    fourth = buffers.get(1000)  # both held: a third one, and the pool is full now (3000 bytes)
    assert fourth is not third and fourth is not second
    fifth = buffers.get(1000)  # all three held and no room to keep more: a buffer of its own
    assert len(fifth) == 1000 and all(fifth is not b for b in (second, third, fourth))
    del second, third, fourth
    reused = {id(buffers.get(1000)) for _ in range(5)}  # each released before the next call
    assert reused <= {kept, *[id(b) for b in buffers._by_size[1000]]} and len(buffers._by_size[1000]) == 3
