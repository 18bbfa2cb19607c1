"""The OpenAPI document names every route the node serves, with the method it serves it on."""

from __future__ import annotations

from aiohttp import web

from carml_mesh.web import api, bench_api, evaluations_api, events, feedback_api, kserve, models_api, utilisation_api
from carml_mesh.web.openapi import openapi_document


def test_every_route_is_documented() -> None:
    app = web.Application()
    for module in (api, kserve, models_api, feedback_api, events, evaluations_api, bench_api, utilisation_api):
        module.add_routes(app)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    documented = {(m, p) for p, methods in openapi_document()["paths"].items() for m in methods}
    assert {r for r in routes if r[0] != "head"} == documented
    for path, methods in openapi_document()["paths"].items():
        for method, operation in methods.items():
            if method in ("post", "delete") and path not in ("/api/predict",) and not path.startswith("/v2"):
                assert operation["security"] == [{"bearer": []}], (method, path)
