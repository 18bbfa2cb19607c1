"""``carml-node evaluate``: a model's accuracy on a labelled dataset, run by a node, followed on stderr.

    carml-node evaluate --model digits-cnn [--dataset digits | --zip FILE.zip | --folder DIR] [--framework F]
                        [--device D] [--node NODE] [--version V] [--batch-size N] [--json] [--url URL] [--token T]

A folder (CLASS/IMAGE.png ...) is zipped here and uploaded; the node checks the zip either way. Ctrl-C cancels the
evaluation on the node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from ..errors import CarmlError
from ..node import client
from .cli import NodeProblem, base_url
from .datasets import DIGITS, zip_folder

POLL_S = 0.25
BAR_WIDTH = 30


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure a model's accuracy (top-1, top-5, confusions) on the digits split or a zip/folder of images",
        description="Run MODEL over a labelled dataset on the node at --url and print top-1, top-5, per-class "
        "accuracy and the most confused classes. A zip or folder holds images in class subfolders named after the "
        "model's labels (or their indices).",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--version", dest="model_version")
    p.add_argument("--framework")
    p.add_argument("--device")
    p.add_argument("--node", help="run the inference on this member of the mesh (id or name)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--dataset", choices=(DIGITS,), help="a dataset bundled with the node (default: digits)")
    data.add_argument("--zip", type=Path, help="a .zip of images in class subfolders, uploaded to the node")
    data.add_argument("--folder", type=Path, help="a local folder of images in class subfolders (zipped, uploaded)")
    p.add_argument("--batch-size", type=int, help="inputs per inference request (default 32)")
    p.add_argument("--json", action="store_true", help="print the evaluation's JSON")
    client.add_client_args(p)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"model": args.model}
    for key, name in (("model_version", "version"), ("framework", "framework"), ("device", "device"), ("node", "node")):
        if value := getattr(args, key):
            fields[name] = value
    if args.batch_size is not None:
        fields["batch_size"] = args.batch_size
    return fields


def _bar(progress: dict[str, Any]) -> str:
    fraction = float(progress.get("fraction") or 0.0)
    filled = round(fraction * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {progress.get('done', 0)}/{progress.get('total', 0)}"


async def evaluate(args: argparse.Namespace, err: TextIO = sys.stderr) -> tuple[int, dict[str, Any]]:
    import aiohttp

    fields = _fields(args)
    base = base_url(args.url)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)
    async with aiohttp.ClientSession(headers=client.headers(args.token), timeout=timeout) as http:
        with contextlib.ExitStack() as stack:
            upload = args.zip
            if args.folder is not None:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="carml-eval-")))
                upload = tmp / f"{args.folder.resolve().name or 'dataset'}.zip"
                try:
                    scan = await asyncio.to_thread(zip_folder, args.folder, upload)
                except CarmlError as exc:
                    raise client.UsageError(str(exc)) from None
                print(
                    f"zipped {len(scan.items)} image(s) in {len(scan.classes)} class(es); skipped {scan.skipped}",
                    file=err,
                )
            if upload is not None:
                if not upload.is_file():
                    raise client.UsageError(f"{upload} is not a file")
                form = aiohttp.FormData()
                for key, value in fields.items():
                    form.add_field(key, str(value))
                form.add_field(
                    "dataset",
                    stack.enter_context(upload.open("rb")),
                    filename=upload.name,
                    content_type="application/zip",
                )
                body: dict[str, Any] = {"data": form}
            else:
                body = {"json": {**fields, "dataset": args.dataset or DIGITS}}
            async with http.post(f"{base}/api/evaluations", **body) as resp:
                started = await _json(resp)
                if resp.status != 202 or not isinstance(started, dict) or "url" not in started:
                    return 1, started if isinstance(started, dict) else {"error": f"{resp.status}: {started!r:.200}"}
        url = f"{base}{started['url']}"
        try:
            return await _follow(http, url, err)
        except asyncio.CancelledError:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(5), http.post(f"{url}/cancel"):
                    pass
            raise


async def _json(resp: Any) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        raise NodeProblem(f"{resp.method} {resp.url} answered {resp.status}, not a carml-mesh node's JSON") from None


async def _follow(http: Any, url: str, err: TextIO) -> tuple[int, dict[str, Any]]:
    tty = err.isatty()
    last = -1.0
    while True:
        async with http.get(url) as resp:
            doc = await _json(resp)
            if resp.status != 200 or not isinstance(doc, dict):
                return 1, doc if isinstance(doc, dict) else {"error": f"{resp.status}: {doc!r:.200}"}
        progress = doc.get("progress") or {}
        fraction = float(progress.get("fraction") or 0.0)
        if tty:
            print(f"\r{_bar(progress)}", end="", file=err, flush=True)
        elif fraction - last >= 0.1 or doc["status"] != "running":
            print(_bar(progress), file=err, flush=True)
            last = fraction
        if doc["status"] != "running":
            if tty:
                print(file=err)
            return (0 if doc["status"] == "done" else 1), doc
        await asyncio.sleep(POLL_S)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def print_evaluation(doc: dict[str, Any], as_json: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    if as_json:
        print(json.dumps(doc, indent=2), file=out)
        return
    if "status" not in doc:  # the node refused it
        print(f"carml-node evaluate: {doc.get('error', doc)}", file=err)
        return
    dataset = doc.get("dataset") or {}
    served = doc.get("served_by") or {}
    print(
        f"{doc['model']} {doc.get('version') or ''} on {doc.get('framework')}/{doc.get('device')}"
        f" at node {served.get('name', '?')}: {dataset.get('name')} ({dataset.get('images')} images, "
        f"{dataset.get('classes')} classes, {dataset.get('skipped', 0)} files skipped)",
        file=out,
    )
    if doc["status"] != "done":
        print(f"{doc['status']}: {doc.get('error')}", file=out)
        return
    print(f"top-1 {_pct(doc['top1'])}   top-5 {_pct(doc['top5'])}   ({doc.get('images_per_s')} images/s)", file=out)
    if doc.get("failed"):
        print(f"{doc['failed']} image(s) refused, e.g. {doc['failed_examples'][0]}", file=out)
    per_class = doc.get("per_class") or {}
    if 0 < len(per_class) <= 30:
        print(f"{'CLASS':<24} {'IMAGES':>6} {'TOP-1':>8} {'TOP-5':>8}", file=out)
        for label, c in per_class.items():
            print(f"{label[:24]:<24} {c['images']:>6} {_pct(c['top1']):>8} {_pct(c['top5']):>8}", file=out)
    if doc.get("confusions"):
        print("most confused (true -> predicted):", file=out)
        for c in doc["confusions"][:10]:
            print(f"  {c['count']:>5}  {c['true']} -> {c['predicted']}", file=out)


def main(args: argparse.Namespace) -> int:
    """The ``evaluate`` command: 0 when the evaluation is done, 1 when it failed, 2 on a usage error."""
    import aiohttp

    try:
        rc, doc = asyncio.run(evaluate(args))
    except client.UsageError as exc:
        print(f"carml-node evaluate: {exc}", file=sys.stderr)
        return 2
    except aiohttp.ClientConnectionError as exc:
        print(f"carml-node evaluate: cannot reach a node at {base_url(args.url)}: {exc}", file=sys.stderr)
        return 1
    except (NodeProblem, aiohttp.ClientError) as exc:
        print(f"carml-node evaluate: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"carml-node evaluate: the node at {base_url(args.url)} stopped answering", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ncarml-node evaluate: cancelled", file=sys.stderr)
        return 130
    print_evaluation(doc, args.json)
    return rc
