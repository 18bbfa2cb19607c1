"""Whole-cluster behaviour of the membership protocol, in the simulator: N state machines over a lossy virtual
network. Every assert on time is on *virtual* time, deterministic for a seed: none of them can flake.

Measured with the LAN defaults (probe 1 s, suspicion_mult 4, gossip 0.2 s), for the record:
kill -> every survivor marks it DEAD, N = 8, seeds 0..19: mean 5.9 s, median 5.8 s, max 8.1 s;
a new node card reaches all of N = 32 in about 2 gossip rounds (max 3 over 20 seeds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carml_mesh.gossip.config import GossipConfig
from carml_mesh.gossip.messages import Address, State
from carml_mesh.gossip.simulator import Simulation
from carml_mesh.gossip.state import EventKind

ALIVE = (State.ALIVE,)


def config(**overrides: Any) -> Callable[[str, Address], GossipConfig]:
    return lambda name, addr: GossipConfig(name=name, addr=addr, **overrides)


def cluster(n: int, seed: int, **kw: Any) -> Simulation:
    """``n`` nodes, n0 the seed every other one joins through, all started at time 0."""
    sim = Simulation(seed=seed, **kw)
    sim.add_node("n0", meta={"card": "n0-v1"})
    for i in range(1, n):
        sim.add_node(f"n{i}", meta={"card": f"n{i}-v1"}, join="n0")
    return sim


def converged(sim: Simulation) -> bool:
    names = sim.live_names()
    return all(sim.all_see(s, ALIVE, names) for s in names)


def converge(sim: Simulation, within: float) -> float:
    """Run until every live node sees every other as ALIVE; the virtual time that took."""
    start = sim.now
    assert sim.run_until(start + within, lambda: converged(sim)), f"not converged within {within} s"
    return sim.now - start


def dead_marks(sim: Simulation, about: str | None = None) -> list[tuple[str, str, float]]:
    """(observer, subject, when) of every DEAD event, optionally only those about ``about``."""
    return [
        (name, e.member.name, t)
        for name, node in sim.nodes.items()
        for t, e in node.events
        if e.kind == EventKind.DEAD and (about is None or e.member.name == about)
    ]


# --- joining ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_eight_nodes_joined_through_one_seed_all_know_each_other(seed: int) -> None:
    sim = cluster(8, seed)
    # gossip does it in well under a second most of the time; the periodic push-pull (every 30 s, staggered) mends
    # the rare node that the join's gossip missed
    assert converge(sim, 35.0) <= 35.0
    for name, node in sim.nodes.items():
        assert {s.name: s.meta for s in node.membership.member_states()} == {
            f"n{i}": {"card": f"n{i}-v1"} for i in range(8)
        }, name
    sim.run_until(sim.now + 30.0)
    assert dead_marks(sim) == []
    assert converged(sim)


def test_the_simulation_is_deterministic_per_seed() -> None:
    def trace(seed: int) -> list[tuple[str, float, str, str]]:
        sim = cluster(6, seed, loss=0.2)
        sim.run_until(5.0)
        sim.kill("n2")
        sim.run_until(40.0)
        return [(n, t, e.kind.value, e.member.name) for n, node in sim.nodes.items() for t, e in node.events]

    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


# --- failure detection --------------------------------------------------------------------------------------------


def _kill_detection_time(seed: int) -> float:
    sim = cluster(8, seed)
    converge(sim, 35.0)
    sim.run_until(sim.now + 5.0)
    sim.kill("n3")
    killed = sim.now
    assert sim.run_until(killed + 60.0, lambda: sim.all_see("n3", (State.DEAD,))), "n3 never declared dead"
    took = sim.now - killed
    survivors = [n for n in sim.nodes if n != "n3"]
    assert {obs for obs, _, _ in dead_marks(sim, "n3")} == set(survivors)
    assert [m for m in dead_marks(sim) if m[1] != "n3"] == []  # no survivor is taken for dead
    sim.run_until(sim.now + 10.0)
    assert all(sim.all_see(s, ALIVE) for s in survivors)
    return took


def test_a_crashed_node_is_declared_dead_by_every_survivor_in_swim_lifeguard_time() -> None:
    """SWIM with Lifeguard at LAN defaults, N = 8: some survivor probes the dead node within a probe period or two
    (7 survivors probe round-robin), its suspicion lasts between min = 4 s (k = 2 independent confirmations
    reached) and max = 24 s, and the death then spreads by gossip in a fraction of a second."""
    times = [_kill_detection_time(seed) for seed in range(20)]
    assert max(times) < 30.0  # the bound: a probe round (7 s) + the longest suspicion (24 s)
    assert all(t >= 4.0 for t in times)  # never faster than the shortest suspicion
    assert statistics.median(times) < 10.0  # the confirmations do shorten the suspicion, typically to min
    assert statistics.mean(times) < 10.0


def test_a_graceful_leave_is_left_everywhere_at_once() -> None:
    sim = cluster(8, 1)
    converge(sim, 35.0)
    sim.leave("n5")
    start = sim.now
    assert sim.run_until(start + 2.0, lambda: sim.all_see("n5", (State.LEFT,)))
    sim.run_until(start + 10.0)
    assert sim.all_see("n5", (State.LEFT,))
    assert dead_marks(sim) == []
    assert all(e.kind != EventKind.SUSPECT for node in sim.nodes.values() for _, e in node.events)


# --- dissemination ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_a_new_card_reaches_all_of_32_nodes_within_log2_n_plus_4_gossip_rounds(seed: int) -> None:
    n = 32
    sim = cluster(n, seed)
    converge(sim, 60.0)
    sim.run_until(sim.now + 2.0)
    start = sim.now
    sim.update_meta("n7", {"card": "n7-v2"})
    rounds = math.ceil(math.log2(n)) + 4
    interval = GossipConfig(name="x", addr=("h", 1)).gossip_interval
    assert sim.run_until(
        start + rounds * interval,
        lambda: all(node.membership.members["n7"].meta == {"card": "n7-v2"} for node in sim.nodes.values()),
    ), f"not everywhere within {rounds} gossip rounds"
    took = sim.now - start
    assert took / interval <= 4.0  # measured: about 2 rounds
    for name, node in sim.nodes.items():
        if name != "n7":
            updates = [e for _, e in node.events if e.kind == EventKind.UPDATE and e.member.name == "n7"]
            assert [e.member.meta for e in updates] == [{"card": "n7-v2"}]
            assert node.membership.members["n7"].incarnation == 1


# --- packet loss --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [0.1, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_false_death_under_packet_loss_thanks_to_the_tcp_fallback(loss: float, seed: int) -> None:
    sim = cluster(16, seed, loss=loss)
    sim.run_until(60.0)
    assert dead_marks(sim) == []
    assert converged(sim)
    assert sim.dropped > 0
    assert sum(node.membership.stats.tcp_fallbacks for node in sim.nodes.values()) > 0


def test_without_the_tcp_fallback_heavy_loss_raises_suspicions_that_are_all_refuted_in_time() -> None:
    """The counterpart of the test above: the same clusters, fallback off, 30 % loss. Suspicions are everyday events
    then, and every one is refuted before it times out: each holder tells the suspect directly (again and again),
    and the suspect answers each accuser with its Alive. Before that, some seeds saw false deaths here."""
    for seed in range(8):
        sim = cluster(16, seed, loss=0.3, config=config(tcp_fallback=False))
        sim.run_until(60.0)
        assert all(node.up for node in sim.nodes.values())  # every DEAD mark would be a false one
        assert sum(node.membership.stats.suspicions for node in sim.nodes.values()) > 100
        assert dead_marks(sim) == [], seed


@pytest.mark.parametrize("seed", range(8))
def test_no_false_death_when_every_kind_of_packet_is_lost(seed: int) -> None:
    """Issue #12: 30 % loss of UDP and TCP alike (the simulator's TCP then costs what Linux's retransmissions cost),
    N = 8, LAN defaults. The TCP fallback often misses the probe interval (a lost SYN costs 1 s), so members are
    suspected; none may be declared dead. Before the fix, seeds 0..5 gave 1, 7, 1, 1, 0 and 0 false deaths."""
    sim = cluster(8, seed, loss=0.3, tcp_loss=True)
    sim.run_until(75.0)
    assert all(node.up for node in sim.nodes.values())
    assert sum(node.membership.stats.suspicions for node in sim.nodes.values()) > 20
    assert dead_marks(sim) == []


# --- partition ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_a_partition_splits_the_cluster_and_heals_by_itself(seed: int) -> None:
    push_pull = 5.0
    reconnect = 10.0
    sim = cluster(8, seed, config=config(push_pull_interval=push_pull, reconnect_interval=reconnect))
    converge(sim, 35.0)
    names = list(sim.nodes)
    left, right = names[:4], names[4:]
    start = sim.now
    sim.partition = {n: 0 for n in left} | {n: 1 for n in right}
    sim.run_until(start + 40.0)
    # each side has declared the whole other side dead (some may be reaped by now: 30 s after their death)
    for observer in names:
        other = right if observer in left else left
        own = left if observer in left else right
        declared = {subject for o, subject, t in dead_marks(sim) if o == observer and t < start + 40.0}
        assert declared == set(other), observer
        assert all(sim.view(observer, s) in (State.DEAD, None) for s in other)
        assert all(sim.view(observer, s) == State.ALIVE for s in own)

    # healed. Push-pull only ever picks a live member (as memberlist's does), and each side believes the other dead;
    # the reconnect loop (Serf's) push-pulls with a failed member now and then, and that merges the two sides
    sim.partition = {}
    took = converge(sim, 3 * reconnect)
    assert took <= 3 * reconnect
    # those still remembered as dead refuted it with a higher incarnation (those already reaped simply joined
    # again), and once the last refutations have spread everybody agrees on each member's incarnation
    sim.run_until(sim.now + 30.0)
    assert converged(sim)
    for subject in names:
        own = sim.nodes[subject].membership.incarnation
        assert {sim.nodes[o].membership.members[subject].incarnation for o in names} == {own}, subject


# --- restart ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_a_restarted_node_refutes_its_death_and_is_alive_everywhere(seed: int) -> None:
    sim = cluster(8, seed)
    converge(sim, 35.0)
    sim.kill("n3")
    killed = sim.now
    assert sim.run_until(killed + 30.0, lambda: sim.all_see("n3", (State.DEAD,)))
    sim.run_until(sim.now + 1.0)
    node = sim.restart("n3", meta={"card": "n3-v2"}, join="n0")
    assert node.membership.incarnation == 0 and node.up
    restarted = sim.now
    took = converge(sim, 5.0)
    assert took < 2.0
    assert node.membership.incarnation >= 1  # it beat the incarnation it was declared dead at
    for name, other in sim.nodes.items():
        if name != "n3":
            me = other.membership.members["n3"]
            assert (me.state, me.incarnation, me.meta) == (State.ALIVE, node.membership.incarnation, {"card": "n3-v2"})
            assert [e.kind for t, e in other.events if t >= restarted and e.member.name == "n3"] == [EventKind.JOIN]
    sim.run_until(sim.now + 30.0)
    assert converged(sim)
    assert dead_marks(sim, "n3") == [m for m in dead_marks(sim, "n3") if m[2] < restarted]


def test_a_quick_restart_with_a_new_card_is_an_update_everywhere() -> None:
    """Back before anyone noticed, at incarnation 0 again but with another card: the others' view of it at
    incarnation 0 is refuted (same incarnation, other meta) and the new card wins."""
    sim = cluster(8, 2)
    converge(sim, 35.0)
    sim.kill("n4")
    sim.run_until(sim.now + 0.05)
    node = sim.restart("n4", meta={"card": "n4-v2"}, join="n0")
    restarted = sim.now
    assert sim.run_until(
        restarted + 3.0,
        lambda: all(n.membership.members["n4"].meta == {"card": "n4-v2"} for n in sim.nodes.values()),
    )
    assert node.membership.incarnation == 1
    sim.run_until(sim.now + 30.0)
    assert converged(sim)
    assert dead_marks(sim) == []


def test_a_node_restarted_after_it_was_forgotten_simply_joins() -> None:
    sim = cluster(6, 5)
    converge(sim, 35.0)
    sim.kill("n2")
    killed = sim.now
    sim.run_until(sim.now + 60.0)  # declared dead, then reaped after gossip_to_the_dead_time
    assert all(sim.view(o, "n2") is None for o in sim.live_names())
    for observer in sim.live_names():
        kinds = [e.kind for t, e in sim.nodes[observer].events if t > killed and e.member.name == "n2"]
        assert kinds[-2:] == [EventKind.DEAD, EventKind.REAPED], observer
    node = sim.restart("n2", join="n0")
    converge(sim, 5.0)
    assert node.membership.incarnation == 0  # nobody remembered it: nothing to refute


# --- a property over random histories -----------------------------------------------------------------------------

event_st = st.one_of(
    st.tuples(st.just("kill"), st.integers(1, 4)),
    st.tuples(st.just("restart"), st.integers(1, 4)),
    st.tuples(st.just("leave"), st.integers(1, 4)),
    st.tuples(st.just("meta"), st.integers(0, 4)),
    st.tuples(st.just("partition"), st.integers(1, 4)),
    st.tuples(st.just("heal"), st.just(0)),
    st.tuples(st.just("loss"), st.sampled_from([0.0, 0.1, 0.5, 1.0])),
)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(st.tuples(st.floats(0.0, 8.0), event_st), max_size=8),
    seed=st.integers(0, 1000),
)
def test_every_tick_leaves_a_deadline_in_the_future(history: list[tuple[float, Any]], seed: int) -> None:
    sim = cluster(5, seed, config=config(push_pull_interval=3.0, gossip_to_the_dead_time=10.0))
    checked = [0]

    def watch(name: str) -> None:
        node = sim.nodes[name]
        m = node.membership
        tick = m.tick

        def checked_tick(now: float) -> list[Any]:
            effects = tick(now)
            assert m.next_deadline() > now, (name, now, m.next_deadline())
            checked[0] += 1
            return effects

        m.tick = checked_tick  # type: ignore[method-assign]

    for name in sim.nodes:
        watch(name)
    for delay, (op, arg) in history:
        sim.run_until(sim.now + delay)
        name = f"n{arg}"
        if op == "kill":
            sim.kill(name)
        elif op == "restart":
            sim.restart(name, join="n0")
            watch(name)
        elif op == "leave" and sim.nodes[name].up and not sim.nodes[name].membership.leaving:
            sim.leave(name)
        elif op == "meta" and sim.nodes[name].up:
            sim.update_meta(name, {"card": f"{name}-{sim.now:.3f}"})
        elif op == "partition":
            sim.partition = {f"n{i}": int(i >= arg) for i in range(5)}
        elif op == "heal":
            sim.partition = {}
        elif op == "loss":
            sim.loss = arg
    sim.run_until(sim.now + 20.0)
    assert checked[0] > 0
    for node in sim.nodes.values():
        m = node.membership
        assert m.members[m.name].incarnation == m.incarnation
        assert 0 <= m.awareness < m.config.awareness_max_multiplier
