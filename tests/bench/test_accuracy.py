"""Accuracy evaluation: zip safety, label mapping, the scoring math, and digits-cnn through the node's inference."""

from __future__ import annotations

import asyncio
import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes

from carml_mesh.bench.accuracy import (
    Dataset,
    Evaluations,
    Progress,
    Target,
    ZipDataset,
    ZipLimits,
    digits_path,
    evaluate,
    load_digits,
    map_classes,
    scan_folder,
    scan_zip,
    score,
    zip_folder,
)
from carml_mesh.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from carml_mesh.node.config import NodeConfig
from carml_mesh.node.node import Node

DIGIT_LABELS = tuple(str(d) for d in range(10))
MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def _zip(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> zipfile.ZipFile:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return zipfile.ZipFile(io.BytesIO(buf.getvalue()))


PNG = png_bytes(np.zeros((8, 8), dtype=np.uint8))


# --- zip safety ---------------------------------------------------------------------------------------------------


def test_a_zip_of_class_folders_is_read_and_the_rest_skipped_and_counted() -> None:
    z = _zip(
        {"3/a.png": PNG, "3/b.PNG": PNG, "digits/7/c.png": PNG, "README.txt": b"x", "7/notes.csv": b"1,2", "x.png": PNG}
    )
    scan = scan_zip(z.infolist())
    assert [(i.name, i.label) for i in scan.items] == [("3/a.png", "3"), ("3/b.PNG", "3"), ("digits/7/c.png", "7")]
    assert scan.classes == ("3", "7")
    assert scan.skipped == 3
    assert any("README.txt (not an image)" in s for s in scan.skipped_examples)
    assert any("x.png (not in a class folder)" in s for s in scan.skipped_examples)


@pytest.mark.parametrize(
    ("name", "why"),
    [("../3/a.png", "'..'"), ("3/../../etc/a.png", "'..'"), ("/abs/3/a.png", "absolute"), ("C:\\3\\a.png", "absolute")],
)
def test_path_traversal_is_refused_naming_the_entry(name: str, why: str) -> None:
    info = zipfile.ZipInfo(name)
    info.file_size = info.compress_size = 10
    with pytest.raises(BadRequest, match=why) as err:
        scan_zip([info])
    assert repr(name) in str(err.value)


def test_a_symlink_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("3/a.png", PNG)
        link = zipfile.ZipInfo("3/b.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "/etc/passwd")
    with pytest.raises(BadRequest, match=r"'3/b.png' is a symbolic link"):
        scan_zip(zipfile.ZipFile(io.BytesIO(buf.getvalue())).infolist())


def test_a_compression_bomb_is_refused() -> None:
    z = _zip({"3/a.png": PNG, "3/bomb.png": b"\0" * (8 << 20)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(PayloadTooLarge, match=r"'3/bomb.png' expands \d+ times"):
        scan_zip(z.infolist())


def test_too_many_entries_and_too_many_bytes_are_refused() -> None:
    z = _zip({f"{n % 10}/{n}.png": PNG for n in range(30)})
    with pytest.raises(PayloadTooLarge, match="30 entries; at most 20"):
        scan_zip(z.infolist(), ZipLimits(max_entries=20))
    with pytest.raises(PayloadTooLarge, match="expands to more than 1000 bytes"):
        scan_zip(z.infolist(), ZipLimits(max_total_bytes=1000))
    with pytest.raises(PayloadTooLarge, match="uncompressed; at most 10"):
        scan_zip(z.infolist(), ZipLimits(max_file_bytes=10))


def test_an_empty_dataset_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"no image in a class folder.*2 file"):
        scan_zip(_zip({"a.txt": b"", "3/b.txt": b""}).infolist())


def test_a_lying_entry_size_is_caught_when_read(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("3/a.png", PNG)
    raw = bytearray(path.read_bytes())
    # the central directory's uncompressed size of the only entry, made larger than the bytes stored
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (len(PNG) + 5).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    dataset = ZipDataset(path, name="d.zip")
    try:
        with pytest.raises(BadRequest, match=r"3/a\.png"):
            dataset.read([0])
    finally:
        dataset.close()


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "d.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(BadRequest, match="not a readable zip"):
        ZipDataset(path, name="d.zip")


def test_a_folder_is_scanned_like_a_zip_and_zipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "cat" / "a.png").write_bytes(PNG)
    (root / "dog" / "b.jpg").write_bytes(PNG)
    (root / "dog" / "notes.txt").write_text("x")
    (root / "dog" / "link.png").symlink_to(root / "cat" / "a.png")
    scan = scan_folder(root)
    assert [(i.name, i.label) for i in scan.items] == [("cat/a.png", "cat"), ("dog/b.jpg", "dog")]
    assert scan.skipped == 2 and any("symbolic link" in s for s in scan.skipped_examples)
    out = tmp_path / "data.zip"
    zip_folder(root, out)
    dataset = ZipDataset(out, name="data.zip", owns_file=True)
    assert dataset.classes == ("cat", "dog") and len(dataset) == 2
    assert dataset.read([1])["images"] == (PNG,)
    dataset.close()
    assert not out.exists()


# --- label mapping ------------------------------------------------------------------------------------------------


def test_class_folders_map_to_labels_exactly_case_insensitively_by_index_or_alias() -> None:
    labels = ("tench, Tinca tinca", "goldfish", "Great white shark", "tabby, tabby cat")
    assert map_classes(["goldfish", "great WHITE shark", "0", "tabby cat", "TABBY"], labels) == {
        "goldfish": 1,
        "great WHITE shark": 2,
        "0": 0,
        "tabby cat": 3,
        "TABBY": 3,
    }
    assert map_classes(DIGIT_LABELS, DIGIT_LABELS) == {str(d): d for d in range(10)}


def test_unmatched_class_folders_are_listed() -> None:
    with pytest.raises(BadRequest, match=r"2 class folder\(s\) match no label.*'cat', '12'"):
        map_classes(["3", "cat", "12"], DIGIT_LABELS)


# --- scoring ------------------------------------------------------------------------------------------------------


def test_scoring_on_synthetic_predictions() -> None:
    labels = ("a", "b", "c")
    truth = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    topk = np.array(
        [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],  # a taken for b, right at rank 2
            [2, 1, 0],  # a taken for c, right at rank 3
            [1, 0, 2],
            [0, 1, 2],  # b taken for a
            [1, 2, 0],  # c taken for b
            [1, 0, 2],  # c taken for b
        ]
    )
    figures = score(truth, topk, labels)
    assert figures["images"] == 8
    assert figures["top1"] == pytest.approx(3 / 8)
    assert figures["top5"] == pytest.approx(1.0)  # every truth is within the (three) ranked classes
    assert figures["per_class"]["a"] == {"index": 0, "images": 4, "top1": 0.5, "top5": 1.0}
    assert figures["per_class"]["c"]["top1"] == 0.0
    assert [(c["true"], c["predicted"], c["count"]) for c in figures["confusions"]] == [
        ("c", "b", 2),
        ("a", "b", 1),
        ("a", "c", 1),
        ("b", "a", 1),
    ]
    assert figures["confusion"]["matrix"] == [[2, 1, 1, 0], [1, 1, 0, 0], [0, 2, 0, 0]]


def test_scoring_counts_predictions_outside_the_dataset_classes() -> None:
    labels = tuple(str(n) for n in range(10))
    figures = score(np.array([3, 3, 5]), np.array([[3], [9], [5]]), labels)
    assert figures["top1"] == pytest.approx(2 / 3)
    assert figures["top5"] is None  # one ranked class only: no top-5 to tell
    assert figures["confusion"]["labels"] == ["3", "5"]
    assert figures["confusion"]["matrix"] == [[1, 0, 1], [0, 1, 0]]  # the last column: another label
    assert figures["confusions"] == [{"true": "3", "predicted": "9", "count": 1, "fraction_of_true": 0.5}]


def test_at_most_twenty_confusions_most_first() -> None:
    labels = tuple(str(n) for n in range(30))
    truth = np.array([t for t in range(30) for _ in range(t + 1)])
    predicted = (truth + 1) % 30
    figures = score(truth, predicted[:, None], labels)
    counts = [c["count"] for c in figures["confusions"]]
    assert len(counts) == 20 and counts == sorted(counts, reverse=True) and counts[0] == 30


# --- the evaluator through the node -------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["onnxruntime", "pytorch"])
async def test_digits_accuracy_through_the_nodes_inference(node, framework: str) -> None:
    model = node.catalog.get("digits-cnn")
    dataset = load_digits(digits_path(model))
    progress = Progress()
    figures = await evaluate(
        node.routed.predict,
        dataset,
        Target("digits-cnn", framework=framework),
        map_classes(dataset.classes, model.labels),
        model.labels,
        progress=progress,
    )
    assert len(dataset) == 450 and progress.done == progress.total == 450
    assert figures["images"] == 450 and figures["failed"] == 0
    assert figures["top1"] >= 0.95, figures["top1"]
    assert figures["top1"] == pytest.approx(float(model.manifest.attributes["heldout_accuracy"]), abs=5e-5)
    assert figures["top5"] >= figures["top1"] and figures["top5"] > 0.99
    assert figures["served"]["framework"] == framework
    assert sum(c["images"] for c in figures["per_class"].values()) == 450
    wrong = 450 - figures["correct_top1"]
    assert sum(c["count"] for c in figures["confusions"]) <= wrong
    assert sum(sum(r) for r in figures["confusion"]["matrix"]) == 450


class _Images(Dataset):
    """Six digits as PNGs, the last one not an image at all."""

    def __init__(self, x: np.ndarray, labels: tuple[str, ...]) -> None:
        self.name = "six"
        self.images = [png_bytes(np.rint(x[n, 0] * 255 / 16).astype(np.uint8)) for n in range(5)] + [b"\x89PNG no"]
        self.labels = labels[:6]
        self.classes = tuple(sorted(set(self.labels)))
        self.names = tuple(f"six[{n}]" for n in range(6))

    def read(self, indices):
        return {"images": tuple(self.images[i] for i in indices)}


async def test_an_undecodable_image_fails_alone(node) -> None:
    model = node.catalog.get("digits-cnn")
    digits = load_digits(digits_path(model))
    dataset = _Images(digits.x, digits.labels)
    figures = await evaluate(
        node.routed.predict, dataset, Target("digits-cnn"), map_classes(dataset.classes, model.labels), model.labels
    )
    assert figures["images"] == 5 and figures["failed"] == 1
    assert figures["failed_examples"][0].startswith("six[5]: "), figures["failed_examples"]
    assert figures["top1"] == 1.0


async def test_the_manager_refuses_what_it_cannot_run_and_cancels(node) -> None:
    evaluations: Evaluations = node.evaluations
    digits = await evaluations.open_digits(node.catalog.get("digits-cnn"))
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        await evaluations.start(Target("nope"), digits)
    digits = await evaluations.open_digits(node.catalog.get("digits-cnn"))
    with pytest.raises(NotFound, match="no tensorflow artifact"):
        await evaluations.start(Target("digits-cnn", framework="tensorflow"), digits)
    with pytest.raises(BadRequest, match="dataset 'digits' holds 8x8 grey digits"):
        await evaluations.open_digits(node.catalog.get("efficientnet-lite0"))
    # bounded: the third at once is refused; a cancelled one says so
    started = [
        await evaluations.start(Target("digits-cnn"), await evaluations.open_digits(node.catalog.get("digits-cnn")))
        for _ in range(evaluations.max_running)
    ]
    with pytest.raises(Conflict, match="evaluations are running"):
        await evaluations.start(Target("digits-cnn"), await evaluations.open_digits(node.catalog.get("digits-cnn")))
    for s in started:
        cancelled = await evaluations.cancel(s["id"])
        assert cancelled is not None
        assert cancelled["status"] in ("cancelled", "done")
    doc = await evaluations.get(started[0]["id"])
    assert doc is not None and doc["status"] in ("cancelled", "done")
    assert await evaluations.get("0" * 32) is None
    await asyncio.sleep(0)


async def test_a_stopping_node_cancels_its_evaluations_and_a_restart_closes_stale_ones(tmp_path: Path) -> None:
    config = NodeConfig(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path / "n",
        manifests_dirs=(MANIFESTS,),
        preload=False,
        executor="local",
        gossip=False,
    )
    async with Node(config) as node:
        evaluations: Evaluations = node.evaluations
        digits = await evaluations.open_digits(node.catalog.get("digits-cnn"))
        started = await evaluations.start(Target("digits-cnn"), digits, batch_size=1)
        task = evaluations._running[started["id"]].task
        await evaluations.db.run(
            lambda c: c.execute(  # as a killed node leaves it
                "INSERT INTO evaluations (id, created_at, status, model, config, dataset) VALUES (?, 0, 'running', "
                "'digits-cnn', '{}', '{\"images\": 3}')",
                ("f" * 32,),
            )
        )
    assert task is not None and task.done()
    async with Node(config) as node:
        stopped = await node.evaluations.get(started["id"])
        assert stopped is not None and stopped["status"] == "cancelled" and stopped["error"] == "the node stopped"
        stale = await node.evaluations.get("f" * 32)
        assert stale is not None and stale["status"] == "failed" and "stopped during" in stale["error"]
