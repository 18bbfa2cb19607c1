"""Dynamic batching: concurrent requests for one deployment merged into one worker call, split back exactly.

`BatchingExecutor` wraps the node's real executor (local processes or Docker containers) and delegates everything
to it but ``infer``. Requests queue per `ModelSpec.key`; a dispatcher per key forms batches of at most
``max_batch_size`` *inputs* (images or tensor rows, not requests: a request is never split, and one larger than the
limit runs alone) and keeps at most ``pool + 1`` batches in flight for the key (``pool``: the requests the worker
handles at once), so the next batch forms while the worker computes. That is where the throughput comes from.

The dispatch policy keeps single-stream latency where it was:

- nothing in flight for the key and nothing queued: the request goes to the worker at once, from the caller's own
  task, without a queue or a task hop (the unbatched path plus a few dictionary reads);
- otherwise it queues, and the oldest queued request is dispatched, with what can join it, as soon as a worker
  slot is free and
  * nothing is in flight for the key any more (the worker is idle: waiting would only add latency), or
  * it is alone in the queue (no batch is forming: with two clients, waiting for a third that never comes cost
    a fifth of the throughput), or
  * the batch is full (``max_batch_size`` inputs, or the next compatible request would not fit), or
  * the oldest request has waited ``max_queue_delay_ms`` (Triton's rule);
  never while ``pool + 1`` batches are in flight (``pool`` run, one waits at the worker to start the moment a
  slot frees; the queue grows into the next batch meanwhile).
- a batch takes a fair share of what is ready, ``ceil(inputs / pool)``, and the rest follows on the next free slot
  at once: a worker slot is often one core (onnxruntime with one intra-op thread per slot), and one slot running
  the whole queue while the other idles would lose the parallelism that unbatched requests had.

So a batch only waits while the worker is busy and a queue is forming, unlike Triton, which waits up to the delay
even when idle. On a CPU where a bigger batch is not cheaper per input (efficientnet-lite0 on onnxruntime here),
``--max-queue-delay-ms 0`` (a batch leaves whenever a slot is free: batches form only from what queued while all
slots were busy) measured as good or better; see scripts/bench/batching.py.

Only requests of the same shape merge: images with images, tensors with tensors of the same names, dtypes and
non-batch dimensions, and the same other options (``top_k``, ``outputs``, anything else in the message). Images
merge into one ``images`` list; tensors concatenate along axis 0 (their raw C-order bytes, one copy). The reply is
split back: ``results`` and per-input timing lists sliced, ``outputs`` tensors sliced along axis 0, batch-wide
fields copied; each reply gains ``batching`` (batch size in inputs, requests merged, this request's wait, dispatch
time) and ``timings.batch_wait``.

A worker error fails each request of the batch with the same error, but a bad input (400/413) in a merged batch
has each request retried alone, so one bad image does not fail its neighbours. A waiting request that is cancelled
(its client went away) leaves the queue; ``aclose()`` fails what is queued with `WorkerUnavailable`, cancels the
dispatchers and closes the wrapped executor (which owns the workers).

Batching is per model, from the manifest's ``batching`` (carried in ``ModelSpec.spec["batching"]`` by the
catalog); ``max_batch_size`` 1 (the default) is a pure pass-through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest, PayloadTooLarge, WorkerUnavailable
from .base import Executor, ModelSpec
from .worker.protocol import VIEW_MIN, Chunks, ProtocolError, decode_tensor

log = logging.getLogger("carml.exec")

_RETRY_ALONE = (BadRequest, PayloadTooLarge)  # about one input: retried per request when a merged batch fails


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 1  # inputs per batch; 1: no batching
    max_queue_delay_ms: float = 0.0

    @classmethod
    def from_spec(cls, spec: dict[str, Any], *, max_queue_delay_ms: float | None = None) -> BatchingConfig:
        raw = spec.get("batching") if isinstance(spec, dict) else None
        if not isinstance(raw, dict):
            return cls()
        size = raw.get("max_batch_size", 1)
        delay = raw.get("max_queue_delay_ms", 0.0) if max_queue_delay_ms is None else max_queue_delay_ms
        size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 1
        delay = float(delay) if isinstance(delay, int | float) and not isinstance(delay, bool) and delay > 0 else 0.0
        return cls(size, delay)


@dataclass(eq=False)
class _Entry:
    """One queued request."""

    message: dict[str, Any]
    size: int  # inputs
    signature: tuple[Any, ...]
    deadline: float  # perf_counter
    future: asyncio.Future[dict[str, Any]]
    enqueued: float = field(default_factory=time.perf_counter)
    dispatched: bool = False


@dataclass(eq=False)
class _Queue:
    """The batcher of one deployment (ModelSpec.key)."""

    model: ModelSpec
    config: BatchingConfig
    pending: deque[_Entry] = field(default_factory=deque)
    in_flight: int = 0  # worker calls (batches or direct requests) now running for this key
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dispatcher: asyncio.Task[None] | None = None
    batches: set[asyncio.Task[None]] = field(default_factory=set)
    calls: int = 0  # worker calls made
    requests: int = 0
    inputs: int = 0
    largest: int = 0  # the largest batch, in inputs


def request_size(message: dict[str, Any]) -> int | None:
    """Inputs in a request (images, or rows of its tensors), cheaply; None when that cannot be told."""
    images = message.get("images")
    if images is not None:
        return len(images) if isinstance(images, list) else None
    tensors = message.get("tensors")
    if isinstance(tensors, dict) and tensors:
        first = next(iter(tensors.values()))
        shape = first.get("shape") if isinstance(first, dict) else None
        if isinstance(shape, list) and shape and isinstance(shape[0], int):
            return shape[0]
    return None


def signature(message: dict[str, Any]) -> tuple[tuple[Any, ...], int] | None:
    """What a request must share with others to merge with them, and its size; None: it runs alone.

    Tensors are validated here (a view, no copy), so merging raw bytes cannot misalign rows of two requests.
    """
    options = tuple(sorted((k, repr(v)) for k, v in message.items() if k not in ("images", "tensors")))
    images, tensors = message.get("images"), message.get("tensors")
    if images is not None:
        if tensors is not None or not isinstance(images, list) or not images:
            return None
        if not all(isinstance(i, bytes | bytearray | memoryview) for i in images):
            return None
        return ("images", options), len(images)
    if not isinstance(tensors, dict) or not tensors:
        return None
    size: int | None = None
    layout = []
    for name in sorted(tensors, key=str):
        try:
            array = decode_tensor(tensors[name])
        except (ProtocolError, KeyError, TypeError):
            return None
        if array.ndim == 0 or array.shape[0] == 0 or (size is not None and array.shape[0] != size):
            return None
        size = array.shape[0]
        layout.append((name, tensors[name]["dtype"], array.shape[1:]))
    assert size is not None
    return ("tensors", options, tuple(layout)), size


def merge(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One message of the same signature holding every input of ``messages``, in order."""
    head = messages[0]
    merged = {k: v for k, v in head.items() if k not in ("images", "tensors")}
    if "images" in head:
        merged["images"] = [image for m in messages for image in m["images"]]
        return merged
    tensors = {}
    for name, first in head["tensors"].items():
        parts = [m["tensors"][name] for m in messages]
        rows = sum(p["shape"][0] for p in parts)
        data = [p["data"] for p in parts]
        size = sum(len(memoryview(d).cast("B")) for d in data)
        # C-order rows of one dtype and one row shape: concatenating along axis 0 is concatenating the bytes, which
        # the worker connection writes one after the other (Chunks) rather than joined into a new buffer
        tensors[name] = {
            "dtype": first["dtype"],
            "shape": [rows, *first["shape"][1:]],
            "data": Chunks(data) if size >= VIEW_MIN else b"".join(data),
        }
    merged["tensors"] = tensors
    return merged


class Unsplittable(Exception):
    """A batch's reply that cannot be cut back into its requests' replies (the requests are then run alone)."""


def split(reply: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """The replies of the requests of sizes ``sizes`` that were merged into one batch answered by ``reply``."""
    total = sum(sizes)
    bounds, start = [], 0
    for n in sizes:
        bounds.append((start, start + n))
        start += n
    results = reply.get("results")
    if results is not None and (not isinstance(results, list) or len(results) != total):
        raise Unsplittable(f"the worker answered {len(results) if isinstance(results, list) else '?'} results")
    outputs: dict[str, tuple[dict[str, Any], int]] = {}
    for name, wire in (reply.get("outputs") or {}).items():
        try:
            array = decode_tensor(wire)
        except ProtocolError as exc:
            raise Unsplittable(f"output {name!r}: {exc}") from None
        if array.ndim == 0 or array.shape[0] != total:
            raise Unsplittable(f"output {name!r} has shape {list(array.shape)}, not {total} rows")
        outputs[name] = (wire, len(wire["data"]) // total if total else 0)
    timings = reply.get("timings") or {}
    replies = []
    for lo, hi in bounds:
        one = {k: v for k, v in reply.items() if k not in ("results", "outputs", "timings")}
        if results is not None:
            one["results"] = results[lo:hi]
        if outputs:
            one["outputs"] = {
                name: {
                    "dtype": w["dtype"],
                    "shape": [hi - lo, *w["shape"][1:]],
                    "data": bytes(w["data"][lo * r : hi * r]),
                }
                for name, (w, r) in outputs.items()
            }
        one["timings"] = {k: (v[lo:hi] if isinstance(v, list) and len(v) == total else v) for k, v in timings.items()}
        replies.append(one)
    return replies


def _annotate(reply: dict[str, Any], *, size: int, requests: int, wait_ms: float, unix_ns: int) -> dict[str, Any]:
    reply["batching"] = {"batch_size": size, "requests": requests, "wait_ms": wait_ms, "dispatched_unix_ns": unix_ns}
    timings = reply.get("timings")
    if not isinstance(timings, dict):
        timings = reply["timings"] = {}
    timings["batch_wait"] = wait_ms
    return reply


def _copy_error(exc: BaseException) -> BaseException:
    """The same error for another waiter (one exception object raised in several tasks would share a traceback)."""
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        return exc
    copy.__cause__ = exc.__cause__
    return copy


class BatchingExecutor(Executor):
    """Wraps ``inner`` and batches its ``infer`` calls per deployment; see the module's docstring for the policy.

    ``pool`` is the number of requests the inner executor's worker runs at once (LocalExecutorConfig.pool);
    ``max_queue_delay_ms`` overrides every manifest's delay; ``enabled=False`` makes it a pass-through.
    The wrapper owns ``inner``: ``start``/``aclose`` start and close it too (``aclose`` is safe twice).
    """

    def __init__(
        self, inner: Executor, *, pool: int = 2, max_queue_delay_ms: float | None = None, enabled: bool = True
    ) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.pool = max(1, pool)
        # one batch more than the worker runs at once waits at the worker, so a slot that frees starts the next
        # batch at once instead of idling while the node hears of it and sends the next frame (at 4 clients that
        # bubble cost efficientnet-lite0 an eighth of its throughput)
        self.depth = self.pool + 1
        self.max_queue_delay_ms = max_queue_delay_ms
        self.enabled = enabled
        self._queues: dict[str, _Queue] = {}
        self._requests = 0  # inside infer() now: queued, batched or direct
        self._closed = False

    # --- delegated ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.inner.start()

    def frameworks(self) -> dict[str, str]:
        return self.inner.frameworks()

    def devices(self) -> list[str]:
        return self.inner.devices()

    async def load(self, model: ModelSpec) -> float:
        return await self.inner.load(model)

    async def unload(self, model: ModelSpec) -> None:
        await self.inner.unload(model)

    def is_loaded(self, model: ModelSpec) -> bool:
        return self.inner.is_loaded(model)

    def in_flight(self) -> int:
        """Requests at this executor now, queued in the batcher or at a worker (read on every routed request)."""
        return max(self._requests, self.inner.in_flight())

    def worker_pids(self) -> list[int]:
        return self.inner.worker_pids()

    def statistics(self) -> dict[str, Any]:
        stats = dict(self.inner.statistics())
        stats["batching"] = {
            key: {
                "max_batch_size": q.config.max_batch_size,
                "max_queue_delay_ms": q.config.max_queue_delay_ms,
                "calls": q.calls,
                "requests": q.requests,
                "inputs": q.inputs,
                "largest_batch": q.largest,
                "queued": len(q.pending),
                "in_flight": q.in_flight,
            }
            for key, q in self._queues.items()
        }
        return stats

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        for q in self._queues.values():
            error = WorkerUnavailable(f"{q.model.name} could not run: the node is shutting down")
            while q.pending:
                entry = q.pending.popleft()
                if not entry.future.done():
                    entry.future.set_exception(_copy_error(error))
            tasks.extend(q.batches)
            if q.dispatcher is not None:
                tasks.append(q.dispatcher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.inner.aclose()

    # --- infer -------------------------------------------------------------------------------------------------

    async def infer(self, model: ModelSpec, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        if not self.enabled:
            return await self.inner.infer(model, request, timeout=timeout)
        q = self._queue(model)
        if q.config.max_batch_size <= 1:
            return await self.inner.infer(model, request, timeout=timeout)
        if self._closed:
            raise WorkerUnavailable(f"{model.name} could not run: the node is shutting down")
        self._requests += 1
        try:
            if not q.pending and q.in_flight < 1:
                return await self._direct(q, model, request, timeout)  # the worker is idle: go now
            found = signature(request)
            if found is None:
                return await self._direct(q, model, request, timeout)  # nothing it could merge with
            return await self._queued(q, request, found[0], found[1], timeout)
        finally:
            self._requests -= 1

    def _queue(self, model: ModelSpec) -> _Queue:
        q = self._queues.get(model.key)
        if q is None:
            config = BatchingConfig.from_spec(model.spec, max_queue_delay_ms=self.max_queue_delay_ms)
            q = self._queues[model.key] = _Queue(model, config)
        return q

    async def _direct(self, q: _Queue, model: ModelSpec, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One request straight to the worker, from the caller's task, counted as a call in flight for its key."""
        q.in_flight += 1
        q.calls += 1
        q.requests += 1
        unix_ns = time.time_ns()
        size = request_size(request) or 0
        q.inputs += size
        q.largest = max(q.largest, size)
        try:
            reply = await self.inner.infer(model, request, timeout=timeout)
        finally:
            q.in_flight -= 1
            if q.pending:
                q.wake.set()
        return _annotate(reply, size=size, requests=1, wait_ms=0.0, unix_ns=unix_ns)

    async def _queued(
        self, q: _Queue, request: dict[str, Any], sig: tuple[Any, ...], size: int, timeout: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        entry = _Entry(request, size, sig, time.perf_counter() + timeout, loop.create_future())
        q.pending.append(entry)
        if q.dispatcher is None or q.dispatcher.done():
            q.dispatcher = asyncio.create_task(self._dispatch(q), name=f"batcher {q.model.key}")
        q.wake.set()
        try:
            async with asyncio.timeout(timeout):
                return await entry.future
        except TimeoutError:
            raise WorkerUnavailable(
                f"{q.model.name} on {q.model.framework} did not answer within {timeout:.1f} s"
            ) from None
        finally:
            if not entry.dispatched:  # cancelled or timed out while waiting: leave the queue, nobody else affected
                with contextlib.suppress(ValueError):
                    q.pending.remove(entry)

    async def _dispatch(self, q: _Queue) -> None:
        """Form and start batches for one key as the policy says; sleeps on ``wake`` or the oldest's deadline, and
        ends once nothing is queued (so an idle deployment holds no task)."""
        delay_s = q.config.max_queue_delay_ms / 1e3
        while True:
            q.wake.clear()
            wait: float | None = None
            spilled = False
            while q.pending and q.in_flight < self.depth:
                chosen, full = self._gather(q, q.config.max_batch_size)
                head = q.pending[0]
                left = head.enqueued + delay_s - time.perf_counter()
                if q.in_flight > 0 and len(q.pending) > 1 and not full and not spilled and left > 0:
                    wait = left
                    break
                inputs = sum(e.size for e in chosen)
                share = -(-inputs // self.pool)  # a fair share per worker slot, so no slot idles while one toils
                if share < inputs:
                    chosen, _ = self._gather(q, share)
                    spilled = True  # the rest is as ready as this batch: it leaves when a slot is free
                for entry in chosen:
                    entry.dispatched = True
                q.pending = deque(e for e in q.pending if not e.dispatched)
                task = asyncio.create_task(self._run_batch(q, chosen), name=f"batch {q.model.key}")
                q.batches.add(task)
                task.add_done_callback(q.batches.discard)
                q.in_flight += 1  # counted now, so this loop sees the slot taken
            if not q.pending:  # all dispatched: end here, the next request to queue starts a new dispatcher
                q.dispatcher = None
                return
            if wait is None:
                await q.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await q.wake.wait()

    def _gather(self, q: _Queue, limit: int) -> tuple[list[_Entry], bool]:
        """The oldest request and the compatible ones after it that fit in ``limit`` inputs; and whether that batch
        is full."""
        head = q.pending[0]
        chosen, inputs, full = [head], head.size, head.size >= limit
        for entry in list(q.pending)[1:]:
            if full:
                break
            if entry.signature != head.signature or entry.future.done():
                continue
            if inputs + entry.size > limit:
                full = True  # the next one would not fit: waiting cannot make this batch bigger
                continue
            chosen.append(entry)
            inputs += entry.size
            full = inputs >= limit
        return chosen, full

    async def _run_batch(self, q: _Queue, entries: list[_Entry]) -> None:
        """Run one batch (already counted in flight) and answer each of its requests."""
        now = time.perf_counter()
        unix_ns = time.time_ns()
        waits = [(now - e.enqueued) * 1e3 for e in entries]
        live = [(e, w) for e, w in zip(entries, waits, strict=True) if not e.future.done()]
        try:
            if not live:
                return
            size = sum(e.size for e, _ in live)
            q.calls += 1
            q.requests += len(live)
            q.inputs += size
            q.largest = max(q.largest, size)
            timeout = max(0.001, max(e.deadline for e, _ in live) - now)
            if len(live) == 1:
                await self._run_alone(q, live[0][0], live[0][1], unix_ns, size=size, requests=1)
                return
            merged = merge([e.message for e, _ in live])
            try:
                reply = await self.inner.infer(q.model, merged, timeout=timeout)
                replies = split(reply, [e.size for e, _ in live])
            except (*_RETRY_ALONE, Unsplittable) as exc:
                log.debug("batch of %d requests for %s failed (%s); running each alone", len(live), q.model.key, exc)
                await asyncio.gather(
                    *(self._run_alone(q, e, w, unix_ns, size=e.size, requests=1) for e, w in live),
                    return_exceptions=True,
                )
                return
            except Exception as exc:
                for e, _ in live:
                    if not e.future.done():
                        e.future.set_exception(_copy_error(exc))
                return
            for (e, w), one in zip(live, replies, strict=True):
                if not e.future.done():
                    e.future.set_result(_annotate(one, size=size, requests=len(live), wait_ms=w, unix_ns=unix_ns))
        except asyncio.CancelledError:
            for e in entries:
                if not e.future.done():
                    e.future.set_exception(WorkerUnavailable(f"{q.model.name} could not run: shutting down"))
            raise
        finally:
            q.in_flight -= 1
            q.wake.set()

    async def _run_alone(
        self, q: _Queue, entry: _Entry, wait_ms: float, unix_ns: int, *, size: int, requests: int
    ) -> None:
        timeout = max(0.001, entry.deadline - time.perf_counter())
        try:
            reply = await self.inner.infer(q.model, entry.message, timeout=timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not entry.future.done():
                entry.future.set_exception(exc)
            return
        if not entry.future.done():
            entry.future.set_result(_annotate(reply, size=size, requests=requests, wait_ms=wait_ms, unix_ns=unix_ns))
