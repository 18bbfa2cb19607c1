"""Real carml-node processes on three hosts of a bridged LAN (network namespaces): they find each other by mDNS
alone (no --join), form one mesh, keep another cluster out, and notice a node that leaves.

Runs as root (CI does); elsewhere it skips and says why.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import netns
import pytest

REPO = Path(__file__).resolve().parents[2]
FAST = "probe_interval=0.3,probe_timeout=0.15,gossip_interval=0.05,push_pull_interval=3,leave_propagate_delay=0.3"
CLUSTER_Q = (
    "import json,sys,urllib.request;"
    "print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1] + '/api/cluster', timeout=5))))"
)

pytestmark = pytest.mark.skipif(netns.netns_unavailable() is not None, reason=str(netns.netns_unavailable()))


def start(host: netns.Host, tmp: Path, name: str, cluster: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = host.run(
        [
            sys.executable,
            "-m",
            "carml_mesh.node",
            "--host",
            host.ip,
            "--port",
            "7450",
            "--gossip-port",
            "7946",
            "--data-dir",
            str(tmp / name),
            "--manifests",
            str(tmp / "none"),
            "--lazy",
            "--executor",
            "local",
            "--name",
            name,
            "--cluster",
            cluster,
            "--gossip-tuning",
            FAST,
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    node_id = ""
    for line in proc.stdout:
        if m := re.search(r"\((\w+)\) on http", line):
            node_id = m.group(1)
        if line.startswith("ready:"):
            return proc, node_id
    raise AssertionError(f"{name} exited with {proc.wait()} before it was ready")


def cluster_of(host: netns.Host) -> dict:
    out = subprocess.run(
        ["ip", "netns", "exec", host.ns, sys.executable, "-c", CLUSTER_Q, f"http://{host.ip}:7450"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def states(host: netns.Host) -> dict[str, str]:
    return {m["id"]: m["state"] for m in cluster_of(host)["members"]}


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.stdout is not None:
            p.stdout.close()


def test_mdns_discovery_forms_a_mesh_across_hosts(tmp_path) -> None:
    with netns.lan(3) as hosts:
        procs = []
        try:
            (pa, a), (pb, b), (pc, c) = (
                start(hosts[0], tmp_path, "a", "lab"),
                start(hosts[1], tmp_path, "b", "lab"),
                start(hosts[2], tmp_path, "c", "elsewhere"),
            )
            procs = [pa, pb, pc]
            wait_for(
                lambda: states(hosts[0]) == {a: "alive", b: "alive"} and states(hosts[1]) == {a: "alive", b: "alive"},
                "a and b to find each other by mDNS",
            )
            view = cluster_of(hosts[0])
            peer = next(m for m in view["members"] if m["id"] == b)
            assert peer["address"] == f"{hosts[1].ip}:7946" and peer["http"] == f"http://{hosts[1].ip}:7450"
            wait_for(
                lambda: next(m for m in cluster_of(hosts[0])["members"] if m["id"] == b)["card"] is not None,
                "a to fetch b's card",
            )
            assert view["discovery"]["ignored_cluster"] >= 1  # c announced itself, in another cluster
            assert set(states(hosts[2])) == {c}
            pb.terminate()
            assert pb.wait(timeout=5) == 0  # SIGTERM stops a node within 5 s, mDNS goodbye and gossip leave included
            wait_for(lambda: states(hosts[0])[b] == "left", "a to see b leave")
        finally:
            stop_all(procs)


def test_a_partitioned_node_finds_its_peer_again_by_what_mdns_found(tmp_path) -> None:
    """Two hosts, mDNS only. A partition long enough for each to declare the other dead leaves both alone, and mDNS
    has nothing new to announce afterwards (its records did not change). A node with no live peer retries the peers
    mDNS found on its join schedule (the join counters show it), so it does not depend on gossip's own reconnection
    to the dead, which stops once they are reaped; once the cut heals they are one mesh again."""
    retry = ("--join-retry-interval", "0.2", "--join-retry-max-interval", "1")
    with netns.lan(2) as hosts:
        procs = []
        try:
            (pa, a), (pb, b) = (start(h, tmp_path, n, "lab", *retry) for h, n in zip(hosts, "ab", strict=True))
            procs = [pa, pb]
            both = {a: "alive", b: "alive"}
            wait_for(lambda: states(hosts[0]) == both and states(hosts[1]) == both, "a and b to meet by mDNS")
            iptables = ["ip", "netns", "exec", hosts[1].ns, "iptables"]
            cut = ["INPUT", "-i", "eth0", "-j", "DROP"]  # b hears nothing from the LAN, a gets no answer
            subprocess.run([*iptables, "-I", *cut], check=True)
            try:
                wait_for(
                    lambda: states(hosts[0])[b] == "dead" and states(hosts[1])[a] == "dead", "both to declare death"
                )
                # alone, b retries what mDNS found (refused while the cut lasts): those retries, or gossip's own
                # reconnection to the dead, whichever comes first once it heals, bring the two together again
                wait_for(lambda: cluster_of(hosts[1])["join"]["total_attempts"] >= 1, "b to retry what mDNS found")
            finally:
                subprocess.run([*iptables, "-D", *cut], check=True)
            wait_for(lambda: states(hosts[0]) == both and states(hosts[1]) == both, "a and b to meet again", 30)
        finally:
            stop_all(procs)
