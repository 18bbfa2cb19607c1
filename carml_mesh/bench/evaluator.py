"""Running a model over a dataset: batches through the node's routed inference (as /api/predict runs them: a node
pin, framework and device choice work the same), with progress, and the figures scored at the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataplane.types import InferReply, InferRequest
from ..errors import BadRequest, PayloadTooLarge
from .config import Target
from .datasets import MAX_EXAMPLES, Dataset
from .scoring import score

DEFAULT_BATCH_SIZE = 32
DEFAULT_BATCH_BYTES = 16 << 20  # images per request, so a forwarded batch stays under a peer's body limit
DEFAULT_TOP_K = 5


@dataclass
class Progress:
    done: int = 0
    total: int = 0
    phase: str = "queued"

    def to_dict(self) -> dict[str, Any]:
        fraction = self.done / self.total if self.total else 0.0
        return {"done": self.done, "total": self.total, "fraction": round(fraction, 4), "phase": self.phase}


Predict = Callable[[InferRequest], Awaitable[InferReply]]


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
        request = InferRequest(
            model=target.model,
            version=target.version,
            framework=target.framework,
            device=target.device,
            node=target.node,
            top_k=k,
            **inputs,
        )
        reply = await predict(request)
        if not served:
            served.update(
                version=reply.version,
                framework=reply.framework,
                device=reply.device,
                node={"id": reply.node.id, "name": reply.node.name},
                nodes={},
            )
        who = reply.node.name or "?"
        served["nodes"][who] = served["nodes"].get(who, 0) + len(indices)  # without a pin, batches may spread
        if reply.predictions is None:
            raise BadRequest(f"model {reply.model} answered without predictions: it does not classify")
        return [[p.index for p in item] for item in reply.predictions]

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
