"""One worker seen from the node: start, request/reply over a Unix socket, crash detection, close.

The worker may be a subprocess or a container (see launch.py); it connects to a socket the node listens on, so the
same readiness signal (its hello frame) and the same crash detection (socket closed, process or container exited)
serve both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import msgpack

from ..errors import WorkerUnavailable
from .base import error_from_worker
from .launch import Launcher, SubprocessLauncher
from .worker import protocol

log = logging.getLogger("carml.exec")

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 3.0
# Large byte strings in a frame (a tensor's data, an encoded image) are written to the socket from where they are,
# after a msgpack bin header of their own, instead of being copied into one packed buffer first; and the socket's
# send buffer is raised so that such a frame (efficientnet's 602 KB tensor) leaves in one send, not in 200 KB pieces
# that each wait for the worker to read and the loop to come round. The bytes on the wire are those of
# protocol.pack: the worker sees no difference.
LARGE_FRAME = 64 << 10
SEND_BUFFER = 4 << 20
_BIN32 = struct.Struct(">BI")


def write_frame(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    """``protocol.pack(message)`` onto ``writer``, byte for byte; large byte strings are not copied on the way."""
    if not _has_large(message):
        writer.write(protocol.pack(message))  # small frames are latency-bound: one pack, one write
        return
    parts: list[bytes | memoryview] = []
    small = bytearray()
    packer = msgpack.Packer(use_bin_type=True)

    def emit(obj: Any) -> None:
        if isinstance(obj, dict):
            small.extend(packer.pack_map_header(len(obj)))
            for key, value in obj.items():
                small.extend(packer.pack(key))
                emit(value)
        elif isinstance(obj, list | tuple):
            small.extend(packer.pack_array_header(len(obj)))
            for value in obj:
                emit(value)
        elif isinstance(obj, bytes | memoryview | protocol.Chunks) and _size(obj) >= LARGE_FRAME:
            small.extend(_BIN32.pack(0xC6, _size(obj)))  # bin 32, as msgpack writes any bin of 64 KiB or more
            parts.append(bytes(small))
            small.clear()
            if isinstance(obj, protocol.Chunks):
                parts.extend(obj.parts)  # the batcher's merged tensor: its requests' bytes, not joined
            else:
                parts.append(obj)  # a memoryview: a request's tensor, not copied
        elif isinstance(obj, protocol.Chunks):
            small.extend(packer.pack(obj.join()))
        else:
            small.extend(packer.pack(obj))

    emit(message)
    parts.append(bytes(small))
    length = sum(_size(p) for p in parts)
    if length > protocol.MAX_FRAME:
        raise protocol.ProtocolError(f"frame of {length} bytes exceeds {protocol.MAX_FRAME}")
    parts[0] = protocol.HEADER.pack(length) + parts[0]
    writer.writelines([p for p in parts if _size(p)])  # one vectored send where the loop can (uvloop)


def _size(data: bytes | memoryview | protocol.Chunks) -> int:
    return data.nbytes if isinstance(data, memoryview | protocol.Chunks) else len(data)


def _has_large(message: dict[str, Any]) -> bool:
    """Whether an infer message carries a tensor or image worth writing without a copy."""
    tensors = message.get("tensors")
    if isinstance(tensors, dict):
        for tensor in tensors.values():
            data = tensor.get("data") if isinstance(tensor, dict) else None
            if isinstance(data, bytes | memoryview | protocol.Chunks) and _size(data) >= LARGE_FRAME:
                return True
    images = message.get("images")
    return isinstance(images, list) and any(isinstance(i, bytes) and len(i) >= LARGE_FRAME for i in images)


class OneConnection:
    """A Unix socket that takes exactly one connection, the worker's: listen, accept once, close.

    Not asyncio.start_unix_server: its server accepts in the selector's callback and hands the socket to a task of
    its own, so a worker that connected in a loop's last pass (a node closed while a worker was starting) left an
    accepted socket that nothing owned; it was garbage-collected unclosed when the loop closed (the suite's
    intermittent ResourceWarning, reproduced in tests/exec/test_worker_process.py). Here the accepted socket is in
    ``accepted`` the moment it exists, and ``close()`` closes it unless ``take()`` handed it on.
    """

    def __init__(self, path: Path, mode: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.setblocking(False)
            self._listener.bind(str(path))
            os.chmod(path, mode)
            self._listener.listen(1)
        except BaseException:
            self._listener.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._fd = self._listener.fileno()
        self.accepted: asyncio.Future[socket.socket] = self._loop.create_future()
        self._taken = False
        self._loop.add_reader(self._fd, self._ready)

    def _ready(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._stop_listening()
            if not self.accepted.done():
                self.accepted.set_exception(exc)
            return
        self._stop_listening()  # one connection is all we take: nothing else can reach this socket now
        conn.setblocking(False)
        if self.accepted.done():  # cancelled meanwhile
            conn.close()
        else:
            self.accepted.set_result(conn)

    def _stop_listening(self) -> None:
        if self._listener is not None:
            self._loop.remove_reader(self._fd)  # before close: the fd number may be reused at once
            self._listener.close()
            self._listener = None

    def take(self) -> socket.socket:
        """The accepted socket, now the caller's to close."""
        try:
            conn = self.accepted.result()
        except OSError as exc:
            raise WorkerUnavailable(f"cannot accept the worker's connection: {exc}") from exc
        self._taken = True
        return conn

    def close(self) -> None:
        """Stop listening; close an accepted socket nobody took. Safe twice."""
        self._stop_listening()
        if not self.accepted.done():
            self.accepted.cancel()
        elif not self.accepted.cancelled() and self.accepted.exception() is None and not self._taken:
            self.accepted.result().close()


def raise_send_buffer(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # capped by net.core.wmem_max; the default is fine too, only slower
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


class WorkerProcess:
    """Requests are multiplexed by id, so many may be in flight; a crash fails each of them with 503."""

    def __init__(
        self,
        framework: str,
        device: str,
        socket_path: Path,
        launcher: Launcher | None = None,
        *,
        connect_path: str | None = None,
        threads: int = 0,
        pool: int = 2,
        max_pixels: int = 40_000_000,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.framework, self.device = framework, device
        self.socket_path = socket_path
        self.launcher = launcher or SubprocessLauncher()
        self._connect_path = connect_path  # the socket as the worker sees it (inside a container: a bind mount)
        self._args = [
            "--framework",
            framework,
            "--device",
            device,
            "--threads",
            str(threads),
            "--pool",
            str(pool),
            "--max-pixels",
            str(max_pixels),
        ]
        self._start_timeout = start_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._socket: OneConnection | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.hello: dict[str, Any] = {}
        self.loaded: set[str] = set()  # model keys this process has loaded
        self.died = asyncio.Event()
        self.exit_reason = ""
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self.launcher.pid if isinstance(self.launcher, SubprocessLauncher) else None

    @property
    def ident(self) -> str | None:
        return self.launcher.ident

    @property
    def alive(self) -> bool:
        return self._writer is not None and not self.died.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._socket = one = OneConnection(self.socket_path, self.launcher.socket_mode)
        exited: asyncio.Future[int] | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            await self.launcher.launch(Path(self._connect_path or self.socket_path), self._args)
            exited = asyncio.ensure_future(self.launcher.wait())
            # Readiness is the worker's hello on the socket, raced against its exit: never a sleep.
            async with asyncio.timeout(self._start_timeout):
                racing: set[asyncio.Future[Any]] = {one.accepted, exited}
                done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
                if one.accepted not in done:
                    raise WorkerUnavailable(
                        f"{self.framework} worker exited with status {exited.result()} before it was ready "
                        f"(is {self.framework} installed?)"
                    )
                conn = one.take()
                try:
                    reader, writer = await asyncio.open_unix_connection(sock=conn)
                except BaseException:
                    conn.close()
                    raise
                header = await reader.readexactly(protocol.HEADER.size)
                self.hello = protocol.unpack(await reader.readexactly(protocol.frame_length(header)))
        except TimeoutError:
            if writer is not None:
                writer.transport.abort()
            await self.aclose()
            raise WorkerUnavailable(
                f"{self.framework} worker did not start within {self._start_timeout:.0f} s"
            ) from None
        except BaseException:  # cancelled or failed mid-start: nothing of it may outlive this call
            if writer is not None:
                writer.transport.abort()
            if exited is not None:
                exited.cancel()
            await self.aclose()
            raise
        raise_send_buffer(writer)
        self._writer = writer
        self._spawn(self._read_replies(reader))
        self._spawn(self._watch_exit(exited))
        log.info("%s/%s worker %s ready", self.framework, self.device, self.ident)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def request(self, message: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        if not self.alive or self._writer is None:
            raise WorkerUnavailable(f"{self.framework} worker is not running: {self.exit_reason or 'not started'}")
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            write_frame(self._writer, {**message, "id": rid})
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise WorkerUnavailable(f"{self.framework} worker did not answer within {timeout:.1f} s") from None
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerUnavailable(f"{self.framework} worker connection lost: {exc}") from exc
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise error_from_worker(reply.get("error"))
        return reply

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(protocol.HEADER.size)
                reply = protocol.unpack(await reader.readexactly(protocol.frame_length(header)))
                future = self._pending.get(reply.get("id"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError):
            self._mark_dead("connection closed")
        except protocol.ProtocolError as exc:
            self._mark_dead(f"protocol error: {exc}")
            self._spawn(self.launcher.stop(0))

    async def _watch_exit(self, exited: asyncio.Future[int]) -> None:
        code = await exited
        self._mark_dead(f"exited with status {code}")

    def _mark_dead(self, reason: str) -> None:
        if self.died.is_set():
            return
        self.exit_reason = reason
        self.died.set()
        if not self._closing:
            log.warning("%s/%s worker %s died: %s", self.framework, self.device, self.ident, reason)
        error = WorkerUnavailable(f"{self.framework} worker died ({reason}); retry shortly, it is being restarted")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def aclose(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Ask the worker to stop, kill it if it does not within ``timeout``; safe to call twice."""
        self._closing = True
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._writer.write(protocol.pack({"op": "shutdown"}))
            self._writer.close()
        try:
            await self.launcher.stop(timeout)
        except Exception as exc:  # an engine error while stopping must not stop the node's shutdown
            log.warning("%s worker %s: stopping it failed: %s", self.framework, self.ident, exc)
        finally:
            # Also when this close is cancelled (a node's bounded shutdown ran out): the worker is stopped or being
            # killed, so what close() has not flushed yet is for nobody, and the socket must not outlive us.
            if self._writer is not None:
                self._writer.transport.abort()
            self._mark_dead("closed")
            for task in list(self._tasks):
                task.cancel()
            if self._socket is not None:
                self._socket.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        await asyncio.gather(*self._tasks, return_exceptions=True)
