"""WorkerProcess start-up faults: a worker that connects and then says nothing."""

import asyncio
import gc
import socket
import threading
import warnings
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


class ConnectingWorker(Launcher):
    """Fault injection: connects to the node's socket at once (the connection waits in the kernel's backlog) and
    never sends its hello; it closes its end when stopped."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.connected = threading.Event()

    @property
    def ident(self) -> str | None:
        return "connecting"

    async def launch(self, socket_path: Path, args: list[str]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(socket_path))
        self.connected.set()

    async def wait(self) -> int:
        await asyncio.Event().wait()  # runs until cancelled
        return 0

    async def stop(self, timeout: float) -> None:
        if self.sock is not None:
            self.sock.close()


def test_a_loop_closed_while_a_worker_connects_leaves_no_socket(tmp_path: Path) -> None:
    """The suite's old intermittent leak: a node closed (here: its loop) in the very pass in which its starting
    worker's connection was accepted. asyncio's Unix server then held the accepted socket in a task that never ran,
    and the socket was garbage-collected unclosed. The worker's connection is accepted only into a future the
    worker owns now, so closing the loop right then closes it."""
    for passes in range(4):  # the loop stops 0..3 passes after the worker connected: each way of being in between
        launcher = ConnectingWorker()
        worker = WorkerProcess("onnxruntime", "cpu", tmp_path / f"w{passes}.sock", launcher, start_timeout=30)

        async def main(worker: WorkerProcess = worker, launcher: ConnectingWorker = launcher, n: int = passes) -> None:
            asyncio.get_running_loop().create_task(worker.start())  # still starting when the loop closes
            while not launcher.connected.is_set():
                await asyncio.sleep(0)
            for _ in range(n):
                await asyncio.sleep(0)

        def run(main=main) -> None:  # type: ignore[no-untyped-def]  # in a thread: this thread's loop stays as it is
            with asyncio.Runner() as runner:  # its close cancels the start, as pytest-asyncio's does at the end
                runner.run(main())

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            thread = threading.Thread(target=run)
            thread.start()
            thread.join(timeout=30)
            gc.collect()
        leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaks == [], (passes, leaks)
        assert not (tmp_path / f"w{passes}.sock").exists()
