"""GET /api/events: the cluster document as Server-Sent Events, a new event when a node joins, one shared poller
however many streams are open, a bound on the streams, a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from nodeproc import node_config

from carml_mesh.node.node import Node
from carml_mesh.web import events as events_api
from carml_mesh.web.app import NODE, errors_middleware
from carml_mesh.web.events import FEED, encode_event, fingerprint


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict]]:
    """(event name, data) per SSE event; comments and retry lines are skipped."""
    name, data = "message", []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_fingerprint_ignores_ages_and_counters_only() -> None:
    doc = {"self": "a", "members": [{"id": "a", "state": "alive", "last_heard_s": 1.0, "load": 0}], "gossip": {"n": 1}}
    same = {**doc, "gossip": {"n": 2}, "members": [{**doc["members"][0], "last_heard_s": 3.5}]}
    assert fingerprint(doc) == fingerprint(same)
    for changed in ({"state": "suspect"}, {"load": 1}):
        assert fingerprint(doc) != fingerprint({**doc, "members": [{**doc["members"][0], **changed}]})
    assert encode_event("cluster", {"a": "x\ny"}) == b'event: cluster\ndata: {"a":"x\\ny"}\n\n'


async def test_first_event_is_the_cluster_document(http: aiohttp.ClientSession, node: Node) -> None:
    async with http.get("/api/events") as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        name, doc = await anext(events(resp))
    assert name == "cluster" and doc["self"] == node.id
    assert [m["id"] for m in doc["members"] if m["self"]] == [node.id]
    async with http.get("/api/cluster") as resp:
        assert set(await resp.json()) == set(doc)


async def test_a_joining_node_produces_an_event_and_stop_ends_the_stream(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node(node_config(tmp_path, "a")))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        resp = await stack.enter_async_context(http.get(f"{a.url()}/api/events"))
        stream = events(resp)
        _, first = await anext(stream)
        assert [m["id"] for m in first["members"]] == [a.id]
        async with Node(node_config(tmp_path, "b", join=(a.mesh.gossip.addr,))) as b:
            async with asyncio.timeout(30):
                async for _, doc in stream:
                    members = {m["id"]: m for m in doc["members"]}
                    if b.id in members and members[b.id]["state"] == "alive" and members[b.id]["card"]:
                        break
            assert members[b.id]["card"]["name"] == "b"
        # with the stream still open, the node stops; the stream ends with a clean end of the body (a stream
        # cut off by aiohttp's shutdown timeout would end in a ClientPayloadError instead)
        await a.aclose()
        async with asyncio.timeout(30):
            rest = [doc async for _, doc in stream]
        assert all(isinstance(doc, dict) for doc in rest)
        assert resp.content.at_eof()


@contextlib.asynccontextmanager
async def events_app(node: Node, **kw: float | int) -> AsyncIterator[tuple[str, events_api.ClusterFeed]]:
    """Only /api/events, on a real socket, over the session's node; small timers and limits passed in."""
    app = web.Application(middlewares=[errors_middleware])
    app[NODE] = node
    events_api.add_routes(app, **kw)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/api/events", app[FEED]
    finally:
        await runner.cleanup()


async def ticks(feed: events_api.ClusterFeed, n: int) -> None:
    for _ in range(n):
        await feed.next_tick(30)


async def test_streams_share_one_poller_and_are_bounded(node: Node) -> None:
    async with events_app(node, poll_s=0.02, max_streams=3) as (url, feed), aiohttp.ClientSession() as http:
        async with contextlib.AsyncExitStack() as streams:
            first_docs = []
            for _ in range(3):
                resp = await streams.enter_async_context(http.get(url))
                assert resp.status == 200
                first_docs.append((await anext(events(resp)))[1])
            assert all(doc["self"] == node.id for doc in first_docs)
            await ticks(feed, 1)
            before = feed.statistics()
            await ticks(feed, 5)
            after = feed.statistics()
            # one document per tick for the three streams, not one per stream
            assert (after.streams, after.builds - before.builds, after.polling) == (3, 5, True)
            async with http.get(url) as refused:
                assert refused.status == 503 and refused.headers["Retry-After"]
                assert "too many open event streams" in (await refused.json())["error"]
        # the clients went away: each stream notices at a tick and frees its place; the poller stops with the last
        async with asyncio.timeout(30):
            while feed.statistics().streams or feed.statistics().polling:
                await feed.next_tick(0.05)
        async with http.get(url) as again:
            assert again.status == 200 and (await anext(events(again)))[0] == "cluster"
        builds = feed.statistics().builds
    assert feed.closed and not feed.statistics().polling
    await feed.aclose()  # safe twice
    assert feed.statistics().builds == builds
    async with events_app(node) as (url, feed), aiohttp.ClientSession() as http:
        await feed.aclose()
        async with http.get(url) as closed:  # a stream asked for while the app stops: refused, not held open
            assert closed.status == 503
