"""Strict manifest validation: the two shipped manifests are the valid baseline, mutated one field at a time."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version

from carml_mesh.errors import CarmlError, ManifestError
from carml_mesh.exec.worker.preprocess import ImageSpec
from carml_mesh.manifest.schema import DEVICES, Batching, parse_manifest

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
FILE = "models/m.yml"
GOOD_SHA = "ab" * 32


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / name).read_text(encoding="utf-8"))


DIGITS = _load("digits-cnn.yml")
EFFNET = _load("efficientnet-lite0.yml")


@pytest.fixture
def digits() -> dict[str, Any]:
    return copy.deepcopy(DIGITS)


@pytest.fixture
def effnet() -> dict[str, Any]:
    """The EfficientNet manifest, with an explicit resize-then-center-crop (which some tests mutate)."""
    doc = copy.deepcopy(EFFNET)
    doc["inputs"][0]["parameters"].update(
        resize={"shorter_side": 256, "interpolation": "bilinear"}, crop={"mode": "center"}
    )
    return doc


def refused(doc: Any, field: str, fragment: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc, file=FILE)
    err = info.value
    assert err.field == field, f"field {err.field!r} != {field!r} (reason: {err.reason})"
    assert fragment in err.reason, f"{fragment!r} not in {err.reason!r}"
    assert err.file == FILE
    assert str(err) == (f"{FILE}: {field}: {err.reason}" if field else f"{FILE}: {err.reason}")
    return err


def tensor_input(name: str = "x", dims: list[Any] | None = None) -> dict[str, Any]:
    return {"name": name, "type": "tensor", "parameters": {"element_type": "float32", "dimensions": dims or [4]}}


# --- the valid baseline -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [DIGITS, EFFNET], ids=["digits-cnn", "efficientnet-lite0"])
def test_shipped_manifests_parse_to_what_they_say(doc: dict[str, Any]) -> None:
    m = parse_manifest(copy.deepcopy(doc), file=FILE)
    assert (m.name, m.version, m.file) == (doc["name"], str(doc["version"]), FILE)
    assert (m.description, m.license, m.task) == (doc["description"], doc["license"], doc.get("task", ""))
    assert m.references == tuple(doc.get("references", ()))
    assert dict(m.attributes) == doc.get("attributes", {})
    (inp,) = m.inputs
    params = doc["inputs"][0]["parameters"]
    assert (inp.name, inp.type) == (doc["inputs"][0]["name"], "image")
    assert inp.dimensions == tuple(params["dimensions"])
    assert (inp.layout, inp.color_mode) == (params.get("layout", "CHW"), params.get("color_mode", "RGB"))
    assert inp.mean == tuple(float(v) for v in params.get("mean", [0.0]))
    assert inp.scale == tuple(float(v) for v in params.get("scale", [1.0]))
    assert inp.resize_shorter == params.get("resize", {}).get("shorter_side")
    assert inp.crop == ("crop" in params)
    out, out_params = m.output, doc["output"]["parameters"]
    assert (out.name, out.type) == (doc["output"]["name"], "classification")
    assert out.dimensions == tuple(out_params["dimensions"])
    if isinstance(out_params["labels"], list):
        assert (out.labels, out.labels_path) == (tuple(out_params["labels"]), None)
    else:
        assert (out.labels, out.labels_path) == ((), out_params["labels"]["path"])
    assert [f.name for f in m.frameworks] == [f["name"] for f in doc["frameworks"]]
    for entry, raw in zip(m.frameworks, doc["frameworks"], strict=True):
        assert m.framework(entry.name) is entry
        assert entry.artifact.path == raw["artifact"].get("path")
        assert str(entry.version) == raw.get("version", "")
    assert m.framework("tensorflow") is None
    assert m.devices == tuple(doc.get("devices", DEVICES))
    b = doc.get("batching", {})
    assert m.batching == Batching(b.get("max_batch_size", 1), float(b.get("max_queue_delay_ms", 0)))


def test_digits_manifest_specifics(digits: dict[str, Any]) -> None:
    m = parse_manifest(digits, file=FILE)
    assert (m.inputs[0].color_mode, m.inputs[0].dimensions[0]) == ("GRAY", 1)
    assert m.output.labels == tuple(str(d) for d in range(10))
    onnx = m.framework("onnxruntime")
    assert onnx is not None
    assert onnx.artifact.url is None and onnx.artifact.sha256 is None
    assert Version("1.16.0") in onnx.version and Version("1.15.9") not in onnx.version


def test_resize_and_crop(effnet: dict[str, Any]) -> None:
    inp = parse_manifest(effnet, file=FILE).inputs[0]
    assert (inp.resize_shorter, inp.interpolation, inp.crop) == (256, "bilinear", True)
    effnet["inputs"][0]["parameters"]["crop"] = {}
    assert parse_manifest(effnet, file=FILE).inputs[0].crop is True  # mode defaults to center


def test_image_input_to_wire_is_what_the_worker_reads(effnet: dict[str, Any]) -> None:
    wire = parse_manifest(effnet, file=FILE).inputs[0].to_wire()
    assert wire["resize"] == {"shorter_side": 256, "interpolation": "bilinear"}
    assert wire["crop"] == {"mode": "center"}
    spec = ImageSpec.from_wire(wire)
    assert (spec.height, spec.width, spec.layout, spec.color_mode) == (224, 224, "CHW", "RGB")
    assert (spec.resize_shorter, spec.crop, spec.mean, spec.scale) == (256, True, (127.0,) * 3, (128.0,) * 3)


def test_tensor_input_to_wire_has_no_image_fields(digits: dict[str, Any]) -> None:
    digits["inputs"] = [tensor_input("x", [2, -1])]
    wire = parse_manifest(digits, file=FILE).inputs[0].to_wire()
    assert wire == {"name": "x", "type": "tensor", "element_type": "float32", "dimensions": [2, -1]}


def test_minimal_manifest_uses_defaults() -> None:
    doc = {
        "name": "m",
        "version": "1",
        "inputs": [tensor_input()],
        "output": {"name": "y", "type": "tensor"},
        "frameworks": [{"name": "onnxruntime", "artifact": {"path": "m.onnx"}}],
    }
    m = parse_manifest(doc, file=FILE)
    assert (m.description, m.license, m.task, m.references, dict(m.attributes)) == ("", "", "", (), {})
    assert m.devices == ("cpu", "cuda")
    assert m.batching == Batching(1, 0.0)
    assert (m.output.dimensions, m.output.probabilities, m.output.labels) == ((-1,), "softmax", ())
    assert str(m.frameworks[0].version) == ""  # no constraint: any version
    assert Version("0.1") in m.frameworks[0].version


# --- required fields ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["name", "version", "inputs", "output", "frameworks"])
def test_each_required_top_level_field(digits: dict[str, Any], key: str) -> None:
    del digits[key]
    refused(digits, key, "is required")


@pytest.mark.parametrize("key", ["name", "version", "inputs", "output", "frameworks"])
def test_required_field_given_as_null(digits: dict[str, Any], key: str) -> None:
    digits[key] = None
    refused(digits, key, "is required")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("inputs", 0, "name"), "inputs[0].name"),
        (("inputs", 0, "type"), "inputs[0].type"),
        (("inputs", 0, "parameters"), "inputs[0].parameters"),
        (("inputs", 0, "parameters", "dimensions"), "inputs[0].parameters.dimensions"),
        (("output", "name"), "output.name"),
        (("output", "type"), "output.type"),
        (("frameworks", 1, "name"), "frameworks[1].name"),
        (("frameworks", 0, "artifact"), "frameworks[0].artifact"),
    ],
)
def test_each_required_nested_field(digits: dict[str, Any], path: tuple[Any, ...], field: str) -> None:
    parent = digits
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    refused(digits, field, "is required")


def test_empty_inputs_and_frameworks(digits: dict[str, Any]) -> None:
    refused({**digits, "inputs": []}, "inputs", "at least one input")
    refused({**digits, "frameworks": []}, "frameworks", "at least one framework")


# --- wrong types --------------------------------------------------------------------------------------------------


def test_document_must_be_a_mapping() -> None:
    refused(["name", "x"], "", "must be a mapping, got list")
    refused(None, "", "must be a mapping, got nothing")
    refused("name: x", "", "must be a mapping, got str")


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("name", 5, "must be a string, got int"),
        ("name", ["a"], "must be a string, got list"),
        ("version", True, "must be a string, got bool"),
        ("version", {"major": 1}, "must be a string, got dict"),
        ("description", 3, "must be a string, got int"),
        ("license", ["MIT"], "must be a string, got list"),
        ("task", 1.5, "must be a string, got float"),
        ("references", "https://x", "must be a list, got str"),
        ("references", [1, 2], "must be a list of strings"),
        ("attributes", ["a", "b"], "must be a mapping"),
        ("attributes", {"nested": {"a": 1}}, "must be a mapping of names to strings, numbers or booleans"),
        ("inputs", {"name": "input"}, "must be a list, got dict"),
        ("output", ["logits"], "must be a mapping, got list"),
        ("frameworks", "onnxruntime", "must be a list, got str"),
        ("devices", "cpu", "must be a list, got str"),
        ("batching", 8, "must be a mapping, got int"),
    ],
)
def test_wrong_top_level_types(digits: dict[str, Any], key: str, value: Any, fragment: str) -> None:
    digits[key] = value
    refused(digits, key, fragment)


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda d: d["inputs"].__setitem__(0, "input"), "inputs[0]", "must be a mapping, got str"),
        (lambda d: d["inputs"][0].__setitem__("name", 7), "inputs[0].name", "must be a string, got int"),
        (
            lambda d: d["inputs"][0].__setitem__("type", "audio"),
            "inputs[0].type",
            "'audio' is not one of image, tensor",
        ),
        (lambda d: d["inputs"][0].__setitem__("parameters", [1]), "inputs[0].parameters", "must be a mapping"),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("dimensions", "1x8x8"),
            "inputs[0].parameters.dimensions",
            "must be a list, got str",
        ),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("element_type", "float128"),
            "inputs[0].parameters.element_type",
            "'float128' is not one of",
        ),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("layout", "NCHW"),
            "inputs[0].parameters.layout",
            "'NCHW' is not one of CHW, HWC",
        ),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("color_mode", "CMYK"),
            "inputs[0].parameters.color_mode",
            "'CMYK' is not one of RGB, BGR, GRAY",
        ),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("invert", "yes"),
            "inputs[0].parameters.invert",
            "must be true or false, got 'yes'",
        ),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("resize", "bilinear"),
            "inputs[0].parameters.resize",
            "must be a mapping, got str",
        ),
        (
            lambda d: d["inputs"][0]["parameters"]["resize"].__setitem__("interpolation", "cubic"),
            "inputs[0].parameters.resize.interpolation",
            "'cubic' is not one of nearest, bilinear, bicubic, lanczos",
        ),
        (
            lambda d: d["inputs"][0]["parameters"]["resize"].__setitem__("shorter_side", 0),
            "inputs[0].parameters.resize.shorter_side",
            "must be an integer >= 1, got 0",
        ),
        (
            lambda d: d["inputs"][0]["parameters"]["resize"].__setitem__("shorter_side", 256.0),
            "inputs[0].parameters.resize.shorter_side",
            "must be an integer >= 1, got 256.0",
        ),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("crop", {"mode": "random"}),
            "inputs[0].parameters.crop.mode",
            "'random' is not one of center",
        ),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("crop", True),
            "inputs[0].parameters.crop",
            "must be a mapping, got bool",
        ),
        (lambda d: d["output"].__setitem__("type", "detection"), "output.type", "'detection' is not one of"),
        (
            lambda d: d["output"]["parameters"].__setitem__("probabilities", "relu"),
            "output.parameters.probabilities",
            "'relu' is not one of softmax, sigmoid, none",
        ),
        (
            lambda d: d["output"]["parameters"].__setitem__("dimensions", [0]),
            "output.parameters.dimensions",
            "must be a list of positive integers",
        ),
        (
            lambda d: d["output"]["parameters"].__setitem__("element_type", "str"),
            "output.parameters.element_type",
            "'str' is not one of",
        ),
        (lambda d: d["frameworks"].__setitem__(0, ["onnxruntime"]), "frameworks[0]", "must be a mapping, got list"),
        (
            lambda d: d["frameworks"][0].__setitem__("version", 1.16),
            "frameworks[0].version",
            "must be a string, got float",
        ),
        (
            lambda d: d["frameworks"][0].__setitem__("artifact", "model.onnx"),
            "frameworks[0].artifact",
            "must be a mapping, got str",
        ),
        (
            lambda d: d["frameworks"][0]["artifact"].__setitem__("path", 3),
            "frameworks[0].artifact.path",
            "must be a string, got int",
        ),
    ],
)
def test_wrong_nested_types(effnet: dict[str, Any], mutate: Any, field: str, fragment: str) -> None:
    mutate(effnet)
    refused(effnet, field, fragment)


# --- unknown fields -----------------------------------------------------------------------------------------------


def test_unknown_top_level_field_names_it_and_lists_the_allowed(digits: dict[str, Any]) -> None:
    digits["lisence"] = "MIT"
    err = refused(digits, "lisence", "unknown field")
    assert "allowed here: name, version, description, license, references" in err.reason
    assert "batching" in err.reason


@pytest.mark.parametrize(
    ("mutate", "field", "allowed"),
    [
        (lambda d: d["inputs"][0].__setitem__("typ", "image"), "inputs[0].typ", "name, type, parameters"),
        (
            lambda d: d["inputs"][0]["parameters"].__setitem__("scael", 1),
            "inputs[0].parameters.scael",
            "element_type, dimensions, layout, color_mode, mean, scale, resize, crop, invert",
        ),
        (
            lambda d: d["inputs"][0]["parameters"]["resize"].__setitem__("shorter", 1),
            "inputs[0].parameters.resize.shorter",
            "shorter_side, interpolation",
        ),
        (lambda d: d["output"].__setitem__("label", []), "output.label", "name, type, parameters"),
        (
            lambda d: d["output"]["parameters"]["labels"].__setitem__("file", "x"),
            "output.parameters.labels.file",
            "path",
        ),
        (
            lambda d: d["frameworks"][1].__setitem__("versions", ">=1"),
            "frameworks[1].versions",
            "name, version, artifact",
        ),
        (
            lambda d: d["frameworks"][0]["artifact"].__setitem__("sha265", GOOD_SHA),
            "frameworks[0].artifact.sha265",
            "path, url, sha256",
        ),
        (
            lambda d: d["batching"].__setitem__("max_batch", 2),
            "batching.max_batch",
            "max_batch_size, max_queue_delay_ms",
        ),
    ],
)
def test_unknown_nested_field(effnet: dict[str, Any], mutate: Any, field: str, allowed: str) -> None:
    mutate(effnet)
    err = refused(effnet, field, "unknown field")
    assert err.reason.endswith(f"allowed here: {allowed}")


def test_unknown_non_string_key_is_named(digits: dict[str, Any]) -> None:
    digits[3] = "x"
    refused(digits, "3", "unknown field")


# --- name and version ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Digits", "-digits", ".x", "", "a b", "digits/cnn", "a" * 65, "dígits"])
def test_bad_names(digits: dict[str, Any], name: str) -> None:
    digits["name"] = name
    refused(digits, "name", "does not match")


@pytest.mark.parametrize("name", ["a", "0", "a" * 64, "resnet-50_v1.5"])
def test_good_names(digits: dict[str, Any], name: str) -> None:
    digits["name"] = name
    assert parse_manifest(digits, file=FILE).name == name


@pytest.mark.parametrize("version", ["", "-1", "1 0", "v" * 33, ".1", "1/2"])
def test_bad_versions(digits: dict[str, Any], version: str) -> None:
    digits["version"] = version
    refused(digits, "version", "does not match")


@pytest.mark.parametrize("version", ["1.0.0", "V2", "2024.01+local", "1.0-rc1", "a" * 32])
def test_good_versions(digits: dict[str, Any], version: str) -> None:
    digits["version"] = version
    assert parse_manifest(digits, file=FILE).version == version


def test_yaml_float_and_int_versions_are_accepted_as_the_strings_they_look_like(digits: dict[str, Any]) -> None:
    text = yaml.safe_dump(digits).replace("version: 1.0.0", "version: 1.0")
    doc = yaml.safe_load(text)
    assert doc["version"] == 1.0 and isinstance(doc["version"], float)
    assert parse_manifest(doc, file=FILE).version == "1.0"
    digits["version"] = 2
    assert parse_manifest(digits, file=FILE).version == "2"


def test_negative_number_version_is_refused(digits: dict[str, Any]) -> None:
    digits["version"] = -1.5
    refused(digits, "version", "'-1.5' does not match")


# --- image inputs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "color_mode", "dims", "channels"),
    [
        ("CHW", "RGB", [1, 8, 8], 3),
        ("CHW", "BGR", [4, 8, 8], 3),
        ("CHW", "GRAY", [3, 8, 8], 1),
        ("HWC", "RGB", [3, 224, 224], 3),  # channels-first dims with an HWC layout
        ("HWC", "GRAY", [8, 8, 3], 1),
    ],
)
def test_image_channel_count_must_match_color_mode(
    digits: dict[str, Any], layout: str, color_mode: str, dims: list[int], channels: int
) -> None:
    params = digits["inputs"][0]["parameters"]
    params.update(layout=layout, color_mode=color_mode, dimensions=dims, mean=0, scale=1)
    refused(digits, "inputs[0].parameters.dimensions", f"layout {layout} with color_mode {color_mode} needs {channels}")


@pytest.mark.parametrize(
    ("layout", "color_mode", "dims"),
    [("HWC", "RGB", [224, 224, 3]), ("HWC", "GRAY", [8, 8, 1]), ("CHW", "BGR", [3, 2, 2])],
)
def test_image_channel_count_accepted(digits: dict[str, Any], layout: str, color_mode: str, dims: list[int]) -> None:
    digits["inputs"][0]["parameters"].update(layout=layout, color_mode=color_mode, dimensions=dims, mean=0, scale=1)
    inp = parse_manifest(digits, file=FILE).inputs[0]
    assert (inp.layout, inp.color_mode, inp.dimensions) == (layout, color_mode, tuple(dims))


@pytest.mark.parametrize("dims", [[8, 8], [1, 8, 8, 1], [1, -1, 8]])
def test_image_needs_three_fixed_dimensions(digits: dict[str, Any], dims: list[int]) -> None:
    digits["inputs"][0]["parameters"]["dimensions"] = dims
    refused(digits, "inputs[0].parameters.dimensions", "an image input needs three fixed dimensions")


@pytest.mark.parametrize("dims", [[], [1, 0, 8], [1, "8", 8], ["any"], [1, 8, 8.0], [True, 8, 8], [-2, 8, 8], [None]])
@pytest.mark.parametrize("kind", ["image", "tensor"])
def test_bad_dimensions(digits: dict[str, Any], dims: list[Any], kind: str) -> None:
    digits["inputs"][0]["type"] = kind
    digits["inputs"][0]["parameters"]["dimensions"] = dims
    refused(digits, "inputs[0].parameters.dimensions", "must be a non-empty list of positive integers")


@pytest.mark.parametrize("key", ["mean", "scale"])
@pytest.mark.parametrize("value", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
def test_mean_and_scale_need_one_or_channel_count_values(effnet: dict[str, Any], key: str, value: list[float]) -> None:
    effnet["inputs"][0]["parameters"][key] = value
    refused(effnet, f"inputs[0].parameters.{key}", f"must have 1 or 3 values (one per channel), got {len(value)}")


def test_gray_image_mean_needs_a_single_value(digits: dict[str, Any]) -> None:
    digits["inputs"][0]["parameters"]["mean"] = [0.0, 0.0, 0.0]
    refused(digits, "inputs[0].parameters.mean", "must have 1 or 1 values")


@pytest.mark.parametrize("key", ["mean", "scale"])
@pytest.mark.parametrize("value", ["128", ["1", 2, 3], [True], {"r": 1}, [None], [math.nan], [math.inf], -math.inf])
def test_mean_and_scale_must_be_finite_numbers(effnet: dict[str, Any], key: str, value: Any) -> None:
    effnet["inputs"][0]["parameters"][key] = value
    refused(effnet, f"inputs[0].parameters.{key}", "must be a number or a list of numbers")


def test_mean_and_scale_as_scalars_and_defaults(effnet: dict[str, Any]) -> None:
    effnet["inputs"][0]["parameters"].update(mean=127, scale=128.5)
    inp = parse_manifest(effnet, file=FILE).inputs[0]
    assert (inp.mean, inp.scale) == ((127.0,), (128.5,))
    del effnet["inputs"][0]["parameters"]["mean"], effnet["inputs"][0]["parameters"]["scale"]
    inp = parse_manifest(effnet, file=FILE).inputs[0]
    assert (inp.mean, inp.scale) == ((0.0,), (1.0,))


@pytest.mark.parametrize("scale", [0, 0.0, [128, 0, 128], [0.0]])
def test_scale_zero_is_refused(effnet: dict[str, Any], scale: Any) -> None:
    effnet["inputs"][0]["parameters"]["scale"] = scale
    refused(effnet, "inputs[0].parameters.scale", "must not be zero")


def test_image_input_with_another_input_is_refused(digits: dict[str, Any]) -> None:
    digits["inputs"].append(tensor_input("extra"))
    refused(digits, "inputs", "exactly one input")


def test_input_names_must_be_unique(digits: dict[str, Any]) -> None:
    digits["inputs"] = [tensor_input("a"), tensor_input("b"), tensor_input("a")]
    refused(digits, "inputs", "input names must be unique, got ['a', 'b', 'a']")


def test_several_tensor_inputs_with_any_dimension(digits: dict[str, Any]) -> None:
    digits["inputs"] = [tensor_input("a", [-1, 3]), tensor_input("b", [1])]
    m = parse_manifest(digits, file=FILE)
    assert [(i.name, i.type, i.dimensions) for i in m.inputs] == [("a", "tensor", (-1, 3)), ("b", "tensor", (1,))]


def test_error_in_second_input_names_its_index(digits: dict[str, Any]) -> None:
    digits["inputs"] = [tensor_input("a"), tensor_input("b", [0])]
    refused(digits, "inputs[1].parameters.dimensions", "positive integers")


def test_invert_and_interpolation(digits: dict[str, Any]) -> None:
    digits["inputs"][0]["parameters"].update(invert=True, resize={"shorter_side": 10, "interpolation": "lanczos"})
    inp = parse_manifest(digits, file=FILE).inputs[0]
    assert (inp.invert, inp.resize_shorter, inp.interpolation) == (True, 10, "lanczos")


# --- outputs and labels -------------------------------------------------------------------------------------------


def test_classification_output_without_labels(digits: dict[str, Any]) -> None:
    del digits["output"]["parameters"]["labels"]
    refused(digits, "output.parameters.labels", "a classification output needs labels")


def test_classification_output_without_parameters(digits: dict[str, Any]) -> None:
    del digits["output"]["parameters"]
    refused(digits, "output.parameters", "a classification output needs parameters.labels")


def test_tensor_output_needs_no_labels(digits: dict[str, Any]) -> None:
    digits["output"] = {"name": "features", "type": "tensor", "parameters": {"dimensions": [-1, 128]}}
    out = parse_manifest(digits, file=FILE).output
    assert (out.type, out.dimensions, out.labels, out.labels_path) == ("tensor", (-1, 128), (), None)


def test_labels_as_list_and_as_path(digits: dict[str, Any]) -> None:
    digits["output"]["parameters"]["labels"] = ["cat", 2, "dog"]
    assert parse_manifest(digits, file=FILE).output.labels == ("cat", "2", "dog")
    digits["output"]["parameters"]["labels"] = {"path": "labels.txt"}
    out = parse_manifest(digits, file=FILE).output
    assert (out.labels, out.labels_path) == ((), "labels.txt")


@pytest.mark.parametrize(
    ("labels", "field", "fragment"),
    [
        ([], "output.parameters.labels", "must be a non-empty list of strings"),
        (["a", None], "output.parameters.labels", "must be a non-empty list of strings"),
        (["a", ["b"]], "output.parameters.labels", "must be a non-empty list of strings"),
        ("labels.txt", "output.parameters.labels", "must be a mapping, got str"),
        ({}, "output.parameters.labels.path", "is required"),
        ({"path": 5}, "output.parameters.labels.path", "must be a string, got int"),
    ],
)
def test_bad_labels(digits: dict[str, Any], labels: Any, field: str, fragment: str) -> None:
    digits["output"]["parameters"]["labels"] = labels
    refused(digits, field, fragment)


# --- frameworks and artifacts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tensorflow", "ONNXRuntime", "torch", ""])
def test_unknown_framework(digits: dict[str, Any], name: str) -> None:
    digits["frameworks"][1]["name"] = name
    refused(digits, "frameworks[1].name", "is not one of onnxruntime, pytorch")


def test_duplicate_framework(digits: dict[str, Any]) -> None:
    digits["frameworks"][1]["name"] = "onnxruntime"
    refused(digits, "frameworks", "each framework may appear once")


@pytest.mark.parametrize("constraint", ["latest", ">=1.16;", "=>1.16", ">= one", "1.16.*.*"])
def test_bad_version_constraint(digits: dict[str, Any], constraint: str) -> None:
    digits["frameworks"][0]["version"] = constraint
    refused(digits, "frameworks[0].version", "is not a version constraint such as '>=1.16'")


def test_compound_version_constraint(digits: dict[str, Any]) -> None:
    digits["frameworks"][0]["version"] = ">=1.16,<2"
    spec = parse_manifest(digits, file=FILE).frameworks[0].version
    assert Version("1.17") in spec and Version("2.0") not in spec


@pytest.mark.parametrize(
    "artifact",
    [
        {"path": "m.onnx", "url": "https://example.com/m.onnx", "sha256": GOOD_SHA},
        {"path": "", "url": ""},
        {},
    ],
)
def test_artifact_needs_exactly_one_of_path_and_url(digits: dict[str, Any], artifact: dict[str, Any]) -> None:
    digits["frameworks"][0]["artifact"] = artifact
    refused(digits, "frameworks[0].artifact", "give exactly one of path or url")


def test_artifact_by_sha256_alone_is_a_store_reference(digits: dict[str, Any]) -> None:
    digits["frameworks"][0]["artifact"] = {"sha256": GOOD_SHA}
    art = parse_manifest(digits, file=FILE).frameworks[0].artifact
    assert (art.path, art.url, art.sha256) == (None, None, GOOD_SHA)
    digits["frameworks"][0]["artifact"] = {"sha256": GOOD_SHA.upper()}
    refused(digits, "frameworks[0].artifact.sha256", "does not match")


@pytest.mark.parametrize("name", ["digits\n", "../x", "a/b", "..", "/etc/passwd", "A", "x" * 65])
def test_names_are_matched_whole(digits: dict[str, Any], name: str) -> None:
    digits["name"] = name
    refused(digits, "name", "does not match")


@pytest.mark.parametrize("url", ["http://example.com/m.onnx", "https://example.com/m.onnx"])
def test_downloaded_artifact_needs_sha256(digits: dict[str, Any], url: str) -> None:
    digits["frameworks"][0]["artifact"] = {"url": url}
    refused(digits, "frameworks[0].artifact.sha256", "is required for a downloaded artifact")
    digits["frameworks"][0]["artifact"]["sha256"] = GOOD_SHA
    art = parse_manifest(digits, file=FILE).frameworks[0].artifact
    assert (art.path, art.url, art.sha256) == (None, url, GOOD_SHA)


def test_file_url_needs_no_sha256(digits: dict[str, Any]) -> None:
    digits["frameworks"][0]["artifact"] = {"url": "file:///models/m.onnx"}
    art = parse_manifest(digits, file=FILE).frameworks[0].artifact
    assert (art.url, art.sha256) == ("file:///models/m.onnx", None)


@pytest.mark.parametrize("url", ["ftp://example.com/m.onnx", "example.com/m.onnx", "HTTPS//x", "s3://bucket/m"])
def test_artifact_url_scheme(digits: dict[str, Any], url: str) -> None:
    digits["frameworks"][0]["artifact"] = {"url": url, "sha256": GOOD_SHA}
    refused(digits, "frameworks[0].artifact.url", "must be an http(s):// or file:// URL")


@pytest.mark.parametrize("sha", ["AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, "sha256:" + "ab" * 32])
def test_bad_sha256(digits: dict[str, Any], sha: str) -> None:
    digits["frameworks"][0]["artifact"]["sha256"] = sha
    refused(digits, "frameworks[0].artifact.sha256", "does not match ^[0-9a-f]{64}$")


def test_path_artifact_with_sha256(digits: dict[str, Any]) -> None:
    digits["frameworks"][0]["artifact"]["sha256"] = GOOD_SHA
    assert parse_manifest(digits, file=FILE).frameworks[0].artifact.sha256 == GOOD_SHA


# --- devices and batching -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("devices", [["tpu"], ["cpu", "gpu"], ["CPU"], [None], [["cpu"]]])
def test_unknown_devices(digits: dict[str, Any], devices: list[Any]) -> None:
    digits["devices"] = devices
    refused(digits, "devices", "is not one of cpu, cuda")


@pytest.mark.parametrize(("devices", "expected"), [(["cpu"], ("cpu",)), (["cuda"], ("cuda",)), ([], ("cpu", "cuda"))])
def test_devices(digits: dict[str, Any], devices: list[str], expected: tuple[str, ...]) -> None:
    digits["devices"] = devices
    assert parse_manifest(digits, file=FILE).devices == expected


@pytest.mark.parametrize(
    ("batching", "field", "fragment"),
    [
        ({"max_batch_size": 0}, "batching.max_batch_size", "must be an integer >= 1, got 0"),
        ({"max_batch_size": -4}, "batching.max_batch_size", "must be an integer >= 1"),
        ({"max_batch_size": "8"}, "batching.max_batch_size", "must be an integer >= 1, got '8'"),
        ({"max_batch_size": 2.5}, "batching.max_batch_size", "must be an integer >= 1"),
        ({"max_batch_size": True}, "batching.max_batch_size", "must be an integer >= 1, got True"),
        ({"max_queue_delay_ms": -1}, "batching.max_queue_delay_ms", "must be a number >= 0.0, got -1"),
        ({"max_queue_delay_ms": "1ms"}, "batching.max_queue_delay_ms", "must be a number >= 0.0"),
        ({"max_queue_delay_ms": False}, "batching.max_queue_delay_ms", "must be a number >= 0.0"),
        ({"max_queue_delay_ms": math.nan}, "batching.max_queue_delay_ms", "must be a number >= 0.0, got nan"),
        ({"max_queue_delay_ms": math.inf}, "batching.max_queue_delay_ms", "must be a number >= 0.0, got inf"),
        ({"max_queue_delay_ms": 10**400}, "batching.max_queue_delay_ms", "must be a number >= 0.0"),
    ],
)
def test_bad_batching(digits: dict[str, Any], batching: dict[str, Any], field: str, fragment: str) -> None:
    digits["batching"] = batching
    refused(digits, field, fragment)


@pytest.mark.parametrize(
    ("batching", "expected"),
    [
        ({}, Batching(1, 0.0)),
        ({"max_batch_size": 1}, Batching(1, 0.0)),
        ({"max_batch_size": 256, "max_queue_delay_ms": 0}, Batching(256, 0.0)),
        ({"max_queue_delay_ms": 2.5}, Batching(1, 2.5)),
    ],
)
def test_batching_values(digits: dict[str, Any], batching: dict[str, Any], expected: Batching) -> None:
    digits["batching"] = batching
    b = parse_manifest(digits, file=FILE).batching
    assert b == expected
    assert isinstance(b.max_queue_delay_ms, float)


# --- robustness ---------------------------------------------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(["image", "tensor", "classification", "onnxruntime", "cpu", "GRAY", "HWC", "center", "a"])
)
_values = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["name", "type", "parameters", "path", "url", "dimensions", "labels", "mean", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_KEYS = sorted(DIGITS)


@settings(max_examples=150, deadline=None)
@given(base=st.sampled_from([DIGITS, EFFNET]), key=st.sampled_from(_KEYS), value=_values)
def test_replacing_any_top_level_value_raises_only_manifest_error(base: dict[str, Any], key: str, value: Any) -> None:
    doc = {**copy.deepcopy(base), key: value}
    try:
        parse_manifest(doc, file=FILE)
    except ManifestError as err:
        assert err.file == FILE
        assert err.field == key or err.field.startswith((f"{key}.", f"{key}["))
    except CarmlError as err:  # pragma: no cover - the failure message says what escaped
        pytest.fail(f"{type(err).__name__} instead of ManifestError: {err}")


@settings(max_examples=100, deadline=None)
@given(doc=_values)
def test_arbitrary_documents_raise_only_manifest_error(doc: Any) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(doc, file=FILE)
