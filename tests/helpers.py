"""Small helpers shared by tests (imported as `helpers`: pytest puts tests/ on sys.path for conftest.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()
