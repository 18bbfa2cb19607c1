"""The node's benchmarks: starts runs as tasks it owns, answers for them while they run, closes them on shutdown.

    async with BenchmarkManager(node) as benchmarks:    # entered by the Node once its HTTP server is up
        run = await benchmarks.start(config)           # 503 past MAX_RUNNING runs at once
        await benchmarks.document(run.id)              # live while running, from SQLite after

Leaving the block cancels the running runs; each keeps what it measured and is stored as "cancelled".
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..errors import NotFound, ServiceError
from .config import BenchConfig
from .runner import BenchmarkRun
from .store import BenchStore, brief

if TYPE_CHECKING:
    from ..node.node import Node

log = logging.getLogger("carml.bench")

MAX_RUNNING = 4
CLOSE_TIMEOUT_S = 1.5  # cancelled runs store their partial results within this, inside the node's shutdown budget


class TooManyRuns(ServiceError):
    """This node runs as many benchmarks as it allows at once."""

    status = 503


class BenchmarkManager:
    def __init__(self, node: Node, *, max_running: int = MAX_RUNNING) -> None:
        self.node = node
        self.store = BenchStore(node.db)
        self.max_running = max_running
        self._runs: dict[str, BenchmarkRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.store.ensure()
        left = await self.store.mark_interrupted()
        if left:
            log.warning("%d benchmark run(s) were left running by a previous process; marked failed", left)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the running runs and wait (bounded) for them to store what they measured. Safe twice."""
        self._closed = True
        for run in self._runs.values():
            run.cancel()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def start(self, config: BenchConfig) -> BenchmarkRun:
        if self._closed:
            raise TooManyRuns("the node is shutting down")
        if len(self._runs) >= self.max_running:
            raise TooManyRuns(
                f"this node runs {len(self._runs)} benchmarks already (at most {self.max_running}); "
                "wait for one to finish or cancel one"
            )
        run = BenchmarkRun(uuid.uuid4().hex[:16], config, self.node, self.store)
        self._runs[run.id] = run  # counted from now, before the await: a concurrent start sees it
        try:
            await self.store.save(run.document())  # visible in the list from the first answer on
        except BaseException:
            self._runs.pop(run.id, None)
            raise
        if self._closed:  # closed while storing it: aclose did not see this run
            self._runs.pop(run.id, None)
            run.cancel()
            run.status = "cancelled"
            await self.store.save(run.document())
            raise TooManyRuns("the node is shutting down")
        task = asyncio.create_task(self._run(run), name=f"benchmark {run.id}")
        self._tasks[run.id] = task
        return run

    async def _run(self, run: BenchmarkRun) -> None:
        try:
            await run.run()
            log.info("benchmark %s %s (%s)", run.id, run.status, run.config.name)
        finally:
            self._runs.pop(run.id, None)
            self._tasks.pop(run.id, None)

    async def wait(self, run_id: str) -> None:
        """Until the run has ended and is stored (at once for a run that is not running)."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.shield(task)

    def running(self) -> list[BenchmarkRun]:
        return list(self._runs.values())

    async def document(self, run_id: str) -> dict[str, Any] | None:
        run = self._runs.get(run_id)
        if run is not None:
            return run.document()
        return await self.store.get(run_id)

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """This node's runs, newest first; the running ones with their live progress."""
        stored = await self.store.list(limit)
        live = {run.id: brief(run.document()) for run in list(self._runs.values())}
        return [live.get(doc["id"], doc) for doc in stored]

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Cancel a running run (a finished one is left as it is); its status once it stopped."""
        run = self._runs.get(run_id)
        if run is None:
            doc = await self.store.get(run_id)
            if doc is None:
                raise NotFound(f"no benchmark {run_id!r} on this node")
            return {"id": run_id, "status": doc["status"]}
        run.cancel()
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT_S)
        return {"id": run_id, "status": run.status}
