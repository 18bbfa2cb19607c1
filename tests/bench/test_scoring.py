"""Scoring (pure): dataset classes mapped to a model's labels, and top-1, top-5, per class and confusions."""

from __future__ import annotations

import numpy as np
import pytest

from carml_mesh.bench.scoring import map_classes, score
from carml_mesh.errors import BadRequest

DIGIT_LABELS = tuple(str(d) for d in range(10))


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


def test_a_class_folder_of_other_digits_is_refused_not_a_crash() -> None:
    # "²".isdigit() is True, int("²") raises: such a folder name is unmatched, a 400
    with pytest.raises(BadRequest, match="match no label"):
        map_classes(["²"], ["zero", "one", "two", "three"])
    assert map_classes([" 2"], ["zero", "one", "two"]) == {" 2": 2}


def test_labels_that_repeat_keep_their_classes_apart() -> None:
    # ImageNet names two classes "crane" (the bird, the machine): per class figures must not merge them
    labels = ["cat", "crane", "crane"]
    truth = np.array([1, 1, 2, 2, 2])
    ranked = np.array([[1], [2], [2], [1], [0]])
    figures = score(truth, ranked, labels)
    assert len(figures["per_class"]) == 2
    assert sorted((c["index"], c["images"]) for c in figures["per_class"].values()) == [(1, 2), (2, 3)]
    for c in figures["confusions"]:
        assert c["count"] <= figures["per_class"][c["true"]]["images"]
    assert sum(c["count"] for c in figures["confusions"]) == 3
