"""The Zipkin v2 HTTP API on real aiohttp servers on 127.0.0.1: uploads, queries, the spec's schemas, two nodes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web
from zipkin_example import T0, TRACE, example_trace

from carml_mesh.errors import CarmlError
from carml_mesh.trace.zipkin_store import SpanStore
from carml_mesh.web import zipkin
from carml_mesh.web.app import errors_middleware

# the spec, vendored unchanged in tests/specs/ (Apache-2.0, openzipkin/zipkin-api)
SPEC_PATH = Path(__file__).resolve().parents[1] / "specs" / "zipkin2-api.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
STORE: web.AppKey[SpanStore] = web.AppKey("zipkin_store", SpanStore)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check(doc: Any, path: str, status: str = "200") -> Any:
    """Validate an answer against the spec's response schema for GET ``path`` (its #/definitions refs resolved)."""
    schema = SPEC["paths"][path]["get"]["responses"][status]["schema"]
    return validate(doc, schema)


def validate(doc: Any, schema: dict[str, Any]) -> Any:
    root = {**schema, "definitions": SPEC["definitions"]}
    jsonschema.Draft4Validator(root, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER).validate(doc)
    return doc


STRINGS = {"type": "array", "items": {"type": "string"}}  # what /spans and /remoteServices answer (see zipkin.py)


@web.middleware
async def tiny_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handlers standalone: carml errors as {"error": ...}, as the node's own middleware does."""
    try:
        return await handler(request)
    except CarmlError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)


def make_app(
    *,
    peers: Callable[[], list[str]] | None = None,
    middleware: Any = tiny_errors,
    peer_timeout_s: float = 2.0,
) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=256 << 10)
    app[STORE] = SpanStore(clock=lambda: T0 / 1e6 + 60)  # a minute after the example trace
    zipkin.add_routes(app, STORE, peers=peers, peer_timeout_s=peer_timeout_s)
    return app


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def node() -> AsyncIterator[tuple[str, aiohttp.ClientSession, SpanStore]]:
    app = make_app()
    async with serve(app) as url, aiohttp.ClientSession(base_url=url) as http:
        yield url, http, app[STORE]


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200, **kwargs: Any) -> Any:
    async with http.get(path, **kwargs) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        return await resp.json()


async def post(
    http: aiohttp.ClientSession, body: Any, *, status: int = 202, url: str = "/api/v2/spans", **kwargs: Any
) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    kwargs.setdefault("headers", {"Content-Type": "application/json"})
    async with http.post(url, data=data, **kwargs) as resp:
        assert resp.status == status, await resp.text()
        if status == 202:
            assert await resp.read() == b""
            return None
        assert resp.content_type == "application/json"
        doc = await resp.json()
        assert isinstance(doc, dict) and list(doc) == ["error"] and isinstance(doc["error"], str)
        return doc["error"]


# ------------------------------------------------------------------------------------------------------ one node


async def test_upload_and_query_back(node: tuple[str, aiohttp.ClientSession, SpanStore]) -> None:
    _, http, store = node
    validate(example_trace(), SPEC["definitions"]["ListOfSpans"])  # the upload is spec JSON
    await post(http, example_trace())
    assert len(store) == 3

    assert check(await get_json(http, "/api/v2/services"), "/services") == ["backend", "frontend"]
    names = validate(await get_json(http, "/api/v2/spans", params={"serviceName": "frontend"}), STRINGS)
    assert names == ["get", "get /"]
    remotes = validate(await get_json(http, "/api/v2/remoteServices", params={"serviceName": "Frontend"}), STRINGS)
    assert remotes == ["backend"]

    trace = check(await get_json(http, f"/api/v2/trace/{TRACE}"), "/trace/{traceId}")
    assert trace == example_trace()
    assert await get_json(http, f"/api/v2/trace/{TRACE.upper()}") == trace

    traces = check(await get_json(http, "/api/v2/traces"), "/traces")
    assert traces == [trace]
    query = {"serviceName": "backend", "spanName": "get /api", "annotationQuery": "http.status_code=200"}
    assert check(await get_json(http, "/api/v2/traces", params=query), "/traces") == [trace]
    query = {"remoteServiceName": "backend", "minDuration": "200000", "maxDuration": "210000", "limit": "1"}
    assert check(await get_json(http, "/api/v2/traces", params=query), "/traces") == [trace]
    end_ts = str(T0 // 1000 - 1)  # a millisecond before the trace
    assert check(await get_json(http, "/api/v2/traces", params={"endTs": end_ts}), "/traces") == []
    assert await get_json(http, "/api/v2/traces", params={"annotationQuery": "ws and http.method=GET"}) == [trace]
    assert await get_json(http, "/api/v2/traces", params={"annotationQuery": "error"}) == []

    links = check(
        await get_json(http, "/api/v2/dependencies", params={"endTs": str(T0 // 1000 + 1000)}), "/dependencies"
    )
    assert links == [{"parent": "frontend", "child": "backend", "callCount": 1, "errorCount": 0}]

    assert check(await get_json(http, "/api/v2/autocompleteKeys"), "/autocompleteKeys") == []
    values = await get_json(http, "/api/v2/autocompleteValues", params={"key": "http.method"})
    assert check(values, "/autocompleteValues") == []


async def test_spec_example_and_trace_many(node: tuple[str, aiohttp.ClientSession, SpanStore]) -> None:
    _, http, _ = node
    example = dict(SPEC["definitions"]["Span"]["example"], timestamp=T0 + 5_000_000)
    await post(http, [example])
    await post(http, example_trace())
    assert check(await get_json(http, f"/api/v2/trace/{example['traceId']}"), "/trace/{traceId}") == [example]
    ids = f"{TRACE},{example['traceId']},ffffffffffffffff"
    many = check(await get_json(http, "/api/v2/traceMany", params={"traceIds": ids}), "/traceMany")
    assert [t[0]["traceId"] for t in many] == [TRACE, example["traceId"]]
    assert many[1] == [example] and len(many[0]) == 3


async def test_gzip_upload(node: tuple[str, aiohttp.ClientSession, SpanStore]) -> None:
    _, http, store = node
    body = gzip.compress(json.dumps(example_trace()).encode())
    await post(http, body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert len(store) == 3
    raw = json.dumps(example_trace()).encode()
    await post(http, raw, headers={}, skip_auto_headers=["Content-Type"])  # no Content-Type: JSON
    await post(http, raw, headers={"Content-Type": "application/octet-stream"})  # generic clients' raw bytes
    await post(http, raw, headers={"Content-Type": "application/json; charset=utf-8"})
    assert len(store) == 3


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", None, 400, "malformed JSON"),
        (b'["\xc3\x28"]', None, 400, "malformed JSON"),
        (b"[" * 100_000, None, 400, "malformed JSON"),
        (b"", None, 400, "the body is empty"),
        (b'{"traceId": "a"}', None, 400, "must be a JSON list of spans"),
        (b'[{"traceId": "86154a4ba6e91385", "id": "zz"}]', None, 400, "spans[0].id: must be 16 hex digits"),
        (b'[{"traceId":"86154a4ba6e91385","id":"1","timestamp":-1}]', None, 400, "spans[0].timestamp"),
        (b"\x0a\x02", {"Content-Type": "application/x-protobuf"}, 415, "Zipkin v2 JSON"),
        (b"[]", {"Content-Type": "text/plain"}, 415, "not text/plain"),
        (b"[]", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type: application/json"),
        (b"garbage", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 400, "could not be read"),
        (b"[" + b" " * (300 << 10) + b"]", None, 413, "exceeds the limit of 262144 bytes"),
    ],
)
async def test_malformed_uploads_are_400_and_the_node_keeps_serving(
    body: bytes, headers: dict[str, str] | None, status: int, message: str
) -> None:
    app = make_app()
    async with serve(app) as url:
        # a connection of its own: aiohttp closes it after a body it could not read
        async with aiohttp.ClientSession(base_url=url) as http:
            error = await post(http, body, status=status, headers=headers or {"Content-Type": "application/json"})
            assert message in error
        async with aiohttp.ClientSession(base_url=url) as http:
            await post(http, example_trace())
            assert await get_json(http, "/api/v2/services") == ["backend", "frontend"]
        assert len(app[STORE]) == 3


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/api/v2/trace/ffffffffffffffff", None, 404, "trace ffffffffffffffff not found"),
        ("/api/v2/trace/not-a-trace-id", None, 400, "traceId: must be 16 or 32 hex digits"),
        ("/api/v2/trace/" + "a" * 33, None, 400, "traceId: must be 16 or 32 hex digits"),
        ("/api/v2/spans", None, 400, "serviceName is required"),
        ("/api/v2/remoteServices", {"serviceName": ""}, 400, "serviceName is required"),
        ("/api/v2/autocompleteValues", None, 400, "key is required"),
        ("/api/v2/traces", {"limit": "ten"}, 400, "limit must be an integer"),
        ("/api/v2/traces", {"limit": "0"}, 400, "limit must be positive"),
        ("/api/v2/traces", {"endTs": "1e9"}, 400, "endTs must be an integer"),
        ("/api/v2/traces", {"lookback": "-5"}, 400, "lookback must be positive"),
        ("/api/v2/traces", {"maxDuration": "5"}, 400, "maxDuration is only valid with minDuration"),
        ("/api/v2/traces", {"minDuration": "9", "maxDuration": "5"}, 400, "maxDuration must not be less"),
        ("/api/v2/traceMany", {"traceIds": TRACE}, 400, "at least two"),
        ("/api/v2/traceMany", {"traceIds": f"{TRACE},{TRACE.upper()}"}, 400, "the same trace id twice"),
        ("/api/v2/traceMany", {"traceIds": f"{TRACE},xyz"}, 400, "traceIds: must be 16 or 32 hex digits"),
        ("/api/v2/traceMany", None, 400, "traceIds is required"),
        ("/api/v2/dependencies", None, 400, "endTs is required"),
    ],
)
async def test_bad_queries(
    node: tuple[str, aiohttp.ClientSession, SpanStore],
    path: str,
    params: dict[str, str] | None,
    status: int,
    message: str,
) -> None:
    _, http, _ = node
    doc = await get_json(http, path, status=status, params=params)
    assert message in doc["error"]


async def test_retention_applies_to_uploads(node: tuple[str, aiohttp.ClientSession, SpanStore]) -> None:
    _, http, store = node
    old = dict(example_trace()[0], timestamp=T0 - 2 * 3600 * 10**6)  # two hours before the store's clock
    await post(http, [old])  # accepted, as Zipkin does, and dropped for its age
    assert len(store) == 0 and store.expired == 1


# ------------------------------------------------------------------------------------------------------ two nodes


@contextlib.asynccontextmanager
async def mesh(
    *extra_peers: str, timeout: float = 2.0
) -> AsyncIterator[tuple[list[str], list[web.Application], aiohttp.ClientSession]]:
    """Two nodes, each the other's peer; node A with the project's own error middleware, node B with the tiny one."""
    urls: list[str] = []
    apps = [
        make_app(peers=lambda: [urls[1], *extra_peers], middleware=errors_middleware, peer_timeout_s=timeout),
        make_app(peers=lambda: [urls[0]], peer_timeout_s=timeout),
    ]
    async with serve(apps[0]) as a, serve(apps[1]) as b, aiohttp.ClientSession() as http:
        urls += [a, b]
        yield urls, apps, http


async def test_a_trace_split_across_two_nodes_is_whole_on_either() -> None:
    async with mesh() as (urls, apps, http):
        frontend, backend = example_trace()[:2], example_trace()[2:]
        await post(http, frontend, url=f"{urls[0]}/api/v2/spans")
        await post(http, backend, url=f"{urls[1]}/api/v2/spans")
        assert (len(apps[0][STORE]), len(apps[1][STORE])) == (2, 1)
        for url in urls:
            trace = check(await get_json(http, f"{url}/api/v2/trace/{TRACE}"), "/trace/{traceId}")
            assert trace == example_trace()
        # asked as a peer, a node answers its own part only
        local = {zipkin.LOCAL_ONLY: "1"}
        assert await get_json(http, f"{urls[0]}/api/v2/trace/{TRACE}", headers=local) == frontend
        assert await get_json(http, f"{urls[1]}/api/v2/trace/{TRACE}", headers=local) == backend
        # a trace only B holds is found through A; one neither holds is 404 on both
        other = dict(SPEC["definitions"]["Span"]["example"], timestamp=T0)
        await post(http, [other], url=f"{urls[1]}/api/v2/spans")
        assert await get_json(http, f"{urls[0]}/api/v2/trace/{other['traceId']}") == [other]
        await get_json(http, f"{urls[0]}/api/v2/trace/{other['traceId']}", status=404, headers=local)
        for url in urls:
            doc = await get_json(http, f"{url}/api/v2/trace/ffffffffffffffff", status=404)
            assert doc == {"error": "trace ffffffffffffffff not found"}
        # traceMany is mesh-wide too
        params = {"traceIds": f"{TRACE},{other['traceId']}"}
        for url in urls:
            many = check(await get_json(http, f"{url}/api/v2/traceMany", params=params), "/traceMany")
            assert many == [example_trace(), [other]]
        # a span both nodes hold is answered once
        await post(http, backend, url=f"{urls[0]}/api/v2/spans")
        assert await get_json(http, f"{urls[0]}/api/v2/trace/{TRACE}") == example_trace()
        # searches stay local
        assert await get_json(http, f"{urls[1]}/api/v2/services") == ["backend"]


async def test_failing_and_slow_peers_only_leave_their_spans_out() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 10)
        return web.json_response([])

    async def nonsense(request: web.Request) -> web.Response:
        return web.json_response([{"traceId": "nope"}])

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="oops")

    bad = web.Application()
    bad.router.add_get(f"/slow{zipkin.API}/trace/{{traceId}}", slow)
    bad.router.add_get(f"/nonsense{zipkin.API}/trace/{{traceId}}", nonsense)
    bad.router.add_get(f"/broken{zipkin.API}/trace/{{traceId}}", broken)
    async with serve(web.Application()) as closed_url:
        pass  # closed_url: a port nothing listens on any more
    async with serve(bad) as bad_url:
        extra = (f"{bad_url}/slow", f"{bad_url}/nonsense", f"{bad_url}/broken", closed_url, "not a url")
        async with mesh(*extra, timeout=0.5) as (urls, _, http):
            await post(http, example_trace()[:2], url=f"{urls[0]}/api/v2/spans")
            await post(http, example_trace()[2:], url=f"{urls[1]}/api/v2/spans")
            started = time.monotonic()
            assert await get_json(http, f"{urls[0]}/api/v2/trace/{TRACE}") == example_trace()
            assert time.monotonic() - started < 5
        release.set()


async def test_peers_callable_that_raises_is_survived() -> None:
    def peers() -> list[str]:
        raise RuntimeError("membership is restarting")

    app = make_app(peers=peers)
    async with serve(app) as url, aiohttp.ClientSession(base_url=url) as http:
        await post(http, example_trace())
        assert await get_json(http, f"/api/v2/trace/{TRACE}") == example_trace()
