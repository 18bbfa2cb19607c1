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
