"""Probabilities and top-k: numerically stable transforms, deterministic ranking."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from carml_mesh.exec.worker.postprocess import TRANSFORMS, sigmoid, softmax, top_k


def test_softmax_matches_the_definition() -> None:
    logits = np.array([1.0, 2.0, 3.0])
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(softmax(logits), expected, rtol=1e-12)
    assert softmax(logits).dtype == np.float64


def test_softmax_rows_sum_to_one_along_the_last_axis() -> None:
    logits = np.random.default_rng(3).normal(size=(4, 10)).astype(np.float32)
    probs = softmax(logits)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(probs[2], softmax(logits[2]), rtol=1e-12)  # rows are independent


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = softmax(np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]], dtype=np.float32))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0], [1.0, 0.0, 0.0], atol=1e-300)
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, rtol=1e-12)


def test_softmax_is_shift_invariant() -> None:
    logits = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(softmax(logits), softmax(logits + 1000.0), rtol=1e-12)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-1e6, 1e6)))
def test_softmax_is_a_distribution(logits: np.ndarray) -> None:
    probs = softmax(logits)
    assert np.all(probs >= 0) and np.all(probs <= 1)
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-9)
    assert probs[np.argmax(logits)] == probs.max()  # the largest logit has the largest probability


def test_sigmoid_values() -> None:
    x = np.array([-3.0, -1.0, 0.0, 0.5, 4.0])
    np.testing.assert_allclose(sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-12)
    assert sigmoid(np.array([0.0]))[0] == 0.5
    assert sigmoid(np.array([1, 2], dtype=np.int32)).dtype == np.float64


def test_sigmoid_is_symmetric() -> None:
    x = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(sigmoid(x) + sigmoid(-x), 1.0, rtol=1e-12)


def test_sigmoid_of_huge_logits_neither_overflows_nor_warns() -> None:
    # filterwarnings=error: an overflow in exp would fail this test
    out = sigmoid(np.array([-1e4, -1000.0, 1000.0, 1e4], dtype=np.float32))
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_transforms_table() -> None:
    logits = np.array([1.0, 3.0], dtype=np.float32)
    assert set(TRANSFORMS) == {"softmax", "sigmoid", "none"}
    np.testing.assert_array_equal(TRANSFORMS["softmax"](logits), softmax(logits))
    np.testing.assert_array_equal(TRANSFORMS["sigmoid"](logits), sigmoid(logits))
    raw = TRANSFORMS["none"](logits)
    assert raw.dtype == np.float64 and raw.tolist() == [1.0, 3.0]


def test_top_k_order() -> None:
    scores = np.array([0.1, 0.5, 0.05, 0.3, 0.05])
    assert top_k(scores, 3) == [(1, 0.5), (3, 0.3), (0, 0.1)]
    assert top_k(scores, 1) == [(1, 0.5)]
    result = top_k(scores, 2)
    assert all(type(i) is int and type(p) is float for i, p in result)


def test_top_k_ties_go_to_the_lower_index() -> None:
    assert top_k(np.array([0.2, 0.4, 0.4, 0.2]), 4) == [(1, 0.4), (2, 0.4), (0, 0.2), (3, 0.2)]
    # with many equal scores, the k chosen must be the first k, not whichever a partition happens to pick
    assert [i for i, _ in top_k(np.zeros(1000), 3)] == [0, 1, 2]
    scores = np.tile([0.0, 1.0, 1.0, 1.0, 1.0], 200)
    assert [i for i, _ in top_k(scores, 4)] == [1, 2, 3, 4]


def test_top_k_larger_than_the_row_clamps() -> None:
    scores = np.array([0.1, 0.7, 0.2])
    assert top_k(scores, 10) == [(1, 0.7), (2, 0.2), (0, 0.1)]
    assert top_k(scores, 0) == [(1, 0.7)]
    assert top_k(scores, -5) == [(1, 0.7)]


def test_top_k_flattens_a_row_with_extra_dimensions() -> None:
    assert top_k(np.array([[0.1], [0.9], [0.0]]), 2) == [(1, 0.9), (0, 0.1)]


@settings(max_examples=100, deadline=None)
@given(
    scores=hnp.arrays(np.float64, st.integers(1, 40), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    k=st.integers(1, 50),
)
def test_top_k_equals_a_stable_full_sort(scores: np.ndarray, k: int) -> None:
    expected = sorted(range(scores.size), key=lambda i: (-scores[i], i))[:k]
    assert [i for i, _ in top_k(scores, k)] == expected


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_of_softmax_probabilities(k: int) -> None:
    logits = np.arange(10, dtype=np.float32)
    result = top_k(softmax(logits), k)
    assert [i for i, _ in result] == list(range(9, 9 - k, -1))
    assert all(a[1] > b[1] for a, b in itertools.pairwise(result))
