"""Labelled datasets an evaluation runs a model over, read a batch at a time (off the event loop).

    digits   the bundled digits split: heldout.npz beside the digits-cnn artifacts, float32 [n, 1, 8, 8]
    zip      images in class subfolders (the folder name is the label), checked from its central directory first
    folder   the same layout on a local disk (the CLI zips it for an upload)

A zip is checked before anything is read: no absolute or ``..`` names, no symlinks, no encrypted entries, at most
``max_entries`` entries and ``max_total_bytes`` uncompressed, no entry whose compression ratio betrays a bomb; reading
an entry never yields more than the size it declared.
"""

from __future__ import annotations

import abc
import contextlib
import os
import stat
import threading
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadRequest, NotFound, PayloadTooLarge

if TYPE_CHECKING:
    from ..node.catalog import ServedModel

DIGITS = "digits"
DIGITS_FILE = "heldout.npz"
DIGITS_SHAPE = (1, 8, 8)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
DEFAULT_MAX_ENTRIES = 50_000
DEFAULT_MAX_TOTAL_BYTES = 512 << 20  # uncompressed, all entries together
DEFAULT_MAX_FILE_BYTES = 64 << 20  # uncompressed, one entry
DEFAULT_MAX_RATIO = 200.0  # uncompressed / compressed, for entries over RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 1 << 20  # small entries may compress well (a blank image) without being a bomb
MAX_EXAMPLES = 10  # skipped files, failed images: this many names are kept to show
_SUPPORTED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO


@dataclass(frozen=True)
class Item:
    """One labelled input: where it is (a zip entry name or a file path) and its class (a folder name)."""

    name: str
    label: str


@dataclass(frozen=True)
class Scan:
    items: tuple[Item, ...]
    skipped: int
    skipped_examples: tuple[str, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted({i.label for i in self.items}))


class Dataset(abc.ABC):
    """Labelled inputs a model is run over, read a batch at a time (off the event loop)."""

    name: str
    classes: tuple[str, ...]
    labels: tuple[str, ...]  # per item: its class
    names: tuple[str, ...]  # per item: what to call it in a failure report
    skipped: int = 0
    skipped_examples: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @abc.abstractmethod
    def read(self, indices: Sequence[int]) -> dict[str, Any]:
        """``images=`` or ``tensors=`` of a InferRequest for these items."""

    def sizes(self, indices: Sequence[int]) -> list[int]:
        return [0 for _ in indices]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images": len(self),
            "classes": len(self.classes),
            "skipped": self.skipped,
            "skipped_examples": list(self.skipped_examples),
        }

    def close(self) -> None:  # noqa: B027  (a default, not abstract: an in-memory dataset holds nothing to release)
        """Release what the dataset holds (an open zip, its temp file)."""


class TensorDataset(Dataset):
    """Inputs held as one array (the digits split: float32 [n, 1, 8, 8], grey levels 0..16)."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, classes: Sequence[str] | None = None) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise BadRequest(f"dataset {name!r} is empty or its inputs and labels differ in count")
        self.name = name
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        names = list(classes) if classes is not None else [str(int(c)) for c in sorted(set(y.tolist()))]
        by_value = {int(c): names[n] for n, c in enumerate(sorted(set(y.tolist())))}
        self.labels = tuple(by_value[int(v)] for v in y.tolist())
        self.classes = tuple(sorted(set(self.labels)))
        self.names = tuple(f"{name}[{n}]" for n in range(len(x)))

    def read(self, indices: Sequence[int]) -> dict[str, Any]:
        return {"tensors": {"": self.x[list(indices)]}}


class ZipDataset(Dataset):
    """Images in a zip, read entry by entry; the zip stays open (and its temp file, if it owns one) until close."""

    def __init__(self, path: Path, *, name: str, limits: ZipLimits = ZipLimits(), owns_file: bool = False) -> None:
        self.path = path
        self.name = name
        self._owns_file = owns_file
        self._lock = threading.Lock()  # a read runs in a thread; close (on cancel) waits for it
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise BadRequest(f"the dataset is not a readable zip file: {exc}") from None
        try:
            scan = scan_zip(self._zip.infolist(), limits)
        except BaseException:
            self._zip.close()
            raise
        self._infos = {i.filename: i for i in self._zip.infolist()}
        self.names = tuple(i.name for i in scan.items)
        self.labels = tuple(i.label for i in scan.items)
        self.classes = scan.classes
        self.skipped = scan.skipped
        self.skipped_examples = scan.skipped_examples

    def sizes(self, indices: Sequence[int]) -> list[int]:
        return [self._infos[self.names[i]].file_size for i in indices]

    def read(self, indices: Sequence[int]) -> dict[str, Any]:
        with self._lock:
            return {"images": tuple(self._read(i) for i in indices)}

    def _read(self, i: int) -> bytes:
        if self._zip.fp is None:
            raise BadRequest(f"the dataset {self.name!r} is closed")
        info = self._infos[self.names[i]]
        try:
            with self._zip.open(info) as f:
                data = f.read(info.file_size + 1)  # never more than it declared (and one byte to tell)
        except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
            raise BadRequest(f"zip entry {info.filename!r} cannot be read: {exc}") from None
        if len(data) != info.file_size:
            raise BadRequest(f"zip entry {info.filename!r} does not hold the {info.file_size} bytes it declares")
        return data

    def close(self) -> None:
        with self._lock:
            self._zip.close()
        if self._owns_file:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _classify_name(name: str) -> tuple[str, str] | str:
    """(class folder, file) of a zip or folder path, or why it is skipped (a plain string)."""
    parts = PurePosixPath(name).parts
    base = parts[-1] if parts else name
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return "hidden"
    if PurePosixPath(base).suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image"
    if len(parts) < 2:
        return "not in a class folder"
    return parts[-2], base


def _unsafe_name(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a path with '..'"
    if "\x00" in name:
        return "a name with a NUL byte"
    return None


def scan_zip(infos: Iterable[zipfile.ZipInfo], limits: ZipLimits = ZipLimits()) -> Scan:
    """The labelled images of a zip's central directory, or the first entry that breaks a rule."""
    infos = list(infos)
    if len(infos) > limits.max_entries:
        raise PayloadTooLarge(f"the zip holds {len(infos)} entries; at most {limits.max_entries} are accepted")
    total = 0
    items: list[Item] = []
    skipped: list[str] = []
    for info in infos:
        name = info.filename
        if why := _unsafe_name(name):
            raise BadRequest(f"zip entry {name[:200]!r} is {why}")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BadRequest(f"zip entry {name[:200]!r} is a symbolic link")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise BadRequest(f"zip entry {name[:200]!r} is encrypted")
        if info.compress_type not in _SUPPORTED_COMPRESSION:
            raise BadRequest(f"zip entry {name[:200]!r} uses an unsupported compression method {info.compress_type}")
        if info.file_size > limits.max_file_bytes:
            raise PayloadTooLarge(
                f"zip entry {name[:200]!r} is {info.file_size} bytes uncompressed; at most {limits.max_file_bytes}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
            raise PayloadTooLarge(
                f"zip entry {name[:200]!r} expands {ratio:.0f} times ({info.compress_size} -> {info.file_size} "
                f"bytes); at most {limits.max_ratio:g} (a zip bomb?)"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise PayloadTooLarge(
                f"the zip expands to more than {limits.max_total_bytes} bytes (at entry {name[:200]!r})"
            )
        where = _classify_name(name)
        if isinstance(where, str):
            skipped.append(f"{name[:200]} ({where})")
            continue
        items.append(Item(name, where[0]))
    if not items:
        raise BadRequest(
            f"the zip holds no image in a class folder (CLASS/IMAGE.png); {len(skipped)} file(s) skipped"
            + (f", e.g. {skipped[0]}" if skipped else "")
        )
    return Scan(tuple(items), len(skipped), tuple(skipped[:MAX_EXAMPLES]))


def scan_folder(root: Path, limits: ZipLimits = ZipLimits()) -> Scan:
    """The labelled images of a local folder (CLASS/IMAGE.png); symlinks are skipped, the zip limits apply."""
    if not root.is_dir():
        raise BadRequest(f"{root} is not a folder")
    items: list[Item] = []
    skipped: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                skipped.append(f"{rel} (a symbolic link)")
                continue
            where = _classify_name(rel)
            if isinstance(where, str):
                skipped.append(f"{rel} ({where})")
                continue
            size = path.stat().st_size
            if size > limits.max_file_bytes:
                raise PayloadTooLarge(f"{rel} is {size} bytes; at most {limits.max_file_bytes}")
            total += size
            if len(items) >= limits.max_entries or total > limits.max_total_bytes:
                raise PayloadTooLarge(
                    f"the folder holds more than {limits.max_entries} images or {limits.max_total_bytes} bytes"
                )
            items.append(Item(rel, where[0]))
    if not items:
        raise BadRequest(f"{root} holds no image in a class folder (CLASS/IMAGE.png); {len(skipped)} file(s) skipped")
    return Scan(tuple(items), len(skipped), tuple(skipped[:MAX_EXAMPLES]))


def zip_folder(root: Path, out: Path, limits: ZipLimits = ZipLimits()) -> Scan:
    """Write the folder's labelled images into a zip (stored: images are compressed already), for an upload."""
    scan = scan_folder(root, limits)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for item in scan.items:
            z.write(root / item.name, item.name)
    return scan


def digits_path(model: ServedModel, extra: Iterable[Path] = ()) -> Path:
    """heldout.npz beside the model's artifacts (scripts/prepare_models.py writes it there), else in ``extra``."""
    tried: list[Path] = []
    base = Path(model.manifest.file).parent
    for entry in model.manifest.frameworks:
        if entry.artifact.path is not None:
            tried.append((base / entry.artifact.path).resolve().parent / DIGITS_FILE)
    tried += [p / DIGITS_FILE for p in extra]
    for path in tried:
        if path.is_file():
            return path
    raise NotFound(
        f"the digits split ({DIGITS_FILE}) is not on this node (looked in: {', '.join(str(p.parent) for p in tried)})"
    )


def load_digits(path: Path) -> TensorDataset:
    try:
        with np.load(path) as data:
            x, y = data["X"], data["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise NotFound(f"the digits split {path} cannot be read: {exc}") from None
    if tuple(x.shape[1:]) != DIGITS_SHAPE or len(x) != len(y):
        raise NotFound(f"the digits split {path} holds X {list(x.shape)} and y {list(y.shape)}; expected [n, 1, 8, 8]")
    return TensorDataset(DIGITS, x, y)
