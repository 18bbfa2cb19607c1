"""The Node: wires store, catalog, executor and HTTP server; owns their lifecycle through one AsyncExitStack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from .. import __version__
from ..bench.evaluations import Evaluations
from ..bench.manager import BenchmarkManager
from ..dataplane.types import ServingNode
from ..errors import CarmlError, ConfigError, WorkerUnavailable
from ..exec.base import Executor
from ..exec.batching import BatchingExecutor
from ..exec.local import LocalExecutor, LocalExecutorConfig
from ..gossip.config import GossipConfig
from ..gossip.crypto import Keyring
from ..gossip.mdns import local_ipv4_addresses
from ..gossip.messages import State
from ..store.artifacts import ArtifactStore
from ..store.db import FILENAME as DB_FILENAME
from ..store.db import Database
from ..trace.setup import Tracing
from . import hardware
from .card import card_digest
from .catalog import Catalog, ServedModel, build_catalog
from .config import NodeConfig
from .forward import Forwarder
from .inference import InferenceService
from .mesh import Mesh
from .publish import Publisher
from .rejoin import JoinPolicy
from .replication import Replicator
from .routing import RoutedInference

log = logging.getLogger("carml.node")
FORCED_CLOSE_S = 1.0  # after a shutdown ran out of time and the workers were killed: closing what is left of them
ADDRESS_TTL_S = 30.0  # how long the advertised address found from the interfaces is reused


def _node_id(data_dir: Path) -> str:
    """Stable across restarts: a node keeps its identity in its data dir."""
    path = data_dir / "node-id"
    try:
        text = path.read_text().strip()
        if text:
            return text
    except OSError:
        pass
    node_id = uuid.uuid4().hex[:16]
    path.write_text(node_id + "\n")
    return node_id


class Node:
    """``async with Node(config) as node:`` starts everything; leaving the block stops it within the timeout."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.id = ""
        self.name = config.name
        self.catalog = Catalog([], [])
        self.executor: Executor | None = None
        self.inference: InferenceService = None  # type: ignore[assignment]  # set in __aenter__
        self.hardware: dict[str, Any] = {}
        self.port = config.port
        self.ready = False
        self.ready_event = asyncio.Event()  # set once preloading is over (loaded or failed)
        self.started_monotonic = time.monotonic()
        self.started_at = time.time()
        self.load_errors: dict[str, str] = {}
        self.mesh: Mesh | None = None
        self.routed: RoutedInference = None  # type: ignore[assignment]  # set in __aenter__
        self.store: ArtifactStore = None  # type: ignore[assignment]  # set in __aenter__
        self.publisher: Publisher = None  # type: ignore[assignment]  # set in __aenter__
        self.replicator: Replicator = None  # type: ignore[assignment]  # set in __aenter__
        self.tracing: Tracing = None  # type: ignore[assignment]  # set in __aenter__
        self.db: Database = None  # type: ignore[assignment]  # set in __aenter__: runs, evaluations, feedback
        self.evaluations: Evaluations = None  # type: ignore[assignment]  # set in __aenter__
        self.benchmarks: BenchmarkManager = None  # type: ignore[assignment]  # set in __aenter__
        self._advertised: tuple[float, str] | None = None  # (when, address): see _advertise_host
        self._stack = contextlib.AsyncExitStack()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        from ..web.app import make_app
        from ..web.auth import check_api_token

        config = self.config
        check_api_token(config.api_token, protect_all=config.protect_all)
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create data dir {config.data_dir}: {exc.strerror}") from exc
        self.id = _node_id(config.data_dir)
        self.store = store = ArtifactStore(config.data_dir / "artifacts")
        store.clear_tmp()  # what a killed upload or pull left behind
        self.db = await self._stack.enter_async_context(Database(config.data_dir / DB_FILENAME))
        published = config.data_dir / "published"
        self.hardware = await asyncio.to_thread(hardware.probe)
        # Unix socket paths are limited to 108 bytes, so the run dir lives in /tmp rather than the data dir.
        run_dir = Path(tempfile.mkdtemp(prefix="carml-run-"))
        self._stack.callback(shutil.rmtree, run_dir, True)
        devices = list(config.devices) or (["cpu"] + [f"cuda:{g['index']}" for g in self.hardware["gpus"]])
        self.executor = executor = await self._open_executor(run_dir, store.root, devices)
        if config.batching not in ("auto", "off"):
            raise ConfigError(f"batching {config.batching!r}: use auto or off")
        if config.batching != "off":  # dynamic batching per (model, framework, device): carml_mesh/exec/batching.py
            self.executor = executor = BatchingExecutor(
                executor, pool=config.worker_pool, max_queue_delay_ms=config.max_queue_delay_ms
            )
            self._stack.push_async_callback(executor.aclose)  # before the workers stop: queued requests get a 503
        self.catalog = await build_catalog(
            list(config.manifests_dirs), store, executor.frameworks(), published=published
        )
        for problem in self.catalog.problems:
            log.warning("manifest problem: %s", problem)
        self.inference = InferenceService(
            self.catalog,
            executor,
            node=ServingNode(self.id, self.name),
            max_batch=config.max_batch,
            timeout=config.request_timeout,
        )
        self.publisher = Publisher(
            catalog=self.catalog, store=store, executor=executor, folder=published, on_change=self._catalog_changed
        )
        self.replicator = await self._stack.enter_async_context(
            Replicator(
                node_id=self.id,
                store=store,
                publisher=self.publisher,
                api_token=config.api_token,
                max_artifact_bytes=config.max_artifact_bytes,
                timeout=config.replication_timeout,
            )
        )
        self._stack.push_async_callback(self._cancel_tasks)
        app = make_app(self)
        from ..web.app import TRACE_STORE

        self.tracing = Tracing(
            node_id=self.id,
            host=socket.gethostname(),
            store=app[TRACE_STORE],
            zipkin_url=config.zipkin_url,
            level=config.trace_level,
        )
        self.inference.tracing = self.tracing
        self._stack.push_async_callback(self.tracing.aclose)  # after the server stopped: its last spans flushed
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        log.info(
            "node %s (%s) serving %d model(s) on http://%s:%d/",
            self.name,
            self.id,
            len(self.catalog),
            config.host,
            self.port,
        )
        if not config.api_token:
            log.info("no API token (--api-token): anyone who reaches this node may publish and withdraw models")
        if config.gossip:
            self.mesh = await self._stack.enter_async_context(self._make_mesh())
        forwarder = await self._stack.enter_async_context(Forwarder(self.id, api_token=config.api_token))
        self.routed = RoutedInference(
            self.id, self.inference, self.mesh, forwarder, warm=self._warm, load=self.in_flight
        )
        self.routed.tracing = self.tracing
        # accuracy evaluations: entered last, so their tasks are cancelled before the inference they use stops
        self.evaluations = await self._stack.enter_async_context(Evaluations(self))
        # benchmark runs: likewise closed (cancelled, partial results stored) before what they measure stops
        self.benchmarks = await self._stack.enter_async_context(BenchmarkManager(self))
        if config.preload:
            self._spawn(self._preload())
        else:
            self._set_ready()

    async def _open_executor(self, run_dir: Path, store_dir: Path, devices: list[str]) -> Executor:
        """local, docker, or auto: Docker when an engine answers and worker images exist, else local workers."""
        config = self.config
        local = LocalExecutorConfig(
            threads=config.worker_threads, pool=config.worker_pool, max_pixels=config.max_image_pixels
        )
        if config.executor not in ("auto", "local", "docker"):
            raise ConfigError(f"executor {config.executor!r}: use auto, local or docker")
        if config.executor in ("auto", "docker"):
            from ..exec.docker import DockerConfig, DockerExecutor

            docker = DockerExecutor(
                run_dir,
                store_dir,
                self.id,
                local,
                DockerConfig(
                    url=config.docker_url,
                    mode=config.docker_mode,
                    memory_bytes=config.docker_memory_bytes,
                    cpus=config.docker_cpus,
                ),
                devices=devices,
            )
            try:
                await docker.start()
            except WorkerUnavailable as exc:
                if config.executor == "docker":
                    raise ConfigError(str(exc)) from exc
                log.info("executor auto: %s; running workers as local processes", exc)
            else:
                if docker.images or config.executor == "docker":
                    self._stack.push_async_callback(docker.aclose)
                    log.info(
                        "executor: docker (%s mode), images: %s",
                        config.docker_mode,
                        ", ".join(v["image"] for v in docker.images.values()) or "none",
                    )
                    return docker
                await docker.aclose()
                log.info("executor auto: the Docker engine has no worker images; running local workers")
        return await self._stack.enter_async_context(LocalExecutor(run_dir, local, devices=devices))

    async def _preload(self) -> None:
        for model in self.catalog:
            await self._load_model(model)
        self._set_ready()

    async def _load_model(self, model: ServedModel) -> None:
        assert self.executor is not None
        for framework in model.available_frameworks():
            spec = self.inference.select(model, framework, None)
            try:
                ms = await self.executor.load(spec)
                log.info("loaded %s in %.0f ms", spec.key, ms)
            except CarmlError as exc:
                self.load_errors[spec.key] = str(exc)
                log.warning("could not load %s: %s", spec.key, exc)
            if self.catalog.find(model.name, model.version) is not model:  # withdrawn or replaced meanwhile
                with contextlib.suppress(CarmlError):
                    await self.executor.unload(spec)
                return

    def _catalog_changed(self, model: ServedModel | None) -> None:
        """A model was published or withdrawn: advertise the new card now, and load the new model."""
        if self.mesh is not None:
            self.mesh.refresh_card()
        if model is not None and self.config.preload:
            self._spawn(self._load_model(model))

    def _set_ready(self) -> None:
        self.ready = True
        self.ready_event.set()

    async def wait_ready(self) -> None:
        await self.ready_event.wait()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop serving, stop workers; bounded by ``shutdown_timeout``. Safe to call twice."""
        try:
            async with asyncio.timeout(self.config.shutdown_timeout):
                await self._stack.aclose()
        except TimeoutError:
            log.error("shutdown took longer than %.1f s; killing what is left", self.config.shutdown_timeout)
            if self.executor is not None:
                for pid in self.executor.worker_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                # The timeout may have cut the executor's own close short: closing again (safe twice) is quick now
                # that its workers are dead, and releases their sockets and reader tasks.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(FORCED_CLOSE_S):
                        await self.executor.aclose()

    def _make_mesh(self) -> Mesh:
        config = self.config
        advertise = config.advertise or self._advertise_host()
        overrides = dict(config.gossip_overrides)
        gossip_config = replace(
            GossipConfig(
                name=self.id, addr=(advertise, config.gossip_port), cluster=config.cluster, bind_host=config.host
            ),
            **_typed_overrides(overrides),
        )
        try:
            keyring = Keyring.from_text(config.cluster_key) if config.cluster_key else None
        except CarmlError as exc:
            raise ConfigError(f"cluster key: {exc}") from exc
        return Mesh(
            gossip_config,
            http_port=self.port,
            card=self.card,
            keyring=keyring,
            seeds=config.join,
            mdns=config.mdns,
            load=self.in_flight,
            api_token=config.api_token,
            join_policy=JoinPolicy(config.join_retry_interval, config.join_retry_max_interval, config.join_retry_max),
        )

    def _advertise_host(self) -> str:
        host = self.config.host
        if host not in ("0.0.0.0", "", "::"):
            return host
        # Listing the interfaces is a netlink round trip and the card is rebuilt every second: look again only
        # every ADDRESS_TTL_S, which is soon enough for a DHCP renewal or a cable moved.
        now = time.monotonic()
        cached = self._advertised
        if cached is None or now - cached[0] > ADDRESS_TTL_S:
            addresses = local_ipv4_addresses()
            cached = self._advertised = (now, addresses[0] if addresses else "127.0.0.1")
        return cached[1]

    def card(self) -> tuple[str, dict[str, Any]]:
        """The stable part of what this node advertises, and its digest (load is not in it: it changes always)."""
        assert self.executor is not None
        card = {
            "id": self.id,
            "name": self.name,
            "version": __version__,
            "url": self.public_url(),
            "hardware": self.hardware,
            "executor": self.executor.kind,
            "images": self.executor.statistics().get("images", {}),
            "frameworks": [{"name": n, "version": v} for n, v in sorted(self.executor.frameworks().items())],
            "devices": self.executor.devices(),
            "models": [
                {"name": m.name, "version": m.version, "framework": f, "sha256": d.sha256, "available": d.available}
                for m in self.catalog
                for f, d in m.deployments.items()
            ],
            "warm": self._warm(),
        }
        return card_digest(card), card

    def in_flight(self) -> int:
        """Requests running on this node's workers now."""
        assert self.executor is not None
        return self.executor.in_flight()

    def _warm(self) -> list[str]:
        return sorted(self._loaded_keys())

    def _loaded_keys(self) -> list[str]:
        assert self.executor is not None
        keys = []
        for m in self.catalog:
            for f in m.available_frameworks():
                for device in self.executor.devices():
                    spec = m.model_spec(f, device)
                    if self.executor.is_loaded(spec):
                        keys.append(f"{m.name}@{m.version}/{f}/{device}")
        return keys

    def peer_urls(self) -> list[str]:
        """The HTTP base URLs of the other alive members."""
        if self.mesh is None or self.mesh.gossip is None:
            return []
        urls = []
        for m in self.mesh.gossip.members():
            port = m.meta.get("http")
            if m.name != self.id and m.state == State.ALIVE and isinstance(port, int):
                urls.append(f"http://{m.addr[0]}:{port}")
        return urls

    def public_url(self) -> str:
        host = self.config.advertise or (self._advertise_host() if self.config.gossip else None)
        return f"http://{host}:{self.port}" if host else self.url()

    # --- views for the API -------------------------------------------------------------------------------------

    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return f"http://{host}:{self.port}"

    def info(self) -> dict[str, Any]:
        assert self.executor is not None
        digest, card = self.card()
        return {
            "id": self.id,
            "name": self.name,
            "version": __version__,
            "url": self.url(),
            "pid": os.getpid(),
            "started_at": self.started_at,
            "cluster": self.config.cluster if self.mesh else None,
            "card_version": self.mesh.card_version if self.mesh else None,
            "card_digest": digest,
            "card": card,  # what peers keep of this node: the stable part, digested
            "warm": self._warm(),
            "load": {"in_flight": self.in_flight()},
            "ready": self.ready,
            "hardware": self.hardware,
            "executor": self.executor.kind,
            "images": self.executor.statistics().get("images", {}),
            "frameworks": [{"name": n, "version": v} for n, v in sorted(self.executor.frameworks().items())],
            "devices": self.executor.devices(),
            "limits": {
                "max_body_bytes": self.config.max_body_bytes,
                "max_image_pixels": self.config.max_image_pixels,
                "max_batch": self.config.max_batch,
                "request_timeout_s": self.config.request_timeout,
                "max_artifact_bytes": self.config.max_artifact_bytes,
            },
            "auth": {
                "token": self.config.api_token is not None,
                "protects": "everything" if self.config.protect_all else "changes" if self.config.api_token else None,
            },
            "models": [self.describe_model(m, brief=True) for m in self.catalog],
            "problems": [str(p) for p in self.catalog.problems],
            "load_errors": self.load_errors,
            "workers": self.executor.statistics().get("workers", []),
            "batching": self.executor.statistics().get("batching", {}),  # per deployment, when batching is on
            "routing": self.routed.statistics() if self.routed is not None else None,
        }

    def describe_model(self, model: ServedModel, *, brief: bool = False) -> dict[str, Any]:
        assert self.executor is not None
        m = model.manifest
        frameworks = []
        for entry in m.frameworks:
            d = model.deployments[entry.name]
            loaded = []
            if d.available:
                for device in self.executor.devices():
                    if device.split(":")[0] in m.devices and self.executor.is_loaded(
                        model.model_spec(entry.name, device)
                    ):
                        loaded.append(device)
            frameworks.append(
                {
                    "name": entry.name,
                    "constraint": str(entry.version),
                    "sha256": d.sha256,
                    "available": d.available,
                    "problem": d.problem,
                    "loaded": loaded,
                }
            )
        described: dict[str, Any] = {
            "name": m.name,
            "version": m.version,
            "published": model.published,
            "frameworks": frameworks,
        }
        if brief:
            return described
        inp = m.inputs[0]
        described.update(
            versions=self.catalog.versions(m.name),
            description=m.description,
            license=m.license,
            references=list(m.references),
            task=m.task,
            attributes=dict(m.attributes),
            devices=[d for d in self.executor.devices() if d.split(":")[0] in m.devices],
            inputs=[
                {"name": i.name, "type": i.type, "element_type": i.element_type, "dimensions": list(i.dimensions)}
                for i in m.inputs
            ],
            input_type=inp.type,
            output={"name": m.output.name, "type": m.output.type, "classes": len(model.labels)},
        )
        return described

    def manifest_document(self, model: ServedModel) -> dict[str, Any]:
        """The manifest as validated (not the raw file), for the model page."""
        m = model.manifest
        return {
            "inputs": [i.to_wire() for i in m.inputs],
            "output": {
                "name": m.output.name,
                "type": m.output.type,
                "probabilities": m.output.probabilities,
                "labels": len(model.labels),
            },
            "frameworks": [
                {"name": f.name, "version": str(f.version), "artifact": {"sha256": model.deployments[f.name].sha256}}
                for f in m.frameworks
            ],
            "batching": {
                "max_batch_size": m.batching.max_batch_size,
                "max_queue_delay_ms": m.batching.max_queue_delay_ms,
            },
        }


def _typed_overrides(overrides: dict[str, float]) -> dict[str, Any]:
    """--gossip-tuning values as GossipConfig's fields want them: its int fields as ints (the CLI checked names)."""
    return {k: (int(v) if isinstance(getattr(GossipConfig, k, None), int) else v) for k, v in overrides.items()}
