"""The worker process: connects to the node's Unix socket, says hello, then serves frames until told to stop.

Threads take turns as leader (leader/follower): the leader reads one frame, hands the socket to the next thread and
runs the request itself. A request thus crosses no thread hand-off inside the worker, which on a 2-core VM costs
more than a small model's whole inference; while one thread computes, another can read and decode the next image.
Frameworks release the GIL while they compute.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any

from . import protocol
from .errors import WorkerError
from .service import WorkerService

log = logging.getLogger("carml.worker")
LARGE_FRAME = 64 << 10
SEND_BUFFER = 4 << 20  # large replies (raw output tensors) leave in one send; capped by net.core.wmem_max


class Connection:
    """The socket to the node, shared by the worker threads: one reader at a time, one writer at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.read_lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.closed = threading.Event()

    def _read_exactly(self, n: int) -> bytes | bytearray | None:
        if n >= LARGE_FRAME:  # straight into one buffer: no chunks to join (efficientnet's 602 KB tensor)
            buffer = bytearray(n)
            view, got = memoryview(buffer), 0
            while got < n:  # MSG_WAITALL: the kernel fills it as the bytes arrive, one call in the usual case
                count = self.sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)
                if not count:
                    return None
                got += count
            return buffer
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read(self) -> dict[str, Any] | None:
        """The next message, or None once the node has gone or said shutdown."""
        with self.read_lock:
            if self.closed.is_set():
                return None
            try:
                header = self._read_exactly(protocol.HEADER.size)
                body = self._read_exactly(protocol.frame_length(header)) if header else None
            except (OSError, protocol.ProtocolError):
                body = None
            message = protocol.unpack(body) if body is not None else None
            if message is None or message.get("op") == "shutdown":
                self.closed.set()
                return None
            return message

    def write(self, message: dict[str, Any]) -> None:
        frame = protocol.pack(message)
        with self.write_lock:
            try:
                self.sock.sendall(frame)
            except OSError:
                self.closed.set()


def handle(service: WorkerService, msg: dict[str, Any], received: float) -> dict[str, Any]:
    reply: dict[str, Any] = {"id": msg.get("id")}
    try:
        op = msg.get("op")
        if op == "infer":
            reply.update(service.infer(msg, received))
        elif op == "load":
            reply.update(service.load(msg))
        elif op == "unload":
            reply.update(service.unload(msg))
        elif op == "stats":
            reply.update(service.stats())
        elif op != "ping":
            raise WorkerError("bad_input", f"unknown op {op!r}")
        reply["ok"] = True
    except WorkerError as exc:
        reply.update(ok=False, error=exc.to_wire())
    except Exception as exc:  # a bug or a framework failure must answer, never kill the worker
        log.exception("request %s failed", msg.get("id"))
        reply.update(ok=False, error={"kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
    return reply


def serve_thread(service: WorkerService, conn: Connection) -> None:
    while (msg := conn.read()) is not None:
        received = time.perf_counter()
        conn.write(handle(service, msg, received))


def serve(service: WorkerService, socket_path: str, pool_size: int) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    conn = Connection(sock)
    conn.write(service.hello())
    threads = [
        threading.Thread(target=serve_thread, args=(service, conn), name=f"serve-{n}", daemon=True)
        for n in range(max(1, pool_size))
    ]
    for t in threads:
        t.start()
    conn.closed.wait()
    # Threads still computing finish their request; their replies go nowhere once the node has left.
    for t in threads:
        t.join(timeout=2.0)
    sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="carml-worker", description=__doc__)
    parser.add_argument("--connect", required=True, help="the node's Unix socket")
    parser.add_argument("--framework", required=True, choices=("onnxruntime", "pytorch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="framework intra-op threads (0: framework default)")
    parser.add_argument("--pool", type=int, default=2, help="requests handled at once")
    parser.add_argument("--max-pixels", type=int, default=40_000_000)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s worker[{args.framework}/{args.device}] %(levelname)s %(message)s",
    )
    # The node owns our lifecycle: it closes the socket or sends shutdown. A Ctrl-C in the node's terminal reaches
    # the whole process group, so ignore SIGINT and let the node shut us down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    service = WorkerService(args.framework, args.device, args.threads, args.max_pixels, pool=args.pool)
    serve(service, args.connect, args.pool)
    return 0
