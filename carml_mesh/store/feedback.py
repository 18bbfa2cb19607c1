"""Ratings and comments on models (table ``feedback`` in the node's database): validation, rows, and the merge of
the answers of several nodes into one listing.

Each node keeps the feedback posted to it; a listing across the mesh adds up every node's own rows. Comments are
kept exactly as given (the page renders them as text, never as markup).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import BadRequest
from .db import Database

TABLE = "feedback"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS feedback (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
        comment TEXT NOT NULL,
        author TEXT NOT NULL,
        created_at TEXT NOT NULL,
        node_id TEXT NOT NULL,
        node_name TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_by_model ON feedback (model, created_at)",
)
FIELDS = ("rating", "comment", "author")
MAX_COMMENT_CHARS = 2000
MAX_AUTHOR_CHARS = 100
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class NewFeedback:
    rating: int
    comment: str
    author: str


@dataclass(frozen=True)
class Listing:
    """One node's (or the mesh's) feedback on a model: totals over every row, and the newest rows."""

    count: int
    rating_sum: int
    items: list[dict[str, Any]]
    node_id: str = ""  # the node whose own rows these are ("" for a merged listing); a node is counted once

    @property
    def average(self) -> float | None:
        return round(self.rating_sum / self.count, 3) if self.count else None


def parse_feedback(doc: object) -> NewFeedback:
    """The body of a POST, checked field by field; BadRequest names the field at fault."""
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object with 'rating' (1 to 5), and optionally 'comment', 'author'")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field {str(unknown[0])[:40]!r}; allowed: {', '.join(FIELDS)}")
    if "rating" not in doc:
        raise BadRequest("the field 'rating' is required (an integer from 1 to 5)")
    rating = doc["rating"]
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise BadRequest(f"'rating' must be an integer from 1 to 5, got {str(rating)[:40]!r}")
    return NewFeedback(
        rating=rating,
        comment=_text(doc, "comment", MAX_COMMENT_CHARS),
        author=_text(doc, "author", MAX_AUTHOR_CHARS).strip(),  # "  " is no name: shown as anonymous
    )


def _text(doc: Mapping[str, Any], field: str, limit: int) -> str:
    value = doc.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string")
    if len(value) > limit:
        raise BadRequest(f"'{field}' is {len(value)} characters long; the limit is {limit}")
    return value


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"query parameter limit must be an integer from 1 to {MAX_LIMIT}, got {raw[:20]!r}")
    return int(raw)


def now_iso() -> str:
    """UTC with milliseconds and a Z: sorts as text in time order across nodes."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _row(r: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": r["id"],
        "model": r["model"],
        "rating": r["rating"],
        "comment": r["comment"],
        "author": r["author"],
        "created_at": r["created_at"],
        "node": {"id": r["node_id"], "name": r["node_name"]},
    }


class FeedbackStore:
    """The ``feedback`` table of one node's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, model: str, entry: NewFeedback, node: Mapping[str, str]) -> dict[str, Any]:
        await self.db.ensure(TABLE, *SCHEMA)
        row = {
            "id": uuid.uuid4().hex,
            "model": model,
            "rating": entry.rating,
            "comment": entry.comment,
            "author": entry.author,
            "created_at": now_iso(),
            "node": {"id": node["id"], "name": node["name"]},
        }
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row["id"],
                    model,
                    entry.rating,
                    entry.comment,
                    entry.author,
                    row["created_at"],
                    node["id"],
                    node["name"],
                ),
            )
        )
        return row

    async def listing(self, model: str, limit: int = DEFAULT_LIMIT, node_id: str = "") -> Listing:
        await self.db.ensure(TABLE, *SCHEMA)

        def read(c: sqlite3.Connection) -> Listing:
            count, total = c.execute(
                "SELECT count(*), coalesce(sum(rating), 0) FROM feedback WHERE model = ?", (model,)
            ).fetchone()
            rows = c.execute(
                "SELECT * FROM feedback WHERE model = ? ORDER BY created_at DESC, rowid DESC LIMIT ?", (model, limit)
            ).fetchall()
            return Listing(int(count), int(total), [_row(r) for r in rows], node_id)

        return await self.db.run(read)


def listing_document(model: str, listing: Listing, unreachable: Iterable[str] = ()) -> dict[str, Any]:
    doc = {
        "model": model,
        "count": listing.count,
        "average": listing.average,
        "rating_sum": listing.rating_sum,
        "items": listing.items,
        "unreachable": list(unreachable),
    }
    if listing.node_id:  # one node's own rows (a ?scope=local answer)
        doc["node"] = {"id": listing.node_id}
    return doc


def parse_listing(doc: object, model: str) -> Listing:
    """A peer's ``?scope=local`` answer, checked; ValueError when it is not one."""
    if not isinstance(doc, dict) or doc.get("model") != model:
        raise ValueError("not a feedback listing of this model")
    count, total, items = doc.get("count"), doc.get("rating_sum"), doc.get("items")
    if not isinstance(count, int) or not isinstance(total, int) or not isinstance(items, list) or count < 0:
        raise ValueError("count, rating_sum or items missing or of the wrong type")
    kept = []
    for item in items:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("id"), str)
            or not isinstance(item.get("created_at"), str)
            or not isinstance(item.get("rating"), int)
        ):
            raise ValueError("an item lacks id, created_at or rating")
        kept.append(item)
    node = doc.get("node")
    node_id = node.get("id") if isinstance(node, dict) else None
    return Listing(count, total, kept, node_id if isinstance(node_id, str) else "")


def merge_listings(listings: Iterable[Listing], limit: int = DEFAULT_LIMIT) -> Listing:
    """Several nodes' listings as one: totals added (each row lives on the one node it was posted to), items
    newest first, at most ``limit``. A node that answers twice (reached under two addresses) is counted once, so
    the mesh's average is each rating counted once."""
    count = total = 0
    items: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for listing in listings:
        if listing.node_id:
            if listing.node_id in seen:
                continue
            seen.add(listing.node_id)
        count += listing.count
        total += listing.rating_sum
        items.update((i["id"], i) for i in listing.items)
    newest = sorted(items.values(), key=lambda i: i["created_at"], reverse=True)  # stable: ties keep order
    return Listing(count, total, newest[:limit])
