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
REQUEST_TIMEOUT_S = 30.0  # one request to the node; a node that takes longer is reported, not waited for
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


def _num(value: Any) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def results_table(doc: dict[str, Any]) -> str:
    head = (
        f"{'TARGET':<40} {'BATCH':>5} {'CONC':>4} {'QPS':>8} {'QUERIES':>7} {'ERR':>4} {'INPUTS/S':>9} "
        f"{'P50':>7} {'P90':>7} {'P99':>7} {'CPU%':>6} {'RSS MB':>7}  NETWORK/NODE/QUEUE/PREPROC/COMPUTE/POSTPROC ms"
    )
    lines = [f"{doc.get('name')} [{doc.get('id')}]: {doc.get('status')}", head]
    for r in doc.get("results") or []:
        t = r.get("target") or {}
        target = f"{t.get('model')}/{t.get('framework') or '*'}/{t.get('device') or '*'}@{t.get('node') or '*'}"
        lat = r.get("latency_ms") or {}
        parts = r.get("breakdown_ms") or {}
        util = r.get("utilisation") or {}
        split = "/".join(
            _ms(parts.get(k)) for k in ("network", "node", "queue", "preprocess", "compute", "postprocess")
        )
        qps = r.get("qps")
        lines.append(
            f"{target[:40]:<40} {r.get('batch_size', ''):>5} {r.get('concurrency', ''):>4} "
            f"{(f'{qps:.1f}' if qps else '-'):>8} {r.get('queries', 0):>7} {r.get('errors', 0):>4} "
            f"{r.get('throughput_ips', 0.0):>9.1f} {_ms(lat.get('p50')):>7} {_ms(lat.get('p90')):>7} "
            f"{_ms(lat.get('p99')):>7} {_num(util.get('cpu_percent')):>6} {_num(util.get('rss_mb')):>7}  {split}"
        )
        search = r.get("search")
        if search:
            verdict = f"{search['best_qps']} qps" if search.get("met") else "not met at any load tried"
            lines.append(f"{'':<40} p99 ≤ {search['p99_bound_ms']} ms: {verdict} ({len(search['steps'])} steps)")
    if doc.get("error"):
        lines.append(f"error: {doc['error']}")
    return "\n".join(lines)


def base_url(text: str) -> str:
    """--url as given, with http:// when it names no scheme and without a trailing slash."""
    text = text.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


class NodeProblem(Exception):
    """The node did not answer, or answered something that is not carml-mesh JSON."""


async def run_bench(args: argparse.Namespace, err: TextIO = sys.stderr) -> tuple[int, dict[str, Any]]:
    """Start, follow and print the run: (exit status, the run's document). A first Ctrl-C cancels the run on the
    node and waits for what it measured; a second one stops waiting (the node keeps what it stores)."""
    import aiohttp

    url = base_url(args.url)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    run_id: str | None = None
    aborted = False

    def on_sigint() -> None:
        nonlocal aborted
        if interrupted.is_set() and main is not None:
            aborted = True
            main.cancel()
        interrupted.set()

    async def get_json(resp: aiohttp.ClientResponse) -> Any:
        try:
            return await resp.json(content_type=None)
        except ValueError:
            raise NodeProblem(
                f"{resp.method} {resp.url} answered {resp.status}, not a carml-mesh node's JSON"
            ) from None

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    doc: dict[str, Any] = {}
    try:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(headers=headers(args.token), timeout=timeout) as http:
            async with http.post(f"{url}/api/benchmarks", json=request_body(args)) as resp:
                answer = await get_json(resp)
                if resp.status != 202 or not isinstance(answer, dict) or "id" not in answer:
                    error = answer.get("error") if isinstance(answer, dict) else None
                    return 2, {"error": error or f"{resp.status}: {answer!r:.200}", "status_code": resp.status}
            run_id = str(answer["id"])
            run_url = f"{url}/api/benchmarks/{run_id}"
            if not args.quiet:
                err.write(f"run {run_id}: {run_url}\n")

            async def poll() -> tuple[int, Any]:
                async with http.get(run_url) as resp:
                    return resp.status, await get_json(resp)

            cancelled = False
            while True:
                if interrupted.is_set() and not cancelled:
                    cancelled = True
                    err.write("\ncancelling the run on the node (Ctrl-C again to stop waiting)...\n")
                    err.flush()
                    async with http.post(f"{run_url}/cancel") as resp:
                        await resp.read()
                getter = asyncio.ensure_future(poll())
                if not cancelled:  # a Ctrl-C acts at once, not when a slow poll comes back
                    waiter = asyncio.ensure_future(interrupted.wait())
                    try:
                        await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
                    if not getter.done():
                        getter.cancel()
                        await asyncio.wait({getter})  # (never raises: a cancel of this task still does)
                        continue
                status, doc = await getter
                if status != 200 or not isinstance(doc, dict):
                    return 2, doc if isinstance(doc, dict) else {"error": f"{status}: {doc!r:.200}"}
                if not args.quiet:
                    err.write("\r" + progress_line(doc.get("progress") or {}) + "\x1b[K")
                    err.flush()
                if doc.get("status") != "running":
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait() if not cancelled else asyncio.sleep(POLL_S), POLL_S)
            if not args.quiet:
                err.write("\n")
    except asyncio.CancelledError:
        if not aborted or main is None:
            raise
        main.uncancel()
        where = f" (run {run_id}: see {url}/api/benchmarks/{run_id})" if run_id else ""
        return 130, {**doc, "status": doc.get("status", "unknown"), "error": f"stopped waiting for the node{where}"}
    except TimeoutError:
        raise NodeProblem(f"the node at {url} did not answer within {REQUEST_TIMEOUT_S:g} s") from None
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    return {"done": 0, "failed": 1, "cancelled": 130}.get(doc.get("status", ""), 1), doc


def main(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        rc, doc = asyncio.run(run_bench(args))
    except aiohttp.ClientConnectionError as exc:
        print(f"carml-node bench: cannot reach a node at {base_url(args.url)}: {exc}", file=sys.stderr)
        return 2
    except (NodeProblem, aiohttp.ClientError) as exc:
        print(f"carml-node bench: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=2))
    elif rc == 2 or (rc == 130 and "results" not in doc):
        print(f"carml-node bench: {doc.get('error', doc)}", file=sys.stderr)
    else:
        print(results_table(doc))
    return rc
