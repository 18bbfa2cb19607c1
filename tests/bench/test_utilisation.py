"""Utilisation: a worker counted with its descendants, a snapshot over a window, a remote reading, Docker's pids."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from carml_mesh.bench.utilisation import (
    RemoteSampler,
    gpu_rows,
    matching,
    parent_pid,
    process_trees,
    snapshot,
    worker_processes,
)
from carml_mesh.exec.docker import host_pid

# a parent that starts a busy child and waits: like a container's init and the worker under it
PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


async def test_a_worker_counts_with_its_descendants() -> None:
    parent = await asyncio.create_subprocess_exec(sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE)
    assert parent.stdout is not None
    child = int((await parent.stdout.readline()).decode())
    try:
        trees = process_trees([parent.pid, 999_999_999])
        assert trees[parent.pid][0] == parent.pid and child in trees[parent.pid]
        assert trees[999_999_999] == []
        doc = await snapshot([{"framework": "onnxruntime", "device": "cpu", "pid": parent.pid}], 0.3)
        [worker] = doc["workers"]
        assert worker["processes"] == 2
        assert worker["cpu_percent"] > 0  # the parent sleeps: what is measured is its child's busy loop
        assert worker["rss_mb"] > 1
    finally:
        os.kill(child, 9)
        parent.kill()
        await parent.wait()
    gone = await snapshot([{"framework": "onnxruntime", "device": "cpu", "pid": parent.pid}], 0.02)
    assert gone["workers"][0]["cpu_percent"] is None and gone["workers"][0]["rss_mb"] is None


def test_parsing_and_filtering() -> None:
    assert parent_pid("4242 (python (worker) x) S 17 4242 4242 0 -1") == 17
    assert gpu_rows("0, 35, 1200, 81559\n1, [N/A], 3, 4\n2, 45, 100, 200\n") == [
        {"index": 0, "utilisation_percent": 35.0, "memory_used_mb": 1200.0, "memory_total_mb": 81559.0},
        {"index": 2, "utilisation_percent": 45.0, "memory_used_mb": 100.0, "memory_total_mb": 200.0},
    ]
    stats = {
        "workers": [
            {"framework": "onnxruntime", "device": "cpu", "pid": 10, "alive": True},
            {"framework": "pytorch", "device": "cpu", "pid": 11, "alive": True},
            {"framework": "pytorch", "device": "cuda:0", "pid": None, "alive": True},  # a container not seen here
            {"framework": "onnxruntime", "device": "cuda:0", "pid": 12, "alive": False},
        ]
    }
    workers = worker_processes(stats)
    assert [w["pid"] for w in workers] == [10, 11]
    assert [w["pid"] for w in matching(workers, "pytorch", None)] == [11]
    assert [w["pid"] for w in matching(workers, None, "cpu")] == [10, 11]


async def test_a_remote_reading_keeps_the_targets_workers() -> None:
    sampler = RemoteSampler(None, "http://unused", "pytorch", "cpu")  # type: ignore[arg-type]
    sampler.add(
        {
            "workers": [
                {"framework": "pytorch", "device": "cpu", "cpu_percent": 150.0, "rss_mb": 300.0},
                {"framework": "onnxruntime", "device": "cpu", "cpu_percent": 90.0, "rss_mb": 100.0},
                "junk",
            ],
            "gpus": [{"utilisation_percent": 20.0}, {"utilisation_percent": 40.0}],
        }
    )
    sampler.add({"workers": [{"framework": "pytorch", "device": "cpu", "cpu_percent": 50.0, "rss_mb": 310.0}]})
    assert sampler.summary() == {"cpu_percent": 100.0, "rss_mb": 310.0, "gpu_percent": 30.0}
    assert RemoteSampler(None, "", None, None).summary() == dict.fromkeys(  # type: ignore[arg-type]
        ("cpu_percent", "rss_mb", "gpu_percent")
    )


def test_a_container_pid_counts_only_when_this_proc_sees_that_container(tmp_path: Path) -> None:
    cid = "3f4e5d6c7b8a" + "0" * 52
    (tmp_path / "4100").mkdir()
    (tmp_path / "4100" / "cgroup").write_text(f"0::/system.slice/docker-{cid}.scope\n")
    (tmp_path / "4200").mkdir()
    (tmp_path / "4200" / "cgroup").write_text("0::/user.slice/user-1000.slice/session-2.scope\n")
    assert host_pid(4100, cid, tmp_path) == 4100
    assert host_pid(4200, cid, tmp_path) is None  # the engine's pid namespace is not ours: another process here
    assert host_pid(4300, cid, tmp_path) is None  # nothing with that pid here (a remote engine, a VM)
    assert host_pid(0, cid, tmp_path) is None  # the container is not running


def test_without_children_files_the_tree_comes_from_a_scan(tmp_path: Path) -> None:
    # a kernel without CONFIG_PROC_CHILDREN: no task/<tid>/children; the parents come from each stat instead
    for pid, ppid in ((100, 1), (101, 100), (102, 101), (103, 100), (200, 1)):
        (tmp_path / str(pid) / "task" / str(pid)).mkdir(parents=True)
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (p {pid}) S {ppid} 0 0 0 -1")
    trees = process_trees([100, 200, 300], tmp_path)
    assert trees[100][0] == 100 and sorted(trees[100]) == [100, 101, 102, 103]
    assert trees[200] == [200] and trees[300] == []
