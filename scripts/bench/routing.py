"""What one mesh hop costs: digits-cnn served locally by node B vs through node A, which forwards to B.

    .venv/bin/python scripts/bench/routing.py [--iterations N] [--clients C]

Two real carml-node processes on 127.0.0.1 joined by gossip: B serves digits-cnn (onnxruntime); A serves nothing,
so every request to A is routed to B over a pooled keep-alive connection (msgpack, raw tensor bytes). In one run:
  local   client -> B                   (the baseline)
  1 hop   client -> A -> B
p50/p99 latency with one client; requests/s with C concurrent clients (threads, one keep-alive connection each);
CPU time per request of all carml processes (nodes and workers) from /proc. Target: one hop adds <= 1 ms p50
(Ray Serve documents 1-2 ms for its proxy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Client, measure, pct, running_node

TICK = os.sysconf("SC_CLK_TCK")
FAST = "probe_interval=0.2,probe_timeout=0.1,gossip_interval=0.05,push_pull_interval=2"


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def pids_of(url: str) -> list[int]:
    info = get(url + "/api/node")
    return [info["pid"]] + [w["pid"] for w in info["workers"] if w.get("pid")]


def throughput(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        c = Client(url)
        while time.monotonic() < stop:
            status, raw, _ = c.post("/api/predict", body, headers)
            assert status == 200, raw
            done[i] += 1
        c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each throughput run")
    args = parser.parse_args()
    x = np.load(REPO / "build" / "models" / "digits-cnn" / "heldout.npz")["X"][0].astype(np.float32)
    body = msgpack.packb(
        {
            "model": "digits-cnn",
            "framework": "onnxruntime",
            "inputs": [{"tensor": {"dtype": "float32", "shape": [1, 8, 8], "data": x.tobytes()}}],
        }
    )
    headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    with tempfile.TemporaryDirectory() as tmp:
        only_digits = Path(tmp) / "b-manifests"
        only_digits.mkdir()
        text = (REPO / "manifests" / "digits-cnn.yml").read_text()
        (only_digits / "digits-cnn.yml").write_text(text.replace("../build/models", str(REPO / "build" / "models")))
        empty = Path(tmp) / "a-manifests"
        empty.mkdir()
        with running_node(Path(tmp) / "b", "--name", "b", "--gossip-tuning", FAST, manifests=only_digits) as b_url:
            b_gossip = next(m for m in get(b_url + "/api/cluster")["members"] if m["self"])["address"]
            with running_node(
                Path(tmp) / "a", "--name", "a", "--gossip-tuning", FAST, "--join", b_gossip, manifests=empty
            ) as a_url:
                deadline = time.monotonic() + 20
                while not any(m["card"] for m in get(a_url + "/api/cluster")["members"] if not m["self"]):
                    if time.monotonic() > deadline:
                        raise SystemExit("A never learned B's card")
                    time.sleep(0.1)
                rows = []
                pids = pids_of(a_url) + pids_of(b_url)
                for label, url in (("local", b_url), ("1 hop", a_url)):
                    client = Client(url)
                    status, raw, _ = client.post("/api/predict", body, headers)
                    assert status == 200, raw
                    served_by = msgpack.unpackb(raw)["node"]["name"]
                    lat = measure(
                        lambda c=client: c.post("/api/predict", body, headers), warmup=300, iterations=args.iterations
                    )
                    client.close()
                    cpu0 = cpu_seconds(pids)
                    rps = throughput(url, body, headers, args.clients, args.seconds)
                    cpu = cpu_seconds(pids) - cpu0
                    rows.append((label, served_by, lat, rps, cpu / (rps * args.seconds)))
    local = rows[0][2]
    print(f"\n{'path':<8}{'served by':<11}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'req/s':>9}{'CPU ms/req':>12}")
    for label, served, lat, rps, cpu_per in rows:
        added = pct(lat, 50) - pct(local, 50)
        print(
            f"{label:<8}{served:<11}{pct(lat, 50):>9.3f}{pct(lat, 99):>9.3f}{added:>+11.3f}{rps:>9.0f}"
            f"{cpu_per * 1e3:>12.3f}"
        )
    print(
        f"\ndigits-cnn, onnxruntime, batch 1; {args.iterations} sequential requests per path; "
        f"{args.clients} clients x {args.seconds:.0f} s for req/s; CPU of both nodes and their workers"
    )


if __name__ == "__main__":
    main()
