"""What one request may cost is limited from its images' headers, before any pixel is decoded
(issue 10, item 4).

Regression: on 403c807 the only limit was a flat 8192x8192 pixel count, so a 633-byte JPEG whose
header claimed 8000x8000 was decoded and run (41 s and 3.5 GB each; four at once peaked near 5 GB),
and a truncated image was processed as if it were whole. Now each endpoint declares the working
memory it needs per input pixel (`Pipeline.bytes_per_input_pixel`), each worker has a memory budget
(`--memory-budget`), and a request whose images would need more than the budget is refused with a
422 `image_too_large` naming the limit; truncated images are refused with `image_load_error`.
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from pipelines.contract import Pipeline
from pipelines.flux_image_to_image import FluxImageToImagePipeline
from pipelines.image2pixel import Image2PixelPipeline
from pipelines.kontext_editing import KontextEditPipeline
from pipelines.post_processing import PostProcessingPipeline
from pipelines.post_processing_sharpen import SharpenPipeline
from server.context import MediaIO
from server.fetch import FetchPolicy, UrlFetcher
from testkit.images import data_uri, gradient_image, png_bytes
from tests.fixtures.pipelines import StepsPipeline

MiB = 1024 * 1024
BUDGET = 64 * MiB  # post-processing: 419430 pixels (160 B each); the test endpoint: 262144 (256 B each)
POST_PROCESSING_LIMIT = BUDGET // 160
STEPS_LIMIT = BUDGET // 256


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width`x`height` and carries almost no data: all a decoder bomb needs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int, keep: int = 633) -> bytes:
    """A real JPEG cut to `keep` bytes and closed with an end-of-image marker, claiming `width`x`height`
    (libjpeg greys every block it has no data for, and Pillow does not say so)."""
    buffer = io.BytesIO()
    Image.fromarray(gradient_image(256, 256)).save(buffer, "JPEG", progressive=True)
    data = bytearray(buffer.getvalue())
    frame = data.find(b"\xff\xc2")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data[:keep]) + b"\xff\xd9"


def refusal(response, field: str = "image_url") -> dict:
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", field]
    return error


def test_each_endpoint_gets_its_share_of_the_budget():
    media = MediaIO(
        fetcher=UrlFetcher(FetchPolicy()), files=None, max_image_pixels=8192 * 8192, memory_budget_bytes=8 * 1024**3
    )
    limits = {
        pipeline: media.pixel_limit(pipeline).pixels
        for pipeline in (PostProcessingPipeline, SharpenPipeline, Image2PixelPipeline, StepsPipeline)
    }
    assert limits == {
        PostProcessingPipeline: 8 * 1024**3 // 160,
        SharpenPipeline: 8 * 1024**3 // 160,
        Image2PixelPipeline: 8 * 1024**3 // 128,
        StepsPipeline: 8 * 1024**3 // Pipeline.bytes_per_input_pixel,
    }
    # the diffusion endpoints resize their inputs at once: the flat pixel limit binds before the budget
    for pipeline in (FluxImageToImagePipeline, KontextEditPipeline):
        assert media.pixel_limit(pipeline).pixels == 8192 * 8192
    assert media.pixel_limit(None).pixels == 8192 * 8192
    media.fetcher.close()


def test_image_over_the_endpoints_share_is_refused_naming_the_limit(make_client):
    client = make_client(memory_budget_bytes=BUDGET)
    side = 700  # 490000 pixels: over post-processing's 419430
    error = refusal(client.post("/run/fal-ai/post-processing", json={"image_url": data_uri(png_bytes(gradient_image(side, side)))}))
    assert error["type"] == "image_too_large"
    for words in ("700x700", str(POST_PROCESSING_LIMIT), "fal-ai/post-processing", "160 bytes per pixel", "--memory-budget", "64 MiB"):
        assert words in error["msg"], error["msg"]
    fits = client.post("/run/fal-ai/post-processing", json={"image_url": data_uri(png_bytes(gradient_image(600, 600)))})
    assert fits.status_code == 200, fits.text


def test_the_limit_is_the_endpoints_own(make_client):
    """The worker hands each request its endpoint's limit: 600x600 fits post-processing (160 B per
    pixel) and not the test endpoint, which declares nothing and is taken to need 256."""
    client = make_client(memory_budget_bytes=BUDGET)
    image = data_uri(png_bytes(gradient_image(600, 600)))
    assert 600 * 600 > STEPS_LIMIT
    assert refusal(client.post("/run/kiln-test/steps", json={"image_url": image}))["type"] == "image_too_large"
    assert client.post("/run/fal-ai/post-processing", json={"image_url": image}).status_code == 200


def test_a_requests_images_share_one_limit(make_client):
    """Dissolve's second image counts against the same budget as the first."""
    client = make_client(memory_budget_bytes=BUDGET)
    payload = {
        "image_url": data_uri(png_bytes(gradient_image(600, 600))),  # 360000 pixels
        "enable_dissolve": True,
        "dissolve_image_url": data_uri(png_bytes(gradient_image(300, 300))),  # 90000 more: 450000
    }
    error = refusal(client.post("/run/fal-ai/post-processing", json=payload), "dissolve_image_url")
    assert error["type"] == "image_too_large" and "360000 pixels of its other images" in error["msg"]
    payload["dissolve_image_url"] = data_uri(png_bytes(gradient_image(200, 200)))  # 400000 in all
    assert client.post("/run/fal-ai/post-processing", json=payload).status_code == 200


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fails any attempt to decode pixels: what is refused from its header must never get that far."""

    def load(image):
        raise AssertionError(f"decoded the pixels of a {image.size} {image.format}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_a_huge_header_is_refused_before_decoding(client, no_pixel_decoding):
    """9000x9000 (81 M pixels, under Pillow's own bomb limit) in a few hundred bytes: refused from the
    header at the default budget, without a pixel decoded."""
    error = refusal(client.post("/run/fal-ai/post-processing", json={"image_url": data_uri(png_header_only(9000, 9000))}))
    assert error["type"] == "image_too_large" and "9000x9000" in error["msg"]


def test_633_byte_jpeg_claiming_8000x8000_is_refused_before_decoding(client, no_pixel_decoding):
    """The issue's own input: over post-processing's share of the default 8 GiB budget (53687091
    pixels at 160 bytes each), refused from its header."""
    error = refusal(client.post("/run/fal-ai/post-processing", json={"image_url": data_uri(jpeg_claiming(8000, 8000), "image/jpeg")}))
    assert error["type"] == "image_too_large" and "53687091" in error["msg"]


def test_truncated_jpeg_within_the_limit_is_refused(client, no_pixel_decoding):
    """Regression: on 403c807 the same 633 bytes claiming 3000x3000 were decoded as a grey image; the
    bytes it would need are counted from its header."""
    error = refusal(client.post("/run/kiln-test/steps", json={"image_url": data_uri(jpeg_claiming(3000, 3000), "image/jpeg")}))
    assert error["type"] == "image_load_error" and "truncated" in error["msg"]


def test_png_cut_after_10_of_64_rows_is_refused(client):
    """Regression: on 403c807 a PNG whose image data stops after 10 of its 64 rows was processed, its
    missing rows black."""
    rows = b"".join(b"\x00" + bytes([row]) * 64 * 3 for row in range(10))
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    error = refusal(client.post("/run/kiln-test/steps", json={"image_url": data_uri(png)}))
    assert error["type"] == "image_load_error" and "truncated" in error["msg"]


def test_memory_budget_flag():
    from server.cli import build_parser, settings_from_args

    default = settings_from_args(build_parser().parse_args(["serve"]))
    assert default.memory_budget_bytes == 8 * 1024**3
    assert settings_from_args(build_parser().parse_args(["serve", "--memory-budget", "512MiB"])).memory_budget_bytes == 512 * MiB
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--memory-budget", "lots"])
