"""POST/GET /api/models/{name}/feedback: validation, storage, and the listing across two real joined nodes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from nodeproc import joined_nodes, node_config

from carml_mesh.node.node import Node


async def test_feedback_is_validated_kept_and_listed(http: aiohttp.ClientSession) -> None:
    comment = "<img src=x onerror=alert(1)> works & “fast”\nsecond line"
    async with http.post("/api/models/digits-cnn/feedback", json={"rating": 4, "comment": comment}) as resp:
        assert resp.status == 201
        row = await resp.json()
    assert row["model"] == "digits-cnn" and row["rating"] == 4 and row["comment"] == comment  # kept as given
    assert row["author"] == "" and len(row["id"]) == 32 and row["node"]["name"] == "test-node"
    async with http.post("/api/models/digits-cnn/feedback", json={"rating": 2, "author": "bo"}) as resp:
        assert resp.status == 201
    async with http.get("/api/models/digits-cnn/feedback") as resp:
        assert resp.status == 200
        listing = await resp.json()
    assert listing["model"] == "digits-cnn" and listing["unreachable"] == []
    assert listing["count"] >= 2 and listing["items"][0]["author"] == "bo" and listing["items"][1]["id"] == row["id"]
    async with http.get("/api/models/digits-cnn/feedback", params={"limit": "1"}) as resp:
        assert len((await resp.json())["items"]) == 1


async def test_bad_feedback_is_400_naming_the_field_and_unknown_models_404(http: aiohttp.ClientSession) -> None:
    url = "/api/models/digits-cnn/feedback"
    for body, field in (
        ({"rating": 9}, "rating"),
        ({"comment": "no rating"}, "rating"),
        ({"rating": 3, "comment": "x" * 2001}, "comment"),
        ({"rating": 3, "author": ["a"]}, "author"),
        ({"rating": 3, "extra": 1}, "extra"),
    ):
        async with http.post(url, json=body) as resp:
            assert resp.status == 400, body
            assert field in (await resp.json())["error"]
    async with http.post(url, data=b"{", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    async with http.post(url, data=b"rating=5", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415
    async with http.post("/api/models/no-such-model/feedback", json={"rating": 5}) as resp:
        assert resp.status == 404 and "no-such-model" in (await resp.json())["error"]
    async with http.get("/api/models/no-such-model/feedback") as resp:
        assert resp.status == 404
    async with http.get("/api/models/Bad%20Name/feedback") as resp:
        assert resp.status == 400
    async with http.get(url, params={"scope": "everywhere"}) as resp:
        assert resp.status == 400 and "scope" in (await resp.json())["error"]
    async with http.get("/api/models/digits-cnn") as resp:  # the model's own route is still there
        assert resp.status == 200 and (await resp.json())["name"] == "digits-cnn"


@contextlib.asynccontextmanager
async def _two_nodes(tmp: Path) -> AsyncIterator[tuple[Node, Node]]:
    """a serves the demo models; b serves none and knows them only from a's card."""
    (tmp / "empty").mkdir()
    async with joined_nodes(node_config(tmp, "a"), node_config(tmp, "b", tmp / "empty")) as (a, b):
        assert a.peer_urls() == [b.url()] and b.peer_urls() == [a.url()]
        yield a, b


async def test_feedback_posted_on_either_node_is_listed_by_both(tmp_path: Path) -> None:
    async with _two_nodes(tmp_path) as (a, b), aiohttp.ClientSession() as http:
        # b does not serve digits-cnn, but a's card lists it: b takes feedback on it
        async with http.post(f"{b.url()}/api/models/digits-cnn/feedback", json={"rating": 5, "author": "b"}) as r:
            assert r.status == 201 and (await r.json())["node"]["id"] == b.id
        async with http.post(f"{a.url()}/api/models/digits-cnn/feedback", json={"rating": 2, "author": "a"}) as r:
            assert r.status == 201
        for node in (a, b):
            async with http.get(f"{node.url()}/api/models/digits-cnn/feedback") as resp:
                listing = await resp.json()
            assert listing["count"] == 2 and listing["average"] == 3.5 and listing["unreachable"] == []
            assert [i["author"] for i in listing["items"]] == ["a", "b"]  # newest first, from both nodes
            assert {i["node"]["id"] for i in listing["items"]} == {a.id, b.id}
        async with http.get(f"{b.url()}/api/models/digits-cnn/feedback", params={"scope": "local"}) as resp:
            local = await resp.json()
        assert local["count"] == 1 and local["items"][0]["author"] == "b"
        async with http.post(f"{b.url()}/api/models/nothing-here/feedback", json={"rating": 5}) as resp:
            assert resp.status == 404
