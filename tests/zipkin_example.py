"""Zipkin's quickstart example trace (frontend -> backend), shared by the Zipkin store and API tests.

Imported as ``zipkin_example`` (pytest puts tests/ on sys.path for conftest.py).
"""

from __future__ import annotations

from typing import Any

T0 = 1472470996199000  # µs: the time of Zipkin's quickstart example trace
TRACE = "86154a4ba6e91385"


def example_trace() -> list[dict[str, Any]]:
    """Zipkin's frontend -> backend example: a server span, its client span, and the backend's shared server span."""
    return [
        {
            "traceId": "86154a4ba6e91385",
            "id": "86154a4ba6e91385",
            "kind": "SERVER",
            "name": "get /",
            "timestamp": T0,
            "duration": 232000,
            "localEndpoint": {"serviceName": "frontend", "ipv4": "192.168.1.2", "port": 8081},
            "remoteEndpoint": {"ipv6": "::1", "port": 62390},
            "tags": {"http.method": "GET", "http.path": "/"},
        },
        {
            "traceId": "86154a4ba6e91385",
            "parentId": "86154a4ba6e91385",
            "id": "4d1e00c0db9010db",
            "kind": "CLIENT",
            "name": "get",
            "timestamp": T0 + 10000,
            "duration": 207000,
            "localEndpoint": {"serviceName": "frontend", "ipv4": "192.168.1.2"},
            "remoteEndpoint": {"serviceName": "backend", "ipv4": "192.168.1.3", "port": 9000},
            "annotations": [{"timestamp": T0 + 11000, "value": "ws"}, {"timestamp": T0 + 210000, "value": "wr"}],
            "tags": {"http.method": "GET", "http.path": "/api"},
        },
        {
            "traceId": "86154a4ba6e91385",
            "parentId": "86154a4ba6e91385",
            "id": "4d1e00c0db9010db",
            "kind": "SERVER",
            "name": "get /api",
            "timestamp": T0 + 12000,
            "duration": 200000,
            "shared": True,
            "localEndpoint": {"serviceName": "backend", "ipv4": "192.168.1.3", "port": 9000},
            "remoteEndpoint": {"ipv4": "192.168.1.2", "port": 52108},
            "tags": {"http.method": "GET", "http.path": "/api", "http.status_code": "200"},
        },
    ]
