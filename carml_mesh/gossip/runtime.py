"""The gossip runtime: one Membership state machine driven by real time, UDP and TCP sockets.

``async with Gossip(config, ...) as gossip:`` binds UDP and TCP on the same port, runs the timer loop and the
state machine's effects, and on exit leaves gracefully (or not, for crash tests) and closes everything it opened.
Every packet from outside goes through ``crypto.open_packet`` and ``codec.decode_packet`` first; what fails is dropped
and counted by reason, so nothing a peer sends can break the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from ..errors import CodecError, CryptoError, GossipError
from . import codec, crypto
from .config import GossipConfig
from .messages import Ack, Address, MemberState, Ping, PushPull
from .state import Effect, Event, Membership, PushPullWith, Send, TcpPing

log = logging.getLogger("carml.gossip")

# Fault injection for tests: return True to drop an outgoing (direction "out") or incoming ("in") UDP packet.
DropHook = Callable[[str, Address, bytes], bool]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: Gossip) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like: a peer is gone
        self.owner.counters["udp_errors"] += 1


class Gossip:
    def __init__(
        self,
        config: GossipConfig,
        *,
        keyring: crypto.Keyring | None = None,
        meta: dict[str, Any] | None = None,
        on_event: Callable[[Event], None] | None = None,
        drop: DropHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.keyring = keyring
        self._meta = dict(meta or {})
        self._on_event = on_event
        self._drop = drop
        self._rng = rng
        self.membership: Membership | None = None
        self.counters: Counter[str] = Counter()
        self.heard: dict[Address, float] = {}  # when each address last sent us a valid packet (monotonic)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False
        self._left = False
        self.started = time.time()

    # --- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def addr(self) -> Address:
        assert self.membership is not None, "not started"
        return self.membership.config.addr

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.config.addr
        bind_host = self.config.bind_host or host
        wanted = port
        # Port 0: the kernel picks a free UDP port, but that number may be taken for TCP; then pick again.
        for attempt in range(1 if wanted else 20):
            try:
                udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(bind_host, wanted))
                self._udp = udp
                port = udp.get_extra_info("sockname")[1]  # the real port when 0 was asked for
                self._tcp = await asyncio.start_server(self._serve_tcp, bind_host, port, reuse_address=True)
                break
            except OSError as exc:
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                if wanted == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                    continue
                await self.aclose()
                raise GossipError(f"cannot listen for gossip on {bind_host}:{port}: {exc.strerror or exc}") from exc
        config = self.config if port == self.config.addr[1] else _with_port(self.config, port)
        self.membership = Membership(config, meta=self._meta, now=loop.time(), rng=self._rng)
        self._timer = asyncio.create_task(self._run_timers(), name="gossip-timers")
        log.info(
            "gossip %s on %s:%d (cluster %r, %s)",
            config.name,
            host,
            port,
            config.cluster,
            "encrypted" if self.keyring else "plaintext",
        )

    async def aclose(self, *, leave: bool = True) -> None:
        """Leave (unless told not to, as a crash would), stop timers and tasks, close sockets. Safe twice."""
        if self._closed:
            return
        if leave and self.membership is not None and not self._left:
            with contextlib.suppress(Exception):
                await self.leave()
        self._closed = True
        for task in [self._timer, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._timer, *self._tasks] if t is not None), return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    # --- commands -------------------------------------------------------------------------------------------------

    async def join(self, addrs: list[Address]) -> int:
        """Push-pull with each seed; returns how many answered."""
        m = self._machine()
        tasks = [
            asyncio.ensure_future(self._push_pull(e.addr, e.join)) for e in m.join(addrs) if isinstance(e, PushPullWith)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return sum(1 for r in results if r is True)

    def update_meta(self, meta: dict[str, Any]) -> None:
        self._meta = dict(meta)
        m = self._machine()
        self._apply(m.update_meta(self._now(), meta))
        self._wake.set()

    async def leave(self) -> None:
        """Tell the others we go: directly to every live member, then gossip it for a moment."""
        m = self._machine()
        if self._left:
            return
        self._left = True
        self._apply(m.leave(self._now()))
        self._wake.set()
        await asyncio.sleep(self.config.leave_propagate_delay)  # let the leave gossip spread before we vanish

    def members(self) -> list[MemberState]:
        return self._machine().member_states()

    def statistics(self) -> dict[str, Any]:
        m = self._machine()
        s = m.stats
        return {
            "packets_in": s.packets_in,
            "packets_out": s.packets_out,
            "messages_in": s.messages_in,
            "messages_out": s.messages_out,
            "bytes_in": self.counters["bytes_in"],
            "bytes_out": self.counters["bytes_out"],
            "probes": s.probes,
            "probe_failures": s.probe_failures,
            "indirect_probes": s.indirect_probes,
            "tcp_fallbacks": s.tcp_fallbacks,
            "tcp_fallback_acks": self.counters["tcp_acks"],
            "suspicions": s.suspicions,
            "refutations": s.refutations,
            "deaths_declared": s.deaths,
            "push_pulls": s.push_pulls,
            "push_pull_failures": self.counters["push_pull_failures"],
            "stale_dropped": s.stale_dropped,
            "awareness": m.awareness,
            "dropped": {k.removeprefix("drop_"): v for k, v in self.counters.items() if k.startswith("drop_")},
        }

    # --- the loop -------------------------------------------------------------------------------------------------

    def _machine(self) -> Membership:
        if self.membership is None:
            raise GossipError("gossip is not started")
        return self.membership

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _run_timers(self) -> None:
        m = self._machine()
        while True:
            self._apply(m.tick(self._now()))
            # never a busy loop, whatever the deadlines say: at least a millisecond between ticks
            delay = max(0.001, m.next_deadline() - self._now())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(effect)
            elif isinstance(effect, TcpPing):
                self._spawn(self._tcp_ping(effect))
            elif isinstance(effect, PushPullWith):
                self._spawn(self._push_pull(effect.addr, effect.join))
            elif isinstance(effect, Event) and self._on_event is not None:
                try:
                    self._on_event(effect)
                except Exception:  # a listener's bug must not stop membership
                    log.exception("gossip event listener failed on %s", effect.kind)
        if effects:
            self._wake.set()

    def _spawn(self, coro: Any) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- UDP ------------------------------------------------------------------------------------------------------

    def _seal(self, encoded: tuple[bytes, ...] | list[bytes]) -> bytes:
        m = self._machine()
        return crypto.seal_packet(
            codec.encode_packet_raw(m.config.cluster, m.name, encoded), self.keyring, m.config.cluster
        )

    def _send(self, send: Send) -> None:
        if self._udp is None or self._udp.is_closing():
            return
        data = self._seal(send.messages)
        if self._drop is not None and self._drop("out", send.addr, data):
            self.counters["drop_injected_out"] += 1
            return
        self.counters["bytes_out"] += len(data)
        self._udp.sendto(data, send.addr)

    def _open(self, data: bytes, source: Address) -> list[Any] | None:
        """Decrypt, decode and check the cluster; None (counted) for anything else."""
        m = self._machine()
        try:
            payload = crypto.open_packet(data, self.keyring, m.config.cluster)
            cluster, _sender, messages = codec.decode_packet(payload)
        except CryptoError:
            self.counters["drop_crypto"] += 1
            return None
        except CodecError:
            self.counters["drop_malformed"] += 1
            return None
        if cluster != m.config.cluster:
            self.counters["drop_cluster"] += 1
            return None
        return messages

    def _on_datagram(self, data: bytes, source: Address) -> None:
        if self._closed or self.membership is None:
            return
        self.counters["bytes_in"] += len(data)
        if self._drop is not None and self._drop("in", source, data):
            self.counters["drop_injected_in"] += 1
            return
        messages = self._open(data, source)
        if messages is None:
            return
        self.heard[source] = time.monotonic()
        self._apply(self.membership.handle(self._now(), source, messages))

    # --- TCP: push-pull and the fallback ping ---------------------------------------------------------------------

    async def _exchange(self, addr: Address, messages: list[Any]) -> list[Any]:
        """One request/answer over a fresh TCP connection, framed and sealed like UDP packets."""
        m = self._machine()
        writer = None
        try:
            async with asyncio.timeout(self.config.tcp_timeout):
                reader, writer = await asyncio.open_connection(*addr)
                writer.write(codec.frame(self._seal([codec.encode_message(x) for x in messages])))
                await writer.drain()
                header = await reader.readexactly(4)
                body = await reader.readexactly(codec.frame_length(header))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, CodecError) as exc:
            raise GossipError(f"TCP exchange with {addr[0]}:{addr[1]} failed: {exc!r}") from exc
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()
        answer = self._open(body, addr)
        if answer is None:
            raise GossipError(f"{addr[0]}:{addr[1]} answered with a packet we cannot open (wrong key or cluster?)")
        del m
        return answer

    async def _push_pull(self, addr: Address, join: bool) -> bool:
        m = self._machine()
        try:
            answer = await self._exchange(addr, [m.local_state(join)])
        except GossipError as exc:
            self.counters["push_pull_failures"] += 1
            log.debug("push-pull: %s", exc)
            return False
        for msg in answer:
            if isinstance(msg, PushPull):
                self.heard[addr] = time.monotonic()
                self._apply(m.merge_remote_state(self._now(), msg))
                return True
        return False

    async def _tcp_ping(self, ping: TcpPing) -> None:
        m = self._machine()
        try:
            answer = await self._exchange(ping.addr, [Ping(ping.seq, ping.target, m.name, m.config.addr)])
        except GossipError as exc:
            m.tcp_ping_failed(self._now(), ping.seq, repr(exc.__cause__ or exc))
            self._wake.set()  # the probe may end now
            return
        if any(isinstance(x, Ack) and x.seq == ping.seq for x in answer):
            self.counters["tcp_acks"] += 1
            self._apply(m.handle_ack(self._now(), ping.seq))
        else:
            m.tcp_ping_failed(self._now(), ping.seq, "answered without the ack")
            self._wake.set()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            async with asyncio.timeout(self.config.tcp_timeout):
                header = await reader.readexactly(4)
                body = await reader.readexactly(codec.frame_length(header))
            messages = self._open(body, (str(peer[0]), int(peer[1])))
            if messages is None or self.membership is None:
                return
            m = self.membership
            replies: list[Any] = []
            for msg in messages:
                if isinstance(msg, Ping) and (not msg.target or msg.target == m.name):
                    replies.append(Ack(msg.seq))
                elif isinstance(msg, PushPull):
                    # merge first: if the caller's view has us dead, our answer already carries the refutation
                    self._apply(m.merge_remote_state(self._now(), msg))
                    replies.append(m.local_state())
            if replies:
                writer.write(codec.frame(self._seal([codec.encode_message(x) for x in replies])))
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, CodecError):
            self.counters["drop_tcp"] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


def _with_port(config: GossipConfig, port: int) -> GossipConfig:
    from dataclasses import replace

    return replace(config, addr=(config.addr[0], port))
