"""The Docker executor on a real engine with the real worker images (scripts/docker-engine, scripts/build-images).

Skips, saying why, only where no engine or no image can be had; the README's test command provides both as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import pytest
import pytest_asyncio
from helpers import CAT_CLASSES

from carml_mesh.exec.docker import LABEL_NODE, DockerConfig
from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("carml-worker:onnxruntime-cpu", "carml-worker:pytorch-cpu")


async def _engine_problem() -> str | None:
    url = os.environ.get("DOCKER_HOST")
    if url is None and not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine: DOCKER_HOST is unset and /var/run/docker.sock is absent (scripts/docker-engine)"
    try:
        async with aiodocker.Docker(url=url) as docker:
            await docker.version()
            for image in IMAGES:
                try:
                    await docker.images.inspect(image)
                except aiodocker.DockerError:
                    return f"worker image {image} is missing (scripts/build-images)"
    except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError, AssertionError) as exc:
        return f"the Docker engine at {url or 'the default socket'} does not answer: {exc}"
    return None


@pytest_asyncio.fixture(scope="module")
async def engine() -> AsyncIterator[aiodocker.Docker]:
    problem = await _engine_problem()
    if problem:
        pytest.skip(problem)
    async with aiodocker.Docker(url=os.environ.get("DOCKER_HOST")) as docker:
        yield docker


async def ours(docker: aiodocker.Docker, node_id: str) -> list[dict]:
    containers = await docker.containers.list(all=True, filters={"label": [f"{LABEL_NODE}={node_id}"]})
    return [await c.show() for c in containers]


def node_config(tmp: Path, models_dir: Path, **kw) -> NodeConfig:
    return NodeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp / "data",
        manifests_dirs=(REPO / "manifests",),
        samples_dir=models_dir / "samples",
        name="docker-node",
        executor="docker",
        gossip=False,
        docker_memory_bytes=2 << 30,
        **kw,
    )


@contextlib.asynccontextmanager
async def running(config: NodeConfig) -> AsyncIterator[tuple[Node, aiohttp.ClientSession]]:
    async with Node(config) as node:
        await node.wait_ready()
        async with aiohttp.ClientSession(base_url=node.url()) as http:
            yield node, http


async def predict(http: aiohttp.ClientSession, jpeg: bytes, framework: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    form.add_field("model", "efficientnet-lite0")
    form.add_field("framework", framework)
    form.add_field("image", jpeg, filename="cat.jpg")
    async with http.post("/api/predict", data=form) as resp:
        return resp.status, await resp.json()


async def test_warm_containers_classify_the_cat_sandboxed(engine, models_dir, cat_jpeg, tmp_path) -> None:
    async with running(node_config(tmp_path, models_dir)) as (node, http):
        info = node.info()
        assert info["executor"] == "docker"
        assert info["images"]["onnxruntime/cpu"]["image"] == "carml-worker:onnxruntime-cpu"
        assert node.card()[1]["images"]["pytorch/cpu"]["version"].startswith("2.13.0")  # advertised to the mesh
        for framework in ("onnxruntime", "pytorch"):
            status, doc = await predict(http, cat_jpeg, framework)
            assert status == 200, doc
            assert doc["results"][0]["predictions"][0]["index"] in CAT_CLASSES
        containers = await ours(engine, node.id)
        assert len(containers) == 2  # warm: one per (image, device), both models loaded in each
        for c in containers:
            host = c["HostConfig"]
            assert c["State"]["Running"]
            assert host["NetworkMode"] == "none"
            assert host["ReadonlyRootfs"] is True
            assert c["Config"]["User"] == "10001:10001"
            assert host["CapDrop"] == ["ALL"]
            assert "no-new-privileges" in host["SecurityOpt"]
            assert host["Memory"] == 2 << 30 and host["PidsLimit"] > 0
            assert "/tmp" in host["Tmpfs"]
            mounts = {m["Destination"]: m for m in c["Mounts"]}
            assert mounts["/models"]["RW"] is False and mounts["/run/carml"]["RW"] is True
        # the sandbox really holds: the worker cannot write its root or reach a network
        proc = await engine.containers.get(containers[0]["Id"])
        exec_ = await proc.exec(
            [
                "/opt/venv/bin/python",
                "-c",
                "import socket,os\n"
                "try:\n open('/etc/x','w')\nexcept OSError as e: print('ro', e.errno)\n"
                "print('ifaces', sorted(n for i, n in socket.if_nameindex()))\n"
                "print('uid', os.getuid())",
            ]
        )
        chunks = []
        async with exec_.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                chunks.append(message.data.decode())
        out = "".join(chunks)
        assert "ro 30" in out  # EROFS
        assert "ifaces ['lo']" in out and "uid 10001" in out
    assert await ours(engine, node.id) == []  # nothing left after shutdown


async def test_cold_mode_runs_a_container_per_request(engine, models_dir, cat_jpeg, tmp_path) -> None:
    async with running(node_config(tmp_path, models_dir, docker_mode="cold", preload=False)) as (node, http):
        status, doc = await predict(http, cat_jpeg, "onnxruntime")
        assert status == 200, doc
        assert doc["results"][0]["predictions"][0]["index"] in CAT_CLASSES
        assert doc["timings_ms"]["load"] > 0  # every cold request loads the model
        assert await ours(engine, node.id) == []  # and its container is gone already
        assert node.executor.statistics()["cold_runs"] == 1


async def test_a_killed_container_fails_in_flight_and_recovers(engine, models_dir, cat_jpeg, tmp_path) -> None:
    async with running(node_config(tmp_path, models_dir)) as (node, http):
        (onnx,) = [
            c for c in await ours(engine, node.id) if c["Config"]["Labels"]["org.carml.framework"] == "onnxruntime"
        ]
        in_flight = [asyncio.ensure_future(predict(http, cat_jpeg, "onnxruntime")) for _ in range(8)]
        await asyncio.sleep(0.05)
        await (await engine.containers.get(onnx["Id"])).kill()
        outcomes = await asyncio.gather(*in_flight)
        statuses = {s for s, _ in outcomes}
        assert statuses <= {200, 503}
        for status, doc in outcomes:
            if status == 503:
                assert "died" in doc["error"]
        status, doc = await predict(http, cat_jpeg, "onnxruntime")
        assert status == 200, doc  # a new container, the model reloaded
        running_ids = [c["Id"] for c in await ours(engine, node.id) if c["State"]["Running"]]
        assert onnx["Id"] not in running_ids


async def test_containers_of_a_killed_node_are_removed_at_its_restart(engine, models_dir, tmp_path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "carml_mesh.node",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--manifests",
        str(REPO / "manifests"),
        "--executor",
        "docker",
        "--no-gossip",
        "--log-level",
        "WARNING",
    ]

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        node_id = ""
        for line in proc.stdout:
            if m := re.search(r"\((\w+)\) on http", line):
                node_id = m.group(1)
            if line.startswith("ready:"):
                return proc, node_id
        raise AssertionError(f"node exited with {proc.wait()}")

    first, node_id = start()
    try:
        assert len(await ours(engine, node_id)) == 2
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert len(await ours(engine, node_id)) == 2  # orphans: nobody removed them
        second, same_id = start()
        try:
            assert same_id == node_id  # the node id lives in the data dir
            after = await ours(engine, node_id)
            assert len(after) == 2 and all(c["State"]["Running"] for c in after)  # only the new ones
            second.terminate()
            assert second.wait(timeout=10) == 0
            assert await ours(engine, node_id) == []
        finally:
            if second.poll() is None:
                second.kill()
            second.stdout.close()
    finally:
        if first.poll() is None:
            first.kill()
        first.stdout.close()


def test_docker_config_names_images() -> None:
    config = DockerConfig()
    assert config.image("onnxruntime", "cpu") == "carml-worker:onnxruntime-cpu"
    assert config.image("pytorch", "cuda:1") == "carml-worker:pytorch-gpu"
