"""Accuracy of a model on a labelled dataset: top-1, top-5, per class, and the classes it confuses.

    datasets   the bundled digits split (heldout.npz beside the digits-cnn artifacts), or a zip (or, from the CLI, a
               folder) of images in class subfolders, the folder name being the label
    mapping    dataset classes -> the model's label indices (exact, case-insensitive, an integer index, or one of the
               comma-separated names of a label such as ImageNet's "tabby, tabby cat")
    scoring    pure: true indices and top-k predictions in, the figures out
    evaluator  batches through the node's routed inference (as /api/predict runs: a node pin, framework and device
               choice work the same), with progress and cancellation
    store      the ``evaluations`` table of the node's database
    manager    owns the running evaluations (bounded count); cancels them when the node stops

A zip is checked from its central directory before anything is read: no absolute or ``..`` names, no symlinks, no
encrypted entries, at most ``max_entries`` entries and ``max_total_bytes`` uncompressed, no entry whose compression
ratio betrays a bomb; reading an entry never yields more than the size it declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from ..errors import BadRequest, CarmlError, Conflict, NotFound, PayloadTooLarge
from ..node.inference import PredictRequest

if TYPE_CHECKING:
    from ..node.catalog import ServedModel
    from ..node.node import Node
    from ..store.db import Database

log = logging.getLogger("carml.accuracy")

DIGITS = "digits"
DIGITS_FILE = "heldout.npz"
DIGITS_SHAPE = (1, 8, 8)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
DEFAULT_MAX_ENTRIES = 50_000
DEFAULT_MAX_TOTAL_BYTES = 512 << 20  # uncompressed, all entries together
DEFAULT_MAX_FILE_BYTES = 64 << 20  # uncompressed, one entry
DEFAULT_MAX_RATIO = 200.0  # uncompressed / compressed, for entries over RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 1 << 20  # small entries may compress well (a blank image) without being a bomb
DEFAULT_BATCH_SIZE = 32
DEFAULT_BATCH_BYTES = 16 << 20  # images per request, so a forwarded batch stays under a peer's body limit
DEFAULT_TOP_K = 5
DEFAULT_MAX_RUNNING = 2
MAX_CONFUSIONS = 20
MAX_MATRIX_CLASSES = 100  # the full confusion matrix is kept for datasets of at most this many classes
MAX_EXAMPLES = 10  # skipped files, failed images: this many names are kept to show
_SUPPORTED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


# --- datasets -------------------------------------------------------------------------------------------------------


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


class Dataset:
    """Labelled inputs a model is run over, read a batch at a time (off the event loop)."""

    name: str
    classes: tuple[str, ...]
    labels: tuple[str, ...]  # per item: its class
    names: tuple[str, ...]  # per item: what to call it in a failure report
    skipped: int = 0
    skipped_examples: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, indices: Sequence[int]) -> dict[str, Any]:
        """``images=`` or ``tensors=`` of a PredictRequest for these items."""
        raise NotImplementedError

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

    def close(self) -> None:
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


# --- label mapping --------------------------------------------------------------------------------------------------


def map_classes(classes: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    """Each dataset class -> the model's label index: exact name, then case-insensitive, then an integer index, then
    one of a label's comma-separated names; BadRequest lists every class that matches none (or several)."""
    exact = {label: n for n, label in enumerate(labels)}
    folded: dict[str, list[int]] = {}
    aliases: dict[str, set[int]] = {}
    for n, label in enumerate(labels):
        folded.setdefault(label.casefold(), []).append(n)
        for alias in label.split(","):
            if alias.strip():
                aliases.setdefault(alias.strip().casefold(), set()).add(n)
    mapping: dict[str, int] = {}
    unmatched: list[str] = []
    for c in classes:
        key = c.strip().casefold()
        if c in exact:
            mapping[c] = exact[c]
        elif len(folded.get(key, [])) == 1:
            mapping[c] = folded[key][0]
        elif c.strip().isdigit() and int(c) < len(labels):
            mapping[c] = int(c)
        elif len(aliases.get(key, ())) == 1:
            mapping[c] = next(iter(aliases[key]))
        else:
            unmatched.append(c)
    if unmatched:
        shown = ", ".join(repr(c) for c in unmatched[:20]) + (" ..." if len(unmatched) > 20 else "")
        example = ", ".join(repr(label) for label in labels[:5])
        raise BadRequest(
            f"{len(unmatched)} class folder(s) match no label of the model: {shown}; name folders after the model's "
            f"labels (e.g. {example}) or their index 0..{len(labels) - 1}"
        )
    return mapping


# --- scoring (pure) -------------------------------------------------------------------------------------------------


def score(truth: np.ndarray, topk: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Figures from true label indices [n] and ranked predicted indices [n, k] (k >= 1, best first)."""
    truth = np.asarray(truth, dtype=np.int64)
    topk = np.asarray(topk, dtype=np.int64).reshape(len(truth), -1)
    n = len(truth)
    if n == 0:
        return {"images": 0, "top1": None, "top5": None, "per_class": {}, "confusions": [], "confusion": None}
    first = topk[:, 0]
    hit1 = first == truth
    hit5 = (topk[:, :5] == truth[:, None]).any(axis=1)
    per_class: dict[str, dict[str, Any]] = {}
    classes = sorted(set(truth.tolist()))
    for c in classes:
        mask = truth == c
        per_class[labels[c]] = {
            "index": c,
            "images": int(mask.sum()),
            "top1": float(hit1[mask].mean()),
            "top5": float(hit5[mask].mean()),
        }
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(truth.tolist(), first.tolist(), strict=True):
        if t != p:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CONFUSIONS]
    confusions = [
        {
            "true": labels[t],
            "predicted": labels[p] if 0 <= p < len(labels) else str(p),
            "count": count,
            "fraction_of_true": count / per_class[labels[t]]["images"],
        }
        for (t, p), count in ranked
    ]
    confusion = None
    if len(classes) <= MAX_MATRIX_CLASSES:
        column = {c: k for k, c in enumerate(classes)}
        matrix = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)  # the last column: another label
        for t, p in zip(truth.tolist(), first.tolist(), strict=True):
            matrix[column[t], column.get(p, len(classes))] += 1
        confusion = {"labels": [labels[c] for c in classes], "other_column": True, "matrix": matrix.tolist()}
    return {
        "images": n,
        "top1": float(hit1.mean()),
        "top5": float(hit5.mean()) if topk.shape[1] >= min(5, len(labels)) else None,
        "correct_top1": int(hit1.sum()),
        "per_class": per_class,
        "confusions": confusions,
        "confusion": confusion,
    }


# --- the evaluator --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    model: str
    version: str | None = None
    framework: str | None = None
    device: str | None = None
    node: str | None = None  # pin: run on this member (id or name), as in /api/predict


@dataclass
class Progress:
    done: int = 0
    total: int = 0
    phase: str = "queued"

    def to_dict(self) -> dict[str, Any]:
        fraction = self.done / self.total if self.total else 0.0
        return {"done": self.done, "total": self.total, "fraction": round(fraction, 4), "phase": self.phase}


Predict = Callable[[PredictRequest], Awaitable[dict[str, Any]]]


def batches(dataset: Dataset, batch_size: int, batch_bytes: int) -> list[list[int]]:
    """Index batches of at most ``batch_size`` items and (but for a lone item) ``batch_bytes`` bytes."""
    out: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, nbytes in enumerate(dataset.sizes(range(len(dataset)))):
        if current and (len(current) >= batch_size or size + nbytes > batch_bytes):
            out.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
    if current:
        out.append(current)
    return out


async def evaluate(
    predict: Predict,
    dataset: Dataset,
    target: Target,
    mapping: dict[str, int],
    labels: Sequence[str],
    *,
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    top_k: int = DEFAULT_TOP_K,
) -> dict[str, Any]:
    """Run the model over the dataset and score it. A batch the model refuses (an undecodable image) is retried one
    input at a time, and the inputs it still refuses are counted as failed and left out of the figures."""
    progress = progress or Progress()
    progress.total, progress.done, progress.phase = len(dataset), 0, "running"
    k = max(1, min(top_k, len(labels)))
    truth: list[int] = []
    ranked: list[list[int]] = []
    failed: list[str] = []
    served: dict[str, Any] = {}
    started = time.perf_counter()

    async def run(indices: list[int]) -> list[list[int]]:
        inputs = await asyncio.to_thread(dataset.read, indices)
        request = PredictRequest(
            model=target.model,
            version=target.version,
            framework=target.framework,
            device=target.device,
            node=target.node,
            top_k=k,
            **inputs,
        )
        answer = await predict(request)
        if not served:
            served.update(
                version=answer.get("version"),
                framework=answer.get("framework"),
                device=answer.get("device"),
                node=answer.get("node"),
                nodes={},
            )
        who = str((answer.get("node") or {}).get("name", "?"))
        served["nodes"][who] = served["nodes"].get(who, 0) + len(indices)  # without a pin, batches may spread
        return [[int(p["index"]) for p in r["predictions"]] for r in answer["results"]]

    for indices in batches(dataset, batch_size, batch_bytes):
        results: list[list[int] | None]
        try:
            results = list(await run(indices))
        except (BadRequest, PayloadTooLarge) as exc:  # the input's fault (not the model's or the mesh's)
            if len(indices) == 1:
                failed.append(f"{dataset.names[indices[0]]}: {exc}")
                results = [None]
            else:  # one bad input spoils its batch: find it
                results = []
                for i in indices:
                    try:
                        results.append((await run([i]))[0])
                    except (BadRequest, PayloadTooLarge) as one:
                        failed.append(f"{dataset.names[i]}: {one}")
                        results.append(None)
        for i, predicted in zip(indices, results, strict=True):
            if predicted is not None:
                truth.append(mapping[dataset.labels[i]])
                ranked.append((predicted + [-1] * k)[:k])
        progress.done += len(indices)
    duration = time.perf_counter() - started
    if not truth:
        raise BadRequest(f"the model refused every input of the dataset; e.g. {failed[0] if failed else '?'}")
    figures = score(np.asarray(truth), np.asarray(ranked), labels)
    figures.update(
        served=served,
        failed=len(failed),
        failed_examples=failed[:MAX_EXAMPLES],
        duration_s=round(duration, 3),
        images_per_s=round(len(dataset) / duration, 1) if duration > 0 else None,
        top_k=k,
    )
    progress.phase = "done"
    return figures


# --- the store ------------------------------------------------------------------------------------------------------

TABLE = "evaluations"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS evaluations (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL,
        error TEXT,
        model TEXT NOT NULL,
        config TEXT NOT NULL,
        dataset TEXT NOT NULL,
        results TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS evaluations_created ON evaluations (created_at)",
)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _row_doc(row: sqlite3.Row, owner: dict[str, str]) -> dict[str, Any]:
    config = json.loads(row["config"])
    results = json.loads(row["results"]) if row["results"] else {}
    served = results.get("served") or {}
    dataset = json.loads(row["dataset"])
    total = int(dataset.get("images", 0))
    done = total if row["status"] == "done" else int(results.get("done", 0))  # how far a cancelled one got
    return {
        "id": row["id"],
        "status": row["status"],
        "error": row["error"],
        "progress": Progress(done, total, row["status"]).to_dict(),
        "model": row["model"],
        "version": served.get("version") or config.get("version"),
        "framework": served.get("framework") or config.get("framework"),
        "device": served.get("device") or config.get("device"),
        "node": owner,
        "served_by": served.get("node"),
        "served_images": served.get("nodes"),
        "config": config,
        "dataset": dataset,
        "created_at": _iso(row["created_at"]),
        "finished_at": _iso(row["finished_at"]),
        "top1": results.get("top1"),
        "top5": results.get("top5"),
        "results": results,
    }


# --- the manager ----------------------------------------------------------------------------------------------------


@dataclass
class _Running:
    id: str
    target: Target
    config: dict[str, Any]
    dataset: Dataset
    created_at: float
    progress: Progress = field(default_factory=Progress)
    task: asyncio.Task[None] | None = None
    finished: bool = False


class Evaluations:
    """``async with Evaluations(node) as evaluations``: start, follow, cancel and list evaluations on this node."""

    def __init__(
        self,
        node: Node,
        *,
        max_running: int = DEFAULT_MAX_RUNNING,
        limits: ZipLimits = ZipLimits(),
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.node = node
        self.max_running = max_running
        self.limits = limits
        self.batch_size = batch_size
        self.tmp_dir = node.config.data_dir / "evaluations-tmp"
        self._running: dict[str, _Running] = {}
        self._closed = False

    @property
    def db(self) -> Database:
        return self.node.db

    async def __aenter__(self) -> Self:
        await self.db.ensure(TABLE, *SCHEMA)
        stopped = time.time()
        await self.db.run(
            lambda c: c.execute(
                "UPDATE evaluations SET status = 'failed', error = 'the node stopped during the evaluation', "
                "finished_at = ? WHERE status = 'running'",
                (stopped,),
            )
        )
        await asyncio.to_thread(shutil.rmtree, self.tmp_dir, True)  # uploads a killed node left behind
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel what runs and wait for it to record itself as cancelled. Safe twice."""
        self._closed = True
        running = list(self._running.values())
        tasks = [r.task for r in running if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r in running:
            await self._finish(r, "cancelled", "the node stopped", None)

    # --- datasets -------------------------------------------------------------------------------------------

    def temp_path(self) -> Path:
        """A fresh file for an upload; the ZipDataset made from it deletes it when done."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".zip")
        os.close(fd)
        return Path(name)

    async def open_zip(self, path: Path, *, name: str) -> ZipDataset:
        return await asyncio.to_thread(lambda: ZipDataset(path, name=name, limits=self.limits, owns_file=True))

    async def open_digits(self, model: ServedModel) -> TensorDataset:
        extra = [self.node.config.samples_dir.parent / "digits-cnn"] if self.node.config.samples_dir else []
        for other in self.node.catalog:
            if other.name == "digits-cnn" and other is not model:
                with contextlib.suppress(CarmlError):
                    extra.append(digits_path(other).parent)
        path = digits_path(model, extra)
        dims = model.manifest.inputs[0].dimensions
        if len(model.manifest.inputs) != 1 or any(d not in (s, -1) for d, s in zip(dims, DIGITS_SHAPE, strict=False)):
            raise BadRequest(
                f"dataset 'digits' holds 8x8 grey digits (tensors {list(DIGITS_SHAPE)}); model {model.name} takes "
                f"{[i.name for i in model.manifest.inputs]} of {list(dims)}"
            )
        return await asyncio.to_thread(load_digits, path)

    # --- running --------------------------------------------------------------------------------------------

    async def start(self, target: Target, dataset: Dataset, *, batch_size: int | None = None) -> dict[str, Any]:
        """Check the request, store it, start it; the dataset is the evaluation's (closed when it ends)."""
        try:
            if self._closed:
                raise Conflict("the node is stopping")
            active = [r for r in self._running.values() if not r.finished]
            if len(active) >= self.max_running:
                raise Conflict(
                    f"{len(active)} evaluations are running on this node (at most {self.max_running}); wait for one "
                    "to end or cancel it"
                )
            model = self.node.catalog.get(target.model, target.version)  # 404 naming what this node serves
            if model.manifest.output.type != "classification":
                raise BadRequest(f"model {model.name} is not a classifier: accuracy needs labelled classes")
            self.node.routed.decide(
                target.model, target.version, target.framework, target.device, node=target.node
            )  # 404 now, not in the background, for an unknown framework, device or node
            mapping = map_classes(dataset.classes, model.labels)
        except BaseException:
            dataset.close()
            raise
        evaluation_id = uuid.uuid4().hex
        config = {
            **{k: v for k, v in asdict(target).items() if v is not None},
            "version": target.version or model.version,
            "batch_size": batch_size or self.batch_size,
            "top_k": DEFAULT_TOP_K,
            "mapping": mapping if len(mapping) <= MAX_MATRIX_CLASSES else None,
        }
        running = _Running(evaluation_id, target, config, dataset, time.time())
        running.progress.total = len(dataset)
        self._running[evaluation_id] = running  # counted from now: a second start cannot slip past the bound
        try:
            await self.db.run(
                lambda c: c.execute(
                    "INSERT INTO evaluations (id, created_at, status, model, config, dataset) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        evaluation_id,
                        running.created_at,
                        "running",
                        target.model,
                        json.dumps(config),
                        json.dumps(dataset.describe()),
                    ),
                )
            )
        except BaseException:
            self._running.pop(evaluation_id, None)
            dataset.close()
            raise
        running.task = asyncio.create_task(
            self._run(running, mapping, model.labels), name=f"evaluation {evaluation_id}"
        )
        return {"id": evaluation_id, "status": "running", "url": f"/api/evaluations/{evaluation_id}"}

    async def _run(self, running: _Running, mapping: dict[str, int], labels: tuple[str, ...]) -> None:
        status, error, results = "failed", None, None
        try:
            results = await evaluate(
                self.node.routed.predict,
                running.dataset,
                running.target,
                mapping,
                labels,
                progress=running.progress,
                batch_size=running.config["batch_size"],
            )
            status = "done"
        except asyncio.CancelledError:
            status, error = "cancelled", "the node stopped" if self._closed else "cancelled"
            raise
        except CarmlError as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("evaluation %s failed", running.id)
            error = f"internal error: {type(exc).__name__}"
        finally:
            await self._finish(running, status, error, results)

    async def _finish(self, running: _Running, status: str, error: str | None, results: dict[str, Any] | None) -> None:
        """Record how it ended, once (a task cancelled before it ever ran is finished by whoever cancelled it)."""
        if running.finished:
            return
        running.finished = True
        running.progress.phase = status
        running.dataset.close()
        text = json.dumps(results if results is not None else {"done": running.progress.done})
        try:
            await asyncio.shield(
                self.db.run(
                    lambda c: c.execute(
                        "UPDATE evaluations SET status = ?, error = ?, results = ?, finished_at = ? WHERE id = ?",
                        (status, error, text, time.time(), running.id),
                    )
                )
            )
        except CarmlError as exc:  # the database closed under us: nothing left to record into
            log.warning("evaluation %s: cannot record its end: %s", running.id, exc)
        finally:
            self._running.pop(running.id, None)

    async def cancel(self, evaluation_id: str) -> dict[str, Any] | None:
        running = self._running.get(evaluation_id)
        if running is not None and running.task is not None:
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)
            await self._finish(running, "cancelled", "cancelled", None)
        doc = await self.get(evaluation_id)
        if doc is None:
            return None
        return {"id": evaluation_id, "status": doc["status"]}

    # --- reading --------------------------------------------------------------------------------------------

    def _owner(self) -> dict[str, str]:
        return {"id": self.node.id, "name": self.node.name}

    def _with_progress(self, doc: dict[str, Any]) -> dict[str, Any]:
        running = self._running.get(doc["id"])
        if running is not None and doc["status"] == "running":
            doc["progress"] = running.progress.to_dict()
        return doc

    async def get(self, evaluation_id: str) -> dict[str, Any] | None:
        row = await self.db.run(
            lambda c: c.execute("SELECT * FROM evaluations WHERE id = ?", (evaluation_id,)).fetchone()
        )
        if row is None:
            return None
        doc = _row_doc(row, self._owner())
        results = doc.pop("results")
        doc.update(
            per_class=results.get("per_class", {}),
            confusions=results.get("confusions", []),
            confusion=results.get("confusion"),
            images=results.get("images"),
            failed=results.get("failed"),
            failed_examples=results.get("failed_examples", []),
            duration_s=results.get("duration_s"),
            images_per_s=results.get("images_per_s"),
        )
        return self._with_progress(doc)

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.run(
            lambda c: c.execute("SELECT * FROM evaluations ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        )
        out = []
        for row in rows:
            doc = _row_doc(row, self._owner())
            doc.pop("results")
            out.append(self._with_progress(doc))
        return out
