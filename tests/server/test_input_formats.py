"""Every image format fal's inputs accept runs end to end through the HTTP API (issue 10, item 1).

Regression: on 403c807 `server/media.py` listed "MPO" among the formats it passed to `Image.open`,
and Pillow has no opener by that name, so every format after it in the list failed: every GIF, WebP
and BMP input was refused with "could not be decoded as an image ('MPO')", and TIFF was not accepted
at all. No test decoded those formats. Here each format is a real file made by ImageMagick
(tests/fixtures/image_files.py), sent to `fal-ai/post-processing` with no effect enabled, so the
output must be the input's first frame, given as a data URI and as an http URL served, under a
content type that says nothing, by a real server on loopback.
"""

from __future__ import annotations


import numpy as np
import pytest

from server.media import DECODABLE_FORMATS
from testkit.images import data_uri
from tests.fixtures.apps import pixels
from tests.fixtures.file_server import FileServer, Reply
from tests.fixtures.image_files import ACCEPTED, HEIGHT, REFUSED, WIDTH, ImageFile

RUN = "/run/fal-ai/post-processing"


def url_of(image: ImageFile, via: str, server: FileServer) -> str:
    if via == "data URI":
        return data_uri(image.read(), image.content_type)
    return server.serve(f"/{image.name}", Reply(body=image.read(), headers={"Content-Type": "application/octet-stream"}))


@pytest.mark.parametrize("via", ["data URI", "http URL"])
@pytest.mark.parametrize("image", ACCEPTED, ids=lambda image: image.name)
def test_accepted_format_runs_end_to_end(loopback_kiln, file_host, image, via):
    response = loopback_kiln.post(RUN, json={"image_url": url_of(image, via, file_host)})
    assert response.status_code == 200, response.text
    output = response.json()["images"][0]
    assert (output["width"], output["height"]) == (WIDTH, HEIGHT)
    result = pixels(loopback_kiln, output)
    assert result.shape == image.expected.shape, "alpha kept, no alpha added"
    difference = np.abs(result.astype(int) - image.expected.astype(int)).mean()
    assert difference <= image.tolerance, f"{image.name} decoded {difference:.2f} levels from its source"


def test_every_format_fal_accepts_is_decodable():
    assert {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"} <= set(DECODABLE_FORMATS)
    tested = {image.name.rsplit(".", 1)[1] for image in ACCEPTED}
    assert tested >= {"png", "jpg", "webp", "gif", "bmp", "tiff"}


@pytest.mark.parametrize("via", ["data URI", "http URL"])
@pytest.mark.parametrize("image", REFUSED, ids=lambda image: image.name)
def test_refused_format_is_a_422_naming_what_is_accepted(loopback_kiln, file_host, image, via):
    """HEIC is not decoded (pillow-heif's wheels are GPLv2 as a whole); the caller is told which formats are."""
    response = loopback_kiln.post(RUN, json={"image_url": url_of(image, via, file_host)})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "image_url"] and error["type"] == "image_load_error"
    assert "PNG, JPEG, WEBP, GIF, BMP, TIFF" in error["msg"]
