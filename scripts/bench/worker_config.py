"""Which worker threads x pool a node should run by default: every combination measured through a real node.

    .venv/bin/python scripts/bench/worker_config.py [--threads 1,0] [--pools 1,2,3,4] [--clients 1,8]
                                                    [--duration 6] [--model efficientnet-lite0]

For each (--worker-threads T, --worker-pool P) a real `carml-node` process (local workers, onnxruntime, the demo
manifests, every other flag at its default) is started and loaded by scripts/bench/loadgen.py in a process of its
own: closed loops of each --clients count, POST /api/predict with one preprocessed 224x224 float32 tensor in
msgpack. T = 0 is the framework's default (one intra-op thread per usable core). Then a node with no worker flags
at all, to check that the defaults are the combination found best. Onnxruntime's intra-op threads spin only when
T x P fits the cores (carml_mesh/exec/worker/backends.py). Printed: img/s at the largest client count, p50 at
the smallest, both against the best row of this run. Only ratios from one run mean anything: these VMs are noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import running_node
from vs_peers import image, loads


def measure(node_args: list[str], body: bytes, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp), *node_args) as url:
        return loads(url, "/api/predict", body, headers, args)["closed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,0", help="--worker-threads values (0: one per core)")
    parser.add_argument("--pools", default="1,2,3,4", help="--worker-pool values")
    parser.add_argument("--clients", default="1,8", help="closed-loop client counts")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per load")
    parser.add_argument("--model", default="efficientnet-lite0")
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    args.qps = 0
    low, high = str(min(args.clients)), str(max(args.clients))
    x = image()
    body = msgpack.packb(
        {
            "model": args.model,
            "framework": "onnxruntime",
            "inputs": [{"tensor": {"dtype": "float32", "shape": list(x.shape), "data": x.tobytes()}}],
        }
    )
    cores = len(os.sched_getaffinity(0))
    print(f"{args.model}, onnxruntime/cpu, {cores} usable cores; load from scripts/bench/loadgen.py", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        for pool in (int(p) for p in args.pools.split(",")):
            label = f"threads {threads or 'all'} x pool {pool}"
            rows[label] = measure([f"--worker-threads={threads}", f"--worker-pool={pool}"], body, args)
            r = rows[label]
            print(
                f"  {label}: {high} clients {r[high]['ips']:.1f} img/s; {low} client p50 {r[low]['p50']:.2f} ms",
                flush=True,
            )
    rows["defaults (no worker flags)"] = measure([], body, args)
    best_ips = max(r[high]["ips"] for r in rows.values())
    best_p50 = min(r[low]["p50"] for r in rows.values())
    print(f"\n| worker config | {high} clients img/s | vs best | {low} client p50 ms | vs best |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        ips, p50 = r[high]["ips"], r[low]["p50"]
        print(f"| {label} | {ips:.1f} | {ips / best_ips:.2f}x | {p50:.2f} | {p50 / best_p50:.2f}x |")


if __name__ == "__main__":
    main()
