"""mDNS only finds candidate peers (multicast is lossy, LAN-scoped and its caches lag); gossip decides membership."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf._utils.net import InterfacesType  # the package re-exports it without __all__ saying so
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

__all__ = ["MDNS_PROTOCOL", "SERVICE_TYPE", "Discovered", "MdnsDiscovery", "local_ipv4_addresses", "parse_txt"]

log = logging.getLogger("carml.gossip.mdns")

SERVICE_TYPE = "_carml._tcp.local."
MDNS_PROTOCOL = "1"  # bumped when the TXT layout changes incompatibly; peers with another value are ignored

RESOLVE_TIMEOUT = 3.0  # seconds for one AsyncServiceInfo.async_request
CLOSE_TIMEOUT = 3.0  # seconds for all of aclose(), network or not
_CLOSE_RESERVE = 0.5  # of CLOSE_TIMEOUT, kept for closing the sockets after the goodbyes

_MAX_NODE_ID_BYTES = 57  # "carml-" + id must fit one 63-byte DNS label (the server name)
_MAX_TEXT_BYTES = 200  # any TXT value; one key=value string is at most 255 bytes
_PORT_RE = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Discovered:
    node_id: str
    cluster: str
    addresses: tuple[str, ...]
    gossip_port: int
    http_port: int
    protocol: str


def _text(value: bytes | None) -> str | None:
    """A TXT value as a non-empty, printable, bounded str, else None."""
    if not isinstance(value, bytes | bytearray) or not 0 < len(value) <= _MAX_TEXT_BYTES:
        return None
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.isprintable() or text != text.strip():
        return None
    return text


def _port(value: bytes | None) -> int | None:
    text = _text(value)
    if text is None or not _PORT_RE.fullmatch(text):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def parse_txt(properties: Mapping[bytes, bytes | None], addresses: Sequence[str] = ()) -> Discovered | None:
    """Our TXT properties -> Discovered, or None when anything is missing or malformed. Pure; never raises."""
    try:
        node_id = _text(properties.get(b"id"))
        cluster = _text(properties.get(b"cluster"))
        gossip = _port(properties.get(b"gossip"))
        http = _port(properties.get(b"http"))
        proto = _text(properties.get(b"proto"))
    except Exception:  # a hostile Mapping (unhashable keys, raising __getitem__): garbage all the same
        return None
    if node_id is None or cluster is None or gossip is None or http is None or proto is None:
        return None
    return Discovered(node_id, cluster, tuple(addresses), gossip, http, proto)


def local_ipv4_addresses() -> list[str]:
    """This host's IPv4 addresses, minus loopback and link-local (169.254/16), in interface order."""
    seen: dict[str, None] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not ip.is_IPv4:
                continue
            address = ipaddress.IPv4Address(ip.ip)
            if not (address.is_loopback or address.is_link_local):
                seen[str(address)] = None
    return list(seen)


def _is_link_local(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_link_local
    except ValueError:
        return False


def _check_node_id(node_id: str) -> None:
    if not node_id or len(node_id.encode()) > _MAX_NODE_ID_BYTES or "." in node_id or not node_id.isprintable():
        raise ValueError(f"node_id must be 1-{_MAX_NODE_ID_BYTES} printable bytes without dots: {node_id!r}")


class MdnsDiscovery:
    """Announce this node as ``{node_id}._carml._tcp.local.`` and report peers of our cluster to ``on_found``.

    ``async with MdnsDiscovery(...) as d:`` registers, then browses. Registering probes for the name; a second live
    node with the same id *may* make entering fail with zeroconf's NonUniqueNameException (no goodbyes are sent
    then), but zeroconf's probing is best effort (it misses a defender whose reply is suppressed or late), so
    duplicate ids are for the gossip layer to detect, not for this class. ``on_found`` runs in the event
    loop for every newly seen peer and again whenever a peer's announced data changes (a restart on another port);
    identical re-announcements are not repeated until the peer has been seen to go. Leaving the block (or
    ``aclose()``, idempotent) sends goodbyes, stops browsing and closes the sockets within ``CLOSE_TIMEOUT``.

    ``addresses`` are what we advertise (default: this host's non-loopback IPv4 addresses; 127.0.0.1 only if
    given explicitly). ``interfaces`` are where we multicast: default ``addresses`` when they were given, so a
    node pinned to one address does not also chat on every other interface; otherwise every IPv4 interface.
    """

    def __init__(
        self,
        node_id: str,
        cluster: str,
        gossip_port: int,
        http_port: int,
        on_found: Callable[[Discovered], None],
        *,
        addresses: Sequence[str] | None = None,
        interfaces: InterfacesType | None = None,
    ) -> None:
        _check_node_id(node_id)
        if _text(cluster.encode()) is None:
            raise ValueError(f"cluster must be 1-{_MAX_TEXT_BYTES} printable bytes: {cluster!r}")
        for port in (gossip_port, http_port):
            if not 0 < port < 65536:
                raise ValueError(f"not a port: {port}")
        self.node_id = node_id
        self.cluster = cluster
        self.gossip_port = gossip_port
        self.http_port = http_port
        self.on_found = on_found
        self.instance_name = f"{node_id}.{SERVICE_TYPE}"
        self.server = f"carml-{node_id}.local."
        self._addresses = None if addresses is None else [str(ipaddress.ip_address(a)) for a in addresses]
        self._interfaces = interfaces
        self._aiozc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Future[object]] = set()
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._reported: dict[str, Discovered] = {}
        self._registered = False  # only then may we send goodbyes: a name clash must not evict the other node
        self._closing = False
        self._closed = asyncio.Event()
        self._stats = dict.fromkeys(
            ("found", "ignored_own", "ignored_cluster", "ignored_protocol", "malformed", "resolve_failures"), 0
        )

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        if self._aiozc is not None or self._closing:
            raise RuntimeError("MdnsDiscovery can be entered once")
        addresses = self._addresses if self._addresses is not None else local_ipv4_addresses()
        if not addresses:
            raise OSError("mDNS: no non-loopback IPv4 address to advertise; pass addresses=")
        interfaces = self._interfaces
        if interfaces is None:
            interfaces = list(addresses) if self._addresses is not None else InterfaceChoice.All
        elif not isinstance(interfaces, InterfaceChoice):
            interfaces = list(interfaces)  # zeroconf wants a list, not any Sequence
        self._aiozc = AsyncZeroconf(interfaces=interfaces)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            self.instance_name,
            port=self.http_port,
            properties={
                "id": self.node_id,
                "cluster": self.cluster,
                "gossip": str(self.gossip_port),
                "http": str(self.http_port),
                "proto": MDNS_PROTOCOL,
            },
            server=self.server,
            parsed_addresses=addresses,
        )
        announced = await self._aiozc.async_register_service(self._info)
        self._registered = True
        self._track(asyncio.ensure_future(announced))
        self._browser = AsyncServiceBrowser(self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change])
        log.debug("mDNS: %s registered on %s, browsing", self.instance_name, addresses)

    async def aclose(self) -> None:
        """Goodbye, stop browsing, cancel our tasks, close the sockets: bounded by CLOSE_TIMEOUT, safe to repeat."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT
        aiozc, info, browser = self._aiozc, self._info, self._browser
        try:
            if browser is not None:
                with _logged("cancel browser"):
                    await asyncio.wait_for(browser.async_cancel(), max(0.0, deadline - loop.time() - _CLOSE_RESERVE))
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time() - _CLOSE_RESERVE))
            if aiozc is not None and info is not None and self._registered:
                with _logged("unregister"):
                    goodbyes = await aiozc.async_unregister_service(info)
                    await asyncio.wait_for(goodbyes, max(0.0, deadline - loop.time() - _CLOSE_RESERVE))
        finally:
            closed = aiozc is None
            try:
                if aiozc is not None:
                    with _logged("close"):
                        await asyncio.wait_for(aiozc.async_close(), max(0.1, deadline - loop.time()))
                        closed = True
            finally:
                if not closed and aiozc is not None:  # timed out or cancelled: drop the sockets synchronously
                    with contextlib.suppress(Exception):
                        aiozc.zeroconf.close()
                self._tasks.clear()
                self._resolving.clear()
                self._closed.set()

    # -- discovery --------------------------------------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """Counters: found (on_found calls), ignored_own, ignored_cluster, ignored_protocol, malformed,
        resolve_failures."""
        return dict(self._stats)

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)

    def _on_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """AsyncServiceBrowser handler; runs in the event loop and must not block."""
        if self._closing or service_type != SERVICE_TYPE:
            return
        if state_change is ServiceStateChange.Removed:
            self._reported.pop(name, None)
            pending = self._resolving.pop(name, None)
            if pending is not None:
                pending.cancel()
            return
        # Added or Updated: resolve afresh; a resolve still running for this name has older data.
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.ensure_future(self._resolve(zeroconf, name))
        self._resolving[name] = task
        self._track(task)
        task.add_done_callback(lambda done: self._forget_resolve(name, done))

    def _forget_resolve(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            ok = await info.async_request(zeroconf, RESOLVE_TIMEOUT * 1000)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # zeroconf stopped under us, bad name, ...
            log.debug("mDNS: resolving %s failed: %r", name, exc)
            ok = False
        if not ok:
            self._stats["resolve_failures"] += 1
            return
        try:
            properties = info.properties
            # IPv4 first; an IPv6 link-local address is only usable with its scope, which zeroconf knows only when
            # the AAAA record came in over IPv6 (over IPv4 it arrives bare: drop it, a later update brings it scoped)
            addresses = info.parsed_scoped_addresses(IPVersion.V4Only) + [
                a for a in info.parsed_scoped_addresses(IPVersion.V6Only) if "%" in a or not _is_link_local(a)
            ]
        except Exception as exc:
            log.debug("mDNS: unreadable records for %s: %r", name, exc)
            properties, addresses = {}, []
        found = parse_txt(properties, addresses) if addresses else None
        if found is None:
            self._stats["malformed"] += 1
            return
        if found.node_id == self.node_id or name == self.instance_name:
            self._stats["ignored_own"] += 1
            return
        if found.cluster != self.cluster:
            self._stats["ignored_cluster"] += 1
            return
        if found.protocol != MDNS_PROTOCOL:
            self._stats["ignored_protocol"] += 1
            return
        if self._reported.get(name) == found:
            return  # a re-announcement with nothing new (e.g. a new address record that resolved the same)
        self._reported[name] = found
        self._stats["found"] += 1
        try:
            self.on_found(found)
        except Exception:
            log.exception("mDNS: on_found(%s) raised", found)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Shutdown steps are best effort: a dead network or a timeout is logged, never raised."""
    try:
        yield
    except (TimeoutError, OSError, RuntimeError) as exc:
        log.debug("mDNS: %s during close: %r", what, exc)
    except Exception:
        log.exception("mDNS: %s during close failed", what)
