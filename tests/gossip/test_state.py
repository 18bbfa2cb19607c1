"""Tests of the membership state machine (SWIM + Lifeguard), driven by hand under a virtual clock.

Every test builds one ``Membership`` ("me") and feeds it messages, acks and ticks at chosen virtual times; what it
sends is decoded with the codec and asserted on. No sockets, no sleeps.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carml_mesh.errors import CodecError
from carml_mesh.gossip import codec, crypto
from carml_mesh.gossip.config import GossipConfig
from carml_mesh.gossip.messages import (
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
from carml_mesh.gossip.state import (
    Effect,
    Event,
    EventKind,
    Membership,
    PushPullWith,
    Send,
    TcpPing,
    retransmit_limit,
    suspicion_timeout,
)

# --- helpers ------------------------------------------------------------------------------------------------------

_ADDRS: dict[str, Address] = {}
_NAMES: dict[Address, str] = {}


def addr(name: str) -> Address:
    """A fixed, distinct address per name."""
    if name not in _ADDRS:
        i = len(_ADDRS) + 1
        a = (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 7946)
        _ADDRS[name], _NAMES[a] = a, name
    return _ADDRS[name]


def name_at(a: Address) -> str:
    return _NAMES[a]


def make(*others: str, name: str = "me", now: float = 0.0, seed: int = 1, **cfg: Any) -> Membership:
    """``name`` knowing ``others`` as ALIVE at incarnation 0. The TCP fallback gets no grace past the probe
    interval unless a test asks (as if it had failed by then): most tests are about the UDP channels."""
    cfg.setdefault("tcp_ping_grace", 0.0)
    m = Membership(GossipConfig(name=name, addr=addr(name), **cfg), now=now, rng=random.Random(seed))
    if others:
        m.handle(now, addr(others[0]), [Alive(0, o, addr(o), {}) for o in others])
    return m


def decoded(send: Send) -> list[Message]:
    return [codec.decode_message(b) for b in send.messages]


def sends(effects: Iterable[Any]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def sent(effects: Iterable[Any], kind: type) -> list[tuple[Address, Any]]:
    """(address, message) of every message of type ``kind`` in the Send effects, piggybacked ones included."""
    return [(s.addr, msg) for s in sends(effects) for msg in decoded(s) if isinstance(msg, kind)]


def events(effects: Iterable[Any], kind: EventKind | None = None) -> list[Event]:
    return [e for e in effects if isinstance(e, Event) and (kind is None or e.kind == kind)]


def ping_from(m: Membership, now: float, sender: str = "a", seq: int = 999) -> list[Message]:
    """The messages of our answer to a Ping: the Ack plus whatever broadcasts ride along."""
    effects = m.handle(now, addr(sender), [Ping(seq, m.name, sender, addr(sender))])
    (answer,) = sends(effects)
    assert answer.addr == addr(sender)
    msgs = decoded(answer)
    assert msgs[0] == Ack(seq)
    return msgs[1:]


def drain(m: Membership, now: float) -> None:
    """Send packets until the broadcast queue is empty."""
    for _ in range(10_000):
        if not ping_from(m, now, seq=1):
            return
    raise AssertionError("the broadcast queue never empties")


def drive(m: Membership, start: float, until: float, *, ack_pings: bool = True) -> list[tuple[float, Effect]]:
    """Tick ``m`` at each of its deadlines from ``start`` to ``until`` (inclusive); with ``ack_pings`` every member
    answers our direct pings at once. Returns (time, effect) of everything that happened, the acks' effects too."""
    out: list[tuple[float, Effect]] = []
    now = start
    ticks = 0
    while True:
        now = max(now, m.next_deadline())
        if now > until:
            return out
        effects = m.tick(now)
        ticks += 1
        assert ticks < 100_000, "tick() is not moving its deadline on"
        assert m.next_deadline() > now
        out += [(now, e) for e in effects]
        if ack_pings:
            for a, ping in sent(effects, Ping):
                if ping.source == m.name:
                    out += [(now, e) for e in m.handle(now, a, [Ack(ping.seq)])]


def at(timed: list[tuple[float, Effect]], when: float) -> list[Effect]:
    return [e for t, e in timed if t == when]


def first_probe(m: Membership, start: float = 0.0) -> tuple[float, Send, Ping]:
    """Tick until ``m`` sends its next direct probe: (when, packet, ping)."""
    now = start
    for _ in range(1000):
        now = max(now, m.next_deadline())
        for s in sends(m.tick(now)):
            for msg in decoded(s):
                if isinstance(msg, Ping) and msg.source == m.name:
                    return now, s, msg
    raise AssertionError("no probe was sent")


def suspects_in(msgs: Iterable[Message], node: str) -> list[Suspect]:
    return [x for x in msgs if isinstance(x, Suspect) and x.node == node]


# --- ping / ack -----------------------------------------------------------------------------------------------------


def test_ping_to_us_is_acked_with_the_same_seq_to_the_sender() -> None:
    m = make("a", "b")
    effects = m.handle(1.0, addr("b"), [Ping(4242, "me", "b", addr("b"))])
    (answer,) = sends(effects)
    assert answer.addr == addr("b")
    assert decoded(answer)[0] == Ack(4242)


def test_ping_with_no_target_name_is_acked() -> None:
    m = make("a")
    (answer,) = sends(m.handle(1.0, addr("a"), [Ping(7, "", "a", addr("a"))]))
    assert decoded(answer)[0] == Ack(7)


def test_ping_meant_for_another_name_is_ignored_and_counted() -> None:
    m = make("a")
    assert m.handle(1.0, addr("a"), [Ping(7, "someone-else", "a", addr("a"))]) == []
    assert m.stats.wrong_target == 1


def test_pushpull_in_a_datagram_is_ignored() -> None:
    m = make("a")
    assert m.handle(1.0, addr("a"), [PushPull(False, (MemberState("zz", addr("zz"), 0, State.ALIVE),))]) == []
    assert "zz" not in m.members
    assert m.stats.extra["pushpull_over_udp"] == 1


# --- the probe cycle --------------------------------------------------------------------------------------------


def test_probe_goes_indirect_with_tcp_fallback_then_suspects() -> None:
    m = make("a", "b", "c", "d", "e")
    t0, packet, ping = first_probe(m)
    target = ping.target
    assert name_at(packet.addr) == target
    assert (ping.source, ping.source_addr) == ("me", addr("me"))
    assert m.stats.probes == 1

    timed = drive(m, t0, t0 + 0.5, ack_pings=False)
    indirect = sent(at(timed, t0 + 0.5), IndirectPing)
    assert sent([e for t, e in timed if t < t0 + 0.5], IndirectPing) == []  # not before probe_timeout
    helpers = [name_at(a) for a, _ in indirect]
    assert len(helpers) == 3 == len(set(helpers))  # indirect_checks distinct helpers
    assert target not in helpers and "me" not in helpers
    for _, req in indirect:
        assert req == IndirectPing(ping.seq, target, addr(target), "me", addr("me"), True)
    assert [e for e in at(timed, t0 + 0.5) if isinstance(e, TcpPing)] == [TcpPing(addr(target), ping.seq, target)]
    assert m.members[target].state == State.ALIVE

    timed = drive(m, t0 + 0.5, t0 + 1.0, ack_pings=False)
    timed_effects = [e for _, e in timed]
    (event,) = events(timed_effects, EventKind.SUSPECT)
    assert [t for t, e in timed if e is event] == [t0 + 1.0]  # exactly at the probe interval
    assert event.member.name == target and event.member.state == State.SUSPECT
    assert events(timed_effects, EventKind.DEAD) == []
    assert m.members[target].state == State.SUSPECT
    assert m.stats.probe_failures == 1 and m.stats.suspicions == 1
    assert m.awareness == 1 + 3  # no nack came back from any of the three helpers
    # the suspicion is queued: it rides on the next packet we send
    assert suspects_in(ping_from(m, t0 + 1.0), target) == [Suspect(0, target, "me")]


@pytest.mark.parametrize(("others", "helpers"), [(1, 0), (2, 1), (3, 2), (4, 3), (8, 3)])
def test_indirect_probes_use_at_most_indirect_checks_helpers(others: int, helpers: int) -> None:
    m = make(*[f"p{i}" for i in range(others)])
    t0, _, ping = first_probe(m)
    timed = drive(m, t0, t0 + 0.5, ack_pings=False)
    assert len(sent(at(timed, t0 + 0.5), IndirectPing)) == helpers
    assert len([e for e in at(timed, t0 + 0.5) if isinstance(e, TcpPing)]) == 1
    drive(m, t0 + 0.5, t0 + 1.0, ack_pings=False)
    assert m.members[ping.target].state == State.SUSPECT
    assert m.awareness == 1 + helpers


def test_no_tcp_ping_when_the_fallback_is_disabled() -> None:
    m = make("a", "b", "c", tcp_fallback=False)
    t0, _, _ = first_probe(m)
    timed = drive(m, t0, t0 + 0.5, ack_pings=False)
    assert len(sent(at(timed, t0 + 0.5), IndirectPing)) == 2
    assert [e for _, e in timed if isinstance(e, TcpPing)] == []


@pytest.mark.parametrize("how", ["udp-direct", "udp-after-indirect", "tcp"])
def test_an_ack_before_the_probe_interval_means_no_suspicion(how: str) -> None:
    m = make("a", "b", "c", "d", "e")
    m.awareness = 2
    t0, _, ping = first_probe(m)
    # awareness 2 stretches the probe: indirect at 3 · probe_timeout, suspicion at 3 · probe_interval
    when = t0 + 0.2 if how == "udp-direct" else t0 + 2.0
    timed = drive(m, t0, when, ack_pings=False)
    if how == "udp-direct":
        assert sent([e for _, e in timed], IndirectPing) == []
        effects = m.handle(when, addr(ping.target), [Ack(ping.seq)])
    elif how == "udp-after-indirect":
        assert len(sent([e for _, e in timed], IndirectPing)) == 3
        effects = m.handle(when, addr("a"), [Ack(ping.seq)])  # a helper relays the target's ack
    else:
        assert len(sent([e for _, e in timed], IndirectPing)) == 3
        effects = m.handle_ack(when, ping.seq)
    assert events(effects) == []
    assert m.awareness == 1
    timed = drive(m, when, t0 + 10.0)
    assert events([e for _, e in timed], EventKind.SUSPECT) == []
    assert all(mem.state == State.ALIVE for mem in m.members.values())
    assert m.stats.probe_failures == 0


def test_nacks_from_all_helpers_spare_our_own_health() -> None:
    m = make("a", "b", "c", "d", "e")
    t0, _, ping = first_probe(m)
    timed = drive(m, t0, t0 + 0.5, ack_pings=False)
    requests = sent([e for _, e in timed], IndirectPing)
    assert len(requests) == 3
    for a, _ in requests:
        assert m.handle(t0 + 0.7, a, [Nack(ping.seq)]) == []
    drive(m, t0 + 0.7, t0 + 1.0, ack_pings=False)
    assert m.members[ping.target].state == State.SUSPECT
    assert m.awareness == 1  # only the failed probe itself: the helpers could reach us


def test_one_missing_nack_costs_one_more() -> None:
    m = make("a", "b", "c", "d", "e")
    t0, _, ping = first_probe(m)
    helpers = [a for a, _ in sent([e for _, e in drive(m, t0, t0 + 0.5, ack_pings=False)], IndirectPing)]
    for a in helpers[:2]:
        m.handle(t0 + 0.7, a, [Nack(ping.seq)])
    m.handle(t0 + 0.7, helpers[0], [Nack(ping.seq + 1000)])  # a nack for another probe does not count
    drive(m, t0 + 0.7, t0 + 1.0, ack_pings=False)
    assert m.awareness == 2


def test_awareness_scales_probe_timeout_and_interval() -> None:
    m = make("a", "b", "c", "d", "e")
    m.awareness = 2
    assert m.awareness_multiplier() == 3
    t0, _, _ = first_probe(m)
    timed = drive(m, t0, t0 + 3.0, ack_pings=False)
    indirect_times = {t for t, e in timed if isinstance(e, Send) and sent([e], IndirectPing)}
    assert indirect_times == {t0 + 0.5 * 3}  # probe_timeout · (awareness + 1)
    (suspect,) = events([e for _, e in timed], EventKind.SUSPECT)
    assert [t for t, e in timed if e is suspect] == [t0 + 1.0 * 3]  # probe_interval · (awareness + 1)
    assert m.awareness == 6  # 2 + 1 + three missing nacks
    # the next probe waits out the (now longer) scaled interval from the start of the last one
    t1, _, _ = first_probe(m, t0 + 3.0)
    assert t1 == pytest.approx(t0 + 1.0 * 7)


def test_awareness_is_clamped_to_its_range() -> None:
    m = make("a", "b", "c", "d", "e")
    now = 0.0
    for _ in range(3):  # each failure costs 4: 0 → 4 → 7 (clamped) → 7
        now, _, _ = first_probe(m, now)
        end = now + m.config.probe_interval * m.awareness_multiplier()
        drive(m, now, end, ack_pings=False)
        now = end
        assert m.awareness <= m.config.awareness_max_multiplier - 1
    assert m.awareness == m.config.awareness_max_multiplier - 1 == 7
    for expected in [6, 5, 4, 3, 2, 1, 0, 0, 0]:
        now, _, ping = first_probe(m, now)
        m.handle(now, addr(ping.target), [Ack(ping.seq)])
        assert m.awareness == expected


def test_being_suspected_raises_awareness() -> None:
    m = make("a", "b")
    m.handle(1.0, addr("a"), [Suspect(0, "me", "a")])
    assert m.awareness == 1


# --- indirect relay ---------------------------------------------------------------------------------------------


def test_indirect_ping_is_relayed_and_the_ack_comes_back_with_the_original_seq() -> None:
    m = make("a", "b")
    effects = m.handle(2.0, addr("a"), [IndirectPing(31337, "b", addr("b"), "a", addr("a"))])
    ((to, ping),) = sent(effects, Ping)
    assert to == addr("b")
    assert (ping.target, ping.source, ping.source_addr) == ("b", "me", addr("me"))
    assert ping.seq != 31337  # a seq of our own
    back = m.handle(2.1, addr("b"), [Ack(ping.seq)])
    assert sent(back, Ack) == [(addr("a"), Ack(31337))]
    # the relay is done: no nack later, and a duplicate ack is not relayed again
    assert sent(m.handle(2.2, addr("b"), [Ack(ping.seq)]), Ack) == []
    assert sent([e for _, e in drive(m, 2.2, 5.0)], Nack) == []


def test_indirect_ping_without_an_ack_is_answered_by_a_nack_after_probe_timeout() -> None:
    m = make("a", "b")
    ((_, ping),) = sent(m.handle(2.0, addr("a"), [IndirectPing(55, "b", addr("b"), "a", addr("a"))]), Ping)
    assert m.next_deadline() <= 2.0 + 0.5
    timed = drive(m, 2.0, 2.0 + 0.5, ack_pings=False)
    nacks = [(t, a, msg) for t, e in timed if isinstance(e, Send) for a, msg in sent([e], Nack)]
    assert nacks == [(2.5, addr("a"), Nack(55))]
    # a late ack is not relayed any more
    assert sent(m.handle(2.6, addr("b"), [Ack(ping.seq)]), Ack) == []


def test_indirect_ping_that_asks_for_no_nack_gets_none_and_is_forgotten() -> None:
    m = make("a", "b")
    ((_, ping),) = sent(m.handle(2.0, addr("a"), [IndirectPing(56, "b", addr("b"), "a", addr("a"), False)]), Ping)
    timed = drive(m, 2.0, 5.0, ack_pings=False)
    assert sent([e for _, e in timed], Nack) == []
    assert sent(m.handle(5.0, addr("b"), [Ack(ping.seq)]), Ack) == []  # expired like memberlist's ack handler
    assert m._relays == {}


# --- suspicion timeouts (Lifeguard) -----------------------------------------------------------------------------

LOG2_LOG3 = math.log(2) / math.log(3)


def _expected_death(n: int, confirmations: int) -> float:
    """The timeout spelled out from the rule, for comparing with the hand-written table below."""
    low = 4 * max(1.0, math.log10(n)) * 1.0
    high = 6 * low
    k = 4 - 2 if n - 2 >= 4 - 2 else 0
    if k == 0 or confirmations >= k:
        return low
    return max(low, high - (high - low) * math.log(confirmations + 1) / math.log(k + 1))


SUSPICION_TABLE = [
    # n members (us included), independent confirmations beyond the first suspicion, seconds until DEAD
    (2, 0, 4.0),  # k = 0: too few members to wait for any confirmation
    (3, 0, 4.0),
    (3, 1, 4.0),
    (4, 0, 24.0),  # k = 2: max = 6 · min
    (4, 1, 24.0 - 20.0 * LOG2_LOG3),  # 11.381...
    (4, 2, 4.0),
    (4, 3, 4.0),
    (10, 0, 24.0),
    (10, 1, 24.0 - 20.0 * LOG2_LOG3),
    (10, 2, 4.0),
    (20, 0, 24.0 * math.log10(20)),  # min = 4 · log10(20) = 5.204
    (20, 1, 24.0 * math.log10(20) - 20.0 * math.log10(20) * LOG2_LOG3),
    (20, 2, 4.0 * math.log10(20)),
    (100, 0, 48.0),
    (100, 1, 48.0 - 40.0 * LOG2_LOG3),  # 22.762...
    (100, 2, 8.0),
]


def test_suspicion_table_matches_the_rule() -> None:
    for n, c, expected in SUSPICION_TABLE:
        assert expected == pytest.approx(_expected_death(n, c)), (n, c)
    assert pytest.approx(11.3814, abs=1e-4) == 24.0 - 20.0 * LOG2_LOG3
    assert pytest.approx(22.7628, abs=1e-4) == 48.0 - 40.0 * LOG2_LOG3
    assert suspicion_timeout(4, 100, 1.0) == 8.0 and suspicion_timeout(4, 1, 1.0) == 4.0
    assert retransmit_limit(4, 9) == 4 and retransmit_limit(4, 10) == 8 and retransmit_limit(4, 100) == 12


def _death_time(m: Membership, start: float, node: str, until: float) -> float | None:
    timed = drive(m, start, until)
    about = [(t, e) for t, e in timed if isinstance(e, Event) and e.member.name == node]
    if not about:
        return None
    assert about[0][1].kind == EventKind.DEAD, about  # the first thing to happen to it
    return about[0][0]


@pytest.mark.parametrize(("n", "confirmations", "timeout"), SUSPICION_TABLE)
def test_suspicion_timeout_shrinks_with_independent_confirmations(n: int, confirmations: int, timeout: float) -> None:
    m = make(*[f"m{i}" for i in range(n - 1)])
    start = 10.0
    drive(m, 0.0, start)  # a healthy cluster until then: every probe is answered
    effects = m.handle(start, addr("m1" if n > 2 else "m0"), [Suspect(0, "m0", "s0")])
    assert [e.member.name for e in events(effects, EventKind.SUSPECT)] == ["m0"]
    for i in range(1, confirmations + 1):  # from distinct sources, the same one twice counting once
        m.handle(start, addr("m0"), [Suspect(0, "m0", f"s{i}"), Suspect(0, "m0", f"s{i}"), Suspect(0, "m0", "s0")])
    death = _death_time(m, start, "m0", start + timeout + 5.0)  # long before it would be reaped
    assert death == pytest.approx(start + timeout, abs=1e-9)
    assert m.members["m0"].state == State.DEAD
    assert m.stats.deaths == 1


def test_duplicate_confirmations_from_one_source_do_not_count() -> None:
    m = make("m0", "m1", "m2", "m3", "m4")  # n = 6, k = 2
    drive(m, 0.0, 10.0)
    m.handle(10.0, addr("m1"), [Suspect(0, "m0", "m1")])
    for t in (11.0, 12.0, 13.0):
        m.handle(t, addr("m1"), [Suspect(0, "m0", "m1")])
        m.handle(t, addr("m2"), [Suspect(0, "m0", "m2")])  # one independent confirmation, repeated
    assert _death_time(m, 13.0, "m0", 60.0) == pytest.approx(10.0 + 24.0 - 20.0 * LOG2_LOG3)


def test_a_late_confirmation_can_bring_the_deadline_to_now() -> None:
    m = make("m0", "m1", "m2")  # n = 4, k = 2
    drive(m, 0.0, 10.0)
    m.handle(10.0, addr("m1"), [Suspect(0, "m0", "s0")])
    m.handle(15.0, addr("m1"), [Suspect(0, "m0", "s1")])  # deadline 10 + 11.38
    assert _death_time(m, 15.0, "m0", 17.0) is None
    m.handle(17.0, addr("m2"), [Suspect(0, "m0", "s2")])  # k reached: min = 4 s, already past
    assert m.next_deadline() == 14.0
    assert _death_time(m, 17.0, "m0", 60.0) == 17.0


@pytest.mark.parametrize("answering_until", [10.0, 16.0])
def test_our_own_failed_probe_confirms_a_suspicion(answering_until: float) -> None:
    m = make("m0", "m1", "m2")  # n = 4, k = 2: min 4 s, max 24 s
    drive(m, 0.0, 10.0)
    m.handle(10.0, addr("m1"), [Suspect(0, "m0", "s0")])
    m.handle(10.0, addr("m1"), [Suspect(0, "m0", "s1")])  # one confirmation: deadline 10 + 11.38
    drive(m, 10.0, answering_until)  # m0 still answers (an ack does not lift a suspicion: only a refutation does)
    assert m.members["m0"].state == State.SUSPECT
    # from now on m0 is silent: our probe of it fails and adds our own confirmation (k = 2 reached: min = 4 s)
    now = answering_until
    while True:
        now, packet, ping = first_probe(m, now)
        if ping.target == "m0":
            # a probe of a suspect carries the suspicion, so that it can refute at once
            assert suspects_in(decoded(packet), "m0") == [Suspect(0, "m0", "me")]
            break
        m.handle(now, packet.addr, [Ack(ping.seq)])
    death = _death_time_no_ack_for(m, now, "m0")
    # when the shortened deadline is already past, the tick that fails the probe declares the death itself
    assert death == pytest.approx(max(now + 1.0, 10.0 + 4.0))
    assert death < 10.0 + 24.0 - 20.0 * LOG2_LOG3


def _death_time_no_ack_for(m: Membership, start: float, silent: str) -> float:
    now = start
    while True:
        now = max(now, m.next_deadline())
        assert now < start + 60
        effects = m.tick(now)
        assert m.next_deadline() > now
        for e in events(effects):
            if e.member.name == silent:
                assert e.kind == EventKind.DEAD
                return now
        for a, ping in sent(effects, Ping):
            if ping.source == m.name and ping.target != silent:
                m.handle(now, a, [Ack(ping.seq)])


# --- refutation -------------------------------------------------------------------------------------------------


def _alive_about(msgs: Iterable[Message], node: str) -> list[Alive]:
    return [x for x in msgs if isinstance(x, Alive) and x.node == node]


@pytest.mark.parametrize("accusation", ["suspect", "dead", "left-by-push-pull", "dead-by-push-pull"])
def test_an_accusation_about_us_is_refuted_with_a_higher_incarnation(accusation: str) -> None:
    m = make("a", "b")
    drain(m, 0.0)
    m.incarnation = m.members["me"].incarnation = 3
    if accusation == "suspect":
        effects = m.handle(1.0, addr("a"), [Suspect(5, "me", "a")])
    elif accusation == "dead":
        effects = m.handle(1.0, addr("a"), [Dead(5, "me", "a")])
    else:
        state = State.LEFT if accusation == "left-by-push-pull" else State.DEAD
        effects = m.merge_remote_state(1.0, PushPull(False, (MemberState("me", addr("me"), 5, state),)))
    assert events(effects) == []
    assert m.incarnation == 6 == m.members["me"].incarnation
    assert m.members["me"].state == State.ALIVE
    assert m.stats.refutations == 1
    assert _alive_about(ping_from(m, 1.0), "me") == [Alive(6, "me", addr("me"), {})]


def test_an_accusation_at_our_own_incarnation_is_refuted() -> None:
    m = make("a")
    m.handle(1.0, addr("a"), [Suspect(0, "me", "a")])
    assert m.incarnation == 1 and m.awareness == 1
    m.handle(1.0, addr("a"), [Dead(1, "me", "a")])
    assert m.incarnation == 2 and m.stats.refutations == 2


def test_stale_accusations_about_us_are_not_refuted_again() -> None:
    m = make("a")
    m.handle(1.0, addr("a"), [Suspect(0, "me", "a")])
    assert m.incarnation == 1
    drain(m, 1.0)
    # the old news still travels for a while: it must not make us bump our incarnation again and again
    m.handle(1.1, addr("a"), [Suspect(0, "me", "b"), Dead(0, "me", "b")])
    m.merge_remote_state(1.2, PushPull(False, (MemberState("me", addr("me"), 0, State.LEFT),)))
    m.merge_remote_state(1.2, PushPull(False, (MemberState("me", addr("me"), 0, State.DEAD),)))
    assert m.incarnation == 1 and m.stats.refutations == 1 and m.awareness == 1
    assert _alive_about(ping_from(m, 1.3), "me") == []


def test_an_alive_about_us_with_a_higher_incarnation_is_refuted() -> None:
    """A stale view of a restarted node: others remember us at a higher incarnation than we start with."""
    m = Membership(GossipConfig(name="me", addr=addr("me")), meta={"card": "new"}, rng=random.Random(1))
    m.handle(0.0, addr("a"), [Alive(0, "a", addr("a"), {})])
    drain(m, 0.0)
    m.handle(1.0, addr("a"), [Alive(7, "me", addr("me"), {"card": "old"})])
    assert m.incarnation == 8 and m.stats.refutations == 1
    assert _alive_about(ping_from(m, 1.0), "me") == [Alive(8, "me", addr("me"), {"card": "new"})]


def test_an_alive_about_us_at_our_incarnation() -> None:
    m = Membership(GossipConfig(name="me", addr=addr("me")), meta={"card": "x"}, rng=random.Random(1))
    m.handle(1.0, addr("a"), [Alive(0, "me", addr("me"), {"card": "x"})])  # just our own news coming back
    assert m.incarnation == 0 and m.stats.refutations == 0
    m.handle(1.0, addr("a"), [Alive(0, "me", addr("me"), {"card": "forged"})])  # same incarnation, other card
    assert m.incarnation == 1 and m.stats.refutations == 1
    m.handle(1.0, addr("a"), [Alive(1, "me", ("10.9.9.9", 7946), {"card": "x"})])  # another address
    assert m.incarnation == 2 and m.stats.refutations == 2


def test_a_leaving_member_does_not_refute() -> None:
    m = make("a")
    m.leave(1.0)
    inc = m.incarnation
    m.handle(1.1, addr("a"), [Suspect(inc, "me", "a"), Dead(inc, "me", "a"), Alive(inc + 5, "me", addr("me"), {})])
    assert m.incarnation == inc and m.stats.refutations == 0


def test_an_accusation_at_the_largest_incarnation_is_survived() -> None:
    """No uint64 beats 2**64 - 1: refuting it would need an incarnation the codec cannot send (it used to raise
    CodecError out of handle() and leave us with an incarnation that broke every later packet about us)."""
    m = make("a")
    top = codec.MAX_UINT64
    m.handle(1.0, addr("a"), [Suspect(top, "me", "a"), Dead(top, "me", "a"), Alive(top, "me", addr("me"), {"x": 1})])
    assert m.incarnation == 0 and m.stats.extra["unrefutable"] == 3
    m.handle(1.0, addr("a"), [Suspect(top - 1, "me", "a")])  # this one can still be beaten
    assert m.incarnation == top
    assert _alive_about(ping_from(m, 1.0), "me") == [Alive(top, "me", addr("me"), {})]
    codec.encode_message(m.local_state())
    m.handle(1.0, addr("a"), [Dead(top, "me", "a")])
    assert m.incarnation == top and m.stats.extra["unrefutable"] == 4


# --- stale news, updates ----------------------------------------------------------------------------------------


def test_news_older_than_what_we_know_is_dropped() -> None:
    m = make("a", "b")
    m.handle(1.0, addr("a"), [Alive(3, "a", addr("a"), {})])
    base = m.stats.stale_dropped
    effects = m.handle(2.0, addr("b"), [Alive(2, "a", addr("a"), {"x": 1}), Suspect(2, "a", "b"), Dead(2, "a", "b")])
    assert events(effects) == []
    assert m.stats.stale_dropped == base + 3
    assert (m.members["a"].state, m.members["a"].incarnation, m.members["a"].meta) == (State.ALIVE, 3, {})
    m.handle(2.0, addr("b"), [Alive(3, "a", addr("a"), {"x": 1})])  # the same incarnation is old news too
    assert m.stats.stale_dropped == base + 4 and m.members["a"].meta == {}


def test_alive_with_a_higher_incarnation_clears_a_suspicion() -> None:
    m = make("a", "b", "c")
    assert [e.kind for e in events(m.handle(1.0, addr("b"), [Suspect(0, "a", "b")]))] == [EventKind.SUSPECT]
    assert m.handle(1.5, addr("b"), [Alive(0, "a", addr("a"), {})]) == []  # not a refutation
    assert m.members["a"].state == State.SUSPECT
    effects = m.handle(2.0, addr("a"), [Alive(1, "a", addr("a"), {})])
    assert [(e.kind, e.member.state, e.member.incarnation) for e in events(effects)] == [
        (EventKind.ALIVE, State.ALIVE, 1)
    ]
    assert m.members["a"].state == State.ALIVE
    assert m.next_deadline() < 1.0 + 24.0
    # the suspicion timer is gone: a is still alive long after its deadline would have been
    drive(m, 2.0, 40.0)
    assert m.members["a"].state == State.ALIVE


def test_alive_with_new_meta_is_an_update() -> None:
    m = make("a", "b")
    effects = m.handle(1.0, addr("b"), [Alive(1, "a", addr("a"), {"card": "v2"})])
    assert [(e.kind, e.member.meta) for e in events(effects)] == [(EventKind.UPDATE, {"card": "v2"})]
    effects = m.handle(1.0, addr("b"), [Alive(2, "a", ("10.200.0.1", 7946), {"card": "v2"})])
    assert [(e.kind, e.member.addr) for e in events(effects)] == [(EventKind.UPDATE, ("10.200.0.1", 7946))]
    assert m.handle(1.0, addr("b"), [Alive(3, "a", ("10.200.0.1", 7946), {"card": "v2"})]) == []
    m.handle(1.0, addr("b"), [Suspect(3, "a", "b")])
    effects = m.handle(1.0, addr("b"), [Alive(4, "a", ("10.200.0.1", 7946), {"card": "v3"})])
    assert [e.kind for e in events(effects)] == [EventKind.ALIVE, EventKind.UPDATE]


def test_a_new_member_is_a_join() -> None:
    m = make("a")
    effects = m.handle(1.0, addr("a"), [Alive(4, "new", addr("new"), {"card": "c"})])
    assert [(e.kind, e.member) for e in events(effects)] == [
        (EventKind.JOIN, MemberState("new", addr("new"), 4, State.ALIVE, {"card": "c"}))
    ]
    # and it is probed within the round
    now, names = 1.0, set()
    for _ in range(3):
        now, packet, ping = first_probe(m, now)
        names.add(ping.target)
        m.handle(now, packet.addr, [Ack(ping.seq)])
    assert names == {"a", "new"}


def test_suspicion_or_death_of_an_unknown_member_is_ignored() -> None:
    m = make("a")
    assert m.handle(1.0, addr("a"), [Suspect(0, "ghost", "a"), Dead(0, "ghost", "a")]) == []
    assert "ghost" not in m.members


# --- dead vs left -----------------------------------------------------------------------------------------------


def test_dead_from_someone_else_is_death_and_from_the_node_itself_is_leaving() -> None:
    m = make("a", "b", "c")
    effects = m.handle(1.0, addr("c"), [Dead(0, "a", "a"), Dead(0, "b", "c")])
    assert [(e.kind, e.member.name, e.member.state) for e in events(effects)] == [
        (EventKind.LEFT, "a", State.LEFT),
        (EventKind.DEAD, "b", State.DEAD),
    ]
    assert m.stats.deaths == 1  # a leave is not a death
    assert m.alive_count() == 2  # c and us
    # news of a dead member again changes nothing
    assert m.handle(1.5, addr("c"), [Dead(0, "b", "c"), Dead(0, "a", "a"), Suspect(0, "b", "c")]) == []


def test_dead_members_come_back_with_a_higher_incarnation() -> None:
    m = make("a", "b", "c")
    m.handle(1.0, addr("c"), [Dead(0, "a", "a"), Dead(0, "b", "c")])
    assert m.handle(2.0, addr("c"), [Alive(0, "b", addr("b"), {})]) == []  # the same incarnation: old news
    effects = m.handle(2.0, addr("c"), [Alive(1, "b", addr("b"), {}), Alive(1, "a", addr("a"), {"new": True})])
    assert [(e.kind, e.member.name, e.member.state) for e in events(effects)] == [
        (EventKind.JOIN, "b", State.ALIVE),
        (EventKind.JOIN, "a", State.ALIVE),
    ]
    assert m.members["a"].meta == {"new": True}
    # they are probed again
    now, names = 2.0, set()
    for _ in range(4):
        now, packet, ping = first_probe(m, now)
        names.add(ping.target)
        m.handle(now, packet.addr, [Ack(ping.seq)])
    assert names == {"a", "b", "c"}


def test_dead_members_are_not_probed() -> None:
    m = make("a", "b", "c")
    m.handle(0.0, addr("c"), [Dead(0, "a", "a"), Dead(0, "b", "c")])
    timed = drive(m, 0.0, 20.0)
    assert {p.target for _, p in sent([e for _, e in timed], Ping) if p.source == "me"} == {"c"}


# --- broadcasts ---------------------------------------------------------------------------------------------------


def test_newer_news_about_a_member_replaces_older_news() -> None:
    m = make("a", "b", "c")
    drain(m, 0.0)
    m.handle(1.0, addr("b"), [Suspect(0, "a", "b")])
    m.handle(1.0, addr("a"), [Alive(1, "a", addr("a"), {"v": 2})])
    about_a = [x for x in ping_from(m, 1.0, "c") if getattr(x, "node", None) == "a"]
    assert about_a == [Alive(1, "a", addr("a"), {"v": 2})]
    m.handle(1.0, addr("b"), [Dead(1, "a", "b")])
    about_a = [x for x in ping_from(m, 1.0, "c") if getattr(x, "node", None) == "a"]
    assert about_a == [Dead(1, "a", "b")]


@pytest.mark.parametrize(("others", "limit"), [(5, 4), (8, 4), (9, 8), (98, 8), (99, 12)])
def test_each_broadcast_is_sent_retransmit_limit_times(others: int, limit: int) -> None:
    names = [f"p{i}" for i in range(others)]
    m = make(*names)
    assert limit == retransmit_limit(4, others + 1)
    drain(m, 0.0)
    m.handle(1.0, addr("p0"), [Alive(1, "p0", addr("p0"), {"v": 2})])
    carried = [ping_from(m, 1.0, "p1").count(Alive(1, "p0", addr("p0"), {"v": 2})) for _ in range(3 * limit)]
    assert carried == [1] * limit + [0] * (2 * limit)


def test_gossip_rounds_carry_broadcasts_to_gossip_nodes_members() -> None:
    m = make(*[f"p{i}" for i in range(10)])
    drain(m, 0.0)

    def gossip_packets(effects: list[Effect]) -> list[Send]:  # packets of broadcasts only, no ping to carry them
        return [s for s in sends(effects) if not isinstance(decoded(s)[0], Ping | IndirectPing | Ack | Nack)]

    assert gossip_packets(m.tick(max(0.0, m._next_gossip))) == []  # nothing to tell: silence
    m.handle(1.0, addr("p0"), [Alive(1, "p0", addr("p0"), {"v": 2})])
    now = max(1.0, m._next_gossip)
    packets = gossip_packets(m.tick(now))
    assert all(decoded(s) == [Alive(1, "p0", addr("p0"), {"v": 2})] for s in packets)
    assert len(packets) == 3 == len({s.addr for s in packets})  # gossip_nodes distinct members
    assert addr("me") not in {s.addr for s in packets}


def test_packets_never_exceed_max_packet_and_broadcasts_go_fewest_transmitted_first() -> None:
    names = [f"member-{i:03d}-" + "x" * 40 for i in range(300)]
    m = make(*names)
    m.update_meta(0.0, {"card": "y" * 60})
    queued = {b.payload for b in m._broadcasts}
    assert len(queued) == 301
    seen: dict[bytes, int] = {}
    packets = 0
    while True:
        effects = m.handle(1.0, addr(names[0]), [Ping(packets, "me", names[0], addr(names[0]))])
        (packet,) = sends(effects)
        wire = codec.encode_packet_raw(m.config.cluster, m.name, packet.messages)
        assert len(wire) + crypto.OVERHEAD <= m.config.max_packet  # even once sealed
        cluster, sender, msgs = codec.decode_packet(wire)
        assert (cluster, sender, msgs[0]) == ("default", "me", Ack(packets))
        packets += 1
        if len(packet.messages) == 1:
            break
        carried = set(packet.messages[1:])
        counts = {seen.get(p, 0) for p in carried}
        # fewest transmitted first: nothing goes out a second time while something has not gone out once
        if max(counts) > 0:
            assert all(seen.get(p, 0) > 0 or p in carried for p in queued)
        assert max(counts) - min(counts) <= 1
        for p in carried:
            seen[p] = seen.get(p, 0) + 1
        if packets == 1:
            assert len(wire) > m.config.max_packet - 100  # filled, not sent half empty
    assert set(seen) == queued
    assert set(seen.values()) == {retransmit_limit(4, 301)}
    assert packets >= 301 * retransmit_limit(4, 301) / 19  # 18 broadcasts of ~72 bytes fit in a packet


def test_a_large_max_packet_never_makes_more_messages_than_a_packet_may_hold() -> None:
    names = [f"p{i}" for i in range(600)]
    m = make(*names, max_packet=60_000)
    (packet,) = sends(m.handle(1.0, addr("p0"), [Ping(1, "me", "p0", addr("p0"))]))
    assert len(packet.messages) == codec.MAX_MESSAGES
    wire = codec.encode_packet_raw("default", "me", packet.messages)  # used to raise CodecError: > 256 messages
    assert len(codec.decode_packet(wire)[2]) == codec.MAX_MESSAGES


# --- update_meta, leave ---------------------------------------------------------------------------------------


def test_update_meta_bumps_the_incarnation_and_queues_an_alive() -> None:
    m = make("a", "b")
    drain(m, 0.0)
    assert m.update_meta(1.0, {"card": "digest-2"}) == []
    assert m.incarnation == 1
    assert m.members["me"].snapshot() == MemberState("me", addr("me"), 1, State.ALIVE, {"card": "digest-2"})
    assert _alive_about(ping_from(m, 1.0), "me") == [Alive(1, "me", addr("me"), {"card": "digest-2"})]
    assert m.local_state().states[0] == MemberState("me", addr("me"), 1, State.ALIVE, {"card": "digest-2"})
    # and the receiving side sees an UPDATE
    other = make("me", name="a")
    effects = other.handle(1.0, addr("me"), [Alive(1, "me", addr("me"), {"card": "digest-2"})])
    assert [(e.kind, e.member.meta) for e in events(effects)] == [(EventKind.UPDATE, {"card": "digest-2"})]


def test_leave_tells_every_live_member_and_then_only_gossips() -> None:
    m = make("a", "b", "c", "d")
    m.handle(0.0, addr("a"), [Suspect(0, "b", "a"), Dead(0, "c", "a"), Dead(0, "d", "d")])
    effects = m.leave(1.0)
    assert sorted(name_at(s.addr) for s in sends(effects)) == ["a", "b"]  # the alive and the suspect
    for s in sends(effects):
        assert decoded(s) == [Dead(0, "me", "me")]
    assert m.members["me"].state == State.LEFT and m.leaving
    probes = m.stats.probes
    timed = drive(m, 1.0, 30.0, ack_pings=False)
    assert all(isinstance(e, Send) for _, e in timed)  # no TCP ping, no push-pull, no event
    msgs = [x for _, e in timed for x in decoded(e)]  # type: ignore[arg-type]
    assert not any(isinstance(x, Ping | IndirectPing) for x in msgs)
    assert Dead(0, "me", "me") in msgs
    assert m.stats.probes == probes
    assert m.next_deadline() == m._next_gossip
    # the others see a leave, not a death
    other = make("me", "b", name="a")
    effects = other.handle(1.0, addr("me"), [Dead(0, "me", "me")])
    assert [e.kind for e in events(effects)] == [EventKind.LEFT]


def test_a_leaving_member_still_answers_pings() -> None:
    m = make("a")
    m.leave(1.0)
    assert ping_from(m, 1.1) is not None


# --- push-pull ----------------------------------------------------------------------------------------------------


def test_join_asks_each_seed_for_a_push_pull_but_not_ourselves() -> None:
    m = make()
    assert m.join([addr("a"), addr("me"), addr("b")]) == [PushPullWith(addr("a"), True), PushPullWith(addr("b"), True)]
    assert m.local_state(True).join is True


def test_merge_remote_state() -> None:
    m = make("k-alive", "k-left", "k-dead", "k-suspect")
    remote = PushPull(
        False,
        (
            MemberState("new", addr("new"), 2, State.ALIVE, {"card": 1}),
            MemberState("k-left", addr("k-left"), 0, State.LEFT),
            MemberState("k-dead", addr("k-dead"), 0, State.DEAD),
            MemberState("k-suspect", addr("k-suspect"), 0, State.SUSPECT),
            MemberState("unknown-dead", addr("unknown-dead"), 0, State.DEAD),
            MemberState("unknown-suspect", addr("unknown-suspect"), 0, State.SUSPECT),
            MemberState("k-alive", addr("k-alive"), 0, State.ALIVE),
        ),
    )
    effects = m.merge_remote_state(1.0, remote)
    assert [(e.kind, e.member.name) for e in events(effects)] == [
        (EventKind.JOIN, "new"),
        (EventKind.LEFT, "k-left"),
        (EventKind.SUSPECT, "k-dead"),  # dead elsewhere is only a suspicion here: it may refute
        (EventKind.SUSPECT, "k-suspect"),
    ]
    states = {s.name: s.state for s in m.member_states()}
    assert states == {
        "me": State.ALIVE,
        "new": State.ALIVE,
        "k-alive": State.ALIVE,
        "k-left": State.LEFT,
        "k-dead": State.SUSPECT,
        "k-suspect": State.SUSPECT,
    }
    assert m.members["new"].meta == {"card": 1} and m.members["new"].incarnation == 2
    assert m.stats.push_pulls == 1
    # the suspicions raised by a push-pull are ours (source = us), so they wait out the full Lifeguard maximum
    assert min(s.deadline() for s in m._suspicions.values()) == pytest.approx(1.0 + 6 * 4.0)


def test_merge_remote_state_with_us_dead_refutes() -> None:
    m = make("a")
    effects = m.merge_remote_state(1.0, PushPull(False, (MemberState("me", addr("me"), 0, State.DEAD),)))
    assert events(effects) == []
    assert m.incarnation == 1 and m.members["me"].state == State.ALIVE
    assert _alive_about(ping_from(m, 1.0), "me") == [Alive(1, "me", addr("me"), {})]


# --- reaping ------------------------------------------------------------------------------------------------------


def test_the_dead_are_reaped_at_the_start_of_a_probe_round_after_gossip_to_the_dead_time() -> None:
    m = make("a", "b", "c", "d")
    m.handle(1.0, addr("a"), [Dead(0, "c", "a"), Dead(0, "d", "d")])
    timed = drive(m, 1.0, 40.0)
    reaped = [(t, e) for t, e in timed if isinstance(e, Event) and e.kind == EventKind.REAPED]
    assert sorted(e.member.name for _, e in reaped) == ["c", "d"]
    assert {e.member.state for _, e in reaped} == {State.DEAD, State.LEFT}
    when = reaped[0][0]
    assert all(t == when for t, _ in reaped)
    assert 1.0 + 30.0 < when <= 1.0 + 30.0 + 2 * 1.0  # a round is 2 probes here
    # a probe round starts in that very tick
    assert any(p.source == "me" for _, p in sent(at(timed, when), Ping))
    assert "c" not in m.members and "d" not in m.members
    assert {s.name for s in m.member_states()} == {"me", "a", "b"}
    # a reaped member is new again when it comes back
    effects = m.handle(41.0, addr("a"), [Alive(0, "c", addr("c"), {})])
    assert [e.kind for e in events(effects)] == [EventKind.JOIN]


def test_reap_spares_the_living_and_the_recently_dead() -> None:
    m = make("a", "b")
    m.handle(10.0, addr("a"), [Dead(0, "b", "a")])
    assert m.reap(40.0) == []
    assert [e.member.name for e in m.reap(40.1)] == ["b"]
    assert set(m.members) == {"me", "a"}


# --- properties -------------------------------------------------------------------------------------------------

NAMES = ["me", "a", "b", "c", "d"]
names_st = st.sampled_from(NAMES) | st.text(min_size=1, max_size=4)
inc_st = (
    st.integers(0, 3) | st.sampled_from([codec.MAX_UINT64 - 1, codec.MAX_UINT64]) | st.integers(0, codec.MAX_UINT64)
)
seq_st = st.integers(0, 40) | st.integers(0, codec.MAX_UINT64)
addr_st = st.sampled_from([addr(n) for n in NAMES]) | st.tuples(
    st.sampled_from(["10.9.0.1", "::1", "h"]), st.integers(1, 65535)
)
scalar_st = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.binary(max_size=6)
)
meta_st = st.dictionaries(
    st.text(max_size=4),
    st.recursive(
        scalar_st,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=6,
    ),
    max_size=3,
)
member_state_st = st.builds(MemberState, names_st, addr_st, inc_st, st.sampled_from(State), meta_st)
message_st = st.one_of(
    st.builds(Ping, seq_st, st.sampled_from(["", *NAMES]), names_st, addr_st),
    st.builds(IndirectPing, seq_st, names_st, addr_st, names_st, addr_st, st.booleans()),
    st.builds(Ack, seq_st),
    st.builds(Nack, seq_st),
    st.builds(Alive, inc_st, names_st, addr_st, meta_st),
    st.builds(Suspect, inc_st, names_st, names_st),
    st.builds(Dead, inc_st, names_st, names_st),
    st.builds(PushPull, st.booleans(), st.lists(member_state_st, max_size=4).map(tuple)),
)


def _wire(msg: Message) -> Message | None:
    """What a peer could really send: the message as it comes out of encode + decode, or None if it cannot be sent."""
    try:
        return codec.decode_message(codec.encode_message(msg))
    except CodecError:
        return None


op_st = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.001, 0.1, 0.25, 0.5, 1.0, 3.0, 31.0])),
    st.tuples(st.just("handle"), st.lists(message_st, min_size=1, max_size=3), addr_st),
    st.tuples(st.just("ack-last-ping"), st.booleans()),
    st.tuples(st.just("tcp-ack"), seq_st),
    st.tuples(st.just("merge"), st.lists(member_state_st, max_size=5)),
    st.tuples(st.just("meta"), meta_st),
    st.tuples(st.just("kill"), st.sampled_from(NAMES[1:])),  # that member stops answering our pings
    st.tuples(st.just("leave"), st.just(None)),
)


def _check_sendable(effects: list[Effect], m: Membership) -> None:
    for e in effects:
        if isinstance(e, Send):
            wire = codec.encode_packet_raw(m.config.cluster, m.name, e.messages)
            assert len(wire) + crypto.OVERHEAD <= m.config.max_packet or len(e.messages) == 1
            codec.decode_packet(wire)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, max_size=40), seed=st.integers(0, 2**32 - 1))
def test_next_deadline_is_never_in_the_past_and_handle_never_raises(ops: list[Any], seed: int) -> None:
    m = make("a", "b", "c", seed=seed)
    now = 0.0
    dead: set[str] = set()
    last_ping: tuple[Address, Ping] | None = None
    for op, *args in ops:
        if op == "tick":
            now += args[0]
            effects = m.tick(now)
            assert m.next_deadline() >= now
            assert m.next_deadline() > now  # strictly: a loop ticking at next_deadline() would never advance
            # answer our pings, as the members that are not dead do
            for a, ping in sent(effects, Ping):
                if ping.source == m.name:
                    last_ping = (a, ping)
        elif op == "handle":
            msgs = [w for w in map(_wire, args[0]) if w is not None]
            effects = m.handle(now, args[1], msgs)
        elif op == "ack-last-ping":
            effects = []
            if last_ping is not None and (args[0] or _NAMES.get(last_ping[0]) not in dead):
                effects = m.handle(now, last_ping[0], [Ack(last_ping[1].seq)])
        elif op == "tcp-ack":
            effects = m.handle_ack(now, args[0])
        elif op == "merge":
            states = tuple(s for s in args[0] if _wire(PushPull(False, (s,))) is not None)
            effects = m.merge_remote_state(now, PushPull(False, states))
        elif op == "meta":
            if _wire(Alive(0, "me", addr("me"), args[0])) is None:
                continue
            effects = m.update_meta(now, args[0])
        elif op == "kill":
            dead.add(args[0])
            effects = []
        else:
            effects = m.leave(now)
        _check_sendable(effects, m)
        codec.encode_message(m.local_state())  # what a push-pull would send about us stays encodable
        assert m.members[m.name].incarnation == m.incarnation
        assert 0 <= m.awareness <= m.config.awareness_max_multiplier - 1
    effects = m.tick(now + 100.0)
    assert m.next_deadline() > now + 100.0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(msgs=st.lists(message_st, min_size=1, max_size=6), sender=addr_st, seed=st.integers(0, 1000))
def test_handle_never_raises_on_any_decodable_message(msgs: list[Message], sender: Address, seed: int) -> None:
    m = make("a", "b", "c", seed=seed)
    now, _, _ = first_probe(m)  # a probe in flight, so that acks and nacks may hit it
    for msg in msgs:
        w = _wire(msg)
        if w is None:
            continue
        effects = m.handle(now, sender, [w])
        _check_sendable(effects, m)
        now += 0.1
        _check_sendable(m.tick(now), m)
        assert m.next_deadline() > now


# --- under loss of every kind of packet (issue #12: false deaths at 30 % loss, UDP and TCP) -----------------------


def test_a_tcp_fallback_still_in_flight_gets_the_grace_before_we_suspect() -> None:
    """A lost SYN is sent again only after 1 s: the fallback may answer past the probe interval, and then it counts."""
    m = make("a", "b", "c", "d", tcp_ping_grace=1.0)
    t0, _, ping = first_probe(m)
    timed = drive(m, t0, t0 + 1.9, ack_pings=False)
    assert events([e for _, e in timed], EventKind.SUSPECT) == []
    assert m.members[ping.target].state == State.ALIVE
    assert m.next_deadline() == pytest.approx(t0 + 2.0)
    m.handle_ack(t0 + 1.9, ping.seq)  # the TCP ack, late but within the grace
    drain(m, t0 + 1.9)
    assert m.members[ping.target].state == State.ALIVE and m.stats.probe_failures == 0


def test_a_failed_tcp_fallback_ends_the_probe_at_its_interval() -> None:
    """A crashed process's host refuses the connection at once: no grace, detection as fast as before."""
    m = make("a", "b", "c", "d", tcp_ping_grace=1.0)
    t0, _, ping = first_probe(m)
    drive(m, t0, t0 + 0.6, ack_pings=False)
    m.tcp_ping_failed(t0 + 0.6, ping.seq, "connection refused")
    timed = drive(m, t0 + 0.6, t0 + 1.0, ack_pings=False)
    (event,) = events([e for _, e in timed], EventKind.SUSPECT)
    assert [t for t, e in timed if e is event] == [t0 + 1.0]


def test_a_tcp_fallback_that_never_answers_is_waited_for_only_the_grace() -> None:
    m = make("a", "b", "c", "d", tcp_ping_grace=1.0)
    t0, _, _ = first_probe(m)
    timed = drive(m, t0, t0 + 2.0, ack_pings=False)
    (event,) = events([e for _, e in timed], EventKind.SUSPECT)
    assert [t for t, e in timed if e is event] == [t0 + 2.0]


def test_a_new_suspicion_is_told_to_the_suspect_directly_and_again_until_refuted() -> None:
    m = make("a", "b", "c", suspect_reminder_interval=0.5)
    effects = m.handle(1.0, addr("b"), [Suspect(0, "a", "b")])
    to_a = [p for p in sends(effects) if p.addr == addr("a")]
    assert [decoded(p)[0] for p in to_a] == [Suspect(0, "a", "me")]  # broadcasts may ride along behind it
    assert m._suspicions["a"].next_reminder == pytest.approx(1.5)
    timed = drive(m, 1.0, 2.6)
    reminders = [t for t, e in timed if isinstance(e, Send) and e.addr == addr("a") and suspects_in(decoded(e), "a")]
    assert {1.5, 2.0, 2.5} <= set(reminders)  # (gossip and probes may carry it too)
    m.handle(2.6, addr("a"), [Alive(1, "a", addr("a"), {})])
    timed = drive(m, 2.6, 5.0)
    assert not [e for _, e in timed if isinstance(e, Send) and e.addr == addr("a") and suspects_in(decoded(e), "a")]


@pytest.mark.parametrize("accusation", ["suspect", "dead"])
def test_an_accuser_gets_our_alive_back_even_for_a_stale_accusation(accusation: str) -> None:
    """It may have missed our refutation: the broadcast goes to random members only a few times."""
    m = make("a", "b")
    m.handle(1.0, addr("b"), [Suspect(0, "me", "b")])  # refuted: incarnation 1
    assert m.incarnation == 1
    old = Suspect(0, "me", "a") if accusation == "suspect" else Dead(0, "me", "a")
    effects = m.handle(2.0, addr("a"), [old])
    assert m.incarnation == 1  # not refuted again
    back = [decoded(p) for p in sends(effects) if p.addr == addr("a")]
    assert [msgs[0] for msgs in back] == [Alive(1, "me", addr("me"), {})]
