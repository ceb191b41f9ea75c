"""Image bytes <-> tensors, with the limits that make untrusted input safe to decode.

Only a short list of decoders is enabled (the bytes are sniffed; the declared content type is
ignored). Before any pixel is decoded the header's size is checked against the caller's pixel limit
(Pillow's own decompression-bomb limit stays on behind it), and images whose pixel data provably ends
early are refused: a PNG whose image data stops before its last row (Pillow would keep the missing
rows as zeros) and a JPEG too short to hold the blocks its header claims (libjpeg would grey them).
Known gap: a JPEG cut near its end and closed with an end-of-image marker still decodes with grey
blocks, as libjpeg's warning does not reach Pillow's caller. Palette, grayscale, CMYK, 16-bit and
float inputs are normalised on decode so pipelines only ever see RGB or RGBA.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError, features

from pipelines.contract import RawImage

# What fal's image inputs accept. A JPEG with several pictures (MPO) opens as JPEG and decodes its
# first; GIF, WebP and TIFF decode their first frame or page. AVIF ships in Pillow's wheels (11.3 on);
# HEIC would need pillow-heif, whose wheels are GPLv2 as a whole (they bundle x265), so Kiln leaves it out.
DECODABLE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF") + (("AVIF",) if features.check("avif") else ())
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageDecodeError(ValueError):
    """The bytes are not an image Kiln accepts; `kind` is a fal error type."""

    def __init__(self, message: str, kind: str = "image_load_error") -> None:
        super().__init__(message)
        self.kind = kind


class ImageTooLarge(ImageDecodeError):
    """The header names more pixels than the caller allows; nothing was decoded."""

    def __init__(self, width: int, height: int, max_pixels: int) -> None:
        super().__init__(
            f"the image is {width}x{height} ({width * height} pixels), more than the {max_pixels} pixels "
            "this server accepts; downscale it first",
            kind="image_too_large",
        )
        self.width, self.height, self.max_pixels = width, height, max_pixels


def decode_image(data: bytes, *, max_pixels: int) -> RawImage:
    """Decodes PNG, JPEG, WebP, GIF (first frame), BMP, TIFF (first page) or AVIF bytes to RGB or RGBA.

    Raises:
        ImageTooLarge: the header names more than `max_pixels` pixels (checked before decoding).
        ImageDecodeError: not an accepted image, truncated, or a decompression bomb.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a process-wide Pillow switch; someone turned it on
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; Kiln refuses truncated images")
    try:
        # Pillow only warns between its bomb limit and twice that; `max_pixels` (at most
        # Settings.max_image_pixels, below Pillow's limit) refuses those anyway. The warning is not
        # made an error here: `warnings.catch_warnings` is not thread-safe, and decodes run in threads.
        image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(width, height, max_pixels)
        _refuse_short_data(image, data)
        image.seek(0)
        image.load()
        raw = _to_raw(ImageOps.exif_transpose(image))
        factors, quantization = _jpeg_coding(image)
        return dataclasses.replace(raw, chroma_subsampling=factors, jpeg_quantization=quantization)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"the file is not an image in a format this server decodes ({', '.join(DECODABLE_FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise ImageDecodeError(
            f"the image header claims more than {Image.MAX_IMAGE_PIXELS} pixels (a decompression bomb?); "
            f"this server accepts at most {max_pixels}",
            kind="image_too_large",
        ) from None
    except Exception as error:  # Pillow raises many types for corrupt input; all mean the same to the caller
        raise ImageDecodeError(f"the file could not be decoded as an image ({error})") from None


def _refuse_short_data(image: Image.Image, data: bytes) -> None:
    """Refuses a PNG or JPEG whose pixel data ends before its last row, which Pillow would fill in."""
    if image.format == "PNG" and _png_data_is_short(data):
        raise ImageDecodeError("the PNG is truncated: its image data ends before the last row")
    if image.format in ("JPEG", "MPO") and _jpeg_data_is_short(data):
        raise ImageDecodeError(
            f"the JPEG is truncated: {len(data)} bytes cannot hold the {image.size[0]}x{image.size[1]} "
            "pixels its header claims"
        )


# PNG colour type -> samples per pixel; Adam7 passes as (x0, y0, dx, dy)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20


def _png_image_data_size(width: int, height: int, bit_depth: int, color_type: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (one filter byte per row) a PNG's zlib stream must inflate to."""
    bits_per_pixel = bit_depth * _PNG_SAMPLES.get(color_type, 1)
    total = 0
    for x0, y0, dx, dy in _ADAM7 if interlaced else ((0, 0, 1, 1),):
        pass_width, pass_height = max(0, _ceil_div(width - x0, dx)), max(0, _ceil_div(height - y0, dy))
        if pass_width and pass_height:
            total += pass_height * (1 + (pass_width * bits_per_pixel + 7) // 8)
    return total


def _png_data_is_short(data: bytes) -> bool:
    """Whether the IDAT stream inflates to fewer bytes than the header's rows need.

    Pillow's zlib decoder stops at the end of the stream and keeps the rows it never wrote as zeros,
    so this inflates the stream once more, counting bytes without keeping them (bounded steps: a zlib
    bomb costs no memory here), and stops as soon as enough came out.
    """
    width, height, bit_depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    needed = _png_image_data_size(width, height, bit_depth, color_type, interlace == 1)
    inflater = zlib.decompressobj()
    produced, position = 0, 8
    while position + 8 <= len(data) and produced < needed:
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            pending = data[position + 8 : position + 8 + length]
            while pending and produced < needed and not inflater.eof:
                produced += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
        position += 12 + length
    return produced < needed


def _jpeg_data_is_short(data: bytes) -> bool:
    """Whether a Huffman-coded JPEG is shorter than the least entropy-coded data its frame needs.

    Each 8x8 block of each component costs at least 2 bits in a sequential JPEG (a DC code and an
    AC code of at least 1 bit each) and at least 1 bit in a progressive one (its first DC scan).
    libjpeg fills the blocks of a scan cut short by an end-of-image marker with grey and Pillow does
    not report it; this catches the cut that matters for cost, a tiny file claiming a huge frame.
    Arithmetic-coded, lossless and hierarchical frames are left to the decoder.
    """
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return False
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        if marker in (0xC0, 0xC1, 0xC2):
            return len(data) < _jpeg_min_scan_bytes(data[position + 4 :], progressive=marker == 0xC2)
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xDA:
            return False
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return False


def _jpeg_min_scan_bytes(frame: bytes, *, progressive: bool) -> int:
    """The fewest entropy-coded bytes a frame (its SOF segment after the length) can be coded in."""
    height, width, count = struct.unpack(">HHB", frame[1:6])
    sampling = [(frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 15) for i in range(count) if 8 + 3 * i <= len(frame)]
    h_max, v_max = max((h for h, _ in sampling), default=0), max((v for _, v in sampling), default=0)
    if not h_max or not v_max:
        return 0
    blocks = sum(
        _ceil_div(_ceil_div(width * h, h_max), 8) * _ceil_div(_ceil_div(height * v, v_max), 8) for h, v in sampling
    )
    return blocks * (1 if progressive else 2) // 8


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_coding(image: Image.Image) -> tuple[tuple[int, int], torch.Tensor | None]:
    """`RawImage.chroma_subsampling` and `RawImage.jpeg_quantization` of a YCbCr JPEG (the luma's sampling factors
    over the chroma's, and each component's table), or ``((1, 1), None)`` for a file they do not describe."""
    layers = getattr(image, "layer", None)  # (component id, horizontal, vertical, table) per component
    if image.format not in ("JPEG", "MPO") or image.mode != "RGB" or not layers or len(layers) != 3:
        return (1, 1), None
    if image.info.get("adobe_transform") == 0:  # stored as RGB, not YCbCr
        return (1, 1), None
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # turned: its blocks lie differently
        return (1, 1), None
    (_, luma_h, luma_v, _), (_, cb_h, cb_v, _), (_, cr_h, cr_v, _) = layers
    if (cb_h, cb_v) != (cr_h, cr_v) or luma_v % cb_v or luma_h % cb_h:
        return (1, 1), None
    factors = (luma_v // cb_v, luma_h // cb_h)
    tables = getattr(image, "quantization", None) or {}
    if max(factors) > 2 or any(len(tables.get(table, ())) != 64 for *_, table in layers):
        return (1, 1), None
    return factors, torch.tensor([list(tables[table]) for *_, table in layers], dtype=torch.int32).view(3, 8, 8)


def _to_raw(image: Image.Image) -> RawImage:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.clip(np.asarray(image, dtype=np.int32), 0, 65535)
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
