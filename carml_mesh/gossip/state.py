"""The membership state machine: SWIM with Lifeguard, as HashiCorp memberlist does it. Pure: no sockets, no clock.

Every entry point takes ``now`` (seconds, any monotonic origin) and returns a list of effects for the runtime to
carry out: packets to send, TCP exchanges to make, events to report. Randomness comes from an injected
``random.Random``. The same code therefore runs on real sockets (runtime.py), and deterministically under a virtual
clock in the tests and in the 512-node simulator.

What it implements, with memberlist's names where they exist:
- randomized round-robin probing: Ping → Ack; after probe_timeout, IndirectPing through ``indirect_checks`` peers
  (they answer Nack when the target stays silent) and a TCP fallback ping; silence for the probe interval → Suspect;
- suspicion with incarnation numbers; a member refutes a Suspect/Dead about itself with a higher incarnation;
- Lifeguard: the suspicion timeout starts at ``max`` and shrinks towards ``min`` with independent confirmations
  (log scale), and a local-health score (awareness) stretches our own probe timeouts when we are the slow one;
- infection-style dissemination: broadcasts piggyback on every packet and on gossip rounds to ``gossip_nodes``
  random members, each retransmitted ``retransmit_mult · ceil(log10(n + 1))`` times, newer news about a member
  invalidating older;
- push-pull anti-entropy over TCP (the runtime carries it out), joins, graceful leave, reaping of the dead.
"""

from __future__ import annotations

import enum
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

from . import codec, crypto
from .config import GossipConfig
from .messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    State,
    Suspect,
)

log = logging.getLogger("carml.gossip")

# --- effects ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """One UDP packet: the encoded messages, piggybacked broadcasts included."""

    addr: Address
    messages: tuple[bytes, ...]


@dataclass(frozen=True)
class TcpPing:
    """Try the target over TCP; report success with ``handle_ack(now, seq)``."""

    addr: Address
    seq: int
    target: str


@dataclass(frozen=True)
class PushPullWith:
    """Exchange full state over TCP: send ``local_state(join)``, give the answer to ``merge_remote_state``."""

    addr: Address
    join: bool


class EventKind(enum.Enum):
    JOIN = "join"
    UPDATE = "update"  # meta or address changed (a new node card)
    SUSPECT = "suspect"
    ALIVE = "alive"  # a suspect refuted its suspicion
    DEAD = "dead"
    LEFT = "left"
    REAPED = "reaped"  # forgotten after gossip_to_the_dead_time


@dataclass(frozen=True)
class Event:
    kind: EventKind
    member: MemberState


Effect = Send | TcpPing | PushPullWith | Event


# --- state --------------------------------------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    addr: Address
    incarnation: int
    state: State
    meta: dict[str, Any]
    state_change: float

    def snapshot(self) -> MemberState:
        return MemberState(self.name, self.addr, self.incarnation, self.state, dict(self.meta))


@dataclass
class _Suspicion:
    """Lifeguard's dynamic suspicion timeout: max at first, min after k independent confirmations."""

    incarnation: int
    start: float
    k: int
    min_timeout: float
    max_timeout: float
    confirmers: set[str]
    next_reminder: float = 0.0  # when we tell the suspect again (suspect_reminder_interval)

    def deadline(self) -> float:
        confirmations = len(self.confirmers) - 1
        if self.k < 1 or confirmations >= self.k:
            return self.start + self.min_timeout
        frac = math.log(confirmations + 1) / math.log(self.k + 1)
        return self.start + max(self.min_timeout, self.max_timeout - frac * (self.max_timeout - self.min_timeout))


@dataclass
class _Probe:
    seq: int
    target: str
    start: float
    indirect_at: float  # direct ping unanswered by then → indirect pings + TCP fallback
    end: float  # no ack by then → suspect (unless the TCP fallback is still in flight: tcp_end)
    tcp_end: float = 0.0
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    tcp: str = "not tried"  # how the fallback went, for the log of a failed probe


@dataclass
class _Relay:
    """An IndirectPing we carry out for a peer: forgotten after probe_timeout, with a Nack then if one was asked for."""

    source_addr: Address
    source_seq: int
    expires: float
    nack: bool


@dataclass
class _Broadcast:
    key: str
    payload: bytes
    order: int
    transmits: int = 0


@dataclass
class Statistics:
    packets_in: int = 0
    messages_in: int = 0
    packets_out: int = 0
    messages_out: int = 0
    probes: int = 0
    probe_failures: int = 0
    indirect_probes: int = 0
    tcp_fallbacks: int = 0
    suspicions: int = 0
    refutations: int = 0
    deaths: int = 0
    push_pulls: int = 0
    stale_dropped: int = 0
    wrong_target: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def suspicion_timeout(mult: int, n: int, interval: float) -> float:
    """memberlist's suspicionTimeout: mult · max(1, log10(n)) · probe interval."""
    return mult * max(1.0, math.log10(max(1, n))) * interval


def retransmit_limit(mult: int, n: int) -> int:
    """memberlist's retransmitLimit: mult · ceil(log10(n + 1))."""
    return mult * math.ceil(math.log10(n + 1))


class Membership:
    """One member's view of the cluster."""

    def __init__(
        self,
        config: GossipConfig,
        *,
        meta: dict[str, Any] | None = None,
        now: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.rng = rng or random.Random()
        self.incarnation = 0
        self.meta: dict[str, Any] = dict(meta or {})
        self.members: dict[str, Member] = {
            self.name: Member(self.name, config.addr, 0, State.ALIVE, dict(self.meta), now)
        }
        self.stats = Statistics()
        self.awareness = 0  # Lifeguard local health: 0 is healthy, awareness_max_multiplier - 1 the worst
        self.leaving = False
        self._seq = 0
        self._order = 0
        self._probe_list: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._broadcasts: list[_Broadcast] = []
        # the envelope plus the sealing (crypto.py), so that a sealed packet fits max_packet too (codec.message_budget)
        self._overhead = codec.packet_overhead(config.cluster, self.name) + max(crypto.OVERHEAD, crypto.PLAIN_OVERHEAD)
        self._next_probe = now + self.rng.uniform(0, config.probe_interval)  # stagger peers' probe phases
        self._next_gossip = now + self.rng.uniform(0, config.gossip_interval)
        self._next_push_pull = now + self.rng.uniform(0, self._push_pull_interval())
        self._next_reconnect = now + config.reconnect_interval
        self._failed: dict[
            str, tuple[Address, float]
        ] = {}  # dead (not left) members: reconnect candidates  # staggered, as memberlist

    # --- queries --------------------------------------------------------------------------------------------------

    def member_states(self) -> list[MemberState]:
        return [m.snapshot() for m in self.members.values()]

    def alive_count(self) -> int:
        return sum(1 for m in self.members.values() if m.state in (State.ALIVE, State.SUSPECT))

    def awareness_multiplier(self) -> int:
        return self.awareness + 1

    def next_deadline(self) -> float:
        """The earliest time ``tick`` has something to do."""
        if self.leaving:
            return self._next_gossip
        deadlines = [self._next_gossip, self._next_push_pull, self._next_reconnect]
        if self._probe is None:
            deadlines.append(self._next_probe)
        else:
            deadlines.append(self._probe_end(self._probe) if self._probe.indirect_sent else self._probe.indirect_at)
        deadlines += [s.deadline() for s in self._suspicions.values()]
        deadlines += [s.next_reminder for s in self._suspicions.values()]
        deadlines += [r.expires for r in self._relays.values()]
        return min(deadlines)

    # --- commands -------------------------------------------------------------------------------------------------

    def join(self, addrs: list[Address]) -> list[Effect]:
        """Push-pull with each seed: the runtime merges what they answer."""
        return [PushPullWith(addr, True) for addr in addrs if addr != self.config.addr]

    def update_meta(self, now: float, meta: dict[str, Any]) -> list[Effect]:
        """Advertise a new node card digest: a higher incarnation carries it over the old one everywhere."""
        self.meta = dict(meta)
        self.incarnation = min(self.incarnation + 1, codec.MAX_UINT64)  # forged news may have pushed us to the top
        me = self.members[self.name]
        me.incarnation, me.meta = self.incarnation, dict(self.meta)
        self._queue_broadcast(self.name, Alive(self.incarnation, self.name, self.config.addr, dict(self.meta)))
        return []

    def leave(self, now: float) -> list[Effect]:
        """Graceful leave: announce our own death (source == node) straight to every live member, then gossip it."""
        self.leaving = True
        dead = Dead(self.incarnation, self.name, self.name)
        me = self.members[self.name]
        me.state, me.state_change = State.LEFT, now
        self._queue_broadcast(self.name, dead)
        payload = codec.encode_message(dead)
        return [Send(m.addr, (payload,)) for m in self._others() if m.state in (State.ALIVE, State.SUSPECT)]

    def local_state(self, join: bool = False) -> PushPull:
        return PushPull(join, tuple(m.snapshot() for m in self.members.values()))

    # --- time -----------------------------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if self.leaving:  # after a leave we only spread the news of it
            if now >= self._next_gossip:
                self._gossip(now, effects)
                self._next_gossip = now + self.config.gossip_interval
            return effects
        self._expire_relays(now, effects)
        if self._probe is not None:
            self._advance_probe(now, effects)
        # after the probe: its failure may confirm a suspicion and bring that deadline to now or before
        self._expire_suspicions(now, effects)
        self._remind_suspects(now, effects)
        if now >= self._next_probe and self._probe is None:
            self._start_probe(now, effects)
        if now >= self._next_gossip:
            self._gossip(now, effects)
            self._next_gossip = now + self.config.gossip_interval
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.config.reconnect_interval
            self._reconnect(now, effects)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self._push_pull_interval()
            peers = [m for m in self._others() if m.state == State.ALIVE]
            if peers:
                effects.append(PushPullWith(self.rng.choice(peers).addr, False))
        return effects

    def _reconnect(self, now: float, effects: list[Effect]) -> None:
        """Serf's reconnect: a failed member may be back (a healed partition, a rebooted machine); push-pull with
        one at random. If it is back, it refutes its death on merging our view, and answers with its refutation."""
        for name, (_addr, since) in list(self._failed.items()):
            if now - since > self.config.reconnect_timeout:
                del self._failed[name]
        if self._failed:
            name = self.rng.choice(sorted(self._failed))
            effects.append(PushPullWith(self._failed[name][0], False))

    # --- input ----------------------------------------------------------------------------------------------------

    def handle(self, now: float, sender: Address, messages: list[Message]) -> list[Effect]:
        """Messages of one packet received from ``sender``."""
        self.stats.packets_in += 1
        effects: list[Effect] = []
        for msg in messages:
            self.stats.messages_in += 1
            self._handle_one(now, sender, msg, effects)
        return effects

    def handle_ack(self, now: float, seq: int) -> list[Effect]:
        """An ack that arrived another way (the TCP fallback ping)."""
        effects: list[Effect] = []
        self._on_ack(now, seq, effects)
        return effects

    def tcp_ping_failed(self, now: float, seq: int, why: str) -> None:
        """The TCP fallback of probe ``seq`` got no ack (``why``): the probe need not wait for it past its interval.
        The caller ticks next (``next_deadline`` may have moved to now)."""
        if self._probe is not None and self._probe.seq == seq and self._probe.tcp == "pending":
            self._probe.tcp = f"failed after {now - self._probe.indirect_at:.2f} s: {why}"

    def merge_remote_state(self, now: float, remote: PushPull) -> list[Effect]:
        """memberlist's mergeState: alive as alive, left as left, suspect and dead as suspicion (not yet death)."""
        self.stats.push_pulls += 1
        effects: list[Effect] = []
        for s in remote.states:
            if s.state == State.ALIVE:
                self._alive(now, Alive(s.incarnation, s.name, s.addr, dict(s.meta)), effects)
            elif s.state == State.LEFT:
                self._dead(now, Dead(s.incarnation, s.name, s.name), effects)
            else:
                if s.name not in self.members and s.name != self.name:
                    continue  # never heard of it and already in doubt elsewhere: nothing to suspect yet
                self._suspect(now, Suspect(s.incarnation, s.name, self.name), effects)
        return effects

    def _handle_one(self, now: float, sender: Address, msg: Message, effects: list[Effect]) -> None:
        if isinstance(msg, Ping):
            if msg.target and msg.target != self.name:
                self.stats.wrong_target += 1  # meant for whoever held this address before us
                return
            effects.append(self._packet(sender, [codec.encode_message(Ack(msg.seq))]))
        elif isinstance(msg, IndirectPing):
            seq = self._next_seq()
            self._relays[seq] = _Relay(sender, msg.seq, now + self.config.probe_timeout, msg.nack)
            ping = Ping(seq, msg.target, self.name, self.config.addr)
            effects.append(self._packet(msg.target_addr, [codec.encode_message(ping)]))
        elif isinstance(msg, Ack):
            self._on_ack(now, msg.seq, effects)
        elif isinstance(msg, Nack):
            if self._probe is not None and self._probe.seq == msg.seq:
                self._probe.nacks += 1
        elif isinstance(msg, Alive):
            self._alive(now, msg, effects)
        elif isinstance(msg, Suspect):
            self._suspect(now, msg, effects, sender)
        elif isinstance(msg, Dead):
            self._dead(now, msg, effects, sender)
        else:  # PushPull travels over TCP only; one in a datagram is ignored
            self.stats.extra["pushpull_over_udp"] = self.stats.extra.get("pushpull_over_udp", 0) + 1

    def _on_ack(self, now: float, seq: int, effects: list[Effect]) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            effects.append(self._packet(relay.source_addr, [codec.encode_message(Ack(relay.source_seq))]))
            return
        probe = self._probe
        if probe is not None and probe.seq == seq and not probe.acked:
            probe.acked = True
            self._adjust_awareness(-1)
            self._finish_probe(now)

    # --- probing --------------------------------------------------------------------------------------------------

    def _start_probe(self, now: float, effects: list[Effect]) -> None:
        if self._probe_index >= len(self._probe_list):
            effects += self.reap(now)  # a new round: forget the long dead first, as memberlist's resetNodes does
        target = self._next_probe_target()
        scale = self.awareness_multiplier()
        if target is None:
            self._next_probe = now + self.config.probe_interval
            return
        self.stats.probes += 1
        seq = self._next_seq()
        interval = self.config.probe_interval * scale
        self._probe = _Probe(seq, target.name, now, now + self.config.probe_timeout * scale, now + interval)
        messages = [codec.encode_message(Ping(seq, target.name, self.name, self.config.addr))]
        if target.state == State.SUSPECT:
            # tell the suspect so it can refute at once (memberlist sends ping + suspect as one compound packet)
            messages.append(codec.encode_message(Suspect(target.incarnation, target.name, self.name)))
        effects.append(self._packet(target.addr, messages))

    def _advance_probe(self, now: float, effects: list[Effect]) -> None:
        probe = self._probe
        assert probe is not None
        target = self.members.get(probe.target)
        if target is None or target.state in (State.DEAD, State.LEFT):
            self._finish_probe(now)
            return
        if not probe.indirect_sent and now >= probe.indirect_at:
            probe.indirect_sent = True
            helpers = [m for m in self._others() if m.state == State.ALIVE and m.name != probe.target]
            chosen = self.rng.sample(helpers, min(self.config.indirect_checks, len(helpers)))
            probe.expected_nacks = len(chosen)
            req = codec.encode_message(IndirectPing(probe.seq, target.name, target.addr, self.name, self.config.addr))
            for helper in chosen:
                self.stats.indirect_probes += 1
                effects.append(self._packet(helper.addr, [req]))
            if self.config.tcp_fallback:
                self.stats.tcp_fallbacks += 1
                probe.tcp = "pending"
                probe.tcp_end = probe.end + self.config.tcp_ping_grace
                effects.append(TcpPing(target.addr, probe.seq, target.name))
        if now >= self._probe_end(probe):
            self.stats.probe_failures += 1
            log.info(
                "probe of %s failed: no ack in %.2f s (%d/%d nacks; TCP ping %s)",
                target.name,
                now - probe.start,
                probe.nacks,
                probe.expected_nacks,
                probe.tcp,
            )
            # Lifeguard: if the helpers' nacks did not come back either, the trouble may be ours
            self._adjust_awareness(1 + max(0, probe.expected_nacks - probe.nacks))
            self._suspect(now, Suspect(target.incarnation, target.name, self.name), effects)
            self._finish_probe(now)

    @staticmethod
    def _probe_end(probe: _Probe) -> float:
        return max(probe.end, probe.tcp_end) if probe.tcp == "pending" else probe.end

    def _finish_probe(self, now: float) -> None:
        probe = self._probe
        self._probe = None
        if probe is not None:
            self._next_probe = max(now, probe.start + self.config.probe_interval * self.awareness_multiplier())

    def _next_probe_target(self) -> Member | None:
        for _ in range(len(self._probe_list) + 1):
            if self._probe_index >= len(self._probe_list):
                self._reset_probe_list()
                if not self._probe_list:
                    return None
            name = self._probe_list[self._probe_index]
            self._probe_index += 1
            member = self.members.get(name)
            if member is not None and member.state in (State.ALIVE, State.SUSPECT):
                return member
        return None

    def _reset_probe_list(self) -> None:
        """Each round starts over in a new random order; the dead are reaped here (memberlist's resetNodes)."""
        self._probe_list = [
            n for n, m in self.members.items() if n != self.name and m.state in (State.ALIVE, State.SUSPECT)
        ]
        self.rng.shuffle(self._probe_list)
        self._probe_index = 0

    def reap(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for name, m in list(self.members.items()):
            if (
                name != self.name
                and m.state in (State.DEAD, State.LEFT)
                and now - m.state_change > self.config.gossip_to_the_dead_time
            ):
                del self.members[name]
                effects.append(Event(EventKind.REAPED, m.snapshot()))
        return effects

    def _adjust_awareness(self, delta: int) -> None:
        self.awareness = min(max(self.awareness + delta, 0), self.config.awareness_max_multiplier - 1)

    # --- membership updates ---------------------------------------------------------------------------------------

    def _alive(self, now: float, a: Alive, effects: list[Effect]) -> None:
        if a.node == self.name:
            if self.leaving:
                return
            if a.incarnation > self.incarnation or (
                a.incarnation == self.incarnation and (a.addr != self.config.addr or a.meta != self.meta)
            ):
                self._refute(a.incarnation)  # someone holds an old or forged view of us
            return
        m = self.members.get(a.node)
        if m is None:
            m = Member(a.node, a.addr, a.incarnation, State.ALIVE, dict(a.meta), now)
            self.members[a.node] = m
            self._failed.pop(a.node, None)
            # insert at a random place in the probe round so a joiner is probed within one round
            self._probe_list.insert(self.rng.randint(self._probe_index, len(self._probe_list)), a.node)
            self._queue_broadcast(a.node, a)
            effects.append(Event(EventKind.JOIN, m.snapshot()))
            return
        if a.incarnation <= m.incarnation:
            self.stats.stale_dropped += 1
            return
        old_state, changed = m.state, (a.addr != m.addr or a.meta != m.meta)
        self._suspicions.pop(a.node, None)
        self._failed.pop(a.node, None)
        m.incarnation, m.addr, m.meta, m.state = a.incarnation, a.addr, dict(a.meta), State.ALIVE
        if old_state != State.ALIVE:
            m.state_change = now
        self._queue_broadcast(a.node, a)
        if old_state in (State.DEAD, State.LEFT):
            if a.node not in self._probe_list:
                self._probe_list.insert(self.rng.randint(self._probe_index, len(self._probe_list)), a.node)
            effects.append(Event(EventKind.JOIN, m.snapshot()))
        elif old_state == State.SUSPECT:
            effects.append(Event(EventKind.ALIVE, m.snapshot()))
        if changed and old_state not in (State.DEAD, State.LEFT):
            effects.append(Event(EventKind.UPDATE, m.snapshot()))

    def _suspect(self, now: float, s: Suspect, effects: list[Effect], sender: Address | None = None) -> None:
        if s.node == self.name:
            if not self.leaving and s.incarnation >= self.incarnation:
                self._refute(s.incarnation)
                self._adjust_awareness(1)  # Lifeguard: being suspected hints that we answer too slowly
            self._answer_accuser(sender, effects)
            return
        m = self.members.get(s.node)
        if m is None or s.incarnation < m.incarnation:
            self.stats.stale_dropped += m is not None
            return
        suspicion = self._suspicions.get(s.node)
        if m.state == State.SUSPECT and suspicion is not None:
            if s.source not in suspicion.confirmers:
                suspicion.confirmers.add(s.source)
                self._queue_broadcast(s.node, s)  # independent confirmations travel too
            return
        if m.state != State.ALIVE:
            return
        m.incarnation, m.state, m.state_change = s.incarnation, State.SUSPECT, now
        self.stats.suspicions += 1
        n = self.alive_count()
        k = self.config.suspicion_mult - 2
        if n - 2 < k:  # too few members to expect that many confirmations
            k = 0
        low = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval)
        self._suspicions[s.node] = _Suspicion(
            s.incarnation, now, k, low, self.config.suspicion_max_timeout_mult * low, {s.source}
        )
        self._queue_broadcast(s.node, s)
        self._remind_suspects(now, effects)  # the suspect hears it from us now, not only if gossip picks it
        log.info(
            "suspect %s (incarnation %d) from %s: dead in %.1f s unless refuted (%.1f s with %d confirmations)",
            s.node,
            s.incarnation,
            s.source,
            self._suspicions[s.node].max_timeout,
            low,
            k,
        )
        effects.append(Event(EventKind.SUSPECT, m.snapshot()))

    def _dead(self, now: float, d: Dead, effects: list[Effect], sender: Address | None = None) -> None:
        if d.node == self.name:
            if not self.leaving and d.incarnation >= self.incarnation:  # a stale accusation is not refuted again
                self._refute(d.incarnation)
            self._answer_accuser(sender, effects)
            return
        m = self.members.get(d.node)
        if m is None or d.incarnation < m.incarnation:
            self.stats.stale_dropped += m is not None
            return
        self._suspicions.pop(d.node, None)
        if m.state in (State.DEAD, State.LEFT):
            return
        left = d.source == d.node
        m.incarnation, m.state, m.state_change = d.incarnation, State.LEFT if left else State.DEAD, now
        if not left:
            self._failed[d.node] = (m.addr, now)
        self.stats.deaths += not left
        self._queue_broadcast(d.node, d)
        effects.append(Event(EventKind.LEFT if left else EventKind.DEAD, m.snapshot()))

    def _refute(self, incarnation: int) -> None:
        if max(self.incarnation, incarnation) >= codec.MAX_UINT64:  # no uint64 beats it: forged, cannot be refuted
            self.stats.extra["unrefutable"] = self.stats.extra.get("unrefutable", 0) + 1
            return
        self.incarnation = max(self.incarnation, incarnation) + 1
        self.members[self.name].incarnation = self.incarnation
        self.stats.refutations += 1
        log.info("refuting news about us at incarnation %d: now %d", incarnation, self.incarnation)
        self._queue_broadcast(self.name, Alive(self.incarnation, self.name, self.config.addr, dict(self.meta)))

    def _answer_accuser(self, sender: Address | None, effects: list[Effect]) -> None:
        """Whoever sent us news of our suspicion or death gets our current Alive straight back, refuted now or
        before: the broadcast of a refutation may miss it (and a stale accusation means it missed one already)."""
        if sender is None or self.leaving or sender == self.config.addr:
            return
        alive = Alive(self.incarnation, self.name, self.config.addr, dict(self.meta))
        effects.append(self._packet(sender, [codec.encode_message(alive)]))

    def _remind_suspects(self, now: float, effects: list[Effect]) -> None:
        """Tell each member we suspect so, directly and again every suspect_reminder_interval, so that it refutes
        in time (it answers with its Alive: _answer_accuser)."""
        for name, suspicion in self._suspicions.items():
            m = self.members.get(name)
            if m is None or now < suspicion.next_reminder:
                continue
            suspicion.next_reminder = now + self.config.suspect_reminder_interval
            accusation = Suspect(suspicion.incarnation, name, self.name)
            # nothing rides along: a suspect may well be dead, and each broadcast has only so many transmits
            effects.append(self._packet(m.addr, [codec.encode_message(accusation)], piggyback=False))

    def _expire_suspicions(self, now: float, effects: list[Effect]) -> None:
        for name, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline():
                log.info(
                    "%s declared dead: suspect for %.1f s at incarnation %d, %d confirmations (from %s)",
                    name,
                    now - suspicion.start,
                    suspicion.incarnation,
                    len(suspicion.confirmers) - 1,
                    ", ".join(sorted(suspicion.confirmers)),
                )
                self._dead(now, Dead(suspicion.incarnation, name, self.name), effects)

    def _expire_relays(self, now: float, effects: list[Effect]) -> None:
        for seq, relay in list(self._relays.items()):
            if now >= relay.expires:
                del self._relays[seq]
                if relay.nack:
                    effects.append(self._packet(relay.source_addr, [codec.encode_message(Nack(relay.source_seq))]))

    # --- dissemination --------------------------------------------------------------------------------------------

    def _gossip(self, now: float, effects: list[Effect]) -> None:
        if not self._broadcasts:
            return
        candidates = [
            m
            for m in self._others()
            if m.state in (State.ALIVE, State.SUSPECT)
            or (m.state == State.DEAD and now - m.state_change < self.config.gossip_to_the_dead_time)
        ]
        for m in self.rng.sample(candidates, min(self.config.gossip_nodes, len(candidates))):
            packet = self._packet(m.addr, [])
            if packet.messages:
                effects.append(packet)

    def _queue_broadcast(self, key: str, msg: Message) -> None:
        """Newer news about a member replaces older news still in the queue (memberlist's invalidation)."""
        self._broadcasts = [b for b in self._broadcasts if b.key != key]
        self._order += 1
        self._broadcasts.append(_Broadcast(key, codec.encode_message(msg), self._order))

    def _packet(self, addr: Address, primary: list[bytes], *, piggyback: bool = True) -> Send:
        """A packet with ``primary`` messages, topped up with broadcasts that still fit (fewest transmits first)."""
        budget = self.config.max_packet - self._overhead - sum(len(p) + 1 for p in primary)
        messages = list(primary)
        if piggyback and self._broadcasts and budget > 0:
            limit = retransmit_limit(self.config.retransmit_mult, len(self.members))
            for b in sorted(self._broadcasts, key=lambda b: (b.transmits, -b.order)):
                if len(messages) >= codec.MAX_MESSAGES:  # a large max_packet must not make an unencodable packet
                    break
                if len(b.payload) + 1 > budget or b.payload in primary:
                    continue
                budget -= len(b.payload) + 1
                messages.append(b.payload)
                b.transmits += 1
            self._broadcasts = [b for b in self._broadcasts if b.transmits < limit]
        self.stats.packets_out += 1
        self.stats.messages_out += len(messages)
        return Send(addr, tuple(messages))

    # --- helpers --------------------------------------------------------------------------------------------------

    def _others(self) -> list[Member]:
        return [m for n, m in self.members.items() if n != self.name]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _push_pull_interval(self) -> float:
        """memberlist's pushPullScale: beyond 32 members the interval grows with log2(n) to bound TCP load."""
        n = len(getattr(self, "members", ())) or 1
        interval = self.config.push_pull_interval
        if n <= 32:
            return interval
        return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)
