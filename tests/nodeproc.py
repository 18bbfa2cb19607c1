"""Nodes for multi-node tests, on 127.0.0.1 with kernel-chosen ports, local workers, no mDNS and fast gossip.

    p = wait_ready(launch(tmp, "a", manifests))             carml-node as a real process: started, ready, stop(p)
    async with joined_nodes(node_config(tmp, "a"), node_config(tmp, "b")) as (a, b):
        ...                                                 in this process: b joined a, each holds the other's card

Imported as ``nodeproc`` (pytest puts tests/ on sys.path for conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node

REPO = Path(__file__).resolve().parent.parent
# Fast gossip timers so that joins, suspicion and death take a second or two instead of LAN defaults' several.
FAST = "probe_interval=0.2,probe_timeout=0.1,gossip_interval=0.05,push_pull_interval=2,leave_propagate_delay=0.2"
FAST_OVERRIDES = tuple((key, float(value)) for key, value in (pair.split("=") for pair in FAST.split(",")))
JOIN_PATIENCE_S = 20.0  # a bound on a join that never happens, not a performance figure


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[str]
    data: Path
    node_id: str = ""
    url: str = ""
    gossip: str = ""  # HOST:PORT of its gossip, for --join; filled by who needs it


def launch(tmp: Path, name: str, manifests: Path, *extra: str, env: dict[str, str] | None = None) -> Proc:
    """A node on 127.0.0.1 (ports chosen by the kernel), local workers, no mDNS, fast gossip; not yet ready."""
    cmd = [
        sys.executable,
        "-m",
        "carml_mesh.node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--gossip-port",
        "0",
        "--data-dir",
        str(tmp / name),
        "--manifests",
        str(manifests),
        "--name",
        name,
        "--executor",
        "local",
        "--no-mdns",
        "--gossip-tuning",
        FAST,
        "--log-level",
        "WARNING",
        "--worker-threads",
        "1",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    return Proc(name, proc, tmp / name)


def wait_ready(p: Proc) -> Proc:
    """Readiness is announced on stdout ('ready:'), never guessed with sleeps."""
    assert p.proc.stdout is not None
    for line in p.proc.stdout:
        if m := re.search(r"\((\w+)\) on (http://\S+?)/ ", line):
            p.node_id, p.url = m.group(1), m.group(2)
        if line.startswith("ready:"):
            return p
    code = p.proc.wait()
    p.proc.stdout.close()
    raise AssertionError(f"{p.name} exited with {code} before it was ready")


def stop(p: Proc) -> None:
    if p.proc.poll() is None:
        p.proc.terminate()
        try:
            p.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
    if p.proc.stdout is not None:
        p.proc.stdout.close()


def get_json(url: str, headers: dict[str, str] | None = None) -> dict:
    """Setup code runs outside the event loop: a plain blocking GET."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def gossip_address(url: str, headers: dict[str, str] | None = None) -> str:
    return next(m["address"] for m in get_json(url + "/api/cluster", headers)["members"] if m["self"])


def manifests_with(tmp: Path, name: str, models: list[str]) -> Path:
    """A manifests folder holding only ``models``, their artifact paths made absolute."""
    folder = tmp / f"manifests-{name}"
    folder.mkdir()
    for model in models:
        text = (REPO / "manifests" / f"{model}.yml").read_text()
        (folder / f"{model}.yml").write_text(text.replace("../build/models", str(REPO / "build" / "models")))
    return folder


# --- nodes in this process ------------------------------------------------------------------------------------------


def node_config(tmp: Path, name: str, manifests: Path = REPO / "manifests", **kw: Any) -> NodeConfig:
    """A node for this process, set up as launch() sets up a process; models are loaded on first use."""
    return NodeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp / name,
        manifests_dirs=(manifests,),
        name=name,
        preload=False,
        executor="local",
        gossip_port=0,
        mdns=False,
        gossip_overrides=FAST_OVERRIDES,
        **kw,
    )


@contextlib.asynccontextmanager
async def joined_nodes(*configs: NodeConfig, patience_s: float = JOIN_PATIENCE_S) -> AsyncIterator[list[Node]]:
    """Nodes in this process, each after the first joined to it; yielded once every node holds every other's card and
    HTTP URL. Leaving the block stops them, the last first."""
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(Node(configs[0]))
        assert first.mesh is not None and first.mesh.gossip is not None, "joined_nodes needs gossip on"
        nodes = [first]
        for config in configs[1:]:
            joining = dataclasses.replace(config, join=(first.mesh.gossip.addr,))
            nodes.append(await stack.enter_async_context(Node(joining)))
        async with asyncio.timeout(patience_s):
            while not all(_knows(n, other) for n in nodes for other in nodes if other is not n):
                await asyncio.sleep(0.05)
        yield nodes


def _knows(node: Node, other: Node) -> bool:
    assert node.mesh is not None
    return other.id in node.mesh.cards and other.url() in node.peer_urls()
