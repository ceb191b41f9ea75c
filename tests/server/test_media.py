"""Decoding untrusted image bytes: conversions on decode and the limits that keep it safe."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from kernels.convert import quantize
from server.media import ImageDecodeError, ImageTooLarge, decode_image, encode_image
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


@pytest.mark.parametrize("subsampling, factors", [(2, (2, 2)), (1, (1, 2)), (0, (1, 1))])
def test_a_jpeg_reports_how_it_subsampled_its_chroma(subsampling, factors):
    image = Image.fromarray(gradient_image(9, 7))
    raw = decode_image(encode(image, "JPEG", subsampling=subsampling), max_pixels=LIMIT)
    assert raw.chroma_subsampling == factors


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_a_jpeg_reports_its_quantisation_tables_per_component(quality):
    """libjpeg's standard tables scaled for the quality (ITU T.81 Annex K, as libjpeg's `jpeg_quality_scaling`
    scales them), in row-major order: luma for Y, chroma for Cb and Cr."""
    luma = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55]  # the first two rows of Annex K's
    chroma = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99]
    scaling = 5000 // quality if quality < 50 else 200 - 2 * quality
    expected = [[min(255, max(1, (step * scaling + 50) // 100)) for step in table] for table in (luma, chroma, chroma)]
    image = Image.fromarray(gradient_image(9, 7))
    raw = decode_image(encode(image, "JPEG", quality=quality, subsampling=2), max_pixels=LIMIT)
    assert raw.jpeg_quantization.shape == (3, 8, 8)
    assert raw.jpeg_quantization[:, :2].flatten(1).tolist() == expected


def test_what_is_not_a_ycbcr_jpeg_or_was_turned_reports_no_subsampling():
    image = Image.fromarray(gradient_image(9, 7))
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: its chroma blocks no longer start at the corner the model assumes
    for data in (
        encode(image),
        encode(image.convert("L"), "JPEG"),
        encode(image.convert("CMYK"), "JPEG", subsampling=2),
        encode(image, "JPEG", subsampling=2, exif=exif.tobytes()),
        encode(image, "WEBP", quality=80),
    ):
        raw = decode_image(data, max_pixels=LIMIT)
        assert raw.chroma_subsampling == (1, 1) and raw.jpeg_quantization is None


def test_pixel_limit_is_checked_before_decoding():
    header_says_huge = encode(Image.new("L", (5000, 5000)))
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(header_says_huge, max_pixels=1_000_000)
    assert raised.value.kind == "image_too_large"


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
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


# -- issue 10, item 4: truncated images and decompression bombs, refused before the pixels cost anything


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hand_made_png(pixels: np.ndarray, *, interlaced: bool = False, rows: int | None = None) -> bytes:
    """An 8-bit gray or RGB PNG written here, independently of Pillow's encoder (filter 0 on every
    row, Adam7 passes when `interlaced`); `rows` stops its image data after that many rows."""
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    scanlines = b"".join(
        b"\x00" + row.tobytes() for x0, y0, dx, dy in passes for row in pixels[y0::dy, x0::dx] if row.size
    )
    if rows is not None:
        scanlines = scanlines[: rows * (1 + pixels[0].nbytes)]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 1 if interlaced else 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(scanlines)) + png_chunk(b"IEND", b"")


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def test_png_whose_data_stops_after_10_of_64_rows_is_refused():
    """Regression (issue 10, item 4): Pillow's PNG decoder stops quietly at the end of the zlib stream
    and leaves the rows it never got as zeros, so on 403c807 a PNG whose image data ends after 10 of
    its 64 rows was decoded, and processed, as a 64-row image."""
    pixels = gradient_image(64, 64)
    assert decode_image(hand_made_png(pixels), max_pixels=LIMIT).height == 64
    with pytest.raises(ImageDecodeError, match="truncated") as raised:
        decode_image(hand_made_png(pixels, rows=10), max_pixels=LIMIT)
    assert raised.value.kind == "image_load_error"


@pytest.mark.parametrize("size", [(1, 2), (3, 5), (9, 2), (17, 13), (64, 48)])
@pytest.mark.parametrize("channels", [1, 3])
def test_complete_interlaced_and_plain_pngs_are_not_mistaken_for_truncated(size, channels):
    """The truncation check counts the bytes every Adam7 pass needs; a miscount would refuse good images."""
    width, height = size
    pixels = gradient_image(width, height)[..., 0] if channels == 1 else gradient_image(width, height)
    for interlaced in (False, True):
        raw = decode_image(hand_made_png(pixels, interlaced=interlaced), max_pixels=LIMIT)
        assert np.array_equal(raw.pixels[0].numpy(), pixels if channels == 1 else pixels[..., 0])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(hand_made_png(pixels, interlaced=True, rows=height // 2), max_pixels=LIMIT)


@pytest.mark.parametrize("mode,bits", [("1", 1), ("P", 2), ("P", 4), ("P", 8), ("L", 8), ("LA", 8), ("I;16", 16)])
def test_complete_pngs_of_every_bit_depth_decode(mode, bits):
    image = Image.fromarray(gradient_image(13, 7)).convert("L").convert(mode) if mode != "P" else (
        Image.fromarray(gradient_image(13, 7)).convert("P", palette=Image.Palette.ADAPTIVE, colors=2**bits)
    )
    assert decode_image(encode(image, bits=bits) if mode == "P" else encode(image), max_pixels=LIMIT).width == 13


def jpeg_claiming(width: int, height: int, *, keep: int = 633, progressive: bool = False) -> bytes:
    """A real JPEG cut to its first `keep` bytes and closed with an end-of-image marker, its frame
    header rewritten to claim `width`x`height`: what libjpeg decodes without complaint, greying every
    block it has no data for."""
    data = bytearray(encode(Image.fromarray(gradient_image(256, 256)), "JPEG", progressive=progressive))
    frame = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data[:keep]) + b"\xff\xd9"


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fails any attempt to decode pixels: what is refused from its header must never get that far."""

    def load(image):
        raise AssertionError(f"decoded the pixels of a {image.size} {image.format}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


@pytest.mark.parametrize("progressive", [False, True])
def test_tiny_jpeg_claiming_a_huge_frame_is_refused_before_decoding(progressive, no_pixel_decoding):
    """Regression (issue 10, item 4): on 403c807 a 633-byte JPEG whose header claims 8000x8000 was
    decoded, 41 s and 3.5 GB each; 633 bytes cannot hold the entropy-coded data of that many blocks."""
    for side in (8000, 3000):
        with pytest.raises(ImageDecodeError, match="truncated") as raised:
            decode_image(jpeg_claiming(side, side, progressive=progressive), max_pixels=10**8)
        assert raised.value.kind == "image_load_error"


def test_pixel_limit_is_checked_before_any_pixel_is_decoded(no_pixel_decoding):
    with pytest.raises(ImageTooLarge):
        decode_image(encode(Image.new("RGB", (2000, 1000))), max_pixels=1_000_000)


def test_complete_jpegs_pass_the_size_check():
    for progressive in (False, True):
        for subsampling in (0, 2):
            data = encode(Image.fromarray(gradient_image(301, 157)), "JPEG", progressive=progressive, subsampling=subsampling)
            assert decode_image(data, max_pixels=LIMIT).width == 301


def test_decompression_bomb_header_is_refused_without_decoding():
    """A 100 kB-scale PNG header claiming 40000x40000 (1.6 G pixels): Pillow's bomb limit refuses it
    on open, and Kiln reports it as `image_too_large`, not a 500 or an attempt to allocate it."""
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
    bomb += png_chunk(b"IDAT", zlib.compress(b"\x00" * 1_000_000)) + png_chunk(b"IEND", b"")
    for max_pixels in (LIMIT, 10**10):  # behind Kiln's own limit, Pillow's stays on
        with pytest.raises(ImageDecodeError) as raised:
            decode_image(bomb, max_pixels=max_pixels)
        assert raised.value.kind == "image_too_large"


def test_too_large_names_the_size_and_the_limit():
    with pytest.raises(ImageTooLarge) as raised:
        decode_image(encode(Image.new("RGB", (2000, 1000))), max_pixels=1_000_000)
    assert (raised.value.width, raised.value.height, raised.value.max_pixels) == (2000, 1000, 1_000_000)
    assert "2000x1000" in str(raised.value) and "1000000" in str(raised.value)


# -- issue 10, item 1: the formats fal accepts


def test_mpo_decodes_its_first_picture():
    """A camera's multi-picture JPEG (MPO) opens through the JPEG decoder and gives its first picture."""
    first, second = Image.fromarray(gradient_image(24, 16)), Image.fromarray(255 - gradient_image(24, 16))
    raw = decode_image(encode(first, "MPO", save_all=True, append_images=[second], quality=100), max_pixels=LIMIT)
    assert np.abs(raw.pixels.permute(1, 2, 0).numpy().astype(int) - gradient_image(24, 16)).mean() < 3


@pytest.mark.parametrize("mode", ["CMYK", "LAB", "YCbCr", "F", "I", "1", "PA"])
def test_tiff_modes_become_rgb_or_rgba(mode):
    raw = decode_image(encode(Image.new(mode, (5, 4)), "TIFF"), max_pixels=LIMIT)
    assert raw.pixels.shape[0] in (3, 4) and (raw.width, raw.height) == (5, 4)


def test_unknown_format_names_the_accepted_ones():
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(b"GIF87a-but-not-really" + bytes(100), max_pixels=LIMIT)
    assert raised.value.kind == "image_load_error" and "PNG, JPEG, WEBP, GIF, BMP, TIFF" in str(raised.value)
