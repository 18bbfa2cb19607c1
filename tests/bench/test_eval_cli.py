"""``carml-node evaluate`` against a real node: the digits split, a local folder, and usage errors."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from helpers import png_bytes


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "carml_mesh.node",
        "evaluate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_evaluate_the_digits_split(node) -> None:
    rc, out, err = await _cli("--url", node.url(), "--model", "digits-cnn", "--framework", "pytorch", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "done" and doc["framework"] == "pytorch"
    assert doc["top1"] >= 0.95
    assert "450/450" in err  # the progress, on stderr


async def test_evaluate_a_folder_prints_a_table(node, digits_heldout, tmp_path: Path) -> None:
    x, y = digits_heldout
    for n in range(60):
        folder = tmp_path / "data" / str(int(y[n]))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n}.png").write_bytes(png_bytes(np.rint(x[n, 0] * 255 / 16).astype(np.uint8)))
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    rc, out, err = await _cli("--url", node.url(), "--model", "digits-cnn", "--folder", str(tmp_path / "data"))
    assert rc == 0, err
    assert "zipped 60 image(s) in 10 class(es); skipped 1" in err
    assert "data.zip (60 images, 10 classes" in out
    assert "top-1 " in out and "CLASS" in out


async def test_usage_and_node_errors(node, tmp_path: Path) -> None:
    rc, _, err = await _cli("--url", node.url(), "--model", "digits-cnn", "--zip", str(tmp_path / "missing.zip"))
    assert rc == 2 and "missing.zip is not a file" in err
    rc, out, err = await _cli("--url", node.url(), "--model", "nope")
    assert rc == 1 and out == "" and "carml-node evaluate: unknown model 'nope'" in err
    # a URL without its scheme is the node's; something that is not a node is said so, without a traceback
    rc, out, err = await _cli("--url", node.url().removeprefix("http://"), "--model", "nope")
    assert rc == 1 and "unknown model 'nope'" in err
    rc, out, err = await _cli("--url", node.url() + "/static", "--model", "digits-cnn")
    assert rc == 1 and "Traceback" not in err and "carml-node evaluate:" in err
