"""Decoding untrusted image bytes: conversions on decode and the limits that keep it safe."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from kernels.convert import quantize
from server.media import ImageDecodeError, decode_image, encode_image
from testkit.images import gradient_image

LIMIT = 10_000_000


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_png_round_trips_exactly():
    pixels = gradient_image(7, 5)
    raw = decode_image(encode(Image.fromarray(pixels)), max_pixels=LIMIT)
    assert raw.pixels.shape == (3, 5, 7) and raw.max_value == 255
    assert np.array_equal(raw.pixels.permute(1, 2, 0).numpy(), pixels)


def test_alpha_is_kept():
    raw = decode_image(encode(Image.fromarray(gradient_image(4, 3, channels=4))), max_pixels=LIMIT)
    assert raw.has_alpha and raw.pixels[3].eq(200).all()


def test_grayscale_and_palette_become_rgb():
    gray = decode_image(encode(Image.fromarray(np.full((3, 4), 77, np.uint8), "L")), max_pixels=LIMIT)
    assert gray.pixels.shape == (3, 3, 4) and gray.pixels.eq(77).all()
    palette = Image.fromarray(gradient_image(6, 6)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert decode_image(encode(palette), max_pixels=LIMIT).pixels.shape == (3, 6, 6)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    assert decode_image(encode(transparent), max_pixels=LIMIT).has_alpha


def test_sixteen_bit_png_keeps_its_precision():
    values = np.array([[0, 1, 65535], [256, 32768, 4097]], dtype=np.uint16)
    raw = decode_image(encode(Image.fromarray(values)), max_pixels=LIMIT)
    assert raw.max_value == 65535
    assert torch.equal(raw.to_float("cpu")[0], torch.from_numpy(values.astype(np.float32) / 65535))


def test_exif_orientation_is_applied():
    image = Image.fromarray(gradient_image(8, 4))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    raw = decode_image(encode(image, "JPEG", exif=exif.tobytes()), max_pixels=LIMIT)
    assert (raw.width, raw.height) == (4, 8)


def test_pixel_limit_is_checked_before_decoding():
    header_says_huge = encode(Image.new("L", (5000, 5000)))
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(header_says_huge, max_pixels=1_000_000)
    assert raised.value.kind == "image_too_large"


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_formats_outside_the_allow_list_are_refused(fmt):
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(encode(Image.fromarray(gradient_image(16, 16)), fmt), max_pixels=LIMIT)
    assert raised.value.kind == "image_load_error"


@pytest.mark.parametrize("data", [b"", b"hello", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_is_refused(data):
    with pytest.raises(ImageDecodeError):
        decode_image(data, max_pixels=LIMIT)


def test_quantize_rounds_to_nearest_and_clamps():
    values = torch.tensor([[[[-0.5, 0.0, 0.5 / 255, 1.49 / 255, 1.0, 2.0]]]])
    assert quantize(values).flatten().tolist() == [0, 0, 1, 1, 255, 255]


def test_encode_formats():
    pixels = gradient_image(5, 4, channels=4)
    assert Image.open(io.BytesIO(encode_image(pixels, image_format="png"))).mode == "RGBA"
    assert Image.open(io.BytesIO(encode_image(pixels, image_format="jpeg"))).format == "JPEG"
    with pytest.raises(ValueError):
        encode_image(pixels, image_format="gif")
