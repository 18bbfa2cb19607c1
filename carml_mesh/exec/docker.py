"""DockerExecutor: the same workers, in containers run through aiodocker (CarML's execution model).

- warm (the default): one long-lived container per (image, device); models stay loaded across requests;
- cold (the seed's way): per request a container starts, loads the model, runs, and is removed.

The node talks to the worker over a Unix socket in a bind-mounted run directory: no container network at all. The
artifact store is mounted read-only. Each container is sandboxed: network none, read-only root with a tmpfs,
non-root user, every capability dropped, no-new-privileges, memory/CPU/pids limits; GPUs by device request.
Containers carry the node id in a label, so a node removes what a crash of its previous run left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from ..errors import ConfigError, WorkerUnavailable
from .base import ModelSpec
from .launch import Launcher
from .local import LocalExecutor, LocalExecutorConfig
from .worker_process import WorkerProcess

log = logging.getLogger("carml.exec")

RUN_MOUNT = "/run/carml"
MODELS_MOUNT = "/models"
LABEL_NODE = "org.carml.node"
LABEL_ROLE = "org.carml.role"
LABEL_FRAMEWORK = "org.carml.framework"
LABEL_FRAMEWORK_VERSION = "org.carml.framework.version"
LABEL_DEVICE = "org.carml.device"
WORKER_UID = "10001:10001"


@dataclass(frozen=True)
class DockerConfig:
    url: str | None = None  # the engine; default: $DOCKER_HOST, else the default socket
    image_prefix: str = "carml-worker"  # images are PREFIX:FRAMEWORK-cpu|gpu
    mode: str = "warm"  # warm | cold
    memory_bytes: int = 4 << 30
    cpus: float = 0.0  # 0: no CPU limit
    pids_limit: int = 512
    tmpfs_size: str = "256m"

    def image(self, framework: str, device: str) -> str:
        return f"{self.image_prefix}:{framework}-{'gpu' if device.startswith('cuda') else 'cpu'}"


def _engine_error(exc: Exception, what: str) -> WorkerUnavailable:
    """An aiodocker/aiohttp failure as a message a user can act on."""
    if isinstance(exc, aiodocker.DockerError):
        if exc.status == 404 and "image" in str(exc.message).lower():
            return WorkerUnavailable(f"{what}: the image is missing ({exc.message}); build it: scripts/build-images")
        return WorkerUnavailable(f"{what}: the Docker engine said {exc.status}: {exc.message}")
    return WorkerUnavailable(f"{what}: the Docker engine is not reachable ({exc}); start it with scripts/docker-engine")


def _default_engine_socket() -> bool:
    """Whether the engine's default socket exists (two stat calls: cheap enough for the event loop)."""
    return any(os.path.exists(p) for p in ("/run/docker.sock", "/var/run/docker.sock"))


def host_pid(pid: int, container_id: str, proc: Path = Path("/proc")) -> int | None:
    """``pid`` (the engine's State.Pid of a container) when this node's /proc sees that very container there: the
    engine's pid namespace is not ours when the engine is remote, in a VM (Docker Desktop) or the node is itself in a
    container, and another process could hold that number here; its cgroup names the container when it is ours."""
    if pid <= 0:
        return None
    try:
        cgroup = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    return pid if container_id and container_id in cgroup else None


class ContainerLauncher(Launcher):
    socket_mode = 0o666  # the worker runs as uid 10001 inside; only the first connection is ever accepted

    def __init__(
        self,
        docker: aiodocker.Docker,
        image: str,
        *,
        name: str,
        labels: dict[str, str],
        run_dir: Path,
        store_dir: Path,
        device: str,
        config: DockerConfig,
    ) -> None:
        self.docker, self.image, self.name = docker, image, name
        self.labels, self.run_dir, self.store_dir = labels, run_dir, store_dir
        self.device, self.config = device, config
        self.container: Any = None
        self.started_ms = 0.0
        self.host_pid: int | None = None  # the container's init as this node's /proc sees it (utilisation)

    @property
    def ident(self) -> str | None:
        return self.container.id[:12] if self.container is not None else None

    def container_config(self, socket_path: Path, args: list[str]) -> dict[str, Any]:
        host: dict[str, Any] = {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.config.tmpfs_size}"},
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Memory": self.config.memory_bytes,
            "PidsLimit": self.config.pids_limit,
            "Binds": [f"{self.run_dir}:{RUN_MOUNT}", f"{self.store_dir}:{MODELS_MOUNT}:ro"],
            "Init": True,  # a real PID 1 reaps and forwards signals
        }
        if self.config.cpus > 0:
            host["NanoCpus"] = int(self.config.cpus * 1e9)
        if self.device.startswith("cuda"):
            index = self.device.partition(":")[2] or "0"
            host["DeviceRequests"] = [{"Driver": "nvidia", "DeviceIDs": [index], "Capabilities": [["gpu"]]}]
        return {
            "Image": self.image,
            "Cmd": ["--connect", str(socket_path), *args],
            "User": WORKER_UID,
            "Labels": self.labels,
            "HostConfig": host,
            "Env": ["PYTHONDONTWRITEBYTECODE=1", "OMP_NUM_THREADS=" + str(os.cpu_count() or 1)],
        }

    async def launch(self, socket_path: Path, args: list[str]) -> None:
        t0 = time.perf_counter()
        try:
            self.container = await self.docker.containers.create(
                self.container_config(socket_path, args), name=self.name
            )
            await self.container.start()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            await self._remove()
            raise _engine_error(exc, f"cannot start container from {self.image}") from exc
        self.started_ms = (time.perf_counter() - t0) * 1e3
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError, TypeError):
            info = await self.container.show()
            self.host_pid = host_pid(int(info["State"]["Pid"]), self.container.id)

    async def wait(self) -> int:
        assert self.container is not None
        try:
            result = await self.container.wait()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            return -1  # the engine went away: as far as we can tell, so did the worker
        return int(result.get("StatusCode", -1))

    async def stop(self, timeout: float) -> None:
        if self.container is None:
            return
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.container.wait()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            pass
        await self._remove()

    async def _remove(self) -> None:
        if self.container is None:
            return
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
            await self.container.delete(force=True)


class DockerExecutor(LocalExecutor):
    kind = "docker"

    def __init__(
        self,
        run_dir: Path,
        store_dir: Path,
        node_id: str,
        config: LocalExecutorConfig | None = None,
        docker: DockerConfig | None = None,
        devices: list[str] | None = None,
    ) -> None:
        super().__init__(run_dir, config or LocalExecutorConfig(), devices)
        docker = docker or DockerConfig()
        self.store_dir = store_dir
        self.node_id = node_id
        self.docker_config = docker
        if docker.mode not in ("warm", "cold"):
            raise ConfigError(f"docker mode {docker.mode!r}: use warm or cold")
        self.docker: aiodocker.Docker | None = None
        self.images: dict[tuple[str, str], dict[str, str]] = {}  # (framework, device) -> image, version
        self._frameworks = {}
        self._names = itertools.count(1)
        self.cold_runs = 0

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_NODE: self.node_id, LABEL_ROLE: "worker"}

    async def start(self) -> None:
        await super().start()
        # the worker runs as another user: it must reach the socket through the run dir
        os.chmod(self.run_dir, 0o755)
        url = self.docker_config.url or os.environ.get("DOCKER_HOST")
        if url is None and not _default_engine_socket():
            raise WorkerUnavailable(
                "Docker executor: no engine (no DOCKER_HOST, no /var/run/docker.sock); "
                "start one with scripts/docker-engine"
            )
        try:
            self.docker = aiodocker.Docker(url=url)
        except (ValueError, AssertionError) as exc:  # aiodocker asserts on a host it cannot place
            raise WorkerUnavailable(f"Docker executor: cannot use engine {url!r}: {exc}") from exc
        try:
            await self.docker.version()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError) as exc:
            await self.docker.close()
            self.docker = None
            raise _engine_error(exc, "Docker executor") from exc
        removed = await self.remove_containers()
        if removed:
            log.warning("removed %d container(s) left by an earlier run of this node", removed)
        for device in self.devices():
            for framework in ("onnxruntime", "pytorch"):
                image = self.docker_config.image(framework, device)
                try:
                    info = await self.docker.images.inspect(image)
                except aiodocker.DockerError:
                    continue
                labels = (info.get("Config") or {}).get("Labels") or {}
                version = labels.get(LABEL_FRAMEWORK_VERSION, "")
                self.images[(framework, device)] = {"image": image, "version": version}
                self._frameworks.setdefault(framework, version)
        if not self.images:
            log.warning(
                "no worker image found (%s:*); build them with scripts/build-images", self.docker_config.image_prefix
            )

    async def aclose(self) -> None:
        await super().aclose()
        if self.docker is not None:
            await self.remove_containers()
            await self.docker.close()
            self.docker = None

    async def remove_containers(self) -> int:
        """Remove every container labelled with this node's id; returns how many."""
        assert self.docker is not None
        try:
            found = await self.docker.containers.list(
                all=True, filters={"label": [f"{LABEL_NODE}={self.node_id}", f"{LABEL_ROLE}=worker"]}
            )
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("cannot list containers: %s", exc)
            return 0
        for container in found:
            with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, OSError):
                await container.delete(force=True)
        return len(found)

    def worker_path(self, model: ModelSpec) -> str:
        return f"{MODELS_MOUNT}/sha256/{model.sha256}"

    def _new_worker(self, framework: str, device: str, socket_path: Path) -> WorkerProcess:
        if self.docker is None:
            raise WorkerUnavailable("the Docker executor is not started")
        if (framework, device) not in self.images:
            raise WorkerUnavailable(
                f"no image for {framework} on {device}: build {self.docker_config.image(framework, device)} "
                "with scripts/build-images"
            )
        n = next(self._names)
        launcher = ContainerLauncher(
            self.docker,
            self.images[(framework, device)]["image"],
            name=f"carml-{self.node_id[:12]}-{framework}-{device.replace(':', '')}-{os.getpid()}-{n}",
            labels={**self.labels, LABEL_FRAMEWORK: framework, LABEL_DEVICE: device},
            run_dir=self.run_dir,
            store_dir=self.store_dir,
            device=device,
            config=self.docker_config,
        )
        return WorkerProcess(
            framework,
            device,
            socket_path,
            launcher,
            connect_path=f"{RUN_MOUNT}/{socket_path.name}",
            threads=self.config.threads,
            pool=self.config.pool,
            max_pixels=self.config.max_pixels,
            start_timeout=self.config.start_timeout,
        )

    async def infer(self, model: ModelSpec, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        if self.docker_config.mode == "warm":
            return await super().infer(model, request, timeout=timeout)
        return await self._infer_cold(model, request, timeout=timeout)

    async def _infer_cold(self, model: ModelSpec, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """The seed's way: a container for this one request, removed after."""
        self.cold_runs += 1
        socket_path = self.run_dir / f"cold-{next(self._names)}.sock"
        worker = self._new_worker(model.framework, model.device, socket_path)
        t0 = time.perf_counter()
        t0_unix_ns = time.time_ns()  # where the container's start lies in a trace
        try:
            async with asyncio.timeout(timeout):
                await worker.start()
                started = time.perf_counter()
                load = await worker.request(
                    {"op": "load", "model": model.key, "path": self.worker_path(model), "spec": model.spec},
                    timeout=timeout,
                )
                reply = await worker.request({"op": "infer", "model": model.key, **request}, timeout=timeout)
        except TimeoutError:
            raise WorkerUnavailable(f"cold run of {model.key} did not finish within {timeout:.0f} s") from None
        finally:
            await worker.aclose()
        reply["load_ms"] = float(load.get("load_ms", 0.0))
        reply["cold"] = {
            "container_start_ms": (started - t0) * 1e3,
            "load_ms": reply["load_ms"],
            "started_unix_ns": t0_unix_ns,
        }
        return reply

    def _container_pids(self) -> dict[str, int | None]:
        pids: dict[str, int | None] = {}
        for slot in self._slots.values():
            w = slot.worker
            if w is not None and w.alive and isinstance(w.launcher, ContainerLauncher) and w.ident:
                pids[w.ident] = w.launcher.host_pid
        return pids

    def statistics(self) -> dict[str, Any]:
        # a worker's pid is its container's init on the host, for utilisation; worker_pids() stays empty, as the
        # node's last-resort kill of worker pids must not hit containers (their removal is the engine's)
        stats = super().statistics()
        pids = self._container_pids()
        for worker in stats.get("workers", []):
            if worker.get("pid") is None and worker.get("ident") in pids:
                worker["pid"] = pids[worker["ident"]]
        stats.update(
            mode=self.docker_config.mode,
            cold_runs=self.cold_runs,
            images={f"{f}/{d}": v for (f, d), v in self.images.items()},
        )
        return stats
