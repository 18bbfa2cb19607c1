"""Reading manifests from files and folders: every bad file becomes one Problem, nothing raises."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from carml_mesh.errors import ManifestError
from carml_mesh.manifest.loader import (
    MAX_MANIFEST_BYTES,
    Problem,
    load_manifest_dirs,
    load_manifest_file,
    parse_manifest_text,
)

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
DIGITS = MANIFESTS / "digits-cnn.yml"
EFFNET = MANIFESTS / "efficientnet-lite0.yml"
DIGITS_NAME = yaml.safe_load(DIGITS.read_text(encoding="utf-8"))["name"]
EFFNET_NAME = yaml.safe_load(EFFNET.read_text(encoding="utf-8"))["name"]

# A YAML syntax error on line 3 (1-based): the flow sequence is never closed.
BROKEN_YAML = "name: broken\nversion: '1'\ninputs: [a, b\noutput: {}\n"


def test_parse_manifest_text_valid() -> None:
    m = parse_manifest_text(DIGITS.read_text(encoding="utf-8"), file="d.yml")
    assert (m.name, m.file) == (DIGITS_NAME, "d.yml")


def test_parse_manifest_text_reports_yaml_line_and_column() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest_text(BROKEN_YAML, file="b.yml")
    err = info.value
    assert err.file == "b.yml"
    assert err.field == ""
    assert err.reason.startswith("invalid YAML at line ")
    line = int(err.reason.split("at line ")[1].split(",")[0])
    assert line in (3, 4)  # the parser notices the unclosed "[" on line 3 or where it runs into line 4
    assert ", column " in err.reason


def test_parse_manifest_text_tab_indentation_names_the_line() -> None:
    with pytest.raises(ManifestError, match=r"invalid YAML at line 2, column 1"):
        parse_manifest_text("name: x\n\tversion: 1\n", file="t.yml")


@pytest.mark.parametrize(
    "text",
    [
        "name: x\ncreated: 2001-02-30\n",  # a date YAML recognises, but not a real day: ValueError in PyYAML
        "name: !!int abc\n",  # ValueError
        "name: !!float abc\n",  # ValueError
        "name: !!timestamp abc\n",  # AttributeError
        "name: " + "[" * 1000 + "]" * 1000 + "\n",  # RecursionError in PyYAML's composer
        "? [a, b]\n: 1\n",  # an unhashable key: a YAMLError without line
    ],
    ids=["bad-date", "bad-int", "bad-float", "bad-timestamp", "deep-nesting", "list-key"],
)
def test_yaml_that_pyyaml_cannot_construct_is_a_manifest_error(text: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest_text(text, file="x.yml")
    assert info.value.file == "x.yml"
    assert info.value.reason.startswith("invalid YAML")


def test_schema_error_carries_file_and_field() -> None:
    text = DIGITS.read_text(encoding="utf-8").replace("max_batch_size: 64", "max_batch_size: 0")
    assert "max_batch_size: 0" in text
    with pytest.raises(ManifestError) as info:
        parse_manifest_text(text, file="d.yml")
    assert (info.value.file, info.value.field) == ("d.yml", "batching.max_batch_size")


def test_empty_file_is_refused_as_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("")
    with pytest.raises(ManifestError) as info:
        load_manifest_file(path)
    assert info.value.file == str(path)
    assert "must be a mapping, got nothing" in info.value.reason


def test_load_manifest_file_refusals(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ManifestError) as info:
        load_manifest_file(latin1)
    assert (info.value.file, info.value.reason) == (str(latin1), "file is not UTF-8 text")

    big = tmp_path / "big.yml"
    big.write_bytes(DIGITS.read_bytes() + b"#" * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError) as info:
        load_manifest_file(big)
    assert info.value.file == str(big)
    assert f"file is {big.stat().st_size} bytes; a manifest may be at most {MAX_MANIFEST_BYTES}" == info.value.reason

    missing = tmp_path / "missing.yml"
    with pytest.raises(ManifestError) as info:
        load_manifest_file(missing)
    assert (info.value.file, info.value.reason) == (str(missing), "cannot read: No such file or directory")


def test_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "limit.yml"
    body = DIGITS.read_bytes()
    path.write_bytes(body + b"\n" + b"#" * (MAX_MANIFEST_BYTES - len(body) - 1))
    assert path.stat().st_size == MAX_MANIFEST_BYTES
    assert load_manifest_file(path).name == DIGITS_NAME


def test_load_manifest_dirs_keeps_the_good_and_reports_each_bad(tmp_path: Path) -> None:
    good, other = tmp_path / "good", tmp_path / "other"
    good.mkdir()
    other.mkdir()
    shutil.copy(DIGITS, good / "a-digits.yml")
    (good / "b-broken.yml").write_text(BROKEN_YAML)
    (good / "c-latin1.yml").write_bytes(b"name: caf\xe9\n")
    (good / "d-big.yaml").write_bytes(b"#" * (MAX_MANIFEST_BYTES + 1))
    shutil.copy(DIGITS, good / "e-digits-again.yaml")  # same name and version as a-digits.yml
    (good / "f-schema.yml").write_text(DIGITS.read_text(encoding="utf-8").replace("name: onnxruntime", "name: tf"))
    (good / "g-dir.yml").mkdir()  # a folder with a manifest's name
    (good / "notes.txt").write_text("not: [a manifest")  # ignored: neither .yml nor .yaml
    shutil.copy(EFFNET, other / "effnet.yaml")
    missing = tmp_path / "missing"

    manifests, problems = load_manifest_dirs([good, missing, other])

    assert [m.name for m in manifests] == [DIGITS_NAME, EFFNET_NAME]
    assert [m.file for m in manifests] == [str(good / "a-digits.yml"), str(other / "effnet.yaml")]
    by_file = {p.file: p for p in problems}
    assert len(by_file) == len(problems) == 7, problems

    broken = by_file[str(good / "b-broken.yml")]
    assert broken.reason.startswith("invalid YAML at line ") and broken.field == ""
    assert int(broken.reason.split("at line ")[1].split(",")[0]) in (3, 4)

    assert by_file[str(good / "c-latin1.yml")].reason == "file is not UTF-8 text"
    assert f"at most {MAX_MANIFEST_BYTES}" in by_file[str(good / "d-big.yaml")].reason

    dup = by_file[str(good / "e-digits-again.yaml")]
    assert dup.field == "name"
    assert DIGITS_NAME in dup.reason and f"is also in {good / 'a-digits.yml'}" in dup.reason

    schema = by_file[str(good / "f-schema.yml")]
    assert (schema.field, schema.reason) == ("frameworks[0].name", "'tf' is not one of onnxruntime, pytorch")

    assert by_file[str(good / "g-dir.yml")].reason.startswith("cannot read")
    assert by_file[str(missing)] == Problem(str(missing), "", "manifests folder does not exist")
    assert str(by_file[str(missing)]) == f"{missing}: manifests folder does not exist"
    assert str(schema) == f"{good / 'f-schema.yml'}: frameworks[0].name: 'tf' is not one of onnxruntime, pytorch"


def test_duplicate_across_folders_keeps_the_first_folder(tmp_path: Path) -> None:
    first, second = tmp_path / "z-first", tmp_path / "a-second"
    first.mkdir()
    second.mkdir()
    shutil.copy(DIGITS, first / "digits.yml")
    shutil.copy(DIGITS, second / "digits.yml")
    manifests, problems = load_manifest_dirs([first, second])
    assert [m.file for m in manifests] == [str(first / "digits.yml")]
    assert [(p.file, p.field) for p in problems] == [(str(second / "digits.yml"), "name")]


def test_same_name_with_another_version_is_not_a_duplicate(tmp_path: Path) -> None:
    shutil.copy(DIGITS, tmp_path / "v1.yml")
    doc = yaml.safe_load(DIGITS.read_text(encoding="utf-8"))
    doc["version"] = "2.0.0"
    (tmp_path / "v2.yml").write_text(yaml.safe_dump(doc))
    manifests, problems = load_manifest_dirs([tmp_path])
    assert problems == []
    assert sorted(m.version for m in manifests) == sorted([str(yaml.safe_load(DIGITS.read_text())["version"]), "2.0.0"])


def test_pyyaml_crashes_become_problems_not_exceptions(tmp_path: Path) -> None:
    (tmp_path / "deep.yml").write_text("name: " + "[" * 1000 + "]" * 1000 + "\n")
    (tmp_path / "date.yml").write_text("name: x\nversion: 2001-02-30\n")
    manifests, problems = load_manifest_dirs([tmp_path])
    assert manifests == []
    assert sorted(Path(p.file).name for p in problems) == ["date.yml", "deep.yml"]
    assert all(p.reason.startswith("invalid YAML") for p in problems)


def test_shipped_manifest_folder_loads_cleanly() -> None:
    manifests, problems = load_manifest_dirs([MANIFESTS])
    assert problems == []
    assert sorted(m.name for m in manifests) == sorted([DIGITS_NAME, EFFNET_NAME])
