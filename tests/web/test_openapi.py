"""The OpenAPI document and the node's router agree: every route is documented, every documented path is served."""

from __future__ import annotations

import re

from aiohttp import web

from carml_mesh.node.node import Node
from carml_mesh.web.app import make_app
from carml_mesh.web.auth import Access, access_for
from carml_mesh.web.openapi import openapi_document

_REGEX_PARAM = re.compile(r"\{(\w+):[^}]*\}")  # aiohttp's {name:regex} is OpenAPI's {name}


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of the app's router, HEAD left out (aiohttp adds it beside each GET)."""
    routes = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        if isinstance(resource, web.StaticResource):  # a folder of files under one prefix
            path = resource.canonical.rstrip("/") + "/{file}"
        else:
            path = _REGEX_PARAM.sub(r"{\1}", resource.canonical)
        routes.add((route.method.lower(), path))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {(method, path) for path, methods in openapi_document()["paths"].items() for method in methods}


def test_normalising_aiohttp_templates() -> None:
    async def handler(request: web.Request) -> web.Response:
        raise AssertionError("never called: only the route table is read")

    app = web.Application()
    app.router.add_get("/a/{id:[0-9a-f]{32}}/b/{name}", handler)
    app.router.add_static("/files/", "/tmp")
    assert served_routes(app) == {("get", "/a/{id}/b/{name}"), ("get", "/files/{file}")}


def test_the_document_lists_every_route_of_a_node_and_nothing_else(node: Node) -> None:
    served, documented = served_routes(make_app(node)), documented_routes()
    assert not served - documented, f"routes missing from the OpenAPI document: {sorted(served - documented)}"
    assert not documented - served, f"documented but not served: {sorted(documented - served)}"
    assert any(path.startswith("/api/v2/") for _, path in served)  # the Zipkin routes are among them


def test_security_and_401_follow_the_auth_rules() -> None:
    for path, methods in openapi_document()["paths"].items():
        for method, operation in methods.items():
            access = access_for(method.upper(), path)
            if access is Access.OPEN:
                assert "security" not in operation and "401" not in operation["responses"], (method, path)
                continue
            assert "401" in operation["responses"], (method, path)
            wanted = [{"bearer": []}] if access is Access.MUTATE else [{}, {"bearer": []}]
            assert operation["security"] == wanted, (method, path)
            if method in ("post", "delete") and path != "/api/predict" and not path.startswith("/v2"):
                assert access is Access.MUTATE, (method, path)


def test_every_operation_with_a_body_answers_400_and_413() -> None:
    for path, methods in openapi_document()["paths"].items():
        for method, operation in methods.items():
            if "requestBody" in operation:
                assert {"400", "413"} <= set(operation["responses"]), (method, path)
