"""A load generator in a process of its own: aiohttp clients on one event loop, closed and open loops, JSON out.

    .venv/bin/python scripts/bench/loadgen.py URL PATH BODY_FILE [--header K:V ...] [--closed 8,16]
                                              [--qps 150] [--duration 8] [--warmup 2]

Each closed loop runs N clients back to back (their max load); the open loop schedules a request every 1/qps s and
counts latency from its scheduled time (a server that falls behind pays for it), with at most 256 outstanding.
Every answer must be 200; the first failure ends the run with its status and text. The last line on stdout is
`RESULT {json}`: {"closed": {N: {ips, p50, p99}}, "open": {ips, p50, p99}}, latencies in ms.

The benchmarks run it as a subprocess so that the client's CPU is its own process's (not the server's, nor the
benchmark driver's GIL), as an independent client would be.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np


def pct(ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(ms), q)) if ms else float("nan")


class Target:
    def __init__(self, session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> None:
        self.session, self.url, self.body, self.headers = session, url, body, headers

    async def post(self) -> None:
        async with self.session.post(self.url, data=self.body, headers=self.headers) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise SystemExit(f"{self.url} answered {resp.status}: {raw[:300]!r}")


async def closed_loop(target: Target, clients: int, duration: float, warmup: float) -> dict[str, float]:
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + duration
    lat: list[float] = []

    async def client() -> None:
        while (t0 := time.perf_counter()) < stop:
            await target.post()
            if t0 >= measure_from:
                lat.append((time.perf_counter() - t0) * 1e3)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"ips": len(lat) / duration, "p50": pct(lat, 50), "p99": pct(lat, 99)}


async def open_loop(target: Target, qps: float, duration: float, warmup: float) -> dict[str, float]:
    total, first = int((warmup + duration) * qps), int(warmup * qps)
    start = time.perf_counter() + 0.05
    lat: list[float] = []
    outstanding = asyncio.Semaphore(256)

    async def one(i: int, due: float) -> None:
        try:
            await target.post()
            if i >= first:
                lat.append((time.perf_counter() - due) * 1e3)
        finally:
            outstanding.release()

    tasks = []
    for i in range(total):
        due = start + i / qps
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        await outstanding.acquire()
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start - warmup
    return {"ips": len(lat) / max(elapsed, 1e-9), "p50": pct(lat, 50), "p99": pct(lat, 99)}


async def run(args: argparse.Namespace, body: bytes) -> dict[str, object]:
    headers = dict(h.split(":", 1) for h in args.header)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        target = Target(session, args.url.rstrip("/") + args.path, body, headers)
        for _ in range(5):
            await target.post()  # the model warm, the connections open
        closed = {}
        for n in args.closed:
            closed[n] = await closed_loop(target, n, args.duration, args.warmup)
        opened = await open_loop(target, args.qps, args.duration, args.warmup) if args.qps > 0 else None
    return {"closed": closed, "open": opened}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("body", help="a file holding the request body")
    parser.add_argument("--header", action="append", default=[], metavar="K:V")
    parser.add_argument("--closed", default="8", help="closed-loop client counts, comma-separated")
    parser.add_argument("--qps", type=float, default=0.0, help="the open loop's offered requests/s (0: none)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    args.closed = [int(n) for n in args.closed.split(",") if n]
    out = asyncio.run(run(args, Path(args.body).read_bytes()))
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
