"""The evaluator: digits-cnn through the node's inference, and an undecodable image failing alone."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import png_bytes

from carml_mesh.bench.config import Target
from carml_mesh.bench.datasets import Dataset, digits_path, load_digits
from carml_mesh.bench.evaluator import Progress, evaluate
from carml_mesh.bench.scoring import map_classes


@pytest.mark.parametrize("framework", ["onnxruntime", "pytorch"])
async def test_digits_accuracy_through_the_nodes_inference(node, framework: str) -> None:
    model = node.catalog.get("digits-cnn")
    dataset = load_digits(digits_path(model))
    progress = Progress()
    figures = await evaluate(
        node.routed.infer,
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
        node.routed.infer, dataset, Target("digits-cnn"), map_classes(dataset.classes, model.labels), model.labels
    )
    assert figures["images"] == 5 and figures["failed"] == 1
    assert figures["failed_examples"][0].startswith("six[5]: "), figures["failed_examples"]
    assert figures["top1"] == 1.0
