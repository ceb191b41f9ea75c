"""Small deterministic test images, as arrays, PNG bytes and data URIs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def gradient_image(width: int = 16, height: int = 12, channels: int = 3) -> np.ndarray:
    """A deterministic colourful test image, uint8 `(H, W, C)`."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 255 // (width + height - 2)]
    if channels == 4:
        planes.append(np.full_like(x, 200))
    return np.stack(planes, axis=-1).astype(np.uint8)
