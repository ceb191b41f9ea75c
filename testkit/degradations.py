"""What images go through before they reach Kiln: JPEG, blur and resampling as PIL does them, for
the pixel-art tests and benchmark (NumPy `(H, W, 3)` uint8 in and out)."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image, ImageFilter

CHROMA_SUBSAMPLING = {"444": 0, "420": 2}


def jpeg(image: np.ndarray, quality: int, subsampling: str | None = None) -> np.ndarray:
    """JPEG round trip through libjpeg: `subsampling` "444" (none), "420", or None for PIL's default (4:2:0)."""
    options = {} if subsampling is None else {"subsampling": CHROMA_SUBSAMPLING[subsampling]}
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, **options)
    return np.asarray(Image.open(buffer).convert("RGB"))


@cache
def jpeg_quantization(quality: int, subsampling: str | None = None) -> np.ndarray:
    """The quantisation tables `jpeg` stores at `quality`, as the file holds them: int32 `(3, 8, 8)` for Y, Cb and
    Cr in row-major order (`RawImage.jpeg_quantization`)."""
    options = {} if subsampling is None else {"subsampling": CHROMA_SUBSAMPLING[subsampling]}
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "JPEG", quality=quality, **options)
    stored = Image.open(buffer)
    tables = np.array([stored.quantization[table] for *_, table in stored.layer], dtype=np.int32).reshape(3, 8, 8)
    tables.flags.writeable = False
    return tables


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def resample(image: np.ndarray, factor: float, method: int = Image.BILINEAR) -> np.ndarray:
    """Resized by `factor` (bilinear unless `method` says otherwise), as an editor's slight rescale does."""
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(width * factor), round(height * factor)), method))


def count_colours(rgb: np.ndarray) -> int:
    flat = rgb.reshape(-1, 3).astype(np.int64)
    return len(np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]))
