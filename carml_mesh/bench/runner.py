"""One benchmark run: every (target, batch size, concurrency) of a configuration, through the node's own HTTP API.

Queries go to ``POST /api/predict`` of the node that runs the benchmark, in msgpack, with ``node`` pinning a target
to a member, so the client-side figures include the HTTP path and the hops a user's request takes. Each answer's
``timings_ms`` splits the end-to-end latency (see :func:`breakdown`).

Scenarios (MLPerf LoadGen's, run closed- or open-loop as LoadGen does):

- single-stream: one query at a time, the next when the last one answered; latency percentiles;
- server: queries arrive as a Poisson process at ``qps`` (seeded: reproducible); at most ``concurrency`` are in
  flight, a query that arrives beyond that waits at the client and its latency counts from its arrival, so an
  overload shows as latency, as in LoadGen. With ``p99_bound_ms`` the run searches the highest QPS whose p99 stays
  under the bound (:meth:`BenchmarkRun._search`);
- offline: ``concurrency`` queries kept in flight until the minimums are met; throughput.

Warm-up queries run first for each configuration and are left out of every figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import msgpack
import numpy as np

from .. import __version__
from ..gossip.messages import State
from ..headers import auth_headers
from . import stats
from .config import BenchConfig, Target
from .store import iso
from .utilisation import RemoteSampler, Sampler, matching, worker_processes

if TYPE_CHECKING:
    from ..node.node import Node
    from .store import BenchStore

log = logging.getLogger("carml.bench")

MSGPACK = "application/msgpack"
SEARCH_STEPS = 6  # bisection steps of the p99-bound search after its first try at the upper bound
SEARCH_PRECISION = 0.05  # stop once the interval is within 5 % of the best passing QPS
PROBE_S = 1.0  # the search's offline probe of the capacity, when no qps is given as the upper bound
MAX_ERROR_LEN = 500
PEER_TIMEOUT = aiohttp.ClientTimeout(total=5.0)  # descriptions, samples, cards: small answers
UTILISATION_PATH = "/api/node/utilisation"
BREAKDOWN_KEYS = ("network", "node", "queue", "preprocess", "compute", "postprocess")


class QueryFailed(Exception):
    """One query answered with an error status or not at all."""


@dataclass(slots=True)
class Query:
    """One measured query. ``latency_ms`` counts from the query's arrival (issue time in closed loops)."""

    index: int
    issued_ms: float
    latency_ms: float
    ok: bool
    error: str | None = None
    parts: dict[str, float] = field(default_factory=dict)  # breakdown, ms
    server_total_ms: float | None = None
    served_by: dict[str, Any] | None = None  # the answer's model, version, framework, device, node


def breakdown(answer: dict[str, Any], client_ms: float, wait_ms: float = 0.0) -> tuple[dict[str, float], float]:
    """The parts of one query's end-to-end time, and the server's total. Pure.

    network = what the client saw of the HTTP exchange less the server's total (connection, transfer, hops to a
    peer); queue = the client-side wait for a free slot + the worker's queue + a dynamic-batching wait; preprocess =
    decode + preprocess of every input; compute and postprocess as the worker measured them; node = the server's
    total less the worker's stages (routing, (de)serialisation, the executor's I/O, a model load).
    """
    t = answer.get("timings_ms") or {}
    results = answer.get("results") or [{}]
    first = results[0].get("timings_ms") or {}
    server_total = float(t.get("total", first.get("total", 0.0)))
    prep = sum(float((r.get("timings_ms") or {}).get(k, 0.0)) for r in results for k in ("decode", "preprocess"))
    batching = answer.get("batching")
    wait = first.get("batch_wait", t.get("batch_wait"))
    if wait is None and isinstance(batching, dict):
        wait = batching.get("wait_ms", batching.get("batch_wait_ms"))
    queue = float(first.get("queue", 0.0)) + float(wait or 0.0)
    compute = float(first.get("compute", 0.0))
    post = float(first.get("postprocess", 0.0))
    node = max(0.0, server_total - queue - prep - compute - post)
    network = max(0.0, client_ms - server_total)
    parts = {
        "network": network,
        "node": node,
        "queue": queue + wait_ms,
        "preprocess": prep,
        "compute": compute,
        "postprocess": post,
    }
    return parts, server_total


def summarise(queries: list[Query], duration_s: float, batch_size: int) -> dict[str, Any]:
    """The figures of one configuration from its measured queries. Pure."""
    ok = [q for q in queries if q.ok]
    latencies = [q.latency_ms for q in ok]
    parts = {k: stats.mean([q.parts[k] for q in ok]) for k in BREAKDOWN_KEYS}
    parts["total"] = stats.mean(latencies)
    return {
        "queries": len(queries),
        "errors": len(queries) - len(ok),
        "duration_s": round(duration_s, 4),
        "throughput_qps": stats.throughput(len(ok), duration_s),
        "throughput_ips": stats.throughput(len(ok) * batch_size, duration_s),
        "latency_ms": stats.latency_summary(latencies),
        "breakdown_ms": parts,
        "cdf": [[round(x, 4), round(f, 6)] for x, f in stats.cdf(latencies)],
    }


@dataclass
class Progress:
    done: int = 0  # measured queries answered, all configurations together
    total: int = 0  # the least the run will issue (grows when a configuration runs past its minimum)
    phase: str = "starting"
    points_done: int = 0
    points: int = 1
    point_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        fraction = min(1.0, (self.points_done + min(1.0, self.point_fraction)) / max(1, self.points))
        total = max(self.total, self.done)
        return {"done": self.done, "total": total, "fraction": round(fraction, 4), "phase": self.phase}


@dataclass
class _Workload:
    """A target prepared for one batch size: the request body and what the input was."""

    body: bytes
    input: str


class BenchmarkRun:
    """Runs ``config`` on ``node``; ``await run.run()`` ends with status done, failed or cancelled. Never raises
    for a failing query or target: those are counted in the results."""

    def __init__(self, run_id: str, config: BenchConfig, node: Node, store: BenchStore | None = None) -> None:
        self.id = run_id
        self.config = config
        self.node = node
        self.store = store
        self.status = "running"
        self.error: str | None = None
        self.created_at = time.time()
        self.finished_at: float | None = None
        self.progress = Progress(points=len(config.points()))
        self.results: list[dict[str, Any]] = []
        self.environment: dict[str, Any] = {
            "node": {"id": node.id, "name": node.name, "url": node.public_url()},
            "cards": {},
            "carml_mesh": __version__,
        }
        self._cancelled = False
        self._point_task: asyncio.Task[Any] | None = None
        self._first_error: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._served: set[str] = set()  # ids of the nodes that answered
        self._served_by: dict[tuple[str, ...], dict[str, Any]] = {}

    # --- public ----------------------------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop at once: the configuration in progress is cut where it is and kept; the rest is not run."""
        self._cancelled = True
        if self._point_task is not None:
            self._point_task.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.config.name,
            "scenario": self.config.scenario,
            "status": self.status,
            "error": self.error,
            "progress": self.progress.to_dict(),
            "config": self.config.to_dict(),
            "environment": self.environment,
            "node": {"id": self.node.id, "name": self.node.name},
            "created_at": iso(self.created_at),
            "finished_at": iso(self.finished_at),
            "results": self.results,
        }

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=max(self.config.concurrency) + 4, keepalive_timeout=60)
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK, **auth_headers(self.node.config.api_token)}
        timeout = aiohttp.ClientTimeout(total=self.node.config.request_timeout + 5)
        try:
            async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
                self._session = session
                self.progress.total = self._planned_total()
                await self._save()
                for n, (_, target, batch, concurrency) in enumerate(self.config.points()):
                    if self._cancelled:
                        break
                    self.progress.points_done = n
                    self.progress.point_fraction = 0.0
                    await self._point(n, target, batch, concurrency)
                self.progress.points_done = self.progress.points if not self._cancelled else self.progress.points_done
                await self._environment(session)
            if self._cancelled:
                self.status = "cancelled"
            elif not any(r.get("queries", 0) - r.get("errors", 0) > 0 for r in self.results):
                self.status = "failed"
                self.error = self._first_error or "no query was answered"
            else:
                self.status = "done"
        except Exception as exc:
            log.exception("benchmark %s failed", self.id)
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LEN]
        finally:
            self._session = None
            if self.status == "running":  # the task itself was cancelled (a shutdown past its grace period)
                self.status = "cancelled"
            self.finished_at = time.time()
            self.progress.phase = self.status
            await asyncio.shield(self._save())

    # --- one configuration -----------------------------------------------------------------------------------------

    async def _point(self, n: int, target: Target, batch: int, concurrency: int) -> None:
        """Warm up, then the scenario; a result is appended even when every query failed or the run was cancelled."""
        config = self.config
        label = f"{target.label()} batch {batch} x{concurrency}"
        result: dict[str, Any] = {
            "target": {
                "model": target.model,
                "version": target.version,
                "framework": target.framework,
                "device": target.device,
                "node": target.node,
            },
            "batch_size": batch,
            "concurrency": concurrency,
            "qps": config.qps if config.scenario == "server" else None,
        }
        try:
            workload = await self._workload(target, batch)
        except QueryFailed as exc:
            self._note_error(str(exc))
            result.update(summarise([], 0.0, batch), errors=1, queries=1, error=str(exc), input=None)
            result["utilisation"] = {"cpu_percent": None, "rss_mb": None, "gpu_percent": None}
            self.results.append(result)
            await self._save()
            return
        result["input"] = workload.input
        self.progress.phase = f"warm-up {label}"
        served = await self._cancellable(self._warmup(workload, concurrency))
        if served is not None:
            result["target"] = served
        async with self._sampler(result["target"]) as sampler:
            if config.scenario == "server" and config.p99_bound_ms is not None:
                queries, duration, search = await self._search(n, workload, batch, concurrency, label)
                result["search"] = search
                tried = [s["qps"] for s in search["steps"]]
                result["qps"] = search["best_qps"] if search["met"] else (tried[-1] if tried else None)
            else:
                self.progress.phase = f"{config.scenario} {label}"
                queries, duration = await self._measure(n, workload, concurrency, config.qps)
        result.update(summarise(queries, duration, batch))
        result["cut_short"] = config.rule.cut_short(len(queries), duration) or self._cancelled
        result["utilisation"] = sampler.summary()
        for q in queries:
            if q.served_by is not None:
                result["target"] = q.served_by
                break
        self.results.append(result)
        await self._store_queries(n, result, queries)
        await self._save()

    async def _measure(
        self, n: int, workload: _Workload, concurrency: int, qps: float | None, *, count: bool = True
    ) -> tuple[list[Query], float]:
        """The scenario's queries; the measured ones and the measured duration (partial when cancelled)."""
        queries: list[Query] = []
        started = time.perf_counter()
        rule = self.config.rule

        def record(q: Query) -> None:
            queries.append(q)
            if count:
                self.progress.done += 1
                self.progress.point_fraction = rule.fraction(len(queries), time.perf_counter() - started)

        if self.config.scenario == "single-stream":
            coro = self._closed_loop(workload, 1, rule, started, record)
        elif self.config.scenario == "offline":
            coro = self._closed_loop(workload, concurrency, rule, started, record)
        else:
            assert qps is not None
            coro = self._open_loop(workload, concurrency, qps, rule, started, record)
        await self._cancellable(coro)
        end = max((q.issued_ms + q.latency_ms for q in queries), default=0.0) / 1e3
        return sorted(queries, key=lambda q: q.index), end

    async def _closed_loop(
        self,
        workload: _Workload,
        concurrency: int,
        rule: stats.StopRule,
        started: float,
        record: Callable[[Query], None],
    ) -> None:
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while not rule.done(issued, time.perf_counter() - started):
                index = issued
                issued += 1
                record(await self._query(workload, index, started, time.perf_counter()))

        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())

    async def _open_loop(
        self,
        workload: _Workload,
        concurrency: int,
        qps: float,
        rule: stats.StopRule,
        started: float,
        record: Callable[[Query], None],
    ) -> None:
        slots = asyncio.Semaphore(concurrency)

        async def one(index: int, arrival: float) -> None:
            async with slots:
                record(await self._query(workload, index, started, arrival))

        async with asyncio.TaskGroup() as tg:
            # lazily: the schedule may be long, and its arrivals are only needed as they come
            for index, offset in enumerate(stats.server_schedule(qps, self.config.seed, rule)):
                delay = started + offset - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tg.create_task(one(index, started + offset))

    async def _search(
        self, n: int, workload: _Workload, batch: int, concurrency: int, label: str
    ) -> tuple[list[Query], float, dict[str, Any]]:
        """The highest QPS whose p99 ≤ the bound: a try at the upper bound (``qps``, or the capacity an offline
        probe measures), then bisection between the best passing and the lowest failing QPS, each step a full
        server run (its minimums apply), at most SEARCH_STEPS steps or until within SEARCH_PRECISION."""
        bound = self.config.p99_bound_ms
        assert bound is not None
        hi = self.config.qps
        if hi is None:
            self.progress.phase = f"server search {label}: probing capacity"
            probe_rule = stats.StopRule(8, PROBE_S, max(PROBE_S * 5, 10.0))
            queries: list[Query] = []
            t0 = time.perf_counter()
            await self._cancellable(self._closed_loop(workload, concurrency, probe_rule, t0, queries.append))
            ok = sum(1 for q in queries if q.ok)
            hi = max(1.0, stats.throughput(ok, time.perf_counter() - t0))
        steps: list[dict[str, Any]] = []
        best: tuple[float, list[Query], float] | None = None
        last: tuple[list[Query], float] = ([], 0.0)
        lo = 0.0
        qps = hi
        for step in range(SEARCH_STEPS + 1):
            if self._cancelled:
                break
            self.progress.phase = f"server search {label}: step {step + 1}, {qps:.1f} qps"
            self.progress.point_fraction = step / (SEARCH_STEPS + 1)
            queries, duration = await self._measure(n, workload, concurrency, qps, count=False)
            self.progress.done += len(queries)
            latencies = [q.latency_ms for q in queries if q.ok]
            p99 = stats.percentile(latencies, 99) if latencies else None
            if self._cancelled:  # a step cut short says nothing about its QPS: never the best one
                steps.append({"qps": round(qps, 3), "p99_ms": p99, "ok": None, "queries": len(queries)})
                last = (queries, duration)
                break
            ok = p99 is not None and p99 <= bound and len(latencies) == len(queries)
            steps.append({"qps": round(qps, 3), "p99_ms": p99, "ok": ok, "queries": len(queries)})
            last = (queries, duration)
            if ok:
                if best is None or qps > best[0]:
                    best = (qps, queries, duration)
                lo = qps
            else:
                hi = qps
            if step == 0 and ok:
                break  # the upper bound itself meets the bound
            if best is not None and (hi - lo) <= SEARCH_PRECISION * best[0]:
                break
            qps = (lo + hi) / 2
            if qps < 0.01:
                break
        search = {
            "p99_bound_ms": bound,
            "best_qps": round(best[0], 3) if best else None,
            "met": best is not None,
            "steps": steps,
        }
        if best is not None:
            return best[1], best[2], search
        return last[0], last[1], search

    # --- queries ---------------------------------------------------------------------------------------------------

    async def _query(self, workload: _Workload, index: int, started: float, arrival: float) -> Query:
        """One POST /api/predict; latency from ``arrival`` (a server query may have waited for a slot)."""
        assert self._session is not None
        sent = time.perf_counter()
        try:
            answer = await self._post(workload.body)
        except QueryFailed as exc:
            done = time.perf_counter()
            self._note_error(str(exc))
            return Query(index, (arrival - started) * 1e3, (done - arrival) * 1e3, False, str(exc)[:MAX_ERROR_LEN])
        done = time.perf_counter()
        parts, server_total = breakdown(answer, (done - sent) * 1e3, (sent - arrival) * 1e3)
        node = answer.get("node") or {}
        self._served.add(str(node.get("id", "")))
        served = {
            "model": answer.get("model"),
            "version": answer.get("version"),
            "framework": answer.get("framework"),
            "device": answer.get("device"),
            "node": node.get("name") or node.get("id"),
            "node_id": node.get("id"),
        }
        # one dict per distinct server, not per query: a long run holds many queries
        served = self._served_by.setdefault(tuple(map(str, served.values())), served)
        return Query(index, (arrival - started) * 1e3, (done - arrival) * 1e3, True, None, parts, server_total, served)

    async def _post(self, body: bytes) -> dict[str, Any]:
        assert self._session is not None
        try:
            async with self._session.post(f"{self.node.url()}/api/predict", data=body) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise QueryFailed(f"the node did not answer: {str(exc) or type(exc).__name__}") from None
        try:
            answer = msgpack.unpackb(raw, raw=False)
        except Exception:
            raise QueryFailed(f"answer {status} is not msgpack: {raw[:100]!r}") from None
        if status != 200 or not isinstance(answer, dict):
            message = answer.get("error") if isinstance(answer, dict) else answer
            raise QueryFailed(f"{status}: {message}")
        return answer

    async def _warmup(self, workload: _Workload, concurrency: int) -> dict[str, Any] | None:
        """Warm-up queries (not measured); what served them, from the first answer."""
        count = self.config.warmup_queries
        served: dict[str, Any] | None = None
        if count == 0:
            return None
        t0 = time.perf_counter()
        next_index = 0

        async def worker() -> None:
            nonlocal next_index, served
            while next_index < count:
                next_index += 1
                q = await self._query(workload, -1, t0, time.perf_counter())
                if q.ok and served is None:
                    served = q.served_by

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(concurrency, count)):
                tg.create_task(worker())
        return served

    async def _cancellable(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` as the point task, which cancel() cancels; a cancel of the run itself still propagates."""
        if self._cancelled:
            if asyncio.iscoroutine(coro):
                coro.close()
            return None
        self._point_task = task = asyncio.ensure_future(coro)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not self._cancelled or (current is not None and current.cancelling()):
                raise
            return None
        finally:
            self._point_task = None

    def _note_error(self, message: str) -> None:
        if self._first_error is None:
            self._first_error = message[:MAX_ERROR_LEN]

    # --- inputs ----------------------------------------------------------------------------------------------------

    async def _workload(self, target: Target, batch: int) -> _Workload:
        """The msgpack body of one query: ``batch`` sample images of the model, or a random tensor batch."""
        described = await self._describe(target)
        inputs = described.get("inputs") or []
        items: list[dict[str, Any]] = []
        kind = "random"
        if self.config.input == "sample" and described.get("input_type") == "image":
            images = await self._samples(target.model)
            if images:
                kind = "sample"
                items = [{"image": images[i % len(images)]} for i in range(batch)]
        if not items:
            rng = np.random.default_rng(self.config.seed)
            for _ in range(batch):
                tensors = {}
                for spec in inputs:
                    shape = [d if d > 0 else 1 for d in spec.get("dimensions", [])]
                    dtype = np.dtype(spec.get("element_type", "float32"))
                    if dtype.kind == "f":
                        data = rng.random(shape).astype(dtype)
                    elif dtype.kind == "b":
                        data = rng.integers(0, 2, shape).astype(dtype)
                    else:
                        data = rng.integers(0, 10, shape).astype(dtype)
                    tensors[spec["name"]] = {"dtype": dtype.name, "shape": list(data.shape), "data": data.tobytes()}
                items.append({"tensors": tensors})
            if not items[0]["tensors"]:
                raise QueryFailed(f"model {target.model}: its manifest gives no input to make a random tensor for")
        doc: dict[str, Any] = {"model": target.model, "top_k": 1, "inputs": items}
        for key in ("version", "framework", "device", "node"):
            if getattr(target, key):
                doc[key] = getattr(target, key)
        return _Workload(msgpack.packb(doc, use_bin_type=True), kind)

    async def _describe(self, target: Target) -> dict[str, Any]:
        """The model's description (inputs): from this node, else from a member that serves it."""
        query = f"?version={target.version}" if target.version else ""
        last = "no member describes it"
        for base in [self.node.url(), *self.node.peer_urls()]:
            try:
                return await self._get_json(f"{base}/api/models/{target.model}{query}")
            except QueryFailed as exc:
                last = str(exc)
        raise QueryFailed(f"model {target.model}: {last}")

    async def _samples(self, model: str) -> list[bytes]:
        base = self.node.url()
        try:
            listing = await self._get_json(f"{base}/api/samples")
        except QueryFailed:
            return []
        images = []
        for item in listing.get("samples", []):
            if model in item.get("models", []):
                assert self._session is not None
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self._session.get(f"{base}{item['url']}") as resp:
                        if resp.status == 200:
                            images.append(await resp.read())
        return images

    async def _get_json(self, url: str) -> dict[str, Any]:
        assert self._session is not None
        try:
            async with self._session.get(url, headers={"Accept": "application/json"}, timeout=PEER_TIMEOUT) as resp:
                doc = await resp.json(content_type=None)
                if resp.status != 200 or not isinstance(doc, dict):
                    message = doc.get("error") if isinstance(doc, dict) else doc
                    raise QueryFailed(f"{url} answered {resp.status}: {message}")
                return doc
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise QueryFailed(f"{url}: {str(exc) or type(exc).__name__}") from None

    # --- environment, utilisation, storage ------------------------------------------------------------------------

    def _sampler(self, target: dict[str, Any]) -> Sampler | RemoteSampler:
        """This node's workers serving ``target`` read from /proc; a target on another member read through its
        ``GET /api/node/utilisation`` (all null when that member cannot be found)."""
        node_id, pinned = target.get("node_id"), target.get("node")
        here = (self.node.id, self.node.name)
        remote = node_id if node_id is not None and node_id != self.node.id else None
        if node_id is None and pinned and pinned not in here:
            remote = pinned
        if remote is None:
            return Sampler(self._local_pids(target))
        base = self._member_url(str(remote))
        if base is None or self._session is None:
            return Sampler(list)
        return RemoteSampler(self._session, base + UTILISATION_PATH, target.get("framework"), target.get("device"))

    def _local_pids(self, target: dict[str, Any]) -> Callable[[], list[int]]:
        executor = self.node.executor

        def pids() -> list[int]:
            if executor is None:
                return []
            workers = matching(worker_processes(executor.statistics()), target.get("framework"), target.get("device"))
            return [w["pid"] for w in workers]

        return pids

    def _member_url(self, who: str) -> str | None:
        """The HTTP base URL of the alive member whose id or name is ``who``."""
        mesh = self.node.mesh
        if mesh is None or mesh.gossip is None:
            return None
        ids = {who} | {member_id for member_id, card in mesh.cards.items() if card and card.get("name") == who}
        for m in mesh.gossip.members():
            port = m.meta.get("http")
            if m.name in ids and m.state == State.ALIVE and isinstance(port, int):
                return f"http://{m.addr[0]}:{port}"
        return None

    async def _environment(self, session: aiohttp.ClientSession) -> None:
        """The cards of the nodes that served (hardware, framework versions, model sha256)."""
        cards: dict[str, Any] = {}
        if self.node.id in self._served or not self._served:
            cards[self.node.id] = self.node.card()[1]
        missing = self._served - set(cards) - {""}
        if missing and not self._cancelled:  # a cancel (or the node's shutdown) does not wait on peers
            for base in self.node.peer_urls():
                with contextlib.suppress(QueryFailed):
                    info = await self._get_json(f"{base}/api/node")
                    if info.get("id") in missing:
                        cards[str(info["id"])] = info.get("card") or info
        self.environment["cards"] = cards

    def _planned_total(self) -> int:
        config = self.config
        per_point = config.min_queries
        if config.scenario == "server" and config.qps is not None and config.p99_bound_ms is None:
            per_point = max(config.min_queries, math.ceil(config.qps * config.min_duration_s))
        return per_point * len(config.points())

    async def _save(self) -> None:
        if self.store is None:
            return
        try:
            await self.store.save(self.document())
        except Exception:
            log.exception("could not store benchmark %s", self.id)

    async def _store_queries(self, n: int, result: dict[str, Any], queries: list[Query]) -> None:
        if self.store is None or not queries:
            return
        try:
            await self.store.add_queries(self.id, n, result, queries)
        except Exception:
            log.exception("could not store the queries of benchmark %s", self.id)
