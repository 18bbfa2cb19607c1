"""Shared pieces of the benchmarks: start a real node process, percentiles, a lean keep-alive HTTP client."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def running_node(data_dir: Path, *extra: str, manifests: Path | None = None) -> Iterator[str]:
    """A real `carml-node` process (the demo manifests unless told otherwise); yields its URL once it is ready."""
    cmd = [
        sys.executable,
        "-m",
        "carml_mesh.node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--manifests",
        str(manifests or REPO / "manifests"),
        "--log-level",
        "WARNING",
        "--gossip-port",
        "0",
        "--no-mdns",  # mDNS only ever inside the tests' own network namespaces
        "--executor",
        "local",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    try:
        url = ""
        for line in proc.stdout:
            if m := re.search(r"on (http://\S+?)/ ", line):
                url = m.group(1)
            if line.startswith("ready:"):
                break
        else:
            raise SystemExit(f"node exited with {proc.wait()} before it was ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


class Client:
    """One keep-alive connection and nothing else, so the client adds as little as it can to what we measure."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        self.conn.request("POST", path, body=body, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())

    def close(self) -> None:
        self.conn.close()


def measure(fn: Callable[[], object], *, warmup: int, iterations: int) -> np.ndarray:
    """Latencies in ms of ``iterations`` calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(iterations)
    for i in range(iterations):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def pct(ms: np.ndarray, q: float) -> float:
    return float(np.percentile(ms, q))
