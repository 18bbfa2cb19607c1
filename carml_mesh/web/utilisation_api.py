"""This node's worker utilisation over HTTP, so a benchmark run from another node can sample a remote target:

    GET /api/node/utilisation[?window_ms=200]   {"node": {id, name}, "workers": [{framework, device, pid, processes,
                                                 cpu_percent, rss_mb}], "gpus": [{index, utilisation_percent,
                                                 memory_used_mb, memory_total_mb}], "window_s", "sampled_at"}

CPU % is measured over ``window_ms`` (two /proc reads that far apart), in percent of one core, each worker with its
descendants (a container's init and the worker under it). Nothing runs between requests: a reading costs its
caller the window, and nobody else anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..bench.utilisation import DEFAULT_WINDOW_S, snapshot, worker_processes
from ..errors import BadRequest

if TYPE_CHECKING:
    from ..node.node import Node

PATH = "/api/node/utilisation"
MIN_WINDOW_MS = 20
MAX_WINDOW_MS = 2000


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, utilisation)


def window(request: web.Request) -> float:
    """``?window_ms=``, in seconds."""
    raw = request.query.get("window_ms")
    if raw is None:
        return DEFAULT_WINDOW_S
    if not raw.isdecimal() or not MIN_WINDOW_MS <= int(raw) <= MAX_WINDOW_MS:
        raise BadRequest(f"window_ms: must be an integer from {MIN_WINDOW_MS} to {MAX_WINDOW_MS}, got {raw[:20]!r}")
    return int(raw) / 1e3


async def utilisation(request: web.Request) -> web.Response:
    seconds = window(request)
    node = _node(request)
    workers = worker_processes(node.executor.statistics()) if node.executor is not None else []
    doc = await snapshot(workers, seconds)
    return web.json_response({"node": {"id": node.id, "name": node.name}, **doc})


def openapi_paths() -> dict[str, Any]:
    num = {"type": ["number", "null"]}
    worker = {
        "type": "object",
        "properties": {
            "framework": {"type": "string"},
            "device": {"type": "string"},
            "pid": {"type": "integer", "description": "the host pid (a container's init for the Docker executor)"},
            "processes": {"type": "integer", "description": "the worker and its descendants, measured together"},
            "cpu_percent": {**num, "description": "over the window, in percent of one core"},
            "rss_mb": num,
        },
    }
    gpu = {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            "utilisation_percent": {"type": "number"},
            "memory_used_mb": {"type": "number"},
            "memory_total_mb": {"type": "number"},
        },
    }
    schema = {
        "type": "object",
        "properties": {
            "node": {"type": "object"},
            "workers": {"type": "array", "items": worker},
            "gpus": {"type": "array", "items": gpu, "description": "empty without nvidia-smi"},
            "window_s": {"type": "number"},
            "sampled_at": {"type": "string", "format": "date-time"},
        },
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {
        PATH: {
            "get": {
                "summary": "This node's workers' CPU and memory, and its GPUs, over a short window",
                "parameters": [
                    {
                        "name": "window_ms",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": MIN_WINDOW_MS, "maximum": MAX_WINDOW_MS},
                    }
                ],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
                    "400": {"description": "window_ms out of range", "content": error},
                },
            }
        }
    }
