"""Malformed request bodies are bad input: 422 in FastAPI's `detail` list shape, or 413 for size;
never 400 with a string `detail`, never a 500 (issue 10, item 5; issue 11, item 5).

Regression: on 403c807 a body that was not UTF-8, JSON nested 100k deep or an integer of 5000 digits
got FastAPI's 400 "There was an error parsing the body" with a string `detail`, which neither fal
client parses as a validation error; JSON nested a few hundred levels deep in an unknown field
passed validation and then failed to serialise (500); and the 413 the body-size middleware raised
while a chunked body streamed in was swallowed by FastAPI's body reader and came back as that 400,
without `x-fal-request-id`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.apps import STEPS, start_app

pytestmark = pytest.mark.adversarial

JSON = {"content-type": "application/json"}
MALFORMED = {
    "invalid UTF-8": b'{"tag": "\xff\xfe"}',
    "UTF-8 encoded surrogate": b'{"tag": "\xed\xa0\x80"}',
    "100k-deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "300-deep nesting in an unknown field": b'{"extra": ' + b"[" * 300 + b"]" * 300 + b"}",
    "100k-deep objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "5000-digit integer": b'{"tag": "x", "extra": ' + b"9" * 5000 + b"}",
    "5000-digit integer in a field": b'{"steps": ' + b"9" * 5000 + b"}",
    "truncated JSON": b'{"tag": "x',
    "not JSON at all": b"\x89PNG\r\n\x1a\n",
}
SUBMITS = [STEPS, "/run/kiln-test/steps", "/queue/fal-ai/post-processing"]
# a JSON route outside the queue and sync APIs, whose body only FastAPI reads
OTHER_JSON_ROUTE = "/rest/storage/upload/initiate"


@pytest.fixture(scope="module")
def kiln(tmp_path_factory, registry) -> Iterator[TestClient]:
    client = start_app(tmp_path_factory.mktemp("malformed"), registry)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory, registry) -> Iterator[TestClient]:
    """A server whose body limit is 100 kB."""
    client = start_app(tmp_path_factory.mktemp("limit"), registry, max_body_bytes=100_000)
    yield client
    client.__exit__(None, None, None)


def assert_fastapi_422(response) -> list[dict]:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    for item in detail:
        assert item["loc"][0] == "body" and isinstance(item["msg"], str) and isinstance(item["type"], str)
    return detail


@pytest.mark.parametrize("route", SUBMITS)
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_submit_is_422_in_fastapi_shape(kiln, route, name):
    response = kiln.post(route, content=MALFORMED[name], headers=JSON)
    assert_fastapi_422(response)
    assert response.headers["x-fal-request-id"]


@pytest.mark.parametrize("name", ["invalid UTF-8", "100k-deep nesting", "100k-deep objects", "5000-digit integer"])
def test_body_fastapi_cannot_parse_is_422_not_400(kiln, name):
    """Outside the queue and sync APIs FastAPI reads the body itself; its 400 becomes the 422 too."""
    assert_fastapi_422(kiln.post(OTHER_JSON_ROUTE, content=MALFORMED[name], headers=JSON))


def test_messages_say_what_is_wrong(kiln):
    def message(route: str, body: bytes) -> str:
        return assert_fastapi_422(kiln.post(route, content=body, headers=JSON))[0]["msg"]

    for route in (STEPS, OTHER_JSON_ROUTE):
        assert "not valid UTF-8" in message(route, MALFORMED["invalid UTF-8"])
        assert "4300" in message(route, MALFORMED["5000-digit integer"])
    assert "more than 64 levels" in message(STEPS, MALFORMED["100k-deep nesting"])
    assert "nested too deeply" in message(OTHER_JSON_ROUTE, MALFORMED["100k-deep nesting"])


def test_shallow_nesting_and_brackets_in_strings_are_still_accepted(kiln):
    """fal accepts unknown fields; a few levels of nesting in one, and brackets inside strings (which
    do not nest), must keep working, as must non-ASCII text."""
    body = {"tag": "nested ✓", "extra": {"loras": [{"path": "a", "scale": [[1, 2], [3, 4]]}]}, "note": "[[{{" * 100}
    response = kiln.post("/run/kiln-test/steps", json=body)
    assert response.status_code == 200 and response.json()["tag"] == "nested ✓"


def chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        yield b" " * size
        sent += size


@pytest.mark.parametrize("route", [STEPS, "/run/kiln-test/steps", OTHER_JSON_ROUTE])
def test_chunked_body_over_the_limit_is_413_not_400(small_limit, route):
    """No Content-Length: the limit is enforced while the body streams in, and FastAPI's body reader,
    which turns the failed read into its 400, does not get the last word."""
    response = small_limit.post(route, content=chunks(1_000_000), headers=JSON)
    assert response.status_code == 413, response.text
    assert response.json()["error_type"] == "payload_too_large"
    if route.startswith(("/queue/", "/run/")):
        assert response.headers["x-fal-request-id"]


def test_declared_length_over_the_limit_is_413_with_request_id(small_limit):
    """Regression (issue 11, item 5): a 413 carried no `x-fal-request-id`, which every other queue
    and run response carries."""
    response = small_limit.post(STEPS, json={"tag": "x" * 200_000})
    assert response.status_code == 413 and response.headers["x-fal-request-id"]


@pytest.mark.slow
def test_chunked_200_mb_body_to_a_real_server_is_413(kiln_process):
    """The issue's case over real HTTP: 200 MB chunked at `kiln serve`'s default 96 MB limit. The
    server answers 413 as soon as the limit is passed, without reading the rest."""
    server = kiln_process()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(
            b"POST /queue/kiln-test/steps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
        sent = []

        def send_200_mb() -> None:
            try:
                for _ in range(200):
                    connection.sendall(chunk)
                    sent.append(1)
                connection.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server stopped reading, as it should

        sender = threading.Thread(target=send_200_mb, daemon=True)
        sender.start()
        head = b""
        while b"\r\n\r\n" not in head:
            received = connection.recv(65536)
            assert received, "the server closed without answering"
            head += received
        status_line, *header_lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        assert status_line.split()[1] == "413", status_line
        headers = dict(line.lower().split(": ", 1) for line in header_lines)
        assert headers["x-fal-request-id"]
        assert len(sent) < 200, "the server read the whole body before answering"
    sender.join(10)


