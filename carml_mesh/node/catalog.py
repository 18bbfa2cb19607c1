"""The models this node can serve: manifests joined with their artifacts in the store and the frameworks here.

The catalog changes at run time: a model is published (added or replaced) or withdrawn through the API. Readers
iterate over a snapshot, so a change while a request or the preloader walks it is safe.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from ..errors import ArtifactError, NotFound
from ..exec.base import ModelSpec
from ..manifest.loader import Problem, load_manifest_dirs
from ..manifest.schema import FrameworkEntry, Manifest
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
    published: bool = False  # through the API (DATA_DIR/published), not from a --manifests folder

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

    def model_specs(self, devices: list[str]) -> list[ModelSpec]:
        """Every (framework, device) this model could be loaded as on these devices."""
        return [
            self.model_spec(f, device)
            for f in self.available_frameworks()
            for device in devices
            if device.split(":")[0] in self.manifest.devices
        ]


class Catalog:
    def __init__(self, models: list[ServedModel], problems: list[Problem]) -> None:
        self.problems = problems
        self._by_name: dict[str, dict[str, ServedModel]] = {}
        for m in models:
            self._by_name.setdefault(m.name, {})[m.version] = m

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in list(self._by_name.values()):  # a snapshot: the catalog may change while one iterates
            yield from sorted(versions.values(), key=lambda m: _version_key(m.version), reverse=True)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def versions(self, name: str) -> list[str]:
        return sorted(self._by_name.get(name, {}), key=_version_key, reverse=True)

    def find(self, name: str, version: str) -> ServedModel | None:
        return self._by_name.get(name, {}).get(version)

    def put(self, model: ServedModel) -> ServedModel | None:
        """Add a model, or replace the one with its name and version; returns the one replaced."""
        versions = self._by_name.setdefault(model.name, {})
        old = versions.get(model.version)
        versions[model.version] = model
        return old

    def remove(self, name: str, version: str) -> ServedModel:
        model = self.get(name, version)
        versions = self._by_name[name]
        del versions[version]
        if not versions:
            del self._by_name[name]
        return model

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


@functools.lru_cache(maxsize=4096)  # asked on every request that names no version; parsing is the costly part
def _version_key(v: str) -> tuple[int, Any]:
    try:
        return (1, Version(v))
    except InvalidVersion:
        return (0, v)


async def build_catalog(
    dirs: list[Path], store: ArtifactStore, frameworks: dict[str, str], *, published: Path | None = None
) -> Catalog:
    """Load manifests and import their artifacts into the store, off the event loop. The published folder (the
    node's own, written by the API) is read first: its models win over a --manifests file of the same name and
    version."""
    return await asyncio.to_thread(_build_catalog, dirs, store, frameworks, published)


def _build_catalog(
    dirs: list[Path], store: ArtifactStore, frameworks: dict[str, str], published: Path | None = None
) -> Catalog:
    from_published: set[str] = set()
    if published is not None and published.is_dir():
        manifests, problems = load_manifest_dirs([published, *dirs])
        from_published = {m.file for m in manifests if Path(m.file).parent == published}
    else:
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
        models.append(served_model(manifest, labels, deployments, published=manifest.file in from_published))
    return Catalog(models, problems)


def served_model(
    manifest: Manifest, labels: tuple[str, ...], deployments: dict[str, Deployment], *, published: bool = False
) -> ServedModel:
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
        # dynamic batching (carml_mesh/exec/batching.py): the manifest's max_batch_size > 1 declares a dynamic batch
        # dimension; 1 (the default) leaves the model unbatched
        "batching": {
            "max_batch_size": manifest.batching.max_batch_size,
            "max_queue_delay_ms": manifest.batching.max_queue_delay_ms,
        },
    }
    return ServedModel(manifest, labels, deployments, wire, published)


def stored_deployment(
    entry: FrameworkEntry, sha256: str, store: ArtifactStore, frameworks: dict[str, str]
) -> Deployment:
    """A framework whose artifact is already in the store (a published model)."""
    if not store.has(sha256):
        return Deployment(entry.name, sha256, None, f"artifact sha256:{sha256} is not in this node's store")
    return Deployment(entry.name, sha256, str(store.path(sha256)), _framework_problem(entry, frameworks))


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


def _framework_problem(entry: FrameworkEntry, frameworks: dict[str, str]) -> str | None:
    installed = frameworks.get(entry.name)
    if installed is None:
        return f"{entry.name} is not installed on this node"
    if entry.version and not entry.version.contains(installed, prereleases=True):
        return f"{entry.name} {installed} is installed; the manifest needs {entry.version}"
    return None


def _deploy(entry: FrameworkEntry, base: Path, store: ArtifactStore, frameworks: dict[str, str]) -> Deployment:
    problem = _framework_problem(entry, frameworks)
    artifact = entry.artifact
    sha256 = artifact.sha256
    if sha256 and store.has(sha256):
        return Deployment(entry.name, sha256, str(store.path(sha256)), problem)
    if sha256 and artifact.path is None and artifact.url is None:
        return Deployment(entry.name, sha256, None, problem or f"artifact sha256:{sha256} is not in this node's store")
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
