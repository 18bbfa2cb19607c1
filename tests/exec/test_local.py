"""LocalExecutor with real worker processes: warm models, crash detection, restart, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carml_mesh.errors import BadRequest, WorkerUnavailable
from carml_mesh.exec.base import ModelSpec
from carml_mesh.exec.local import LocalExecutor, LocalExecutorConfig
from carml_mesh.exec.worker.protocol import decode_tensor, encode_tensor
from carml_mesh.store.artifacts import sha256_file

SPEC = {
    "inputs": [{"name": "input", "type": "tensor", "element_type": "float32", "dimensions": [1, 8, 8]}],
    "outputs": [{"name": "logits", "type": "classification", "probabilities": "softmax"}],
    "labels": [str(d) for d in range(10)],
}


def digits_spec(models_dir: Path, framework: str = "onnxruntime") -> ModelSpec:
    path = models_dir / "digits-cnn" / ("model.onnx" if framework == "onnxruntime" else "model.pt")
    return ModelSpec("digits-cnn", "1.0.0", framework, "cpu", sha256_file(path), str(path), SPEC)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_warm_inference_and_clean_close(models_dir, digits_heldout, tmp_path) -> None:
    x, y = digits_heldout
    spec = digits_spec(models_dir)
    async with LocalExecutor(tmp_path, LocalExecutorConfig(threads=1)) as executor:
        assert "onnxruntime" in executor.frameworks()
        load_ms = await executor.load(spec)
        assert load_ms > 0 and executor.is_loaded(spec)
        reply = await executor.infer(spec, {"tensors": {"input": encode_tensor(x[:16])}, "top_k": 1}, timeout=30)
        predicted = [r["predictions"][0][0] for r in reply["results"]]
        assert np.mean(np.asarray(predicted) == y[:16]) >= 0.9
        raw = await executor.infer(spec, {"tensors": {"input": encode_tensor(x[:4])}}, timeout=30)
        logits = decode_tensor(raw["outputs"]["logits"])
        assert logits.shape == (4, 10)
        assert list(logits.argmax(1)) == predicted[:4]
        (pid,) = executor.worker_pids()
        stats = executor.statistics()["workers"][0]
        assert stats["alive"] and stats["requests"] == 2 and stats["models"] == [spec.key]
    assert not alive(pid)  # aclose() waited for (and so reaped) the worker
    assert list(tmp_path.iterdir()) == []  # the socket is gone too


async def test_unload_frees_the_model_in_the_worker(models_dir, tmp_path) -> None:
    spec = digits_spec(models_dir)
    async with LocalExecutor(tmp_path, LocalExecutorConfig(threads=1)) as executor:
        await executor.load(spec)
        await executor.unload(spec)
        assert not executor.is_loaded(spec) and executor.statistics()["workers"][0]["models"] == []
        await executor.unload(spec)  # twice is fine
        # a load in flight while the model is withdrawn: it ends loaded in the worker, and a second unload frees it
        loading = asyncio.ensure_future(executor.load(spec))
        await asyncio.sleep(0)
        await executor.unload(spec)
        await loading
        await executor.unload(spec)
        assert not executor.is_loaded(spec)
        (slot,) = executor._slots.values()
        assert slot.worker is not None and spec.key not in slot.worker.loaded


async def test_worker_crash_fails_in_flight_with_503_and_restarts(models_dir, digits_heldout, tmp_path) -> None:
    x, y = digits_heldout
    spec = digits_spec(models_dir)
    config = LocalExecutorConfig(threads=1, restart_backoff=(0.05, 0.1))
    async with LocalExecutor(tmp_path, config) as executor:
        await executor.load(spec)
        (pid,) = executor.worker_pids()
        big = np.repeat(x[:1], 256, axis=0)
        in_flight = [
            asyncio.create_task(executor.infer(spec, {"tensors": {"input": encode_tensor(big)}}, timeout=30))
            for _ in range(30)
        ]
        await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert failed, "the kill came too late to catch any request in flight"
        for error in failed:
            assert isinstance(error, WorkerUnavailable) and error.status == 503, error
            assert "died" in str(error)
        # the supervisor restarts it and reloads the model; the next request is answered
        reply = await executor.infer(spec, {"tensors": {"input": encode_tensor(x[:8])}, "top_k": 1}, timeout=30)
        predicted = [r["predictions"][0][0] for r in reply["results"]]
        assert sum(p == int(t) for p, t in zip(predicted, y[:8], strict=True)) >= 7
        (new_pid,) = executor.worker_pids()
        assert new_pid != pid
        assert executor.statistics()["workers"][0]["restarts"] == 1


async def test_bad_input_answers_400_and_worker_survives(models_dir, tmp_path) -> None:
    spec = digits_spec(models_dir)
    async with LocalExecutor(tmp_path, LocalExecutorConfig(threads=1)) as executor:
        await executor.load(spec)
        (pid,) = executor.worker_pids()
        wrong = np.zeros((1, 3, 8, 8), np.float32)  # the model's graph refuses 3 channels
        with pytest.raises(BadRequest, match="onnxruntime rejected the input"):
            await executor.infer(spec, {"tensors": {"input": encode_tensor(wrong)}}, timeout=30)
        with pytest.raises(BadRequest, match="takes tensors, not images"):
            await executor.infer(spec, {"images": [b"x"]}, timeout=30)
        assert executor.worker_pids() == [pid]


async def test_pytorch_worker(models_dir, digits_heldout, tmp_path) -> None:
    x, y = digits_heldout
    spec = digits_spec(models_dir, "pytorch")
    async with LocalExecutor(tmp_path, LocalExecutorConfig(threads=1)) as executor:
        reply = await executor.infer(spec, {"tensors": {"input": encode_tensor(x[:32])}, "top_k": 1}, timeout=60)
        predicted = [r["predictions"][0][0] for r in reply["results"]]
        assert np.mean(np.asarray(predicted) == y[:32]) >= 0.9


async def test_missing_framework_is_503(tmp_path, models_dir) -> None:
    spec = ModelSpec("m", "1", "tensorflow", "cpu", "0" * 64, "/nonexistent", SPEC)
    async with LocalExecutor(tmp_path) as executor:
        with pytest.raises(WorkerUnavailable, match="tensorflow is not installed"):
            await executor.infer(spec, {"tensors": {}}, timeout=5)


def test_worker_program_does_not_depend_on_the_node() -> None:
    """The worker runs in containers holding only numpy, msgpack, Pillow and a framework."""
    code = (
        "import sys, carml_mesh.exec.worker.main, carml_mesh.exec.worker.service\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'yaml', 'packaging', 'torch',"
        " 'onnxruntime') or m.startswith(('carml_mesh.node', 'carml_mesh.web', 'carml_mesh.store',"
        " 'carml_mesh.manifest', 'carml_mesh.errors')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


async def test_close_during_a_worker_start_leaves_no_worker(models_dir, tmp_path) -> None:
    """aclose() while a load is starting the worker: the started worker must not outlive the executor."""
    import gc

    spec = digits_spec(models_dir)
    executor = LocalExecutor(tmp_path, LocalExecutorConfig(threads=1))
    await executor.start()
    load = asyncio.create_task(executor.load(spec))
    for _ in range(400):  # until the worker's socket exists: the start is under way
        if any(tmp_path.iterdir()):
            break
        await asyncio.sleep(0.005)
    await executor.aclose()
    with pytest.raises(WorkerUnavailable, match="shutting down"):
        await load
    assert executor.worker_pids() == []
    assert list(tmp_path.iterdir()) == []
    gc.collect()  # an unclosed worker socket would be a ResourceWarning here (an error in this suite)
