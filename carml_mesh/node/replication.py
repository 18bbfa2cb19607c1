"""Replication between peers: pull a published model's artifacts from a peer, deploy a model to peers, withdraw it
everywhere.

A deployment is a pull the other way round: the node that holds the model asks each chosen peer (concurrently) to
pull it from itself with ``POST /api/models/pull``. The puller fetches each artifact it lacks from
``SOURCE/api/artifacts/{sha256}``, streaming it into the store's tmp dir while hashing it; the model is refused,
and nothing kept, unless every artifact hashes to the sha256 its manifest names. Every call to a peer carries the
mesh's API token when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from ..errors import ArtifactMismatch, ArtifactTooLarge, BadGateway, BadRequest, Conflict, ManifestError, NotFound
from ..gossip.messages import State
from ..headers import FORWARDED, auth_headers
from ..manifest.loader import parse_manifest_text
from ..store.artifacts import ArtifactStore, Ingest
from .mesh import Mesh
from .publish import Published, Publisher

log = logging.getLogger("carml.replication")
MAX_ERROR_BYTES = 4096


@dataclass(frozen=True)
class Peer:
    id: str
    name: str
    url: str
    load: float
    has_model: bool


def parse_source(text: Any) -> str:
    """A peer's base URL, http(s)://host[:port], and nothing else (no path, query, fragment or credentials)."""
    if not isinstance(text, str) or not text:
        raise BadRequest("'source' must be a peer's URL such as http://10.0.0.5:7450")
    try:
        url = URL(text.rstrip("/"))
    except ValueError:
        raise BadRequest(f"'source' {text!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise BadRequest(f"'source' {text!r} must be an http:// or https:// URL with a host")
    if url.user or url.password or url.query_string or url.fragment or url.path not in ("", "/"):
        raise BadRequest(f"'source' {text!r} must be a base URL only, such as http://10.0.0.5:7450")
    return str(url.with_path(""))


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, lower-case host and port of a base URL, for comparing origins (http://H and http://H:80 match)."""
    u = URL(url)
    return u.scheme, (u.host or "").lower(), u.port


def resolve_source(text: Any, members: list[Peer], allowed_origins: tuple[str, ...] = ()) -> str:
    """The base URL to pull from, given as an alive member's node id or its advertised URL, or as an origin the
    operator allowed (``--pull-allow-origin``). Anything else is refused before any request leaves this node: a
    pull makes the node send requests, so an arbitrary URL would let any caller probe the lab's network (SSRF)."""
    alive = ", ".join(f"{p.id} ({p.url})" for p in sorted(members, key=lambda p: p.id)[:8]) or "none"
    if isinstance(text, str) and text and "://" not in text:
        for member in members:
            if text == member.id:
                return member.url
        raise BadRequest(f"'source' {text!r} is not the node id of an alive member of this mesh (alive: {alive})")
    url = parse_source(text)
    wanted = _origin(url)
    for member in members:
        if _origin(member.url) == wanted:
            return member.url
    if any(_origin(allowed) == wanted for allowed in allowed_origins):
        return url
    raise BadRequest(
        f"'source' {text!r} is not an alive member of this mesh, and not an origin this node allows; pull from a "
        f"member by node id or advertised URL (alive: {alive}), or start the node with --pull-allow-origin {url}"
    )


def parse_target(to: Any) -> str | int | list[str]:
    """'all', a number of peers (>= 1), or a non-empty list of node ids or names."""
    if to == "all":
        return "all"
    if isinstance(to, int) and not isinstance(to, bool):
        if to < 1:
            raise BadRequest(f"'to' must be at least 1 peer, got {to}")
        return to
    if isinstance(to, list) and to and all(isinstance(t, str) and t for t in to):
        return list(dict.fromkeys(to))
    raise BadRequest("'to' must be \"all\", a number of peers, or a list of node ids or names")


def choose_peers(peers: list[Peer], to: str | int | list[str], *, self_id: str, self_name: str) -> list[Peer]:
    """The peers a deployment goes to. N picks the N least loaded alive peers (those without the model first on a
    tie); a list names peers by id or name (this node itself is skipped: it holds the model)."""
    if to == "all":
        return sorted(peers, key=lambda p: p.id)
    if isinstance(to, int):
        if to > len(peers):
            raise Conflict(f"asked for {to} peer(s); {len(peers)} alive peer(s) are known: {_names(peers) or 'none'}")
        return sorted(peers, key=lambda p: (p.load, p.has_model, p.id))[:to]
    chosen: dict[str, Peer] = {}
    for wanted in to:
        if wanted in (self_id, self_name):
            continue
        match = [p for p in peers if wanted in (p.id, p.name)]
        if not match:
            raise NotFound(f"no alive peer is called {wanted!r}; alive peers: {_names(peers) or 'none'}")
        if len(match) > 1:
            raise BadRequest(f"{wanted!r} names several peers ({_names(match)}); give node ids")
        chosen[match[0].id] = match[0]
    return list(chosen.values())


def alive_peers(mesh: Mesh | None, self_id: str, name: str, version: str) -> list[Peer]:
    """The alive members of the mesh other than this node, with their HTTP URL, load, and whether their card lists
    the model."""
    if mesh is None or mesh.gossip is None:
        return []
    peers = []
    for member in mesh.gossip.members():
        port = member.meta.get("http")
        if member.name == self_id or member.state != State.ALIVE or not isinstance(port, int):
            continue
        card = mesh.cards.get(member.name) or {}
        load = member.meta.get("l", 0)
        has = any(m.get("name") == name and m.get("version") == version for m in card.get("models") or [])
        peers.append(
            Peer(
                id=member.name,
                name=str(card.get("name") or member.name),
                url=f"http://{member.addr[0]}:{port}",
                load=float(load) if isinstance(load, int | float) else 0.0,
                has_model=has,
            )
        )
    return peers


def _names(peers: list[Peer]) -> str:
    return ", ".join(f"{p.name} ({p.id})" for p in sorted(peers, key=lambda p: p.id))


class Replicator:
    """The HTTP side of replication: one client session, with the token, for artifacts, pulls and withdrawals."""

    def __init__(
        self,
        *,
        node_id: str,
        store: ArtifactStore,
        publisher: Publisher,
        api_token: str | None,
        max_artifact_bytes: int,
        timeout: float,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.publisher = publisher
        self.max_artifact_bytes = max_artifact_bytes
        self.timeout = timeout
        self._headers = {FORWARDED: node_id, **auth_headers(api_token)}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Replicator:
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=10, sock_read=60),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BadGateway("replication is not running on this node")
        return self._session

    # --- pulling (the receiving side) -----------------------------------------------------------------------------

    async def pull(self, manifest_text: str, source: str, *, replace: bool = False) -> Published:
        """Fetch the artifacts we lack from ``source``, verify them, and publish the model here."""
        try:
            manifest = parse_manifest_text(manifest_text, file="manifest")
        except ManifestError as exc:
            raise BadRequest(str(exc)) from None
        for n, entry in enumerate(manifest.frameworks):
            if entry.artifact.sha256 is None:
                raise BadRequest(f"manifest: frameworks[{n}].artifact: a pulled manifest must give each sha256")
        staged: dict[str, Ingest] = {}
        try:
            for entry in manifest.frameworks:
                sha256 = entry.artifact.sha256
                assert sha256 is not None
                if not self.store.has(sha256):
                    staged[entry.name] = await self._fetch(source, entry.name, sha256)
            try:
                return await self.publisher.publish(
                    manifest, labels=None, staged=staged, replace=replace, idempotent=True
                )
            except ArtifactMismatch as exc:  # pragma: no cover - _fetch verified each one already
                raise BadGateway(str(exc)) from None
        finally:
            for ingest in staged.values():
                if not ingest.committed:
                    ingest.abort()

    async def _fetch(self, source: str, framework: str, sha256: str) -> Ingest:
        """One artifact from a peer into the store's tmp dir, verified; the caller commits or aborts it."""
        url = f"{source}/api/artifacts/{sha256}"
        ingest = self.store.ingest(limit=self.max_artifact_bytes, label=f"the {framework} artifact from {source}")
        try:
            # no redirects: a redirect could point anywhere, and the source was checked, not where it sends us
            async with self.session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise BadGateway(f"{url} answered {resp.status}: {await _error_text(resp)}")
                if resp.content_length is not None and resp.content_length > self.max_artifact_bytes:
                    raise BadGateway(
                        f"{url} is {resp.content_length} bytes, over this node's limit of {self.max_artifact_bytes}"
                    )
                await ingest.feed(resp.content.iter_chunked(1 << 16))
            await asyncio.to_thread(ingest.finish, sha256)
        except ArtifactMismatch as exc:
            ingest.abort()
            raise BadGateway(
                f"{source} served the {framework} artifact with sha256 {exc.actual}, but the manifest says "
                f"{exc.expected}; the model is refused and nothing was kept"
            ) from None
        except ArtifactTooLarge as exc:
            ingest.abort()
            raise BadGateway(f"{url} is over this node's artifact limit of {exc.limit} bytes") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            ingest.abort()
            raise BadGateway(f"cannot fetch {url}: {exc or type(exc).__name__}") from None
        except BaseException:
            ingest.abort()
            raise
        return ingest

    # --- deploying and withdrawing (the asking side) --------------------------------------------------------------

    async def deploy(
        self, manifest_text: str, source: str, peers: list[Peer], *, replace: bool
    ) -> list[dict[str, Any]]:
        """Ask each peer, concurrently, to pull the model from ``source`` (this node); one result per peer."""
        body = {"manifest": manifest_text, "source": source, "replace": replace}
        return list(await asyncio.gather(*(self._call(p, "POST", "/api/models/pull", body=body) for p in peers)))

    async def withdraw(self, name: str, version: str, peers: list[Peer]) -> list[dict[str, Any]]:
        path = f"/api/models/{name}/versions/{version}"
        return list(await asyncio.gather(*(self._call(p, "DELETE", path) for p in peers)))

    async def _call(
        self, peer: Peer, method: str, path: str, *, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"node": peer.id, "name": peer.name}
        try:
            async with self.session.request(method, peer.url + path, json=body) as resp:
                if resp.status == 200:
                    result["ok"] = True
                    with contextlib.suppress(aiohttp.ContentTypeError, ValueError):
                        answer = await resp.json()
                        if isinstance(answer, dict) and answer.get("unchanged"):
                            result["unchanged"] = True
                    return result
                result.update(ok=False, status=resp.status, error=await _error_text(resp))
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.update(ok=False, error=f"{peer.url} is not reachable: {exc or type(exc).__name__}")
        log.warning("%s %s on %s failed: %s", method, path, peer.name, result["error"])
        return result


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    raw = await resp.content.read(MAX_ERROR_BYTES)
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            return str(doc["error"])
    except ValueError:
        pass
    return raw.decode("utf-8", "replace").strip() or resp.reason or f"HTTP {resp.status}"
