"""`*_url` inputs that are malformed, or point where nothing is, are 422 with a message that says
what is wrong (issue 10, items 2, 3 and 22).

Regressions on 403c807:
- a base64 data URI holding a non-ASCII character (`é`, `%FF`, a JSON-escaped lone surrogate) was a
  500: only `binascii.Error` was caught, and `b64decode` raises a plain ValueError for those;
- an input URL whose host answered `302 Location: x:y` was a 500: httpx builds the next request of a
  redirect even when it does not follow it and raises `InvalidURL`, which is not an `HTTPError`;
- a missing or expired Kiln `/files/` URL given as input said "Fetching from '127.0.0.1' is not
  allowed" (it fell through to the SSRF check) instead of saying the file is not there.
"""

from __future__ import annotations

import json

import pytest

from testkit.images import data_uri, gradient_image, png_bytes
from tests.fixtures.file_server import Reply

RUN = "/run/kiln-test/steps"


def refusal(response) -> dict:
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "image_url"]
    return error


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,AAAA\u00e9",
        "data:image/png;base64,AAAA%FF",
        "data:image/png;base64,AAAA\ud800",
        "data:image/png;base64,\U0001f600AAAA",
        "data:text/plain,ab\ud800",
    ],
    ids=["e-acute", "percent-FF", "lone surrogate", "emoji", "surrogate in plain data"],
)
def test_non_ascii_in_a_data_uri_is_422(loopback_kiln, url):
    body = json.dumps({"image_url": url})  # a lone surrogate travels as the JSON escape \\ud800
    error = refusal(loopback_kiln.post(RUN, content=body.encode(), headers={"content-type": "application/json"}))
    assert error["type"] == "invalid_url" and "data: URI" in error["msg"]


@pytest.mark.parametrize("location", ["x:y", "http://[::1", "https://:0/"])
def test_redirect_to_an_invalid_url_is_422(loopback_kiln, file_host, location):
    url = file_host.serve(f"/redirect-{len(file_host.replies)}", Reply(302, headers={"Location": location}))
    error = refusal(loopback_kiln.post(RUN, json={"image_url": url}))
    assert error["type"] in ("file_download_error", "invalid_url", "url_not_allowed"), error


def test_missing_kiln_file_url_says_not_found(loopback_kiln):
    own = loopback_kiln.app.state.services.settings.base_url
    error = refusal(loopback_kiln.post(RUN, json={"image_url": f"{own}/files/AAAAAAAAAAAAAAAAAAAAAA/gone.png"}))
    assert error["type"] == "file_download_error"
    assert "not a file on this server" in error["msg"] and "expired" in error["msg"]
    assert "not allowed" not in error["msg"]


def test_kiln_file_url_of_an_earlier_result_is_read_from_disk(loopback_kiln):
    """The positive side: a result file of this server is an input without any fetch (or SSRF check)."""
    first = loopback_kiln.post("/run/fal-ai/post-processing", json={"image_url": data_uri(png_bytes(gradient_image(9, 7)))})
    output_url = first.json()["images"][0]["url"]
    assert output_url.startswith(loopback_kiln.app.state.services.settings.base_url + "/files/")
    second = loopback_kiln.post(RUN, json={"image_url": output_url})
    assert second.status_code == 200 and second.json()["image_size"] == [9, 7]
