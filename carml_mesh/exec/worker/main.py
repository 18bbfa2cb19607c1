"""The worker process: connects to the node's Unix socket, says hello, then serves frames until told to stop.

Requests are handled on a small thread pool so that image decoding of one request overlaps the framework call of
another; frameworks release the GIL while they compute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import protocol
from .errors import WorkerError
from .service import WorkerService

log = logging.getLogger("carml.worker")


async def serve(service: WorkerService, socket_path: str, pool_size: int) -> None:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(protocol.pack(service.hello()))
    await writer.drain()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    with ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="infer") as pool:

        async def handle(msg: dict[str, Any], received: float) -> None:
            reply: dict[str, Any] = {"id": msg.get("id")}
            try:
                op = msg.get("op")
                if op == "infer":
                    reply.update(await loop.run_in_executor(pool, service.infer, msg, received))
                elif op == "load":
                    reply.update(await loop.run_in_executor(pool, service.load, msg))
                elif op == "unload":
                    reply.update(service.unload(msg))
                elif op == "stats":
                    reply.update(service.stats())
                elif op == "ping":
                    pass
                else:
                    raise WorkerError("bad_input", f"unknown op {op!r}")
                reply["ok"] = True
            except WorkerError as exc:
                reply.update(ok=False, error=exc.to_wire())
            except Exception as exc:  # a bug or a framework failure must answer, never kill the worker
                log.exception("request %s failed", msg.get("id"))
                reply.update(ok=False, error={"kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
            writer.write(protocol.pack(reply))

        try:
            while True:
                try:
                    header = await reader.readexactly(protocol.HEADER.size)
                    body = await reader.readexactly(protocol.frame_length(header))
                except asyncio.IncompleteReadError:
                    return  # the node went away: nothing left to serve
                received = time.perf_counter()
                msg = protocol.unpack(body)
                if msg.get("op") == "shutdown":
                    return
                task = asyncio.create_task(handle(msg, received))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


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
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s worker[{args.framework}/{args.device}] %(levelname)s %(message)s")
    # The node owns our lifecycle: it closes the socket or sends shutdown. A Ctrl-C in the node's terminal reaches
    # the whole process group, so ignore SIGINT and let the node shut us down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    service = WorkerService(args.framework, args.device, args.threads, args.max_pixels)
    try:
        import uvloop

        uvloop.run(serve(service, args.connect, args.pool))
    except ImportError:
        asyncio.run(serve(service, args.connect, args.pool))
    return 0
