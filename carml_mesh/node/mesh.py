"""The node's place in the mesh: gossip membership, mDNS discovery, and the peers' cards fetched over HTTP."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ..gossip.config import GossipConfig
from ..gossip.crypto import Keyring
from ..gossip.mdns import Discovered, MdnsDiscovery
from ..gossip.messages import Address, MemberState, State
from ..gossip.runtime import Gossip
from ..gossip.state import Event, EventKind
from ..headers import auth_headers
from .card import card_summary
from .rejoin import JoinPolicy, JoinSchedule, serve_rejoin

log = logging.getLogger("carml.mesh")
CARD_FETCH_TIMEOUT = 5.0
CARD_CHECK_INTERVAL = 1.0  # also the LOAD_INTERVAL: how often load changes may be gossiped
MAX_FOUND = 32  # mDNS finds kept as rejoin targets for when this node is alone


class Mesh:
    """Owns the Gossip runtime and the mDNS discovery; keeps a card per member. ``async with`` starts and stops it."""

    def __init__(
        self,
        gossip_config: GossipConfig,
        *,
        http_port: int,
        card: Callable[[], tuple[str, dict[str, Any]]],
        keyring: Keyring | None = None,
        seeds: tuple[Address, ...] = (),
        mdns: bool = True,
        load: Callable[[], int] | None = None,
        api_token: str | None = None,
        join_policy: JoinPolicy | None = None,
    ) -> None:
        self._card = card  # () -> (digest, card): the local card, recomputed cheaply
        self._load = load or (lambda: 0)  # () -> requests in flight on this node
        self._load_value = 0
        self.http_port = http_port
        self.seeds = seeds
        self.join_schedule = JoinSchedule(join_policy or JoinPolicy(), seeds)
        self._found: dict[str, Address] = {}  # node id -> gossip address, as mDNS last announced it
        self.use_mdns = mdns
        self.card_version = 0
        self.card_digest = ""
        self.cards: dict[str, dict[str, Any]] = {}  # member name -> its fetched card
        self._card_digests: dict[str, str] = {}
        self._gossip_config = gossip_config
        self._keyring = keyring
        self.gossip: Gossip = None  # type: ignore[assignment]  # made in __aenter__, with the first card
        self.mdns: MdnsDiscovery | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._headers = auth_headers(api_token)  # a peer may protect /api/node (--protect-all)

    async def __aenter__(self) -> Mesh:
        self.card_digest, _ = self._card()
        self.card_version = 1
        self.gossip = Gossip(self._gossip_config, keyring=self._keyring, meta=self._meta(), on_event=self._on_event)
        await self.gossip.start()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=CARD_FETCH_TIMEOUT), headers=self._headers
        )
        self._spawn(self._watch_card())
        if self.seeds or self.use_mdns:
            self._spawn(
                serve_rejoin(self.join_schedule, alone=self._alone, targets=self._rejoin_targets, join=self.gossip.join)
            )
        if self.use_mdns:
            host, port = self.gossip.addr
            self.mdns = MdnsDiscovery(
                self.gossip.config.name,
                self.gossip.config.cluster,
                port,
                self.http_port,
                self._on_discovered,
                addresses=None if host in ("0.0.0.0", "") else [host],
            )
            await self.mdns.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.mdns is not None:
            await self.mdns.aclose()
        for task in list(self._tasks) + list(self._fetching.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._fetching.values(), return_exceptions=True)
        if self.gossip is not None:
            await self.gossip.aclose(leave=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _meta(self) -> dict[str, Any]:
        # "l": requests in flight here; it rides in gossip (not in the card's digest) so that routers see load
        # without refetching cards, refreshed at most every LOAD_INTERVAL
        return {"v": self.card_version, "d": self.card_digest, "http": self.http_port, "l": self._load_value}

    def _alone(self) -> bool:
        me = self.gossip.config.name
        return not any(m.name != me and m.state in (State.ALIVE, State.SUSPECT) for m in self.gossip.members())

    def _rejoin_targets(self) -> list[Address]:
        own = self.gossip.addr
        return [a for a in dict.fromkeys([*self.seeds, *self._found.values()]) if a != own]

    async def _join(self, addrs: list[Address]) -> None:
        if await self.gossip.join(addrs) == 0:
            log.info("could not join %s, found by mDNS", ", ".join(f"{h}:{p}" for h, p in addrs))

    def _on_discovered(self, found: Discovered) -> None:
        addrs = [(a, found.gossip_port) for a in found.addresses if ":" not in a][:1]
        if addrs:  # kept for rejoining after a partition, when mDNS's caches have nothing new to announce
            self._found.pop(found.node_id, None)
            self._found[found.node_id] = addrs[0]
            while len(self._found) > MAX_FOUND:
                del self._found[next(iter(self._found))]
        known = {m.name for m in self.gossip.members() if m.state in (State.ALIVE, State.SUSPECT)}
        if found.node_id in known:
            return
        if addrs:
            log.info("mDNS found %s at %s:%d; joining", found.node_id, *addrs[0])
            self._spawn(self._join(addrs))

    async def _watch_card(self) -> None:
        """Advertise a new card version when the local card's content changes (models loaded, unloaded...), and
        the load when it changed; each check is cheap, each change one gossip broadcast."""
        while True:
            await asyncio.sleep(CARD_CHECK_INTERVAL)
            self.refresh_card()

    def refresh_card(self) -> None:
        """Compare the card and the load with what was advertised; gossip a new version when they changed. Called
        every CARD_CHECK_INTERVAL, and at once when a model is published or withdrawn."""
        if self.gossip is None:
            return
        digest, _ = self._card()
        load = self._load()
        if digest != self.card_digest or load != self._load_value:
            if digest != self.card_digest:
                self.card_digest = digest
                self.card_version += 1
            self._load_value = load
            self.gossip.update_meta(self._meta())

    # --- peers' cards ---------------------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        member = event.member
        if member.name == self.gossip.config.name:
            return
        if event.kind in (EventKind.JOIN, EventKind.UPDATE, EventKind.ALIVE):
            digest = str(member.meta.get("d", ""))
            if digest and digest != self._card_digests.get(member.name) and member.name not in self._fetching:
                task = asyncio.ensure_future(self._fetch_card(member))
                self._fetching[member.name] = task
                task.add_done_callback(functools.partial(self._fetched, member.name))
        elif event.kind == EventKind.REAPED:
            self.cards.pop(member.name, None)
            self._card_digests.pop(member.name, None)
        log.info("member %s: %s", member.name, event.kind.value)

    def _fetched(self, name: str, _task: asyncio.Task[None]) -> None:
        self._fetching.pop(name, None)

    async def _fetch_card(self, member: MemberState) -> None:
        port = member.meta.get("http")
        if not isinstance(port, int) or self._session is None:
            return
        url = f"http://{member.addr[0]}:{port}/api/node"
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientError(f"HTTP {resp.status}")
                doc = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("cannot fetch the card of %s from %s: %s", member.name, url, exc)
            return
        card = doc.get("card") if isinstance(doc, dict) else None
        if not isinstance(card, dict) or card.get("id") != member.name:
            log.warning("%s did not answer with the card of %s", url, member.name)
            return
        self.cards[member.name] = card
        self._card_digests[member.name] = str(doc.get("card_digest", member.meta.get("d")))

    # --- views ----------------------------------------------------------------------------------------------------

    def cluster_view(self) -> dict[str, Any]:
        now = time.monotonic()
        heard = self.gossip.heard
        members = []
        me = self.gossip.config.name
        for m in sorted(self.gossip.members(), key=lambda m: m.name):
            last = heard.get(m.addr)
            card = self.cards.get(m.name) if m.name != me else self._card()[1]
            members.append(
                {
                    "id": m.name,
                    "self": m.name == me,
                    "state": m.state.name.lower(),
                    "incarnation": m.incarnation,
                    "address": f"{m.addr[0]}:{m.addr[1]}",
                    "http": f"http://{m.addr[0]}:{m.meta.get('http')}" if m.meta.get("http") else None,
                    "card_version": m.meta.get("v"),
                    "card_digest": m.meta.get("d"),
                    "load": m.meta.get("l"),
                    "last_heard_s": None if m.name == me or last is None else round(now - last, 3),
                    "card": card_summary(card),
                }
            )
        return {
            "self": me,
            "cluster": self.gossip.config.cluster,
            "encrypted": self.gossip.keyring is not None,
            "members": members,
            "gossip": self.gossip.statistics(),
            "join": self.join_schedule.view(),
            "discovery": self.mdns.statistics() if self.mdns is not None else None,
        }
