"""Turning raw outputs into answers: probabilities and the top k classes with labels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))  # 1 / (1 + e^-x), without overflow in exp


def identity(logits: np.ndarray) -> np.ndarray:
    return logits.astype(np.float64)


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"softmax": softmax, "sigmoid": sigmoid, "none": identity}


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k highest (index, score) pairs of one row, best first; ties broken by the lower index."""
    flat = scores.reshape(-1)
    k = max(1, min(k, flat.size))
    order = np.argsort(-flat, kind="stable")[:k]  # argpartition would pick arbitrary members of a tie
    return [(int(i), float(flat[i])) for i in order]
