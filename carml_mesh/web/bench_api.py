"""Benchmarks over HTTP, across the mesh.

    POST /api/benchmarks                      a run (JSON, see bench/config.py) -> 202 {id, status, url}
    GET  /api/benchmarks                      the runs of every member, newest first (?scope=local: this node's)
    GET  /api/benchmarks/compare?ids=a,b      their results side by side, one row per configuration
    GET  /api/benchmarks/{id}                 one run: live progress while it runs, then its results
    POST /api/benchmarks/{id}/cancel          stop it; what it measured is kept
    GET  /api/benchmarks/{id}/export          raw per-query rows, ?format=csv (default) or json

A run lives on the node it was posted to; reads of another node's run are answered by asking the peers
(``?scope=local``, so a peer answers from its own database and never asks further). An unreachable peer is listed
under ``unreachable``. Starting and cancelling a run are writes: with an API token they need it (the auth rule for
writes under /api), since a run loads the mesh's workers for as long as it lasts.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..bench.config import Offers, parse_config
from ..bench.runner import BREAKDOWN_KEYS as BREAKDOWN_PARTS
from ..bench.store import EXPORT_COLUMNS
from ..errors import BadRequest, NotFound, ServiceError, UnsupportedMediaType
from ..gossip.messages import State
from . import peers

if TYPE_CHECKING:
    from ..bench.manager import BenchmarkManager
    from ..node.node import Node

MAX_COMPARE = 16
RUN_ID = re.compile(r"[0-9a-f]{16}")  # what BenchmarkManager makes; anything else is no run, and never sent to peers


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


class NotReady(ServiceError):
    status = 503


def _manager(request: web.Request) -> BenchmarkManager:
    manager = _node(request).benchmarks
    if manager is None:
        raise NotReady("benchmarks are not available yet: the node is starting")
    return manager


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/benchmarks", start)
    r.add_get("/api/benchmarks", list_runs)
    r.add_get("/api/benchmarks/compare", compare)  # before /{id}, which would match it
    r.add_get("/api/benchmarks/{id}", get_run)
    r.add_post("/api/benchmarks/{id}/cancel", cancel)
    r.add_get("/api/benchmarks/{id}/export", export)
    peers.install(app)


def offers(node: Node) -> Offers:
    """What a benchmark may target: the models this node and its alive peers serve, and the members."""
    models: dict[str, set[str]] = {}
    for m in node.catalog:
        models.setdefault(m.name, set()).update(m.available_frameworks())
    nodes = {node.id, node.name}
    if node.mesh is not None and node.mesh.gossip is not None:
        alive = {m.name for m in node.mesh.gossip.members() if m.state == State.ALIVE}
        for member_id, card in node.mesh.cards.items():
            if member_id not in alive or not card:
                continue
            nodes.update(str(x) for x in (member_id, card.get("name")) if x)
            for m in card.get("models") or []:
                if m.get("available"):
                    models.setdefault(str(m.get("name")), set()).add(str(m.get("framework")))
    return Offers({k: frozenset(v) for k, v in models.items()}, frozenset(nodes), node.config.max_batch)


async def start(request: web.Request) -> web.Response:
    node = _node(request)
    if request.content_type != "application/json":
        raise UnsupportedMediaType(f"send the benchmark as application/json, not {request.content_type or '(none)'}")
    try:
        doc = json.loads(await request.read())
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    config = parse_config(doc, offers(node))
    run = await _manager(request).start(config)
    return web.json_response(
        {"id": run.id, "status": run.status, "url": f"/api/benchmarks/{run.id}"},
        status=202,
        headers={"Location": f"/api/benchmarks/{run.id}"},
    )


async def list_runs(request: web.Request) -> web.Response:
    limit = peers.limit(request)
    runs = await _manager(request).list(limit)
    unreachable: list[str] = []
    if peers.scope(request) == "mesh":
        answers = await peers.ask_all(request, "GET", "/api/benchmarks", {"limit": str(limit)})
        runs, unreachable = peers.merge_newest_first(runs, answers, "runs", limit)
    return web.json_response({"runs": runs[:limit], "unreachable": unreachable})


def _check_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id):
        raise NotFound(f"no benchmark {run_id[:40]!r}: run ids are 16 hex digits")
    return run_id


async def _find(request: web.Request, run_id: str) -> dict[str, Any]:
    _check_id(run_id)
    here = await _manager(request).document(run_id)
    path = f"/api/benchmarks/{run_id}"
    doc = await peers.here_or_find_json(request, here, "GET", path, where=lambda d: d.get("id") == run_id)
    if doc is None:
        raise NotFound(f"no benchmark {run_id!r} in the mesh")
    return doc


async def get_run(request: web.Request) -> web.Response:
    return web.json_response(await _find(request, request.match_info["id"]))


async def cancel(request: web.Request) -> web.Response:
    run_id = _check_id(request.match_info["id"])
    manager = _manager(request)
    if await manager.document(run_id) is not None:
        return web.json_response(await manager.cancel(run_id))
    if peers.scope(request) == "mesh":
        found = await peers.find_json(request, "POST", f"/api/benchmarks/{run_id}/cancel")
        if found is not None:
            return web.json_response(found)
    raise NotFound(f"no benchmark {run_id!r} in the mesh")


async def export(request: web.Request) -> web.StreamResponse:
    run_id = request.match_info["id"]
    fmt = request.query.get("format", "csv")
    if fmt not in ("csv", "json"):
        raise BadRequest(f"format: must be csv or json, got {fmt!r}")
    _check_id(run_id)
    manager = _manager(request)
    if await manager.document(run_id) is None:
        if peers.scope(request) == "mesh":
            answer = await peers.find_one(request, "GET", f"/api/benchmarks/{run_id}/export", {"format": fmt})
            if answer is not None:
                return _export_response(run_id, fmt, answer.body)
        raise NotFound(f"no benchmark {run_id!r} in the mesh")
    # streamed a page of rows at a time: a long run has many, and neither side should hold them all
    resp = web.StreamResponse(headers=_export_headers(run_id, fmt))
    resp.content_type = "text/csv" if fmt == "csv" else "application/json"
    await resp.prepare(request)
    if fmt == "json":
        await resp.write(
            f'{{"id": {json.dumps(run_id)}, "columns": {json.dumps(list(EXPORT_COLUMNS))}, "queries": ['.encode()
        )
    else:
        await resp.write((",".join(EXPORT_COLUMNS) + "\n").encode())
    first = True
    async for page in manager.store.query_pages(run_id):
        if fmt == "json":
            text = ", ".join(json.dumps(row) for row in page)
            await resp.write((text if first else ", " + text).encode())
        else:
            out = io.StringIO()
            csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n").writerows(page)
            await resp.write(out.getvalue().encode())
        first = False
    if fmt == "json":
        await resp.write(b"]}")
    await resp.write_eof()
    return resp


def _export_headers(run_id: str, fmt: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="benchmark-{run_id}.{fmt}"'}


def _export_response(run_id: str, fmt: str, body: bytes) -> web.Response:
    return web.Response(
        body=body, content_type="text/csv" if fmt == "csv" else "application/json", headers=_export_headers(run_id, fmt)
    )


async def compare(request: web.Request) -> web.Response:
    ids = [i.strip() for i in request.query.get("ids", "").split(",") if i.strip()]
    if not ids:
        raise BadRequest("ids: give the runs to compare, comma-separated, e.g. ?ids=a1b2,c3d4")
    if len(ids) > MAX_COMPARE:
        raise BadRequest(f"ids: at most {MAX_COMPARE} runs, got {len(ids)}")
    docs = [await _find(request, run_id) for run_id in dict.fromkeys(ids)]
    rows = []
    for doc in docs:
        for result in doc.get("results") or []:
            latency = result.get("latency_ms") or {}
            rows.append(
                {
                    "run_id": doc["id"],
                    "run_name": doc.get("name"),
                    "scenario": doc.get("scenario"),
                    "target": result.get("target"),
                    "batch_size": result.get("batch_size"),
                    "concurrency": result.get("concurrency"),
                    "qps": result.get("qps"),
                    "throughput_ips": result.get("throughput_ips"),
                    "p50_ms": latency.get("p50"),
                    "p99_ms": latency.get("p99"),
                }
            )
    runs = [{k: v for k, v in doc.items() if k != "results"} for doc in docs]
    return web.json_response({"runs": runs, "rows": rows})


# --- the OpenAPI paths (merged into web/openapi.py's document) ------------------------------------------------------


def openapi_paths() -> dict[str, Any]:
    """The paths above, in OpenAPI 3.1; POST ones need the API token when one is set."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}

    def errors(*codes: int) -> dict[str, Any]:
        reasons = {
            400: "Bad input; the message names the field (or the query parameter: scope, limit, ids, format)",
            401: "The API token is missing or wrong",
            404: "No such run in the mesh",
            415: "Not application/json",
            503: "The node runs as many benchmarks as it allows, or is starting or stopping",
        }
        return {str(c): {"description": reasons[c], "content": error} for c in codes}

    def ok(schema: dict[str, Any], code: str = "200", description: str = "OK") -> dict[str, Any]:
        return {code: {"description": description, "content": {"application/json": {"schema": schema}}}}

    obj: dict[str, Any] = {"type": "object"}
    num = {"type": ["number", "null"]}
    target = {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("model", "version", "framework", "device", "node")},
        "required": ["model"],
    }
    body = {
        "type": "object",
        "required": ["scenario", "targets"],
        "properties": {
            "name": {"type": "string", "maxLength": 100},
            "scenario": {"enum": ["single-stream", "server", "offline"]},
            "targets": {"type": "array", "items": target, "minItems": 1, "maxItems": 16},
            "batch_sizes": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "concurrency": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 256}},
            "qps": {"type": "number", "exclusiveMinimum": 0},
            "p99_bound_ms": {"type": "number", "exclusiveMinimum": 0},
            "min_queries": {"type": "integer", "minimum": 1},
            "min_duration_s": {"type": "number", "minimum": 0, "maximum": 3600},
            "max_duration_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
            "warmup_queries": {"type": "integer", "minimum": 0},
            "seed": {"type": "integer", "minimum": 0},
            "input": {"enum": ["sample", "random"]},
        },
    }
    result = {
        "type": "object",
        "properties": {
            "target": obj,
            "batch_size": {"type": "integer"},
            "concurrency": {"type": "integer"},
            "qps": num,
            "queries": {"type": "integer"},
            "errors": {"type": "integer"},
            "duration_s": {"type": "number"},
            "throughput_qps": {"type": "number"},
            "throughput_ips": {"type": "number"},
            "latency_ms": {
                "type": "object",
                "properties": {k: num for k in ("mean", "p50", "p90", "p95", "p99", "max")},
            },
            "breakdown_ms": {"type": "object", "properties": {k: num for k in (*BREAKDOWN_PARTS, "total")}},
            "utilisation": {"type": "object", "properties": {k: num for k in ("cpu_percent", "rss_mb", "gpu_percent")}},
            "cdf": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "maxItems": 100},
            "search": obj,
        },
    }
    run = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "scenario": {"type": "string"},
            "status": {"enum": ["running", "done", "failed", "cancelled"]},
            "error": {"type": ["string", "null"]},
            "progress": obj,
            "config": obj,
            "environment": obj,
            "node": obj,
            "created_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "results": {"type": "array", "items": result},
        },
    }
    run_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    scope = {"name": "scope", "in": "query", "schema": {"enum": ["mesh", "local"]}}
    token: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "/api/benchmarks": {
            "post": {
                "summary": "Start a benchmark run on this node (MLPerf-style scenario, sweeps, many targets)",
                "security": token,
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": {
                    **ok({"type": "object"}, "202", "Started: poll its url"),
                    **errors(400, 401, 415, 503),
                },
            },
            "get": {
                "summary": "The runs of every member, newest first",
                "parameters": [
                    scope,
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {
                    **ok({"type": "object", "properties": {"runs": {"type": "array"}, "unreachable": {}}}),
                    **errors(400, 503),
                },
            },
        },
        "/api/benchmarks/compare": {
            "get": {
                "summary": "Runs side by side, one row per configuration",
                "parameters": [{"name": "ids", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {**ok(obj), **errors(400, 404, 503)},
            }
        },
        "/api/benchmarks/{id}": {
            "get": {
                "summary": "One run: live progress while it runs, then its results",
                "parameters": [run_id, scope],
                "responses": {**ok(run), **errors(400, 404, 503)},
            }
        },
        "/api/benchmarks/{id}/cancel": {
            "post": {
                "summary": "Cancel a run; what it measured is kept",
                "security": token,
                "parameters": [run_id, scope],
                "responses": {**ok(obj), **errors(400, 401, 404, 503)},
            }
        },
        "/api/benchmarks/{id}/export": {
            "get": {
                "summary": "The run's raw per-query rows",
                "parameters": [run_id, scope, {"name": "format", "in": "query", "schema": {"enum": ["csv", "json"]}}],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/csv": {"schema": {"type": "string"}}, "application/json": {"schema": obj}},
                    },
                    **errors(400, 404, 503),
                },
            }
        },
    }
