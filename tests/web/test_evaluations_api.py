"""/api/evaluations: the digits split and an uploaded zip through a real node; bad bodies and zips are 400s."""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from helpers import png_bytes
from nodeproc import joined_nodes, node_config

from carml_mesh.web.auth import Access, access_for

POLL_S = 0.05
PATIENCE_S = 120.0  # a bound on a hung evaluation, not a performance figure


async def _finished(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with asyncio.timeout(PATIENCE_S):
        while True:
            async with http.get(url) as resp:
                doc = await resp.json()
                assert resp.status == 200, doc
            if doc["status"] != "running":
                return doc
            assert 0 <= doc["progress"]["done"] <= doc["progress"]["total"] == doc["dataset"]["images"]
            await asyncio.sleep(POLL_S)


async def _post(http: aiohttp.ClientSession, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with http.post("/api/evaluations", **kw) as resp:
        return resp.status, await resp.json()


def _digits_zip(x: np.ndarray, y: np.ndarray) -> bytes:
    """The held-out digits as 8x8 PNGs in class folders 0..9 (grey levels 0..16 scaled to 0..255)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, (image, label) in enumerate(zip(x, y, strict=True)):
            pixels = np.rint(image[0] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            z.writestr(f"digits/{int(label)}/{n:04d}.png", png_bytes(pixels))
        z.writestr("digits/README.txt", "held-out split of sklearn digits")
    return buf.getvalue()


def _form(data: bytes, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("dataset", data, filename="digits.zip", content_type="application/zip")
    return form


@pytest.fixture(scope="module")
async def digits_run(http: aiohttp.ClientSession) -> dict[str, Any]:
    status, started = await _post(http, json={"model": "digits-cnn", "dataset": "digits", "framework": "onnxruntime"})
    assert status == 202, started
    assert started["status"] == "running" and started["url"] == f"/api/evaluations/{started['id']}"
    return await _finished(http, started["url"])


async def test_the_digits_split_scores_at_least_095(digits_run: dict[str, Any]) -> None:
    doc = digits_run
    assert doc["status"] == "done", doc["error"]
    assert doc["top1"] >= 0.95 and doc["top5"] >= doc["top1"]
    assert doc["model"] == "digits-cnn" and doc["version"] == "1.0.0"
    assert doc["framework"] == "onnxruntime" and doc["device"] == "cpu"
    assert doc["dataset"]["name"] == "digits" and doc["dataset"]["images"] == 450 and doc["dataset"]["classes"] == 10
    assert doc["progress"]["done"] == doc["progress"]["total"] == 450 and doc["progress"]["fraction"] == 1.0
    assert sorted(doc["per_class"]) == [str(d) for d in range(10)]
    assert sum(c["images"] for c in doc["per_class"].values()) == 450
    assert len(doc["confusions"]) <= 20
    counts = [c["count"] for c in doc["confusions"]]
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == round((1 - doc["top1"]) * 450)  # few classes: every confused pair is listed
    assert doc["created_at"] <= doc["finished_at"]


async def test_it_is_listed(http: aiohttp.ClientSession, digits_run: dict[str, Any], node) -> None:
    async with http.get("/api/evaluations") as resp:
        doc = await resp.json()
    assert resp.status == 200, doc
    assert doc["unreachable"] == []
    listed = {e["id"]: e for e in doc["evaluations"]}
    row = listed[digits_run["id"]]
    assert row["status"] == "done" and row["top1"] == digits_run["top1"]
    assert row["node"] == {"id": node.id, "name": node.name}
    created = [e["created_at"] for e in doc["evaluations"]]
    assert created == sorted(created, reverse=True)


async def test_a_zip_of_the_digits_scores_as_the_bundled_split(
    http: aiohttp.ClientSession, digits_heldout, digits_run: dict[str, Any]
) -> None:
    x, y = digits_heldout
    status, started = await _post(http, data=_form(_digits_zip(x, y), model="digits-cnn", framework="onnxruntime"))
    assert status == 202, started
    doc = await _finished(http, started["url"])
    assert doc["status"] == "done", doc["error"]
    assert doc["dataset"]["name"] == "digits.zip"
    assert doc["dataset"]["images"] == 450 and doc["dataset"]["classes"] == 10 and doc["dataset"]["skipped"] == 1
    assert doc["failed"] == 0
    assert doc["top1"] == digits_run["top1"]
    assert doc["per_class"] == digits_run["per_class"]


async def test_cancel(http: aiohttp.ClientSession, digits_heldout) -> None:
    x, y = digits_heldout
    status, started = await _post(http, data=_form(_digits_zip(x, y), model="digits-cnn", batch_size="1"))
    assert status == 202, started
    async with http.post(f"{started['url']}/cancel") as resp:
        cancelled = await resp.json()
    assert resp.status == 200, cancelled
    assert cancelled == {"id": started["id"], "status": "cancelled"}
    doc = await _finished(http, started["url"])
    assert doc["status"] == "cancelled" and doc["top1"] is None
    assert doc["progress"]["done"] < 450


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


PNG = png_bytes(np.zeros((8, 8), dtype=np.uint8))


@pytest.mark.parametrize(
    ("kw", "status", "message"),
    [
        ({"json": {"dataset": "digits"}}, 400, "the field 'model' is required"),
        ({"json": {"model": "digits-cnn"}}, 400, "'dataset' must be 'digits'"),
        ({"json": {"model": "digits-cnn", "dataset": "imagenet"}}, 400, "'dataset' must be 'digits'"),
        ({"json": {"model": "digits-cnn", "dataset": "digits", "colour": 1}}, 400, "unknown field 'colour'"),
        ({"json": {"model": 3, "dataset": "digits"}}, 400, "'model' must be a string"),
        ({"json": {"model": "digits-cnn", "dataset": "digits", "batch_size": 0}}, 400, "'batch_size' must be"),
        ({"json": {"model": "digits-cnn", "dataset": "digits", "batch_size": "²"}}, 400, "'batch_size' must be"),
        ({"json": {"model": "digits-cnn", "dataset": "digits", "batch_size": True}}, 400, "'batch_size' must be"),
        ({"json": ["digits-cnn"]}, 400, "must be a JSON object"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ({"data": b"model=x", "headers": {"Content-Type": "text/plain"}}, 415, "multipart/form-data"),
        ({"json": {"model": "nope", "dataset": "digits"}}, 404, "unknown model 'nope'"),
        ({"json": {"model": "digits-cnn", "dataset": "digits", "framework": "tensorflow"}}, 404, "no tensorflow"),
        ({"json": {"model": "digits-cnn", "dataset": "digits", "node": "elsewhere"}}, 404, "node 'elsewhere'"),
        ({"json": {"model": "efficientnet-lite0", "dataset": "digits"}}, 400, "8x8 grey digits"),
    ],
)
async def test_bad_json_requests(http: aiohttp.ClientSession, kw: dict[str, Any], status: int, message: str) -> None:
    got, doc = await _post(http, **kw)
    assert got == status, doc
    assert message in doc["error"]


@pytest.mark.parametrize(
    ("data", "fields", "status", "message"),
    [
        (_zip({"3/a.png": PNG}), {}, 400, "the field 'model' is required"),
        (_zip({"3/a.png": PNG, "../4/b.png": PNG}), {"model": "digits-cnn"}, 400, "'../4/b.png' is a path with '..'"),
        (_zip({"3/a.png": PNG, "cat/b.png": PNG}), {"model": "digits-cnn"}, 400, "match no label of the model: 'cat'"),
        (_zip({"a.png": PNG, "notes.txt": b"x"}), {"model": "digits-cnn"}, 400, "no image in a class folder"),
        (b"PK not really a zip", {"model": "digits-cnn"}, 400, "not a readable zip"),
        (b"", {"model": "digits-cnn"}, 400, "'dataset' file is empty"),
        (_zip({"3/a.png": PNG}), {"model": "digits-cnn", "colour": "red"}, 400, "unknown form field 'colour'"),
        (_zip({"3/a.png": PNG}), {"model": "nope"}, 404, "unknown model 'nope'"),
    ],
)
async def test_bad_uploads(
    http: aiohttp.ClientSession, node, data: bytes, fields: dict[str, str], status: int, message: str
) -> None:
    got, doc = await _post(http, data=_form(data, **fields))
    assert got == status, doc
    assert message in doc["error"]
    assert not list(node.evaluations.tmp_dir.glob("*")), "the upload was left behind"


async def test_a_form_without_a_dataset_file(http: aiohttp.ClientSession) -> None:
    with aiohttp.MultipartWriter("form-data") as multipart:
        multipart.append("digits-cnn").set_content_disposition("form-data", name="model")
    got, doc = await _post(http, data=multipart)
    assert got == 400 and "no 'dataset' file" in doc["error"], doc
    form = aiohttp.FormData({"model": "digits-cnn"})  # no file: sent url-encoded
    got, doc = await _post(http, data=form)
    assert got == 400 and "no 'dataset' file" in doc["error"], doc


async def test_a_zip_bomb_is_413(http: aiohttp.ClientSession) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("3/a.png", PNG)
        z.writestr("3/bomb.png", b"\0" * (16 << 20))
    got, doc = await _post(http, data=_form(buf.getvalue(), model="digits-cnn"))
    assert got == 413 and "'3/bomb.png' expands" in doc["error"], doc


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/evaluations/" + "0" * 32, 404),
        ("GET", "/api/evaluations/not-an-id", 404),
        ("POST", "/api/evaluations/" + "0" * 32 + "/cancel", 404),
        ("GET", "/api/evaluations?scope=galaxy", 400),
        ("GET", "/api/evaluations?limit=0", 400),
    ],
)
async def test_unknown_ids_and_bad_queries(http: aiohttp.ClientSession, method: str, path: str, status: int) -> None:
    async with http.request(method, path) as resp:
        doc = await resp.json()
    assert resp.status == status, doc
    assert doc["error"]


# --- across the mesh ----------------------------------------------------------------------------------------------


async def test_an_evaluation_pinned_to_a_peer_is_seen_from_every_node(tmp_path: Path) -> None:
    pair = joined_nodes(node_config(tmp_path, "a"), node_config(tmp_path, "b"))
    async with pair as (a, b), aiohttp.ClientSession() as http:
        body = {"model": "digits-cnn", "dataset": "digits", "node": "a"}  # kept on b, inference on a
        async with http.post(f"{b.url()}/api/evaluations", json=body) as resp:
            started = await resp.json()
        assert resp.status == 202, started
        doc = await _finished(http, f"{a.url()}{started['url']}")  # a asks its peers for it
        assert doc["status"] == "done", doc["error"]
        assert doc["node"] == {"id": b.id, "name": "b"} and doc["served_by"]["name"] == "a"
        assert doc["top1"] >= 0.95
        async with http.get(f"{a.url()}/api/evaluations") as resp:
            listing = await resp.json()
        assert listing["unreachable"] == [] and [e["id"] for e in listing["evaluations"]] == [started["id"]]
        async with http.get(f"{a.url()}/api/evaluations", params={"scope": "local"}) as resp:
            assert (await resp.json())["evaluations"] == []
        async with http.get(f"{a.url()}{started['url']}", params={"scope": "local"}) as resp:
            assert resp.status == 404


async def test_an_imagenet_zip_with_folders_named_by_label_alias_and_index(
    http: aiohttp.ClientSession, models_dir
) -> None:
    samples = models_dir / "samples"
    data = _zip(
        {
            "set/Egyptian cat/chelsea.jpg": (samples / "chelsea.jpg").read_bytes(),  # a whole label
            "set/Espresso/coffee.jpg": (samples / "coffee.jpg").read_bytes(),  # case-insensitively
            "set/285/chelsea-again.jpg": (samples / "chelsea.jpg").read_bytes(),  # an index
        }
    )
    status, started = await _post(http, data=_form(data, model="efficientnet-lite0"))
    assert status == 202, started
    doc = await _finished(http, started["url"])
    assert doc["status"] == "done", doc["error"]
    assert doc["dataset"]["classes"] == 3 and doc["images"] == 3
    assert doc["config"]["mapping"] == {"285": 285, "Egyptian cat": 285, "Espresso": 967}
    assert doc["top1"] == 1.0 and doc["top5"] == 1.0
    assert sorted(doc["per_class"]) == ["Egyptian cat", "espresso"]


def test_starting_and_cancelling_need_the_token_reading_does_not() -> None:
    assert access_for("POST", "/api/evaluations") is Access.MUTATE
    assert access_for("POST", "/api/evaluations/{id}/cancel") is Access.MUTATE
    assert access_for("GET", "/api/evaluations") is Access.READ
    assert access_for("GET", "/api/evaluations/{id}") is Access.READ
