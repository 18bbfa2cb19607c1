"""``carml-node bench`` as users run it: a real process against the session node; --json, the table, Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from carml_mesh.bench.cli import progress_line
from carml_mesh.node.node import Node

SHORT = ["--min-queries", "20", "--duration", "0.1", "--warmup", "2"]


async def bench(node: Node, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "carml_mesh.node",
        "bench",
        "--url",
        node.url(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bench_json_with_a_sweep_of_frameworks_and_batch_sizes(node: Node) -> None:
    proc = await bench(
        node,
        *("--scenario", "offline", "--model", "digits-cnn", "--framework", "onnxruntime,pytorch"),
        *("--batch-sizes", "1,2", "--concurrency", "2", "--json", *SHORT),
    )
    rc, out, err = await finish(proc)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "done"
    got = [(r["target"]["framework"], r["batch_size"]) for r in doc["results"]]
    assert got == [("onnxruntime", 1), ("onnxruntime", 2), ("pytorch", 1), ("pytorch", 2)]
    assert "100.0%" in err and "\r[" in err  # the live bar on stderr


async def test_bench_prints_a_table(node: Node) -> None:
    rc, out, err = await finish(await bench(node, "--scenario", "single-stream", "--model", "digits-cnn", *SHORT))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].endswith(": done") and lines[1].startswith("TARGET")
    assert lines[2].startswith("digits-cnn/onnxruntime/cpu@test-node")


async def test_bench_refused_names_the_field(node: Node) -> None:
    rc, _, err = await finish(
        await bench(node, "--scenario", "offline", "--model", "digits-cnn", "--batch-sizes", "0", *SHORT)
    )
    assert rc == 2
    assert "batch_sizes[0]: must be an integer ≥ 1" in err


async def test_ctrl_c_cancels_the_run_on_the_node(node: Node) -> None:
    proc = await bench(node, "--scenario", "single-stream", "--model", "digits-cnn", "--duration", "60", "--json")
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        seen = b""
        while b"single-stream" not in seen:  # the bar shows the measured phase: the run is on
            seen += await proc.stderr.read(256)
    proc.send_signal(signal.SIGINT)
    rc, out, err = await finish(proc)
    assert rc == 130, err
    doc = json.loads(out)
    assert doc["status"] == "cancelled" and doc["results"][0]["queries"] > 0
    stored = await node.benchmarks.store.get(doc["id"])
    assert stored is not None and stored["status"] == "cancelled"


def test_progress_line() -> None:
    line = progress_line({"done": 5, "total": 20, "fraction": 0.25, "phase": "warm-up"}, width=8)
    assert line == "[##......]  25.0% 5/20 warm-up"


@contextlib.asynccontextmanager
async def hanging_node() -> AsyncIterator[str]:
    """A server that accepts a run and then never answers a poll (a node that hangs): fault injection."""
    release = asyncio.Event()

    async def start(request: web.Request) -> web.Response:
        return web.json_response({"id": "0123456789abcdef", "status": "running", "url": "x"}, status=202)

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>not a node</html>")

    app = web.Application()
    app.router.add_post("/api/benchmarks", start)
    app.router.add_get("/api/benchmarks/{id}", hang)
    app.router.add_post("/api/benchmarks/{id}/cancel", hang)
    app.router.add_get("/html/api/benchmarks/{id}", hang)
    app.router.add_post("/html/api/benchmarks", not_json)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"  # no scheme: the command adds http://
    finally:
        release.set()
        await runner.cleanup()


async def cli(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "carml_mesh.node", "bench", "--url", url, "--scenario", "offline", "--model", "m", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_a_second_ctrl_c_stops_waiting_for_a_hung_node() -> None:
    async with hanging_node() as url:
        proc = await cli(url)
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            line = await proc.stderr.readline()  # the run's id: it started, the poll now hangs
        assert b"run 0123456789abcdef" in line
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):  # at once, though the poll in flight never comes back
            while b"cancelling" not in await proc.stderr.readline():
                pass
        proc.send_signal(signal.SIGINT)
        rc, _, err = await finish(proc)
    assert rc == 130
    assert "stopped waiting for the node (run 0123456789abcdef" in err


async def test_an_answer_that_is_not_a_node_is_said_so() -> None:
    async with hanging_node() as url:
        rc, out, err = await finish(await cli(f"http://{url}/html/"))
    assert rc == 2 and out == ""
    assert "not a carml-mesh node's JSON" in err and "Traceback" not in err
