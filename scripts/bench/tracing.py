"""What tracing costs: digits-cnn p50 through one node at each trace level, in one run.

    .venv/bin/python scripts/bench/tracing.py [--iterations N]

One real carml-node (default level none), one client, msgpack /api/predict, batch 1; each level asked for with the
X-Carml-Trace-Level header, the levels interleaved in rounds so that drift in the machine hits them alike.
Target (issue #6): application <= 3 % over none; none costs nothing measurable (compare with overhead.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Client, measure, pct, running_node

LEVELS = ("none", "application", "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000, help="per level, in 10 interleaved rounds")
    args = parser.parse_args()
    x = np.load(REPO / "build" / "models" / "digits-cnn" / "heldout.npz")["X"][0].astype(np.float32)
    body = msgpack.packb(
        {
            "model": "digits-cnn",
            "framework": "onnxruntime",
            "inputs": [{"tensor": {"dtype": "float32", "shape": [1, 8, 8], "data": x.tobytes()}}],
        }
    )
    samples: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}
    with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp)) as url:
        client = Client(url)
        for _round in range(10):
            for level in LEVELS:
                headers = {
                    "Content-Type": "application/msgpack",
                    "Accept": "application/msgpack",
                    "X-Carml-Trace-Level": level,
                }

                def call(headers: dict[str, str] = headers) -> None:
                    status, raw, _ = client.post("/api/predict", body, headers)
                    assert status == 200, raw

                samples[level].append(measure(call, warmup=50, iterations=args.iterations // 10))
        client.close()
    base = pct(np.concatenate(samples["none"]), 50)
    print(f"\n{'level':<13}{'p50 ms':>9}{'p99 ms':>9}{'vs none':>10}")
    for level in LEVELS:
        ms = np.concatenate(samples[level])
        print(f"{level:<13}{pct(ms, 50):>9.3f}{pct(ms, 99):>9.3f}{pct(ms, 50) / base - 1:>+10.1%}")
    print(f"\ndigits-cnn, onnxruntime, batch 1, one client, {args.iterations} requests per level")


if __name__ == "__main__":
    main()
