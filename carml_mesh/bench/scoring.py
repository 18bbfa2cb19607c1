"""Pure accuracy math: dataset classes mapped to a model's labels, and the figures from true and predicted indices
(top-1, top-5, per class, the classes it confuses, the confusion matrix)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import BadRequest

MAX_CONFUSIONS = 20
MAX_MATRIX_CLASSES = 100  # the full confusion matrix is kept for datasets of at most this many classes


def map_classes(classes: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    """Each dataset class -> the model's label index: exact name, then case-insensitive, then an integer index, then
    one of a label's comma-separated names; BadRequest lists every class that matches none (or several)."""
    exact = {label: n for n, label in enumerate(labels)}
    folded: dict[str, list[int]] = {}
    aliases: dict[str, set[int]] = {}
    for n, label in enumerate(labels):
        folded.setdefault(label.casefold(), []).append(n)
        for alias in label.split(","):
            if alias.strip():
                aliases.setdefault(alias.strip().casefold(), set()).add(n)
    mapping: dict[str, int] = {}
    unmatched: list[str] = []
    for c in classes:
        key = c.strip().casefold()
        if c in exact:
            mapping[c] = exact[c]
        elif len(folded.get(key, [])) == 1:
            mapping[c] = folded[key][0]
        elif c.strip().isdecimal() and int(c) < len(labels):
            mapping[c] = int(c)
        elif len(aliases.get(key, ())) == 1:
            mapping[c] = next(iter(aliases[key]))
        else:
            unmatched.append(c)
    if unmatched:
        shown = ", ".join(repr(c) for c in unmatched[:20]) + (" ..." if len(unmatched) > 20 else "")
        example = ", ".join(repr(label) for label in labels[:5])
        raise BadRequest(
            f"{len(unmatched)} class folder(s) match no label of the model: {shown}; name folders after the model's "
            f"labels (e.g. {example}) or their index 0..{len(labels) - 1}"
        )
    return mapping


def score(truth: np.ndarray, topk: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Figures from true label indices [n] and ranked predicted indices [n, k] (k >= 1, best first)."""
    truth = np.asarray(truth, dtype=np.int64)
    topk = np.asarray(topk, dtype=np.int64).reshape(len(truth), -1)
    n = len(truth)
    if n == 0:
        return {"images": 0, "top1": None, "top5": None, "per_class": {}, "confusions": [], "confusion": None}
    first = topk[:, 0]
    hit1 = first == truth
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1

    def name(c: int) -> str:
        """The class's label, with its index when another class has the same one (ImageNet's two cranes)."""
        if not 0 <= c < len(labels):
            return str(c)
        return labels[c] if counts[labels[c]] == 1 else f"{labels[c]} ({c})"

    hit5 = (topk[:, :5] == truth[:, None]).any(axis=1)
    per_class: dict[str, dict[str, Any]] = {}
    classes = sorted(set(truth.tolist()))
    for c in classes:
        mask = truth == c
        per_class[name(c)] = {
            "index": c,
            "images": int(mask.sum()),
            "top1": float(hit1[mask].mean()),
            "top5": float(hit5[mask].mean()),
        }
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(truth.tolist(), first.tolist(), strict=True):
        if t != p:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CONFUSIONS]
    confusions = [
        {
            "true": name(t),
            "predicted": name(p),
            "count": count,
            "fraction_of_true": count / per_class[name(t)]["images"],
        }
        for (t, p), count in ranked
    ]
    confusion = None
    if len(classes) <= MAX_MATRIX_CLASSES:
        column = {c: k for k, c in enumerate(classes)}
        matrix = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)  # the last column: another label
        for t, p in zip(truth.tolist(), first.tolist(), strict=True):
            matrix[column[t], column.get(p, len(classes))] += 1
        confusion = {"labels": [name(c) for c in classes], "other_column": True, "matrix": matrix.tolist()}
    return {
        "images": n,
        "top1": float(hit1.mean()),
        "top5": float(hit5.mean()) if topk.shape[1] >= min(5, len(labels)) else None,
        "correct_top1": int(hit1.sum()),
        "per_class": per_class,
        "confusions": confusions,
        "confusion": confusion,
    }
