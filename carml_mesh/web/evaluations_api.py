"""Accuracy evaluations under /api (the HTTP side of bench/evaluations.py):

    POST /api/evaluations               JSON {"model", "version"?, "framework"?, "device"?, "node"?, "batch_size"?,
                                        "dataset": "digits"}, or multipart: the same fields and a file part 'dataset'
                                        (a zip of images in class subfolders) -> 202 {"id", "status", "url"}
    GET  /api/evaluations               every node's evaluations, newest first (?limit=, ?scope=local)
    GET  /api/evaluations/{id}          one evaluation, from whichever node holds it
    POST /api/evaluations/{id}/cancel   stop it (on whichever node runs it)

The upload is streamed to a temp file and its zip checked (names, symlinks, sizes, bombs, labels) before the answer,
so a bad dataset is a 400 naming what is wrong, never a failed evaluation later.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..bench.config import Target
from ..bench.datasets import DIGITS, Dataset
from ..bench.evaluator import DEFAULT_BATCH_SIZE
from ..errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from . import forms, peers

if TYPE_CHECKING:
    from ..node.node import Node

MAX_JSON_BYTES = 64 << 10
FIELDS = ("model", "version", "framework", "device", "node", "batch_size")
ID_RE = re.compile(r"^[0-9a-f]{32}$")


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/evaluations", post_evaluation)
    app.router.add_get("/api/evaluations", list_evaluations)
    app.router.add_get("/api/evaluations/{id}", get_evaluation)
    app.router.add_post("/api/evaluations/{id}/cancel", cancel_evaluation)
    peers.install(app)


# --- the request ----------------------------------------------------------------------------------------------------


def parse_fields(doc: dict[str, Any], max_batch: int) -> tuple[Target, int]:
    """The target and batch size of a request, or BadRequest naming the field."""
    for key in ("model", "version", "framework", "device", "node"):
        value = doc.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            raise BadRequest(f"{key!r} must be a string (at most 200 characters)")
    model = doc.get("model")
    if not model:
        raise BadRequest("the field 'model' is required: the name of the model to evaluate")
    batch_size = doc.get("batch_size", DEFAULT_BATCH_SIZE)
    if isinstance(batch_size, str) and batch_size.strip().isdecimal():
        batch_size = int(batch_size)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= max_batch:
        raise BadRequest(f"'batch_size' must be an integer from 1 to {max_batch}, got {batch_size!r}")
    target = Target(
        model=model,
        version=doc.get("version") or None,
        framework=doc.get("framework") or None,
        device=doc.get("device") or None,
        node=doc.get("node") or None,
    )
    return target, batch_size


async def post_evaluation(request: web.Request) -> web.Response:
    node = _node(request)
    evaluations = node.evaluations
    if request.content_type == "application/json":
        doc = await _json_body(request)
        unknown = sorted(set(doc) - {*FIELDS, "dataset"})
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}; fields are {', '.join((*FIELDS, 'dataset'))}")
        target, batch_size = parse_fields(doc, node.config.max_batch)
        if doc.get("dataset") != DIGITS:
            raise BadRequest(
                f"'dataset' must be {DIGITS!r} (the bundled digits split) in a JSON body, got "
                f"{str(doc.get('dataset'))[:40]!r}; upload a zip of class folders as multipart under 'dataset'"
            )
        model = node.catalog.get(target.model, target.version)
        dataset: Dataset = await evaluations.open_digits(model)
    elif request.content_type == "multipart/form-data":
        fields, dataset = await _multipart(request, node)
        try:
            target, batch_size = parse_fields(fields, node.config.max_batch)
        except BaseException:
            dataset.close()
            raise
    elif request.content_type == "application/x-www-form-urlencoded":
        raise BadRequest("the form holds no 'dataset' file: send it as multipart/form-data with a zip under 'dataset'")
    else:
        raise UnsupportedMediaType(
            "send JSON {model, dataset: 'digits'} or multipart/form-data with a 'dataset' zip file and a 'model' field"
        )
    started = await evaluations.start(target, dataset, batch_size=batch_size)
    return web.json_response(started, status=202)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise PayloadTooLarge(f"the JSON body is over {MAX_JSON_BYTES} bytes")
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object")
    return doc


async def _multipart(request: web.Request, node: Node) -> tuple[dict[str, str], Dataset]:
    """Form fields, and the 'dataset' part streamed to a temp file and opened as a checked zip."""
    evaluations = node.evaluations
    limit = evaluations.limits.max_total_bytes
    form = await forms.open_form(request)
    fields: dict[str, str] = {}
    upload: Path | None = None
    filename = "upload.zip"
    try:
        while (part := await form.next_part()) is not None:
            name = part.name
            if name == "dataset":
                if upload is not None:
                    raise BadRequest("the form holds two 'dataset' parts")
                upload = evaluations.temp_path()
                filename = Path(part.filename or filename).name[:100] or filename
                await _save(part, upload, limit)
            elif name in FIELDS:
                fields[name] = await part.field()
            else:
                raise BadRequest(f"unknown form field {name[:80]!r}; send {', '.join(FIELDS)} and a 'dataset' zip")
        if upload is None:
            raise BadRequest("the form holds no 'dataset' file: a zip of images in class subfolders (CLASS/IMAGE)")
        dataset = await evaluations.open_zip(upload, name=filename)
    except BaseException:
        if upload is not None:
            with contextlib.suppress(OSError):
                upload.unlink()
        raise
    return fields, dataset


async def _save(part: forms.FormPart, path: Path, limit: int) -> None:
    total = 0
    with path.open("wb") as f:
        async for chunk in part.chunks():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"the 'dataset' upload is over {limit} bytes")
            f.write(chunk)
    if total == 0:
        raise BadRequest("the 'dataset' file is empty")


# --- reading, across the mesh ---------------------------------------------------------------------------------------


def _id(request: web.Request) -> str:
    evaluation_id = request.match_info["id"]
    if not ID_RE.fullmatch(evaluation_id):
        raise NotFound(f"no evaluation {evaluation_id[:80]!r} (ids are 32 hex digits)")
    return evaluation_id


async def list_evaluations(request: web.Request) -> web.Response:
    node = _node(request)
    scope, limit = peers.scope(request), peers.limit(request)
    local = await node.evaluations.list(limit)
    if scope == "local":
        return web.json_response({"evaluations": local, "unreachable": []})
    answers = await peers.ask_all(request, "GET", "/api/evaluations", {"limit": str(limit)})
    merged, unreachable = peers.merge_newest_first(local, answers, "evaluations", limit)
    return web.json_response({"evaluations": merged, "unreachable": unreachable})


async def get_evaluation(request: web.Request) -> web.Response:
    evaluation_id = _id(request)
    here = await _node(request).evaluations.get(evaluation_id)
    doc = await peers.here_or_find_json(request, here, "GET", f"/api/evaluations/{evaluation_id}")
    if doc is None:
        raise NotFound(f"no evaluation {evaluation_id} on this node or its peers")
    return web.json_response(doc)


async def cancel_evaluation(request: web.Request) -> web.Response:
    evaluation_id = _id(request)
    here = await _node(request).evaluations.cancel(evaluation_id)
    doc = await peers.here_or_find_json(request, here, "POST", f"/api/evaluations/{evaluation_id}/cancel")
    if doc is None:
        raise NotFound(f"no evaluation {evaluation_id} on this node or its peers")
    return web.json_response(doc)
