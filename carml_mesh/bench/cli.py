"""``carml-node bench``: run a benchmark on a node, watch its progress, print its results.

    carml-node bench --url http://node:7450 --scenario offline --model digits-cnn \\
        [--framework onnxruntime,pytorch] [--node lab-2] [--batch-sizes 1,2,4] [--concurrency 1,8] [--qps 100] \\
        [--p99-bound-ms 20] [--min-queries 256] [--duration 5] [--seed 0] [--json]

Each --model (repeatable) x --framework x --node value is one target. The run happens on the node (POST
/api/benchmarks); this command polls it, draws a progress bar on stderr, and prints a table (or the run's JSON with
--json). Ctrl-C cancels the run on the node, then prints what it measured. Exit status: 0 done, 1 failed,
130 cancelled, 2 refused (the node's 4xx/5xx answer is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any, TextIO

from ..node.client import add_client_args, headers

POLL_S = 0.25
BAR_WIDTH = 30


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated integers, e.g. 1,2,4; got {text!r}") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark models on a node (MLPerf-style scenarios), with a live progress bar",
        description="Run a benchmark on the node at --url and print its results. Ctrl-C cancels it on the node.",
    )
    p.add_argument("--scenario", required=True, choices=("single-stream", "server", "offline"))
    p.add_argument("--model", required=True, action="append", help="a model to benchmark; repeatable")
    p.add_argument("--framework", type=_names, help="framework(s), comma-separated: one target each")
    p.add_argument("--node", type=_names, help="pin to member(s) (id or name), comma-separated: one target each")
    p.add_argument("--device")
    p.add_argument("--version", dest="model_version")
    p.add_argument("--batch-sizes", type=_ints, help="e.g. 1,2,4 (default 1)")
    p.add_argument("--concurrency", type=_ints, help="in-flight queries, e.g. 1,4,16 (offline default 4)")
    p.add_argument("--qps", type=float, help="server: the offered load")
    p.add_argument("--p99-bound-ms", type=float, help="server: search the highest QPS whose p99 stays under this")
    p.add_argument("--min-queries", type=int)
    p.add_argument("--duration", type=float, help="minimum seconds per configuration (min_duration_s)")
    p.add_argument("--warmup", type=int, help="warm-up queries per configuration (not measured)")
    p.add_argument("--seed", type=int)
    p.add_argument("--input", choices=("sample", "random"))
    p.add_argument("--name")
    p.add_argument("--json", action="store_true", help="print the run's JSON document")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_client_args(p)


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    targets = []
    for model in args.model:
        for framework in args.framework or [None]:
            for node in args.node or [None]:
                t = {"model": model, "framework": framework, "node": node, "device": args.device}
                t["version"] = args.model_version
                targets.append({k: v for k, v in t.items() if v is not None})
    body: dict[str, Any] = {"scenario": args.scenario, "targets": targets}
    for key, value in (
        ("name", args.name),
        ("batch_sizes", args.batch_sizes),
        ("concurrency", args.concurrency),
        ("qps", args.qps),
        ("p99_bound_ms", args.p99_bound_ms),
        ("min_queries", args.min_queries),
        ("min_duration_s", args.duration),
        ("warmup_queries", args.warmup),
        ("seed", args.seed),
        ("input", args.input),
    ):
        if value is not None:
            body[key] = value
    return body


def progress_line(progress: dict[str, Any], width: int = BAR_WIDTH) -> str:
    fraction = max(0.0, min(1.0, float(progress.get("fraction", 0.0))))
    filled = round(fraction * width)
    done, total = progress.get("done", 0), progress.get("total", 0)
    phase = str(progress.get("phase", ""))[:60]
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% {done}/{total} {phase}"


def _ms(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "-"


def results_table(doc: dict[str, Any]) -> str:
    head = (
        f"{'TARGET':<40} {'BATCH':>5} {'CONC':>4} {'QPS':>8} {'QUERIES':>7} {'ERR':>4} {'INPUTS/S':>9} "
        f"{'P50':>7} {'P90':>7} {'P99':>7}  NETWORK/NODE/QUEUE/PREPROC/COMPUTE/POSTPROC ms"
    )
    lines = [f"{doc.get('name')} [{doc.get('id')}]: {doc.get('status')}", head]
    for r in doc.get("results") or []:
        t = r.get("target") or {}
        target = f"{t.get('model')}/{t.get('framework') or '*'}/{t.get('device') or '*'}@{t.get('node') or '*'}"
        lat = r.get("latency_ms") or {}
        parts = r.get("breakdown_ms") or {}
        split = "/".join(
            _ms(parts.get(k)) for k in ("network", "node", "queue", "preprocess", "compute", "postprocess")
        )
        qps = r.get("qps")
        lines.append(
            f"{target[:40]:<40} {r.get('batch_size', ''):>5} {r.get('concurrency', ''):>4} "
            f"{(f'{qps:.1f}' if qps else '-'):>8} {r.get('queries', 0):>7} {r.get('errors', 0):>4} "
            f"{r.get('throughput_ips', 0.0):>9.1f} {_ms(lat.get('p50')):>7} {_ms(lat.get('p90')):>7} "
            f"{_ms(lat.get('p99')):>7}  {split}"
        )
        search = r.get("search")
        if search:
            verdict = f"{search['best_qps']} qps" if search.get("met") else "not met at any load tried"
            lines.append(f"{'':<40} p99 ≤ {search['p99_bound_ms']} ms: {verdict} ({len(search['steps'])} steps)")
    if doc.get("error"):
        lines.append(f"error: {doc['error']}")
    return "\n".join(lines)


async def run_bench(args: argparse.Namespace, err: TextIO = sys.stderr) -> tuple[int, dict[str, Any]]:
    import aiohttp

    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        async with aiohttp.ClientSession(headers=headers(args.token)) as http:
            async with http.post(f"{args.url}/api/benchmarks", json=request_body(args)) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 202:
                    return 2, answer if isinstance(answer, dict) else {"error": str(answer)}
            run_url = f"{args.url}/api/benchmarks/{answer['id']}"
            cancelled = False
            while True:
                async with http.get(run_url) as resp:
                    doc = await resp.json(content_type=None)
                    if resp.status != 200:
                        return 2, doc
                if not args.quiet:
                    err.write("\r" + progress_line(doc.get("progress") or {}) + "\x1b[K")
                    err.flush()
                if doc.get("status") != "running":
                    break
                if interrupted.is_set() and not cancelled:
                    cancelled = True
                    err.write("\ncancelling the run on the node...\n")
                    async with http.post(f"{run_url}/cancel") as resp:
                        await resp.read()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait() if not cancelled else asyncio.sleep(POLL_S), POLL_S)
            if not args.quiet:
                err.write("\n")
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    return {"done": 0, "failed": 1, "cancelled": 130}.get(doc.get("status", ""), 1), doc


def main(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        rc, doc = asyncio.run(run_bench(args))
    except aiohttp.ClientConnectionError as exc:
        print(f"carml-node bench: cannot reach a node at {args.url}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=2))
    elif rc == 2:
        print(f"carml-node bench: {doc.get('error', doc)}", file=sys.stderr)
    else:
        print(results_table(doc))
    return rc
