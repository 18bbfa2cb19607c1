"""The canonical form of a published manifest: it parses back to the same manifest, with nothing a client named."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from carml_mesh.manifest.canonical import canonical_document, dump
from carml_mesh.manifest.loader import parse_manifest_text
from carml_mesh.manifest.schema import Manifest, parse_manifest

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
DIGITS = yaml.safe_load((MANIFESTS / "digits-cnn.yml").read_text())
EFFNET = yaml.safe_load((MANIFESTS / "efficientnet-lite0.yml").read_text())
SHAS = {"onnxruntime": "ab" * 32, "pytorch": "cd" * 32}


def round_trip(manifest: Manifest, labels: tuple[str, ...]) -> Manifest:
    text = dump(canonical_document(manifest, labels=labels, artifacts=SHAS))
    return parse_manifest_text(text, file="published.yml")


def same_but_artifacts(a: Manifest, b: Manifest) -> None:
    """Everything but the file, the labels' source and the artifact references is unchanged."""
    strip = {"file": "", "frameworks": tuple(dataclasses.replace(f, artifact=None) for f in a.frameworks)}
    a2 = dataclasses.replace(a, **strip, output=dataclasses.replace(a.output, labels=(), labels_path=None))
    strip = {"file": "", "frameworks": tuple(dataclasses.replace(f, artifact=None) for f in b.frameworks)}
    b2 = dataclasses.replace(b, **strip, output=dataclasses.replace(b.output, labels=(), labels_path=None))
    assert a2 == b2


def test_the_shipped_manifests_round_trip() -> None:
    digits = parse_manifest(DIGITS, file="digits.yml")
    back = round_trip(digits, digits.output.labels)
    same_but_artifacts(digits, back)
    assert back.output.labels == digits.output.labels
    assert [(f.artifact.path, f.artifact.url, f.artifact.sha256) for f in back.frameworks] == [
        (None, None, SHAS["onnxruntime"]),
        (None, None, SHAS["pytorch"]),
    ]
    effnet = parse_manifest(EFFNET, file="effnet.yml")
    assert effnet.output.labels_path is not None
    labels = tuple(f"class {i}" for i in range(1000))
    back = round_trip(effnet, labels)
    same_but_artifacts(effnet, back)
    assert back.output.labels == labels and back.output.labels_path is None


def test_frameworks_without_an_artifact_are_left_out() -> None:
    digits = parse_manifest(DIGITS)
    doc = canonical_document(digits, labels=digits.output.labels, artifacts={"pytorch": SHAS["pytorch"]})
    assert [f["name"] for f in doc["frameworks"]] == ["pytorch"]
    assert "path" not in dump(doc)


TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), TEXT)


@settings(max_examples=150, deadline=None)
@given(
    version=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}", fullmatch=True),
    description=TEXT,
    attributes=st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), SCALAR, max_size=4),
    references=st.lists(TEXT, max_size=3),
    mean=st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),
    crop=st.booleans(),
    shorter=st.one_of(st.none(), st.integers(1, 4096)),
    invert=st.booleans(),
    labels=st.lists(TEXT.filter(lambda s: s.strip() == s and s), min_size=1, max_size=5),
    constraint=st.sampled_from(["", ">=1.16", ">=1.16,<2", "==2.1.*"]),
    batch=st.integers(1, 512),
)
def test_any_valid_manifest_round_trips(
    version: str,
    description: str,
    attributes: dict[str, Any],
    references: list[str],
    mean: list[float],
    crop: bool,
    shorter: int | None,
    invert: bool,
    labels: list[str],
    constraint: str,
    batch: int,
) -> None:
    doc = copy.deepcopy(EFFNET)
    doc.update(version=version, description=description, attributes=attributes, references=references)
    params = doc["inputs"][0]["parameters"]
    params.update(mean=mean, invert=invert, resize={"shorter_side": shorter} if shorter else {})
    if not crop:
        params.pop("crop", None)
    doc["output"]["parameters"]["labels"] = labels
    doc["frameworks"][0]["version"] = constraint
    doc["batching"] = {"max_batch_size": batch, "max_queue_delay_ms": 0.5}
    manifest = parse_manifest(doc)
    back = round_trip(manifest, tuple(labels))
    same_but_artifacts(manifest, back)
    assert back.output.labels == tuple(labels)
