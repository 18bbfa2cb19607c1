"""What tracing costs: digits-cnn p50 through one node at each trace level, in one run.

    .venv/bin/python scripts/bench/tracing.py [--iterations N] [--rounds R] [--levels none,application,model]

One real carml-node, one client, msgpack /api/predict, batch 1; each level asked for with the
X-Carml-Trace-Level header. The levels are interleaved in R rounds so that drift in the machine hits them alike;
besides the pooled p50 the table gives the median over the rounds of each round's p50 against that round's
``none`` (steadier on a noisy machine). Target (issue #6): application <= 3 % over none.

``none`` runs the same code as an untraced node but for a few checks; their cost is timed in-process at the end
(the work ``none`` adds to a request: reading the level header, one clock read, the level checks).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

import msgpack
import numpy as np
from multidict import CIMultiDict, CIMultiDictProxy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Client, measure, pct, running_node

from carml_mesh.trace.setup import LEVEL_HEADER, MODEL, Tracing, current_level
from carml_mesh.trace.zipkin_store import SpanStore


def none_path_us() -> float:
    """µs of the tracing work a request does at level none (what api.predict and inference do before they skip)."""
    tracing = Tracing(node_id="n", host="h", store=SpanStore(), level="none")
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/msgpack", "Accept": "application/msgpack"}))

    def work() -> None:
        tracing.request_level(headers)
        time_ns()
        if current_level() < MODEL:
            pass

    from time import time_ns

    n = 200_000
    return min(timeit.repeat(work, number=n, repeat=5)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=6000, help="requests per level, over all rounds")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--levels", default="none,application,model", help="comma-separated; none comes first")
    args = parser.parse_args()
    levels = ["none", *[x for x in args.levels.split(",") if x and x != "none"]]
    per_round = max(10, args.iterations // args.rounds)
    x = np.load(REPO / "build" / "models" / "digits-cnn" / "heldout.npz")["X"][0].astype(np.float32)
    body = msgpack.packb(
        {
            "model": "digits-cnn",
            "framework": "onnxruntime",
            "inputs": [{"tensor": {"dtype": "float32", "shape": [1, 8, 8], "data": x.tobytes()}}],
        }
    )
    samples: dict[str, list[np.ndarray]] = {level: [] for level in levels}
    with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp)) as url:
        client = Client(url)
        for n in range(args.rounds):
            for level in levels:
                headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack", LEVEL_HEADER: level}

                def call(headers: dict[str, str] = headers) -> None:
                    status, raw, _ = client.post("/api/predict", body, headers)
                    assert status == 200, raw

                samples[level].append(measure(call, warmup=100 if n == 0 else 10, iterations=per_round))
        client.close()
    base = pct(np.concatenate(samples["none"]), 50)
    print(f"\n{'level':<13}{'p50 ms':>9}{'p99 ms':>9}{'vs none':>10}{'per-round median':>18}{'µs':>8}")
    for level in levels:
        ms = np.concatenate(samples[level])
        rounds = [pct(a, 50) / pct(b, 50) - 1 for a, b in zip(samples[level], samples["none"], strict=True)]
        diffs = [(pct(a, 50) - pct(b, 50)) * 1e3 for a, b in zip(samples[level], samples["none"], strict=True)]
        print(
            f"{level:<13}{pct(ms, 50):>9.3f}{pct(ms, 99):>9.3f}{pct(ms, 50) / base - 1:>+10.1%}"
            f"{statistics.median(rounds):>+18.1%}{statistics.median(diffs):>+8.1f}"
        )
    print(
        f"\ndigits-cnn, onnxruntime, batch 1, one client, {per_round * args.rounds} requests per level "
        f"in {args.rounds} rounds"
    )
    us = none_path_us()
    print(f"tracing work at level none, in-process: {us:.2f} µs per request ({us / base / 10:.2f} % of p50)")


if __name__ == "__main__":
    main()
