"""The content-addressed artifact store: digests, read-only objects, refusals that leave nothing behind, the index."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from carml_mesh.errors import ArtifactError, ArtifactMismatch, ArtifactTooLarge
from carml_mesh.store.artifacts import CHUNK, ArtifactStore, sha256_file


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"model weights \x00\x01\x02" * 100)
    return path


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def index_of(store: ArtifactStore) -> dict[str, str]:
    return json.loads((store.root / "index.json").read_text())


def index_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def test_new_store_creates_its_folders(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a" / "b")
    assert store.objects.is_dir() and store.tmp.is_dir()
    assert store.objects == tmp_path / "a" / "b" / "sha256"


def test_import_returns_sha256_and_stores_a_read_only_object_named_by_it(store: ArtifactStore, source: Path) -> None:
    digest = store.import_file(source)
    assert digest == digest_of(source)
    obj = store.path(digest)
    assert obj == store.objects / digest
    assert obj.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(obj.stat().st_mode) == 0o444
    assert store.has(digest)
    assert [p.name for p in store.objects.iterdir()] == [digest]
    assert list(store.tmp.iterdir()) == []
    assert source.exists()  # copied, not moved


def test_import_with_matching_expected_digest(store: ArtifactStore, source: Path) -> None:
    assert store.import_file(source, expected=digest_of(source)) == digest_of(source)


@pytest.mark.parametrize("size", [0, CHUNK, CHUNK * 2 + 123])
def test_digest_of_empty_and_multi_chunk_files(store: ArtifactStore, tmp_path: Path, size: int) -> None:
    path = tmp_path / f"f{size}"
    path.write_bytes(bytes(i % 251 for i in range(size)))
    digest = store.import_file(path)
    assert digest == digest_of(path) == sha256_file(path)
    assert store.path(digest).stat().st_size == size
    assert store.verify(digest)


def test_wrong_expected_digest_is_refused_and_leaves_nothing(store: ArtifactStore, source: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ArtifactError) as info:
        store.import_file(source, expected=wrong)
    message = str(info.value)
    assert str(source) in message
    assert digest_of(source) in message and wrong in message
    assert list(store.objects.iterdir()) == []
    assert list(store.tmp.iterdir()) == []
    assert not (store.root / "index.json").exists()
    assert not store.has(digest_of(source))


def test_wrong_expected_digest_after_a_good_import_is_still_refused(store: ArtifactStore, source: Path) -> None:
    good = store.import_file(source)
    with pytest.raises(ArtifactError, match="the manifest says " + "f" * 64):
        store.import_file(source, expected="f" * 64)  # the index knows the file, but not with this digest
    assert [p.name for p in store.objects.iterdir()] == [good]
    assert list(store.tmp.iterdir()) == []


def test_missing_source_names_the_path(store: ArtifactStore, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(ArtifactError, match="not readable") as info:
        store.import_file(missing)
    assert str(missing) in str(info.value)
    assert list(store.objects.iterdir()) == []


def test_folder_as_source_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="is not a file") as info:
        store.import_file(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_index_records_path_size_and_mtime(store: ArtifactStore, source: Path) -> None:
    digest = store.import_file(source)
    assert index_of(store) == {index_key(source): digest}
    # a second store on the same root reads the index back
    assert ArtifactStore(store.root)._index == {index_key(source): digest}


def test_reimport_of_an_unchanged_file_trusts_the_index(store: ArtifactStore, source: Path) -> None:
    digest = store.import_file(source)
    before = source.stat()
    # Same size, same mtime, different bytes: only a store that trusts its index (and does not re-hash) returns
    # the old digest.
    data = bytearray(source.read_bytes())
    data[0] ^= 0xFF
    source.write_bytes(bytes(data))
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert index_key(source) in index_of(store)
    assert store.import_file(source) == digest
    assert ArtifactStore(store.root).import_file(source) == digest  # the index survives a restart


def test_modified_source_gives_the_new_digest(store: ArtifactStore, source: Path) -> None:
    old = store.import_file(source)
    before = source.stat()
    source.write_bytes(source.read_bytes() + b"more")
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    new = store.import_file(source)
    assert new == digest_of(source) != old
    assert store.has(old) and store.has(new)
    assert index_of(store)[index_key(source)] == new


def test_index_entry_whose_object_vanished_is_imported_again(store: ArtifactStore, source: Path) -> None:
    digest = store.import_file(source)
    store.path(digest).unlink()
    assert store.import_file(source) == digest
    assert store.verify(digest)


def test_same_content_from_two_paths_is_stored_once(store: ArtifactStore, source: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(source.read_bytes())
    assert store.import_file(source) == store.import_file(copy)
    assert len(list(store.objects.iterdir())) == 1
    assert len(index_of(store)) == 2


def test_corrupt_index_is_ignored(tmp_path: Path, source: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    for text in ("{not json", "[1, 2]", '"x"'):
        (root / "index.json").write_text(text)
        store = ArtifactStore(root)
        assert store._index == {}
        assert store.import_file(source) == digest_of(source)


def test_verify_detects_a_tampered_object(store: ArtifactStore, source: Path) -> None:
    digest = store.import_file(source)
    assert store.verify(digest)
    obj = store.path(digest)
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:-1] + b"X")
    assert not store.verify(digest)


def test_verify_detects_a_truncated_object(store: ArtifactStore, source: Path) -> None:
    digest = store.import_file(source)
    obj = store.path(digest)
    obj.chmod(0o644)
    with obj.open("r+b") as f:
        f.truncate(10)
    assert not store.verify(digest)


def test_verify_and_has_of_an_unknown_digest(store: ArtifactStore) -> None:
    assert not store.verify("a" * 64)
    assert not store.has("a" * 64)


def test_clear_tmp_empties_the_tmp_folder(store: ArtifactStore) -> None:
    (store.tmp / "import-leftover").write_bytes(b"partial")
    store.clear_tmp()
    assert store.tmp.is_dir()
    assert list(store.tmp.iterdir()) == []


# --- streaming in: uploads and peers' artifacts -------------------------------------------------------------------


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def contents(store: ArtifactStore) -> tuple[list[str], list[str]]:
    return sorted(os.listdir(store.tmp)), sorted(os.listdir(store.objects))


async def test_import_stream_hashes_and_renames_into_place(store: ArtifactStore) -> None:
    data = os.urandom(3 * CHUNK + 17)  # several buffered writes and a tail
    digest = hashlib.sha256(data).hexdigest()
    assert await store.import_stream(chunks_of(data, 70_000), expected=digest, limit=len(data)) == digest
    assert store.path(digest).read_bytes() == data
    assert stat.S_IMODE(store.path(digest).stat().st_mode) == 0o444
    assert contents(store) == ([], [digest])
    assert await store.import_stream(chunks_of(data)) == digest  # again: the same object, nothing else
    assert contents(store) == ([], [digest])


async def test_import_stream_refuses_a_wrong_digest_and_keeps_nothing(store: ArtifactStore) -> None:
    data = b"weights" * 1000
    with pytest.raises(ArtifactMismatch) as info:
        await store.import_stream(chunks_of(data), expected="0" * 64, label="artifact.onnxruntime")
    assert info.value.actual == hashlib.sha256(data).hexdigest() and info.value.expected == "0" * 64
    assert str(info.value).startswith("artifact.onnxruntime has sha256 ")
    assert contents(store) == ([], [])


@pytest.mark.parametrize("size", [1001, CHUNK + 1, 3 * CHUNK])
async def test_import_stream_stops_at_the_limit_and_keeps_nothing(store: ArtifactStore, size: int) -> None:
    with pytest.raises(ArtifactTooLarge, match="exceeds the limit of 1000 bytes"):
        await store.import_stream(chunks_of(b"x" * size, 999), limit=1000)
    assert contents(store) == ([], [])
    assert await store.import_stream(chunks_of(b"x" * 1000), limit=1000)  # exactly the limit is fine


async def test_a_failing_or_cancelled_stream_keeps_nothing(store: ArtifactStore) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * CHUNK * 2
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        await store.import_stream(broken())
    assert contents(store) == ([], [])

    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            started.set()
            yield b"b" * 65536
            await asyncio.sleep(0)

    task = asyncio.ensure_future(store.import_stream(endless()))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert contents(store) == ([], [])


def test_an_ingest_is_committed_only_once_checked(store: ArtifactStore) -> None:
    with store.ingest(label="a") as first, store.ingest(label="b") as second:
        first.write(b"one")
        second.write(b"two")
        assert len(os.listdir(store.tmp)) == 2
        first.finish(hashlib.sha256(b"one").hexdigest())
        first.commit()
    # the second was never committed: leaving the block removed it
    assert contents(store) == ([], [hashlib.sha256(b"one").hexdigest()])
    with store.ingest() as ingest:
        ingest.write(b"x")
        ingest.finish()
        with pytest.raises(ArtifactError, match="written to after it was finished"):
            ingest.write(b"y")
