"""Malformed multipart bodies are a 400 naming the problem on every endpoint that reads a form, never a 500.

Each body here once escaped aiohttp's multipart reader as a ValueError, BadHttpMessage or warning and answered 500
(an OpenAPI fuzzer found the first; the rest are their neighbours)."""

from __future__ import annotations

import gzip

import aiohttp
import pytest

FORM_ENDPOINTS = ("/api/predict", "/api/models", "/api/evaluations")
FIELD_OF = {"/api/predict": b"model", "/api/models": b"labels", "/api/evaluations": b"model"}  # one each knows
CT = "multipart/form-data; boundary=B"
FIELD = b'--B\r\nContent-Disposition: form-data; name="FIELD"\r\n\r\n'

MALFORMED = [
    pytest.param(CT, b"--B\r\nFalse--B--\r\n", "Invalid HTTP header", id="part-headers-not-headers"),
    pytest.param(CT, b"--B\r\nbadheader\r\n\r\nx\r\n--B--\r\n", "Invalid HTTP header", id="header-without-colon"),
    pytest.param(CT, FIELD + b"x", "ends before its closing boundary", id="truncated-in-a-part"),
    pytest.param(CT, b"--B\r\n", "has no Content-Disposition header", id="truncated-after-boundary"),
    pytest.param(CT, b"--B\r\nX-A: b\r\n\r\nx\r\n--B--\r\n", "has no Content-Disposition", id="no-disposition"),
    pytest.param(
        CT,
        b'--B\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\n' + b"u" * 40 + b"\r\n--B--\r\n",
        "Invalid default charset",
        id="charset-part-too-long",
    ),
    pytest.param(CT, b"garbage", "Could not find starting boundary", id="no-starting-boundary"),
    pytest.param(CT, b"", "Could not find starting boundary", id="empty"),
    pytest.param("multipart/form-data", b"--B--\r\n", "boundary missed", id="no-boundary-parameter"),
    pytest.param("multipart/form-data; boundary=" + "b" * 71, b"--B--\r\n", "too long", id="boundary-too-long"),
    pytest.param(
        CT,
        b"--B\r\n" + b"X-A: b\r\n" * 200 + b"\r\nx\r\n--B--\r\n",
        "Too many headers",
        id="too-many-part-headers",
    ),
    pytest.param(
        CT,
        b'--B\r\nContent-Disposition: form-data; name*="mod\r\n\r\nx\r\n--B--\r\n',
        "malformed Content-Disposition",
        id="bad-disposition-param",
    ),
    pytest.param(
        CT,
        b"--B\r\nContent-Disposition: form data; name=x\r\n\r\nx\r\n--B--\r\n",
        "malformed Content-Disposition",
        id="bad-disposition-type",
    ),
    pytest.param(
        CT,
        b"--B\r\nContent-Type: multipart/mixed\r\n\r\nx\r\n--B--\r\n",
        "boundary missed for Content-Type: multipart/mixed",
        id="nested-without-boundary",
    ),
    pytest.param(
        CT,
        b"--B\r\nContent-Type: multipart/mixed; boundary=C\r\n\r\n--C\r\n\r\nx\r\n--C--\r\n--B--\r\n",
        "nested multipart bodies are not accepted",
        id="nested",
    ),
]


@pytest.mark.parametrize("path", FORM_ENDPOINTS)
@pytest.mark.parametrize(("content_type", "body", "message"), MALFORMED)
async def test_malformed_forms_are_400_naming_the_problem(
    http: aiohttp.ClientSession, path: str, content_type: str, body: bytes, message: str
) -> None:
    body = body.replace(b"FIELD", FIELD_OF[path])
    async with http.post(path, data=body, headers={"Content-Type": content_type}) as resp:
        assert resp.status == 400, await resp.text()
        assert message in (await resp.json())["error"]


@pytest.mark.parametrize("path", FORM_ENDPOINTS)
async def test_a_form_that_does_not_decompress_is_400(http: aiohttp.ClientSession, path: str) -> None:
    headers = {"Content-Type": CT, "Content-Encoding": "gzip"}
    async with http.post(path, data=b"not gzip at all", headers=headers) as resp:
        assert resp.status == 400
        assert "Can not decode content-encoding: gzip" in (await resp.json())["error"]


@pytest.mark.parametrize("path", ["/api/predict", "/api/evaluations"])
async def test_a_long_field_is_400_and_a_gzipped_form_is_read(http: aiohttp.ClientSession, path: str) -> None:
    field = FIELD.replace(b"FIELD", b"model")
    long = field + b"m" * 5000 + b"\r\n--B--\r\n"
    async with http.post(path, data=long, headers={"Content-Type": CT}) as resp:
        assert resp.status == 400
        assert "form field 'model' is longer than 4096 bytes" in (await resp.json())["error"]
    # a whole form, compressed: read through (and then refused for what it lacks, not for how it came)
    headers = {"Content-Type": CT, "Content-Encoding": "gzip"}
    async with http.post(path, data=gzip.compress(field + b"digits-cnn\r\n--B--\r\n"), headers=headers) as resp:
        assert resp.status == 400
        assert "holds no" in (await resp.json())["error"]
