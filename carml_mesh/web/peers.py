"""Asking the other members over HTTP, for the /api reads and writes that any node answers for the whole mesh.

    peers.install(app)                                    in add_routes: the app's one peer session, added once
    limit, scope = peers.limit(request), peers.scope(request)               ?limit=1..1000, ?scope=mesh|local
    answers = await peers.ask_all(request, "GET", "/api/evaluations", {"limit": str(limit)})  # when scope is mesh
    items, unreachable = peers.merge_newest_first(own_items, answers, "evaluations", limit)
    doc = await peers.here_or_find_json(request, own_doc, "GET", f"/api/evaluations/{id}")  # else a peer's
    answer = await peers.find_one(request, "GET", path)   # the first peer's 200, its body as it came (an export)

Every peer is asked with ``scope=local``, so it answers from what it holds and a request fans out one hop, never
loops. The peers are asked concurrently, each with a short timeout, through one ClientSession the app owns (opened
and closed by its cleanup context) that carries the mesh's API token. A peer that fails or is slow is only left out:
its answer has status 0, and a listing names it under ``unreachable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web

from ..errors import BadRequest
from ..headers import auth_headers

log = logging.getLogger("carml.peers")

PEER_TIMEOUT_S = 3.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("peer_session", aiohttp.ClientSession)


def install(app: web.Application) -> None:
    """Give the app its peer session, opened on startup and closed on cleanup; a second call adds nothing."""
    if _open_session not in app.cleanup_ctx:
        app.cleanup_ctx.append(_open_session)


async def _open_session(app: web.Application) -> AsyncIterator[None]:
    from .app import NODE

    token = app[NODE].config.api_token if NODE in app else None
    async with aiohttp.ClientSession(headers=auth_headers(token)) as session:
        app[SESSION] = session
        yield


def scope(request: web.Request) -> Literal["mesh", "local"]:
    """``?scope=``: mesh (this node and its peers, the default) or local (this node only)."""
    value = request.query.get("scope", "mesh")
    if value == "mesh":
        return "mesh"
    if value == "local":
        return "local"
    raise BadRequest(f"scope: must be mesh or local, got {value[:20]!r}")


def limit(request: web.Request) -> int:
    """``?limit=``: how many items a listing holds at most."""
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdecimal() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit: must be an integer from 1 to {MAX_LIMIT}, got {raw[:20]!r}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    url: str  # the peer's base URL
    status: int  # 0: it did not answer (refused, reset, timed out)
    body: bytes

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object when the peer answered 200; None for anything else."""
        if self.status != 200:
            return None
        try:
            doc = json.loads(self.body)
        except (ValueError, RecursionError):
            return None
        return doc if isinstance(doc, dict) else None


async def ask_all(
    request: web.Request,
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    *,
    timeout_s: float = PEER_TIMEOUT_S,
) -> list[PeerAnswer]:
    """Every alive peer's answer to ``method path?scope=local&params``, asked concurrently, in peer order."""
    from .app import NODE

    urls = list(dict.fromkeys(request.app[NODE].peer_urls()))
    if not urls:
        return []
    session = request.app[SESSION]
    query = {"scope": "local", **(params or {})}
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def ask(base: str) -> PeerAnswer:
        try:
            async with session.request(method, base + path, params=query, timeout=timeout) as resp:
                return PeerAnswer(base, resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("peer %s left out of %s %s: %s", base, method, path, str(exc) or type(exc).__name__)
            return PeerAnswer(base, 0, b"")

    return list(await asyncio.gather(*(ask(u) for u in urls)))


async def find_one(
    request: web.Request, method: str, path: str, params: dict[str, str] | None = None
) -> PeerAnswer | None:
    """The first peer's answer (in peer order) that is a 200, asking them all at once; None when none holds it."""
    return next((a for a in await ask_all(request, method, path, params) if a.status == 200), None)


async def find_json(
    request: web.Request,
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    *,
    where: Callable[[dict[str, Any]], bool] = lambda doc: True,
) -> dict[str, Any] | None:
    """The first 200 JSON object (in peer order) that ``where`` accepts, asking the peers all at once."""
    for answer in await ask_all(request, method, path, params):
        doc = answer.json()
        if doc is not None and where(doc):
            return doc
    return None


async def here_or_find_json(
    request: web.Request,
    here: dict[str, Any] | None,
    method: str,
    path: str,
    *,
    where: Callable[[dict[str, Any]], bool] = lambda doc: True,
) -> dict[str, Any] | None:
    """``here`` (this node's answer) when it has one; else, unless ?scope=local, :func:`find_json`'s."""
    if here is not None or scope(request) == "local":
        return here
    return await find_json(request, method, path, where=where)


def merge_newest_first(
    own: list[dict[str, Any]], answers: list[PeerAnswer], key: str, limit: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """This node's items and those under ``key`` in the peers' answers, once per id, newest first (``created_at``),
    at most ``limit``; and the URLs of the peers that gave no such list."""
    items = list(own)
    seen = {item.get("id") for item in items}
    unreachable: list[str] = []
    for answer in answers:
        doc = answer.json()
        if doc is None or not isinstance(doc.get(key), list):
            unreachable.append(answer.url)
            continue
        for item in doc[key]:
            if isinstance(item, dict) and item.get("id") not in seen:
                seen.add(item.get("id"))
                items.append(item)
    items.sort(key=lambda item: str(item.get("created_at") or ""), reverse=True)
    return items[:limit], unreachable
