"""Publishing and replication across a mesh: three carml-node processes on 127.0.0.1, real gossip, real HTTP.

a: --api-token (changes need it, reads are open); b and c: the same token with --protect-all, so every call a node
makes to them (card fetches, pulls, forwarded requests) works only because peers send the token. The tests run in
order on one mesh: deploy with the CLI, then deploy by count and by name, forward under --protect-all, withdraw.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import pytest
from nodeproc import Proc, gossip_address, launch, node_config, stop, wait_ready

from carml_mesh.errors import BadRequest
from carml_mesh.headers import FORWARDED
from carml_mesh.node.node import Node
from carml_mesh.node.replication import Peer, choose_peers, parse_source, parse_target, resolve_source

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mesh-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MSGPACK = "application/msgpack"


def node(tmp: Path, name: str, *extra: str, env: dict[str, str] | None = None) -> Proc:
    """A node with a manifests folder of its own, empty: it serves only what is published to it."""
    folder = tmp / f"manifests-{name}"
    folder.mkdir()
    return launch(tmp, name, folder, *extra, env=env)


@pytest.fixture(scope="module")
def mesh(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Proc]]:
    tmp = tmp_path_factory.mktemp("replication")
    (tmp / "token").write_text(TOKEN + "\n")
    procs: dict[str, Proc] = {}
    try:
        procs["a"] = wait_ready(node(tmp, "a", "--api-token", TOKEN))
        seed = gossip_address(procs["a"].url)
        common = ("--protect-all", "--lazy", "--join", seed)
        procs["b"] = node(tmp, "b", "--api-token-file", str(tmp / "token"), *common)
        procs["c"] = node(tmp, "c", *common, env={"CARML_API_TOKEN": TOKEN})
        wait_ready(procs["b"])
        wait_ready(procs["c"])
        yield procs
    finally:
        for p in procs.values():
            stop(p)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "carml_mesh.node", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "CARML_API_TOKEN": TOKEN},
    )


async def cards(http: aiohttp.ClientSession, url: str) -> dict[str, list[str]]:
    """What a node knows of its alive peers' cards: member id -> models."""
    async with http.get(url + "/api/cluster", headers=AUTH) as resp:
        view = await resp.json()
    return {m["id"]: m["card"]["models"] for m in view["members"] if m["state"] == "alive" and m["card"]}


async def until(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.1)


async def predict(
    http: aiohttp.ClientSession, url: str, model: str, x: np.ndarray, *, here: bool = False
) -> tuple[int, dict]:
    """msgpack tensors, top-1; ``here`` sends the hop header, so the node serves it itself."""
    items = [{"tensor": {"dtype": "float32", "shape": [1, 8, 8], "data": v.astype(np.float32).tobytes()}} for v in x]
    body = msgpack.packb({"model": model, "top_k": 1, "inputs": items}, use_bin_type=True)
    headers = {"Content-Type": MSGPACK, "Accept": MSGPACK, **AUTH}
    if here:
        headers[FORWARDED] = "test"
    async with http.post(url + "/api/predict", data=body, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (msgpack.unpackb(raw) if resp.content_type == MSGPACK else json.loads(raw))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- pure parts ---------------------------------------------------------------------------------------------------


def test_choosing_peers() -> None:
    peers = [
        Peer("n1", "lab-1", "http://h1:1", load=3, has_model=False),
        Peer("n2", "lab-2", "http://h2:1", load=0, has_model=True),
        Peer("n3", "lab-3", "http://h3:1", load=0, has_model=False),
    ]
    assert [p.id for p in choose_peers(peers, "all", self_id="me", self_name="m")] == ["n1", "n2", "n3"]
    assert [p.id for p in choose_peers(peers, 2, self_id="me", self_name="m")] == ["n3", "n2"]
    assert [p.id for p in choose_peers(peers, ["lab-1", "n3", "me", "n1"], self_id="me", self_name="m")] == ["n1", "n3"]
    with pytest.raises(Exception, match=r"asked for 4 peer\(s\); 3 alive"):
        choose_peers(peers, 4, self_id="me", self_name="m")
    assert parse_target(["a", "a", "b"]) == ["a", "b"]
    for bad in (True, [], [""], {"a": 1}, "most", -1):
        with pytest.raises(Exception, match="'to'"):
            parse_target(bad)
    assert parse_source("http://10.0.0.5:7450/") == "http://10.0.0.5:7450"
    for bad in ("ftp://x", "http://", "http://u:p@h:1", "http://h:1/api", "http://h:1?x", 5):
        with pytest.raises(Exception, match="'source'"):
            parse_source(bad)


def test_a_pull_source_must_be_an_alive_member_or_an_allowed_origin() -> None:
    members = [Peer("n1", "lab-1", "http://10.0.0.5:7450", load=0, has_model=False)]
    assert resolve_source("n1", members) == "http://10.0.0.5:7450"  # by node id
    assert resolve_source("http://10.0.0.5:7450/", members) == "http://10.0.0.5:7450"  # by advertised URL
    assert resolve_source("HTTP://10.0.0.5:7450", members) == "http://10.0.0.5:7450"
    allowed = ("http://mirror.lab:8080",)
    assert resolve_source("http://MIRROR.lab:8080", members, allowed) == "http://mirror.lab:8080"
    assert resolve_source("http://[::1]:7450", [Peer("v6", "v6", "http://[::1]:7450", 0, False)]) == "http://[::1]:7450"
    for bad in (
        "http://10.0.0.5:7451",  # a member's host, another port
        "https://10.0.0.5:7450",  # another scheme
        "http://169.254.169.254",  # the cloud metadata service, the classic target
        "http://mirror.lab:8081",
    ):
        with pytest.raises(BadRequest, match="not an alive member of this mesh") as info:
            resolve_source(bad, members, allowed)
        assert "n1 (http://10.0.0.5:7450)" in str(info.value) and "--pull-allow-origin" in str(info.value)
    for not_an_id in ("lab-1", "n2"):  # a member's name is not unique: node ids only
        with pytest.raises(BadRequest, match=f"'{not_an_id}' is not the node id of an alive member.*n1 "):
            resolve_source(not_an_id, members, allowed)
    for malformed in ("ftp://x", "http://u:p@h:1", 5, ""):
        with pytest.raises(BadRequest, match="'source'"):
            resolve_source(malformed, members)


async def test_pull_sends_nothing_to_a_source_outside_the_mesh(models_dir: Path, tmp_path: Path) -> None:
    """A refused source gets no connection at all; the same origin, once allowed, is fetched from."""
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    onnx = models_dir / "digits-cnn" / "model.onnx"
    text = "\n".join(
        line
        for line in (REPO / "manifests" / "digits-cnn.yml").read_text().split("  - name: pytorch")[0].splitlines()
        if not line.lstrip().startswith("#")
    ).replace("name: digits-cnn", "name: digits-pulled")
    text = text.replace("{path: ../build/models/digits-cnn/model.onnx}", f"{{sha256: {sha(onnx)}}}")
    async with server:
        for allowed, status in (((), 400), ((origin,), 502)):
            config = node_config(tmp_path, f"puller-{status}", manifests=tmp_path / "none", pull_origins=allowed)
            async with Node(config) as puller, aiohttp.ClientSession() as http:
                body = {"manifest": text, "source": origin}
                async with http.post(puller.url() + "/api/models/pull", json=body) as resp:
                    doc = await resp.json()
                assert resp.status == status, doc
                if status == 400:
                    assert "not an alive member of this mesh" in doc["error"] and connections == 0
                else:
                    assert f"{origin}/api/artifacts/{sha(onnx)} answered 404" in doc["error"] and connections == 1


# --- the mesh -----------------------------------------------------------------------------------------------------


async def test_the_token_on_each_kind_of_node_and_between_them(mesh: dict[str, Proc]) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    async with aiohttp.ClientSession() as http:
        # a fetched the cards of b and c, which are --protect-all: its card fetches carry the token (and so do b's)
        await until(lambda: _has_cards(http, a.url, {b.node_id, c.node_id}))
        await until(lambda: _has_cards(http, b.url, {a.node_id, c.node_id}))
        async with http.post(a.url + "/api/models") as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.post(a.url + "/api/deployments", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401 and "wrong" in (await resp.json())["error"]
        async with http.get(a.url + "/api/models") as resp:
            assert resp.status == 200  # reads are open on a
        for path in ("/api/models", "/api/node", "/api/cluster", "/v2/health/live", f"/api/artifacts/{'0' * 64}"):
            async with http.get(b.url + path) as resp:
                assert resp.status == 401, path  # and closed on b
        for path in ("/api/health", "/", "/static/app.js"):
            async with http.get(b.url + path) as resp:
                assert resp.status == 200, path
        async with http.get(b.url + "/api/node", headers=AUTH) as resp:
            assert (await resp.json())["auth"] == {"token": True, "protects": "everything"}


async def _has_cards(http: aiohttp.ClientSession, url: str, ids: set[str]) -> bool:
    return ids <= set(await cards(http, url))


async def test_deploy_to_all_with_the_cli(mesh: dict[str, Proc], models_dir: Path, tmp_path: Path, digits_heldout):
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    onnx, pt = models_dir / "digits-cnn" / "model.onnx", models_dir / "digits-cnn" / "model.pt"
    shutil.copy(onnx, tmp_path / "model.onnx")  # the manifest's own relative path, for onnxruntime
    text = (REPO / "manifests" / "digits-cnn.yml").read_text().replace("name: digits-cnn", "name: digits-copy")
    text = text.replace("../build/models/digits-cnn/model.onnx", "model.onnx")
    (tmp_path / "digits-copy.yml").write_text(text)
    done = cli(
        "deploy", str(tmp_path / "digits-copy.yml"), "--artifact", f"pytorch={pt}", "--url", a.url, "--to", "all"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"published digits-copy 1.0.0 (onnxruntime {sha(onnx)[:12]}, pytorch {sha(pt)[:12]})" in done.stdout
    for peer in (b, c):
        assert re.search(rf"^{peer.node_id}\s+{peer.name}\s+ok$", done.stdout, re.M), done.stdout
    x, y = digits_heldout
    async with aiohttp.ClientSession() as http:
        for node in (a, b, c):  # each node serves it itself, from the artifacts it verified
            status, doc = await predict(http, node.url, "digits-copy", x[:20], here=True)
            assert status == 200 and doc["node"]["name"] == node.name, doc
            got = [r["predictions"][0]["index"] for r in doc["results"]]
            assert sum(g == t for g, t in zip(got, y[:20], strict=True)) >= 18
            async with http.get(node.url + "/api/models/digits-copy", headers=AUTH) as resp:
                model = await resp.json()
            assert model["published"] and {f["name"]: f["sha256"] for f in model["frameworks"]} == {
                "onnxruntime": sha(onnx),
                "pytorch": sha(pt),
            }
            assert (node.data / "published" / "digits-copy-1.0.0.yml").exists()
            assert os.listdir(node.data / "artifacts" / "tmp") == []
        status, doc = await predict(http, c.url, "digits-copy", x[20:21])  # routed as any request is
        assert status == 200 and doc["results"][0]["predictions"][0]["index"] == int(y[20])

        async def everyone_lists_it() -> bool:
            for url, others in ((a.url, (b, c)), (b.url, (a, c))):
                known = await cards(http, url)
                if not all("digits-copy@1.0.0" in known.get(o.node_id, []) for o in others):
                    return False
            return True

        await until(everyone_lists_it)


async def test_deploy_to_a_number_of_peers_and_by_name(mesh: dict[str, Proc], models_dir: Path) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    onnx = models_dir / "digits-cnn" / "model.onnx"
    text = (REPO / "manifests" / "digits-cnn.yml").read_text().replace("name: digits-cnn", "name: digits-small")
    text = text.split("  - name: pytorch")[0].replace('version: "1.0.0"', 'version: "2"')
    async with aiohttp.ClientSession(headers=AUTH) as http:
        form = aiohttp.FormData()
        form.add_field("manifest", text)
        form.add_field("artifact.onnxruntime", io.BytesIO(onnx.read_bytes()), filename="x")
        async with http.post(a.url + "/api/models", data=form) as resp:
            assert resp.status == 200, await resp.text()
        body = {"name": "digits-small", "version": "2"}
        async with http.post(a.url + "/api/deployments", json={**body, "to": 1}) as resp:
            doc = await resp.json()
        assert resp.status == 200 and doc["ok"] and len(doc["results"]) == 1, doc
        first = doc["results"][0]["node"]
        async with http.post(a.url + "/api/deployments", json={**body, "to": ["b", c.node_id, "a"]}) as resp:
            doc = await resp.json()
        assert resp.status == 200 and doc["ok"], doc
        results = {r["node"]: r for r in doc["results"]}
        assert set(results) == {b.node_id, c.node_id}
        assert results[first].get("unchanged") is True  # it had it already: an idempotent pull
        async with http.post(a.url + "/api/deployments", json={**body, "to": 3}) as resp:
            assert resp.status == 409 and "asked for 3 peer(s); 2 alive" in (await resp.json())["error"]

        async def a_knows_both_have_it() -> bool:
            known = await cards(http, a.url)
            return all("digits-small@2" in known.get(n.node_id, []) for n in (b, c))

        await until(a_knows_both_have_it)  # withdrawing everywhere asks the peers whose cards list it
        async with http.delete(a.url + "/api/models/digits-small/versions/2?everywhere=true") as resp:
            doc = await resp.json()
        assert resp.status == 200 and doc["withdrawn"] is True, doc
        assert {r["node"]: r["ok"] for r in doc["results"]} == {b.node_id: True, c.node_id: True}, doc
        for node in (b, c):
            assert not (node.data / "published" / "digits-small-2.yml").exists()


async def test_requests_are_forwarded_with_the_token(mesh: dict[str, Proc], digits_heldout) -> None:
    a = mesh["a"]
    x, y = digits_heldout
    async with aiohttp.ClientSession(headers=AUTH) as http:
        assert "digits-copy@1.0.0/onnxruntime" in " ".join(await worker_models(http, a.url))  # a served it
        async with http.delete(a.url + "/api/models/digits-copy/versions/1.0.0") as resp:
            doc = await resp.json()
        assert resp.status == 200 and doc["withdrawn"] and doc["results"] == [], doc  # here only
        assert not (a.data / "published" / "digits-copy-1.0.0.yml").exists()

        async def unloaded() -> bool:  # a's preload of the pytorch artifact may still have been in flight
            return not any(k.startswith("digits-copy@") for k in await worker_models(http, a.url))

        await until(unloaded)
        status, doc = await predict(http, a.url, "digits-copy", x[:3])  # a forwards to b or c (--protect-all)
        assert status == 200 and doc["node"]["name"] in ("b", "c"), doc
        assert [r["predictions"][0]["index"] for r in doc["results"]] == [int(v) for v in y[:3]]
        assert doc["route"]["attempts"][-1]["ok"] is True


async def worker_models(http: aiohttp.ClientSession, url: str) -> list[str]:
    async with http.get(url + "/api/node", headers=AUTH) as resp:
        return [k for w in (await resp.json())["workers"] for k in w["models"]]


async def test_withdraw_everywhere_with_the_cli(mesh: dict[str, Proc]) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    done = cli("withdraw", "digits-copy", "1.0.0", "--everywhere", "--url", a.url)
    assert done.returncode == 0, done.stdout + done.stderr
    for peer in (b, c):
        assert re.search(rf"^{peer.node_id}\s+{peer.name}\s+ok$", done.stdout, re.M), done.stdout
    for node in (b, c):
        assert not (node.data / "published" / "digits-copy-1.0.0.yml").exists()
    async with aiohttp.ClientSession() as http:

        async def nobody_lists_it() -> bool:
            known = await cards(http, a.url)
            return not any("digits-copy@1.0.0" in models for models in known.values())

        await until(nobody_lists_it)
        status, doc = await predict(http, a.url, "digits-copy", np.zeros((1, 8, 8), np.float32))
        assert status == 404 and "unknown model 'digits-copy'" in doc["error"]
