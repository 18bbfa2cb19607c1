"""Dynamic batching on vs off, side by side, through a real node process.

    .venv/bin/python scripts/bench/batching.py [--duration S] [--concurrency 1,2,4,8,16] [--worker-threads N]

efficientnet-lite0 (onnxruntime, cpu): closed-loop clients, each one keep-alive connection sending one preprocessed
224x224 float32 tensor per request (msgpack, raw bytes, top-5 back), for ``--duration`` seconds per concurrency:
images/s, p50, p99 and the mean batch formed.
digits-cnn: one client, one 8x8 tensor per request: p50/p99 with batching off and on, to show that a lone request
does not pay for batching (it is dispatched at once when nothing is in flight for its model); and the same request
through an in-process LocalExecutor with and without the BatchingExecutor around it, alternating, which isolates
the batcher's own cost from HTTP and from this machine's noise.

Three nodes run at once and take turns at each point: batching off, on (the manifests' delays), and on with
--max-queue-delay-ms 0 (a batch leaves as soon as a worker slot is free: work-conserving).

The clients run in this process (threads; the GIL is released while they wait on their sockets), on the same
cores as the node, as they would on a 2-core box; both configurations pay that equally.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Client, measure, pct, running_node

MODELS = REPO / "build" / "models"
MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


def tensor_body(model: str, x: np.ndarray) -> bytes:
    """One /api/predict request holding the inputs of ``x`` (batch first) as raw float32 tensors."""
    return msgpack.packb(
        {
            "model": model,
            "framework": "onnxruntime",
            "inputs": [{"tensor": {"dtype": "float32", "shape": list(row.shape), "data": row.tobytes()}} for row in x],
        }
    )


def closed_loop(url: str, body: bytes, concurrency: int, duration: float, warmup: float = 1.0) -> dict[str, Any]:
    """``concurrency`` clients posting ``body`` back to back; latencies of the requests issued after ``warmup`` s."""
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def client(n: int) -> None:
        c = Client(url)
        try:
            while (t0 := time.perf_counter()) < stop:
                status, raw, _ = c.post("/api/predict", body, MSGPACK)
                if status != 200:
                    errors.append(raw[:200].decode(errors="replace"))
                    return
                if t0 >= measure_from:
                    latencies[n].append((time.perf_counter() - t0) * 1e3)
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"request failed: {errors[0]}")
    ms = np.concatenate([np.asarray(lat) for lat in latencies])
    return {"requests": len(ms), "ips": len(ms) / duration, "p50": pct(ms, 50), "p99": pct(ms, 99)}


def batching_stats(url: str, model: str) -> dict[str, Any]:
    """The node's batcher counters for ``model``, and the CPU seconds its process and its workers have used."""
    with urllib.request.urlopen(f"{url}/api/node") as resp:
        info = json.load(resp)
    found = [v for k, v in (info.get("batching") or {}).items() if k.startswith(f"{model}@")]
    stats = dict(found[0]) if found else {}
    stats["node_cpu"] = cpu_seconds(info["pid"])
    stats["worker_cpu"] = sum(cpu_seconds(w["pid"]) for w in info.get("workers", []) if w.get("pid"))
    return stats


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), so a point can say where each image's CPU went: a figure
    that other load on the machine does not move much, unlike images/s."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def executor_overhead(iterations: int, rounds: int) -> dict[str, np.ndarray]:
    """digits-cnn through one LocalExecutor, alone and wrapped in a BatchingExecutor, alternating in rounds: what
    the batcher's idle path (nothing in flight: dispatch at once) adds to a lone request, without HTTP around it."""

    from carml_mesh.exec.base import ModelSpec
    from carml_mesh.exec.batching import BatchingExecutor
    from carml_mesh.exec.local import LocalExecutor, LocalExecutorConfig
    from carml_mesh.exec.worker.protocol import encode_tensor
    from carml_mesh.store.artifacts import sha256_file

    path = MODELS / "digits-cnn" / "model.onnx"
    spec = {
        "inputs": [{"name": "input", "type": "tensor", "element_type": "float32", "dimensions": [1, 8, 8]}],
        "outputs": [{"name": "logits", "type": "classification", "probabilities": "softmax"}],
        "labels": [str(d) for d in range(10)],
        "batching": {"max_batch_size": 64, "max_queue_delay_ms": 1.0},
    }
    model = ModelSpec("digits-cnn", "1.0.0", "onnxruntime", "cpu", sha256_file(path), str(path), spec)
    x = np.load(MODELS / "digits-cnn" / "heldout.npz")["X"][:1].astype(np.float32)
    message = {"tensors": {"input": encode_tensor(x)}, "top_k": 5}
    out: dict[str, list[float]] = {"executor": [], "batching executor": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalExecutor(Path(tmp), LocalExecutorConfig(threads=1)) as local:
            batching = BatchingExecutor(local)
            await local.load(model)
            for _ in range(rounds):
                for label, executor in (("executor", local), ("batching executor", batching)):
                    for n in range(iterations // rounds + 50):
                        t0 = time.perf_counter()
                        await executor.infer(model, dict(message), timeout=30)
                        if n >= 50:
                            out[label].append((time.perf_counter() - t0) * 1e3)
            await batching.aclose()
    return {label: np.asarray(ms) for label, ms in out.items()}


CONFIGS = {  # label -> node flags
    "off": ["--batching", "off"],
    "on": ["--batching", "auto"],  # the manifest's delay: 2 ms for efficientnet-lite0, 1 ms for digits-cnn
    "on, delay 0": ["--batching", "auto", "--max-queue-delay-ms", "0"],  # dispatch whenever a worker slot is free
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per concurrency")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated client counts")
    parser.add_argument("--worker-threads", type=int, default=1, help="onnxruntime intra-op threads per worker")
    parser.add_argument("--digits-iterations", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5, help="digits-cnn: alternate between the nodes this often")
    parser.add_argument("--repeat", type=int, default=3, help="efficientnet: runs per point (the median is shown)")
    args = parser.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    rng = np.random.default_rng(0)
    effnet = tensor_body("efficientnet-lite0", rng.standard_normal((1, 3, 224, 224), dtype=np.float32))
    digits = tensor_body("digits-cnn", np.load(MODELS / "digits-cnn" / "heldout.npz")["X"][:1].astype(np.float32))
    effnet_rows: dict[int, dict[str, dict[str, float]]] = {c: {} for c in concurrency}
    digits_ms: dict[str, list[np.ndarray]] = {label: [] for label in CONFIGS}
    # All nodes run at once and the configurations take turns at each point, so drifting noise from other
    # processes on this machine falls on all of them alike.
    with contextlib.ExitStack() as stack:
        urls = {}
        for label, flags in CONFIGS.items():
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            urls[label] = stack.enter_context(
                running_node(Path(tmp), *flags, "--worker-threads", str(args.worker_threads))
            )
        clients = {label: Client(url) for label, url in urls.items()}
        for _ in range(args.rounds):
            for label, client in clients.items():

                def one(client: Client = client) -> None:
                    status, raw, _ = client.post("/api/predict", digits, MSGPACK)
                    assert status == 200, raw

                digits_ms[label].append(measure(one, warmup=100, iterations=args.digits_iterations // args.rounds))
        for client in clients.values():
            client.close()
        for c in concurrency:
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in urls}
            for _ in range(args.repeat):
                for label, url in urls.items():
                    before = batching_stats(url, "efficientnet-lite0")
                    point = closed_loop(url, effnet, c, args.duration)
                    after = batching_stats(url, "efficientnet-lite0")
                    calls = after.get("calls", 0) - before.get("calls", 0)
                    point["mean_batch"] = (after.get("inputs", 0) - before.get("inputs", 0)) / calls if calls else 1.0
                    images = point["requests"] or 1  # measured requests; the CPU also covers the warm-up second
                    served = images * (1 + 1 / args.duration)
                    point["node_ms"] = (after["node_cpu"] - before["node_cpu"]) * 1e3 / served
                    point["worker_ms"] = (after["worker_cpu"] - before["worker_cpu"]) * 1e3 / served
                    runs[label].append(point)
                    print(
                        f"  {label:<12} c={c:<3} {point['ips']:7.1f} img/s  p50 {point['p50']:7.1f}  "
                        f"p99 {point['p99']:7.1f}  mean batch {point['mean_batch']:.1f}  CPU per image: node "
                        f"{point['node_ms']:.2f} ms, worker {point['worker_ms']:.2f} ms",
                        flush=True,
                    )
            for label, points in runs.items():  # the median of the repeats, figure by figure
                effnet_rows[c][label] = {k: float(np.median([p[k] for p in points])) for k in points[0]}
    print(
        f"\nefficientnet-lite0, onnxruntime/cpu, 1 image (602 KB tensor) per request, closed loop, "
        f"median of {args.repeat} runs"
    )
    print(
        f"{'clients':>8}" + "".join(f" | {label + ' img/s':>17}{'p50':>7}{'p99':>7}{'batch':>6}" for label in CONFIGS)
    )
    for c in concurrency:
        cells = [effnet_rows[c][label] for label in CONFIGS]
        print(
            f"{c:>8}"
            + "".join(f" | {p['ips']:>17.1f}{p['p50']:>7.1f}{p['p99']:>7.1f}{p['mean_batch']:>6.1f}" for p in cells)
        )
    print("\nCPU per image (core-ms; the warm-up second counted at the same rate): node process | its workers")
    print(f"{'clients':>8}" + "".join(f" | {label:>12}{'':>8}" for label in CONFIGS))
    for c in concurrency:
        cells = [effnet_rows[c][label] for label in CONFIGS]
        print(f"{c:>8}" + "".join(f" | {p['node_ms']:>9.2f}{p['worker_ms']:>11.2f}" for p in cells))
    print("\ndigits-cnn, one client, one input per request (ms)")
    print(f"{'batching':>12}{'p50':>9}{'p99':>9}{'vs off p50':>12}")
    base = pct(np.concatenate(digits_ms["off"]), 50)
    for label in CONFIGS:
        ms = np.concatenate(digits_ms[label])
        print(f"{label:>12}{pct(ms, 50):>9.3f}{pct(ms, 99):>9.3f}{pct(ms, 50) - base:>+12.3f}")
    print("\ndigits-cnn, in-process executor call, one input (ms): what the batcher's idle path adds")
    import asyncio

    direct = asyncio.run(executor_overhead(args.digits_iterations * 2, args.rounds * 2))
    base = pct(direct["executor"], 50)
    for label, ms in direct.items():
        print(f"{label:>18}{pct(ms, 50):>9.3f}{pct(ms, 99):>9.3f}{pct(ms, 50) - base:>+12.3f}")
    print(f"\n{args.duration:.0f} s per point, worker threads {args.worker_threads}, worker pool 2")


if __name__ == "__main__":
    main()
