"""Per-request latency of the executors in one run: local worker process vs warm container vs cold container.

    DOCKER_HOST=unix:///run/carml-docker/docker.sock .venv/bin/python scripts/bench/docker.py

For digits-cnn and efficientnet-lite0 (onnxruntime, batch 1, one client, msgpack over /api/predict, a real
carml-node process each time, one node at a time so they do not share the 2 cores):
  local  --executor local                       (worker subprocess, the baseline)
  warm   --executor docker --docker-mode warm   (long-lived container per framework and device)
  cold   --executor docker --docker-mode cold   (the seed's way: a container per request, model loaded each time)
Target: warm p50 within 10 % of local; cold / warm is reported. Needs scripts/docker-engine and scripts/build-images.
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

MODELS = REPO / "build" / "models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=0, help="warm/local per figure (default 1000 / 200)")
    parser.add_argument("--cold", type=int, default=8, help="cold requests per model")
    args = parser.parse_args()
    digits = np.load(MODELS / "digits-cnn" / "heldout.npz")["X"][:1].astype(np.float32)
    effnet = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    cases = [("digits-cnn", digits, args.iterations or 1000), ("efficientnet-lite0", effnet, args.iterations or 200)]
    modes = [
        ("local", ["--executor", "local"]),
        ("warm", ["--executor", "docker", "--docker-mode", "warm"]),
        ("cold", ["--executor", "docker", "--docker-mode", "cold", "--lazy"]),
    ]
    results: dict[tuple[str, str], np.ndarray] = {}
    for mode, flags in modes:
        with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp), *flags) as url:
            client = Client(url)
            for name, x, n in cases:
                body = msgpack.packb(
                    {
                        "model": name,
                        "framework": "onnxruntime",
                        "inputs": [
                            {"tensor": {"dtype": "float32", "shape": list(x.shape[1:]), "data": x[0].tobytes()}}
                        ],
                    }
                )
                headers = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}

                def call(body: bytes = body, headers: dict[str, str] = headers, client: Client = client) -> None:
                    status, raw, _ = client.post("/api/predict", body, headers)
                    assert status == 200, raw

                if mode == "cold":
                    results[(name, mode)] = measure(call, warmup=1, iterations=args.cold)
                else:
                    results[(name, mode)] = measure(call, warmup=n // 10, iterations=n)
            client.close()
    print(f"\n{'model':<20}{'executor':<8}{'p50 ms':>10}{'p99 ms':>10}{'vs local p50':>14}")
    for name, _, _ in cases:
        local = pct(results[(name, "local")], 50)
        for mode, _ in modes:
            ms = results[(name, mode)]
            print(f"{name:<20}{mode:<8}{pct(ms, 50):>10.3f}{pct(ms, 99):>10.3f}{pct(ms, 50) / local - 1:>+13.1%}")
        warm = pct(results[(name, "warm")], 50)
        print(f"{'':<20}cold / warm p50 = {pct(results[(name, 'cold')], 50) / warm:.0f}x")


if __name__ == "__main__":
    main()
