"""The thinnest server one could write, a baseline: aiohttp, one onnxruntime session run in a thread, no batching.

    .venv/bin/python scripts/bench/thin_server.py MODEL.onnx PORT [--threads 1]

POST / with a float32 (3, 224, 224) tensor's raw bytes as the body; answers the top 5 (index, probability) as JSON.
Prints "ready" once it listens.
"""

import asyncio
import sys

import numpy as np
import onnxruntime as ort
from aiohttp import web


def main() -> None:
    model, port = sys.argv[1], int(sys.argv[2])
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])

    async def infer(request: web.Request) -> web.Response:
        x = np.frombuffer(await request.read(), dtype=np.float32).reshape(1, 3, 224, 224)
        (logits,) = await asyncio.to_thread(session.run, None, {"input": x})
        z = np.exp(logits[0] - logits[0].max())
        p = z / z.sum()
        top = np.argsort(-p)[:5]
        return web.json_response({"predictions": [[int(i), float(p[i])] for i in top]})

    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/", infer)
    asyncio.run(serve(app, port))


async def serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)  # the driver's readiness signal: the site listens now
    try:
        await asyncio.Event().wait()  # until the driver terminates us
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
