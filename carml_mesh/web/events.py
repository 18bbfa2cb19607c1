"""GET /api/events: the cluster as Server-Sent Events, for the page's live view.

The stream opens with a ``cluster`` event holding the same document as GET /api/cluster, then sends a new one
whenever that document changes in a way a reader sees: a member joins, fails, leaves or comes back, a card (models,
warm models, hardware) or a load changes. Mesh membership has a single listener (the mesh's own card fetcher) and
cards arrive asynchronously after it, so the document is polled: one ``ClusterFeed`` per app builds it once every
``POLL_S`` and compares its fingerprint (which leaves out what changes on every tick: last-heard ages and packet
counters), however many streams are open; each stream only writes the encoded event the feed already holds. The
feed's poller runs while at least one stream is open. A comment line every ``KEEPALIVE_S`` keeps proxies from
closing an idle stream, and is how a stream whose client went away without a word finds out.

At most ``MAX_STREAMS`` streams are open at once; one more gets 503 with Retry-After (a browser's EventSource then
stops, and the page falls back to polling GET /api/cluster). Streams end when the client goes away or when the app
shuts down: on_shutdown closes the feed, which wakes every stream to end its body, so the node's stop never waits on
an open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import ServiceError
from .api import cluster_document

log = logging.getLogger("carml.events")
POLL_S = 1.0
KEEPALIVE_S = 15.0
MAX_STREAMS = 64
RETRY_MS = 2000  # how long a browser's EventSource waits before reconnecting
VOLATILE_MEMBER_KEYS = ("last_heard_s",)
VOLATILE_KEYS = ("gossip", "discovery")


class TooManyStreams(ServiceError):
    status = 503
    headers = {"Retry-After": "30"}


class FeedClosed(ServiceError):
    status = 503


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


@dataclass(frozen=True)
class FeedStatistics:
    streams: int
    builds: int  # documents built since the feed was made: one per tick however many streams are open
    version: int  # how many distinct documents (fingerprints) the feed has seen
    polling: bool


class ClusterFeed:
    """One poller per app: builds the cluster document once a tick and fans the change out to every open stream."""

    def __init__(
        self, build: Callable[[], dict[str, Any]], *, poll_s: float = POLL_S, max_streams: int = MAX_STREAMS
    ) -> None:
        self._build = build
        self.poll_s = poll_s
        self.max_streams = max_streams
        self.version = 0
        self.payload = b""  # the latest document, encoded as a ``cluster`` event
        self._fingerprint = ""
        self._streams = 0
        self._builds = 0
        self._tick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> FeedStatistics:
        polling = self._task is not None and not self._task.done()
        return FeedStatistics(self._streams, self._builds, self.version, polling)

    def _refresh(self) -> None:
        doc = self._build()
        self._builds += 1
        now = fingerprint(doc)
        if now != self._fingerprint:
            self._fingerprint = now
            self.version += 1
            self.payload = encode_event("cluster", doc)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[None]:
        """A place among the streams: TooManyStreams beyond ``max_streams``, FeedClosed once the app stops."""
        if self._closed:
            raise FeedClosed("the node is shutting down")
        if self._streams >= self.max_streams:
            raise TooManyStreams(f"too many open event streams (at most {self.max_streams}); poll GET /api/cluster")
        self._streams += 1
        try:
            self._refresh()  # a new reader starts from the current document, not the last tick's
            # the poller exits on its own when the last stream leaves; checked and restarted here without an await
            # in between, so a stream never waits on a poller that is gone
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._poll(), name="carml-events-poller")
            yield
        finally:
            self._streams -= 1

    async def _poll(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.poll_s)
            if self._closed or self._streams == 0:
                return
            try:
                self._refresh()
            except Exception:  # a document that fails to build this tick may build the next: keep the streams
                log.exception("the cluster document failed to build")
            self._wake()

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def next_tick(self, timeout_s: float) -> None:
        """Until the poller's next tick or the feed closes; at most ``timeout_s`` (a guard against a stalled poller)."""
        tick = self._tick
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await tick.wait()

    async def aclose(self) -> None:
        """Wakes every stream to end; waits for the poller. Safe twice."""
        self._closed = True
        self._wake()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


FEED: web.AppKey[ClusterFeed] = web.AppKey("events_feed", ClusterFeed)


def add_routes(app: web.Application, *, poll_s: float = POLL_S, max_streams: int = MAX_STREAMS) -> None:
    from .app import NODE

    app[FEED] = ClusterFeed(lambda: cluster_document(app[NODE]), poll_s=poll_s, max_streams=max_streams)
    app.router.add_get("/api/events", events)
    app.on_shutdown.append(_close_feed)


async def _close_feed(app: web.Application) -> None:
    await app[FEED].aclose()


async def events(request: web.Request) -> web.StreamResponse:
    feed = request.app[FEED]
    async with feed.subscribe():
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a proxy in front must not buffer the stream
            }
        )
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            sent = feed.version
            await response.write(f"retry: {RETRY_MS}\n".encode() + feed.payload)
            last_write = loop.time()
            while True:
                await feed.next_tick(KEEPALIVE_S)
                if feed.closed or request.transport is None or request.transport.is_closing():
                    break
                if feed.version != sent:
                    sent = feed.version
                    await response.write(feed.payload)
                    last_write = loop.time()
                elif loop.time() - last_write >= KEEPALIVE_S:
                    await response.write(b": keep-alive\n\n")
                    last_write = loop.time()
        except ConnectionError:  # the client went away mid-write (aiohttp's ClientConnectionResetError is one)
            return response
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
