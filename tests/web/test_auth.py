"""The API token's rule table against the node's real routes, the header check, and the middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from carml_mesh.errors import ConfigError, Unauthorized
from carml_mesh.web import api, kserve, models_api
from carml_mesh.web.app import errors_middleware
from carml_mesh.web.auth import Access, access_for, check_api_token, check_token, make_auth_middleware

MUTATING = {
    ("POST", "/api/models"),
    ("POST", "/api/models/pull"),
    ("DELETE", "/api/models/{name}/versions/{version}"),
    ("POST", "/api/deployments"),
}


def node_routes() -> set[tuple[str, str]]:
    app = web.Application()
    for module in (api, kserve, models_api):
        module.add_routes(app)
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}


def test_every_route_of_the_node_has_the_access_it_should() -> None:
    routes = node_routes()
    assert routes >= MUTATING
    for method, route in routes:
        access = access_for(method, route)
        if (method, route) in MUTATING:
            assert access is Access.MUTATE, (method, route)
        elif route == "/api/health":
            assert access is Access.OPEN
        else:  # listings, cards, artifacts, inference (POST /api/predict, POST /v2/.../infer)
            assert access is Access.READ, (method, route)


@pytest.mark.parametrize(
    ("method", "path", "access"),
    [
        ("GET", "/", Access.OPEN),
        ("GET", "/static/app.js", Access.OPEN),
        ("GET", "/samples/cat.jpg", Access.OPEN),
        ("GET", "/api/nothing", Access.READ),  # an unknown path under /api is not open under --protect-all
        ("PUT", "/api/models/x", Access.MUTATE),  # nor is an unknown write under /api ever
        ("PATCH", "/api/anything", Access.MUTATE),
        ("GET", "/v2", Access.READ),
        ("GET", "/v2x", Access.OPEN),
        ("HEAD", "/api/health", Access.OPEN),
    ],
)
def test_paths_without_a_route(method: str, path: str, access: Access) -> None:
    assert access_for(method, path) is access


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (None, "needs the node's API token"),
        ("", "needs the node's API token"),
        ("Basic czNjcmV0", "Bearer scheme"),
        ("s3cret", "Bearer scheme"),
        ("Bearer", "the API token is wrong"),
        ("Bearer s3cre", "the API token is wrong"),
        ("Bearer s3cret2", "the API token is wrong"),
        ("Bearer s3crét", "the API token is wrong"),
    ],
)
def test_check_token_refuses(header: str | None, fragment: str) -> None:
    with pytest.raises(Unauthorized, match=fragment) as info:
        check_token(header, "s3cret")
    assert info.value.status == 401 and info.value.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer s3cret", "bearer s3cret", "  Bearer   s3cret  "])
def test_check_token_accepts(header: str) -> None:
    check_token(header, "s3cret")


@pytest.mark.parametrize("token", ["", "has space", "tab\there", "naïve"])
def test_tokens_that_cannot_travel_in_a_header_are_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="visible ASCII"):
        check_api_token(token, protect_all=False)


def test_protect_all_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="--protect-all needs an API token"):
        check_api_token(None, protect_all=True)
    check_api_token(None, protect_all=False)


@pytest_asyncio.fixture(params=[False, True], ids=["changes", "everything"])
async def guarded(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, bool]]:
    """A bare app with the node's middlewares and a stub on a few of the node's paths."""

    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[errors_middleware, make_auth_middleware("tkn", protect_all=request.param)])
    app.router.add_get("/api/health", ok)
    app.router.add_get("/api/models", ok)
    app.router.add_post("/api/models", ok)
    app.router.add_post("/api/predict", ok)
    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", request.param
    finally:
        await runner.cleanup()


async def test_the_middleware(guarded: tuple[str, bool]) -> None:
    url, protect_all = guarded
    good = {"Authorization": "Bearer tkn"}
    async with aiohttp.ClientSession(base_url=url) as http:
        for method, path, needs in [
            ("GET", "/api/health", False),
            ("GET", "/", False),
            ("GET", "/api/models", protect_all),
            ("POST", "/api/predict", protect_all),
            ("POST", "/api/models", True),
            ("GET", "/api/unknown", protect_all),
        ]:
            async with http.request(method, path) as resp:
                if needs:
                    assert resp.status == 401, (method, path)
                    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="carml-mesh"'
                    assert "error" in await resp.json()
                else:
                    assert resp.status in (200, 404), (method, path)
            async with http.request(method, path, headers=good) as resp:
                assert resp.status in (200, 404), (method, path)
