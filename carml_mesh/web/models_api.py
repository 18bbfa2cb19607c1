"""Publishing, replication and withdrawal under /api: the HTTP side of node/publish.py and node/replication.py.

    POST   /api/models                               multipart: manifest + artifact.<framework> parts (+ labels)
    POST   /api/models/pull                          {"manifest": YAML, "source": URL}: fetch from a peer, publish
    POST   /api/deployments                          {"name", "version", "to"}: ask peers to pull from this node
    DELETE /api/models/{name}/versions/{version}     withdraw here (?everywhere=true: and on the peers that have it)
    GET    /api/artifacts/{sha256}                   a stored artifact, streamed

No client-supplied name is ever used as a path: part names select a framework from a fixed list, part file names
are ignored, artifacts go to temp files the store names, and manifest names are checked by the schema.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import (
    ArtifactMismatch,
    ArtifactTooLarge,
    BadRequest,
    ManifestError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from ..headers import FORWARDED
from ..manifest.loader import MAX_MANIFEST_BYTES, parse_manifest_text
from ..manifest.schema import FRAMEWORKS, NAME_RE, SHA256_RE, VERSION_RE, Manifest
from ..node.catalog import MAX_LABELS_BYTES
from ..node.replication import alive_peers, choose_peers, parse_target, resolve_source
from ..store.artifacts import Ingest
from . import forms

if TYPE_CHECKING:
    from ..node.node import Node

ARTIFACT_PART = "artifact."


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/models", publish)
    app.router.add_post("/api/models/pull", pull)
    app.router.add_delete("/api/models/{name}/versions/{version}", withdraw)
    app.router.add_post("/api/deployments", deploy)
    app.router.add_get("/api/artifacts/{sha256}", artifact)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"?{name}= must be true or false, got {value!r}")


# --- POST /api/models ---------------------------------------------------------------------------------------------


async def publish(request: web.Request) -> web.Response:
    node = _node(request)
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "publish with multipart/form-data: a 'manifest' part and one 'artifact.<framework>' part per framework"
        )
    replace = _flag(request, "replace")
    limit = node.config.max_artifact_bytes
    form = await forms.open_form(request)
    manifest: Manifest | None = None
    labels: tuple[str, ...] | None = None
    staged: dict[str, Ingest] = {}
    try:
        while (part := await form.next_part()) is not None:
            name = part.name
            if name == "manifest":
                if manifest is not None:
                    raise BadRequest("the form holds two 'manifest' parts")
                text = await part.text(MAX_MANIFEST_BYTES, "manifest")
                try:
                    manifest = parse_manifest_text(text, file="manifest")
                except ManifestError as exc:
                    raise BadRequest(str(exc)) from None
                node.publisher.check_free(manifest.name, manifest.version, replace=replace)  # before any upload
            elif name == "labels":
                if labels is not None:
                    raise BadRequest("the form holds two 'labels' parts")
                text = await part.text(MAX_LABELS_BYTES, "labels")
                labels = tuple(line.strip() for line in text.splitlines() if line.strip())
                if not labels:
                    raise BadRequest("the 'labels' part holds no label (one per line)")
            elif name.startswith(ARTIFACT_PART) and name[len(ARTIFACT_PART) :] in FRAMEWORKS:
                framework = name[len(ARTIFACT_PART) :]
                if framework in staged:
                    raise BadRequest(f"the form holds two {name!r} parts")
                if manifest is not None and manifest.framework(framework) is None:
                    raise BadRequest(f"{name}: the manifest has no {framework} framework")
                staged[framework] = ingest = node.store.ingest(limit=limit, label=name)
                await ingest.feed(part.chunks())
            else:
                allowed = ", ".join(f"{ARTIFACT_PART}{f}" for f in FRAMEWORKS)
                raise BadRequest(f"unknown form part {name[:80]!r}; send 'manifest', {allowed} and optionally 'labels'")
        if manifest is None:
            raise BadRequest("the form holds no 'manifest' part (the manifest's YAML text)")
        published = await node.publisher.publish(manifest, labels=labels, staged=staged, replace=replace)
    except ArtifactTooLarge as exc:
        raise PayloadTooLarge(f"{exc} (--max-artifact-mb); nothing was kept") from None
    except ArtifactMismatch as exc:
        raise BadRequest(str(exc)) from None
    finally:
        for ingest in staged.values():
            if not ingest.committed:
                ingest.abort()
    return web.json_response(published.to_dict(), status=200)


# --- POST /api/models/pull ----------------------------------------------------------------------------------------


async def _json_object(request: web.Request, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send a JSON body (Content-Type: application/json)")
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in doc]
    if missing:
        raise BadRequest(f"the field {missing[0]!r} is required")
    if not isinstance(doc.get("replace", False), bool):
        raise BadRequest("'replace' must be true or false")
    return doc


async def pull(request: web.Request) -> web.Response:
    node = _node(request)
    doc = await _json_object(request, ("manifest", "source", "replace"), ("manifest", "source"))
    if not isinstance(doc["manifest"], str):
        raise BadRequest("'manifest' must be the manifest's YAML text")
    if len(doc["manifest"].encode()) > MAX_MANIFEST_BYTES:
        raise PayloadTooLarge(f"'manifest' is over {MAX_MANIFEST_BYTES} bytes")
    # only from the mesh (or an origin the operator allowed): checked before any request leaves this node
    source = resolve_source(doc["source"], alive_peers(node.mesh, node.id, "", ""), node.config.pull_origins)
    published = await node.replicator.pull(doc["manifest"], source, replace=doc.get("replace", False))
    return web.json_response(published.to_dict())


# --- POST /api/deployments ----------------------------------------------------------------------------------------


async def deploy(request: web.Request) -> web.Response:
    node = _node(request)
    doc = await _json_object(request, ("name", "version", "to", "replace"), ("name", "to"))
    name, version = doc["name"], doc.get("version")
    if not isinstance(name, str) or (version is not None and not isinstance(version, str)):
        raise BadRequest("'name' and 'version' must be strings")
    target = parse_target(doc["to"])
    model = node.catalog.get(name, version)  # 404 names what this node serves: it must hold the model
    text = node.publisher.canonical_text(model)
    peers = choose_peers(
        alive_peers(node.mesh, node.id, model.name, model.version), target, self_id=node.id, self_name=node.name
    )
    # the source by node id: each peer resolves it to the URL its own gossip view has of this node
    results = await node.replicator.deploy(text, node.id, peers, replace=doc.get("replace", False))
    return web.json_response(
        {
            "name": model.name,
            "version": model.version,
            "source": {"node": node.id, "name": node.name, "url": node.public_url()},
            "to": target,
            "ok": all(r["ok"] for r in results),
            "results": results,
        }
    )


# --- DELETE /api/models/{name}/versions/{version} -----------------------------------------------------------------


async def withdraw(request: web.Request) -> web.Response:
    node = _node(request)
    name, version = request.match_info["name"], request.match_info["version"]
    if not NAME_RE.fullmatch(name) or not VERSION_RE.fullmatch(version):
        raise BadRequest(f"{name[:80]!r} {version[:40]!r} is not a valid model name and version")
    everywhere = _flag(request, "everywhere") and FORWARDED not in request.headers  # a peer never cascades
    local: dict[str, Any] = {"node": node.id, "name": node.name}
    try:
        await node.publisher.withdraw(name, version)
        local["ok"] = True
    except NotFound as exc:
        if not everywhere:
            raise
        local.update(ok=False, status=exc.status, error=str(exc))
    results = []
    if everywhere:
        peers = [p for p in alive_peers(node.mesh, node.id, name, version) if p.has_model]
        results = await node.replicator.withdraw(name, version, peers)
    return web.json_response(
        {"name": name, "version": version, "withdrawn": local.get("ok", False), "here": local, "results": results}
    )


# --- GET /api/artifacts/{sha256} ----------------------------------------------------------------------------------


async def artifact(request: web.Request) -> web.FileResponse:
    node = _node(request)
    sha256 = request.match_info["sha256"]
    if not SHA256_RE.fullmatch(sha256):
        raise BadRequest(f"{sha256[:80]!r} is not a sha256 digest (64 lowercase hex digits)")
    path = node.store.path(sha256)
    if not path.is_file():
        raise NotFound(f"artifact {sha256} is not in this node's store")
    return web.FileResponse(
        path, headers={"Content-Type": "application/octet-stream", "Cache-Control": "max-age=31536000, immutable"}
    )
