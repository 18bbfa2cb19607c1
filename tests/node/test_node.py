"""The Node's lifecycle at its edges: a shutdown that runs out of time still releases the workers."""

import gc
import os
import signal
from dataclasses import replace
from pathlib import Path

from nodeproc import node_config

from carml_mesh.node.node import Node


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_shutdown_past_its_timeout_kills_the_workers_and_closes_their_sockets(tmp_path: Path) -> None:
    config = replace(node_config(tmp_path, "short"), preload=True, shutdown_timeout=1.5)
    node = Node(config)
    await node.__aenter__()
    await node.wait_ready()
    assert node.executor is not None
    pids = node.executor.worker_pids()
    assert pids, "the preloaded models run in worker processes"
    for pid in pids:  # workers that cannot answer the shutdown frame: their close outlasts the node's timeout
        os.kill(pid, signal.SIGSTOP)
    await node.aclose()
    assert not any(alive(pid) for pid in pids)  # killed, and reaped by the executor's second close
    assert node.executor.worker_pids() == []
    gc.collect()  # a worker socket left open would be a ResourceWarning here: an error in this suite
