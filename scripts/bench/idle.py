"""What an idle node costs: RSS and CPU of the node process and of its worker processes, over a quiet window.

    .venv/bin/python scripts/bench/idle.py [--seconds 20]

Starts a real carml-node with the demo models preloaded (onnxruntime and pytorch workers), waits until it says it is
ready, then samples /proc for the window. Target (DESIGN.md): idle node <= 80 MB RSS, <= 0.5 % CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import running_node

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp)) as url:
        with urllib.request.urlopen(url + "/api/node") as resp:
            info = json.loads(resp.read())
        procs = {"node": info["pid"]} | {f"worker {w['framework']}": w["pid"] for w in info["workers"] if w["alive"]}
        before = {name: cpu_ticks(pid) for name, pid in procs.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)  # the measurement window itself: nothing is being waited for
        elapsed = time.monotonic() - t0
        print(f"{'process':<22}{'RSS MB':>9}{'CPU %':>8}   (idle {elapsed:.0f} s, {len(info['models'])} models loaded)")
        for name, pid in procs.items():
            cpu = (cpu_ticks(pid) - before[name]) / TICK / elapsed * 100
            print(f"{name:<22}{rss_mb(pid):>9.1f}{cpu:>8.2f}")


if __name__ == "__main__":
    main()
