"""``carml-node bench`` as users run it: a real process against the session node; --json, the table, Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

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
