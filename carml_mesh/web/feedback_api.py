"""Feedback on models under /api (the HTTP side of store/feedback.py):

    POST /api/models/{name}/feedback    {"rating": 1..5, "comment"?, "author"?}: kept on this node -> 201
    GET  /api/models/{name}/feedback    every node's feedback on the model, newest first (?limit=, ?scope=local)

A model is known when this node serves it or a member's card lists it. The listing asks each alive peer for its own
rows (``?scope=local``, so a peer never fans out again), concurrently and with a short timeout; a peer that fails is
named under ``unreachable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from ..errors import BadRequest, NotFound, UnsupportedMediaType
from ..manifest.schema import NAME_RE
from ..store.feedback import (
    FeedbackStore,
    Listing,
    listing_document,
    merge_listings,
    parse_feedback,
    parse_limit,
    parse_listing,
)
from .auth import auth_headers

if TYPE_CHECKING:
    from ..node.node import Node

log = logging.getLogger("carml.feedback")
PEER_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 64 << 10
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("feedback_peer_session", aiohttp.ClientSession)


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/models/{name}/feedback", post_feedback)
    app.router.add_get("/api/models/{name}/feedback", get_feedback)
    app.cleanup_ctx.append(_peer_session)


async def _peer_session(app: web.Application) -> AsyncIterator[None]:
    from .app import NODE

    headers = auth_headers(app[NODE].config.api_token)
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)) as s:
        app[SESSION] = s
        yield


def _model_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME_RE.fullmatch(name):
        raise BadRequest(f"{name[:80]!r} is not a valid model name")
    return name


def known_model(node: Node, name: str) -> bool:
    """Served here, or listed on a member's card."""
    if node.catalog.versions(name):
        return True
    if node.mesh is None:
        return False
    return any(m.get("name") == name for card in node.mesh.cards.values() for m in card.get("models") or [])


async def post_feedback(request: web.Request) -> web.Response:
    node = _node(request)
    name = _model_name(request)
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send a JSON body (Content-Type: application/json)")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    entry = parse_feedback(doc)
    if not known_model(node, name):
        raise NotFound(f"no model named {name!r} on this node or its peers")
    row = await FeedbackStore(node.db).add(name, entry, {"id": node.id, "name": node.name})
    return web.json_response(row, status=201)


async def get_feedback(request: web.Request) -> web.Response:
    node = _node(request)
    name = _model_name(request)
    limit = parse_limit(request.query.get("limit"))
    scope = request.query.get("scope", "mesh")
    if scope not in ("mesh", "local"):
        raise BadRequest(f"query parameter scope must be 'mesh' or 'local', got {scope[:20]!r}")
    local = await FeedbackStore(node.db).listing(name, limit)
    if scope == "local":
        return web.json_response(listing_document(name, local))
    urls = list(dict.fromkeys(node.peer_urls()))
    answers = await asyncio.gather(*(_ask(request.app[SESSION], url, name, limit) for url in urls))
    unreachable = [url for url, answer in zip(urls, answers, strict=True) if answer is None]
    merged = merge_listings([local, *(a for a in answers if a is not None)], limit)
    if merged.count == 0 and not known_model(node, name):
        raise NotFound(f"no model named {name!r} on this node or its peers")
    return web.json_response(listing_document(name, merged, unreachable))


async def _ask(session: aiohttp.ClientSession, base: str, name: str, limit: int) -> Listing | None:
    url = f"{base.rstrip('/')}/api/models/{name}/feedback"
    try:
        async with session.get(url, params={"scope": "local", "limit": str(limit)}) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            return parse_listing(await resp.json(), name)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("peer %s left out of the feedback on %s: %s", base, name, str(exc) or type(exc).__name__)
        return None
