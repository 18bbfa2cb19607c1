"""/api/benchmarks: start, poll, list, get, export, compare, cancel, errors; and a run seen from another node."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nodeproc import joined_nodes, manifests_with, node_config

from carml_mesh.web.auth import Access, access_for

SHORT = {"min_queries": 20, "min_duration_s": 0.1, "warmup_queries": 2}


async def poll(http: aiohttp.ClientSession, url: str, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(url) as resp:
                assert resp.status == 200
                doc = await resp.json()
            assert 0.0 <= doc["progress"]["fraction"] <= 1.0
            if doc["status"] != "running":
                return doc
            await asyncio.sleep(0.05)


async def post(http: aiohttp.ClientSession, body: dict[str, Any], base: str = "") -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base}/api/benchmarks", json=body) as resp:
        return resp.status, await resp.json()


async def test_post_poll_list_get_export_compare(http: aiohttp.ClientSession, node) -> None:
    body = {"scenario": "single-stream", "targets": [{"model": "digits-cnn"}], "name": "api run", **SHORT}
    status, answer = await post(http, body)
    assert status == 202, answer
    assert answer["status"] == "running" and answer["url"] == f"/api/benchmarks/{answer['id']}"
    doc = await poll(http, answer["url"])
    assert doc["status"] == "done" and doc["error"] is None
    assert doc["name"] == "api run" and doc["config"]["min_queries"] == 20
    assert doc["created_at"] <= doc["finished_at"]
    [result] = doc["results"]
    assert result["errors"] == 0 and result["queries"] >= 20 and result["latency_ms"]["p99"] > 0

    status, other = await post(http, {**body, "scenario": "offline", "batch_sizes": [1, 2], "name": "other"})
    assert status == 202
    other_doc = await poll(http, other["url"])
    assert other_doc["status"] == "done"

    async with http.get("/api/benchmarks") as resp:
        listing = await resp.json()
    assert listing["unreachable"] == []
    ids = [r["id"] for r in listing["runs"]]
    assert ids.index(other["id"]) < ids.index(answer["id"])  # newest first
    brief = next(r for r in listing["runs"] if r["id"] == answer["id"])
    assert brief["node"] == {"id": node.id, "name": node.name}
    assert brief["targets"] == [{"model": "digits-cnn"}]
    assert brief["summary"]["p50_ms"] == result["latency_ms"]["p50"]
    assert brief["summary"]["throughput_ips"] == result["throughput_ips"]

    async with http.get(f"/api/benchmarks/{answer['id']}/export?format=csv") as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        assert "attachment" in resp.headers["Content-Disposition"]
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert len(rows) == result["queries"]
    assert rows[0]["target"].startswith("digits-cnn@1.0.0/onnxruntime/cpu@")
    assert float(rows[0]["latency_ms"]) > 0 and rows[0]["ok"] == "1"
    async with http.get(f"/api/benchmarks/{answer['id']}/export?format=json") as resp:
        exported = await resp.json()
    assert len(exported["queries"]) == result["queries"]
    assert {"network_ms", "compute_ms", "issued_ms", "idx"} <= set(exported["queries"][0])

    async with http.get(f"/api/benchmarks/compare?ids={answer['id']},{other['id']}") as resp:
        compared = await resp.json()
    assert [r["id"] for r in compared["runs"]] == [answer["id"], other["id"]]
    assert [(r["run_id"], r["batch_size"]) for r in compared["rows"]] == [
        (answer["id"], 1),
        (other["id"], 1),
        (other["id"], 2),
    ]
    assert all(r["throughput_ips"] > 0 and r["p50_ms"] <= r["p99_ms"] for r in compared["rows"])


async def test_cancel_over_http(http: aiohttp.ClientSession) -> None:
    body = {"scenario": "single-stream", "targets": [{"model": "digits-cnn"}], "min_duration_s": 60}
    status, answer = await post(http, body)
    assert status == 202
    async with asyncio.timeout(20):
        while True:
            async with http.get(answer["url"]) as resp:
                if (await resp.json())["progress"]["done"] > 5:
                    break
            await asyncio.sleep(0.05)
    async with http.post(f"{answer['url']}/cancel") as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": answer["id"], "status": "cancelled"}
    doc = await poll(http, answer["url"])
    assert doc["status"] == "cancelled" and doc["results"][0]["queries"] > 5
    async with http.post(f"{answer['url']}/cancel") as resp:  # again: it stays as it ended
        assert (await resp.json())["status"] == "cancelled"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scenario": "single-stream", "targets": [{"model": "nope"}]}, "targets[0].model: unknown model 'nope'"),
        ({"scenario": "offline", "targets": ["digits-cnn"], "batch_sizes": [0]}, "batch_sizes[0]: must be an integer"),
        (
            {"scenario": "offline", "targets": ["digits-cnn"], "batch_sizes": [100000]},
            "batch_sizes[0]: must be at most",
        ),
        ({"scenario": "server", "targets": ["digits-cnn"]}, "qps:"),
        ({"targets": ["digits-cnn"]}, "scenario:"),
    ],
)
async def test_invalid_bodies_are_400_naming_the_field(http: aiohttp.ClientSession, body, message) -> None:
    status, answer = await post(http, body)
    assert status == 400
    assert message in answer["error"]


async def test_other_bad_requests(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/benchmarks", data=b"{nope", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400 and "malformed JSON" in (await resp.json())["error"]
    async with http.post("/api/benchmarks", data=b"x", headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 415 and "application/json" in (await resp.json())["error"]
    for method, path in [
        ("GET", "/api/benchmarks/feedfacefeedface"),
        ("GET", "/api/benchmarks/feedfacefeedface/export"),
        ("POST", "/api/benchmarks/feedfacefeedface/cancel"),
        ("GET", "/api/benchmarks/compare?ids=feedfacefeedface"),
    ]:
        async with http.request(method, path) as resp:
            assert resp.status == 404, path
            assert "feedfacefeedface" in (await resp.json())["error"]
    for path, message in [
        ("/api/benchmarks/compare", "ids:"),
        ("/api/benchmarks?limit=0", "limit:"),
        ("/api/benchmarks?scope=everywhere", "scope:"),
        ("/api/benchmarks/x/export?format=xml", "format:"),
    ]:
        async with http.get(path) as resp:
            assert resp.status == 400, path
            assert message in (await resp.json())["error"]


def test_starting_and_cancelling_need_the_token_reading_does_not() -> None:
    # a run loads the mesh's workers for as long as it lasts: a write, guarded like publishing
    assert access_for("POST", "/api/benchmarks") is Access.MUTATE
    assert access_for("POST", "/api/benchmarks/{id}/cancel") is Access.MUTATE
    for path in ("/api/benchmarks", "/api/benchmarks/{id}", "/api/benchmarks/{id}/export", "/api/benchmarks/compare"):
        assert access_for("GET", path) is Access.READ  # open unless --protect-all


# --- two nodes ----------------------------------------------------------------------------------------------------


async def test_a_run_on_one_node_is_visible_from_the_other(models_dir, tmp_path: Path) -> None:
    a_serves_digits = node_config(tmp_path, "a", manifests_with(tmp_path, "a", ["digits-cnn"]))
    b_serves_nothing = node_config(tmp_path, "b", manifests_with(tmp_path, "b", []))
    async with joined_nodes(a_serves_digits, b_serves_nothing) as (a, b), aiohttp.ClientSession() as http:
        body = {"scenario": "single-stream", "targets": [{"model": "digits-cnn", "node": "a"}], **SHORT}
        async with asyncio.timeout(20):  # b accepts the target once it has a's card
            while (answer := await post(http, body, b.url()))[0] != 202:
                assert "targets[0]" in answer[1]["error"]
                await asyncio.sleep(0.1)
        run_id = answer[1]["id"]
        doc = await poll(http, f"{a.url()}/api/benchmarks/{run_id}")  # asked of a: answered by b
        assert doc["status"] == "done", doc["error"]
        assert doc["node"]["name"] == "b"
        [result] = doc["results"]
        assert result["target"]["node"] == "a" and result["errors"] == 0
        # a's workers are sampled by b through a's GET /api/node/utilisation
        assert result["utilisation"]["rss_mb"] is not None and result["utilisation"]["rss_mb"] > 10
        # the environment holds the card of the node that served: a, fetched from a by b
        [card] = doc["environment"]["cards"].values()
        assert card["name"] == "a" and any(m["name"] == "digits-cnn" for m in card["models"])
        # the hop shows up as network time: b forwarded every query to a
        assert result["breakdown_ms"]["network"] > 0
        async with http.get(f"{a.url()}/api/benchmarks") as resp:
            listing = await resp.json()
        assert [r["id"] for r in listing["runs"]] == [run_id] and listing["unreachable"] == []
        async with http.get(f"{a.url()}/api/benchmarks?scope=local") as resp:
            assert (await resp.json())["runs"] == []
        async with http.get(f"{a.url()}/api/benchmarks/{run_id}/export?format=json") as resp:
            assert resp.status == 200
            assert len((await resp.json())["queries"]) == result["queries"]
        async with http.get(f"{a.url()}/api/benchmarks/compare?ids={run_id}") as resp:
            assert [r["run_id"] for r in (await resp.json())["rows"]] == [run_id]
