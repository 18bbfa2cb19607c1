"""``carml-node deploy`` and ``carml-node withdraw``: the client side of publishing, replication and withdrawal.

    carml-node deploy MANIFEST [--artifact FRAMEWORK=PATH ...] [--to all|N|NODE ...] [--replace]
    carml-node withdraw NAME VERSION [--everywhere]

Both talk to the node at --url (CARML_URL, default http://127.0.0.1:7450) with --token (CARML_API_TOKEN).
Artifacts are streamed from disk, never read whole into memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ManifestError
from ..manifest.loader import load_manifest_file
from ..manifest.schema import FRAMEWORKS, Manifest
from .config import DEFAULT_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


class UsageError(Exception):
    """Something to tell the user before anything is sent."""


def add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("CARML_URL", DEFAULT_URL), help="the node [CARML_URL]")
    p.add_argument("--token", default=os.environ.get("CARML_API_TOKEN"), help="the node's API token [CARML_API_TOKEN]")


def add_parsers(sub: Any) -> None:
    deploy = sub.add_parser(
        "deploy",
        help="publish a model (manifest + artifacts) to a node, and optionally deploy it to peers",
        description="Upload MANIFEST with its artifacts to the node at --url; with --to, that node then asks peers "
        "to pull it from itself. Without --artifact, the manifest's own relative artifact paths are used.",
    )
    deploy.add_argument("manifest", type=Path)
    deploy.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="FRAMEWORK=PATH",
        help=f"the artifact of one framework ({', '.join(FRAMEWORKS)}); repeatable",
    )
    deploy.add_argument(
        "--to", nargs="+", metavar="TARGET", help="all, a number of peers (the least loaded), or node ids or names"
    )
    deploy.add_argument("--replace", action="store_true", help="replace a published model of that name and version")
    deploy.add_argument("--json", action="store_true", help="print the raw JSON answers")
    add_client_args(deploy)

    withdraw = sub.add_parser("withdraw", help="withdraw a published model from a node (and its peers)")
    withdraw.add_argument("name")
    withdraw.add_argument("version")
    withdraw.add_argument("--everywhere", action="store_true", help="also on every peer that serves it")
    withdraw.add_argument("--json", action="store_true", help="print the raw JSON answer")
    add_client_args(withdraw)


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def parse_to(values: list[str]) -> str | int | list[str]:
    if len(values) == 1 and values[0] == "all":
        return "all"
    if len(values) == 1 and values[0].isdigit():
        return int(values[0])
    return values


def artifact_files(manifest: Manifest, path: Path, given: list[str]) -> dict[str, Path]:
    """Framework -> file to upload: --artifact first, then the manifest's own path (relative to it) or file:// URL.
    A framework with neither but a sha256 is left to the node's store."""
    files: dict[str, Path] = {}
    names = [f.name for f in manifest.frameworks]
    for item in given:
        framework, sep, file = item.partition("=")
        if not sep or not file:
            raise UsageError(f"--artifact {item!r}: give FRAMEWORK=PATH, e.g. onnxruntime=model.onnx")
        if framework not in names:
            raise UsageError(f"--artifact {item!r}: the manifest has no {framework} framework; it has {names}")
        files[framework] = Path(file)
    for entry in manifest.frameworks:
        if entry.name in files:
            continue
        ref = entry.artifact
        if ref.path is not None:
            files[entry.name] = (path.parent / ref.path) if not Path(ref.path).is_absolute() else Path(ref.path)
        elif ref.url is not None and ref.url.startswith("file://"):
            files[entry.name] = Path(ref.url.removeprefix("file://"))
        elif ref.sha256 is None:
            raise UsageError(f"no artifact for {entry.name}: give --artifact {entry.name}=PATH")
    for framework, artifact in files.items():
        if not artifact.is_file():
            raise UsageError(f"the {framework} artifact {artifact} is not a file")
    return files


async def deploy(args: argparse.Namespace) -> tuple[int, list[Any]]:
    import aiohttp

    try:
        manifest = load_manifest_file(args.manifest)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    files = artifact_files(manifest, args.manifest, args.artifact)
    labels: str | None = None
    if manifest.output.labels_path is not None:
        labels_file = args.manifest.parent / manifest.output.labels_path
        try:
            labels = labels_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the labels file {labels_file}: {exc}") from None
    answers: list[Any] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=900)
    async with aiohttp.ClientSession(headers=headers(args.token), timeout=timeout) as http:
        with contextlib.ExitStack() as stack:
            form = aiohttp.FormData()
            form.add_field("manifest", args.manifest.read_text(encoding="utf-8"), content_type="application/yaml")
            if labels is not None:
                form.add_field("labels", labels, content_type="text/plain")
            for framework, file in files.items():
                form.add_field(
                    f"artifact.{framework}",
                    stack.enter_context(file.open("rb")),
                    filename=file.name,
                    content_type="application/octet-stream",
                )
            query = "?replace=true" if args.replace else ""
            async with http.post(f"{args.url}/api/models{query}", data=form) as resp:
                answers.append(await resp.json(content_type=None))
                if resp.status != 200:
                    return 1, answers
        if args.to:
            body = {"name": manifest.name, "version": manifest.version, "to": parse_to(args.to)}
            if args.replace:
                body["replace"] = True
            async with http.post(f"{args.url}/api/deployments", json=body) as resp:
                answers.append(await resp.json(content_type=None))
                if resp.status != 200 or not answers[-1].get("ok"):
                    return 1, answers
    return 0, answers


async def withdraw(args: argparse.Namespace) -> tuple[int, Any]:
    import aiohttp

    query = "?everywhere=true" if args.everywhere else ""
    url = f"{args.url}/api/models/{args.name}/versions/{args.version}{query}"
    async with aiohttp.ClientSession(headers=headers(args.token)) as http, http.delete(url) as resp:
        doc = await resp.json(content_type=None)
        ok = resp.status == 200 and all(r.get("ok") for r in doc.get("results", []))
        return (0 if ok else 1), doc


def print_deploy(answers: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(answers, indent=2))
        return
    published = answers[0]
    if "error" in published:
        print(f"error: {published['error']}")
        return
    what = "unchanged" if published.get("unchanged") else "replaced" if published.get("replaced") else "published"
    shas = ", ".join(f"{f['name']} {str(f['sha256'])[:12]}" for f in published["frameworks"])
    print(f"{what} {published['name']} {published['version']} ({shas})")
    if len(answers) > 1:
        deployed = answers[1]
        if "error" in deployed:
            print(f"deploy: error: {deployed['error']}")
            return
        print_table(deployed.get("results", []))


def print_withdraw(doc: Any, as_json: bool) -> None:
    if as_json or "here" not in doc:
        print(json.dumps(doc, indent=2) if as_json else f"error: {doc.get('error')}")
        return
    print_table([doc["here"], *doc.get("results", [])])


def print_table(results: list[dict[str, Any]]) -> None:
    if not results:
        print("no peer to ask")
        return
    print(f"{'NODE':<18} {'NAME':<20} RESULT")
    for r in results:
        outcome = "ok" if r.get("ok") else f"error: {r.get('error')}"
        print(f"{r.get('node', ''):<18} {r.get('name', ''):<20} {outcome}")
