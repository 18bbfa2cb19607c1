"""Publishing and withdrawing models at run time: verified artifacts into the store, the canonical manifest into
DATA_DIR/published, the model into the catalog (and so into the node's card).

No HTTP here: the web layer streams uploads into `Ingest`s of the store and hands them over with the parsed
manifest; replication does the same with a peer's artifacts. A model reaches the catalog, and so the card, only
after every artifact it names has been verified and is in the store. File names are derived from the validated
name and version (NAME_RE, VERSION_RE), never from anything a client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ArtifactMismatch, BadRequest, Conflict, ManifestError, NotFound
from ..exec.base import Executor
from ..manifest.canonical import canonical_document, dump
from ..manifest.loader import MAX_MANIFEST_BYTES, load_manifest_file, parse_manifest_text
from ..manifest.schema import NAME_RE, VERSION_RE, Manifest
from ..store.artifacts import ArtifactStore, Ingest
from .catalog import Catalog, ServedModel, served_model, stored_deployment

log = logging.getLogger("carml.publish")
REPLACE_HINT = 'to replace it, publish with ?replace=true (deployments: "replace": true; the CLI: --replace)'


@dataclass(frozen=True)
class Published:
    model: ServedModel
    text: str  # the canonical manifest as stored
    replaced: bool
    unchanged: bool  # the same canonical manifest was published already (an idempotent pull)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "version": self.model.version,
            "frameworks": [
                {"name": f, "sha256": d.sha256, "available": d.available, "problem": d.problem}
                for f, d in self.model.deployments.items()
            ],
            "replaced": self.replaced,
            "unchanged": self.unchanged,
        }


def published_file(folder: Path, name: str, version: str) -> Path:
    """DATA_DIR/published/NAME-VERSION.yml, from a validated name and version only."""
    if not NAME_RE.fullmatch(name) or not VERSION_RE.fullmatch(version):
        raise BadRequest(f"{name!r} {version!r} is not a valid model name and version")
    path = folder / f"{name}-{version}.yml"
    assert path.parent == folder  # NAME_RE and VERSION_RE allow no separator: the file stays in the folder
    return path


class Publisher:
    """Owns the node's published models. Changes are serialized by one lock; streaming happens outside it."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        store: ArtifactStore,
        executor: Executor,
        folder: Path,
        on_change: Callable[[ServedModel | None], None] = lambda _m: None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.executor = executor
        self.folder = folder
        self.on_change = on_change  # called with the new model (or None after a withdrawal), once it is served
        self._lock = asyncio.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    # --- the canonical form ---------------------------------------------------------------------------------------

    def canonical_text(self, model: ServedModel) -> str:
        """The manifest a peer pulls: labels inline, each artifact this node has in its store by sha256."""
        artifacts = {
            f: d.sha256 for f, d in model.deployments.items() if d.sha256 is not None and self.store.has(d.sha256)
        }
        if not artifacts:
            raise Conflict(f"{model.name} {model.version} has no artifact in this node's store to send")
        return dump(canonical_document(model.manifest, labels=model.labels, artifacts=artifacts))

    def check_free(self, name: str, version: str, *, replace: bool) -> None:
        """Fail early (before streaming anything) when the name and version are taken and not to be replaced."""
        if not replace and self.catalog.find(name, version) is not None:
            raise Conflict(f"{name} {version} is published on this node already; {REPLACE_HINT}")

    # --- publishing -----------------------------------------------------------------------------------------------

    async def publish(
        self,
        manifest: Manifest,
        *,
        labels: tuple[str, ...] | None,
        staged: Mapping[str, Ingest],
        replace: bool = False,
        idempotent: bool = False,
    ) -> Published:
        """Verify the staged artifacts against the manifest, store them and the canonical manifest, serve the model.

        ``staged`` maps a framework to its artifact, streamed into the store's tmp dir and not yet committed; a
        framework of the manifest with no staged artifact must name one (by sha256) that the store holds. Raises
        ArtifactMismatch (nothing is kept), BadRequest, or Conflict (the name and version exist, and neither
        ``replace`` nor, with ``idempotent``, an identical manifest allows it)."""
        names = [f.name for f in manifest.frameworks]
        for framework in staged:
            if framework not in names:
                raise BadRequest(
                    f"artifact.{framework}: the manifest has no {framework} framework (it has {', '.join(names)})"
                )
        artifacts: dict[str, str] = {}
        for n, entry in enumerate(manifest.frameworks):
            expected = entry.artifact.sha256
            ingest = staged.get(entry.name)
            if ingest is not None:
                try:
                    artifacts[entry.name] = await asyncio.to_thread(ingest.finish, expected)
                except ArtifactMismatch as exc:
                    raise ArtifactMismatch(
                        f"artifact.{entry.name}: the {entry.name} artifact has sha256 {exc.actual}, but the manifest "
                        f"says {exc.expected}; the model is refused and nothing was kept",
                        expected=exc.expected,
                        actual=exc.actual,
                    ) from None
            elif expected is not None and self.store.has(expected):
                artifacts[entry.name] = expected
            elif expected is not None:
                raise BadRequest(
                    f"frameworks[{n}].artifact: sha256 {expected} ({entry.name}) is not in this node's store; "
                    f"upload it as the part artifact.{entry.name}"
                )
            else:
                raise BadRequest(
                    f"frameworks[{n}].artifact: no artifact for {entry.name}; upload it as the part "
                    f"artifact.{entry.name} (the node never reads a path or URL a client gives)"
                )
        if labels is None:
            if manifest.output.labels_path is not None:
                raise BadRequest(
                    "output.parameters.labels: the labels are given by path; send the file as the part 'labels' "
                    "(one label per line) or list them inline"
                )
            labels = manifest.output.labels
        path = published_file(self.folder, manifest.name, manifest.version)
        text = dump(canonical_document(manifest, labels=labels, artifacts=artifacts))
        if len(text.encode()) > MAX_MANIFEST_BYTES:
            raise BadRequest(f"the manifest with its labels inline is over {MAX_MANIFEST_BYTES} bytes")
        try:  # the stored form must load again at the next start exactly as it is served now
            canonical = parse_manifest_text(text, file=str(path))
        except ManifestError as exc:  # pragma: no cover - canonical_document emits only what the schema accepts
            raise BadRequest(f"the canonical form of the manifest does not validate: {exc}") from None

        async with self._lock:
            old = self.catalog.find(manifest.name, manifest.version)
            unchanged = False
            if old is not None and old.published and idempotent:
                shas = {f: d.sha256 for f, d in old.deployments.items() if d.sha256 is not None}
                unchanged = dump(canonical_document(old.manifest, labels=old.labels, artifacts=shas)) == text
            if old is not None and not replace and not unchanged:
                raise Conflict(f"{manifest.name} {manifest.version} is published on this node already; {REPLACE_HINT}")
            self._check_file_is_ours(path, manifest)
            for ingest in staged.values():
                await asyncio.to_thread(ingest.commit)
            if unchanged and old is not None:
                return Published(old, text, replaced=False, unchanged=True)
            await asyncio.to_thread(_write_atomically, path, text)
            frameworks = self.executor.frameworks()
            deployments = {
                f.name: stored_deployment(f, artifacts[f.name], self.store, frameworks) for f in canonical.frameworks
            }
            model = served_model(canonical, labels, deployments, published=True)
            self.catalog.put(model)
            if old is not None:
                await self._unload(old, keep=model)
        log.info(
            "published %s %s (%s)",
            model.name,
            model.version,
            ", ".join(f"{f} {d.sha256[:12] if d.sha256 else '?'}" for f, d in model.deployments.items()),
        )
        self.on_change(model)
        return Published(model, text, replaced=old is not None, unchanged=False)

    def _check_file_is_ours(self, path: Path, manifest: Manifest) -> None:
        """NAME-VERSION.yml is ambiguous when both hold '-' (a-1 + 0, a + 1-0): never overwrite another model."""
        if not path.exists():
            return
        try:
            there = load_manifest_file(path)
        except ManifestError:
            return  # a broken file of ours: replace it
        if (there.name, there.version) != (manifest.name, manifest.version):
            raise Conflict(
                f"{path.name} holds {there.name} {there.version}; {manifest.name} {manifest.version} would take its "
                "file name: choose another version"
            )

    # --- withdrawing ----------------------------------------------------------------------------------------------

    async def withdraw(self, name: str, version: str) -> ServedModel:
        async with self._lock:
            model = self.catalog.find(name, version)
            if model is None:
                raise NotFound(f"{name} {version} is not served on this node")
            if not model.published:
                raise Conflict(
                    f"{name} {version} comes from the manifest file {model.manifest.file}, not from a publication; "
                    "remove that file (and restart the node) to withdraw it"
                )
            self.catalog.remove(name, version)
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, model.manifest.file)
            await self._unload(model, keep=None)
        log.info("withdrew %s %s", name, version)
        self.on_change(None)
        return model

    async def _unload(self, old: ServedModel, *, keep: ServedModel | None) -> None:
        devices = self.executor.devices()
        kept = {s.key for s in keep.model_specs(devices)} if keep is not None else set()
        for spec in old.model_specs(devices):
            if spec.key not in kept:
                try:
                    await self.executor.unload(spec)
                except Exception as exc:  # a dead worker has nothing loaded anyway
                    log.warning("could not unload %s: %s", spec.key, exc)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".publish-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
