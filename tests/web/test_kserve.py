"""The Open Inference Protocol on a real node, spoken by the official tritonclient (HTTP), unmodified."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from carml_mesh.node.node import Node


class Client:
    """tritonclient.http is gevent-based and bound to the thread that made it: keep it on one thread of its own,
    so the node, which runs on this test's event loop, keeps serving while the client blocks."""

    def __init__(self, url: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tritonclient")
        self.client = self.pool.submit(triton.InferenceServerClient, url=url, network_timeout=60.0).result()

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        async def call(*args, **kwargs):
            return await asyncio.get_running_loop().run_in_executor(self.pool, partial(method, *args, **kwargs))

        return call

    def close(self) -> None:
        self.pool.submit(self.client.close).result()
        self.pool.shutdown()


@pytest.fixture(scope="module")
def client(node: Node):
    c = Client(node.url().removeprefix("http://"))
    yield c
    c.close()


def cat_tensor(models_dir) -> np.ndarray:
    """The manifest's preprocessing done by the client: 224x224 bilinear, (x - 127) / 128, CHW."""
    image = Image.open(io.BytesIO((models_dir / "samples" / "chelsea.jpg").read_bytes())).convert("RGB")
    x = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
    return ((x - 127.0) / 128.0).transpose(2, 0, 1)[None].copy()


async def test_server_and_model_metadata(client) -> None:
    assert await client.is_server_live()
    assert await client.is_server_ready()
    meta = await client.get_server_metadata()
    assert meta["name"] == "carml-mesh" and "binary_tensor_data" in meta["extensions"]
    model = await client.get_model_metadata("digits-cnn")
    assert model["platform"] == "onnx_onnxv1" and model["versions"] == ["1.0.0"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert await client.is_model_ready("efficientnet-lite0")
    assert await client.is_model_ready("digits-cnn", "1.0.0")
    assert not await client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [True, False])
async def test_digits_infer(client, digits_heldout, binary: bool) -> None:
    x, y = digits_heldout
    inp = triton.InferInput("input", list(x[:32].shape), "FP32")
    inp.set_data_from_numpy(x[:32], binary_data=binary)
    out = triton.InferRequestedOutput("logits", binary_data=binary)
    result = await client.infer("digits-cnn", [inp], outputs=[out], request_id="r-1")
    logits = result.as_numpy("logits")
    assert logits.shape == (32, 10) and logits.dtype == np.float32
    assert float(np.mean(logits.argmax(1) == y[:32])) >= 0.9
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == "digits-cnn"


async def test_cat_through_kserve_both_frameworks(client, models_dir) -> None:
    x = cat_tensor(models_dir)
    tops = {}
    for framework in ("onnxruntime", "pytorch"):
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = await client.infer("efficientnet-lite0", [inp], parameters={"framework": framework})
        logits = result.as_numpy("logits")
        assert result.get_response()["parameters"]["framework"] == framework
        tops[framework] = int(logits.argmax())
    assert tops == {"onnxruntime": 285, "pytorch": 285}


async def test_classification_extension(client, digits_heldout) -> None:
    x, y = digits_heldout
    inp = triton.InferInput("input", [2, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(x[:2])
    out = triton.InferRequestedOutput("logits", class_count=3)
    result = await client.infer("digits-cnn", [inp], outputs=[out])
    rows = result.as_numpy("logits")
    assert rows.shape == (2, 3)
    first = rows[0][0].decode() if isinstance(rows[0][0], bytes) else rows[0][0]
    score, index, label = first.split(":")
    assert int(index) == int(y[0]) and label == str(y[0]) and float(score) > 0


async def test_errors_reach_the_client_with_a_message(client) -> None:
    bad = triton.InferInput("input", [1, 8, 8], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match=r"expected shape \[N, 1, 8, 8\]"):
        await client.infer("digits-cnn", [bad])
    wrong_type = triton.InferInput("input", [1, 1, 8, 8], "INT32")
    wrong_type.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.int32))
    with pytest.raises(InferenceServerException, match="expected element type float32, got int32"):
        await client.infer("digits-cnn", [wrong_type])
    unknown = triton.InferInput("pixels", [1, 1, 8, 8], "FP32")
    unknown.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match="no input 'pixels'"):
        await client.infer("digits-cnn", [unknown])
    with pytest.raises(InferenceServerException, match="unknown model"):
        await client.infer("nope", [bad])


async def test_raw_garbage_on_the_infer_endpoint(http) -> None:
    cases = [
        (b"\x00\x01garbage", {}, 400),
        (b'{"inputs": []}', {}, 400),
        (
            b'{"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": '
            b'{"binary_data_size": 256}}]}',
            {"Inference-Header-Content-Length": "x"},
            400,
        ),
        (b'{"inputs": [{"name": "input", "shape": [1000000000000], "datatype": "FP32", "data": [1]}]}', {}, 400),
    ]
    for body, headers, status in cases:
        async with http.post("/v2/models/digits-cnn/infer", data=body, headers=headers) as resp:
            assert resp.status == status
            assert (await resp.json())["error"]
    async with http.get("/v2/health/live") as resp:
        assert resp.status == 200
