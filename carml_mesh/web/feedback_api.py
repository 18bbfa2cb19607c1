"""Feedback on models under /api (the HTTP side of store/feedback.py):

    POST /api/models/{name}/feedback    {"rating": 1..5, "comment"?, "author"?}: kept on this node -> 201
    GET  /api/models/{name}/feedback    every node's feedback on the model, newest first (?limit=, ?scope=local)

A model is known when this node serves it or a member's card lists it. The listing asks each alive peer for its own
rows (``?scope=local``, so a peer never fans out again), concurrently and with a short timeout; a peer that fails is
named under ``unreachable``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
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
from . import peers

if TYPE_CHECKING:
    from ..node.node import Node

log = logging.getLogger("carml.feedback")
PEER_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 64 << 10


def _node(request: web.Request) -> Node:
    from .app import NODE

    return request.app[NODE]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/models/{name}/feedback", post_feedback)
    app.router.add_get("/api/models/{name}/feedback", get_feedback)
    peers.install(app)


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
        raise PayloadTooLarge(f"the body is over {MAX_BODY_BYTES} bytes")
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
    scope = peers.scope(request)
    local = await FeedbackStore(node.db).listing(name, limit, node_id=node.id)
    if scope == "local":
        return web.json_response(listing_document(name, local))
    answers = await peers.ask_all(
        request, "GET", f"/api/models/{name}/feedback", {"limit": str(limit)}, timeout_s=PEER_TIMEOUT_S
    )
    listings: list[Listing] = []
    unreachable: list[str] = []
    for answer in answers:
        listing = _listing(answer, name)
        if listing is None:
            unreachable.append(answer.url)
        else:
            listings.append(listing)
    merged = merge_listings([local, *listings], limit)
    if merged.count == 0 and not known_model(node, name):
        raise NotFound(f"no model named {name!r} on this node or its peers")
    return web.json_response(listing_document(name, merged, unreachable))


def _listing(answer: peers.PeerAnswer, name: str) -> Listing | None:
    """A peer's answer as its feedback listing; None (logged) when it gave none."""
    doc = answer.json()
    if doc is None:
        if answer.status:  # one that did not answer at all (status 0) was logged by peers.ask_all
            log.info("peer %s left out of the feedback on %s: HTTP %d, no JSON object", answer.url, name, answer.status)
        return None
    try:
        return parse_listing(doc, name)
    except ValueError as exc:
        log.info("peer %s left out of the feedback on %s: %s", answer.url, name, exc)
        return None
