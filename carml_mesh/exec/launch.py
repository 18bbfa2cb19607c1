"""How a worker comes to life and goes away. The socket protocol is the same whatever the launcher."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import sys
from pathlib import Path


class Launcher(abc.ABC):
    socket_mode = 0o600  # who may connect to the node's socket for this worker

    @property
    @abc.abstractmethod
    def ident(self) -> str | None:
        """A process id or a container id, for logs and statistics."""

    @abc.abstractmethod
    async def launch(self, socket_path: Path, args: list[str]) -> None:
        """Start the worker program with ``--connect`` pointing at ``socket_path`` and the given arguments."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """The worker's exit status, once it has exited."""

    @abc.abstractmethod
    async def stop(self, timeout: float) -> None:
        """After the shutdown frame: give the worker ``timeout`` seconds to exit, then kill it; clean up."""


class SubprocessLauncher(Launcher):
    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def ident(self) -> str | None:
        return str(self._proc.pid) if self._proc else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def launch(self, socket_path: Path, args: list[str]) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "carml_mesh.exec.worker",
            "--connect",
            str(socket_path),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
        )

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
