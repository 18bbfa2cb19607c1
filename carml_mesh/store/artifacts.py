"""Content-addressed artifact store: ``ROOT/sha256/<hex>``; files enter only after their digest is checked."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ArtifactError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """Blocking file operations; the node calls them through ``asyncio.to_thread``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "sha256"
        self.tmp = root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._index_path = root / "index.json"
        self._index = self._read_index()

    def path(self, sha256: str) -> Path:
        return self.objects / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def import_file(self, source: Path, expected: str | None = None) -> str:
        """Copy ``source`` into the store (once) and return its sha256; refuses a digest that does not match."""
        try:
            stat = source.stat()
        except OSError as exc:
            raise ArtifactError(f"artifact {source} is not readable: {exc.strerror}") from exc
        if not source.is_file():
            raise ArtifactError(f"artifact {source} is not a file")
        # Re-hashing a 20 MB model on every start is wasted work: trust the digest while path, size and mtime hold.
        key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        known = self._index.get(key)
        if known and self.has(known) and (expected is None or known == expected):
            return known
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="import-")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise ArtifactError(f"artifact {source} has sha256 {actual}, the manifest says {expected}")
            os.chmod(tmp, 0o444)
            os.replace(tmp, self.path(actual))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._index[key] = actual
        self._write_index()
        return actual

    def verify(self, sha256: str) -> bool:
        """Whether the stored object still hashes to its name (detects a tampered or truncated file)."""
        path = self.path(sha256)
        return path.is_file() and sha256_file(path) == sha256

    def _read_index(self) -> dict[str, str]:
        try:
            data = json.loads(self._index_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write_index(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="index-")
        with os.fdopen(fd, "w") as f:
            json.dump(self._index, f)
        os.replace(tmp, self._index_path)

    def clear_tmp(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
