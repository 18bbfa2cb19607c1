"""What the node adds to one inference, measured against a direct in-process onnxruntime call in the same run.

    .venv/bin/python scripts/bench/overhead.py [--iterations N]

For digits-cnn and efficientnet-lite0, batch 1, one client, warm: p50/p99 of
  direct   onnxruntime.InferenceSession.run in this process (the worker's session options),
  msgpack  POST /api/predict, msgpack both ways, tensor as raw bytes, top-5 answer,
  kserve   POST /v2/models/{m}/infer with the binary tensor extension (what tritonclient sends), raw logits back,
through a real carml-node process on 127.0.0.1 with real worker processes. Prints the added latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import msgpack
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Client, measure, pct, running_node

MODELS = REPO / "build" / "models"


def direct_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1  # as the worker sets it; intra-op threads left at the default
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def kserve_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + x.tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=0, help="per figure (default: 3000 digits, 300 effnet)")
    args = parser.parse_args()
    digits = np.load(MODELS / "digits-cnn" / "heldout.npz")["X"][:1].astype(np.float32)
    rng = np.random.default_rng(0)
    effnet = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    cases = [("digits-cnn", digits, args.iterations or 3000), ("efficientnet-lite0", effnet, args.iterations or 300)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp)) as url:
        client = Client(url)
        for name, x, n in cases:
            session = direct_session(MODELS / name / "model.onnx")
            direct = measure(lambda s=session, x=x: s.run(["logits"], {"input": x}), warmup=n // 10, iterations=n)
            body = msgpack.packb(
                {
                    "model": name,
                    "framework": "onnxruntime",
                    "inputs": [{"tensor": {"dtype": "float32", "shape": list(x.shape[1:]), "data": x[0].tobytes()}}],
                }
            )
            headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
            node_side: list[float] = []

            def via_msgpack(
                body: bytes = body, headers: dict[str, str] = headers, node_side: list[float] = node_side
            ) -> None:
                status, raw, _ = client.post("/api/predict", body, headers)
                assert status == 200, raw
                node_side.append(msgpack.unpackb(raw)["timings_ms"]["node"])

            def via_kserve(x: np.ndarray = x, name: str = name) -> None:
                kbody, kheaders = kserve_body(x)
                status, raw, _ = client.post(f"/v2/models/{name}/infer", kbody, kheaders)
                assert status == 200, raw

            packed = measure(via_msgpack, warmup=n // 10, iterations=n)
            kserve = measure(via_kserve, warmup=n // 10, iterations=n)
            rows.append((name, direct, packed, kserve, np.asarray(node_side[-n:])))
        client.close()
    print(f"\n{'model':<20}{'path':<10}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}")
    for name, direct, packed, kserve, node_side in rows:
        print(f"{name:<20}{'direct':<10}{pct(direct, 50):>9.3f}{pct(direct, 99):>9.3f}")
        for label, ms in (("msgpack", packed), ("kserve", kserve)):
            print(
                f"{'':<20}{label:<10}{pct(ms, 50):>9.3f}{pct(ms, 99):>9.3f}"
                f"{pct(ms, 50) - pct(direct, 50):>+11.3f}{pct(ms, 99) - pct(direct, 99):>+11.3f}"
            )
        print(f"{'':<20}{'(node-side share of msgpack, p50: ' + format(pct(node_side, 50), '.3f') + ' ms)'}")
    print(f"\nonnxruntime {ort.__version__}, {len(rows[0][1])} / {len(rows[1][1])} iterations, batch 1, one client")


if __name__ == "__main__":
    main()
