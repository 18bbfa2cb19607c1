"""Image decoding refusals (undecodable data, decompression bombs) and manifest-driven preprocessing."""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from carml_mesh.exec.worker.errors import WorkerError
from carml_mesh.exec.worker.preprocess import DEFAULT_MAX_PIXELS, ImageSpec, decode_image, image_to_array

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def solid(color: tuple[int, ...] | int, size: tuple[int, int] = (6, 4), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def bands(size: tuple[int, int], colors: tuple[tuple[int, int, int], ...], *, vertical: bool = False) -> Image.Image:
    """An image split into equal bands of the given colours: left to right, or top to bottom when vertical."""
    w, h = size
    image = Image.new("RGB", size)
    n = len(colors)
    for i, color in enumerate(colors):
        if vertical:
            image.paste(color, (0, i * h // n, w, (i + 1) * h // n))
        else:
            image.paste(color, (i * w // n, 0, (i + 1) * w // n, h))
    return image


def png_claiming_size(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR (with a correct CRC) claims width x height: Pillow reads the header happily."""
    data = bytearray(encode(solid(0, (8, 8), "L")))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records every ImageFile.load() (the call that decodes and allocates pixels) with the image's size."""
    calls: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> Any:
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


# --- decode_image -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_decode_valid_images(fmt: str, load_calls: list[tuple[int, int]]) -> None:
    image = decode_image(encode(solid((10, 20, 30), (7, 5)), fmt))
    assert image.size == (7, 5)
    assert load_calls, "the spy must see a real decode, or the bomb tests below prove nothing"


def bad_input(data: bytes) -> WorkerError:
    with pytest.raises(WorkerError) as info:
        decode_image(data)
    assert info.value.kind == "bad_input"
    assert info.value.to_wire() == {"kind": "bad_input", "message": info.value.message}
    return info.value


def test_empty_bytes() -> None:
    assert bad_input(b"").message == "image is empty"


def test_random_bytes() -> None:
    data = random.Random(1234).randbytes(4096)
    assert bad_input(data).message == "cannot decode image: not a format Pillow recognises"


def test_text_file() -> None:
    err = bad_input(b"name: digits-cnn\nversion: 1.0\nThis is not an image at all.\n")
    assert "not a format Pillow recognises" in err.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(fmt: str) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    err = bad_input(data[: len(data) // 2])
    assert err.message.startswith("cannot decode image: ")
    assert "truncated" in err.message or "broken" in err.message.lower() or "EOF" in err.message


def test_corrupt_png_crc_is_bad_input() -> None:
    data = bytearray(encode(solid(5, (8, 8), "L")))
    data[29] ^= 0xFF  # the IHDR CRC
    assert bad_input(bytes(data)).message.startswith("cannot decode image")


@pytest.mark.parametrize("size", [(50_000, 50_000), (12_000, 12_000)], ids=["bomb-error", "bomb-warning"])
def test_decompression_bomb_is_too_large_without_decoding(size: tuple[int, int], load_calls: list[Any]) -> None:
    # 2.5e9 pixels is over Pillow's error threshold; 1.44e8 only over its warning threshold (which is made an error)
    with pytest.raises(WorkerError) as info:
        decode_image(png_claiming_size(*size))
    assert info.value.kind == "too_large"
    assert load_calls == []


def test_over_our_own_limit_but_under_pillows_is_too_large_without_decoding(load_calls: list[Any]) -> None:
    width, height = 7_000, 7_000  # 4.9e7: over DEFAULT_MAX_PIXELS, under Pillow's bomb thresholds
    assert width * height > DEFAULT_MAX_PIXELS
    with pytest.raises(WorkerError) as info:
        decode_image(png_claiming_size(width, height))
    assert info.value.kind == "too_large"
    assert info.value.message == f"image is 7000x7000 = 49000000 pixels; the limit is {DEFAULT_MAX_PIXELS}"
    assert load_calls == []


def test_max_pixels_argument() -> None:
    data = encode(solid(RED, (100, 100)))
    with pytest.raises(WorkerError) as info:
        decode_image(data, max_pixels=5000)
    assert info.value.kind == "too_large"
    assert "100x100 = 10000 pixels; the limit is 5000" in info.value.message
    assert decode_image(data, max_pixels=10_000).size == (100, 100)  # the limit itself is allowed


# --- image_to_array: shapes and dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "color_mode", "shape"),
    [
        ("CHW", "RGB", (3, 4, 6)),
        ("HWC", "RGB", (4, 6, 3)),
        ("CHW", "BGR", (3, 4, 6)),
        ("CHW", "GRAY", (1, 4, 6)),
        ("HWC", "GRAY", (4, 6, 1)),
    ],
)
def test_output_shape_and_dtype(layout: str, color_mode: str, shape: tuple[int, ...]) -> None:
    spec = ImageSpec(height=4, width=6, layout=layout, color_mode=color_mode)
    for source_mode in ("RGB", "L", "RGBA", "P"):
        out = image_to_array(solid(1, (6, 4), source_mode), spec)
        assert out.shape == shape
        assert out.dtype == np.float32
        assert out.flags.c_contiguous


@pytest.mark.parametrize("element_type", ["float16", "float64", "float32"])
def test_element_type(element_type: str) -> None:
    out = image_to_array(solid(RED), ImageSpec(height=4, width=6, element_type=element_type))
    assert out.dtype == np.dtype(element_type)


# --- normalisation and colour -------------------------------------------------------------------------------------


def test_exact_normalisation_per_channel() -> None:
    spec = ImageSpec(height=4, width=6, mean=(127.0,), scale=(128.0,))
    out = image_to_array(solid((255, 0, 127)), spec)
    expected = np.array([128 / 128, -127 / 128, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(out, np.broadcast_to(expected[:, None, None], (3, 4, 6)))


def test_per_channel_mean_and_scale_in_hwc() -> None:
    spec = ImageSpec(height=4, width=6, layout="HWC", mean=(10.0, 20.0, 30.0), scale=(1.0, 2.0, 4.0))
    out = image_to_array(solid((110, 120, 130)), spec)
    np.testing.assert_array_equal(out[2, 3], [100.0, 50.0, 25.0])
    assert np.all(out == out[0, 0])


def test_bgr_reverses_channels() -> None:
    rgb = image_to_array(solid((255, 0, 127)), ImageSpec(height=4, width=6))
    bgr = image_to_array(solid((255, 0, 127)), ImageSpec(height=4, width=6, color_mode="BGR"))
    assert rgb[:, 0, 0].tolist() == [255.0, 0.0, 127.0]
    assert bgr[:, 0, 0].tolist() == [127.0, 0.0, 255.0]
    # the manifest's per-channel mean is in the model's (BGR) order
    spec = ImageSpec(height=4, width=6, color_mode="BGR", mean=(100.0, 0.0, 200.0))
    assert image_to_array(solid((255, 0, 127)), spec)[:, 1, 1].tolist() == [27.0, 0.0, 55.0]


def test_bgr_on_a_non_uniform_image() -> None:
    image = bands((6, 4), (RED, GREEN, BLUE))
    rgb = image_to_array(image, ImageSpec(height=4, width=6, layout="HWC"))
    bgr = image_to_array(image, ImageSpec(height=4, width=6, layout="HWC", color_mode="BGR"))
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])


def test_invert() -> None:
    out = image_to_array(solid((255, 0, 127)), ImageSpec(height=4, width=6, invert=True))
    assert out[:, 2, 2].tolist() == [0.0, 255.0, 128.0]
    gray = image_to_array(
        solid(10, mode="L"), ImageSpec(height=4, width=6, color_mode="GRAY", invert=True, scale=(255.0,))
    )
    np.testing.assert_allclose(gray, 245 / 255, rtol=0, atol=1e-7)


def test_invert_happens_before_normalisation() -> None:
    spec = ImageSpec(height=4, width=6, color_mode="GRAY", invert=True, mean=(5.0,), scale=(2.0,))
    assert image_to_array(solid(245, mode="L"), spec)[0, 0, 0] == (10 - 5) / 2


def test_gray_uses_luma_of_a_colour_image() -> None:
    out = image_to_array(solid(RED), ImageSpec(height=4, width=6, color_mode="GRAY"))
    assert np.all(out == 76.0)  # ITU-R 601-2 luma: 255 * 299/1000, as Pillow's convert("L")


def test_rgba_and_palette_images_become_rgb() -> None:
    rgba = solid((10, 20, 30, 0), mode="RGBA")
    assert image_to_array(rgba, ImageSpec(height=4, width=6))[:, 0, 0].tolist() == [10.0, 20.0, 30.0]
    pal = solid((10, 20, 30)).quantize(colors=2)
    assert pal.mode == "P"
    assert image_to_array(pal, ImageSpec(height=4, width=6))[:, 0, 0].tolist() == [10.0, 20.0, 30.0]


# --- geometry -----------------------------------------------------------------------------------------------------


def colour_at(out: np.ndarray, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(v) for v in out[:, y, x])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_resize_shorter_side_then_center_crop_picks_the_middle(interpolation: str) -> None:
    image = bands((300, 100), (RED, GREEN, BLUE))  # left third red, middle green, right third blue
    spec = ImageSpec(height=50, width=50, resize_shorter=50, crop=True, interpolation=interpolation)
    out = image_to_array(image, spec)
    assert out.shape == (3, 50, 50)
    # 300x100 -> 150x50 -> columns 50..99: the green third. Only the outermost columns may blend with a neighbour.
    inner = out[:, :, 2:-2]
    assert np.all(inner[1] >= 250) and np.all(inner[0] <= 5) and np.all(inner[2] <= 5)
    assert colour_at(out, 25, 25) == GREEN
    if interpolation == "nearest":
        assert np.all(out[1] == 255) and np.all(out[0] == 0) and np.all(out[2] == 0)


def test_center_crop_of_a_portrait_image_picks_the_vertical_middle() -> None:
    image = bands((100, 300), (RED, GREEN, BLUE), vertical=True)
    spec = ImageSpec(height=40, width=40, resize_shorter=40, crop=True, interpolation="nearest")
    out = image_to_array(image, spec)
    assert out.shape == (3, 40, 40)
    assert np.all(out[1] == 255) and np.all(out[0] == 0) and np.all(out[2] == 0)


def test_center_crop_of_a_non_square_target() -> None:
    image = bands((300, 100), (RED, GREEN, BLUE))
    spec = ImageSpec(height=50, width=100, resize_shorter=50, crop=True, interpolation="nearest")
    out = image_to_array(image, spec)
    assert out.shape == (3, 50, 100)
    # 150x50, columns 25..124: a bit of red, all of green, a bit of blue
    assert colour_at(out, 0, 0) == RED and colour_at(out, 0, 50) == GREEN and colour_at(out, 0, 99) == BLUE


def test_direct_resize_when_no_shorter_side_keeps_the_whole_image() -> None:
    image = bands((300, 100), (RED, GREEN, BLUE))
    out = image_to_array(image, ImageSpec(height=8, width=9, interpolation="nearest"))
    assert out.shape == (3, 8, 9)  # squashed, not cropped: all three bands survive
    assert colour_at(out, 4, 0) == RED and colour_at(out, 4, 4) == GREEN and colour_at(out, 4, 8) == BLUE


def test_image_of_the_right_size_is_not_resized() -> None:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = image_to_array(Image.fromarray(pixels), ImageSpec(height=4, width=6, layout="HWC"))
    np.testing.assert_array_equal(out, pixels.astype(np.float32))


def test_resize_shorter_smaller_than_the_crop_still_yields_the_target_size() -> None:
    out = image_to_array(solid(GREEN, (30, 10)), ImageSpec(height=8, width=8, resize_shorter=4, crop=True))
    assert out.shape == (3, 8, 8)
    assert np.all(out[1] == 255)


def test_resize_shorter_without_crop_still_crops_to_the_target() -> None:
    out = image_to_array(
        bands((300, 100), (RED, GREEN, BLUE)),
        ImageSpec(height=10, width=10, resize_shorter=10, interpolation="nearest"),
    )
    assert out.shape == (3, 10, 10)
    assert np.all(out[1] == 255)


def test_spec_from_wire() -> None:
    spec = ImageSpec.from_wire(
        {
            "dimensions": [224, 200, 3],
            "layout": "HWC",
            "color_mode": "BGR",
            "mean": [1, 2, 3],
            "scale": [4],
            "element_type": "float16",
            "resize": {"shorter_side": 256, "interpolation": "bicubic"},
            "crop": {"mode": "center"},
            "invert": True,
        }
    )
    assert (spec.height, spec.width, spec.layout, spec.color_mode, spec.channels) == (224, 200, "HWC", "BGR", 3)
    assert (spec.mean, spec.scale, spec.element_type) == ((1.0, 2.0, 3.0), (4.0,), "float16")
    assert (spec.resize_shorter, spec.interpolation, spec.crop, spec.invert) == (256, "bicubic", True, True)
    minimal = ImageSpec.from_wire({"dimensions": [1, 8, 9], "color_mode": "GRAY", "resize": None, "crop": None})
    assert (minimal.height, minimal.width, minimal.channels, minimal.crop) == (8, 9, 1, False)
    assert (minimal.resize_shorter, minimal.mean, minimal.scale) == (None, (0.0,), (1.0,))
