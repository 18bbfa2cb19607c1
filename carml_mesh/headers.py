"""The HTTP headers that nodes (and the CLI) send one another, in one neutral place that node, web and bench share.

A request a node forwards to a peer carries a hop marker (the peer serves it and never forwards again, so no
request can loop), the caller's remaining deadline and the trace context it came with; every call to a peer
carries the mesh's shared API token when one is configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["FORWARDED", "TIMEOUT_MS", "TRACE_HEADERS", "Hop", "auth_headers", "hop_from"]

FORWARDED = "X-Carml-Forwarded-By"
TIMEOUT_MS = "X-Carml-Timeout-Ms"
TRACE_HEADERS = ("traceparent", "tracestate", "b3", "X-B3-TraceId", "X-B3-SpanId", "X-B3-ParentSpanId", "X-B3-Sampled")


@dataclass(frozen=True, slots=True)
class Hop:
    """What a request's headers say about where it comes from."""

    forwarded_by: str | None = None  # the peer that chose this node: serve here, never forward again
    timeout: float | None = None  # seconds left of the caller's deadline
    trace: Mapping[str, str] = field(default_factory=dict)  # the trace context headers it came with

    @property
    def forwarded(self) -> bool:
        return self.forwarded_by is not None

    def headers(self, node_id: str, timeout: float) -> dict[str, str]:
        """The headers of this request's next hop, sent by ``node_id`` with ``timeout`` seconds left."""
        return {FORWARDED: node_id, TIMEOUT_MS: str(max(1, int(timeout * 1000))), **self.trace}


def hop_from(headers: Mapping[str, str]) -> Hop:
    raw = headers.get(TIMEOUT_MS, "")
    timeout = int(raw) / 1000 if raw.isdigit() and int(raw) > 0 else None
    return Hop(
        forwarded_by=headers.get(FORWARDED),
        timeout=timeout,
        trace={h: headers[h] for h in TRACE_HEADERS if h in headers},
    )


def auth_headers(token: str | None) -> dict[str, str]:
    """What a node (or the CLI) sends to a peer: the shared token, when one is configured."""
    return {"Authorization": f"Bearer {token}"} if token else {}
