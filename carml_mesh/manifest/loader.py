"""Reading manifest files from folders: YAML parsing, size limits, and one problem per bad file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ManifestError
from .schema import Manifest, parse_manifest

log = logging.getLogger("carml.manifest")
MAX_MANIFEST_BYTES = 1 << 20


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return ": ".join(p for p in (self.file, self.field, self.reason) if p)


def parse_manifest_text(text: str, *, file: str = "") -> Manifest:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"invalid YAML{where}: {reason}", file=file) from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        # PyYAML's constructors raise these on e.g. `2001-02-30`, `!!int abc`, `!!timestamp x`, or deep nesting
        raise ManifestError(f"invalid YAML: {type(exc).__name__}: {exc}", file=file) from None
    return parse_manifest(data, file=file)


def load_manifest_file(path: Path) -> Manifest:
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"file is {size} bytes; a manifest may be at most {MAX_MANIFEST_BYTES}", file=str(path))
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestError("file is not UTF-8 text", file=str(path)) from None
    except OSError as exc:
        raise ManifestError(f"cannot read: {exc.strerror}", file=str(path)) from None
    return parse_manifest_text(text, file=str(path))


def load_manifest_dirs(dirs: list[Path]) -> tuple[list[Manifest], list[Problem]]:
    """Every valid manifest in the folders; each invalid one becomes a Problem and is skipped."""
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], str] = {}
    for folder in dirs:
        if not folder.is_dir():
            problems.append(Problem(str(folder), "", "manifests folder does not exist"))
            continue
        for path in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]):
            try:
                manifest = load_manifest_file(path)
            except ManifestError as exc:
                problems.append(Problem(exc.file or str(path), exc.field, exc.reason))
                log.warning("skipping manifest: %s", exc)
                continue
            key = (manifest.name, manifest.version)
            if key in seen:
                problems.append(
                    Problem(str(path), "name", f"{manifest.name} {manifest.version} is also in {seen[key]}")
                )
                continue
            seen[key] = str(path)
            manifests.append(manifest)
    return manifests, problems
