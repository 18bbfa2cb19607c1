"""scripts/build_images.py: which superseded worker images are removed (the pure part; builds run in the suite)."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_images.py"
spec = importlib.util.spec_from_file_location("build_images", SCRIPT)
assert spec is not None and spec.loader is not None
build_images = importlib.util.module_from_spec(spec)
sys.modules["build_images"] = build_images  # its dataclasses look themselves up there
spec.loader.exec_module(build_images)


def row(ident: str, created: str, framework: str = "onnxruntime", tag: str = "<none>") -> dict[str, str]:
    return {"ID": ident, "Tag": tag, "CreatedAt": created, "framework": framework, "device": "cpu"}


def test_the_newest_untagged_builds_of_each_image_are_kept_and_tagged_ones_never_removed() -> None:
    rows = [
        row("tagged", "2026-11-01", tag="onnxruntime-cpu"),  # the one in use: never a candidate
        *(row(f"o{n}", f"2026-10-0{n}") for n in range(1, 6)),
        *(row(f"p{n}", f"2026-10-0{n}", framework="pytorch") for n in range(1, 3)),
    ]
    assert sorted(build_images.superseded(rows, keep=3)) == ["o1", "o2"]
    assert sorted(build_images.superseded(rows, keep=0)) == ["o1", "o2", "o3", "o4", "o5", "p1", "p2"]
    assert build_images.superseded([], keep=3) == []
