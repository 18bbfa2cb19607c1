"""efficientnet-lite0 throughput and tail latency: carml-mesh (batching on) vs direct onnxruntime vs Ray Serve.

    .venv/bin/python scripts/bench/vs_peers.py [--qps 150] [--duration 8] [--clients 8] [--ray-python PATH]

The same input for all three: one preprocessed 224x224 float32 tensor per request (602 KB of raw bytes), so no
JPEG decoding anywhere; the same model file (build/models/efficientnet-lite0/model.onnx) on onnxruntime's CPU
provider; the same 2 compute threads in all:

- direct:    onnxruntime.InferenceSession.run in this process, intra-op threads = 2, called back to back at each
             batch size in --batches; the best images/s is the limit a server could approach (no HTTP, no copies);
- carml:     a real `carml-node` process, POST /api/predict with a msgpack body holding the tensor's raw bytes,
             top-5 back; its worker runs 2 requests at once with 1 intra-op thread each (--worker-threads 1, the
             default pool of 2). Three nodes, one after the other: batching on (the manifest's 16 inputs / 2 ms),
             on with --max-queue-delay-ms 0 (a batch leaves as soon as a worker slot is free), and off;
- ray serve: one replica, `@serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002, max_concurrent_batches=2)`
             around the same onnxruntime session options (1 intra-op thread, each batch run in a thread), POST /
             with the tensor's raw bytes as the body, top-5 back as JSON. Ray runs from its own venv (default
             build/ray-venv: python3 -m venv build/ray-venv && build/ray-venv/bin/pip install "ray[serve]"
             onnxruntime numpy msgpack); without one it is skipped with a message.

Two loads per server: closed loop with --clients clients back to back (its max load), and an open loop at --qps
offered requests/s (latency counted from each request's scheduled time, so a server falling behind pays for it).
The clients are threads in the benchmarking process, on the same 2 cores as the servers, equally for both.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, pct

MODEL = REPO / "build" / "models" / "efficientnet-lite0" / "model.onnx"
RAY_PYTHON = REPO / "build" / "ray-venv" / "bin" / "python"
RAY_PORT = 8765

Post = Callable[[], None]  # one request, raising on failure
CARML = {  # label -> node flags
    "carml-mesh, batching on": ["--batching", "auto"],  # the manifest's 16 inputs / 2 ms
    "carml, on, delay 0": ["--batching", "auto", "--max-queue-delay-ms", "0"],  # dispatch when a slot is free
    "carml-mesh, batching off": ["--batching", "off"],
}


def poster(url: str, path: str, body: bytes, headers: dict[str, str]) -> Callable[[], Post]:
    """A factory of per-thread posters, each with its own keep-alive connection."""
    host, _, port = url.removeprefix("http://").partition(":")

    def make() -> Post:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)

        def post() -> None:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {raw[:200]!r}")

        return post

    return make


def closed_loop(make: Callable[[], Post], clients: int, duration: float, warmup: float = 2.0) -> dict[str, float]:
    start = time.perf_counter()
    measure_from, stop = start + warmup, start + warmup + duration
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        post = make()
        try:
            while (t0 := time.perf_counter()) < stop:
                post()
                if t0 >= measure_from:
                    lat[n].append((time.perf_counter() - t0) * 1e3)
        except BaseException as exc:
            errors.append(exc)

    _run_threads(run, clients)
    if errors:
        raise SystemExit(f"request failed: {errors[0]}")
    ms = np.concatenate([np.asarray(x) for x in lat])
    return {"ips": len(ms) / duration, "p50": pct(ms, 50), "p99": pct(ms, 99)}


def open_loop(make: Callable[[], Post], qps: float, duration: float, warmup: float = 2.0) -> dict[str, float]:
    """Requests scheduled every 1/qps s; latency from the scheduled time. Up to 64 requests outstanding."""
    start = time.perf_counter() + 0.05
    total = int((warmup + duration) * qps)
    first = int(warmup * qps)
    counter = itertools.count()
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[BaseException] = []

    def run(_: int) -> None:
        post = make()
        try:
            while True:
                with lock:
                    i = next(counter)
                if i >= total:
                    return
                due = start + i / qps
                if (delay := due - time.perf_counter()) > 0:
                    time.sleep(delay)
                post()
                if i >= first:
                    lat.append((time.perf_counter() - due) * 1e3)
        except BaseException as exc:
            errors.append(exc)

    t0 = time.perf_counter()
    _run_threads(run, 64)
    if errors:
        raise SystemExit(f"request failed: {errors[0]}")
    ms = np.asarray(lat)
    elapsed = time.perf_counter() - t0 - warmup
    return {"ips": len(ms) / max(elapsed, 1e-9), "p50": pct(ms, 50), "p99": pct(ms, 99)}


def _run_threads(target: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def image() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 224, 224), dtype=np.float32)


def loads(make: Callable[[], Post], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    return {
        "max": closed_loop(make, args.clients, args.duration),
        "fixed": open_loop(make, args.qps, args.duration),
    }


# --- the three ------------------------------------------------------------------------------------------------------


def bench_direct(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL), sess_options=options, providers=["CPUExecutionProvider"])
    x = image()
    by_batch = {}
    for b in args.batches:
        feed = {"input": np.ascontiguousarray(np.broadcast_to(x, (b, *x.shape)))}
        for _ in range(3):
            session.run(None, feed)
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < args.duration / 2:
            session.run(None, feed)
            n += b
        by_batch[b] = n / elapsed
        print(f"  direct onnxruntime batch {b:<3} {by_batch[b]:7.1f} img/s", flush=True)
    best = max(by_batch, key=by_batch.__getitem__)
    return {"by_batch": by_batch, "best_batch": best, "ips": by_batch[best]}


def bench_carml(args: argparse.Namespace, label: str, flags: list[str]) -> dict[str, Any]:
    import msgpack
    from _common import running_node

    x = image()
    body = msgpack.packb(
        {
            "model": "efficientnet-lite0",
            "framework": "onnxruntime",
            "inputs": [{"tensor": {"dtype": "float32", "shape": list(x.shape), "data": x.tobytes()}}],
        }
    )
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_node(Path(tmp), *flags, "--worker-threads", "1", *args.node_arg) as url,
    ):
        out = loads(poster(url, "/api/predict", body, headers), args)
    _show(label, out)
    return out


def bench_ray(args: argparse.Namespace) -> dict[str, Any] | None:
    python = Path(args.ray_python)
    if not python.exists():
        print(f"  ray serve: skipped, no Ray venv at {python} (see this script's docstring)", flush=True)
        return None
    probe = subprocess.run([str(python), "-c", "import ray, ray.serve, onnxruntime"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"  ray serve: skipped, `import ray` failed there: {probe.stderr.strip().splitlines()[-1]}", flush=True)
        return None
    cmd = [str(python), __file__, "--ray-server", "--duration", str(args.duration), "--qps", str(args.qps)]
    cmd += ["--clients", str(args.clients)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"  ray serve: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return None
    out = json.loads(lines[-1].removeprefix("RESULT "))
    _show("ray serve", out)
    return out


def ray_server(args: argparse.Namespace) -> None:
    """Runs inside the Ray venv: start Ray Serve with the batched deployment, load it like the others, report."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class EfficientNet:
        def __init__(self, path: str) -> None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # two batches at once, one thread each: as the carml worker
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002, max_concurrent_batches=2)
        async def infer(self, bodies: list[bytes]) -> list[dict[str, Any]]:
            import asyncio

            x = np.stack([np.frombuffer(b, dtype=np.float32).reshape(3, 224, 224) for b in bodies])
            (logits,) = await asyncio.to_thread(self.session.run, ["logits"], {"input": x})
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = z / z.sum(axis=1, keepdims=True)
            top = np.argsort(-p, axis=1)[:, :5]
            return [{"predictions": [[int(i), float(row[i])] for i in idx]} for row, idx in zip(p, top, strict=True)]

        async def __call__(self, request: Request) -> JSONResponse:
            return JSONResponse(await self.infer(await request.body()))

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": RAY_PORT})
    serve.run(EfficientNet.bind(str(MODEL)), route_prefix="/")
    try:
        body = image().tobytes()
        make = poster(f"http://127.0.0.1:{RAY_PORT}", "/", body, {"Content-Type": "application/octet-stream"})
        out = loads(make, args)
    finally:
        serve.shutdown()
        ray.shutdown()
    print("RESULT " + json.dumps(out), flush=True)


def _show(name: str, out: dict[str, Any]) -> None:
    m, f = out["max"], out["fixed"]
    print(
        f"  {name}: max load {m['ips']:.1f} img/s p50 {m['p50']:.1f} p99 {m['p99']:.1f} ms; "
        f"fixed load {f['ips']:.1f} img/s p50 {f['p50']:.1f} p99 {f['p99']:.1f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per load")
    parser.add_argument("--qps", type=float, default=150.0, help="the fixed offered load, requests (images)/s")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients for the max load")
    parser.add_argument("--batches", default="1,2,4,8,16", help="direct onnxruntime batch sizes")
    parser.add_argument("--ray-python", default=str(RAY_PYTHON), help="the Ray venv's python")
    parser.add_argument("--no-off", action="store_true", help="skip carml-mesh with batching off")
    parser.add_argument(
        "--node-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra carml-node argument for every carml run, repeatable (e.g. --node-arg=--trace-level=none)",
    )
    parser.add_argument("--ray-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batches = [int(b) for b in str(args.batches).split(",")]
    if args.ray_server:
        ray_server(args)
        return
    print("direct onnxruntime, in-process, 2 intra-op threads", flush=True)
    direct = bench_direct(args)
    print("servers", flush=True)
    carml = {
        label: bench_carml(args, label, flags) for label, flags in CARML.items() if not (args.no_off and "off" in flags)
    }
    ray = bench_ray(args)
    print("direct onnxruntime again (the best of both runs is the limit: other load on this machine only lowers it)")
    again = bench_direct(args)
    direct["by_batch"] = {b: max(ips, again["by_batch"][b]) for b, ips in direct["by_batch"].items()}
    direct["best_batch"] = max(direct["by_batch"], key=direct["by_batch"].__getitem__)
    limit = direct["ips"] = direct["by_batch"][direct["best_batch"]]
    print(
        f"\nefficientnet-lite0, onnxruntime/cpu, 1 preprocessed tensor per request; direct best: batch "
        f"{direct['best_batch']}"
    )
    print(
        f"{'':<26}{'max load (' + str(args.clients) + ' clients)':>32} | "
        f"{'fixed load ' + format(args.qps, '.0f') + '/s':>22}"
    )
    print(f"{'':<26}{'img/s':>10}{'% direct':>10}{'p99 ms':>12} | {'img/s':>10}{'p99 ms':>12}")
    print(f"{'direct onnxruntime':<26}{limit:>10.1f}{100.0:>9.1f}%{'':>12} |")
    rows = [*carml.items(), ("ray serve, @serve.batch", ray)]
    for name, out in rows:
        if out is None:
            print(f"{name:<26}{'(skipped)':>10}")
            continue
        m, f = out["max"], out["fixed"]
        print(
            f"{name:<26}{m['ips']:>10.1f}{100 * m['ips'] / limit:>9.1f}%{m['p99']:>12.1f} | "
            f"{f['ips']:>10.1f}{f['p99']:>12.1f}"
        )
    print(f"\n{args.duration:.0f} s per load after 2 s warm-up; carml and ray: 2 batches at once x 1 thread")


if __name__ == "__main__":
    main()
