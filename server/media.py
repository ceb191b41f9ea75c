"""Image bytes <-> tensors, with the limits that make untrusted input safe to decode.

Only a short list of decoders is enabled (ignoring the declared content type), the pixel count is
checked from the header before any pixel is decoded, and palette, grayscale, CMYK and 16-bit inputs
are normalised on decode so pipelines only ever see RGB or RGBA.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from pipelines.contract import RawImage

DECODABLE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP")
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageDecodeError(ValueError):
    """The bytes are not an image Kiln accepts; `kind` is a fal error type."""

    def __init__(self, message: str, kind: str = "image_load_error") -> None:
        super().__init__(message)
        self.kind = kind


def decode_image(data: bytes, *, max_pixels: int) -> RawImage:
    """Decodes PNG, JPEG, WebP, GIF (first frame) or BMP bytes to RGB or RGBA.

    Raises:
        ImageDecodeError: not an accepted image, or more than `max_pixels` pixels.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"the image is {width}x{height}, more than the {max_pixels} pixels this server accepts",
                    kind="image_too_large",
                )
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(str(error), kind="image_too_large") from None
    except Exception as error:  # Pillow raises many types for corrupt input; all mean the same to the caller
        raise ImageDecodeError(f"the file could not be decoded as an image ({error})") from None
    return _to_raw(image)


def _to_raw(image: Image.Image) -> RawImage:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(image, dtype=np.int32)
        pixels = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(gray, (3, *gray.shape))))
        return RawImage(pixels, 65535)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    return RawImage(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), 255)


def encode_image(pixels: np.ndarray, *, image_format: str, jpeg_quality: int = 95, png_compression: int = 1) -> bytes:
    """Encodes `(H, W, C)` uint8 pixels (C = 3 or 4) as PNG, JPEG or WebP."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, "PNG", compress_level=png_compression)
    elif image_format == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=jpeg_quality)
    elif image_format == "webp":
        image.save(buffer, "WEBP", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buffer.getvalue()
