"""Dynamic batching over a real LocalExecutor and the demo models: merged, split back exactly, failing alone."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from carml_mesh.errors import BadRequest, WorkerUnavailable
from carml_mesh.exec.base import ModelSpec
from carml_mesh.exec.batching import BatchingConfig, BatchingExecutor, merge, signature, split
from carml_mesh.exec.local import LocalExecutor, LocalExecutorConfig
from carml_mesh.exec.worker import protocol
from carml_mesh.exec.worker.main import Connection
from carml_mesh.exec.worker.protocol import decode_tensor, encode_tensor
from carml_mesh.exec.worker_process import write_frame
from carml_mesh.manifest.loader import load_manifest_dirs
from carml_mesh.node.catalog import Deployment, served_model
from carml_mesh.node.node import Node
from carml_mesh.store.artifacts import sha256_file

REPO = Path(__file__).resolve().parents[2]


def manifest_spec(models_dir: Path, name: str, **batching: Any) -> ModelSpec:
    """The model as the node's catalog describes it to an executor (its manifest's batching included)."""
    manifests, _ = load_manifest_dirs([REPO / "manifests"])
    (manifest,) = [m for m in manifests if m.name == name]
    path = models_dir / name / "model.onnx"
    digest = sha256_file(path)
    model = served_model(manifest, (), {"onnxruntime": Deployment("onnxruntime", digest, str(path))})
    spec = model.model_spec("onnxruntime", "cpu")
    if batching:
        wire = dict(spec.spec, batching={**spec.spec["batching"], **batching})
        spec = replace(spec, spec=wire)
    return spec


@pytest.fixture(scope="module")
def digits(models_dir: Path) -> ModelSpec:
    # a long delay: batches form from whatever is queued while the worker is busy, whatever this machine's speed
    return manifest_spec(models_dir, "digits-cnn", max_queue_delay_ms=500.0)


@pytest.fixture(scope="module")
def digit_pngs(models_dir: Path) -> list[bytes]:
    return [(models_dir / "samples" / f"digit-{d}.png").read_bytes() for d in range(10)]


@pytest_asyncio.fixture
async def inner(tmp_path: Path) -> AsyncIterator[LocalExecutor]:
    async with LocalExecutor(tmp_path, LocalExecutorConfig(threads=1)) as executor:
        yield executor


@pytest_asyncio.fixture
async def batcher(inner: LocalExecutor) -> AsyncIterator[Callable[..., BatchingExecutor]]:
    """Batching executors around ``inner``, closed (with it) after the test."""
    made: list[BatchingExecutor] = []

    def make(**kwargs: Any) -> BatchingExecutor:
        made.append(BatchingExecutor(inner, **kwargs))
        return made[-1]

    yield make
    for executor in made:
        await executor.aclose()


def tensors(x: np.ndarray) -> dict[str, Any]:
    return {"input": encode_tensor(x)}


def test_the_catalog_carries_the_manifests_batching(models_dir: Path) -> None:
    assert BatchingConfig.from_spec(manifest_spec(models_dir, "digits-cnn").spec) == BatchingConfig(64, 1.0)
    assert BatchingConfig.from_spec(manifest_spec(models_dir, "efficientnet-lite0").spec) == BatchingConfig(16, 2.0)
    assert BatchingConfig.from_spec({"inputs": []}) == BatchingConfig(1, 0.0)
    spec = {"batching": {"max_batch_size": 8, "max_queue_delay_ms": 3}}
    assert BatchingConfig.from_spec(spec, max_queue_delay_ms=0.5) == BatchingConfig(8, 0.5)


def test_merge_and_split_are_exact() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 1, 8, 8)).astype(np.float32) for n in (1, 3, 2)]
    messages = [{"tensors": tensors(p)} for p in parts]
    assert len({signature(m)[0] for m in messages}) == 1  # type: ignore[index]
    merged = merge(messages)
    np.testing.assert_array_equal(decode_tensor(merged["tensors"]["input"]), np.concatenate(parts))
    out = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    reply = {
        "ok": True,
        "outputs": {"logits": encode_tensor(out)},
        "timings": {"queue": 1.0, "compute": 2.0, "decode": [1, 2, 3, 4, 5, 6]},
        "received_unix_ns": 7,
    }
    one, three, two = split(reply, [1, 3, 2])
    np.testing.assert_array_equal(decode_tensor(three["outputs"]["logits"]), out[1:4])
    np.testing.assert_array_equal(decode_tensor(two["outputs"]["logits"]), out[4:])
    assert three["timings"] == {"queue": 1.0, "compute": 2.0, "decode": [2, 3, 4]}
    assert one["received_unix_ns"] == 7 and one["ok"]
    # what may not merge: another dtype, row shape, option or kind
    base = signature({"tensors": tensors(parts[0]), "top_k": 3})
    assert base is not None and base[1] == 1
    for other in (
        {"tensors": tensors(parts[0].astype(np.float64)), "top_k": 3},
        {"tensors": tensors(parts[0].reshape(1, 8, 8, 1)), "top_k": 3},
        {"tensors": tensors(parts[0]), "top_k": 1},
        {"tensors": tensors(parts[0]), "top_k": 3, "outputs": ["logits"]},
        {"images": [b"png"], "top_k": 3},
    ):
        found = signature(other)
        assert found is not None and found[0] != base[0], other
    # malformed requests are not merged (the worker answers them alone, with its own error)
    assert signature({"tensors": {"input": {"dtype": "float32", "shape": [2, 8], "data": b"\0" * 7}}}) is None
    assert signature({"images": []}) is None


async def test_concurrent_requests_get_exactly_their_own_results(inner, batcher, digits, digits_heldout) -> None:
    x, _ = digits_heldout
    sizes = [1, 5, 2, 7, 1, 3, 4, 1, 6, 2, 3, 1]
    starts = np.cumsum([0, *sizes[:-1]])
    requests = [{"tensors": tensors(x[s : s + n])} for s, n in zip(starts, sizes, strict=True)]
    # unbatched: one input at a time, straight to the worker
    expected = [
        decode_tensor((await inner.infer(digits, {"tensors": tensors(x[i : i + 1])}, timeout=30))["outputs"]["logits"])
        for i in range(sum(sizes))
    ]
    batching = batcher(pool=1)  # one batch at a time: all that queued behind the first leaves as one batch
    replies = await asyncio.gather(*(batching.infer(digits, r, timeout=30) for r in requests))
    for s, n, reply in zip(starts, sizes, replies, strict=True):
        logits = decode_tensor(reply["outputs"]["logits"])
        assert logits.shape == (n, 10)
        np.testing.assert_allclose(logits, np.concatenate(expected[s : s + n]), rtol=1e-5, atol=1e-5)
        assert reply["batching"]["batch_size"] >= n and reply["timings"]["batch_wait"] == reply["batching"]["wait_ms"]
    # the first went alone at once (the worker was idle); the others queued meanwhile and merged
    assert replies[0]["batching"] | {"dispatched_unix_ns": 0} == {
        "batch_size": 1,
        "requests": 1,
        "wait_ms": 0.0,
        "dispatched_unix_ns": 0,
    }
    merged = [r["batching"] for r in replies[1:]]
    assert all(b["requests"] == len(sizes) - 1 and b["batch_size"] == sum(sizes) - 1 for b in merged), merged
    stats = batching.statistics()
    assert stats["workers"] and stats["batching"][digits.key]["requests"] == len(sizes)
    assert stats["batching"][digits.key]["calls"] == 2 and stats["batching"][digits.key]["queued"] == 0


async def test_images_split_back_per_request(inner, batcher, digits, digit_pngs) -> None:
    groups = [digit_pngs[0:1], digit_pngs[1:4], digit_pngs[4:5], digit_pngs[5:10]]
    alone = [(await inner.infer(digits, {"images": [png], "top_k": 3}, timeout=30))["results"] for png in digit_pngs]
    batching = batcher(pool=2)
    replies = await asyncio.gather(*(batching.infer(digits, {"images": g, "top_k": 3}, timeout=30) for g in groups))
    flat = [result for reply in replies for result in reply["results"]]
    assert sum(r["predictions"][0][2] == str(d) for d, r in enumerate(flat)) >= 9  # as accurate as the model
    for got, (want,) in zip(flat, alone, strict=True):
        assert [p[0] for p in got["predictions"]] == [p[0] for p in want["predictions"]]
        np.testing.assert_allclose([p[1] for p in got["predictions"]], [p[1] for p in want["predictions"]], atol=1e-6)
    for g, reply in zip(groups, replies, strict=True):
        assert len(reply["timings"]["decode"]) == len(g) == len(reply["timings"]["preprocess"])
    # the first went alone at once; the 9 inputs queued behind it leave as fair shares of the two worker slots:
    # ceil(9 / 2) = 5 inputs at most, so [3 + 1] then [5], both at once
    assert [r["batching"]["requests"] for r in replies] == [1, 2, 2, 1]
    assert [r["batching"]["batch_size"] for r in replies] == [1, 4, 4, 5]


async def test_different_options_and_kinds_do_not_merge(batcher, digits, digits_heldout, digit_pngs) -> None:
    x, _ = digits_heldout
    batching = batcher(pool=1)  # one batch at a time, so each group leaves whole
    first = {"tensors": tensors(x[:1])}
    top1 = [{"tensors": tensors(x[i : i + 2]), "top_k": 1} for i in range(3)]
    top3 = [{"tensors": tensors(x[i : i + 1]), "top_k": 3} for i in range(3)]
    raw = [{"tensors": tensors(x[i : i + 1]), "outputs": ["logits"]} for i in range(3)]
    images = [{"images": digit_pngs[i : i + 2], "top_k": 1} for i in range(3)]
    mixed = [m for group in zip(top1, top3, raw, images, strict=True) for m in group]  # interleaved in the queue
    replies = await asyncio.gather(*(batching.infer(digits, m, timeout=30) for m in [first, *mixed]))
    assert replies[0]["batching"]["requests"] == 1
    for message, reply in zip(mixed, replies[1:], strict=True):
        assert reply["batching"]["requests"] == 3  # exactly its own group of three
        if "outputs" in message:
            assert decode_tensor(reply["outputs"]["logits"]).shape == (1, 10) and "results" not in reply
            assert reply["batching"]["batch_size"] == 3
        else:
            want = len(message.get("images", [])) or decode_tensor(message["tensors"]["input"]).shape[0]
            assert len(reply["results"]) == want
            assert all(len(r["predictions"]) == message["top_k"] for r in reply["results"])
            assert reply["batching"]["batch_size"] == 3 * want


async def test_a_bad_image_fails_only_its_own_request(batcher, digits, digit_pngs) -> None:
    batching = batcher(pool=2)
    messages = [{"images": [png], "top_k": 1} for png in digit_pngs[:6]]
    messages.insert(3, {"images": [digit_pngs[7], b"this is not an image"], "top_k": 1})
    replies = await asyncio.gather(*(batching.infer(digits, m, timeout=30) for m in messages), return_exceptions=True)
    bad = replies.pop(3)
    assert isinstance(bad, BadRequest) and "input 1: cannot decode image" in str(bad)  # its own index, not the batch's
    assert [r["results"][0]["predictions"][0][2] for r in replies] == [str(d) for d in range(6)]


async def test_the_batch_limit_counts_inputs_and_never_splits_a_request(batcher, digits, digits_heldout) -> None:
    x, _ = digits_heldout
    spec = replace(digits, spec=dict(digits.spec, batching={"max_batch_size": 4, "max_queue_delay_ms": 500}))
    batching = batcher(pool=1)
    sizes = [1, 2, 2, 6, 1, 1]  # 6 > 4 runs alone; 2+2 fill a batch; 1+1 go together
    replies = await asyncio.gather(
        *(batching.infer(spec, {"tensors": tensors(x[:n]), "top_k": 1}, timeout=30) for n in sizes)
    )
    assert [len(r["results"]) for r in replies] == sizes
    assert [r["batching"]["batch_size"] for r in replies] == [1, 4, 4, 6, 2, 2]
    assert batching.statistics()["batching"][spec.key]["largest_batch"] == 6


async def test_a_cancelled_waiting_request_leaves_the_queue(batcher, digits, digits_heldout) -> None:
    x, _ = digits_heldout
    batching = batcher(pool=1)  # the others queue behind the first (a forming batch waits up to 500 ms)
    tasks = [
        asyncio.ensure_future(batching.infer(digits, {"tensors": tensors(x[i : i + 1]), "top_k": 1}, timeout=30))
        for i in range(5)
    ]
    await asyncio.sleep(0)  # all five are in: the first at the worker, four queued
    assert batching.statistics()["batching"][digits.key]["queued"] == 4
    tasks[2].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    others = [d for n, d in enumerate(done) if n != 2]
    assert all(isinstance(d, dict) and len(d["results"]) == 1 for d in others), others
    assert others[1]["batching"]["requests"] == 3  # the three still waiting, without the cancelled one
    assert batching.statistics()["batching"][digits.key]["requests"] == 4


async def test_aclose_fails_queued_requests_and_leaks_no_task(tmp_path, digits, digits_heldout) -> None:
    x, _ = digits_heldout
    batching = BatchingExecutor(LocalExecutor(tmp_path, LocalExecutorConfig(threads=1)), pool=1)
    async with batching:
        await batching.load(digits)
        assert batching.is_loaded(digits) and batching.worker_pids() and batching.kind == "local"
        tasks = [
            asyncio.ensure_future(batching.infer(digits, {"tensors": tensors(x[i : i + 1])}, timeout=30))
            for i in range(4)
        ]
        await asyncio.sleep(0)
        assert batching.in_flight() == 4
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(d, WorkerUnavailable) for d in done[1:]), done
    assert not batching.worker_pids()
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not [n for n in names if n.startswith(("batch ", "batcher "))], names
    with pytest.raises(WorkerUnavailable, match="shutting down"):
        await batching.infer(digits, {"tensors": tensors(x[:1])}, timeout=30)
    await batching.aclose()  # twice is fine


async def test_max_batch_size_one_or_off_is_a_pass_through(batcher, digits, digits_heldout) -> None:
    x, _ = digits_heldout
    unbatched = replace(digits, spec=dict(digits.spec, batching={"max_batch_size": 1, "max_queue_delay_ms": 0}))
    for batching, spec in ((batcher(), unbatched), (batcher(enabled=False), digits)):
        replies = await asyncio.gather(
            *(batching.infer(spec, {"tensors": tensors(x[i : i + 1]), "top_k": 1}, timeout=30) for i in range(6))
        )
        assert all("batching" not in r and "batch_wait" not in r["timings"] for r in replies)
        assert batching.statistics()["batching"].get(spec.key, {}).get("calls", 0) == 0


async def test_the_node_batches_predict_requests(node: Node, http: aiohttp.ClientSession, digit_pngs) -> None:
    assert isinstance(node.executor, BatchingExecutor) and node.info()["workers"]

    async def predict(d: int) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("model", "digits-cnn")
        form.add_field("image", digit_pngs[d], filename=f"{d}.png")
        async with http.post("/api/predict", data=form) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    alone = [(await predict(d))["results"][0]["predictions"] for d in range(10)]  # one at a time: never batched
    docs = await asyncio.gather(*(predict(d % 10) for d in range(30)))
    for d, doc in enumerate(docs):
        got, want = doc["results"][0]["predictions"], alone[d % 10]
        assert [p["index"] for p in got] == [p["index"] for p in want]
        np.testing.assert_allclose([p["probability"] for p in got], [p["probability"] for p in want], atol=1e-6)
    stats = node.executor.statistics()["batching"]
    (key,) = [k for k in stats if k.startswith("digits-cnn@") and "/onnxruntime/" in k]
    assert stats[key]["requests"] >= 40 and stats[key]["queued"] == 0 and stats[key]["max_batch_size"] == 64


# --- the node <-> worker framing that batched (and large) requests travel through: worker_process.write_frame and
# the worker's Connection.read, byte-compatible with protocol.pack/unpack both ways ---------------------------------


@pytest.mark.parametrize("size", [16, 64 << 10, 3 << 20])
async def test_frames_are_byte_identical_to_protocol_pack(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8).tobytes()
    message = {
        "op": "infer",
        "model": "m",
        "tensors": {"input": {"dtype": "uint8", "shape": [size], "data": data}, "b": {"data": data[:100]}},
        "images": [data, b"small", data],
        "top_k": 5,
        "outputs": ["logits", ("a", 1.5, None, True)],
        "id": 7,
    }
    expected = protocol.pack(message)
    node_side, worker_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with node_side, worker_side:
        _, writer = await asyncio.open_unix_connection(sock=node_side)
        read = asyncio.create_task(asyncio.to_thread(Connection(worker_side).read))
        write_frame(writer, message)
        await writer.drain()
        assert await read == protocol.unpack(
            expected[4:]
        )  # what the worker decodes (recv_into for a large frame, chunks for a small one)
        raw = asyncio.create_task(asyncio.to_thread(_recv_exactly, worker_side, len(expected)))
        write_frame(writer, message)
        await writer.drain()
        assert await raw == expected
        writer.close()
        await writer.wait_closed()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        assert chunk
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


async def test_views_and_merged_chunks_are_written_as_protocol_pack_writes_their_bytes() -> None:
    """A request's tensor as a memoryview (encode_tensor(view=True)) and a merged batch's tensor as Chunks (its
    requests' bytes, not joined) go on the wire exactly as protocol.pack writes the same message with bytes."""
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(3)]  # 48 KiB each
    messages = [{"tensors": {"input": encode_tensor(a, view=True)}, "top_k": 5} for a in arrays]
    assert all(isinstance(m["tensors"]["input"]["data"], memoryview) for m in messages)
    merged = merge(messages)
    chunks = merged["tensors"]["input"]["data"]
    assert isinstance(chunks, protocol.Chunks) and len(chunks) == 3 * arrays[0].nbytes  # 144 KiB: not joined
    assert all(np.shares_memory(np.frombuffer(p, np.uint8), a) for p, a in zip(chunks.parts, arrays, strict=True))
    joined = {**merged, "tensors": {"input": {**merged["tensors"]["input"], "data": chunks.join()}}, "id": 3}
    np.testing.assert_array_equal(decode_tensor(joined["tensors"]["input"]), np.concatenate(arrays))
    single = {"tensors": {"input": encode_tensor(rng.standard_normal((1, 3, 224, 224)).astype(np.float32), view=True)}}
    as_bytes = {"input": {**single["tensors"]["input"], "data": bytes(single["tensors"]["input"]["data"])}}
    cases = [
        ({**merged, "id": 3}, protocol.pack(joined)),
        ({**single, "id": 4}, protocol.pack({"tensors": as_bytes, "id": 4})),
    ]
    assert protocol.pack({**merged, "id": 3}) == cases[0][1]  # the small-frame path (pack) joins them itself
    node_side, worker_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with node_side, worker_side:
        _, writer = await asyncio.open_unix_connection(sock=node_side)
        for message, expected in cases:
            raw = asyncio.create_task(asyncio.to_thread(_recv_exactly, worker_side, len(expected)))
            write_frame(writer, message)
            await writer.drain()
            assert await raw == expected
        writer.close()
        await writer.wait_closed()


def test_small_merges_are_joined_bytes() -> None:
    a = np.ones((1, 8), np.float32)
    merged = merge([{"tensors": {"x": encode_tensor(a, view=True)}}, {"tensors": {"x": encode_tensor(a)}}])
    assert merged["tensors"]["x"]["data"] == np.ones((2, 8), np.float32).tobytes()
    assert type(merged["tensors"]["x"]["data"]) is bytes
