"""`InferRequest` and `InferReply` as /api/predict documents (maps that JSON or msgpack then encode).

The reply document is what /api/predict answers; the request document is what a node sends a peer when it
forwards a request (msgpack, tensors as raw bytes), and the peer's answer comes back through `reply_from_document`.
The public request parser, with its error messages for clients, is `carml_mesh.web.bodies`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import tensors
from .types import (
    Attempt,
    InferReply,
    InferRequest,
    ItemTimings,
    Prediction,
    Route,
    RouteCandidate,
    ServingNode,
    Timings,
)

__all__ = ["MalformedReply", "reply_document", "reply_from_document", "request_document"]


class MalformedReply(ValueError):
    """A peer's answer that is not a reply document."""


def request_document(request: InferRequest) -> dict[str, Any]:
    """The document of a forwarded request: large tensors stay views of the request's arrays (no copy)."""
    doc: dict[str, Any] = {"model": request.model, "top_k": request.top_k}
    for key in ("version", "framework", "device"):
        value = getattr(request, key)
        if value:
            doc[key] = value
    if request.outputs:
        doc["outputs"] = list(request.outputs) if isinstance(request.outputs, tuple) else True
    if request.exact_dtypes:
        doc["exact_dtypes"] = True
    if request.images:
        doc["inputs"] = [{"image": image} for image in request.images]
    else:
        assert request.tensors is not None
        items = []
        for i in range(request.batch_size):
            one = {name: tensors.encode(t[i], view=True) for name, t in request.tensors.items()}
            items.append({"tensor": one[""]} if "" in one and len(one) == 1 else {"tensors": one})
        doc["inputs"] = items
    return doc


def reply_document(reply: InferReply, *, trace_id: str | None = None) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for n in range(reply.batch_size):
        result: dict[str, Any]
        if reply.predictions is not None:
            result = {
                "predictions": [
                    {"index": p.index, "label": p.label, "probability": p.probability} for p in reply.predictions[n]
                ]
            }
        else:
            result = {"outputs": {name: a[n] for name, a in reply.outputs.items()}}
        t = reply.items[n]
        result["timings_ms"] = {
            "decode": t.decode,
            "preprocess": t.preprocess,
            "queue": t.queue,
            "compute": t.compute,
            "postprocess": t.postprocess,
            "total": t.total,
        }
        results.append(result)
    doc: dict[str, Any] = {
        "model": reply.model,
        "version": reply.version,
        "framework": reply.framework,
        "device": reply.device,
        "node": {"id": reply.node.id, "name": reply.node.name},
        "batch_size": reply.batch_size,
        "results": results,
        "timings_ms": {
            "total": reply.timings.total,
            "worker": reply.timings.worker,
            "load": reply.timings.load,
            "node": reply.timings.node,
        },
    }
    if reply.labels:
        doc["labels"] = list(reply.labels)
    if reply.route is not None:
        doc["route"] = route_document(reply.route)
    if trace_id is not None:
        doc["trace_id"] = trace_id
    return doc


def route_document(route: Route) -> dict[str, Any]:
    return {
        "chosen": route.chosen,
        "reason": route.reason,
        "candidates": [
            {"node": c.node, "local": c.local, "warm": c.warm, "load": c.load, "latency_ms": c.latency_ms}
            for c in route.candidates
        ],
        "attempts": [
            {"node": a.node, "ok": a.ok} if a.error is None else {"node": a.node, "ok": a.ok, "error": a.error}
            for a in route.attempts
        ],
    }


def reply_from_document(doc: Any) -> InferReply:
    """A peer's reply document, checked; MalformedReply says what is wrong with it."""
    try:
        return _reply(doc)
    except (KeyError, TypeError, ValueError, IndexError, tensors.TensorError) as exc:
        raise MalformedReply(f"not a reply document: {exc!r}") from None


def _reply(doc: Any) -> InferReply:
    if not isinstance(doc, dict):
        raise TypeError(f"a {type(doc).__name__}, not a map")
    results = doc["results"]
    batch = int(doc["batch_size"])
    if not isinstance(results, list) or len(results) != batch or batch < 1:
        raise ValueError(f"{batch} inputs but results {type(results).__name__} of {len(results)}")
    predictions: tuple[tuple[Prediction, ...], ...] | None = None
    outputs: dict[str, np.ndarray] = {}
    if "predictions" in results[0]:
        predictions = tuple(
            tuple(Prediction(int(p["index"]), str(p["label"]), float(p["probability"])) for p in r["predictions"])
            for r in results
        )
    else:
        per_item = [{str(k): tensors.decode(v) for k, v in r["outputs"].items()} for r in results]
        outputs = {name: np.stack([item[name] for item in per_item]) for name in per_item[0]}
    items = tuple(ItemTimings(**{k: float(v) for k, v in r["timings_ms"].items()}) for r in results)
    node = doc["node"]
    t = doc["timings_ms"]
    return InferReply(
        model=str(doc["model"]),
        version=str(doc["version"]),
        framework=str(doc["framework"]),
        device=str(doc["device"]),
        node=ServingNode(str(node["id"]), None if node.get("name") is None else str(node["name"])),
        batch_size=batch,
        predictions=predictions,
        outputs=outputs,
        items=items,
        timings=Timings(float(t["total"]), float(t["worker"]), float(t["load"]), float(t["node"])),
        route=_route(doc["route"]) if isinstance(doc.get("route"), dict) else None,
        labels=tuple(str(label) for label in doc.get("labels") or ()),
    )


def _route(doc: dict[str, Any]) -> Route:
    return Route(
        chosen=None if doc.get("chosen") is None else str(doc["chosen"]),
        reason=str(doc.get("reason", "")),
        candidates=tuple(
            RouteCandidate(
                str(c["node"]),
                bool(c["local"]),
                bool(c["warm"]),
                float(c["load"]),
                None if c.get("latency_ms") is None else float(c["latency_ms"]),
            )
            for c in doc.get("candidates") or []
        ),
        attempts=tuple(
            Attempt(str(a["node"]), bool(a["ok"]), None if a.get("error") is None else str(a["error"]))
            for a in doc.get("attempts") or []
        ),
    )
