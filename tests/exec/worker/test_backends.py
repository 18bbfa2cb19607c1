"""The framework backends as the worker loads them: onnxruntime's threading follows the worker's cores and slots."""

from __future__ import annotations

import numpy as np
import pytest

from carml_mesh.exec.worker import backends


@pytest.mark.parametrize(("threads", "pool"), [(1, 1), (0, 1), (1, 2), (0, 2), (2, 3), (1, 64)])
def test_onnxruntime_spins_only_when_its_threads_fit_the_cores(models_dir, threads: int, pool: int) -> None:
    cores = backends.usable_cores()
    model = backends.OnnxRuntimeModel(str(models_dir / "digits-cnn" / "model.onnx"), "cpu", threads, pool)
    assert model.spin is ((threads or cores) * pool <= cores)
    out = model.run({"input": np.zeros((2, 1, 8, 8), np.float32)})
    assert next(iter(out.values())).shape == (2, 10)  # either way it runs
