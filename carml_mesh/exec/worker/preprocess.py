"""Image decoding and manifest-driven preprocessing: bytes -> one input array (without the batch dimension)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import WorkerError

DEFAULT_MAX_PIXELS = 40_000_000

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageSpec:
    """How to turn a decoded image into the model's input; built from a manifest's image input."""

    height: int
    width: int
    layout: str = "CHW"  # or HWC
    color_mode: str = "RGB"  # RGB, BGR or GRAY
    mean: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)
    element_type: str = "float32"
    resize_shorter: int | None = None  # resize the shorter side to this, keeping aspect; else resize to (h, w)
    crop: bool = False  # center-crop to (height, width) after resizing
    interpolation: str = "bilinear"
    invert: bool = False  # 255 - x before normalising (dark ink on light paper -> light on dark)

    @classmethod
    def from_wire(cls, spec: dict[str, Any]) -> ImageSpec:
        dims = spec["dimensions"]
        layout = spec.get("layout", "CHW")
        height, width = (dims[1], dims[2]) if layout == "CHW" else (dims[0], dims[1])
        resize = spec.get("resize") or {}
        crop = spec.get("crop") or {}
        return cls(
            height=int(height),
            width=int(width),
            layout=layout,
            color_mode=spec.get("color_mode", "RGB"),
            mean=tuple(float(m) for m in spec.get("mean", [0.0])),
            scale=tuple(float(s) for s in spec.get("scale", [1.0])),
            element_type=spec.get("element_type", "float32"),
            resize_shorter=resize.get("shorter_side"),
            crop=bool(crop),
            interpolation=resize.get("interpolation", "bilinear"),
            invert=bool(spec.get("invert", False)),
        )

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "GRAY" else 3


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an uploaded image, refusing undecodable data and decompression bombs before decoding pixels."""
    if not data:
        raise WorkerError("bad_input", "image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # read from the header only: nothing decoded yet
            if width * height > max_pixels:
                raise WorkerError(
                    "too_large", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
                )
            image.load()
    except WorkerError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise WorkerError("too_large", f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise WorkerError("bad_input", "cannot decode image: not a format Pillow recognises") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise WorkerError("bad_input", f"cannot decode image: {exc}") from exc
    return image


def image_to_array(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Resize, crop, convert colour, normalise and lay out one image as the manifest says."""
    image = image.convert("L" if spec.color_mode == "GRAY" else "RGB")
    resample = _RESAMPLE.get(spec.interpolation, Image.Resampling.BILINEAR)
    if spec.resize_shorter:
        w, h = image.size
        ratio = spec.resize_shorter / min(w, h)
        image = image.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), resample)
    elif image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), resample)
    if spec.crop or image.size != (spec.width, spec.height):
        w, h = image.size
        if w < spec.width or h < spec.height:
            image = image.resize((max(w, spec.width), max(h, spec.height)), resample)
            w, h = image.size
        left, top = (w - spec.width) // 2, (h - spec.height) // 2
        image = image.crop((left, top, left + spec.width, top + spec.height))
    pixels: np.ndarray = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.invert:
        pixels = 255.0 - pixels
    if spec.color_mode == "BGR":
        pixels = pixels[:, :, ::-1]
    pixels = (pixels - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.scale, dtype=np.float32)
    if spec.layout == "CHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels, dtype=spec.element_type)
