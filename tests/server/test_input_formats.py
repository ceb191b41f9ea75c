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

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.media import DECODABLE_FORMATS
from testkit.images import data_uri
from tests.fixtures.apps import pixels, start_app
from tests.fixtures.file_server import FileServer, Reply, file_server
from tests.fixtures.image_files import ACCEPTED, HEIGHT, REFUSED, WIDTH, ImageFile

RUN = "/run/fal-ai/post-processing"


@pytest.fixture(scope="module")
def kiln(tmp_path_factory, registry) -> Iterator[TestClient]:
    """One server for the module; private URLs allowed so that it can reach the loopback file server."""
    client = start_app(tmp_path_factory.mktemp("formats"), registry, allow_private_urls=True)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    with file_server() as running:
        yield running


def url_of(image: ImageFile, via: str, server: FileServer) -> str:
    if via == "data URI":
        return data_uri(image.read(), image.content_type)
    return server.serve(f"/{image.name}", Reply(body=image.read(), headers={"Content-Type": "application/octet-stream"}))


@pytest.mark.parametrize("via", ["data URI", "http URL"])
@pytest.mark.parametrize("image", ACCEPTED, ids=lambda image: image.name)
def test_accepted_format_runs_end_to_end(kiln, server, image, via):
    response = kiln.post(RUN, json={"image_url": url_of(image, via, server)})
    assert response.status_code == 200, response.text
    output = response.json()["images"][0]
    assert (output["width"], output["height"]) == (WIDTH, HEIGHT)
    result = pixels(kiln, output)
    assert result.shape == image.expected.shape, "alpha kept, no alpha added"
    difference = np.abs(result.astype(int) - image.expected.astype(int)).mean()
    assert difference <= image.tolerance, f"{image.name} decoded {difference:.2f} levels from its source"


def test_every_format_fal_accepts_is_decodable():
    assert {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"} <= set(DECODABLE_FORMATS)
    tested = {image.name.rsplit(".", 1)[1] for image in ACCEPTED}
    assert tested >= {"png", "jpg", "webp", "gif", "bmp", "tiff"}


@pytest.mark.parametrize("via", ["data URI", "http URL"])
@pytest.mark.parametrize("image", REFUSED, ids=lambda image: image.name)
def test_refused_format_is_a_422_naming_what_is_accepted(kiln, server, image, via):
    """HEIC is not decoded (pillow-heif's wheels are GPLv2 as a whole); the caller is told which formats are."""
    response = kiln.post(RUN, json={"image_url": url_of(image, via, server)})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "image_url"] and error["type"] == "image_load_error"
    assert "PNG, JPEG, WEBP, GIF, BMP, TIFF" in error["msg"]
