"""Operator profiles as the worker returns them: onnxruntime's JSON events, torch's events, the cap."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from carml_mesh.exec.worker.profiling import Op, cap, onnxruntime_ops, read_onnxruntime_profile, torch_ops

ORT_EVENTS = [
    {"cat": "Session", "name": "model_loading_uri", "ts": 2, "dur": 1117},
    {"cat": "Session", "name": "model_run", "ts": 4987, "dur": 199},
    {"cat": "Node", "name": "/Mul_fence_before", "ts": 5000, "dur": 0, "args": {"op_name": "Mul"}},
    {"cat": "Node", "name": "/Mul_kernel_time", "ts": 5001, "dur": 51, "args": {"op_name": "Mul"}},
    {"cat": "Node", "name": "fused /fc/Gemm_kernel_time", "ts": 5152, "dur": 16, "args": {"op_name": "FusedGemm"}},
    {"cat": "Node", "name": "/conv_kernel_time", "ts": 5055, "dur": 34, "args": {"op_name": "Conv"}},
]


def test_onnxruntime_kernels_become_flat_ops_offset_from_the_run() -> None:
    ops = onnxruntime_ops(ORT_EVENTS)
    assert ops == [
        Op("/Mul", "Mul", 14.0, 51.0),
        Op("/conv", "Conv", 68.0, 34.0),
        Op("fused /fc/Gemm", "FusedGemm", 165.0, 16.0),
    ]


def test_the_profile_file_is_read_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(ORT_EVENTS))
    assert len(read_onnxruntime_profile(str(path))) == 3
    assert not path.exists()


def event(name: str, start: float, end: float, parent: object = None) -> SimpleNamespace:
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), cpu_parent=parent)


def test_torch_events_keep_their_nesting_parents_first() -> None:
    forward = event("forward", 100.0, 400.0)
    linear = event("aten::linear", 150.0, 300.0, forward)
    addmm = event("aten::addmm", 150.0, 290.0, linear)  # starts with its parent: the longer one comes first
    ops = torch_ops([addmm, linear, forward])
    assert [o.name for o in ops] == ["forward", "aten::linear", "aten::addmm"]
    assert [o.parent for o in ops] == [-1, 0, 1]
    assert ops[1].start_us == 50.0 and ops[1].dur_us == 150.0


def test_cap_keeps_the_longest_and_sums_the_outermost_of_the_rest() -> None:
    ops = [Op("root", "r", 0.0, 100.0)]
    ops += [Op(f"op{n}", "x", float(n), float(n), parent=0) for n in range(1, 11)]  # op1..op10 under root
    ops.append(Op("leaf", "x", 10.5, 0.5, parent=10))  # under op10
    capped = cap(ops, limit=5)
    assert len(capped) == 5
    assert [o.name for o in capped[:4]] == ["root", "op8", "op9", "op10"]
    assert all(o.parent == 0 for o in capped[1:4])
    other = capped[4]
    assert other.name == "other (8 ops)" and other.op == "other"
    assert other.dur_us == sum(range(1, 8)) + 0.5  # op1..op7 and the leaf, whose parent was kept
    assert other.start_us == 1.0


def test_cap_rehangs_an_op_whose_parent_was_dropped() -> None:
    ops = [Op("a", "x", 0.0, 50.0), Op("b", "x", 1.0, 1.0, parent=0), Op("c", "x", 2.0, 40.0, parent=1)]
    capped = cap(ops, limit=3)
    assert capped == ops  # under the limit: as it is
    capped = cap(ops, limit=2)
    assert [(o.name, o.parent) for o in capped] == [("a", -1), ("other (2 ops)", -1)]
    ops.append(Op("d", "x", 3.0, 45.0, parent=2))
    capped = cap(ops, limit=3)
    assert [(o.name, o.parent) for o in capped[:2]] == [("a", -1), ("d", 0)]  # d's parents b, c were dropped
