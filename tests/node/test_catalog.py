"""Manifests joined with artifacts and installed frameworks: what is servable, and why not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from carml_mesh.errors import NotFound
from carml_mesh.node.catalog import _build_catalog
from carml_mesh.store.artifacts import ArtifactStore, sha256_file

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = {"onnxruntime": "1.32.0", "pytorch": "2.13.0"}


def write_manifest(
    folder: Path, name: str, version: str, artifact: Path, *, sha: str | None = None, constraint: str = ">=1.0"
) -> None:
    text = (REPO / "manifests" / "digits-cnn.yml").read_text()
    text = text.replace("name: digits-cnn", f"name: {name}").replace('version: "1.0.0"', f'version: "{version}"')
    artifact_line = f"{{path: {artifact}" + (f", sha256: '{sha}'}}" if sha else "}")
    text = text.replace("{path: ../build/models/digits-cnn/model.onnx}", artifact_line)
    text = text.replace("../build/models", str(REPO / "build" / "models"))
    text = text.replace('version: ">=1.16"', f'version: "{constraint}"')
    (folder / f"{name}-{version}.yml").write_text(text)


def test_servable_and_not(models_dir, tmp_path) -> None:
    onnx = models_dir / "digits-cnn" / "model.onnx"
    digest = sha256_file(onnx)
    manifests = tmp_path / "m"
    manifests.mkdir()
    write_manifest(manifests, "good", "1.0.0", onnx, sha=digest)
    write_manifest(manifests, "good", "1.10.0", onnx)
    write_manifest(manifests, "tampered", "1", onnx, sha="0" * 64)
    write_manifest(manifests, "old-runtime", "1", onnx, constraint=">=99")
    store = ArtifactStore(tmp_path / "store")
    catalog = _build_catalog([manifests], store, FRAMEWORKS)
    assert catalog.problems == []
    good = catalog.get("good")
    assert good.version == "1.10.0"  # the highest version by PEP 440, not by string order
    assert catalog.get("good", "1.0.0").deployments["onnxruntime"].sha256 == digest
    assert store.has(digest) and Path(good.deployments["onnxruntime"].path) == store.path(digest)
    tampered = catalog.get("tampered").deployments["onnxruntime"]
    assert not tampered.available and f"has sha256 {digest}, the manifest says {'0' * 64}" in tampered.problem
    old = catalog.get("old-runtime").deployments["onnxruntime"]
    assert not old.available and "onnxruntime 1.32.0 is installed; the manifest needs >=99" in old.problem
    assert catalog.get("good").available_frameworks() == ["onnxruntime", "pytorch"]
    with pytest.raises(NotFound, match=r"versions: 1\.10\.0, 1\.0\.0"):
        catalog.get("good", "2")
    with pytest.raises(NotFound, match="this node serves: good, old-runtime, tampered"):
        catalog.get("nothing")


def test_framework_not_installed(models_dir, tmp_path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    write_manifest(manifests, "m", "1", models_dir / "digits-cnn" / "model.onnx")
    catalog = _build_catalog([manifests], ArtifactStore(tmp_path / "s"), {"pytorch": "2.13.0"})
    d = catalog.get("m").deployments["onnxruntime"]
    assert not d.available and d.problem == "onnxruntime is not installed on this node"
    assert catalog.get("m").available_frameworks() == ["pytorch"]


def test_the_catalog_changes_at_run_time(models_dir, tmp_path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    write_manifest(manifests, "good", "1.0.0", models_dir / "digits-cnn" / "model.onnx")
    catalog = _build_catalog([manifests], ArtifactStore(tmp_path / "s"), FRAMEWORKS)
    good = catalog.get("good", "1.0.0")
    walked = []
    for model in catalog:  # a change while one walks the catalog (the preloader does) is safe
        walked.append(model.version)
        catalog.put(replace(good, manifest=replace(good.manifest, version="2.0.0")))
    assert walked == ["1.0.0"] and catalog.versions("good") == ["2.0.0", "1.0.0"]
    assert catalog.put(good) is good  # replacing gives back the one replaced
    assert catalog.remove("good", "2.0.0").version == "2.0.0"
    assert catalog.remove("good", "1.0.0") is good
    assert catalog.names() == [] and len(catalog) == 0 and catalog.find("good", "1.0.0") is None
    with pytest.raises(NotFound):
        catalog.remove("good", "1.0.0")


def test_published_manifests_win_and_are_marked(models_dir, tmp_path) -> None:
    onnx = models_dir / "digits-cnn" / "model.onnx"
    store = ArtifactStore(tmp_path / "s")
    digest = store.import_file(onnx)
    manifests, published = tmp_path / "m", tmp_path / "published"
    manifests.mkdir()
    published.mkdir()
    write_manifest(manifests, "m", "1", onnx)
    write_manifest(published, "m", "1", onnx, sha=digest)
    text = (
        (published / "m-1.yml").read_text().replace(f"{{path: {onnx}, sha256: '{digest}'}}", f"{{sha256: '{digest}'}}")
    )
    (published / "m-1.yml").write_text(text)
    catalog = _build_catalog([manifests], store, FRAMEWORKS, published)
    m = catalog.get("m", "1")
    assert m.published and m.manifest.file == str(published / "m-1.yml")
    assert m.deployments["onnxruntime"].path == str(store.path(digest))
    assert [str(p) for p in catalog.problems] == [
        f"{manifests / 'm-1.yml'}: name: m 1 is also in {published / 'm-1.yml'}"
    ]
    # a published manifest whose artifact left the store: that framework is not servable, and says why
    (published / "lost-1.yml").write_text(text.replace("name: m", "name: lost").replace(digest, "e" * 64))
    lost = _build_catalog([], store, FRAMEWORKS, published).get("lost")
    assert lost.deployments["onnxruntime"].problem == f"artifact sha256:{'e' * 64} is not in this node's store"
