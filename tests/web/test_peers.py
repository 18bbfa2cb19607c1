"""web/peers.py: ?scope= and ?limit=, a peer's answer read as JSON, listings merged newest first, one session."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from carml_mesh.errors import BadRequest
from carml_mesh.web import peers
from carml_mesh.web.peers import PeerAnswer


def _answer(url: str, doc: Any, status: int = 200) -> PeerAnswer:
    return PeerAnswer(url, status, json.dumps(doc).encode())


def test_scope_is_mesh_unless_asked_local() -> None:
    assert peers.scope(make_mocked_request("GET", "/x")) == "mesh"
    assert peers.scope(make_mocked_request("GET", "/x?scope=local")) == "local"
    with pytest.raises(BadRequest, match=r"scope: must be mesh or local, got 'everywhere'"):
        peers.scope(make_mocked_request("GET", "/x?scope=everywhere"))


@pytest.mark.parametrize("raw", ["0", "1001", "-1", "ten", "²", ""])
def test_a_limit_outside_1_to_1000_names_the_parameter(raw: str) -> None:
    with pytest.raises(BadRequest, match="limit: must be an integer from 1 to 1000"):
        peers.limit(make_mocked_request("GET", f"/x?limit={raw}"))


def test_limit_defaults_to_100() -> None:
    assert peers.limit(make_mocked_request("GET", "/x")) == 100
    assert peers.limit(make_mocked_request("GET", "/x?limit=1000")) == 1000


def test_an_answer_is_json_only_when_it_is_a_200_object() -> None:
    assert _answer("p", {"id": "a"}).json() == {"id": "a"}
    assert _answer("p", {"id": "a"}, status=404).json() is None
    assert _answer("p", ["a"]).json() is None
    assert PeerAnswer("p", 200, b"{not json").json() is None
    assert PeerAnswer("p", 0, b"").json() is None  # did not answer


def test_listings_merge_newest_first_once_per_id_and_name_the_unreachable() -> None:
    own = [{"id": "o2", "created_at": "2026-01-02"}, {"id": "o1", "created_at": "2026-01-01"}]
    answers = [
        _answer("http://b", {"runs": [{"id": "b3", "created_at": "2026-01-03"}, {"id": "o1", "created_at": "x"}, 7]}),
        PeerAnswer("http://c", 0, b""),  # refused or timed out
        _answer("http://d", {"error": "unauthorized"}, status=401),
        _answer("http://e", {"something": "else"}),
        _answer("http://f", {"runs": [{"id": "f0", "created_at": "2025-12-31"}]}),
    ]
    items, unreachable = peers.merge_newest_first(own, answers, "runs", limit=3)
    assert [i["id"] for i in items] == ["b3", "o2", "o1"]  # f0 is the oldest: past the limit
    assert unreachable == ["http://c", "http://d", "http://e"]
    assert [i["id"] for i in own] == ["o2", "o1"]  # the caller's list is left as it was


def test_the_peer_session_is_installed_once_however_many_modules_ask() -> None:
    app = web.Application()
    peers.install(app)
    peers.install(app)
    assert len(app.cleanup_ctx) == 1
