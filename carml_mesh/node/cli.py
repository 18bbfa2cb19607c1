"""``carml-node``: run a node (the default), or talk to one (models, predict, deploy, withdraw), or check manifests
(validate)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from dataclasses import fields
from pathlib import Path
from typing import Any

from .. import __version__
from ..bench import cli as bench_cli
from ..bench import eval_cli
from ..errors import CarmlError, ConfigError
from . import client
from .config import DEFAULT_HOST, DEFAULT_PORT, NodeConfig, default_data_dir
from .rejoin import DEFAULT_JOIN_RETRY_INTERVAL, DEFAULT_JOIN_RETRY_MAX_INTERVAL

log = logging.getLogger("carml.node")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CARML_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carml-node",
        description="A node of the carml-mesh: serves, routes and "
        "benchmarks ML models. With no command it runs the node.",
    )
    parser.add_argument("--version", action="version", version=f"carml-mesh {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run a node (the default)")
    _serve_args(serve)
    _serve_args(parser)  # so that `carml-node --port 1234` works with no command

    models = sub.add_parser("models", help="list the models a node serves")
    client.add_client_args(models)
    models.add_argument("--json", action="store_true", help="print the raw JSON")

    predict = sub.add_parser("predict", help="classify image files with a model on a node")
    predict.add_argument("model")
    predict.add_argument("files", nargs="+", type=Path)
    client.add_client_args(predict)
    predict.add_argument("--framework")
    predict.add_argument("--device")
    predict.add_argument("--version", dest="model_version")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true", help="print the raw JSON")

    validate = sub.add_parser("validate", help="check manifest files and say what is wrong with each")
    validate.add_argument("manifests", nargs="+", type=Path)
    client.add_parsers(sub)
    eval_cli.add_parsers(sub)  # evaluate: accuracy on a labelled dataset
    bench_cli.add_parsers(sub)  # bench: MLPerf-style scenarios run on a node
    return parser


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=_env("HOST", DEFAULT_HOST), help="address to listen on [CARML_HOST]")
    p.add_argument(
        "--port", type=int, default=int(_env("PORT", str(DEFAULT_PORT)) or DEFAULT_PORT), help="HTTP port [CARML_PORT]"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("DATA_DIR") or default_data_dir()),
        help="artifact store, node id [CARML_DATA_DIR]",
    )
    p.add_argument(
        "--manifests",
        type=Path,
        action="append",
        help="folder of *.yml manifests; repeatable [CARML_MANIFESTS, ':'-separated; default DATA_DIR/manifests]",
    )
    p.add_argument("--samples", type=Path, default=_env("SAMPLES"), help="folder of sample images for the page")
    p.add_argument("--name", default=_env("NAME"), help="node name shown to users (default: host name)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    p.add_argument("--lazy", action="store_true", help="load models on first use instead of at start")
    p.add_argument(
        "--worker-threads",
        type=int,
        default=int(_env("WORKER_THREADS", "0") or 0),
        help="framework threads per worker (0: all cores)",
    )
    p.add_argument(
        "--worker-pool",
        type=int,
        default=int(_env("WORKER_POOL", "2") or 2),
        help="requests (or batches) a worker runs at once, each on its own thread [CARML_WORKER_POOL]",
    )
    p.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds before a request fails with 503")
    api = p.add_argument_group("publishing and the API token")
    api.add_argument(
        "--api-token",
        default=_env("API_TOKEN"),
        help="a shared secret: publishing, withdrawing and deploying need 'Authorization: Bearer TOKEN', and this "
        "node sends it to its peers [CARML_API_TOKEN]",
    )
    api.add_argument(
        "--api-token-file",
        type=Path,
        default=_env("API_TOKEN_FILE"),
        help="file holding the token [CARML_API_TOKEN_FILE]",
    )
    api.add_argument(
        "--protect-all",
        action="store_true",
        default=_env("PROTECT_ALL", "0") == "1",
        help="the token guards reads and inference too (all of /api and /v2 but /api/health) [CARML_PROTECT_ALL=1]",
    )
    api.add_argument(
        "--max-artifact-mb",
        type=float,
        default=float(_env("MAX_ARTIFACT_MB", "2048") or 2048),
        help="largest artifact a node accepts, uploaded or pulled from a peer [CARML_MAX_ARTIFACT_MB]",
    )
    ex = p.add_argument_group("execution")
    ex.add_argument(
        "--executor",
        choices=("auto", "local", "docker"),
        default=_env("EXECUTOR", "auto"),
        help="where workers run: docker containers, local processes, or auto (docker when an engine "
        "answers and the worker images exist) [CARML_EXECUTOR]",
    )
    ex.add_argument(
        "--docker-mode",
        choices=("warm", "cold"),
        default=_env("DOCKER_MODE", "warm"),
        help="warm: a long-lived container per framework and device; cold: a container per request "
        "(the seed's way) [CARML_DOCKER_MODE]",
    )
    ex.add_argument("--docker-url", default=_env("DOCKER_URL"), help="the engine (default: $DOCKER_HOST)")
    ex.add_argument("--docker-memory-mb", type=int, default=4096, help="memory limit per worker container")
    ex.add_argument("--docker-cpus", type=float, default=0.0, help="CPU limit per worker container (0: none)")
    ex.add_argument(
        "--batching",
        choices=("auto", "off"),
        default=_env("BATCHING", "auto"),
        help="dynamic batching of concurrent requests: auto (for models whose manifest sets batching.max_batch_size "
        "above 1) or off [CARML_BATCHING]",
    )
    ex.add_argument(
        "--max-queue-delay-ms",
        type=float,
        default=float(d) if (d := _env("MAX_QUEUE_DELAY_MS")) else None,
        help="how long a forming batch may wait for more requests while the worker is busy; overrides the "
        "manifests' batching.max_queue_delay_ms [CARML_MAX_QUEUE_DELAY_MS]",
    )
    mesh = p.add_argument_group("mesh")
    mesh.add_argument(
        "--cluster",
        default=_env("CLUSTER", "default"),
        help="cluster name: meshes with other names on the LAN stay apart [CARML_CLUSTER]",
    )
    mesh.add_argument(
        "--gossip-port",
        type=int,
        default=int(_env("GOSSIP_PORT", "7946") or 7946),
        help="UDP and TCP port of the membership protocol [CARML_GOSSIP_PORT]",
    )
    mesh.add_argument(
        "--cluster-key",
        default=_env("CLUSTER_KEY"),
        help="AES key(s), base64 or hex, comma-separated, the first one used to send; encrypts and "
        "authenticates all gossip [CARML_CLUSTER_KEY]",
    )
    mesh.add_argument(
        "--cluster-key-file",
        type=Path,
        default=_env("CLUSTER_KEY_FILE"),
        help="file holding the key(s) [CARML_CLUSTER_KEY_FILE]",
    )
    mesh.add_argument(
        "--join",
        action="append",
        default=None,
        metavar="HOST:PORT",
        help="a peer's gossip address to join (repeatable) [CARML_JOIN, comma-separated]",
    )
    mesh.add_argument(
        "--join-retry-interval",
        type=float,
        default=float(_env("JOIN_RETRY_INTERVAL", str(DEFAULT_JOIN_RETRY_INTERVAL)) or DEFAULT_JOIN_RETRY_INTERVAL),
        metavar="S",
        help="while this node has no live peer, its seeds (and the peers mDNS found) are retried after S seconds, "
        "then twice as long after each failure [CARML_JOIN_RETRY_INTERVAL]",
    )
    mesh.add_argument(
        "--join-retry-max-interval",
        type=float,
        default=float(
            _env("JOIN_RETRY_MAX_INTERVAL", str(DEFAULT_JOIN_RETRY_MAX_INTERVAL)) or DEFAULT_JOIN_RETRY_MAX_INTERVAL
        ),
        metavar="S",
        help="the longest wait between two join attempts [CARML_JOIN_RETRY_MAX_INTERVAL]",
    )
    mesh.add_argument(
        "--join-retry-max",
        type=int,
        default=int(_env("JOIN_RETRY_MAX", "0") or 0),
        metavar="N",
        help="give up after N failed join attempts in a row; 0 (the default): retry for ever [CARML_JOIN_RETRY_MAX]",
    )
    mesh.add_argument(
        "--no-mdns",
        action="store_true",
        default=_env("MDNS", "1") == "0",
        help="do not discover peers with mDNS [CARML_MDNS=0]",
    )
    mesh.add_argument("--no-gossip", action="store_true", help="run alone, outside any mesh")
    mesh.add_argument(
        "--gossip-tuning",
        default=_env("GOSSIP_TUNING", ""),
        metavar="KEY=VALUE,...",
        help="gossip timers, e.g. probe_interval=0.5,suspicion_mult=5 (memberlist's LAN profile by "
        "default) [CARML_GOSSIP_TUNING]",
    )
    mesh.add_argument(
        "--pull-allow-origin",
        action="append",
        default=None,
        metavar="URL",
        help="an origin (http[s]://host[:port]) that POST /api/models/pull may fetch from besides the alive members "
        "of the mesh (repeatable) [CARML_PULL_ALLOW_ORIGINS, comma-separated]",
    )
    mesh.add_argument(
        "--advertise", default=_env("ADVERTISE"), help="the address peers reach this node at (default: from --host)"
    )
    tr = p.add_argument_group("tracing")
    tr.add_argument(
        "--zipkin",
        default=_env("ZIPKIN"),
        metavar="URL",
        help="also export spans to this Zipkin server, e.g. http://host:9411/api/v2/spans (the node keeps its "
        "spans and answers /api/v2 anyway) [CARML_ZIPKIN]",
    )
    tr.add_argument(
        "--trace-level",
        default=_env("TRACE_LEVEL", "application"),
        choices=("none", "application", "model", "framework"),
        help="default trace level of /api/predict and KServe infer (application: server, routing and hop spans, "
        "about 10 µs a request); a request may ask for another with the X-Carml-Trace-Level header or in its body "
        "('trace', KServe 'parameters.trace_level') [CARML_TRACE_LEVEL]",
    )


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    manifests = args.manifests
    if not manifests:
        env = _env("MANIFESTS")
        manifests = [Path(p) for p in env.split(":") if p] if env else [args.data_dir / "manifests"]
    kwargs: dict[str, Any] = {}
    if args.name:
        kwargs["name"] = args.name
    key = args.cluster_key
    if args.cluster_key_file:
        try:
            key = Path(args.cluster_key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the cluster key file {args.cluster_key_file}: {exc.strerror}") from exc
    token = args.api_token
    if args.api_token_file:
        try:
            token = Path(args.api_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the API token file {args.api_token_file}: {exc.strerror}") from exc
    if not 1 <= args.worker_pool <= 64:
        raise ConfigError(f"--worker-pool must be between 1 and 64, got {args.worker_pool}")
    if args.max_queue_delay_ms is not None and not args.max_queue_delay_ms >= 0:
        raise ConfigError(f"--max-queue-delay-ms must be 0 or more, got {args.max_queue_delay_ms}")
    if args.max_artifact_mb <= 0:
        raise ConfigError(f"--max-artifact-mb must be positive, got {args.max_artifact_mb}")
    joins = args.join if args.join is not None else [j for j in (_env("JOIN") or "").split(",") if j.strip()]
    if not args.join_retry_interval > 0 or not args.join_retry_max_interval >= args.join_retry_interval:
        raise ConfigError(
            "--join-retry-interval must be positive and at most --join-retry-max-interval, got "
            f"{args.join_retry_interval} and {args.join_retry_max_interval}"
        )
    if args.join_retry_max < 0:
        raise ConfigError(f"--join-retry-max must be 0 (for ever) or more, got {args.join_retry_max}")
    origins = args.pull_allow_origin
    if origins is None:
        origins = [o.strip() for o in (_env("PULL_ALLOW_ORIGINS") or "").split(",") if o.strip()]
    return NodeConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        manifests_dirs=tuple(manifests),
        samples_dir=Path(args.samples) if args.samples else None,
        preload=not args.lazy,
        zipkin_url=args.zipkin or None,
        trace_level=args.trace_level,
        worker_threads=args.worker_threads,
        worker_pool=args.worker_pool,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        request_timeout=args.request_timeout,
        executor=args.executor,
        docker_url=args.docker_url,
        docker_mode=args.docker_mode,
        docker_memory_bytes=args.docker_memory_mb << 20,
        docker_cpus=args.docker_cpus,
        batching=args.batching,
        max_queue_delay_ms=args.max_queue_delay_ms,
        gossip=not args.no_gossip,
        gossip_port=args.gossip_port,
        cluster=args.cluster,
        cluster_key=key,
        join=tuple(_address(j) for j in joins),
        join_retry_interval=args.join_retry_interval,
        join_retry_max_interval=args.join_retry_max_interval,
        join_retry_max=args.join_retry_max,
        pull_origins=tuple(_origin(o) for o in origins),
        mdns=not args.no_mdns,
        advertise=args.advertise,
        gossip_overrides=_tuning(args.gossip_tuning),
        api_token=token.strip() if token is not None else None,
        protect_all=args.protect_all,
        max_artifact_bytes=int(args.max_artifact_mb * (1 << 20)),
        **kwargs,
    )


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--join {text!r}: give HOST:PORT, e.g. 10.0.0.5:7946")
    return host.strip("[]"), int(port)


def _origin(text: str) -> str:
    from .replication import parse_source

    try:
        return parse_source(text)
    except CarmlError as exc:
        raise ConfigError(f"--pull-allow-origin {text!r}: give an origin such as http://10.0.0.5:7450: {exc}") from None


def _tuning(text: str) -> tuple[tuple[str, float], ...]:
    from ..gossip.config import GossipConfig

    tunable = {f.name: f.type for f in fields(GossipConfig) if f.type in ("float", "int")}
    out = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in tunable:
            raise ConfigError(f"unknown gossip setting {key!r}; tunable: {', '.join(sorted(tunable))}")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not number > 0:
            raise ConfigError(f"gossip setting {key}: {value!r} must be a positive number")
        out.append((key, int(number) if tunable[key] == "int" else number))
    return tuple(out)


async def serve(config: NodeConfig) -> None:
    from .node import Node

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Node(config) as node:
        print(f"carml-node {node.name} ({node.id}) on {node.url()}/ - Ctrl-C to stop", flush=True)
        ready = asyncio.ensure_future(node.wait_ready())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            loaded = sum(len(f["loaded"]) for m in node.info()["models"] for f in m["frameworks"])
            print(f"ready: {len(node.catalog)} model(s), {loaded} loaded", flush=True)
            # what start-up made lives as long as the node: out of the collector's way, so its passes during
            # requests only walk what requests allocate
            gc.collect()
            gc.freeze()
        await stopping
        ready.cancel()
        log.info("stopping")


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _get(url: str, token: str | None = None) -> Any:
    import aiohttp

    async with aiohttp.ClientSession(headers=client.headers(token)) as session, session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def _predict(args: argparse.Namespace) -> tuple[int, Any]:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("model", args.model)
    for key in ("framework", "device", "model_version"):
        if value := getattr(args, key):
            form.add_field(key.removeprefix("model_"), value)
    form.add_field("top_k", str(args.top_k))
    for path in args.files:
        form.add_field("image", path.read_bytes(), filename=path.name)
    async with (
        aiohttp.ClientSession(headers=client.headers(args.token)) as session,
        session.post(f"{args.url}/api/predict", data=form) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


def _client(coro: Coroutine[Any, Any, tuple[int, Any]], url: str) -> tuple[int, Any]:
    import aiohttp

    try:
        answer: tuple[int, Any] = _run(coro)
    except aiohttp.ClientConnectionError as exc:
        raise SystemExit(f"carml-node: cannot reach a node at {url}: {exc}") from None
    return answer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        try:
            _run(serve(config_from_args(args)))
        except CarmlError as exc:
            print(f"carml-node: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"carml-node: cannot start: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "validate":
        from ..manifest.loader import load_manifest_file

        bad = 0
        for path in args.manifests:
            try:
                m = load_manifest_file(path)
                print(f"ok    {path}: {m.name} {m.version} ({', '.join(f.name for f in m.frameworks)})")
            except CarmlError as exc:
                bad += 1
                print(f"error {exc}")
        return 1 if bad else 0
    if command == "bench":
        return bench_cli.main(args)
    if command == "evaluate":
        return eval_cli.main(args)
    if command in ("deploy", "withdraw"):
        try:
            if command == "deploy":
                rc, answers = _client(client.deploy(args), args.url)
                client.print_deploy(answers, args.json)
            else:
                rc, doc = _client(client.withdraw(args), args.url)
                client.print_withdraw(doc, args.json)
        except (client.UsageError, OSError) as exc:
            print(f"carml-node {command}: {exc}", file=sys.stderr)
            return 2
        return rc
    if command == "models":
        status, doc = _client(_get(f"{args.url}/api/models", args.token), args.url)
        if args.json or status != 200:
            print(json.dumps(doc, indent=2))
            return 0 if status == 200 else 1
        for m in doc["models"]:
            fws = ", ".join(f"{f['name']}{'*' if f['loaded'] else ''}" for f in m["frameworks"] if f["available"])
            print(f"{m['name']:<24} {m['version']:<10} {fws:<28} {m.get('description', '')[:60]}")
        return 0
    status, doc = _client(_predict(args), args.url)
    if args.json or status != 200:
        print(json.dumps(doc, indent=2))
        return 0 if status == 200 else 1
    print(f"{doc['model']} {doc['version']} on {doc['framework']}/{doc['device']} at node {doc['node']['name']}")
    for path, result in zip(args.files, doc["results"], strict=True):
        print(f"{path}  ({result['timings_ms']['total']:.1f} ms)")
        for p in result.get("predictions", []):
            print(f"  {p['probability']:6.3f}  {p['index']:>5}  {p['label']}")
    return 0
