"""Framework backends: load one artifact, run a batch. Frameworks are imported only when first used."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .errors import WorkerError

FRAMEWORKS = ("onnxruntime", "pytorch")


class LoadedModel(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def framework_version(framework: str) -> str | None:
    dist = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "pytorch": ("torch",)}.get(framework, ())
    for name in dist:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class OnnxRuntimeModel:
    def __init__(self, path: str, device: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise WorkerError("internal", "device cuda asked for but onnxruntime has no CUDAExecutionProvider")
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]  # type: ignore[list-item]
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise WorkerError("internal", f"onnxruntime cannot load {path}: {exc}") from exc
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self.output_names, inputs)
        except Exception as exc:
            raise WorkerError("bad_input", f"onnxruntime rejected the input: {_first_line(exc)}") from exc
        return dict(zip(self.output_names, outputs, strict=True))


class TorchScriptModel:
    def __init__(
        self, path: str, device: str, threads: int, input_names: Sequence[str], output_names: Sequence[str]
    ) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise WorkerError("internal", "device cuda asked for but torch sees no CUDA device")
        self.torch = torch
        self.device = torch.device(device)
        try:
            self.module = torch.jit.load(path, map_location=self.device).eval()
        except Exception as exc:
            raise WorkerError("internal", f"torch cannot load {path}: {exc}") from exc
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        args = [torch.from_numpy(np.array(inputs[name], copy=True)).to(self.device) for name in self.input_names]
        try:
            with torch.inference_mode():
                result = self.module(*args)
        except Exception as exc:
            raise WorkerError("bad_input", f"torch rejected the input: {_first_line(exc)}") from exc
        tensors = list(result) if isinstance(result, list | tuple) else [result]
        if len(tensors) != len(self.output_names):
            raise WorkerError(
                "internal", f"model returned {len(tensors)} outputs, manifest names {len(self.output_names)}"
            )
        return {name: t.detach().cpu().numpy() for name, t in zip(self.output_names, tensors, strict=True)}


def load(framework: str, path: str, device: str, threads: int, spec: dict[str, Any]) -> LoadedModel:
    if framework == "onnxruntime":
        return OnnxRuntimeModel(path, device, threads)
    if framework == "pytorch":
        inputs = [i["name"] for i in spec["inputs"]]
        outputs = [o["name"] for o in spec["outputs"]]
        return TorchScriptModel(path, device, threads, inputs, outputs)
    raise WorkerError("internal", f"unknown framework {framework!r}; this worker knows {', '.join(FRAMEWORKS)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
