"""Content-addressed artifact store: ``ROOT/sha256/<hex>``; files enter only after their digest is checked.

Two ways in: ``import_file`` copies a file named by a manifest; ``ingest``/``import_stream`` take bytes as they
arrive (an upload, a peer's artifact) into a temp file under ``ROOT/tmp``, hashing them on the way, and rename the
file into place only once its digest is known and checked. A failure at any point removes the temp file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterable
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import ArtifactError, ArtifactMismatch, ArtifactTooLarge

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

    def ingest(self, *, limit: int | None = None, label: str = "artifact") -> Ingest:
        """A temp file in the store's tmp dir to stream one artifact into; see :class:`Ingest`."""
        return Ingest(self, limit=limit, label=label)

    async def import_stream(
        self, chunks: AsyncIterable[bytes], *, expected: str | None = None, limit: int | None = None, label: str = ""
    ) -> str:
        """Stream ``chunks`` into the store and return their sha256; never holds the whole artifact in memory.

        Raises ArtifactTooLarge past ``limit`` bytes and ArtifactMismatch when ``expected`` is given and differs;
        either way nothing is left behind."""
        with self.ingest(limit=limit, label=label or "artifact") as ingest:
            await ingest.feed(chunks)
            await asyncio.to_thread(ingest.finish, expected)
            await asyncio.to_thread(ingest.commit)
            return ingest.sha256

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


class Ingest:
    """One artifact on its way into the store: write (hashing as it goes), finish (check), commit (rename).

    A context manager: leaving it without ``commit`` (an error, a cancelled upload) removes the temp file. The
    file operations block; async callers use ``feed`` or ``asyncio.to_thread``."""

    def __init__(self, store: ArtifactStore, *, limit: int | None, label: str) -> None:
        self.store = store
        self.limit = limit
        self.label = label
        self.size = 0
        self.sha256 = ""
        self.committed = False
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=store.tmp, prefix="ingest-")
        self.tmp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if not self.committed:
            self.abort()

    def write(self, data: bytes) -> None:
        if self.sha256:
            raise ArtifactError(f"{self.label}: written to after it was finished")
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise ArtifactTooLarge(f"{self.label} exceeds the limit of {self.limit} bytes", limit=self.limit)
        self._hash.update(data)
        self._file.write(data)

    async def feed(self, chunks: AsyncIterable[bytes]) -> None:
        """Write an async stream of chunks, gathered into CHUNK-sized writes done off the event loop."""
        pending: list[bytes] = []
        buffered = 0
        async for chunk in chunks:
            if not chunk:
                continue
            pending.append(chunk)
            buffered += len(chunk)
            if self.limit is not None and self.size + buffered > self.limit:
                raise ArtifactTooLarge(f"{self.label} exceeds the limit of {self.limit} bytes", limit=self.limit)
            if buffered >= CHUNK:
                await asyncio.to_thread(self.write, b"".join(pending))
                pending, buffered = [], 0
        if pending:
            await asyncio.to_thread(self.write, b"".join(pending))

    def finish(self, expected: str | None = None) -> str:
        """Flush to disk and return the digest; ArtifactMismatch (and the temp file gone) when it is not
        ``expected``."""
        if not self.sha256:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.sha256 = self._hash.hexdigest()
        if expected is not None and self.sha256 != expected:
            self.abort()
            raise ArtifactMismatch(
                f"{self.label} has sha256 {self.sha256}, expected {expected}", expected=expected, actual=self.sha256
            )
        return self.sha256

    def commit(self) -> Path:
        """Rename the checked file into the store (atomic; an object already there is simply replaced by the same
        bytes) and return its path."""
        sha256 = self.finish()
        target = self.store.path(sha256)
        os.chmod(self.tmp, 0o444)
        os.replace(self.tmp, target)
        self.committed = True
        return target

    def abort(self) -> None:
        """Remove the temp file; safe to call at any time, and twice."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
