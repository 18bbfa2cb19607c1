"""What the worker does with each request, free of sockets: load, unload, infer, stats."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backends, postprocess, preprocess, profiling
from .errors import WorkerError
from .protocol import ProtocolError, decode_tensor, encode_tensor


@dataclass
class Model:
    key: str
    spec: dict[str, Any]
    runner: backends.LoadedModel
    image: preprocess.ImageSpec | None
    labels: list[str]
    load_ms: float
    requests: int = 0


@dataclass
class WorkerService:
    framework: str
    device: str
    threads: int = 0
    max_pixels: int = preprocess.DEFAULT_MAX_PIXELS
    pool: int = 1  # requests run at once (the worker's threads), which the framework's threading takes into account
    models: dict[str, Model] = field(default_factory=dict)

    def hello(self) -> dict[str, Any]:
        return {
            "op": "hello",
            "pid": os.getpid(),
            "framework": self.framework,
            "framework_version": backends.framework_version(self.framework),
            "device": self.device,
        }

    def load(self, msg: dict[str, Any]) -> dict[str, Any]:
        key = msg["model"]
        if key in self.models:
            return {"load_ms": self.models[key].load_ms, "already": True}
        spec = msg["spec"]
        started = time.perf_counter()
        runner = backends.load(self.framework, msg["path"], self.device, self.threads, spec, self.pool)
        image_inputs = [i for i in spec["inputs"] if i.get("type") == "image"]
        image = preprocess.ImageSpec.from_wire(image_inputs[0]) if image_inputs else None
        load_ms = (time.perf_counter() - started) * 1e3
        self.models[key] = Model(key, spec, runner, image, list(spec.get("labels") or []), load_ms)
        return {"load_ms": load_ms, "already": False}

    def unload(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"unloaded": self.models.pop(msg["model"], None) is not None}

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "models": {k: {"requests": m.requests, "load_ms": m.load_ms} for k, m in self.models.items()},
        }

    def infer(self, msg: dict[str, Any], received: float) -> dict[str, Any]:
        started = time.perf_counter()
        model = self.models.get(msg["model"])
        if model is None:
            raise WorkerError("not_loaded", f"model {msg['model']} is not loaded in this worker")
        model.requests += 1
        timings: dict[str, Any] = {"queue": (started - received) * 1e3}
        if "images" in msg:
            feed = self._images_to_feed(model, msg["images"], timings)
        else:
            feed = self._tensors_to_feed(model, msg.get("tensors"))
        ops: list[profiling.Op] | None = None
        if msg.get("profile"):  # trace level framework: the framework's profiler on for this one run
            outputs, ops, timings["compute"] = model.runner.run_profiled(feed)
        else:
            t0 = time.perf_counter()
            outputs = model.runner.run(feed)
            timings["compute"] = (time.perf_counter() - t0) * 1e3
        # when the request arrived, on the wall clock: lets the node place the stages above as spans of a trace
        received_unix_ns = time.time_ns() - int((time.perf_counter() - received) * 1e9)
        reply: dict[str, Any] = {"timings": timings, "received_unix_ns": received_unix_ns}
        if ops is not None:
            reply["ops"] = [op.to_wire() for op in profiling.cap(ops)]
        t0 = time.perf_counter()
        top_k = msg.get("top_k")
        output_spec = model.spec["outputs"][0]
        if top_k and output_spec.get("type") == "classification":
            reply["results"] = self._classify(model, outputs[output_spec["name"]], int(top_k))
        else:
            wanted = msg.get("outputs") or list(outputs)
            missing = [n for n in wanted if n not in outputs]
            if missing:
                raise WorkerError("bad_input", f"unknown output {missing[0]!r}; the model has {', '.join(outputs)}")
            reply["outputs"] = {n: encode_tensor(np.asarray(outputs[n])) for n in wanted}
        timings["postprocess"] = (time.perf_counter() - t0) * 1e3
        return reply

    def _images_to_feed(self, model: Model, images: Any, timings: dict[str, Any]) -> dict[str, np.ndarray]:
        if model.image is None:
            raise WorkerError("bad_input", f"model {model.key} takes tensors, not images")
        if not isinstance(images, list) or not images:
            raise WorkerError("bad_input", "images must be a non-empty list of encoded images")
        decode, prep, arrays = [], [], []
        for n, data in enumerate(images):
            t0 = time.perf_counter()
            try:
                image = preprocess.decode_image(data, max_pixels=self.max_pixels)
            except WorkerError as exc:
                raise WorkerError(exc.kind, f"input {n}: {exc.message}") from exc
            t1 = time.perf_counter()
            arrays.append(preprocess.image_to_array(image, model.image))
            t2 = time.perf_counter()
            decode.append((t1 - t0) * 1e3)
            prep.append((t2 - t1) * 1e3)
        timings["decode"], timings["preprocess"] = decode, prep
        return {model.spec["inputs"][0]["name"]: np.stack(arrays)}

    @staticmethod
    def _tensors_to_feed(model: Model, tensors: Any) -> dict[str, np.ndarray]:
        if not isinstance(tensors, dict):
            raise WorkerError("bad_input", "tensors must be a map of input name to tensor")
        names = [i["name"] for i in model.spec["inputs"]]
        if sorted(tensors) != sorted(names):
            raise WorkerError("bad_input", f"model {model.key} takes inputs {names}, got {sorted(tensors)}")
        try:
            return {name: decode_tensor(tensors[name]) for name in names}
        except ProtocolError as exc:
            raise WorkerError("bad_input", str(exc)) from exc

    @staticmethod
    def _classify(model: Model, logits: np.ndarray, k: int) -> list[dict[str, Any]]:
        transform = postprocess.TRANSFORMS[model.spec["outputs"][0].get("probabilities", "softmax")]
        scores = transform(np.asarray(logits).reshape(len(logits), -1))
        labels = model.labels
        results = []
        for row in scores:
            preds = [[i, p, labels[i] if i < len(labels) else str(i)] for i, p in postprocess.top_k(row, k)]
            results.append({"predictions": preds})
        return results
