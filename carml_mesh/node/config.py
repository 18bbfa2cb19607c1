"""Node configuration: one frozen dataclass, every limit and timer a field with a default."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .rejoin import DEFAULT_JOIN_RETRY_INTERVAL, DEFAULT_JOIN_RETRY_MAX_INTERVAL

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 7450
DEFAULT_MAX_BODY_BYTES = 64 << 20  # uploads; a bigger body is answered 413 before it is read
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # decoded pixels per image (decompression bombs)
DEFAULT_MAX_BATCH = 256  # inputs per request
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_SHUTDOWN_TIMEOUT = 4.0  # SIGTERM -> exit within 5 s, workers included
DEFAULT_MAX_ARTIFACT_BYTES = 2048 << 20  # one published or pulled artifact; streamed to disk, never held in memory
DEFAULT_REPLICATION_TIMEOUT = 600.0  # one call to a peer while replicating: a pull of 2 GB artifacts included


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "carml-mesh"


@dataclass(frozen=True)
class NodeConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    manifests_dirs: tuple[Path, ...] = ()
    samples_dir: Path | None = None
    name: str = field(default_factory=socket.gethostname)
    executor: str = "auto"  # auto | local | docker
    docker_url: str | None = None  # default: $DOCKER_HOST or the engine's default socket
    docker_mode: str = "warm"  # warm: a long-lived container per (image, device); cold: one per request
    docker_memory_bytes: int = 4 << 30
    docker_cpus: float = 0.0
    preload: bool = True  # load every servable model at start, as a serving system does
    worker_threads: int = 0
    worker_pool: int = 2
    batching: str = "auto"  # auto: dynamic batching for models whose manifest allows it (max_batch_size > 1); off
    max_queue_delay_ms: float | None = None  # overrides every manifest's batching.max_queue_delay_ms
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_batch: int = DEFAULT_MAX_BATCH
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    devices: tuple[str, ...] = ()  # empty: detect
    # the mesh
    gossip: bool = True
    gossip_port: int = 7946
    cluster: str = "default"
    cluster_key: str | None = None  # keyring text: base64 or hex keys, comma or newline separated
    join: tuple[tuple[str, int], ...] = ()
    join_retry_interval: float = DEFAULT_JOIN_RETRY_INTERVAL  # first retry of the seeds; doubled on each failure
    join_retry_max_interval: float = DEFAULT_JOIN_RETRY_MAX_INTERVAL
    join_retry_max: int = 0  # failed attempts before giving up; 0: retry for ever
    mdns: bool = True
    advertise: str | None = None  # the address peers reach us at; default: derived from host
    gossip_overrides: tuple[tuple[str, float], ...] = ()  # GossipConfig timers, for tests and tuning
    # publishing, replication and the API token
    api_token: str | None = None  # shared by the mesh's nodes: mutating endpoints need it, peers send it
    protect_all: bool = False  # with a token: everything under /api and /v2 but /api/health needs it
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    replication_timeout: float = DEFAULT_REPLICATION_TIMEOUT
    # origins (scheme://host[:port]) POST /api/models/pull may fetch from besides the alive members of the mesh
    pull_origins: tuple[str, ...] = ()
    # tracing
    zipkin_url: str | None = None  # also export spans to this Zipkin server (POST JSON v2); the node keeps them anyway
    # none | application | model | framework; a request may ask for another. application by default: it costs about
    # 10 µs (+1 to 3 % of digits-cnn's 0.5 ms p50, scripts/bench/tracing.py), model and framework are asked for
    trace_level: str = "application"
