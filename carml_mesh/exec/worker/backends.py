"""Framework backends: load one artifact, run a batch. Frameworks are imported only when first used."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from . import profiling
from .errors import WorkerError

FRAMEWORKS = ("onnxruntime", "pytorch")


Profiled = tuple[dict[str, np.ndarray], list[profiling.Op], float]  # outputs, ops, the run's ms


class LoadedModel(Protocol):
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def run_profiled(self, inputs: dict[str, np.ndarray]) -> Profiled:
        """One run with the framework's profiler on: outputs, per-operator ops, and how long the run took."""
        ...


def framework_version(framework: str) -> str | None:
    dist = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "pytorch": ("torch",)}.get(framework, ())
    for name in dist:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class OnnxRuntimeModel:
    def __init__(self, path: str, device: str, threads: int, pool: int = 1) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.path = path
        self.threads = threads
        # onnxruntime's intra-op threads spin between operators by default, which pays when each has a core of its
        # own; when the worker's slots together run more threads than there are cores, the spinning steals the
        # cores the other slots compute on (efficientnet-lite0, 2 cores, 2 threads x pool 2: 91 img/s spinning,
        # 128 not; see scripts/bench/worker_config.py)
        self.spin = (threads or usable_cores()) * max(1, pool) <= usable_cores()
        options = self._options()
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
        self.providers = providers
        self.output_names = [o.name for o in self.session.get_outputs()]
        # onnxruntime profiles a whole session, from its creation to end_profiling(): a second session, made when
        # first asked for, serves one profiled run and is then replaced (in the background) by a fresh one
        self._profile_lock = threading.Lock()
        self._profiler: Any = None
        self._profile_dir: tempfile.TemporaryDirectory[str] | None = None

    def _options(self, profile_prefix: str | None = None) -> Any:
        options = self.ort.SessionOptions()
        if self.threads > 0:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return options

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self.session, inputs)

    def _run(self, session: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = session.run(self.output_names, inputs)
        except Exception as exc:
            raise WorkerError("bad_input", f"onnxruntime rejected the input: {_first_line(exc)}") from exc
        return dict(zip(self.output_names, outputs, strict=True))

    def _new_profiler(self) -> Any:
        if self._profile_dir is None:
            self._profile_dir = tempfile.TemporaryDirectory(prefix="carml-ort-profile-")
        options = self._options(f"{self._profile_dir.name}/run")
        try:
            return self.ort.InferenceSession(self.path, sess_options=options, providers=self.providers)
        except Exception as exc:
            raise WorkerError("internal", f"onnxruntime cannot load {self.path} for profiling: {exc}") from exc

    def _prepare_profiler(self) -> None:
        with self._profile_lock:
            if self._profiler is None:
                with contextlib.suppress(WorkerError):  # the next profiled run tries again, and reports it
                    self._profiler = self._new_profiler()

    def run_profiled(self, inputs: dict[str, np.ndarray]) -> Profiled:
        with self._profile_lock:
            session, self._profiler = self._profiler or self._new_profiler(), None
            t0 = time.perf_counter()
            try:
                outputs = self._run(session, inputs)
            finally:
                run_ms = (time.perf_counter() - t0) * 1e3
                path = session.end_profiling()
        ops = profiling.read_onnxruntime_profile(path) if path else []
        threading.Thread(target=self._prepare_profiler, name="ort-profiler", daemon=True).start()
        return outputs, ops, run_ms


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
            self.module = torch.jit.load(path, map_location=self.device).eval()  # type: ignore[no-untyped-call]
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

    def run_profiled(self, inputs: dict[str, np.ndarray]) -> Profiled:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with _TORCH_PROFILER, profile(activities=activities) as prof:  # one profiler at a time in a process
            t0 = time.perf_counter()
            outputs = self.run(inputs)
            run_ms = (time.perf_counter() - t0) * 1e3
        return outputs, profiling.torch_ops(prof.events()), run_ms


_TORCH_PROFILER = threading.Lock()


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's cpuset, taskset), not the host's count."""
    return len(os.sched_getaffinity(0)) or 1


def load(framework: str, path: str, device: str, threads: int, spec: dict[str, Any], pool: int = 1) -> LoadedModel:
    if framework == "onnxruntime":
        return OnnxRuntimeModel(path, device, threads, pool)
    if framework == "pytorch":
        inputs = [i["name"] for i in spec["inputs"]]
        outputs = [o["name"] for o in spec["outputs"]]
        return TorchScriptModel(path, device, threads, inputs, outputs)
    raise WorkerError("internal", f"unknown framework {framework!r}; this worker knows {', '.join(FRAMEWORKS)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
