"""GET /api/events: the cluster as Server-Sent Events, for the page's live view.

The stream opens with a ``cluster`` event holding the same document as GET /api/cluster, then sends a new one
whenever that document changes in a way a reader sees: a member joins, fails, leaves or comes back, a card (models,
warm models, hardware) or a load changes. Mesh membership has a single listener (the mesh's own card fetcher) and
cards arrive asynchronously after it, so the stream compares the document's fingerprint every ``POLL_S`` instead:
the document is built from memory, and the fingerprint leaves out what changes on every tick (last-heard ages and
packet counters). A comment line every ``KEEPALIVE_S`` keeps proxies from closing an idle stream.

Streams end when the client goes away or when the app shuts down: on_shutdown sets an event every stream waits on,
so the node's stop never waits on an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any

from aiohttp import web

from .api import cluster_document

log = logging.getLogger("carml.events")
POLL_S = 1.0
KEEPALIVE_S = 15.0
RETRY_MS = 2000  # how long a browser's EventSource waits before reconnecting
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("events_closing", asyncio.Event)
STREAMS: web.AppKey[set[web.StreamResponse]] = web.AppKey("events_streams", set)
VOLATILE_MEMBER_KEYS = ("last_heard_s",)
VOLATILE_KEYS = ("gossip", "discovery")


def add_routes(app: web.Application) -> None:
    app[CLOSING] = asyncio.Event()
    app[STREAMS] = set()
    app.router.add_get("/api/events", events)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    app[CLOSING].set()


def fingerprint(doc: dict[str, Any]) -> str:
    """What a reader of the cluster document would notice changing; not ages and counters."""
    stable = {k: v for k, v in doc.items() if k not in VOLATILE_KEYS}
    stable["members"] = [
        {k: v for k, v in m.items() if k not in VOLATILE_MEMBER_KEYS} for m in doc.get("members") or []
    ]
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_event(event: str, data: Any) -> bytes:
    """One SSE event; JSON has no raw newlines, so ``data`` is one line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    from .app import NODE

    node = request.app[NODE]
    closing = request.app[CLOSING]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
        }
    )
    await response.prepare(request)
    streams = request.app[STREAMS]
    streams.add(response)
    loop = asyncio.get_running_loop()
    try:
        doc = cluster_document(node)
        last = fingerprint(doc)
        await response.write(f"retry: {RETRY_MS}\n".encode() + encode_event("cluster", doc))
        last_write = loop.time()
        while not closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await closing.wait()
            if closing.is_set() or request.transport is None or request.transport.is_closing():
                break
            doc = cluster_document(node)
            now = fingerprint(doc)
            if now != last:
                last = now
                await response.write(encode_event("cluster", doc))
                last_write = loop.time()
            elif loop.time() - last_write >= KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                last_write = loop.time()
    except ConnectionError:  # the client went away mid-write (aiohttp's ClientConnectionResetError is one)
        return response
    finally:
        streams.discard(response)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
