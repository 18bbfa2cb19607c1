"""Nodes forming a mesh on 127.0.0.1 over real UDP/TCP: join, cards over HTTP, leave, crash, wrong key."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from nodeproc import joined_nodes, node_config

from carml_mesh.errors import ConfigError
from carml_mesh.node.cli import build_parser, config_from_args
from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node

KEY_A = base64.b64encode(b"k" * 32).decode()
KEY_B = base64.b64encode(b"z" * 32).decode()


@contextlib.asynccontextmanager
async def nodes(tmp: Path, *configs: NodeConfig) -> AsyncIterator[list[Node]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Node(c)) for c in configs]


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition the mesh reaches by itself; fail with a clear message past the bound."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def seen(node: Node) -> dict[str, str]:
    assert node.mesh is not None
    return {m["id"]: m["state"] for m in node.mesh.cluster_view()["members"]}


def gossip_addr(node: Node) -> tuple[str, int]:
    assert node.mesh is not None
    return node.mesh.gossip.addr


async def test_three_nodes_join_share_cards_and_leave(models_dir, tmp_path) -> None:
    a = Node(node_config(tmp_path, "a"))
    async with a:
        seed = (gossip_addr(a),)
        joining = (node_config(tmp_path, "b", join=seed), node_config(tmp_path, "c", join=seed))
        async with nodes(tmp_path, *joining) as (b, c):
            everyone = {a.id, b.id, c.id}
            await eventually(
                lambda: all(set(seen(n)) == everyone and set(seen(n).values()) == {"alive"} for n in (a, b, c))
            )
            # each peer's card is fetched over HTTP once its digest is gossiped
            await eventually(lambda: all(m["card"] is not None for m in a.mesh.cluster_view()["members"]))
            async with aiohttp.ClientSession() as http, http.get(f"{c.url()}/api/cluster") as resp:
                view = await resp.json()
            assert view["cluster"] == "default" and view["encrypted"] is False
            by_id = {m["id"]: m for m in view["members"]}
            assert by_id[c.id]["self"] and by_id[a.id]["card"]["name"] == "a"
            assert "efficientnet-lite0@1.0.0" in by_id[b.id]["card"]["models"]
            assert by_id[a.id]["address"] == "{}:{}".format(*gossip_addr(a))
            assert view["gossip"]["packets_in"] > 0 and view["gossip"]["dropped"] == {}
            assert by_id[a.id]["load"] == 0  # requests in flight, gossiped in the member's meta
            # a card change (a model becomes warm) reaches the others with a new version
            before = next(m for m in a.mesh.cluster_view()["members"] if m["id"] == b.id)["card_version"]
            async with aiohttp.ClientSession() as http:
                form = aiohttp.FormData()
                form.add_field("model", "efficientnet-lite0")
                form.add_field("image", (models_dir / "samples" / "chelsea.jpg").read_bytes(), filename="c.jpg")
                async with http.post(f"{b.url()}/api/predict", data=form) as resp:
                    assert resp.status == 200

            def b_is_warm_for_a() -> bool:
                member = next(m for m in a.mesh.cluster_view()["members"] if m["id"] == b.id)
                return member["card_version"] > before and bool(member["card"]["warm"])

            await eventually(b_is_warm_for_a)
        # b and c left gracefully when their block ended
        await eventually(lambda: seen(a)[b.id] == "left" and seen(a)[c.id] == "left")


async def test_killed_node_is_marked_dead(tmp_path) -> None:
    async with nodes(tmp_path, node_config(tmp_path, "a"), node_config(tmp_path, "b")) as (a, b):
        host, port = gossip_addr(a)
        await b.mesh.gossip.join([(host, port)])
        cmd = [
            sys.executable,
            "-m",
            "carml_mesh.node",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "k"),
            "--manifests",
            str(tmp_path / "none"),
            "--lazy",
            "--executor",
            "local",
            "--gossip-port",
            "0",
            "--no-mdns",
            "--join",
            f"{host}:{port}",
            "--name",
            "victim",
            "--log-level",
            "WARNING",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if m := re.search(r"\((\w+)\) on http", line):
                    victim = m.group(1)
                if line.startswith("ready:"):
                    break
            await eventually(lambda: seen(a).get(victim) == "alive" and seen(b).get(victim) == "alive")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            await eventually(lambda: seen(a)[victim] == "dead" and seen(b)[victim] == "dead")
            stats = a.mesh.cluster_view()["gossip"]
            assert stats["suspicions"] >= 1 and stats["probe_failures"] >= 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


async def test_wrong_cluster_key_never_joins(tmp_path) -> None:
    async with nodes(tmp_path, node_config(tmp_path, "a", cluster_key=KEY_A)) as (a,):
        seed = (gossip_addr(a),)
        async with nodes(
            tmp_path,
            node_config(tmp_path, "b", cluster_key=KEY_B, join=seed),
            node_config(tmp_path, "c", cluster_key=KEY_A, join=seed),
            node_config(tmp_path, "d", join=seed),
            node_config(tmp_path, "e", cluster="other", cluster_key=KEY_A, join=seed),
        ) as (b, c, d, e):
            await eventually(lambda: seen(a).get(c.id) == "alive" and seen(c).get(a.id) == "alive")
            await eventually(lambda: a.mesh.gossip.statistics()["dropped"].get("crypto", 0) >= 2)
            await asyncio.sleep(1.0)  # give the wrong-key nodes time to (fail to) get in: nothing must change
            assert set(seen(a)) == {a.id, c.id}
            assert set(seen(b)) == {b.id} and set(seen(d)) == {d.id} and set(seen(e)) == {e.id}
            assert a.mesh.cluster_view()["encrypted"] is True


async def test_garbage_datagrams_are_dropped_and_counted(tmp_path) -> None:
    async with nodes(tmp_path, node_config(tmp_path, "a")) as (a,):
        host, port = gossip_addr(a)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
        try:
            for payload in (b"", b"\x00", b"\x00\x93\x01\x02", b"\x01" + os.urandom(60), os.urandom(1400)):
                transport.sendto(payload)
        finally:
            transport.close()
        await eventually(lambda: sum(a.mesh.gossip.statistics()["dropped"].values()) >= 4)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"\xff\xff\xff\xffgarbage")
        await writer.drain()
        assert await reader.read() == b""  # the node hangs up on a bad frame
        writer.close()
        await writer.wait_closed()
        async with aiohttp.ClientSession() as http, http.get(f"{a.url()}/api/health") as resp:
            assert resp.status == 200


def free_gossip_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 right now, for a seed that is started later."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free port")


async def test_a_node_started_before_its_seed_joins_it_and_rejoins_after_losing_it(tmp_path) -> None:
    """Boot order does not decide whether the mesh forms: b retries its seed until a is up, and once a has gone
    and come back (a restart: a knows nobody, it has no --join), b, alone again, finds it again by itself."""
    port = free_gossip_port()
    seed = dataclasses.replace(node_config(tmp_path, "a"), gossip_port=port)
    joiner = node_config(
        tmp_path, "b", join=(("127.0.0.1", port),), join_retry_interval=0.05, join_retry_max_interval=0.2
    )
    async with Node(joiner) as b:
        assert b.mesh is not None
        await eventually(lambda: b.mesh.join_schedule.attempts >= 3)
        view = b.mesh.cluster_view()["join"]
        assert view["seeds"] == [f"127.0.0.1:{port}"] and view["joins"] == 0
        assert view["last_result"] == f"no answer from 127.0.0.1:{port}" and view["next_attempt_unix"] > time.time() - 1
        for _ in range(2):  # the seed's first start, then its restart
            async with Node(seed) as a:
                await eventually(lambda a=a: seen(b).get(a.id) == "alive" and seen(a).get(b.id) == "alive")
                await eventually(lambda: b.mesh.join_schedule.attempts == 0)
            await eventually(lambda: b.mesh.join_schedule.attempts >= 1)  # a left: b is alone, and retries
        view = b.mesh.cluster_view()["join"]
        assert view["joins"] == 2 and view["total_attempts"] >= 5 and not view["gave_up"]


async def test_join_retries_give_up_after_the_maximum(tmp_path) -> None:
    port = free_gossip_port()
    cfg = node_config(tmp_path, "b", join=(("127.0.0.1", port),), join_retry_interval=0.02, join_retry_max=3)
    async with Node(cfg) as b:
        assert b.mesh is not None
        await eventually(lambda: b.mesh.join_schedule.gave_up)
        view = b.mesh.cluster_view()["join"]
        assert view["attempts"] == 3 and view["next_attempt_unix"] is None and view["retry_max_attempts"] == 3


def test_join_retry_flags_are_checked() -> None:
    args = [
        "--join",
        "h:7946",
        "--join-retry-interval",
        "0.5",
        "--join-retry-max-interval",
        "10",
        "--join-retry-max",
        "7",
    ]
    cfg = config_from_args(build_parser().parse_args(args))
    assert (cfg.join_retry_interval, cfg.join_retry_max_interval, cfg.join_retry_max) == (0.5, 10.0, 7)
    assert config_from_args(build_parser().parse_args([])).join_retry_max == 0  # for ever by default
    for bad in (["--join-retry-interval", "0"], ["--join-retry-interval", "40"], ["--join-retry-max", "-1"]):
        with pytest.raises(ConfigError, match="--join-retry"):
            config_from_args(build_parser().parse_args(bad))


def test_pull_origins_are_checked() -> None:
    cfg = config_from_args(build_parser().parse_args(["--pull-allow-origin", "http://mirror.lab:8080/"]))
    assert cfg.pull_origins == ("http://mirror.lab:8080",)
    with pytest.raises(ConfigError, match="--pull-allow-origin 'http://h/x'"):
        config_from_args(build_parser().parse_args(["--pull-allow-origin", "http://h/x"]))


@pytest.mark.parametrize("bad", ["nohost", "h:0", "h:99999", ":7946", "h:x"])
def test_bad_join_addresses_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        config_from_args(build_parser().parse_args(["--join", bad]))


def test_gossip_tuning_is_checked() -> None:
    cfg = config_from_args(build_parser().parse_args(["--gossip-tuning", "probe_interval=0.5,indirect_checks=2"]))
    assert dict(cfg.gossip_overrides) == {"probe_interval": 0.5, "indirect_checks": 2}
    with pytest.raises(ConfigError, match="unknown gossip setting 'probe_intervl'"):
        config_from_args(build_parser().parse_args(["--gossip-tuning", "probe_intervl=1"]))
    with pytest.raises(ConfigError, match="must be a positive number"):
        config_from_args(build_parser().parse_args(["--gossip-tuning", "probe_interval=-1"]))


async def test_a_trace_split_across_nodes_is_assembled_by_either(tmp_path) -> None:
    async with joined_nodes(node_config(tmp_path, "a"), node_config(tmp_path, "b")) as (a, b):
        trace = "5af7183fb1d4cf5f"
        now_us = int(time.time() * 1e6)  # spans older than the store's retention (1 h) are dropped
        parts = {
            a: [
                {
                    "traceId": trace,
                    "id": "0000000000000001",
                    "name": "predict",
                    "kind": "SERVER",
                    "timestamp": now_us,
                    "duration": 900,
                    "localEndpoint": {"serviceName": "carml-node"},
                }
            ],
            b: [
                {
                    "traceId": trace,
                    "id": "0000000000000002",
                    "parentId": "0000000000000001",
                    "name": "infer",
                    "kind": "SERVER",
                    "timestamp": now_us + 100,
                    "duration": 500,
                    "localEndpoint": {"serviceName": "carml-node"},
                }
            ],
        }
        async with aiohttp.ClientSession() as http:
            for node, spans in parts.items():
                async with http.post(f"{node.url()}/api/v2/spans", json=spans) as resp:
                    assert resp.status == 202
            for node in (a, b):
                async with http.get(f"{node.url()}/api/v2/trace/{trace}") as resp:
                    assert resp.status == 200
                    assert sorted(s["id"] for s in await resp.json()) == ["0000000000000001", "0000000000000002"]
            async with http.post(f"{a.url()}/api/v2/spans", data=b"[{") as resp:
                assert resp.status == 400 and "error" in await resp.json()


async def test_a_chunked_body_over_the_limit_is_413(tmp_path) -> None:
    async def chunks():
        for _ in range(80):
            yield b"\0" * (1 << 20)

    cfg = node_config(tmp_path, "a")
    async with (
        nodes(tmp_path, cfg) as (a,),
        aiohttp.ClientSession() as http,
        http.post(f"{a.url()}/api/predict", data=chunks(), headers={"Content-Type": "application/msgpack"}) as resp,
    ):
        assert resp.status == 413 and "exceeds the limit" in (await resp.json())["error"]
