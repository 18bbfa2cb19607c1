"""The choice of where a request runs (pure): warm first, two choices on load, local when as good, avoidance."""

from __future__ import annotations

import random

from carml_mesh.node.router import Candidate, Router


def peer(name: str, *, warm: bool = False, load: float = 0.0) -> Candidate:
    return Candidate(name, f"http://{name}:7450", warm, load)


def local(*, warm: bool = False, load: float = 0.0) -> Candidate:
    return Candidate("me", None, warm, load)


def test_warm_beats_idle() -> None:
    d = Router(rng=random.Random(0)).decide([local(load=0), peer("b", warm=True, load=3)])
    assert d.order[0].node == "b" and d.reason.startswith("warm")


def test_local_when_as_good_as_the_best_peer() -> None:
    d = Router(rng=random.Random(0)).decide([peer("b", warm=True, load=1), local(warm=True, load=1)])
    assert d.order[0].local and "this node: as good as the best peer" in d.reason


def test_least_loaded_of_two_and_own_in_flight_counts() -> None:
    router = Router(rng=random.Random(0))
    assert router.decide([peer("b", load=2), peer("c", load=1)]).order[0].node == "c"
    for _ in range(3):
        router.started("c")  # this node already has three requests on their way to c
    assert router.decide([peer("b", load=2), peer("c", load=1)]).order[0].node == "b"


def test_two_random_choices_spread_over_many_peers() -> None:
    router = Router(rng=random.Random(1))
    peers = [peer(f"p{i}") for i in range(10)]
    chosen = {router.decide(peers).order[0].node for _ in range(200)}
    assert len(chosen) >= 8  # equal load: the choice spreads instead of herding on one peer


def test_a_failed_peer_is_avoided_then_tried_again() -> None:
    router = Router(rng=random.Random(0), avoid_seconds=10)
    router.started("b")
    router.finished("b", ok=False, now=100.0)
    d = router.decide([peer("b"), peer("c", load=5)], now=101.0)
    assert [c.node for c in d.order] == ["c", "b"] and "avoiding 1" in d.reason  # b stays the last resort
    assert router.decide([peer("b"), peer("c", load=5)], now=111.0).order[0].node == "b"


def test_all_candidates_are_kept_as_retries() -> None:
    d = Router(rng=random.Random(0)).decide([peer("b"), peer("c"), local(load=4)])
    assert sorted(c.node for c in d.order) == ["b", "c", "me"]
    assert d.to_dict()["chosen"] == d.order[0].node and len(d.to_dict()["candidates"]) == 3


def test_no_candidate() -> None:
    d = Router().decide([])
    assert d.order == () and d.reason == "no capable member"


def test_latency_ewma() -> None:
    router = Router()
    router.started("b")
    router.finished("b", ok=True, latency_ms=10.0)
    router.started("b")
    router.finished("b", ok=True, latency_ms=20.0)
    assert router.health("b").latency_ms == 12.0
