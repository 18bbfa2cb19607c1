"""GET /api/node/utilisation: this node's workers (CPU over a window, resident memory) and its GPUs."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp


async def test_the_local_workers_with_cpu_and_memory(http: aiohttp.ClientSession, node, models_dir: Path) -> None:
    # a prediction makes sure an onnxruntime worker runs
    image = base64.b64encode((models_dir / "samples" / "digit-3.png").read_bytes()).decode()
    body = {"model": "digits-cnn", "framework": "onnxruntime", "inputs": [{"image": image}]}
    async with http.post("/api/predict", json=body) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get("/api/node/utilisation?window_ms=100") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["node"] == {"id": node.id, "name": node.name}
    assert doc["window_s"] >= 0.1 and doc["sampled_at"].endswith("+00:00")
    assert isinstance(doc["gpus"], list)
    onnx = [w for w in doc["workers"] if w["framework"] == "onnxruntime"]
    assert onnx, doc
    worker = onnx[0]
    assert worker["pid"] > 0 and worker["processes"] >= 1
    assert worker["rss_mb"] > 10 and worker["cpu_percent"] >= 0


async def test_a_window_out_of_range_names_the_parameter(http: aiohttp.ClientSession) -> None:
    for raw in ("5", "5000", "x", "-1", "1e3"):
        async with http.get(f"/api/node/utilisation?window_ms={raw}") as resp:
            assert resp.status == 400
            assert "window_ms" in (await resp.json())["error"]
