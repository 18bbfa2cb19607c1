"""Feedback rows: validation naming the field, storage in SQLite, and the merge of several nodes' listings."""

from __future__ import annotations

import pytest

from carml_mesh.errors import BadRequest
from carml_mesh.store.db import Database
from carml_mesh.store.feedback import (
    FeedbackStore,
    Listing,
    NewFeedback,
    listing_document,
    merge_listings,
    parse_feedback,
    parse_limit,
    parse_listing,
)

NODE = {"id": "n1", "name": "one"}


def test_parse_accepts_the_contract() -> None:
    assert parse_feedback({"rating": 5}) == NewFeedback(5, "", "")
    assert parse_feedback({"rating": 1, "comment": "<b>x</b>", "author": None}) == NewFeedback(1, "<b>x</b>", "")
    assert parse_feedback({"rating": 3, "comment": "c" * 2000, "author": "a" * 100}).rating == 3


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], "rating"),
        ({}, "'rating' is required"),
        ({"rating": 0}, "'rating'"),
        ({"rating": 6}, "'rating'"),
        ({"rating": 4.5}, "'rating'"),
        ({"rating": True}, "'rating'"),
        ({"rating": "5"}, "'rating'"),
        ({"rating": 5, "comment": 7}, "'comment'"),
        ({"rating": 5, "comment": "c" * 2001}, "'comment'"),
        ({"rating": 5, "author": "a" * 101}, "'author'"),
        ({"rating": 5, "stars": 5}, "'stars'"),
    ],
)
def test_parse_rejects_naming_the_field(doc: object, field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        parse_feedback(doc)


def test_limit() -> None:
    assert parse_limit(None) == 100 and parse_limit("7") == 7
    for bad in ("0", "-1", "x", "1001"):
        with pytest.raises(BadRequest, match="limit"):
            parse_limit(bad)


async def test_rows_are_kept_and_listed_newest_first(tmp_path) -> None:
    async with Database(tmp_path / "db.sqlite3") as db:
        store = FeedbackStore(db)
        first = await store.add("m", NewFeedback(2, "meh", "ann"), NODE)
        second = await store.add("m", NewFeedback(5, "great", ""), NODE)
        await store.add("other", NewFeedback(1, "", ""), NODE)
        listing = await store.listing("m")
        assert listing.count == 2 and listing.average == 3.5
        assert [i["id"] for i in listing.items] == [second["id"], first["id"]]
        assert listing.items[1] == first and first["node"] == NODE and first["created_at"].endswith("Z")
        assert [i["id"] for i in (await store.listing("m", limit=1)).items] == [second["id"]]
        assert (await store.listing("m", limit=1)).count == 2  # totals cover every row, not only those listed
    async with Database(tmp_path / "db.sqlite3") as db:  # on disk
        assert (await FeedbackStore(db).listing("m")).count == 2
        empty = await FeedbackStore(db).listing("nothing")
        assert empty.count == 0 and empty.average is None and empty.items == []


def _item(i: str, at: str, rating: int) -> dict:
    return {"id": i, "created_at": at, "rating": rating, "model": "m"}


def test_merge_adds_totals_and_sorts_items() -> None:
    a = Listing(3, 9, [_item("a2", "2026-01-02T00:00:00.000Z", 4), _item("a1", "2026-01-01T00:00:00.000Z", 5)])
    b = Listing(1, 1, [_item("b1", "2026-01-01T12:00:00.000Z", 1)])
    merged = merge_listings([a, b], limit=2)
    assert merged.count == 4 and merged.rating_sum == 10 and merged.average == 2.5
    assert [i["id"] for i in merged.items] == ["a2", "b1"]
    assert merge_listings([]).average is None


def test_a_peer_listing_round_trips_and_nonsense_is_refused() -> None:
    listing = Listing(1, 4, [_item("x", "2026-01-01T00:00:00.000Z", 4)])
    doc = listing_document("m", listing, ["http://gone:1"])
    assert doc["average"] == 4.0 and doc["unreachable"] == ["http://gone:1"]
    assert parse_listing(doc, "m") == listing
    for bad in (None, [], {**doc, "model": "n"}, {**doc, "count": "1"}, {**doc, "items": [{"id": 1}]}):
        with pytest.raises(ValueError):
            parse_listing(bad, "m")


def test_a_node_answering_twice_is_counted_once() -> None:
    a = Listing(2, 9, [_item("a2", "2026-01-02T00:00:00.000Z", 4), _item("a1", "2026-01-01T00:00:00.000Z", 5)], "na")
    b = Listing(1, 1, [_item("b1", "2026-01-01T12:00:00.000Z", 1)], "nb")
    merged = merge_listings([a, b, parse_listing(listing_document("m", a), "m")])  # a again, as a peer's answer
    assert (merged.count, merged.rating_sum, merged.average, merged.node_id) == (3, 10, 3.333, "")
    assert [i["id"] for i in merged.items] == ["a2", "b1", "a1"]
    assert "node" not in listing_document("m", merged) and listing_document("m", a)["node"] == {"id": "na"}
    assert parse_feedback({"rating": 3, "author": "  "}).author == ""
