"""The carml REST API on a real node: real workers, real onnxruntime and torch, real sockets."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib
from typing import Any

import aiohttp
import msgpack
import numpy as np
import pytest
from helpers import CAT_CLASSES, png_bytes

from carml_mesh.node.node import Node

MSGPACK = "application/msgpack"


async def post_json(http: aiohttp.ClientSession, doc: object) -> tuple[int, dict]:
    async with http.post("/api/predict", json=doc) as resp:
        return resp.status, await resp.json()


async def post_msgpack(http: aiohttp.ClientSession, doc: object) -> tuple[int, dict]:
    body = msgpack.packb(doc, use_bin_type=True)
    async with http.post("/api/predict", data=body, headers={"Content-Type": MSGPACK, "Accept": MSGPACK}) as resp:
        raw = await resp.read()
        if resp.content_type == MSGPACK:
            return resp.status, msgpack.unpackb(raw)
        return resp.status, json.loads(raw)


def tensor_item(x: np.ndarray) -> dict:
    return {"tensor": {"dtype": "float32", "shape": list(x.shape), "data": x.astype(np.float32).tobytes()}}


async def test_health_and_node(http: aiohttp.ClientSession, node: Node) -> None:
    async with http.get("/api/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["ready"] is True
    async with http.get("/api/node") as resp:
        info = await resp.json()
    assert info["id"] == node.id and info["name"] == "test-node"
    assert info["hardware"]["cores"] >= 1 and info["hardware"]["memory_bytes"] > 0
    assert {f["name"] for f in info["frameworks"]} >= {"onnxruntime", "pytorch"}
    assert "cpu" in info["devices"]
    assert {m["name"] for m in info["models"]} == {"digits-cnn", "efficientnet-lite0"}
    assert info["problems"] == []
    alive = [w for w in info["workers"] if w["alive"]]
    assert {w["framework"] for w in alive} == {"onnxruntime", "pytorch"}


async def test_models_listing_and_detail(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/models") as resp:
        models = {m["name"]: m for m in (await resp.json())["models"]}
    eff = models["efficientnet-lite0"]
    assert eff["output"] == {"name": "logits", "type": "classification", "classes": 1000}
    for fw in eff["frameworks"]:
        assert fw["available"] and fw["loaded"] == ["cpu"] and len(fw["sha256"]) == 64
    async with http.get("/api/models/digits-cnn") as resp:
        detail = await resp.json()
    assert detail["manifest"]["inputs"][0]["dimensions"] == [1, 8, 8]
    assert detail["attributes"]["heldout_accuracy"] >= 0.95
    async with http.get("/api/models/nope") as resp:
        assert resp.status == 404
        assert "nope" in (await resp.json())["error"]


@pytest.mark.parametrize("framework", ["onnxruntime", "pytorch"])
async def test_cat_photo_is_a_cat_multipart(http: aiohttp.ClientSession, cat_jpeg: bytes, framework: str) -> None:
    form = aiohttp.FormData()
    form.add_field("model", "efficientnet-lite0")
    form.add_field("framework", framework)
    form.add_field("image", cat_jpeg, filename="chelsea.jpg", content_type="image/jpeg")
    async with http.post("/api/predict", data=form) as resp:
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    assert doc["framework"] == framework and doc["device"] == "cpu" and doc["node"]["name"] == "test-node"
    (result,) = doc["results"]
    top = result["predictions"][0]
    assert top["index"] in CAT_CLASSES, result["predictions"]
    assert "cat" in top["label"]
    assert len(result["predictions"]) == 5
    probs = [p["probability"] for p in result["predictions"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    t = result["timings_ms"]
    assert set(t) == {"decode", "preprocess", "queue", "compute", "postprocess", "total"}
    assert t["compute"] > 0 and t["decode"] > 0 and t["total"] >= t["compute"]


async def test_frameworks_agree_on_cat_and_coffee(http: aiohttp.ClientSession, models_dir, cat_jpeg) -> None:
    coffee = (models_dir / "samples" / "coffee.jpg").read_bytes()
    images = [{"image": base64.b64encode(cat_jpeg).decode()}, {"image": base64.b64encode(coffee).decode()}]
    answers = {}
    for framework in ("onnxruntime", "pytorch"):
        status, doc = await post_json(
            http, {"model": "efficientnet-lite0", "framework": framework, "inputs": images, "top_k": 3}
        )
        assert status == 200, doc
        answers[framework] = [r["predictions"] for r in doc["results"]]
    onnx, torch = answers["onnxruntime"], answers["pytorch"]
    assert [p[0]["index"] for p in onnx] == [p[0]["index"] for p in torch]
    assert onnx[0][0]["index"] == 285 and onnx[0][0]["label"] == "Egyptian cat"
    assert onnx[0][0]["probability"] > 0.7  # 0.81 with the manifest's 224x224 bilinear resize
    assert onnx[1][0]["index"] == 967 and onnx[1][0]["label"].startswith("espresso")
    for a, b in zip(onnx, torch, strict=True):
        assert a[0]["probability"] == pytest.approx(b[0]["probability"], abs=1e-3)


@pytest.mark.parametrize("framework", ["onnxruntime", "pytorch"])
async def test_digits_heldout_accuracy_through_the_api(http, digits_heldout, framework: str) -> None:
    x, y = digits_heldout
    predicted = []
    for start in range(0, len(x), 128):
        batch = x[start : start + 128]
        status, doc = await post_msgpack(
            http,
            {
                "model": "digits-cnn",
                "framework": framework,
                "top_k": 1,
                "inputs": [tensor_item(item) for item in batch],
            },
        )
        assert status == 200, doc
        assert doc["batch_size"] == len(batch)
        predicted += [r["predictions"][0]["index"] for r in doc["results"]]
    accuracy = float(np.mean(np.asarray(predicted) == y))
    assert accuracy >= 0.95, accuracy


async def test_digit_sample_images_through_preprocessing(http, models_dir) -> None:
    form = aiohttp.FormData()
    form.add_field("model", "digits-cnn")
    for d in range(10):
        form.add_field("image", (models_dir / "samples" / f"digit-{d}.png").read_bytes(), filename=f"{d}.png")
    async with http.post("/api/predict", data=form) as resp:
        doc = await resp.json()
    assert resp.status == 200, doc
    right = sum(r["predictions"][0]["label"] == str(d) for d, r in enumerate(doc["results"]))
    assert right >= 9, [r["predictions"][0] for r in doc["results"]]


async def test_json_tensor_as_nested_lists(http, digits_heldout) -> None:
    x, y = digits_heldout
    status, doc = await post_json(http, {"model": "digits-cnn", "inputs": [{"tensor": x[0].tolist()}]})
    assert status == 200, doc
    assert doc["results"][0]["predictions"][0]["index"] == int(y[0])


async def test_msgpack_answer_when_asked(http, digits_heldout) -> None:
    x, _ = digits_heldout
    status, doc = await post_msgpack(http, {"model": "digits-cnn", "inputs": [tensor_item(x[0])]})
    assert status == 200 and doc["model"] == "digits-cnn"


async def test_raw_outputs_of_a_classification_model_come_with_its_labels(http, digits_heldout) -> None:
    x, y = digits_heldout
    items = [tensor_item(x[0]), tensor_item(x[1])]
    status, doc = await post_msgpack(http, {"model": "digits-cnn", "outputs": True, "inputs": items})
    assert status == 200, doc
    logits = [np.frombuffer(r["outputs"]["logits"]["data"], np.float32) for r in doc["results"]]
    assert [int(v.argmax()) for v in logits] == [int(y[0]), int(y[1])]
    assert doc["labels"] == [str(n) for n in range(10)] and "predictions" not in doc["results"][0]
    status, doc = await post_msgpack(http, {"model": "digits-cnn", "outputs": ["logits"], "inputs": items[:1]})
    assert status == 200 and list(doc["results"][0]["outputs"]) == ["logits"]
    status, doc = await post_msgpack(http, {"model": "digits-cnn", "outputs": ["probs"], "inputs": items[:1]})
    assert status == 400 and "unknown output 'probs'" in doc["error"], doc
    for bad in ([], "logits", [""], 1):
        status, doc = await post_msgpack(http, {"model": "digits-cnn", "outputs": bad, "inputs": items[:1]})
        assert status == 400 and "'outputs' must be" in doc["error"], (bad, doc)


async def test_exact_dtypes_refuses_what_would_be_converted(http) -> None:
    item = {"tensor": {"dtype": "int64", "shape": [1, 8, 8], "data": np.zeros((1, 8, 8), np.int64).tobytes()}}
    status, body = await post_msgpack(http, {"model": "digits-cnn", "exact_dtypes": True, "inputs": [item]})
    assert status == 400 and "expected element type float32, got int64" in body["error"], body
    status, body = await post_msgpack(http, {"model": "digits-cnn", "exact_dtypes": "yes", "inputs": [item]})
    assert status == 400 and "'exact_dtypes' must be true or false" in body["error"], body


def bomb_png() -> bytes:
    """A valid 1x1 PNG whose header claims 40000 x 40000 pixels: refused before any pixel is decoded."""
    png = bytearray(png_bytes(np.zeros((1, 1), dtype=np.uint8)))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", 40000, 40000)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    return bytes(png)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("doc", "status", "fragment"),
    [
        ({"model": "nope", "inputs": [{"tensor": [1]}]}, 404, "unknown model 'nope'"),
        ({"model": "digits-cnn", "version": "9", "inputs": [{"tensor": [1]}]}, 404, "no version '9'"),
        ({"model": "digits-cnn", "framework": "tensorflow", "inputs": [{"tensor": [1]}]}, 404, "no tensorflow"),
        ({"model": "digits-cnn", "device": "tpu", "inputs": [{"tensor": [1]}]}, 404, "device 'tpu'"),
        ({"model": "digits-cnn", "inputs": []}, 400, "non-empty list"),
        ({"inputs": [{"tensor": [1]}]}, 400, "'model' is required"),
        ({"model": "digits-cnn", "inputs": [{"tensor": [[1, 2], [3]]}]}, 400, "ragged"),
        ({"model": "digits-cnn", "inputs": [{"tensor": [1.0] * 64}]}, 400, "expected shape [N, 1, 8, 8]"),
        ({"model": "digits-cnn", "inputs": [{"tensor": {"shape": [1, 8, 8], "data": ["x"] * 64}}]}, 400, "numbers"),
        ({"model": "digits-cnn", "inputs": [{"tensor": {"dtype": "complex64", "data": [1]}}]}, 400, "dtype"),
        ({"model": "digits-cnn", "inputs": [{"tensor": {"shape": [1, 8, 8], "data": [1] * 63}}]}, 400, "63"),
        ({"model": "digits-cnn", "top_k": 0, "inputs": [{"tensor": [[[0] * 8] * 8]}]}, 400, "top_k"),
        ({"model": "digits-cnn", "colour": 1, "inputs": [{"tensor": [1]}]}, 400, "unknown field 'colour'"),
        ({"model": "efficientnet-lite0", "inputs": [{"image": "!!!"}]}, 400, "base64"),
        ({"model": "efficientnet-lite0", "inputs": [{"image": b64(b"not an image")}]}, 400, "cannot decode"),
        ({"model": "efficientnet-lite0", "inputs": [{"image": b64(bomb_png())}]}, 413, "pixels"),
        (
            {"model": "efficientnet-lite0", "inputs": [{"image": b64(b"\xff\xd8\xff\xe0" + b"\0" * 40)}]},
            400,
            "cannot decode",
        ),
    ],
)
async def test_bad_requests_get_clear_errors(http, doc, status: int, fragment: str) -> None:
    got, body = await post_json(http, doc)
    assert got == status, body
    assert fragment in body["error"], body["error"]
    assert "Traceback" not in body["error"]


async def test_wrong_dtype_in_msgpack_is_named(http) -> None:
    item = {"tensor": {"dtype": "int64", "shape": [1, 8, 8], "data": np.zeros((1, 8, 8), np.int64).tobytes()}}
    status, body = await post_msgpack(http, {"model": "digits-cnn", "inputs": [item]})
    assert status == 200  # int64 casts safely to float32 for /api/predict
    item = {"tensor": {"dtype": "float64", "shape": [2, 8, 8], "data": np.zeros((2, 8, 8)).tobytes()}}
    status, body = await post_msgpack(http, {"model": "digits-cnn", "inputs": [item]})
    assert status == 400 and "expected shape" in body["error"]
    item = {"tensor": {"dtype": "float32", "shape": [1, 8, 8], "data": b"\0" * 7}}
    status, body = await post_msgpack(http, {"model": "digits-cnn", "inputs": [item]})
    assert status == 400 and "needs 256 bytes, got 7" in body["error"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b"\xc1\xc1", MSGPACK, 400, "malformed msgpack"),
        (b"[1, 2]", "application/json", 400, "must be a map"),
        (b"hello", "text/plain", 415, "Content-Type text/plain"),
        (b"\x93\x01", MSGPACK, 400, "malformed msgpack"),
    ],
)
async def test_malformed_bodies(http, body: bytes, content_type: str, status: int, fragment: str) -> None:
    async with http.post("/api/predict", data=body, headers={"Content-Type": content_type}) as resp:
        assert resp.status == status
        assert fragment in (await resp.json())["error"]


async def test_oversized_body_is_413_and_node_stays_up(http, node: Node) -> None:
    huge = b"\0" * (node.config.max_body_bytes + 1024)
    async with http.post("/api/predict", data=io.BytesIO(huge), headers={"Content-Type": MSGPACK}) as resp:
        assert resp.status == 413
        assert "limit" in (await resp.json())["error"]
    form = aiohttp.FormData()
    form.add_field("model", "efficientnet-lite0")
    form.add_field("image", io.BytesIO(huge), filename="big.jpg")
    async with http.post("/api/predict", data=form) as resp:
        assert resp.status == 413
    async with http.get("/api/health") as resp:
        assert resp.status == 200


async def test_multipart_errors(http) -> None:
    form = aiohttp.FormData()
    form.add_field("model", "efficientnet-lite0")
    async with http.post("/api/predict", data=form) as resp:  # urlencoded, no file at all
        assert resp.status == 415
    form = aiohttp.FormData()
    form.add_field("model", "efficientnet-lite0")
    form.add_field("weird", "x", content_type="text/plain")
    form.add_field("image", b"x", filename="x.jpg")
    async with http.post("/api/predict", data=form) as resp:
        assert resp.status == 400 and "unknown form field 'weird'" in (await resp.json())["error"]


async def test_bad_input_does_not_disturb_concurrent_requests(http, digits_heldout) -> None:
    import asyncio

    x, y = digits_heldout
    good = [post_msgpack(http, {"model": "digits-cnn", "inputs": [tensor_item(x[i])]}) for i in range(20)]
    bad = [post_json(http, {"model": "efficientnet-lite0", "inputs": [{"image": b64(b"garbage")}]})] * 1
    results = await asyncio.gather(*good, *bad)
    for i, (status, doc) in enumerate(results[:20]):
        assert status == 200 and doc["results"][0]["predictions"][0]["index"] == int(y[i])
    assert results[20][0] == 400


async def test_openapi_and_samples(http) -> None:
    async with http.get("/api/openapi.json") as resp:
        doc = await resp.json()
    assert (
        doc["openapi"].startswith("3.") and "/api/predict" in doc["paths"] and "/v2/models/{name}/infer" in doc["paths"]
    )
    async with http.get("/api/samples") as resp:
        names = {s["name"] for s in (await resp.json())["samples"]}
    assert {"chelsea.jpg", "coffee.jpg"} <= names
    async with http.get("/samples/chelsea.jpg") as resp:
        assert resp.status == 200 and (await resp.read())[:2] == b"\xff\xd8"
    async with http.get("/samples/../../etc/passwd") as resp:
        assert resp.status in (403, 404)


async def test_page_is_served(http) -> None:
    async with http.get("/") as resp:
        assert resp.status == 200
        assert "<html" in (await resp.text()).lower()
    async with http.get("/static/app.js") as resp:
        assert resp.status == 200


async def post_raw_msgpack(http: aiohttp.ClientSession, body: bytes) -> tuple[int, dict]:
    async with http.post("/api/predict", data=body, headers={"Content-Type": MSGPACK, "Accept": MSGPACK}) as resp:
        raw = await resp.read()
        return resp.status, msgpack.unpackb(raw) if resp.content_type == MSGPACK else json.loads(raw)


async def test_large_msgpack_tensors_concurrently_each_get_their_own_answer(http) -> None:
    """602 KB tensors travel as views of their request's body buffer, which is reused once free, and merge into
    batches without being joined: under concurrency, each answer must still be the one its own tensor gets alone."""
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((3, 224, 224)).astype(np.float32) for _ in range(4)]

    def doc(x: np.ndarray) -> dict:
        return {"model": "efficientnet-lite0", "framework": "onnxruntime", "inputs": [tensor_item(x)], "top_k": 5}

    alone = []
    for x in xs:
        status, answer = await post_msgpack(http, doc(x))
        assert status == 200, answer
        alone.append(answer["results"][0]["predictions"])
    assert len({tuple(p["index"] for p in a) for a in alone}) > 1  # the tensors are told apart by the model
    answers = await asyncio.gather(*(post_msgpack(http, doc(xs[n % 4])) for n in range(24)))
    for n, (status, answer) in enumerate(answers):
        assert status == 200, answer
        got, want = answer["results"][0]["predictions"], alone[n % 4]
        assert [p["index"] for p in got] == [p["index"] for p in want]
        np.testing.assert_allclose([p["probability"] for p in got], [p["probability"] for p in want], atol=1e-5)


async def test_large_msgpack_bodies_are_checked_as_strictly(http) -> None:
    x = np.zeros((3, 224, 224), np.float32)
    good = {"model": "efficientnet-lite0", "inputs": [tensor_item(x)]}
    body = msgpack.packb(good, use_bin_type=True)
    status, answer = await post_raw_msgpack(http, body + b"\x00")
    assert status == 400 and "malformed msgpack" in answer["error"]
    status, answer = await post_raw_msgpack(http, body[:-10])
    assert status == 400 and "malformed msgpack" in answer["error"]
    short = {"model": "efficientnet-lite0", "inputs": [tensor_item(x)]}
    short["inputs"][0]["tensor"]["shape"] = [3, 224, 225]
    status, answer = await post_raw_msgpack(http, msgpack.packb(short, use_bin_type=True))
    assert status == 400 and "inputs[0].tensor" in answer["error"], answer
    wrong = {"model": "efficientnet-lite0", "inputs": [tensor_item(np.zeros((3, 112, 448), np.float32))]}
    status, answer = await post_raw_msgpack(http, msgpack.packb(wrong, use_bin_type=True))
    assert status == 400 and "expected shape" in answer["error"], answer
    named = {"model": b"m" * (70 << 10), "inputs": [tensor_item(x)]}
    status, answer = await post_raw_msgpack(http, msgpack.packb(named, use_bin_type=True))
    assert status == 400 and answer["error"] == "'model' must be a string, got bytes", answer


async def test_a_large_msgpack_body_without_a_length_is_read_too(http) -> None:
    """Chunked transfer encoding: no Content-Length to size a buffer by, so aiohttp's own read and limit."""
    x = np.random.default_rng(12).standard_normal((3, 224, 224)).astype(np.float32)
    doc = {"model": "efficientnet-lite0", "framework": "onnxruntime", "inputs": [tensor_item(x)], "top_k": 3}
    body = msgpack.packb(doc, use_bin_type=True)

    async def chunks() -> Any:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
    async with http.post("/api/predict", data=chunks(), headers=headers) as resp:
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        chunked = msgpack.unpackb(await resp.read())
    assert resp.status == 200, chunked
    status, sized = await post_msgpack(http, doc)
    assert status == 200
    assert [p["index"] for p in chunked["results"][0]["predictions"]] == [
        p["index"] for p in sized["results"][0]["predictions"]
    ]
