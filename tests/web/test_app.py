"""The app's error translation: a body aiohttp cannot read is a 400 naming why, on every endpoint that reads one."""

from __future__ import annotations

import aiohttp
import pytest

JSON_BODY_ENDPOINTS = [
    "/api/predict",
    "/api/models/pull",
    "/api/deployments",
    "/api/evaluations",
    "/api/benchmarks",
    "/api/models/digits-cnn/feedback",
    "/v2/models/digits-cnn/infer",
    "/api/v2/spans",
]


@pytest.mark.parametrize("path", JSON_BODY_ENDPOINTS)
async def test_a_body_that_does_not_decompress_is_400(http: aiohttp.ClientSession, path: str) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with http.post(path, data=b"{not compressed}", headers=headers) as resp:
        assert resp.status == 400, await resp.text()
        assert "content-encoding: gzip" in (await resp.json())["error"]


async def test_page_files_and_samples_are_typed_and_a_missing_one_is_a_json_404(http: aiohttp.ClientSession) -> None:
    async with http.get("/static/app.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
    async with http.get("/static/style.css") as resp:
        assert resp.status == 200 and resp.content_type == "text/css"
    # FileResponse alone answered these with an empty application/octet-stream 404 (found by the OpenAPI fuzz)
    for path in ("/static/nope.js", "/static/.hidden", "/samples/nope.jpg", "/static/%2e%2e%2fapp.py"):
        async with http.get(path) as resp:
            assert resp.status == 404 and resp.content_type == "application/json", path
            assert "no " in (await resp.json())["error"]
