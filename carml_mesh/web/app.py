"""The aiohttp application: routes, error translation, body limits, static files."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import CarmlError, NotFound
from ..headers import auth_headers
from ..trace.zipkin_store import SpanStore
from . import api, bench_api, evaluations_api, events, feedback_api, forms, kserve, models_api, utilisation_api, zipkin
from .auth import make_auth_middleware

if TYPE_CHECKING:
    from ..node.node import Node

log = logging.getLogger("carml.web")
NODE: web.AppKey[Node] = web.AppKey("node")
TRACE_STORE: web.AppKey[SpanStore] = web.AppKey("trace_store")
STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": message}).encode(),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"error": ...}`` with its status; never a stack trace to the client."""
    try:
        return await handler(request)
    except CarmlError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
        return error_response(exc.status, str(exc), getattr(exc, "headers", None))
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, f"request body exceeds the limit of {request.client_max_size} bytes")
    except web.RequestPayloadError as exc:  # from any handler's request.read(): e.g. gzip that does not decompress
        return error_response(400, f"the request body could not be read: {forms.reason(exc)}")
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return error_response(exc.status, exc.reason if exc.text is None else exc.text.removeprefix(f"{exc.status}: "))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error; the node's log has the details")


def make_app(node: Node) -> web.Application:
    auth = make_auth_middleware(node.config.api_token, protect_all=node.config.protect_all)
    app = web.Application(middlewares=[errors_middleware, auth], client_max_size=node.config.max_body_bytes)
    app[NODE] = node
    api.add_routes(app)
    models_api.add_routes(app)
    kserve.add_routes(app)
    feedback_api.add_routes(app)
    evaluations_api.add_routes(app)
    bench_api.add_routes(app)  # /api/benchmarks: runs, across the mesh
    utilisation_api.add_routes(app)  # /api/node/utilisation: what a remote benchmark samples
    events.add_routes(app)  # /api/events: the cluster, live (SSE)
    # Zipkin v2 on every node: spans kept here; a trace asked for by id is assembled from the peers' parts too
    app[TRACE_STORE] = SpanStore()
    zipkin.add_routes(app, TRACE_STORE, peers=node.peer_urls, peer_headers=auth_headers(node.config.api_token))
    app.router.add_get("/", _index)
    app.router.add_get("/static/{file}", _static)
    app.router.add_get("/samples/{file}", _sample)
    return app


def _file_in(folder: Path | None, request: web.Request, what: str) -> Path:
    """One plain file name in ``folder``, nothing else (no traversal, no folders, no dotfiles); else a JSON 404.

    Checked here rather than left to FileResponse or add_static, which answer a missing file with an empty
    application/octet-stream 404 that the errors middleware never sees."""
    name = request.match_info["file"]
    if folder is None or "/" in name or "\\" in name or name.startswith(".") or not (folder / name).is_file():
        raise NotFound(f"no {what} named {name[:80]!r}")
    return folder / name


async def _sample(request: web.Request) -> web.FileResponse:
    """A bundled sample image."""
    path = _file_in(request.app[NODE].config.samples_dir, request, "sample")
    return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})


async def _static(request: web.Request) -> web.FileResponse:
    """One of the page's scripts or styles (the folder is flat), typed by its suffix, not by the host's mime.types."""
    path = _file_in(STATIC, request, "file of the page")
    content_type = STATIC_TYPES.get(path.suffix, "application/octet-stream")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": content_type})


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
