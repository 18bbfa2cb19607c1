"""N membership state machines over a simulated lossy network with a virtual clock, for tests and benchmarks.

Packets go through the real codec (encode, then decode at the receiver), drop with probability ``loss`` and arrive
after a random latency. TCP exchanges (fallback pings, push-pull) are reliable but fail across a partition or to a
dead node, as a refused connection would; with ``tcp_loss`` their segments drop with ``loss`` too, and cost what
Linux's retransmissions cost (a lost SYN or SYN-ACK 1 s, then 2 s, ...; lost data 200 ms, doubling), as on a lossy
link that drops every kind of packet. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .config import GossipConfig
from .messages import Address, State
from .state import Effect, Event, Membership, PushPullWith, Send, TcpPing

TCP_SYN_RTO = 1.0  # Linux's initial retransmission timeout: a lost SYN or SYN-ACK goes again after 1 s, 2 s, ...
TCP_SYN_RETRIES = 6  # net.ipv4.tcp_syn_retries
TCP_DATA_RTO = 0.2  # its minimum RTO for data, once the handshake measured a LAN round trip


@dataclass
class SimNode:
    membership: Membership
    up: bool = True
    timer_token: int = 0
    events: list[tuple[float, Event]] = field(default_factory=list)
    bytes_out: int = 0
    packets_out: int = 0


class Simulation:
    def __init__(
        self,
        *,
        seed: int = 0,
        loss: float = 0.0,
        tcp_loss: bool = False,
        latency: tuple[float, float] = (0.0002, 0.002),
        config: Callable[[str, Address], GossipConfig] | None = None,
    ) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.loss = loss
        self.tcp_loss = tcp_loss
        self.latency = latency
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Address, str] = {}
        self.partition: dict[str, int] = {}  # name -> side; nodes on different sides cannot talk
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._config = config or (lambda name, addr: GossipConfig(name=name, addr=addr))
        self.dropped = 0

    # --- building -------------------------------------------------------------------------------------------------

    def add_node(self, name: str, *, meta: dict[str, Any] | None = None, join: str | None = None) -> SimNode:
        addr = (f"10.0.{len(self.nodes) // 250}.{len(self.nodes) % 250 + 1}", 7946)
        m = Membership(self._config(name, addr), meta=meta, now=self.now, rng=random.Random(self.rng.random()))
        node = SimNode(m)
        self.nodes[name] = node
        self.by_addr[addr] = name
        if join is not None:
            self._apply(name, m.join([self.nodes[join].membership.config.addr]))
        self._schedule_tick(name)
        return node

    def kill(self, name: str) -> None:
        """A crash: the node stops answering and sending, with no goodbye."""
        self.nodes[name].up = False

    def restart(self, name: str, *, meta: dict[str, Any] | None = None, join: str | None = None) -> SimNode:
        """The process comes back at the same address with a fresh state machine (incarnation 0, knowing nobody),
        and joins through ``join`` as the runtime does with its seeds."""
        node = self.nodes[name]
        old = node.membership
        node.membership = Membership(
            self._config(name, old.config.addr), meta=meta, now=self.now, rng=random.Random(self.rng.random())
        )
        node.up = True
        if join is not None:
            self.join(name, join)
        self._schedule_tick(name)
        return node

    def join(self, name: str, via: str) -> None:
        """``name`` pushes-pulls with ``via`` as a join does (what a seed retry or an mDNS discovery triggers)."""
        self._apply(name, self.nodes[name].membership.join([self.nodes[via].membership.config.addr]))

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        self._apply(name, node.membership.leave(self.now))
        self._schedule_tick(name)

    def update_meta(self, name: str, meta: dict[str, Any]) -> None:
        self._apply(name, self.nodes[name].membership.update_meta(self.now, meta))
        self._schedule_tick(name)

    # --- running --------------------------------------------------------------------------------------------------

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance the clock to ``t``; stop early (and return True) once ``stop()`` holds."""
        while self._queue and self._queue[0][0] <= t:
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
            if stop is not None and stop():
                return True
        self.now = t
        return stop() if stop is not None else False

    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._counter), action))

    # --- views ----------------------------------------------------------------------------------------------------

    def view(self, observer: str, subject: str) -> State | None:
        m = self.nodes[observer].membership.members.get(subject)
        return m.state if m is not None else None

    def live_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.up and not node.membership.leaving]

    def all_see(self, subject: str, states: tuple[State, ...], observers: list[str] | None = None) -> bool:
        return all(self.view(o, subject) in states for o in (observers or self.live_names()) if o != subject)

    # --- internals ------------------------------------------------------------------------------------------------

    def _reachable(self, a: str, b: str) -> bool:
        return self.nodes[b].up and self.partition.get(a, 0) == self.partition.get(b, 0)

    def _schedule_tick(self, name: str) -> None:
        node = self.nodes[name]
        node.timer_token += 1
        token = node.timer_token

        def fire() -> None:
            if node.up and node.timer_token == token:
                self._apply(name, node.membership.tick(self.now))
                self._schedule_tick(name)

        heapq.heappush(self._queue, (max(self.now, node.membership.next_deadline()), next(self._counter), fire))

    def _apply(self, name: str, effects: list[Effect]) -> None:
        node = self.nodes[name]
        m = node.membership
        for effect in effects:
            if isinstance(effect, Send):
                self._send(name, effect)
            elif isinstance(effect, TcpPing):
                target = self.by_addr.get(effect.addr)
                if (
                    target is not None
                    and self._reachable(name, target)
                    and self.nodes[target].membership.name == effect.target
                ):
                    took = self._tcp_exchange()
                    if took is None or took > m.config.tcp_timeout:
                        self.at(m.config.tcp_timeout, functools.partial(self._tcp_failed, name, effect.seq, "timeout"))
                    else:
                        self.at(took, functools.partial(self._deliver_ack, name, effect.seq))
                elif target is not None and self.partition.get(name, 0) == self.partition.get(target, 0):
                    # a crashed process's host answers the SYN with a reset (a new member there answers without
                    # the ack): the fallback fails at once; across a partition it just never answers
                    rtt = 2 * self.rng.uniform(*self.latency)
                    self.at(rtt, functools.partial(self._tcp_failed, name, effect.seq, "connection refused"))
            elif isinstance(effect, PushPullWith):
                target = self.by_addr.get(effect.addr)
                if target is not None and self._reachable(name, target):
                    took = self._tcp_exchange()
                    if took is not None and took <= m.config.tcp_timeout:
                        self.at(took, functools.partial(self._push_pull, name, target, effect.join))
            elif isinstance(effect, Event):
                node.events.append((self.now, effect))
        if node.up:
            self._schedule_tick(name)
        del m

    def _send(self, name: str, send: Send) -> None:
        node = self.nodes[name]
        if not node.up:
            return
        m = node.membership
        data = codec.encode_packet_raw(m.config.cluster, m.name, send.messages)
        node.bytes_out += len(data)
        node.packets_out += 1
        target = self.by_addr.get(send.addr)
        if target is None or not self._reachable(name, target) or self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.at(self.rng.uniform(*self.latency), lambda: self._receive(target, m.config.addr, data))

    def _receive(self, name: str, sender: Address, data: bytes) -> None:
        node = self.nodes[name]
        if not node.up:
            return
        _cluster, _sender, messages = codec.decode_packet(data)
        self._apply(name, node.membership.handle(self.now, sender, messages))

    def _deliver_ack(self, name: str, seq: int) -> None:
        node = self.nodes[name]
        if node.up:
            self._apply(name, node.membership.handle_ack(self.now, seq))

    def _tcp_exchange(self) -> float | None:
        """How long a request and its answer over a new TCP connection take; None if the connection never opens."""
        if not self.tcp_loss:
            return 2 * self.rng.uniform(*self.latency)
        took, backoff = 0.0, TCP_SYN_RTO
        for _ in range(TCP_SYN_RETRIES + 1):
            if self.rng.random() >= self.loss and self.rng.random() >= self.loss:  # the SYN and the SYN-ACK
                break
            took, backoff = took + backoff, backoff * 2
        else:
            return None
        took += 2 * self.rng.uniform(*self.latency)
        for _ in ("request", "answer"):
            backoff = TCP_DATA_RTO
            while self.rng.random() < self.loss:
                took, backoff = took + backoff, backoff * 2
            took += self.rng.uniform(*self.latency)
        return took

    def _tcp_failed(self, name: str, seq: int, why: str) -> None:
        node = self.nodes[name]
        if node.up:
            node.membership.tcp_ping_failed(self.now, seq, why)
            self._apply(name, [])  # reschedules its tick: the probe may end now

    def _push_pull(self, a: str, b: str, join: bool) -> None:
        na, nb = self.nodes[a], self.nodes[b]
        if not (na.up and nb.up):
            return
        mine = na.membership.local_state(join)
        self._apply(b, nb.membership.merge_remote_state(self.now, mine))
        theirs = nb.membership.local_state()  # answered after merging, as the runtime does
        self._apply(a, na.membership.merge_remote_state(self.now, theirs))
