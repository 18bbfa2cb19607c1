"""Part C of scripts/bench/gossip.py: real carml-node processes on a LAN of network namespaces, with packet loss.

N = 8 hosts of tests/netns.py's throwaway LAN (a bridge, no uplink), one `python -m carml_mesh.node --lazy
--executor local` per host with no manifests, LAN gossip defaults, no mDNS (every node joins through h0, so the
start does not depend on multicast), logs at INFO (the gossip decisions: failed probes, suspicions, refutations,
deaths). One run:

1. start all nodes; wait until every node's /api/cluster shows all N ALIVE;
2. packet loss on (netns.packet_loss: iptables `statistic` drops on eth0, UDP and TCP alike, INPUT of every
   namespace unless --netns-chains says INPUT,OUTPUT) for --seconds;
3. false deaths: the DEAD marks about members that are up, from the nodes' own counters (/api/cluster gossip
   statistics, deaths_declared, after minus before) and from their logged events (which also say who and when);
4. still under the same loss, SIGKILL one node (a crash, no leave); kill -> agree is the time until the last
   survivor logged it DEAD (log timestamps, milliseconds), at most 60 s;
5. everything torn down (lan() kills what is left and removes the namespaces).

Runs at 30 % loss: --netns-runs (default 10); at the other losses: --netns-low-runs (default 3). Logs of runs
with a false death are kept under --netns-logs when given.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import netns  # noqa: E402  (tests/netns.py: the namespace LAN the tests use too)

N = 8
HTTP_PORT = 7450
GOSSIP_PORT = 7946
START_TIMEOUT_S = 180.0  # 8 interpreters importing the node at once on 2 cores
CONVERGE_TIMEOUT_S = 60.0
AGREE_TIMEOUT_S = 60.0
CLUSTER_Q = (
    "import json,sys,urllib.request;"
    "print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1] + '/api/cluster', timeout=10))))"
)
EVENT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) carml\.mesh INFO member (\w+): (\w+)$")
NODE_ID = re.compile(r"^carml-node \S+ \((\w+)\) on http", re.MULTILINE)


# Every node's output arrives through its tee thread, which notifies this: readiness and gossip events are waited
# for as they are printed, never polled for.
OUTPUT = threading.Condition()


@dataclass
class RealNode:
    host: netns.Host
    proc: subprocess.Popen[bytes]
    log: Path
    id: str = ""
    ready: bool = False  # it printed its "ready:" line
    ended: bool = False  # its output ended: the process is gone or going
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (unix time, member id, kind), as logged

    def tee(self) -> None:
        """The node's output into its log file (kept for runs with deaths), and its readiness and events noted."""
        assert self.proc.stdout is not None
        with self.log.open("wb") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                out.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                with OUTPUT:
                    if m := NODE_ID.match(line):
                        self.id = m.group(1)
                    elif line.startswith("ready:"):
                        self.ready = True
                    elif m := EVENT.match(line):
                        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                        self.marks.append((t, m.group(2), m.group(3)))
                    else:
                        continue
                    OUTPUT.notify_all()
        with OUTPUT:
            self.ended = True
            OUTPUT.notify_all()

    def events(self) -> list[tuple[float, str, str]]:
        with OUTPUT:
            return list(self.marks)

    def cluster(self) -> dict[str, Any]:
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.host.ns,
                sys.executable,
                "-c",
                CLUSTER_Q,
                f"http://{self.host.ip}:{HTTP_PORT}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc


def wait_output(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``predicate`` (of what the nodes printed) holds; it is checked each time a node prints a line that
    matters."""
    with OUTPUT:
        if not OUTPUT.wait_for(predicate, timeout):
            raise SystemExit(f"netns: {what} not reached in {timeout:g} s")


def poll(predicate: Callable[[], bool], timeout: float, what: str, step: float) -> None:
    """Until ``predicate`` holds, asked every ``step`` s: for state that only the nodes' HTTP views tell (each
    check is 8 requests into 8 namespaces), where no event says when it changed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"netns: {what} not reached in {timeout:g} s")
        time.sleep(step)


def exited_within(nodes: Sequence[RealNode], seconds: float) -> list[RealNode]:
    """Block for ``seconds`` or until a node's process exits, whichever comes first (pidfds: woken by the exit
    itself); the nodes that exited."""
    fds = [os.pidfd_open(n.proc.pid) for n in nodes]
    try:
        select.select(fds, [], [], seconds)
    finally:
        for fd in fds:
            os.close(fd)
    return [n for n in nodes if n.proc.poll() is not None]


def start_nodes(hosts: Sequence[netns.Host], tmp: Path) -> list[RealNode]:
    nodes = []
    for i, host in enumerate(hosts):
        log = tmp / f"{host.name}.log"
        cmd = [sys.executable, "-m", "carml_mesh.node", "--host", host.ip, "--port", str(HTTP_PORT)]
        cmd += ["--gossip-port", str(GOSSIP_PORT), "--data-dir", str(tmp / host.name), "--manifests", str(tmp / "none")]
        cmd += ["--lazy", "--executor", "local", "--name", host.name, "--cluster", "bench", "--no-mdns"]
        cmd += ["--log-level", "INFO"]
        if i:
            cmd += ["--join", f"{hosts[0].ip}:{GOSSIP_PORT}"]
        node = RealNode(host, host.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO), log)
        threading.Thread(target=node.tee, name=f"tee-{host.name}", daemon=True).start()
        nodes.append(node)
    wait_output(lambda: all(n.ready or n.ended for n in nodes), START_TIMEOUT_S, "all nodes ready")
    for node in nodes:
        if not node.ready:
            code = node.proc.wait(timeout=10)
            raise SystemExit(f"netns: {node.host.name} exited with {code}: {node.log.read_text(errors='replace')}")
    return nodes


def all_alive(nodes: Sequence[RealNode]) -> bool:
    ids = {n.id for n in nodes}
    for node in nodes:
        view = {m["id"]: m["state"] for m in node.cluster()["members"]}
        if set(view) != ids or any(state != "alive" for state in view.values()):
            return False
    return True


def gossip_stats(nodes: Sequence[RealNode]) -> list[dict[str, Any]]:
    return [node.cluster()["gossip"] for node in nodes]


def run_once(loss: float, seconds: float, chains: Sequence[str], seed: int, keep: Path | None) -> dict[str, Any]:
    pick = random.Random(seed)
    with netns.lan(N, prefix="gb") as hosts, tempfile.TemporaryDirectory(prefix="gossip-netns-") as tmpdir:
        tmp = Path(tmpdir)
        nodes = start_nodes(hosts, tmp)
        poll(lambda: all_alive(nodes), CONVERGE_TIMEOUT_S, "all nodes ALIVE everywhere", step=1.0)
        before = gossip_stats(nodes)
        out: dict[str, Any] = {"loss": loss, "seed": seed}
        with netns.packet_loss(hosts, loss, chains=chains):
            t_loss = time.time()
            if dead := exited_within(nodes, seconds):  # the window is a duration: a node's exit ends it early
                raise SystemExit(f"netns: {', '.join(n.host.name for n in dead)} exited during the loss window")
            after = gossip_stats(nodes)
            t_window = time.time()
            marks = [(t, node.id, subject) for node in nodes for t, subject, kind in node.events() if kind == "dead"]
            window = [(t, o, s) for t, o, s in marks if t_loss <= t <= t_window]
            out["false_deaths"] = sum(
                a["deaths_declared"] - b["deaths_declared"] for a, b in zip(after, before, strict=True)
            )
            out["dead_events"] = len(window)
            out["victims"] = sorted({s for _, _, s in window})
            for key in ("suspicions", "refutations", "probe_failures", "tcp_fallbacks", "tcp_fallback_acks"):
                out[key] = sum(a[key] - b[key] for a, b in zip(after, before, strict=True))
            out["push_pull_failures"] = sum(a.get("push_pull_failures", 0) for a in after)
            out["awareness_max"] = max(a["awareness"] for a in after)

            victim = pick.choice(nodes)
            survivors = [n for n in nodes if n is not victim]
            t_kill = time.time()
            victim.proc.kill()
            victim.proc.wait(timeout=10)

            def agreed_at() -> dict[str, float]:  # with OUTPUT held: the tee threads append to marks
                seen = {}
                for node in survivors:
                    times = [t for t, s, kind in node.marks if s == victim.id and kind == "dead" and t >= t_kill]
                    if times:
                        seen[node.id] = min(times)
                return seen

            wait_output(lambda: len(agreed_at()) == len(survivors), AGREE_TIMEOUT_S, "all survivors agree")
            with OUTPUT:
                seen = agreed_at()
            out["agree_s"] = max(seen.values()) - t_kill
            out["first_dead_s"] = min(seen.values()) - t_kill
        if keep is not None and (out["false_deaths"] or out["dead_events"]):
            dest = keep / f"loss{int(loss * 100)}-seed{seed}"
            dest.mkdir(parents=True, exist_ok=True)
            for node in nodes:
                shutil.copy(node.log, dest / f"{node.host.name}-{node.id}.log")
            out["logs"] = str(dest)
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
    return out


def part_c(
    losses: Sequence[float], runs: int, low_runs: int, seconds: float, chains: Sequence[str], keep: Path | None
) -> list[str]:
    if (why := netns.netns_unavailable()) is not None:
        return [f"\nC. real nodes in network namespaces: skipped ({why})"]
    results: dict[float, list[dict[str, Any]]] = {}
    for loss in losses:
        for seed in range(runs if loss >= 0.3 else low_runs):
            t0 = time.perf_counter()
            r = run_once(loss, seconds, chains, seed, keep)
            r["wall_s"] = time.perf_counter() - t0
            results.setdefault(loss, []).append(r)
            print(f"  netns loss {loss:.0%} run {seed}: {json.dumps(r)}", flush=True)
    where = " and ".join(chains)
    lines = [
        f"\nC. real carml-node processes, N = {N}, network namespaces; loss of all packets (UDP and TCP) in {where}"
        f" of every namespace, {seconds:g} s window, LAN defaults"
    ]
    lines.append(
        f"{'loss':>5}{'runs':>6}{'false deaths per run':>24}{'runs with 0':>13}{'susp/run':>10}{'refut/run':>11}"
        f"{'agree mean':>12}{'max':>7}{'1st dead':>10}  target"
    )
    for loss, rows in results.items():
        per_run = ",".join(str(r["false_deaths"]) for r in rows)
        agree = [r["agree_s"] for r in rows]
        target = "0 in 10 runs at 30 %" if loss >= 0.3 else ""
        if loss == 0:
            target = "agree <= 6 s (memberlist 6.0 s)"
        lines.append(
            f"{loss:>5.0%}{len(rows):>6}{per_run:>24}{sum(r['false_deaths'] == 0 for r in rows):>13}"
            f"{statistics.fmean(r['suspicions'] for r in rows):>10.1f}"
            f"{statistics.fmean(r['refutations'] for r in rows):>11.1f}"
            f"{statistics.fmean(agree):>11.2f}s{max(agree):>6.2f}s"
            f"{statistics.fmean(r['first_dead_s'] for r in rows):>9.2f}s  {target}"
        )
    lines.append("  (false deaths: deaths_declared summed over the nodes; kill -> agree measured under the same loss)")
    return lines
