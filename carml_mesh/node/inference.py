"""Serving one request on this node: pick the deployment, check inputs against the manifest, run, shape the reply.

No HTTP here: the protocol modules turn bodies into `InferRequest`s and `InferReply`s back into bytes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dataplane import tensors as wire
from ..dataplane.types import (
    MAX_TOP_K,
    InferReply,
    InferRequest,
    ItemTimings,
    Prediction,
    ServingNode,
    Timings,
)
from ..errors import BadRequest, NotFound, PayloadTooLarge, WorkerUnavailable
from ..exec.base import Executor, ModelSpec
from ..trace.setup import FRAMEWORK, MODEL, current_level
from .catalog import Catalog, ServedModel

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ..trace.setup import Tracing


class InferenceService:
    def __init__(
        self, catalog: Catalog, executor: Executor, *, node: ServingNode, max_batch: int, timeout: float
    ) -> None:
        self.catalog = catalog
        self.executor = executor
        self.node = node
        self.max_batch = max_batch
        self.timeout = timeout
        self.tracing: Tracing | None = None  # set by the node

    def select(self, model: ServedModel, framework: str | None, device: str | None) -> ModelSpec:
        """The deployment a request names, or the first servable one in manifest order."""
        names = [f.name for f in model.manifest.frameworks]
        if framework:
            if framework not in names:
                raise NotFound(f"model {model.name} has no {framework} artifact; it has {', '.join(names)}")
            problem = model.deployments[framework].problem
            if problem:
                raise WorkerUnavailable(f"model {model.name} on {framework} is not servable here: {problem}")
        else:
            available = model.available_frameworks()
            if not available:
                reasons = "; ".join(f"{n}: {d.problem}" for n, d in model.deployments.items())
                raise WorkerUnavailable(f"model {model.name} cannot be served on this node ({reasons})")
            framework = available[0]
        devices = [d for d in self.executor.devices() if d.split(":")[0] in model.manifest.devices]
        if device:
            if device not in devices:
                raise NotFound(
                    f"device {device!r} is not available for {model.name} here; devices: {', '.join(devices)}"
                )
        elif devices:
            device = devices[0]
        else:
            raise NotFound(f"no device of this node ({', '.join(self.executor.devices())}) suits {model.name}")
        return model.model_spec(framework, device)

    async def infer(self, request: InferRequest, *, timeout: float | None = None) -> InferReply:
        started = time.perf_counter()
        model = self.catalog.get(request.model, request.version)
        spec = self.select(model, request.framework, request.device)
        batch = request.batch_size
        if batch == 0:
            raise BadRequest("'inputs' must hold at least one image or tensor")
        if batch > self.max_batch:
            raise PayloadTooLarge(f"a request may hold at most {self.max_batch} inputs, got {batch}")
        if not 1 <= request.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}, got {request.top_k}")
        classify = model.manifest.output.type == "classification" and not request.outputs
        message: dict[str, Any] = {"top_k": request.top_k} if classify else {}
        if request.output_names:
            message["outputs"] = list(request.output_names)
        if request.images:
            if model.manifest.inputs[0].type != "image":
                raise BadRequest(f"model {model.name} takes tensors, not images: send 'tensor' inputs")
            message["images"] = list(request.images)
        else:
            assert request.tensors is not None
            tensors = dict(request.tensors)
            if "" in tensors:  # an unnamed {tensor: ...} item feeds the model's only input
                if len(model.manifest.inputs) != 1:
                    names = [i.name for i in model.manifest.inputs]
                    raise BadRequest(
                        f"model {model.name} has inputs {names}: name them with {{tensors: {{name: ...}}}}"
                    )
                tensors[model.manifest.inputs[0].name] = tensors.pop("")
            tensors = check_tensors(model, tensors, cast=not request.exact_dtypes)
            # views, not copies: the request's arrays are not touched again before the frame is written
            message["tensors"] = {name: wire.encode(t, view=True) for name, t in tensors.items()}
        reply = await self._traced_infer(spec, message, batch, timeout or self.timeout)
        total = (time.perf_counter() - started) * 1e3
        t = reply.get("timings", {})
        decode, prep = _as_list(t.get("decode"), batch), _as_list(t.get("preprocess"), batch)
        queue, compute = float(t.get("queue", 0.0)), float(t.get("compute", 0.0))
        post = float(t.get("postprocess", 0.0))
        worker_ms = sum(decode) + sum(prep) + queue + compute + post
        load_ms = float(reply.get("load_ms", 0.0))
        predictions = _predictions(reply, batch) if classify and "results" in reply else None
        return InferReply(
            model=model.name,
            version=model.version,
            framework=spec.framework,
            device=spec.device,
            node=self.node,
            batch_size=batch,
            predictions=predictions,
            outputs=_outputs(reply) if predictions is None else {},
            items=tuple(ItemTimings(decode[n], prep[n], queue, compute, post, total) for n in range(batch)),
            timings=Timings(total, worker_ms, load_ms, max(0.0, total - worker_ms - load_ms)),
            labels=model.labels if request.outputs else (),
        )

    async def _traced_infer(self, spec: ModelSpec, message: dict[str, Any], batch: int, timeout: float) -> Any:
        """The executor call; at trace level ``model``, a span for it and the worker's stages under it; at
        ``framework``, the worker profiles the run and its operators become spans under ``worker.compute``."""
        tracing = self.tracing
        if tracing is None:
            return await self.executor.infer(spec, message, timeout=timeout)
        level = current_level()
        if level < MODEL:
            return await self.executor.infer(spec, message, timeout=timeout)
        if level >= FRAMEWORK:
            message["profile"] = True
        attributes = {
            "carml.model": spec.key,
            "carml.framework": spec.framework,
            "carml.device": spec.device,
            "carml.batch_size": batch,
            "carml.executor": str(getattr(self.executor, "kind", "")),
        }
        with tracing.span("executor.infer", level=MODEL, attributes=attributes) as span:
            reply = await self.executor.infer(spec, message, timeout=timeout)
            if span is not None:
                worker_spans(tracing, span, reply, batch)
            return reply


def worker_spans(tracing: Tracing, parent: Span, reply: dict[str, Any], batch: int) -> None:
    """What the reply says happened below the executor call, as finished spans under ``parent``.

    In order: ``container.start`` and ``model.load`` when the request had to start them (cold), ``batch.wait``
    when a batcher held it to form a batch, then the worker's stages (queue, decode and preprocess per input,
    compute, postprocess) from their reported durations, and at level framework the profiled operators under
    ``worker.compute``. The worker says when the request arrived (``received_unix_ns``); an older worker does
    not, and then the stages are placed to end when the reply came.
    """
    t = reply.get("timings") or {}
    decode, prep = _as_list(t.get("decode"), batch), _as_list(t.get("preprocess"), batch)
    stages: list[tuple[str, float, dict[str, Any]]] = [("worker.queue", float(t.get("queue", 0.0)), {})]
    if "decode" in t:
        for n in range(batch):
            stages.append(("worker.decode", decode[n], {"carml.input": n}))
            stages.append(("worker.preprocess", prep[n], {"carml.input": n}))
    stages.append(("worker.compute", float(t.get("compute", 0.0)), {}))
    stages.append(("worker.postprocess", float(t.get("postprocess", 0.0)), {}))
    total_ns = sum(int(ms * 1e6) for _, ms, _ in stages)
    start = reply.get("received_unix_ns")
    if not isinstance(start, int) or start <= 0:
        start = time.time_ns() - total_ns
    _cold_spans(tracing, parent, reply, start)
    _batch_span(tracing, parent, reply, start)
    compute: Span | None = None
    compute_start = start
    for name, ms, attributes in stages:
        end = start + int(ms * 1e6)
        span = tracing.child(parent, name, start, end, {"carml.duration_ms": ms, **attributes})
        if name == "worker.compute":
            compute, compute_start = span, start
        start = end
    ops = reply.get("ops")
    if compute is not None and isinstance(ops, list):
        _op_spans(tracing, compute, ops, compute_start)


def _cold_spans(tracing: Tracing, parent: Span, reply: dict[str, Any], received_ns: int) -> None:
    """``container.start`` (docker cold mode, which says when it began) and ``model.load``; else the load alone,
    placed to end when the worker received the request."""
    load_ms = _number(reply.get("load_ms"))
    cold: dict[str, Any] = reply["cold"] if isinstance(reply.get("cold"), dict) else {}
    container_ms = _number(cold.get("container_start_ms"))
    began = cold.get("started_unix_ns")
    if isinstance(began, int) and began > 0 and container_ms:
        end = began + int(container_ms * 1e6)
        tracing.child(parent, "container.start", began, end, {"carml.duration_ms": container_ms})
        load_start = end
    elif load_ms:
        load_start = received_ns - int(load_ms * 1e6)
    else:
        return
    if load_ms:
        parent.set_attribute("carml.load_ms", load_ms)
        tracing.child(parent, "model.load", load_start, load_start + int(load_ms * 1e6), {"carml.duration_ms": load_ms})


def _batch_span(tracing: Tracing, parent: Span, reply: dict[str, Any], received_ns: int) -> None:
    """``batch.wait``: how long the batcher held the request to form its batch, ending when it sent the batch."""
    batching = reply.get("batching")
    if not isinstance(batching, dict):
        return
    timings = reply.get("timings") or {}
    wait_ms = _number(batching.get("wait_ms", timings.get("batch_wait")))
    end = batching.get("dispatched_unix_ns")
    if not isinstance(end, int) or end <= 0:
        end = received_ns
    attributes: dict[str, Any] = {"carml.duration_ms": wait_ms}
    for key in ("batch_size", "requests"):
        value = batching.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            attributes[f"carml.batch.{key}"] = value
    tracing.child(parent, "batch.wait", end - int(wait_ms * 1e6), end, attributes)


def _op_spans(tracing: Tracing, compute: Span, ops: list[Any], compute_start: int) -> None:
    """The profiled operators (see carml_mesh.exec.worker.profiling) under ``worker.compute``, nested as given."""
    spans: list[Span | None] = []
    for n, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("name"), str):
            spans.append(None)  # a malformed op: skipped, its children hang from compute
            continue
        parent_index = op.get("parent")
        parent = compute
        if isinstance(parent_index, int) and 0 <= parent_index < n:
            parent = spans[parent_index] or compute
        start = compute_start + int(_number(op.get("start_us")) * 1e3)
        dur_us = _number(op.get("dur_us"))
        attributes = {"carml.op.type": str(op.get("op", "")), "carml.duration_ms": dur_us / 1e3}
        spans.append(tracing.child(parent, op["name"] or "op", start, start + int(dur_us * 1e3), attributes))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0.0


def check_tensors(model: ServedModel, tensors: dict[str, np.ndarray], *, cast: bool = True) -> dict[str, np.ndarray]:
    """Inputs as the manifest describes them (batched), or BadRequest saying what differs."""
    inputs = model.manifest.inputs
    expected = [i.name for i in inputs]
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise BadRequest(f"model {model.name} has no input {unknown[0]!r}; its inputs are {expected}")
    checked: dict[str, np.ndarray] = {}
    batch: int | None = None
    for spec in inputs:
        if spec.name not in tensors:
            raise BadRequest(f"missing input {spec.name!r}; model {model.name} takes {expected}")
        t = tensors[spec.name]
        want = [-1, *spec.dimensions]
        if t.ndim != len(want) or any(w != -1 and w != s for w, s in zip(want, t.shape, strict=True)):
            raise BadRequest(f"input {spec.name!r}: expected shape {_shape(want)} (batch first), got {list(t.shape)}")
        if t.shape[0] == 0:
            raise BadRequest(f"input {spec.name!r}: the batch is empty")
        if batch is not None and t.shape[0] != batch:
            raise BadRequest(f"input {spec.name!r}: batch size {t.shape[0]} differs from the other inputs' {batch}")
        batch = t.shape[0]
        dtype = np.dtype(spec.element_type)
        if t.dtype != dtype:
            if not cast or not np.can_cast(t.dtype, dtype, casting="same_kind"):
                raise BadRequest(f"input {spec.name!r}: expected element type {dtype.name}, got {t.dtype.name}")
            t = t.astype(dtype)
        checked[spec.name] = t
    return checked


def _shape(dims: list[int]) -> str:
    return "[" + ", ".join("N" if n == 0 else ("*" if d == -1 else str(d)) for n, d in enumerate(dims)) + "]"


def _as_list(value: Any, n: int) -> list[float]:
    if isinstance(value, list) and len(value) == n:
        return [float(v) for v in value]
    return [0.0] * n


def _predictions(reply: dict[str, Any], batch: int) -> tuple[tuple[Prediction, ...], ...]:
    results = reply["results"]
    if not isinstance(results, list) or len(results) != batch:
        raise WorkerUnavailable(f"worker sent {type(results).__name__} results for a batch of {batch}")
    return tuple(tuple(Prediction(int(i), str(label), float(p)) for i, p, label in r["predictions"]) for r in results)


def _outputs(reply: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
        return {n: wire.decode(t) for n, t in reply.get("outputs", {}).items()}
    except wire.TensorError as exc:
        raise WorkerUnavailable(f"worker sent a malformed tensor: {exc}") from exc
