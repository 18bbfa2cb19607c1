"""One inference request and one reply, whatever protocol brought the request in.

/api/predict (JSON, msgpack, multipart), the Open Inference Protocol (KServe v2, JSON and binary) and the
accuracy evaluator build an `InferRequest`; `RoutedInference.infer` routes it (here or to a peer) and returns an
`InferReply`; each protocol module turns that back into its own bytes. Tensors are numpy arrays, batch first;
images are the encoded bytes as the client sent them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..headers import Hop

__all__ = [
    "DEFAULT_TOP_K",
    "MAX_TOP_K",
    "Attempt",
    "InferReply",
    "InferRequest",
    "ItemTimings",
    "Prediction",
    "Route",
    "RouteCandidate",
    "ServingNode",
    "Timings",
]

DEFAULT_TOP_K = 5
MAX_TOP_K = 1000


@dataclass(frozen=True, slots=True)
class InferRequest:
    model: str
    version: str | None = None
    framework: str | None = None
    device: str | None = None
    node: str | None = None  # pin: run on this member (id or name) or fail
    images: tuple[bytes, ...] = ()
    tensors: Mapping[str, np.ndarray] | None = None  # batched, by input name; "" feeds a model's only input
    top_k: int = DEFAULT_TOP_K
    # Raw output tensors instead of predictions, even from a classification model: all of them (True) or these
    # names. The Open Inference Protocol always asks for them.
    outputs: bool | tuple[str, ...] = False
    exact_dtypes: bool = False  # refuse an input of another element type instead of converting it (KServe)
    trace_level: int | None = None  # asked for in the body (carml_mesh.trace.setup levels); None: header/default
    hop: Hop = field(default_factory=Hop)  # who sent it, its deadline, its trace context

    @property
    def batch_size(self) -> int:
        if self.images:
            return len(self.images)
        return len(next(iter(self.tensors.values()))) if self.tensors else 0

    @property
    def output_names(self) -> tuple[str, ...] | None:
        """The outputs asked for by name; None for all of them."""
        return self.outputs if isinstance(self.outputs, tuple) and self.outputs else None


@dataclass(frozen=True, slots=True)
class Prediction:
    index: int
    label: str
    probability: float


@dataclass(frozen=True, slots=True)
class ItemTimings:
    """Milliseconds one input of the batch spent in each stage; queue and compute are the batch's."""

    decode: float = 0.0
    preprocess: float = 0.0
    queue: float = 0.0
    compute: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0


@dataclass(frozen=True, slots=True)
class Timings:
    """Milliseconds of the whole request on the node that served it."""

    total: float = 0.0
    worker: float = 0.0  # in the worker: decode, preprocess, queue, compute, postprocess
    load: float = 0.0  # a cold model's load, when the request had to wait for it
    node: float = 0.0  # the rest: the node's own work


@dataclass(frozen=True, slots=True)
class ServingNode:
    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RouteCandidate:
    node: str
    local: bool
    warm: bool
    load: float
    latency_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    node: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Where the routing entry sent the request, why, and what each attempt gave."""

    chosen: str | None
    reason: str
    candidates: tuple[RouteCandidate, ...] = ()
    attempts: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True)
class InferReply:
    model: str
    version: str
    framework: str
    device: str
    node: ServingNode
    batch_size: int
    # per input: its top-k predictions (a classification model, outputs not asked for); else None
    predictions: tuple[tuple[Prediction, ...], ...] | None
    outputs: Mapping[str, np.ndarray]  # batched raw outputs, by name, when no predictions
    items: tuple[ItemTimings, ...]
    timings: Timings
    route: Route | None = None
    labels: tuple[str, ...] = ()  # the model's class labels, with raw outputs of a classification model
