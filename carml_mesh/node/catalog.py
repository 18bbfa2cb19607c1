"""The models this node can serve: manifests joined with their artifacts in the store and the frameworks here."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from ..errors import ArtifactError, NotFound
from ..exec.base import ModelSpec
from ..manifest.loader import Problem, load_manifest_dirs
from ..manifest.schema import Manifest
from ..store.artifacts import ArtifactStore

log = logging.getLogger("carml.catalog")
MAX_LABELS_BYTES = 4 << 20


@dataclass(frozen=True)
class Deployment:
    """One framework of one model on this node: ready to load, or why not."""

    framework: str
    sha256: str | None
    path: str | None
    problem: str | None = None

    @property
    def available(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class ServedModel:
    manifest: Manifest
    labels: tuple[str, ...]
    deployments: dict[str, Deployment]
    wire_spec: dict[str, Any] = field(hash=False, compare=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    def available_frameworks(self) -> list[str]:
        return [f.name for f in self.manifest.frameworks if self.deployments[f.name].available]

    def model_spec(self, framework: str, device: str) -> ModelSpec:
        d = self.deployments[framework]
        assert d.sha256 is not None and d.path is not None
        return ModelSpec(self.name, self.version, framework, device, d.sha256, d.path, self.wire_spec)


class Catalog:
    def __init__(self, models: list[ServedModel], problems: list[Problem]) -> None:
        self.problems = problems
        self._by_name: dict[str, dict[str, ServedModel]] = {}
        for m in models:
            self._by_name.setdefault(m.name, {})[m.version] = m

    def __iter__(self):  # type: ignore[no-untyped-def]
        for versions in self._by_name.values():
            yield from sorted(versions.values(), key=lambda m: _version_key(m.version), reverse=True)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[str]:
        return sorted(self._by_name.get(name, {}), key=_version_key, reverse=True)

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._by_name.get(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise NotFound(f"unknown model {name!r}; this node serves: {known}")
        if version is None or version == "":
            return versions[max(versions, key=_version_key)]
        model = versions.get(version)
        if model is None:
            raise NotFound(f"model {name!r} has no version {version!r}; versions: {', '.join(self.versions(name))}")
        return model


def _version_key(v: str) -> tuple[int, Any]:
    try:
        return (1, Version(v))
    except InvalidVersion:
        return (0, v)


async def build_catalog(dirs: list[Path], store: ArtifactStore, frameworks: dict[str, str]) -> Catalog:
    """Load manifests and import their artifacts into the store, off the event loop."""
    return await asyncio.to_thread(_build_catalog, dirs, store, frameworks)


def _build_catalog(dirs: list[Path], store: ArtifactStore, frameworks: dict[str, str]) -> Catalog:
    manifests, problems = load_manifest_dirs(dirs)
    models = []
    for manifest in manifests:
        base = Path(manifest.file).parent
        try:
            labels = _labels(manifest, base)
        except ArtifactError as exc:
            problems.append(Problem(manifest.file, "output.parameters.labels", str(exc)))
            continue
        deployments = {f.name: _deploy(f, base, store, frameworks) for f in manifest.frameworks}
        for name, d in deployments.items():
            if d.problem:
                log.warning("%s %s: %s not servable: %s", manifest.name, manifest.version, name, d.problem)
        wire = {
            "inputs": [i.to_wire() for i in manifest.inputs],
            "outputs": [
                {
                    "name": manifest.output.name,
                    "type": manifest.output.type,
                    "probabilities": manifest.output.probabilities,
                }
            ],
            "labels": list(labels),
        }
        models.append(ServedModel(manifest, labels, deployments, wire))
    return Catalog(models, problems)


def _labels(manifest: Manifest, base: Path) -> tuple[str, ...]:
    out = manifest.output
    if out.labels or out.labels_path is None:
        return out.labels
    path = (base / out.labels_path).resolve()
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise ArtifactError(f"labels file {path} is larger than {MAX_LABELS_BYTES} bytes")
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read labels file {path}: {exc}") from exc
    return tuple(line.strip() for line in lines if line.strip())


def _deploy(entry: Any, base: Path, store: ArtifactStore, frameworks: dict[str, str]) -> Deployment:
    installed = frameworks.get(entry.name)
    artifact = entry.artifact
    if installed is None:
        problem = f"{entry.name} is not installed on this node"
    elif entry.version and not entry.version.contains(installed, prereleases=True):
        problem = f"{entry.name} {installed} is installed; the manifest needs {entry.version}"
    else:
        problem = None
    sha256 = artifact.sha256
    if sha256 and store.has(sha256):
        return Deployment(entry.name, sha256, str(store.path(sha256)), problem)
    source: Path | None = None
    if artifact.path is not None:
        source = (base / artifact.path).resolve()
    elif artifact.url is not None and artifact.url.startswith("file://"):
        source = Path(artifact.url.removeprefix("file://"))
    if source is None:
        return Deployment(entry.name, sha256, None, problem or f"artifact {artifact.url} is not in the store")
    try:
        sha256 = store.import_file(source, sha256)
    except ArtifactError as exc:
        if not source.exists():
            hint = " (run scripts/setup to build the demo artifacts)" if "build/models" in str(source) else ""
            return Deployment(entry.name, sha256, None, f"artifact {source} does not exist{hint}")
        return Deployment(entry.name, sha256, None, str(exc))
    return Deployment(entry.name, sha256, str(store.path(sha256)), problem)
