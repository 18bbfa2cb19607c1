"""The node card: what a node advertises to the mesh. Gossip carries only its version and digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def card_digest(card: dict[str, Any]) -> str:
    """A short, stable digest of the card's content (canonical JSON), so peers refetch only when it changed."""
    canonical = json.dumps(card, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def card_summary(card: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few fields the cluster view shows per member."""
    if not card:
        return None
    hw = card.get("hardware") or {}
    return {
        "name": card.get("name"),
        "url": card.get("url"),
        "version": card.get("version"),
        "cpu_model": hw.get("cpu_model"),
        "cores": hw.get("cores"),
        "memory_bytes": hw.get("memory_bytes"),
        "gpus": [g.get("name") for g in hw.get("gpus") or []],
        "executor": card.get("executor"),
        "frameworks": card.get("frameworks"),
        "models": sorted({f"{m['name']}@{m['version']}" for m in card.get("models") or []}),
        "warm": card.get("warm") or [],
    }
