"""The node-to-node data path: a request forwarded to a peer over a pooled keep-alive HTTP connection.

Whatever protocol brought it in, a request travels to the peer as an /api/predict msgpack document (tensors and
images as raw bytes, see carml_mesh.dataplane.document) and its answer comes back as an `InferReply`. Each carries
the caller's remaining deadline, a hop marker (the peer serves it locally and never forwards again, so no request
can loop) and the trace context headers it came with.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import msgpack

from ..dataplane.document import MalformedReply, reply_from_document, request_document
from ..dataplane.types import InferReply, InferRequest
from ..errors import BadRequest, NotFound, PayloadTooLarge, RequestError, ServiceError, UnsupportedMediaType
from ..headers import Hop, auth_headers

MSGPACK = "application/msgpack"
_BY_STATUS: dict[int, type[RequestError]] = {
    400: BadRequest,
    404: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


class ForwardError(ServiceError):
    """The peer could not be reached or failed on its side (5xx, timeout): worth a retry elsewhere."""

    status = 503


class Forwarder:
    def __init__(self, node_id: str, *, connections_per_peer: int = 32, api_token: str | None = None) -> None:
        self.node_id = node_id
        self._auth = auth_headers(api_token)  # the mesh's shared token: a peer may protect inference
        self._connections = connections_per_peer
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Forwarder:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._connections, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def infer(
        self, base_url: str, request: InferRequest, *, timeout: float, trace: dict[str, str] | None = None
    ) -> InferReply:
        body = msgpack.packb(request_document(request), use_bin_type=True)
        hop = Hop(trace=trace or {}).headers(self.node_id, timeout)  # the format hop_from reads on the peer
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK, **hop, **self._auth}
        status, _, raw = await self._post(f"{base_url}/api/predict", body, headers, timeout)
        answer = _decode(raw, status)
        if status != 200:
            raise _error(status, answer, base_url)
        try:
            return reply_from_document(answer)
        except MalformedReply as exc:
            raise ForwardError(f"{base_url} answered 200 with {exc}") from None

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        if self._session is None:
            raise ForwardError("the forwarder is closed")
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except TimeoutError:
            raise ForwardError(f"{url} did not answer within {timeout:.1f} s") from None
        except aiohttp.ClientError as exc:
            raise ForwardError(f"{url} is not reachable: {exc}") from exc


def _decode(raw: bytes, status: int) -> Any:
    try:
        return msgpack.unpackb(raw, raw=False)
    except Exception:
        try:
            return json.loads(raw)
        except ValueError:
            raise ForwardError(f"a peer answered {status} with a body that is neither msgpack nor JSON") from None


def _error(status: int, answer: Any, url: str) -> Exception:
    message = answer.get("error") if isinstance(answer, dict) else str(answer)
    if status in _BY_STATUS:
        return _BY_STATUS[status](str(message))
    return ForwardError(f"{url} answered {status}: {message}")
