"""Per-operator profiles of one run, as the worker returns them: from onnxruntime's JSON trace or torch.profiler.

An op travels as ``{"name", "op", "start_us", "dur_us", "parent"}``: ``start_us`` is its offset from the start
of the run (µs, float), ``parent`` the index of the enclosing op in the same list or -1 (torch nests aten ops;
onnxruntime's are flat). The list is in start order, parents before their children, and capped
(:func:`cap`): the longest ops are kept, the rest summed into one ``other`` op.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_OPS = 200  # ops per reply, the longest kept; the rest become one "other" op


@dataclass(frozen=True)
class Op:
    name: str
    op: str  # the operator type: Conv, aten::linear, ...
    start_us: float
    dur_us: float
    parent: int = -1

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "start_us": self.start_us,
            "dur_us": self.dur_us,
            "parent": self.parent,
        }


def onnxruntime_ops(events: Iterable[dict[str, Any]]) -> list[Op]:
    """The kernels of the last ``model_run`` in an onnxruntime profile (the parsed JSON), offsets from its start."""
    events = list(events)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    origin = float(runs[-1]["ts"]) if runs else min((float(e.get("ts", 0)) for e in events), default=0.0)
    ops = []
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue  # fences and session events
        args = e.get("args") or {}
        ops.append(
            Op(
                name=name.removesuffix("_kernel_time").strip() or "op",
                op=str(args.get("op_name") or "op"),
                start_us=max(0.0, float(e.get("ts", 0)) - origin),
                dur_us=float(e.get("dur", 0)),
            )
        )
    ops.sort(key=lambda o: o.start_us)
    return ops


def read_onnxruntime_profile(path: str) -> list[Op]:
    """The ops of the profile file onnxruntime wrote at ``end_profiling()``; the file is removed."""
    try:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    return onnxruntime_ops(events if isinstance(events, list) else [])


def torch_ops(events: Iterable[Any]) -> list[Op]:
    """torch.profiler's CPU events (``prof.events()``) as nested ops, offsets from the first event's start."""
    events = [e for e in events if e.time_range.end >= e.time_range.start]
    if not events:
        return []
    origin = min(e.time_range.start for e in events)
    events.sort(key=lambda e: (e.time_range.start, -(e.time_range.end - e.time_range.start)))
    index = {id(e): n for n, e in enumerate(events)}
    ops = []
    for e in events:
        parent = e.cpu_parent
        ops.append(
            Op(
                name=str(e.name),
                op=str(e.name),
                start_us=float(e.time_range.start - origin),
                dur_us=float(e.time_range.end - e.time_range.start),
                parent=index.get(id(parent), -1) if parent is not None else -1,
            )
        )
    return ops


def cap(ops: list[Op], limit: int = MAX_OPS) -> list[Op]:
    """At most ``limit`` ops: the longest ``limit - 1`` and one ``other`` op summing the outermost dropped ones.

    A kept op whose parent was dropped hangs from its nearest kept ancestor (or from the run).
    """
    if len(ops) <= limit:
        return ops
    keep = set(sorted(range(len(ops)), key=lambda n: -ops[n].dur_us)[: limit - 1])

    def kept_ancestor(n: int) -> int:
        p = ops[n].parent
        while p >= 0 and p not in keep:
            p = ops[p].parent
        return p

    order = sorted(keep)
    new_index = {old: new for new, old in enumerate(order)}
    out = []
    for old in order:
        p = kept_ancestor(old)
        out.append(Op(ops[old].name, ops[old].op, ops[old].start_us, ops[old].dur_us, new_index.get(p, -1)))
    # the dropped ops not inside another dropped op: their time is not counted twice
    dropped = [n for n in range(len(ops)) if n not in keep and (ops[n].parent < 0 or ops[n].parent in keep)]
    if dropped:
        count = len(ops) - len(order)
        start = min(ops[n].start_us for n in dropped)
        total = sum(ops[n].dur_us for n in dropped)
        out.append(Op(f"other ({count} ops)", "other", start, total))
    return out
