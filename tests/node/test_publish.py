"""Publishing on one real node (in process, real HTTP): uploads, digests, limits, traversal, conflicts, withdrawal,
pulls from a peer that lies, and the published model surviving a restart."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from yarl import URL

from carml_mesh.manifest.loader import parse_manifest_text
from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node

REPO = Path(__file__).resolve().parents[2]
TOKEN = "publish-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 1 << 20  # the digits artifacts are about 600 KB


def manifest_text(name: str = "digits-copy", version: str = "1.0.0", **artifacts: str) -> str:
    """digits-cnn's manifest under another name; ``artifacts`` replaces a framework's artifact mapping."""
    text = (REPO / "manifests" / "digits-cnn.yml").read_text()
    text = text.replace("name: digits-cnn", f"name: {name}").replace('version: "1.0.0"', f"version: {version}")
    for framework, artifact in artifacts.items():
        file = "model.onnx" if framework == "onnxruntime" else "model.pt"
        text = text.replace(f"{{path: ../build/models/digits-cnn/{file}}}", artifact)
    return text


def form(manifest: str | None, parts: dict[str, bytes] | None = None, **extra: tuple[bytes, str | None]):
    data = aiohttp.FormData()
    if manifest is not None:
        data.add_field("manifest", manifest, content_type="application/yaml")
    for name, content in (parts or {}).items():  # a file object: aiohttp warns about big bytes bodies
        data.add_field(name, io.BytesIO(content), filename="model.bin", content_type="application/octet-stream")
    for name, (content, filename) in extra.items():
        data.add_field(name, content, filename=filename, content_type="application/octet-stream")
    return data


def listing(node: Node) -> dict[str, list[str]]:
    """Every file the store and the published folder hold: what a failed publication must leave unchanged."""
    data = node.config.data_dir
    return {
        folder: sorted(os.listdir(data / folder))
        for folder in ("artifacts/tmp", "artifacts/sha256", "published")
        if (data / folder).is_dir()
    }


@pytest.fixture(scope="module")
def artifacts(models_dir: Path) -> dict[str, bytes]:
    return {
        "onnxruntime": (models_dir / "digits-cnn" / "model.onnx").read_bytes(),
        "pytorch": (models_dir / "digits-cnn" / "model.pt").read_bytes(),
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def node_config(data_dir: Path, **kw: object) -> NodeConfig:
    (data_dir / "manifests").mkdir(parents=True, exist_ok=True)
    defaults: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "manifests_dirs": (data_dir / "manifests",),
        "name": "publisher",
        "executor": "local",
        "gossip": False,
        "mdns": False,
        "preload": False,
        "api_token": TOKEN,
        "max_artifact_bytes": LIMIT,
    }
    return NodeConfig(**{**defaults, **kw})  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module")
async def liar() -> AsyncIterator[tuple[str, dict[str, bytes], list[dict[str, str]]]]:
    """A fake peer serving /api/artifacts/{sha256} from a dict it is given, recording the headers it got; not a member
    of any mesh, so the node under test allows its origin (--pull-allow-origin)."""
    served: dict[str, bytes] = {}
    seen: list[dict[str, str]] = []

    async def artifact(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        body = served.get(request.match_info["sha"])
        return web.Response(body=body) if body is not None else web.json_response({"error": "absent"}, status=404)

    app = web.Application()
    app.router.add_get("/api/artifacts/{sha}", artifact)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", served, seen
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def pnode(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, liar) -> AsyncIterator[Node]:
    data = tmp_path_factory.mktemp("publish-node")
    (data / "manifests").mkdir()
    text = (REPO / "manifests" / "digits-cnn.yml").read_text()
    (data / "manifests" / "digits-cnn.yml").write_text(text.replace("../build/models", str(models_dir)))
    async with Node(node_config(data, pull_origins=(liar[0],))) as node:
        await node.wait_ready()
        yield node


@pytest_asyncio.fixture(scope="module")
async def client(pnode: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=pnode.url(), headers=AUTH) as session:
        yield session


async def post_form(http: aiohttp.ClientSession, data: aiohttp.FormData, query: str = "") -> tuple[int, dict]:
    async with http.post("/api/models" + query, data=data) as resp:
        return resp.status, await resp.json()


async def test_publish_stores_verified_artifacts_and_a_canonical_manifest(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]
) -> None:
    manifest = manifest_text(onnxruntime=f"{{path: model.onnx, sha256: {sha(artifacts['onnxruntime'])}}}")
    parts = {f"artifact.{f}": data for f, data in artifacts.items()}
    status, doc = await post_form(client, form(manifest, parts))
    assert status == 200, doc
    assert {f["name"]: f["sha256"] for f in doc["frameworks"]} == {f: sha(d) for f, d in artifacts.items()}
    assert doc["replaced"] is False
    # content-addressed, read-only, nothing left in tmp
    for data in artifacts.values():
        path = pnode.store.path(sha(data))
        assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert listing(pnode)["artifacts/tmp"] == []
    # the canonical manifest: labels inline, artifacts by sha256 only, no path a client gave
    stored = pnode.config.data_dir / "published" / "digits-copy-1.0.0.yml"
    doc = yaml.safe_load(stored.read_text())
    assert [f["artifact"] for f in doc["frameworks"]] == [{"sha256": sha(d)} for d in artifacts.values()]
    assert doc["output"]["parameters"]["labels"] == [str(i) for i in range(10)]
    assert parse_manifest_text(stored.read_text()).name == "digits-copy"
    # served: listed, described as published, in the card; its artifacts are served to peers
    async with client.get("/api/models/digits-copy") as resp:
        model = await resp.json()
    assert model["published"] is True and all(f["available"] for f in model["frameworks"])
    _, card = pnode.card()
    assert {(m["name"], m["framework"]) for m in card["models"] if m["name"] == "digits-copy"} == {
        ("digits-copy", "onnxruntime"),
        ("digits-copy", "pytorch"),
    }
    async with aiohttp.ClientSession(base_url=pnode.url()) as anonymous:
        async with anonymous.get(f"/api/artifacts/{sha(artifacts['onnxruntime'])}") as resp:
            assert resp.status == 200 and await resp.read() == artifacts["onnxruntime"]
        async with anonymous.get(f"/api/artifacts/{'0' * 64}") as resp:
            assert resp.status == 404 and "not in this node's store" in (await resp.json())["error"]
        async with anonymous.get("/api/artifacts/ABC") as resp:
            assert resp.status == 400 and "not a sha256" in (await resp.json())["error"]
    # the same name and version again: 409, unless replace
    before = listing(pnode)
    status, doc = await post_form(client, form(manifest, parts))
    assert status == 409 and "is published on this node already; to replace it" in doc["error"]
    assert listing(pnode) == before
    status, doc = await post_form(client, form(manifest, parts), "?replace=true")
    assert status == 200 and doc["replaced"] is True
    assert listing(pnode) == before


async def test_an_artifact_in_the_store_is_named_by_sha256_alone(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]
) -> None:
    await _publish_copy(client, artifacts)
    text = manifest_text(
        version="2.0.0",
        onnxruntime=f"{{sha256: {sha(artifacts['onnxruntime'])}}}",
        pytorch=f"{{sha256: {sha(artifacts['pytorch'])}}}",
    )
    status, doc = await post_form(client, form(text))
    assert status == 200, doc
    assert pnode.catalog.get("digits-copy").version == "2.0.0"
    status, doc = await post_form(client, form(manifest_text(version="3", onnxruntime=f"{{sha256: {'a' * 64}}}")))
    assert status == 400 and f"sha256 {'a' * 64} (onnxruntime) is not in this node's store" in doc["error"]
    # a path in the manifest is never read by the node
    status, doc = await post_form(client, form(manifest_text(version="4")))
    assert status == 400 and "no artifact for onnxruntime" in doc["error"] and "never reads a path" in doc["error"]


async def _publish_copy(client: aiohttp.ClientSession, artifacts: dict[str, bytes], version: str = "1.0.0") -> None:
    parts = {f"artifact.{f}": data for f, data in artifacts.items()}
    status, doc = await post_form(client, form(manifest_text(version=version), parts), "?replace=true")
    assert status == 200, doc


async def test_a_wrong_sha256_refuses_the_model_and_keeps_nothing(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]
) -> None:
    before = listing(pnode)
    wrong = sha(b"something else")
    text = manifest_text(name="tampered", onnxruntime=f"{{path: model.onnx, sha256: {wrong}}}")
    fresh = artifacts["onnxruntime"] + b"\0"  # bytes the store does not hold yet, so a leak would show
    status, doc = await post_form(client, form(text, {"artifact.onnxruntime": fresh, "artifact.pytorch": b"pt"}))
    assert status == 400, doc
    assert "onnxruntime" in doc["error"] and wrong in doc["error"] and sha(fresh) in doc["error"]
    assert "nothing was kept" in doc["error"]
    assert listing(pnode) == before
    assert "tampered" not in pnode.catalog.names()


@pytest.mark.parametrize(
    ("name", "version"),
    [("../x", "1"), ("a/b", "1"), ("..", "1"), ("/etc/passwd", "1"), ("x", "../1"), ("x", "1/../../y"), ("x", "..")],
)
async def test_traversal_in_the_manifest_name_or_version_is_refused(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes], name: str, version: str
) -> None:
    before = listing(pnode)
    text = manifest_text(name=f'"{name}"', version=f'"{version}"')
    status, doc = await post_form(client, form(text, {"artifact.onnxruntime": artifacts["onnxruntime"] + b"x"}))
    assert status == 400, doc
    assert re.search(r"manifest: (name|version): .* does not match", doc["error"]), doc["error"]
    assert listing(pnode) == before


@pytest.mark.parametrize(
    "part", ["artifact.../x", "artifact./etc/passwd", "../artifact.onnxruntime", "artifact.", "artifact.onnx", "x"]
)
async def test_traversal_in_part_names_is_refused(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes], part: str
) -> None:
    before = listing(pnode)
    status, doc = await post_form(client, form(manifest_text(name="parts"), {part: artifacts["onnxruntime"] + b"y"}))
    assert status == 400 and "unknown form part" in doc["error"], doc
    assert listing(pnode) == before


async def test_part_file_names_are_never_used(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]
) -> None:
    evil = {
        "artifact.onnxruntime": (artifacts["onnxruntime"], "../../../evil.onnx"),
        "artifact.pytorch": (artifacts["pytorch"], "/tmp/evil.pt"),
    }
    status, doc = await post_form(client, form(manifest_text(name="named"), **evil))
    assert status == 200, doc
    found = [p for p in pnode.config.data_dir.parent.rglob("*evil*")] + list(Path("/tmp").glob("evil*"))
    assert found == []
    async with client.delete("/api/models/named/versions/1.0.0") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/models/..%2Fx/versions/1",
        "/api/models/x/versions/..%2F..%2Fnode-id",
        "/api/models/%2Fetc%2Fpasswd/versions/1",
    ],
)
async def test_traversal_in_withdraw_paths_is_refused(pnode: Node, client: aiohttp.ClientSession, path: str) -> None:
    before = listing(pnode)
    async with client.delete(URL(path, encoded=True), allow_redirects=False) as resp:
        assert resp.status in (400, 404), await resp.text()
    assert listing(pnode) == before and (pnode.config.data_dir / "node-id").exists()


async def test_a_file_name_shared_by_two_models_is_never_overwritten(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]
) -> None:
    parts = {"artifact.onnxruntime": artifacts["onnxruntime"], "artifact.pytorch": artifacts["pytorch"]}
    status, doc = await post_form(client, form(manifest_text(name="clash-1", version="0"), parts))
    assert status == 200, doc
    before = listing(pnode)
    status, doc = await post_form(client, form(manifest_text(name="clash", version="1-0"), parts), "?replace=true")
    assert status == 409 and "clash-1-0.yml holds clash-1 0" in doc["error"], doc
    assert listing(pnode) == before and pnode.catalog.find("clash", "1-0") is None
    async with client.delete("/api/models/clash-1/versions/0") as resp:
        assert resp.status == 200


async def test_an_oversized_artifact_is_413_and_leaves_no_partial_file(
    pnode: Node, client: aiohttp.ClientSession
) -> None:
    before = listing(pnode)
    big = os.urandom(LIMIT + 1)
    status, doc = await post_form(client, form(manifest_text(name="big"), {"artifact.onnxruntime": big}))
    assert status == 413 and f"exceeds the limit of {LIMIT} bytes" in doc["error"], doc
    assert listing(pnode) == before
    # the same with the manifest after the artifact, and a second artifact part after it
    data = form(None, {"artifact.onnxruntime": big, "artifact.pytorch": b"x" * 1000})
    data.add_field("manifest", manifest_text(name="big"))
    status, doc = await post_form(client, data)
    assert status == 413
    assert listing(pnode) == before
    async with client.get("/api/health") as resp:  # the node is fine
        assert resp.status == 200


async def test_malformed_publications_say_what_is_wrong(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]
) -> None:
    onnx = {"artifact.onnxruntime": artifacts["onnxruntime"]}
    cases = [
        (form("name: [unclosed", onnx), 400, "manifest: invalid YAML"),
        (form(manifest_text() + "colour: blue\n", onnx), 400, "manifest: colour: unknown field"),
        (form(None, onnx), 400, "no 'manifest' part"),
        (form(manifest_text(name="x1").replace("  - name: pytorch", "  - name: tensorflow"), onnx), 400, "tensorflow"),
    ]
    before = listing(pnode)
    for data, status, fragment in cases:
        got, doc = await post_form(client, data)
        assert got == status and fragment in doc["error"], (fragment, doc)
    async with client.post("/api/models", json={"manifest": "x"}) as resp:
        assert resp.status == 415
    for content_type, body in [
        ("multipart/form-data", b"--x--"),
        ("multipart/form-data; boundary=abc", b"no boundary here"),
    ]:
        async with client.post("/api/models", data=body, headers={"Content-Type": content_type}) as resp:
            assert resp.status == 400 and "malformed multipart body" in (await resp.json())["error"]
    async with client.post("/api/models?replace=maybe", data=form(manifest_text(), onnx)) as resp:
        assert resp.status == 400 and "replace" in (await resp.json())["error"]
    # the manifest names only onnxruntime: a pytorch part is refused
    text = manifest_text(name="one").split("  - name: pytorch")[0]
    parts = {"artifact.onnxruntime": artifacts["onnxruntime"], "artifact.pytorch": artifacts["pytorch"]}
    got, doc = await post_form(client, form(text, parts))
    assert got == 400 and "the manifest has no pytorch framework" in doc["error"]
    assert listing(pnode) == before


async def test_labels_given_by_path_come_as_a_part(
    pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]
) -> None:
    text = manifest_text(name="labelled").replace(
        'labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]', "labels: {path: labels.txt}"
    )
    onnx = {"artifact.onnxruntime": artifacts["onnxruntime"], "artifact.pytorch": artifacts["pytorch"]}
    status, doc = await post_form(client, form(text, onnx))
    assert status == 400 and "send the file as the part 'labels'" in doc["error"]
    data = form(text, onnx)
    data.add_field("labels", "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n")
    status, doc = await post_form(client, data)
    assert status == 200, doc
    assert pnode.catalog.get("labelled").labels[:3] == ("zero", "one", "two")
    stored = yaml.safe_load((pnode.config.data_dir / "published" / "labelled-1.0.0.yml").read_text())
    assert stored["output"]["parameters"]["labels"][9] == "nine"


async def test_the_token_guards_changes_and_leaves_reads_open(pnode: Node) -> None:
    async with aiohttp.ClientSession(base_url=pnode.url()) as anonymous:
        for method, path in [
            ("POST", "/api/models"),
            ("POST", "/api/models/pull"),
            ("POST", "/api/deployments"),
            ("DELETE", "/api/models/digits-copy/versions/1.0.0"),
            ("POST", "/api/no-such-thing"),  # an unknown write under /api is closed too
        ]:
            for headers, fragment in [
                ({}, "needs the node's API token"),
                ({"Authorization": "Bearer wrong"}, "the API token is wrong"),
                ({"Authorization": f"Basic {TOKEN}"}, "must use the Bearer scheme"),
                ({"Authorization": f"Bearer {TOKEN}x"}, "the API token is wrong"),
            ]:
                async with anonymous.request(method, path, headers=headers) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    assert fragment in (await resp.json())["error"]
        for path in ("/api/health", "/api/models", "/api/node", "/v2/models/digits-cnn", "/", "/static/app.js"):
            async with anonymous.get(path) as resp:
                assert resp.status == 200, path
        async with anonymous.post("/api/no-such-thing", headers=AUTH) as resp:
            assert resp.status in (404, 405)
    assert pnode.info()["auth"] == {"token": True, "protects": "changes"}


async def test_deployments_without_peers(pnode: Node, client: aiohttp.ClientSession, artifacts) -> None:
    await _publish_copy(client, artifacts)
    async with client.post("/api/deployments", json={"name": "digits-copy", "version": "1.0.0", "to": "all"}) as resp:
        doc = await resp.json()
    assert resp.status == 200 and doc["ok"] is True and doc["results"] == []
    for body, status, fragment in [
        ({"name": "digits-copy", "to": 2}, 409, "asked for 2 peer(s); 0 alive peer(s)"),
        ({"name": "digits-copy", "to": ["lab-9"]}, 404, "no alive peer is called 'lab-9'"),
        ({"name": "digits-copy", "to": 0}, 400, "at least 1 peer"),
        ({"name": "digits-copy", "to": "some"}, 400, "'to' must be"),
        ({"name": "nope", "to": "all"}, 404, "unknown model 'nope'"),
        ({"name": "digits-copy"}, 400, "'to' is required"),
        ({"name": "digits-copy", "to": "all", "extra": 1}, 400, "unknown field 'extra'"),
    ]:
        async with client.post("/api/deployments", json=body) as resp:
            doc = await resp.json()
        assert resp.status == status and fragment in doc["error"], (body, doc)


async def test_withdraw(pnode: Node, client: aiohttp.ClientSession, artifacts: dict[str, bytes]) -> None:
    await _publish_copy(client, artifacts, version="9.9")
    stored = pnode.config.data_dir / "published" / "digits-copy-9.9.yml"
    assert stored.exists() and "digits-copy@9.9" in {f"{m['name']}@{m['version']}" for m in pnode.card()[1]["models"]}
    async with client.delete("/api/models/digits-copy/versions/9.9") as resp:
        doc = await resp.json()
    assert resp.status == 200 and doc["withdrawn"] is True and doc["results"] == []
    assert not stored.exists() and pnode.catalog.find("digits-copy", "9.9") is None
    assert "digits-copy@9.9" not in {f"{m['name']}@{m['version']}" for m in pnode.card()[1]["models"]}
    assert pnode.store.has(sha(artifacts["onnxruntime"]))  # the artifact may stay
    async with client.delete("/api/models/digits-copy/versions/9.9") as resp:
        assert resp.status == 404
    async with client.delete("/api/models/digits-cnn/versions/1.0.0") as resp:  # from the manifests folder
        doc = await resp.json()
    assert resp.status == 409 and "comes from the manifest file" in doc["error"]


async def test_a_pull_refuses_a_peer_serving_other_bytes(pnode: Node, client: aiohttp.ClientSession, liar) -> None:
    source, served, seen = liar
    real, fake = os.urandom(4096), os.urandom(4096)
    text = manifest_text(name="pulled", onnxruntime=f"{{sha256: {sha(real)}}}").split("  - name: pytorch")[0]
    before = listing(pnode)
    served[sha(real)] = fake
    async with client.post("/api/models/pull", json={"manifest": text, "source": source}) as resp:
        doc = await resp.json()
    assert resp.status == 502, doc
    assert f"served the onnxruntime artifact with sha256 {sha(fake)}, but the manifest says {sha(real)}" in doc["error"]
    assert listing(pnode) == before and "pulled" not in pnode.catalog.names()
    assert seen[-1]["Authorization"] == f"Bearer {TOKEN}"  # node-to-node calls carry the mesh's token
    del served[sha(real)]
    async with client.post("/api/models/pull", json={"manifest": text, "source": source}) as resp:
        doc = await resp.json()
    assert resp.status == 502 and "answered 404: absent" in doc["error"]
    assert listing(pnode) == before
    served[sha(real)] = real
    async with client.post("/api/models/pull", json={"manifest": text, "source": source}) as resp:
        doc = await resp.json()
    assert resp.status == 200 and doc["unchanged"] is False, doc
    assert pnode.store.path(sha(real)).read_bytes() == real and listing(pnode)["artifacts/tmp"] == []
    async with client.post("/api/models/pull", json={"manifest": text, "source": source}) as resp:
        doc = await resp.json()
    assert resp.status == 200 and doc["unchanged"] is True  # pulling the same model again is a no-op
    for body, fragment in [
        ({"manifest": text, "source": "file:///etc/passwd"}, "must be an http:// or https:// URL"),
        ({"manifest": text, "source": source + "/api?x=1"}, "must be a base URL only"),
        ({"manifest": text, "source": "http://127.0.0.1:1"}, "is not an alive member of this mesh"),
        ({"manifest": manifest_text(name="x2"), "source": source}, "a pulled manifest must give each sha256"),
        ({"manifest": "name: [", "source": source}, "manifest: invalid YAML"),
        ({"manifest": text}, "'source' is required"),
    ]:
        async with client.post("/api/models/pull", json=body) as resp:
            doc = await resp.json()
        assert resp.status == 400 and fragment in doc["error"], (body, doc)
    async with client.delete("/api/models/pulled/versions/1.0.0") as resp:
        assert resp.status == 200


async def test_published_models_are_loaded_again_at_the_next_start(tmp_path: Path, artifacts) -> None:
    config = node_config(tmp_path / "data", api_token=None)
    async with Node(config) as node, aiohttp.ClientSession(base_url=node.url()) as http:
        await _publish_copy(http, artifacts)  # no token configured: publishing is open
        tmp = node.config.data_dir / "artifacts" / "tmp"
        (tmp / "ingest-leftover").write_bytes(b"a killed upload")
    async with Node(config) as node:
        model = node.catalog.get("digits-copy", "1.0.0")
        assert model.published and model.available_frameworks() == ["onnxruntime", "pytorch"]
        assert model.deployments["onnxruntime"].sha256 == sha(artifacts["onnxruntime"])
        assert node.catalog.problems == []
        assert os.listdir(tmp) == []  # what a killed upload left behind is cleared at start
