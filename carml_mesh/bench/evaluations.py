"""The node's accuracy evaluations: the ``evaluations`` table of its database, and the manager that owns the running
ones (a bounded count) and cancels them when the node stops.

    async with Evaluations(node) as evaluations:            # entered by the Node
        started = await evaluations.start(target, dataset)  # 409 past max_running at once
        await evaluations.get(started["id"])                # live progress while it runs, then its figures
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..errors import BadRequest, CarmlError, Conflict
from .config import Target
from .datasets import DIGITS_SHAPE, Dataset, TensorDataset, ZipDataset, ZipLimits, digits_path, load_digits
from .evaluator import DEFAULT_BATCH_SIZE, DEFAULT_TOP_K, Progress, evaluate
from .scoring import MAX_MATRIX_CLASSES, map_classes

if TYPE_CHECKING:
    from ..node.catalog import ServedModel
    from ..node.node import Node
    from ..store.db import Database

log = logging.getLogger("carml.accuracy")

DEFAULT_MAX_RUNNING = 2
DEFAULT_LIMITS = ZipLimits()


# --- the table ------------------------------------------------------------------------------------------------------

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
        limits: ZipLimits = DEFAULT_LIMITS,
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
                self.node.routed.infer,
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
