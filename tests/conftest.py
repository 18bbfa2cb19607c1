"""Shared fixtures: the demo artifacts, a real node on 127.0.0.1 with real workers, an HTTP client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "build" / "models"
MANIFESTS = REPO / "manifests"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The demo artifacts; built here when a developer runs pytest before scripts/setup (idempotent, cached)."""
    if not (MODELS / ".stamp").exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_models.py"), "--out", str(MODELS)], check=True)
    return MODELS


@pytest.fixture(scope="session")
def cat_jpeg(models_dir: Path) -> bytes:
    return (models_dir / "samples" / "chelsea.jpg").read_bytes()


@pytest.fixture(scope="session")
def digits_heldout(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(models_dir / "digits-cnn" / "heldout.npz")
    return data["X"].astype(np.float32), data["y"]


@pytest_asyncio.fixture(scope="session")
async def node(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Node]:
    config = NodeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path_factory.mktemp("node-data"),
        manifests_dirs=(MANIFESTS,),
        samples_dir=models_dir / "samples",
        name="test-node",
        max_body_bytes=8 << 20,
        max_image_pixels=30_000_000,
        executor="local",  # the Docker executor has its own tests
        gossip_port=0,
        mdns=False,  # mDNS only ever inside the tests' own network namespaces
    )
    async with Node(config) as running:
        await running.wait_ready()
        yield running


@pytest_asyncio.fixture(scope="session")
async def http(node: Node) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=node.url()) as session:
        yield session
