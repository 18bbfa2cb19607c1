"""WorkerProcess start-up faults: a worker that connects and then says nothing."""

import asyncio
import gc
from pathlib import Path

import pytest

from carml_mesh.errors import WorkerUnavailable
from carml_mesh.exec.launch import Launcher
from carml_mesh.exec.worker_process import WorkerProcess


class SilentWorker(Launcher):
    """Fault injection: connects to the node's socket like a worker, then never sends its hello."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.exited: asyncio.Future[int] | None = None

    @property
    def ident(self) -> str | None:
        return "silent"

    async def launch(self, socket_path: Path, args: list[str]) -> None:
        self.exited = asyncio.get_running_loop().create_future()
        _, self.writer = await asyncio.open_unix_connection(str(socket_path))

    async def wait(self) -> int:
        assert self.exited is not None
        return await self.exited

    async def stop(self, timeout: float) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
        if self.exited is not None and not self.exited.done():
            self.exited.set_result(0)


async def _accepted_sockets_are_closed(tmp_path: Path, give_up) -> None:
    launcher = SilentWorker()
    worker = WorkerProcess("onnxruntime", "cpu", tmp_path / "w.sock", launcher, start_timeout=0.3)
    await give_up(worker)
    assert not worker.alive
    assert not (tmp_path / "w.sock").exists()
    # the node's end of the accepted connection must be closed now, not left to the garbage collector (which
    # would raise ResourceWarning: an error under this suite's filterwarnings)
    gc.collect()


async def test_a_worker_that_never_says_hello_times_out_and_leaks_nothing(tmp_path: Path) -> None:
    async def give_up(worker: WorkerProcess) -> None:
        with pytest.raises(WorkerUnavailable, match="did not start within"):
            await worker.start()

    await _accepted_sockets_are_closed(tmp_path, give_up)


async def test_a_start_cancelled_after_the_connection_leaks_nothing(tmp_path: Path) -> None:
    async def give_up(worker: WorkerProcess) -> None:
        task = asyncio.create_task(worker.start())
        for _ in range(200):  # until the silent worker has connected
            await asyncio.sleep(0.005)
            if worker.launcher.writer is not None:  # type: ignore[attr-defined]
                break
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await _accepted_sockets_are_closed(tmp_path, give_up)


async def test_a_close_cancelled_while_the_worker_stops_still_closes_the_socket(tmp_path: Path) -> None:
    """A node's bounded shutdown may cancel a worker's close half-way: its connection must be closed all the same."""
    import os
    import signal

    worker = WorkerProcess("onnxruntime", "cpu", tmp_path / "w.sock", threads=1)
    await worker.start()
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a worker that cannot answer the shutdown frame: close() has to wait for it
    try:
        closing = asyncio.create_task(worker.aclose(timeout=30))
        await asyncio.sleep(0.2)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await asyncio.sleep(0)  # the transport's connection_lost runs on the next loop pass
        assert not worker.alive
        assert not (tmp_path / "w.sock").exists()
        gc.collect()  # an open socket left to the collector would be a ResourceWarning: an error in this suite
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
        await worker.aclose(timeout=5)  # reaps the killed process
