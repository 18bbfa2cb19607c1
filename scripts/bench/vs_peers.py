"""efficientnet-lite0 throughput and tail latency: carml-mesh vs a thin aiohttp server, direct onnxruntime, Ray Serve.

    .venv/bin/python scripts/bench/vs_peers.py [--qps 150] [--duration 8] [--clients 1,8,16] [--ray-python PATH]
                                               [--node-arg ARG ...] [--only thin,carml,kserve,ray]

The same input for all: one preprocessed 224x224 float32 tensor per request (602 KB of raw bytes), so no JPEG
decoding anywhere; the same model file (build/models/efficientnet-lite0/model.onnx) on onnxruntime's CPU provider:

- direct:    onnxruntime.InferenceSession.run in this process, intra-op threads = 2, called back to back at each
             batch size in --batches; the best images/s is the limit a server could approach (no HTTP, no copies);
- thin:      scripts/bench/thin_server.py, about 30 lines: aiohttp, one session (1 intra-op thread) run with
             asyncio.to_thread, no batching, POST / with the raw bytes, top-5 back as JSON;
- carml:     a real `carml-node` process with default flags (plus --node-arg), POST /api/predict with a msgpack
             body holding the tensor's raw bytes, top-5 back; then the same node through KServe v2 with the binary
             tensor extension (POST /v2/models/efficientnet-lite0/infer, the tensor after the JSON header, the
             classification extension asking for the top 5: what tritonclient sends);
- ray serve: one replica, `@serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002, max_concurrent_batches=2)`
             around the same onnxruntime session options (1 intra-op thread, each batch run in a thread), POST /
             with the tensor's raw bytes as the body, top-5 back as JSON. Ray runs from its own venv (default
             build/ray-venv: python3 -m venv build/ray-venv && build/ray-venv/bin/pip install "ray[serve]"
             onnxruntime numpy msgpack); without one it is skipped with a message.

The load comes from scripts/bench/loadgen.py in a process of its own (aiohttp clients on one loop), the same for
every server: closed loops with each of --clients clients back to back (the max load), then an open loop at --qps
offered requests/s (latency counted from each request's scheduled time, so a server falling behind pays for it).
Client and servers share the machine's cores, equally for all. Only the ratios of one run mean anything here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO

MODEL = REPO / "build" / "models" / "efficientnet-lite0" / "model.onnx"
RAY_PYTHON = REPO / "build" / "ray-venv" / "bin" / "python"
RAY_PORT = 8765

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
THIN = Path(__file__).resolve().parent / "thin_server.py"
THIN_PORT = 8766
KSERVE_PATH = "/v2/models/efficientnet-lite0/infer"


def image() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 224, 224), dtype=np.float32)


def loads(url: str, path: str, body: bytes, headers: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """scripts/bench/loadgen.py against ``url + path``, in a process of its own; its RESULT."""
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        cmd = [sys.executable, str(LOADGEN), url, path, f.name, "--closed", ",".join(map(str, args.clients))]
        cmd += ["--qps", str(args.qps), "--duration", str(args.duration)]
        cmd += [arg for k, v in headers.items() for arg in ("--header", f"{k}:{v}")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the load generator failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return out


def wait_ready(proc: subprocess.Popen[str], what: str) -> None:
    """Until the server prints its "ready" line (it listens then); never a guess."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            # the rest is drained, so that a chatty server never blocks on a full pipe
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return
    raise SystemExit(f"{what} exited with {proc.wait()} before it was ready")


def kserve_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 binary request as tritonclient makes it: the JSON header, then the tensor's bytes."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, *x.shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"classification": 5, "binary_data": False}}],
            "parameters": {"framework": "onnxruntime"},
        }
    ).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + x.tobytes(), headers


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


def bench_thin(args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, str(THIN), str(MODEL), str(THIN_PORT)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_ready(proc, "the thin server")
        out = loads(f"http://127.0.0.1:{THIN_PORT}", "/", image().tobytes(), {}, args)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    _show("thin aiohttp", out)
    return out


def bench_carml(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """One node with default flags (and --node-arg): /api/predict msgpack, then KServe v2 binary."""
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
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp), *args.node_arg) as url:
        if "carml" in args.only:
            results["carml /api/predict msgpack"] = loads(url, "/api/predict", body, headers, args)
        if "kserve" in args.only:
            kbody, kheaders = kserve_body(x)
            results["carml KServe v2 binary"] = loads(url, KSERVE_PATH, kbody, kheaders, args)
    for label, out in results.items():
        _show(label, out)
    return results


def bench_ray(args: argparse.Namespace) -> dict[str, Any] | None:
    python = Path(args.ray_python)
    if not python.exists():
        print(f"  ray serve: skipped, no Ray venv at {python} (see this script's docstring)", flush=True)
        return None
    probe = subprocess.run([str(python), "-c", "import ray, ray.serve, onnxruntime"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"  ray serve: skipped, `import ray` failed there: {probe.stderr.strip().splitlines()[-1]}", flush=True)
        return None
    cmd = [str(python), __file__, "--ray-server"]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        text=True,
    )
    try:
        wait_ready(proc, "ray serve")
        out = loads(f"http://127.0.0.1:{RAY_PORT}", "/", image().tobytes(), {}, args)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the server shuts Ray down when its stdin closes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
    serve.run(EfficientNet.bind(str(MODEL)), route_prefix="/")  # returns once the deployment serves
    print("ready", flush=True)
    try:
        sys.stdin.read()  # serve until the driver is done with us
    finally:
        serve.shutdown()
        ray.shutdown()


def _show(name: str, out: dict[str, Any]) -> None:
    closed = "; ".join(
        f"{n} clients {m['ips']:.1f} img/s p50 {m['p50']:.1f} p99 {m['p99']:.1f} ms" for n, m in out["closed"].items()
    )
    f = out["open"]
    fixed = f"; open loop {f['ips']:.1f} img/s p50 {f['p50']:.1f} p99 {f['p99']:.1f} ms" if f else ""
    print(f"  {name}: {closed}{fixed}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per load")
    parser.add_argument("--qps", type=float, default=150.0, help="the open loop's offered load, requests/s (0: none)")
    parser.add_argument("--clients", default="1,8,16", help="closed-loop client counts, comma-separated")
    parser.add_argument("--batches", default="1,2,4,8,16", help="direct onnxruntime batch sizes")
    parser.add_argument("--ray-python", default=str(RAY_PYTHON), help="the Ray venv's python")
    parser.add_argument("--only", default="thin,carml,kserve,ray", help="which servers, comma-separated")
    parser.add_argument(
        "--node-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra carml-node argument, repeatable (e.g. --node-arg=--worker-threads=1)",
    )
    parser.add_argument("--ray-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_server:
        ray_server(args)
        return
    args.batches = [int(b) for b in str(args.batches).split(",")]
    args.clients = [int(n) for n in str(args.clients).split(",")]
    args.only = set(args.only.split(","))
    print("direct onnxruntime, in-process, 2 intra-op threads", flush=True)
    direct = bench_direct(args)
    print("servers (load from scripts/bench/loadgen.py in its own process)", flush=True)
    rows: dict[str, dict[str, Any] | None] = {}
    if "thin" in args.only:
        rows["thin aiohttp + onnxruntime"] = bench_thin(args)
    if args.only & {"carml", "kserve"}:
        rows.update(bench_carml(args))
    if "ray" in args.only:
        rows["ray serve, @serve.batch"] = bench_ray(args)
    print("direct onnxruntime again (the best of both runs is the limit: other load on this machine only lowers it)")
    again = bench_direct(args)
    direct["by_batch"] = {b: max(ips, again["by_batch"][b]) for b, ips in direct["by_batch"].items()}
    direct["best_batch"] = max(direct["by_batch"], key=direct["by_batch"].__getitem__)
    limit = direct["ips"] = direct["by_batch"][direct["best_batch"]]
    print(
        f"\nefficientnet-lite0, onnxruntime/cpu, 1 preprocessed tensor per request; direct best: batch "
        f"{direct['best_batch']} {limit:.1f} img/s; direct batch 1: {direct['by_batch'].get(1, float('nan')):.1f} img/s"
        f" ({1e3 / direct['by_batch'].get(1, float('nan')):.2f} ms)"
    )
    thin = rows.get("thin aiohttp + onnxruntime")
    one_ms = 1e3 / direct["by_batch"][1] if 1 in direct["by_batch"] else float("nan")
    head = f"{'clients':>8}{'img/s':>9}{'x direct':>10}{'x thin':>8}{'p50 ms':>9}{'x direct b1':>12}{'p99 ms':>9}"
    print(f"{'server':<30}{head}")
    for name, out in rows.items():
        if out is None:
            print(f"{name:<30}{'(skipped)':>8}")
            continue
        for n in args.clients:
            m = out["closed"][str(n)]
            vs_thin = m["ips"] / thin["closed"][str(n)]["ips"] if thin else float("nan")
            print(
                f"{name:<30}{n:>8}{m['ips']:>9.1f}{m['ips'] / limit:>10.2f}{vs_thin:>8.2f}{m['p50']:>9.2f}"
                f"{m['p50'] / one_ms:>12.2f}{m['p99']:>9.1f}"
            )
        if out["open"]:
            f = out["open"]
            print(f"{name:<30}{'open':>8}{f['ips']:>9.1f}{'':>18}{f['p50']:>9.2f}{'':>12}{f['p99']:>9.1f}")
    print(f"\n{args.duration:.0f} s per load after 2 s warm-up; open loop at {args.qps:.0f}/s")


if __name__ == "__main__":
    main()
