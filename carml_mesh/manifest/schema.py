"""The manifest format (modelled on MLModelScope's) and its strict validation. Pure: dicts in, dataclasses out."""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from ..errors import ManifestError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
FRAMEWORKS = ("onnxruntime", "pytorch")
DEVICES = ("cpu", "cuda")
ELEMENT_TYPES = ("float16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
PROBABILITIES = ("softmax", "sigmoid", "none")


@dataclass(frozen=True)
class ArtifactRef:
    path: str | None  # relative to the manifest's folder, or absolute
    url: str | None
    sha256: str | None  # alone (no path, no url): a reference to an artifact already in the node's store


@dataclass(frozen=True)
class FrameworkEntry:
    name: str
    version: SpecifierSet
    artifact: ArtifactRef


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # image | tensor
    element_type: str
    dimensions: tuple[int, ...]  # without the batch dimension; -1 = any
    layout: str | None = None
    color_mode: str | None = None
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    resize_shorter: int | None = None
    interpolation: str = "bilinear"
    crop: bool = False
    invert: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The form the worker program reads (see carml_mesh.exec.worker.preprocess.ImageSpec)."""
        wire: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "element_type": self.element_type,
            "dimensions": list(self.dimensions),
        }
        if self.type == "image":
            wire.update(
                layout=self.layout,
                color_mode=self.color_mode,
                mean=list(self.mean),
                scale=list(self.scale),
                resize={"shorter_side": self.resize_shorter, "interpolation": self.interpolation},
                crop={"mode": "center"} if self.crop else None,
                invert=self.invert,
            )
        return wire


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type: str  # classification | tensor
    element_type: str = "float32"
    dimensions: tuple[int, ...] = (-1,)
    probabilities: str = "softmax"
    labels: tuple[str, ...] = ()
    labels_path: str | None = None


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str
    license: str
    references: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    output: OutputSpec
    frameworks: tuple[FrameworkEntry, ...]
    devices: tuple[str, ...] = ("cpu", "cuda")
    attributes: Mapping[str, Any] = field(default_factory=dict)
    batching: Batching = Batching()
    task: str = ""
    file: str = ""

    def framework(self, name: str) -> FrameworkEntry | None:
        return next((f for f in self.frameworks if f.name == name), None)


class _Fields:
    """Reads one mapping of a manifest, naming the field in every error and refusing keys it does not know."""

    def __init__(self, data: Any, where: str, file: str, allowed: tuple[str, ...]) -> None:
        self.where, self.file = where, file
        if not isinstance(data, Mapping):
            raise self.error("", f"must be a mapping, got {_kind(data)}")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise self.error(unknown[0], f"unknown field; allowed here: {', '.join(allowed)}")
        self.data = data

    def error(self, key: str, reason: str) -> ManifestError:
        path = ".".join(p for p in (self.where, key) if p)
        return ManifestError(reason, field=path, file=self.file)

    def sub(self, key: str, allowed: tuple[str, ...], *, required: bool = False) -> _Fields | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return None
        return _Fields(value, ".".join(p for p in (self.where, key) if p), self.file, allowed)

    def str(
        self,
        key: str,
        *,
        required: bool = False,
        default: str = "",
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] = (),
    ) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return default
        if isinstance(value, int | float) and not isinstance(value, bool) and pattern is VERSION_RE:
            value = str(value)  # `version: 1.0` in YAML is a float; accept it as the string it looks like
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_kind(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(key, f"{value!r} does not match {pattern.pattern}")
        if choices and value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def int(
        self, key: builtins.str, *, default: builtins.int | None = None, minimum: builtins.int = 1
    ) -> builtins.int | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: builtins.str, *, default: float, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not _finite(value) or value < minimum:
            raise self.error(key, f"must be a number >= {minimum}, got {value!r}")
        return float(value)

    def bool(self, key: builtins.str, *, default: builtins.bool = False) -> builtins.bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def list(self, key: builtins.str, *, required: builtins.bool = False) -> builtins.list[Any]:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return []
        if not isinstance(value, list):
            raise self.error(key, f"must be a list, got {_kind(value)}")
        return value

    def numbers(self, key: builtins.str, count: builtins.int) -> tuple[float, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and _finite(v) for v in value
        ):
            raise self.error(key, f"must be a number or a list of numbers, got {value!r}")
        if len(value) not in (1, count):
            raise self.error(key, f"must have 1 or {count} values (one per channel), got {len(value)}")
        return tuple(float(v) for v in value)


def parse_manifest(data: Any, *, file: str = "") -> Manifest:
    """Validate one manifest document; raises ManifestError naming the file, the field and the reason."""
    top = _Fields(
        data,
        "",
        file,
        (
            "name",
            "version",
            "description",
            "license",
            "references",
            "task",
            "attributes",
            "inputs",
            "output",
            "frameworks",
            "devices",
            "batching",
        ),
    )
    name = top.str("name", required=True, pattern=NAME_RE)
    version = top.str("version", required=True, pattern=VERSION_RE)
    references = top.list("references")
    if not all(isinstance(r, str) for r in references):
        raise top.error("references", "must be a list of strings")
    attributes = top.data.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(v, str | int | float | bool) or v is None for v in attributes.values()
    ):
        raise top.error("attributes", "must be a mapping of names to strings, numbers or booleans")

    raw_inputs = top.list("inputs", required=True)
    if not raw_inputs:
        raise top.error("inputs", "must name at least one input")
    inputs = tuple(_parse_input(item, f"inputs[{n}]", file) for n, item in enumerate(raw_inputs))
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise top.error("inputs", f"input names must be unique, got {names}")
    if any(i.type == "image" for i in inputs) and len(inputs) != 1:
        raise top.error("inputs", "a model with an image input must have exactly one input")

    output = _parse_output(top.sub("output", ("name", "type", "parameters"), required=True))
    raw_frameworks = top.list("frameworks", required=True)
    if not raw_frameworks:
        raise top.error("frameworks", "must list at least one framework with its artifact")
    frameworks = tuple(_parse_framework(item, f"frameworks[{n}]", file) for n, item in enumerate(raw_frameworks))
    if len({f.name for f in frameworks}) != len(frameworks):
        raise top.error("frameworks", "each framework may appear once")

    devices = top.list("devices") or list(DEVICES)
    for device in devices:
        if device not in DEVICES:
            raise top.error("devices", f"{device!r} is not one of {', '.join(DEVICES)}")
    batching = Batching()
    if (b := top.sub("batching", ("max_batch_size", "max_queue_delay_ms"))) is not None:
        batching = Batching(b.int("max_batch_size", default=1) or 1, b.number("max_queue_delay_ms", default=0.0))

    return Manifest(
        name=name,
        version=version,
        description=top.str("description"),
        license=top.str("license"),
        references=tuple(references),
        inputs=inputs,
        output=output,
        frameworks=frameworks,
        devices=tuple(devices),
        attributes=dict(attributes),
        batching=batching,
        task=top.str("task"),
        file=file,
    )


def _parse_input(data: Any, where: str, file: str) -> InputSpec:
    f = _Fields(data, where, file, ("name", "type", "parameters"))
    kind = f.str("type", required=True, choices=("image", "tensor"))
    p = f.sub(
        "parameters",
        (
            "element_type",
            "dimensions",
            "layout",
            "color_mode",
            "mean",
            "scale",
            "resize",
            "crop",
            "invert",
        ),
        required=True,
    )
    assert p is not None
    element_type = p.str("element_type", default="float32", choices=ELEMENT_TYPES)
    dims = p.list("dimensions", required=True)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in dims):
        raise p.error("dimensions", f"must be a non-empty list of positive integers (or -1 for any), got {dims!r}")
    spec = InputSpec(name=f.str("name", required=True), type=kind, element_type=element_type, dimensions=tuple(dims))
    if kind == "tensor":
        return spec
    layout = p.str("layout", default="CHW", choices=("CHW", "HWC"))
    color_mode = p.str("color_mode", default="RGB", choices=("RGB", "BGR", "GRAY"))
    channels = 1 if color_mode == "GRAY" else 3
    if len(dims) != 3 or -1 in dims:
        raise p.error("dimensions", f"an image input needs three fixed dimensions, got {dims!r}")
    if (dims[0] if layout == "CHW" else dims[2]) != channels:
        raise p.error("dimensions", f"layout {layout} with color_mode {color_mode} needs {channels} channel(s)")
    resize_shorter, interpolation = None, "bilinear"
    if (r := p.sub("resize", ("shorter_side", "interpolation"))) is not None:
        resize_shorter = r.int("shorter_side")
        interpolation = r.str("interpolation", default="bilinear", choices=INTERPOLATIONS)
    crop = False
    if (c := p.sub("crop", ("mode",))) is not None:
        c.str("mode", default="center", choices=("center",))
        crop = True
    scale = p.numbers("scale", channels) or (1.0,)
    if any(s == 0 for s in scale):
        raise p.error("scale", "must not be zero (inputs are divided by it)")
    return InputSpec(
        name=spec.name,
        type=kind,
        element_type=element_type,
        dimensions=tuple(dims),
        layout=layout,
        color_mode=color_mode,
        mean=p.numbers("mean", channels) or (0.0,),
        scale=scale,
        resize_shorter=resize_shorter,
        interpolation=interpolation,
        crop=crop,
        invert=p.bool("invert"),
    )


def _parse_output(f: _Fields | None) -> OutputSpec:
    assert f is not None
    kind = f.str("type", required=True, choices=("classification", "tensor"))
    name = f.str("name", required=True)
    p = f.sub("parameters", ("element_type", "dimensions", "probabilities", "labels"))
    if p is None:
        if kind == "classification":
            raise f.error("parameters", "a classification output needs parameters.labels")
        return OutputSpec(name=name, type=kind)
    dims = p.list("dimensions") or [-1]
    if not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in dims):
        raise p.error("dimensions", f"must be a list of positive integers (or -1), got {dims!r}")
    labels: tuple[str, ...] = ()
    labels_path = None
    raw = p.data.get("labels")
    if isinstance(raw, list):
        if not raw or not all(isinstance(x, str | int) for x in raw):
            raise p.error("labels", "must be a non-empty list of strings")
        labels = tuple(str(x) for x in raw)
    elif raw is not None:
        lf = _Fields(raw, f"{p.where}.labels", p.file, ("path",))
        labels_path = lf.str("path", required=True)
    elif kind == "classification":
        raise p.error("labels", "a classification output needs labels: a list, or {path: FILE} one per line")
    return OutputSpec(
        name=name,
        type=kind,
        element_type=p.str("element_type", default="float32", choices=ELEMENT_TYPES),
        dimensions=tuple(dims),
        probabilities=p.str("probabilities", default="softmax", choices=PROBABILITIES),
        labels=labels,
        labels_path=labels_path,
    )


def _parse_framework(data: Any, where: str, file: str) -> FrameworkEntry:
    f = _Fields(data, where, file, ("name", "version", "artifact"))
    name = f.str("name", required=True, choices=FRAMEWORKS)
    constraint = f.str("version", default="")
    try:
        version = SpecifierSet(constraint)
    except InvalidSpecifier:
        raise f.error("version", f"{constraint!r} is not a version constraint such as '>=1.16'") from None
    a = f.sub("artifact", ("path", "url", "sha256"), required=True)
    assert a is not None
    path, url = a.str("path") or None, a.str("url") or None
    sha256 = a.str("sha256", pattern=SHA256_RE) or None
    if path is not None and url is not None:
        raise a.error("", "give exactly one of path or url (or sha256 alone, for an artifact in the node's store)")
    if path is None and url is None and sha256 is None:
        raise a.error("", "give exactly one of path or url, or sha256 alone for an artifact in the node's store")
    if url is not None and not re.match(r"^(https?|file)://", url):
        raise a.error("url", f"{url!r} must be an http(s):// or file:// URL")
    if url is not None and url.startswith("http") and sha256 is None:
        raise a.error("sha256", "is required for a downloaded artifact")
    return FrameworkEntry(name=name, version=version, artifact=ArtifactRef(path=path, url=url, sha256=sha256))


def _finite(value: float) -> bool:
    """Neither NaN nor infinite, and (for an int) convertible to float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
