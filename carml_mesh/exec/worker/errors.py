"""Errors the worker reports back to the node, each with a kind the node maps to an HTTP status."""

from __future__ import annotations

# kind -> meaning; the node maps them: bad_input 400, too_large 413, not_loaded 409→reload, internal 500
KINDS = ("bad_input", "too_large", "not_loaded", "internal")


class WorkerError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        assert kind in KINDS, kind
        self.kind = kind
        self.message = message
        super().__init__(message)

    def to_wire(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}
