"""multipart/form-data bodies read part by part, with aiohttp's parsing errors translated to BadRequest.

    form = await open_form(request)                      # 400 when the Content-Type has no usable boundary
    while (part := await form.next_part()) is not None:  # 400 for a missing boundary, bad part headers, nested parts
        part.name, part.filename                         # from its Content-Disposition (a malformed one is a 400)
        value = await part.field()                       # a plain field's value (over 4 KiB: a 400)
        text = await part.text(limit, what)              # the whole part as UTF-8, at most ``limit`` bytes (a 413)
        async for chunk in part.chunks(): ...            # streamed, for uploads of any size

aiohttp raises ValueError (no boundary, a body that ends before its closing boundary), BadHttpMessage (a part's
header block that is not headers) and AssertionError (a Content-Type it cannot use) from deep inside its reader, and
only warns about a malformed Content-Disposition; every handler that reads a form goes through here so that each of
those is a 400 naming the problem, never a 500.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam

from ..errors import BadRequest, PayloadTooLarge

PART_CHUNK = 1 << 16
MAX_FIELD_BYTES = 4096
_STATUS_PREFIX = re.compile(r"^\d{3}, message: ")
CONTENT_DISPOSITION = hdrs.CONTENT_DISPOSITION
_PARSE_ERRORS = (ValueError, AssertionError, HttpProcessingError, web.RequestPayloadError)
_DISPOSITION_WARNINGS = (BadContentDispositionHeader, BadContentDispositionParam)


def reason(exc: BaseException) -> str:
    """What an aiohttp parsing error says, on one line (its parser's errors read "400, message:\\n  ...")."""
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    text = _STATUS_PREFIX.sub("", text)
    if text == "Reading after EOF":  # what aiohttp's multipart reader says of a body cut short
        return "the body ends before its closing boundary"
    return text[:200] or type(exc).__name__


def _malformed(exc: BaseException) -> BadRequest:
    return BadRequest(f"malformed multipart body: {reason(exc)}")


def _bad_disposition(part: BodyPartReader, index: int) -> BadRequest:
    header = part.headers.get(CONTENT_DISPOSITION, "")[:120]
    return BadRequest(f"form part {index}: malformed Content-Disposition header {header!r}")


class FormPart:
    """One part of a form: its field name, its file name (None for a plain field), and its bytes."""

    def __init__(self, part: BodyPartReader, index: int) -> None:
        self._part = part
        self.index = index
        if CONTENT_DISPOSITION not in part.headers:  # RFC 7578 4.2: every part names its field
            raise BadRequest(f'form part {index} has no Content-Disposition header (form-data; name="FIELD")')
        # aiohttp only warns about a malformed Content-Disposition and gives the part no name, which would surface
        # as a baffling "unknown field ''"; made errors here, around this synchronous parse only
        with warnings.catch_warnings():
            for category in _DISPOSITION_WARNINGS:
                warnings.simplefilter("error", category)
            try:
                self.name: str = part.name or ""
                self.filename: str | None = part.filename
            except _DISPOSITION_WARNINGS as exc:
                raise _bad_disposition(part, index) from exc

    async def chunks(self, size: int = PART_CHUNK) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = await self._part.read_chunk(size)
            except _PARSE_ERRORS as exc:
                raise _malformed(exc) from exc
            if not chunk:
                return
            yield chunk

    async def read(self, limit: int, what: str) -> bytes:
        """The whole part; PayloadTooLarge when it is over ``limit`` bytes (read no further than that)."""
        data = bytearray()
        async for chunk in self.chunks():
            data.extend(chunk)
            if len(data) > limit:
                raise PayloadTooLarge(f"the {what!r} part is over {limit} bytes")
        return bytes(data)

    async def field(self, limit: int = MAX_FIELD_BYTES) -> str:
        """A plain form field's value, stripped; a value over ``limit`` bytes is refused (a field is no upload)."""
        data = bytearray()
        async for chunk in self.chunks():
            data.extend(chunk)
            if len(data) > limit:
                raise BadRequest(f"form field {self.name[:80]!r} is longer than {limit} bytes")
        return data.decode("utf-8", errors="replace").strip()

    async def text(self, limit: int, what: str) -> str:
        try:
            return (await self.read(limit, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"the {what!r} part is not UTF-8 text") from None


class Form:
    def __init__(self, reader: MultipartReader) -> None:
        self._reader = reader
        self._count = 0

    async def next_part(self) -> FormPart | None:
        """The next part (the rest of the previous one is skipped), or None after the closing boundary."""
        index = self._count
        self._count += 1
        try:
            part = await self._reader.next()
        except _PARSE_ERRORS as exc:
            raise _malformed(exc) from exc
        except RuntimeError as exc:  # aiohttp's word for a '_charset_' part over 31 bytes
            raise BadRequest(f"form part {index}: {exc}") from exc
        except _DISPOSITION_WARNINGS as exc:
            # next() parses the first part's Content-Disposition too (looking for '_charset_'): where warnings are
            # errors (the tests), that raises here; elsewhere it warns and FormPart refuses the header itself
            raise BadRequest(f"form part {index}: malformed Content-Disposition header {str(exc)[:120]!r}") from exc
        if part is None:
            return None
        if not isinstance(part, BodyPartReader):
            raise BadRequest(f"form part {index}: nested multipart bodies are not accepted")
        return FormPart(part, index)


async def open_form(request: web.Request) -> Form:
    """The request's form; UnsupportedMediaType is the caller's to raise (each names what it wants instead)."""
    try:
        return Form(await request.multipart())
    except _PARSE_ERRORS as exc:  # no boundary, or one aiohttp cannot use (empty, over 70 characters)
        raise _malformed(exc) from exc
