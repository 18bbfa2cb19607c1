"""LocalExecutor: one worker subprocess per (framework, device), models kept loaded between requests."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkerUnavailable
from .base import Executor, ModelSpec
from .worker.backends import framework_version
from .worker_process import DEFAULT_START_TIMEOUT, WorkerProcess

log = logging.getLogger("carml.exec")

DEFAULT_RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
_MODULES = {"onnxruntime": "onnxruntime", "pytorch": "torch"}


@dataclass(frozen=True)
class LocalExecutorConfig:
    threads: int = 0  # framework intra-op threads; 0 = the framework's default (all cores)
    pool: int = 2  # requests a worker handles at once
    max_pixels: int = 40_000_000
    start_timeout: float = DEFAULT_START_TIMEOUT
    restart_backoff: tuple[float, ...] = DEFAULT_RESTART_BACKOFF


def installed_frameworks() -> dict[str, str]:
    """Frameworks importable here, found without importing them (torch alone would cost the node 300 MB)."""
    found = {}
    for name, module in _MODULES.items():
        if importlib.util.find_spec(module) is not None and (version := framework_version(name)):
            found[name] = version
    return found


class _Slot:
    """The worker of one (framework, device) and what it should have loaded, surviving restarts."""

    def __init__(self) -> None:
        self.worker: WorkerProcess | None = None
        self.models: dict[str, ModelSpec] = {}
        self.lock = asyncio.Lock()
        self.restarts = 0
        self.requests = 0
        self.failures = 0


class LocalExecutor(Executor):
    kind = "local"

    def __init__(
        self, run_dir: Path, config: LocalExecutorConfig = LocalExecutorConfig(), devices: list[str] | None = None
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self._frameworks = installed_frameworks()
        self._devices = devices or ["cpu"]
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def frameworks(self) -> dict[str, str]:
        return dict(self._frameworks)

    def devices(self) -> list[str]:
        return list(self._devices)

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        workers = [s.worker for s in self._slots.values() if s.worker is not None]
        await asyncio.gather(*(w.aclose() for w in workers), return_exceptions=True)

    def is_loaded(self, model: ModelSpec) -> bool:
        slot = self._slots.get((model.framework, model.device))
        return bool(slot and slot.worker and slot.worker.alive and model.key in slot.worker.loaded)

    async def load(self, model: ModelSpec) -> float:
        slot = self._slots.setdefault((model.framework, model.device), _Slot())
        worker = await self._ensure_worker(model.framework, model.device)
        slot.models[model.key] = model
        return await self._load_into(worker, model)

    async def _load_into(self, worker: WorkerProcess, model: ModelSpec) -> float:
        reply = await worker.request(
            {"op": "load", "model": model.key, "path": self.worker_path(model), "spec": model.spec},
            timeout=self.config.start_timeout,
        )
        worker.loaded.add(model.key)
        return float(reply.get("load_ms", 0.0))

    async def unload(self, model: ModelSpec) -> None:
        """Forget the model (a restarted worker will not reload it) and free it in the worker. A load that was in
        flight when the model was forgotten still ends loaded in the worker: unloading it again frees it then."""
        slot = self._slots.get((model.framework, model.device))
        if slot is None:
            return
        known = slot.models.pop(model.key, None) is not None
        worker = slot.worker
        if worker is not None and worker.alive and (known or model.key in worker.loaded):
            await worker.request({"op": "unload", "model": model.key}, timeout=5.0)
            worker.loaded.discard(model.key)

    async def infer(self, model: ModelSpec, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        slot = self._slots.setdefault((model.framework, model.device), _Slot())
        worker = slot.worker
        load_ms = 0.0
        if worker is None or not worker.alive or model.key not in worker.loaded:
            async with asyncio.timeout(timeout):
                load_ms = await self.load(model)
            worker = slot.worker
        assert worker is not None
        slot.requests += 1
        try:
            reply = await worker.request({"op": "infer", "model": model.key, **request}, timeout=timeout)
            if load_ms:
                reply["load_ms"] = load_ms  # a cold start, reported apart from this request's own stages
            return reply
        except WorkerUnavailable:
            slot.failures += 1
            raise

    async def _ensure_worker(self, framework: str, device: str) -> WorkerProcess:
        if framework not in self._frameworks:
            raise WorkerUnavailable(f"framework {framework} is not installed on this node")
        slot = self._slots.setdefault((framework, device), _Slot())
        async with slot.lock:
            if slot.worker is not None and slot.worker.alive:
                return slot.worker
            if self._closed:
                raise WorkerUnavailable("the node is shutting down")
            if slot.worker is not None:
                await slot.worker.aclose()
                slot.restarts += 1
            safe = f"{framework}-{device}".replace(":", "")
            worker = self._new_worker(framework, device, self.run_dir / f"{safe}.sock")
            await worker.start()
            if self._closed:  # aclose ran while this worker started: it did not see it, so stop it here
                await worker.aclose()
                raise WorkerUnavailable("the node is shutting down")
            slot.worker = worker
            self._spawn(self._supervise(framework, device, worker))
            return worker

    def _new_worker(self, framework: str, device: str, socket_path: Path) -> WorkerProcess:
        """A worker of this executor's kind: here a subprocess; the Docker executor makes containers."""
        return WorkerProcess(
            framework,
            device,
            socket_path,
            threads=self.config.threads,
            pool=self.config.pool,
            max_pixels=self.config.max_pixels,
            start_timeout=self.config.start_timeout,
        )

    def worker_path(self, model: ModelSpec) -> str:
        """The artifact's path as the worker sees it."""
        return model.path

    async def _supervise(self, framework: str, device: str, worker: WorkerProcess) -> None:
        """Restart a crashed worker and reload what it had, so the next request finds its models warm."""
        await worker.died.wait()
        slot = self._slots[(framework, device)]
        for delay in (*self.config.restart_backoff, None):
            if self._closed or slot.worker is not worker:
                return
            try:
                new = await self._ensure_worker(framework, device)
                for spec in list(slot.models.values()):
                    if spec.key not in new.loaded:
                        await self._load_into(new, spec)
                log.info(
                    "%s/%s worker restarted (pid %s), %d model(s) reloaded",
                    framework,
                    device,
                    new.pid,
                    len(slot.models),
                )
                return
            except Exception as exc:
                if delay is None:
                    log.error("%s/%s worker could not be restarted: %s", framework, device, exc)
                    return
                log.warning("%s/%s worker restart failed (%s); retrying in %.1f s", framework, device, exc, delay)
                await asyncio.sleep(delay)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def in_flight(self) -> int:
        """Requests now at this executor's workers (cheap: read on every routed request)."""
        return sum(s.worker.in_flight for s in self._slots.values() if s.worker is not None)

    def statistics(self) -> dict[str, Any]:
        workers = []
        for (framework, device), slot in self._slots.items():
            w = slot.worker
            workers.append(
                {
                    "framework": framework,
                    "device": device,
                    "pid": w.pid if w else None,
                    "ident": w.ident if w else None,
                    "alive": bool(w and w.alive),
                    "in_flight": w.in_flight if w else 0,
                    "restarts": slot.restarts,
                    "requests": slot.requests,
                    "failures": slot.failures,
                    "models": sorted(slot.models),
                }
            )
        return {"kind": self.kind, "workers": workers}

    def worker_pids(self) -> list[int]:
        return [s.worker.pid for s in self._slots.values() if s.worker and s.worker.pid and s.worker.alive]
