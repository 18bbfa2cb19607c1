"""carml-node as a real process for multi-node tests: start it, read its readiness from stdout, stop it.

Imported as ``nodeproc`` (pytest puts tests/ on sys.path for conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Fast gossip timers so that joins, suspicion and death take a second or two instead of LAN defaults' several.
FAST = "probe_interval=0.2,probe_timeout=0.1,gossip_interval=0.05,push_pull_interval=2,leave_propagate_delay=0.2"


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
