"""fal's upload protocol over HTTP, and how stored files are served back.

Every test that takes `client`, `make_client` or `storage` runs twice: on local disk (the default
`--storage`) and on an S3-compatible store (moto's server, tests/fixtures/s3_server.py).
"""

from __future__ import annotations

import os
import time
import tracemalloc
from urllib.parse import urlsplit

import httpx
import pytest

from server.cli import build_parser, settings_from_args
from server.config import Settings
from server.files import STALE_PART_SECONDS, FileStore, UploadLimits
from testkit.images import gradient_image, png_bytes
from tests.fixtures.apps import start_app
from tests.fixtures.live_server import served_in_thread
from tests.fixtures.s3_server import moto_s3

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_server():
    with moto_s3() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def storage(request, monkeypatch) -> dict:
    """The Settings overrides of one storage backend: none (local disk), or a fresh bucket."""
    if request.param == "local":
        return {}
    server = request.getfixturevalue("s3_server")
    for name, value in server.environment.items():
        monkeypatch.setenv(name, value)
    return {"storage": server.new_bucket()}


@pytest.fixture
def make_client(tmp_path, registry, storage):
    """conftest's `make_client` on the backend `storage` names."""
    clients = []

    def make(**overrides):
        client = start_app(tmp_path / f"data{len(clients)}", registry, **{**storage, **overrides})
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def path_of(url: str) -> str:
    """The path and query of one of the server's absolute URLs, for the TestClient."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def bearer(client, **headers) -> dict[str, str]:
    """`Authorization` with a CDN token for the key in `headers` (if any)."""
    token = client.post("/rest/storage/auth/token", json={}, headers=headers).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_cdn_token_then_upload(client):
    token = client.post("/rest/storage/auth/token?storage_type=fal-cdn-v3", json={}).json()
    assert token["token_type"] == "Bearer" and token["base_url"].endswith("/cdn")
    assert token["expires_at"].endswith("+00:00")
    data = png_bytes(gradient_image())
    uploaded = client.post(
        "/cdn/files/upload",
        content=data,
        headers={"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png", "X-Fal-File-Name": "in.png"},
    )
    assert uploaded.status_code == 200
    url = uploaded.json()["access_url"]
    served = client.get(url.split("127.0.0.1:8000", 1)[1])
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("storage", [{}], ids=["local"])  # refused before any storage is touched
def test_upload_needs_a_valid_token(client):
    assert client.post("/cdn/files/upload", content=b"x", headers={"Authorization": "Bearer forged.token"}).status_code == 401
    assert client.post("/cdn/files/upload", content=b"x", headers={"Authorization": "Bearer \xf1.\xfc".encode("latin-1")}).status_code == 401


def test_initiate_then_put(client):
    target = client.post("/rest/storage/upload/initiate?storage_type=fal-cdn-v3", json={"file_name": "../../evil name.png", "content_type": "image/png"}).json()
    upload_path = target["upload_url"].split("127.0.0.1:8000", 1)[1]
    data = png_bytes(gradient_image(5, 5))
    assert client.put(upload_path, content=data).status_code == 200
    file_path = target["file_url"].split("127.0.0.1:8000", 1)[1]
    assert file_path.endswith("/evil_name.png")
    assert client.get(file_path).content == data
    forged = upload_path.rsplit("token=", 1)[0] + "token=" + "x" * 40
    assert client.put(forged, content=b"other").status_code == 401


def test_non_images_are_served_as_attachments(client):
    target = client.post("/rest/storage/upload/initiate", json={"file_name": "page.html", "content_type": "text/html"}).json()
    client.put(target["upload_url"].split("127.0.0.1:8000", 1)[1], content=b"<script>alert(1)</script>")
    served = client.get(target["file_url"].split("127.0.0.1:8000", 1)[1])
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")


def test_uploads_over_the_limit_are_413(make_client):
    client = make_client(max_upload_bytes=100)
    token = client.post("/rest/storage/auth/token", json={}).json()["token"]
    response = client.post("/cdn/files/upload", content=b"x" * 101, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 413


def test_missing_files_are_404(client):
    assert client.get("/files/AAAAAAAAAAAAAAAAAAAAAA/x.png").status_code == 404
    assert client.get("/files/..%2F..%2Fqueue.sqlite3/x").status_code == 404


def test_own_file_urls_are_read_from_storage_not_fetched(client):
    """Kiln's own URLs point at loopback, which the SSRF guard refuses; they must still work as inputs."""
    token = client.post("/rest/storage/auth/token", json={}).json()["token"]
    url = client.post(
        "/cdn/files/upload", content=png_bytes(gradient_image(9, 7)), headers={"Authorization": f"Bearer {token}"}
    ).json()["access_url"]
    result = client.post("/run/kiln-test/steps", json={"image_url": url})
    assert result.status_code == 200 and result.json()["image_size"] == [9, 7]


# -- single-use upload URLs (issue 10 item 18) -----------------------------------------------------


def test_a_signed_upload_url_stores_one_file_once(client):
    """Issue 10 item 18: a signed upload URL could overwrite its file for an hour, although the file
    is served `Cache-Control: immutable`."""
    target = client.post("/rest/storage/upload/initiate", json={"file_name": "a.png", "content_type": "image/png"}).json()
    assert client.put(path_of(target["upload_url"]), content=b"first").status_code == 200
    second = client.put(path_of(target["upload_url"]), content=b"second")
    assert second.status_code == 403 and second.json()["error_type"] == "upload_url_used"
    served = client.get(path_of(target["file_url"]))
    assert served.content == b"first" and "immutable" in served.headers["cache-control"]


def test_an_upload_that_failed_leaves_its_url_usable(make_client):
    client = make_client(max_upload_bytes=10)
    target = client.post("/rest/storage/upload/initiate", json={"file_name": "a.txt"}).json()
    assert client.put(path_of(target["upload_url"]), content=b"x" * 11).status_code == 413
    assert client.get(path_of(target["file_url"])).status_code == 404
    assert client.put(path_of(target["upload_url"]), content=b"fits").status_code == 200
    assert client.get(path_of(target["file_url"])).content == b"fits"


# -- quotas and streaming (issue 10 item 19) ------------------------------------------------------


def test_uploads_are_limited_per_key_in_bytes_and_files(make_client):
    """Issue 10 item 19: uploads had no quota (1.8 GB in 19 s, 2000 files in 3.5 s). One file over
    the limit, a key over its byte quota or over its file quota is 413 (never 429: the clients retry it); keys are
    charged separately, whichever upload path they use."""
    client = make_client(
        api_keys=("key-a", "key-b"), max_upload_bytes=600, upload_quota_bytes=1000, upload_quota_files=3
    )
    key_a, key_b = {"Authorization": "Key key-a"}, {"Authorization": "Key key-b"}

    def upload(key: dict, size: int):
        return client.post("/cdn/files/upload", content=b"x" * size, headers=bearer(client, **key))

    assert upload(key_a, 601).status_code == 413
    assert upload(key_a, 500).status_code == 200
    assert upload(key_a, 400).status_code == 200
    over_bytes = upload(key_a, 200)
    assert over_bytes.status_code == 413 and "quota of 1000 bytes" in over_bytes.json()["detail"]
    assert upload(key_a, 50).status_code == 200
    over_files = upload(key_a, 1)
    assert over_files.status_code == 413 and over_files.json()["error_type"] == "upload_quota_exceeded"
    target = client.post("/rest/storage/upload/initiate", json={}, headers=key_a).json()
    assert client.put(path_of(target["upload_url"]), content=b"y").status_code == 413
    assert client.post("/rest/storage/upload/initiate-multipart", json={}, headers=key_a).status_code == 413
    assert upload(key_b, 600).status_code == 200


def test_quota_usage_is_read_back_after_a_restart_and_retention_frees_it(tmp_path):
    limits = UploadLimits(max_file_bytes=100, quota_bytes=150, quota_files=5)
    store = FileStore(tmp_path, "http://kiln")
    writer = store.begin_upload("owner", limits, content_type="text/plain", file_name="a.txt")
    writer.write(b"x" * 100)
    writer.commit()
    store.save(b"a result is no upload", content_type="text/plain", file_name="r.txt")
    assert FileStore(tmp_path, "http://kiln").usage("owner") == (100, 1)
    store.purge(time.time() + 1)
    assert store.usage("owner") == (0, 0)


def test_upload_limits_have_flags_and_documented_defaults(monkeypatch):
    monkeypatch.delenv("KILN_API_KEYS", raising=False)
    defaults = settings_from_args(build_parser().parse_args(["serve"]))
    assert (defaults.max_upload_bytes, defaults.upload_quota_bytes, defaults.upload_quota_files) == (
        1024 * MIB,
        10 * 1024 * MIB,
        10_000,
    )
    assert (Settings().max_upload_bytes, Settings().upload_quota_bytes, Settings().upload_quota_files) == (
        1024 * MIB,
        10 * 1024 * MIB,
        10_000,
    )
    flags = ["serve", "--max-upload-mib", "2", "--upload-quota-mib", "3.5", "--upload-quota-files", "4"]
    chosen = settings_from_args(build_parser().parse_args(flags))
    assert (chosen.max_upload_bytes, chosen.upload_quota_bytes, chosen.upload_quota_files) == (2 * MIB, 3.5 * MIB, 4)


def test_upload_bodies_stream_to_disk(tmp_path, registry, storage):
    """Issue 10 item 19: upload bodies were held in memory whole (12 uploads of 90 MB added 800 MB
    of RSS). Over real HTTP, a 48 MiB upload may raise the server's peak allocation by a few MiB."""
    size, block = 48 * MIB, os.urandom(MIB)
    with served_in_thread(tmp_path / "data", registry, **storage) as base, httpx.Client(base_url=base, timeout=60) as http:
        token = http.post("/rest/storage/auth/token", json={}).json()["token"]
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            uploaded = http.post(
                "/cdn/files/upload",
                content=(block for _ in range(size // MIB)),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
            )
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert uploaded.status_code == 200, uploaded.text
        served = http.get(urlsplit(uploaded.json()["access_url"]).path)
    assert len(served.content) == size and served.content[:MIB] == block
    assert peak < 8 * MIB, f"the upload raised the peak allocation by {peak / MIB:.0f} MiB"


# -- multipart uploads (issue 11 item 2; the real clients are in tests/clients/) -------------------


def test_python_client_multipart_protocol(client):
    """Issue 11 item 2: fal-client's multipart upload (files over 100 MiB) answered 404. Create, parts
    with an `ETag` each (a part sent again replaces it), complete with the part list; the file
    appears at `access_url` only when completed, and a part after completion is refused."""
    auth = bearer(client)
    created = client.post(
        "/cdn/files/upload/multipart", headers={**auth, "Content-Type": "image/png", "X-Fal-File-Name": "big.png"}
    )
    assert created.status_code == 200, created.text
    access, upload_id = created.json()["access_url"], created.json()["uploadId"]
    assert access.endswith("/big.png") and client.get(path_of(access)).status_code == 404
    parts = {}
    for number, data in ((2, b"world"), (1, b"hello "), (1, b"Hello ")):
        answer = client.put(f"{path_of(access)}/multipart/{upload_id}/{number}", content=data, headers=auth)
        assert answer.status_code == 200 and answer.headers["etag"] == answer.json()["etag"]
        parts[number] = answer.headers["etag"]
    complete = f"{path_of(access)}/multipart/{upload_id}/complete"
    listed = [{"partNumber": number, "etag": etag} for number, etag in sorted(parts.items(), reverse=True)]
    assert client.post(complete, json={"parts": [{"partNumber": 1, "etag": '"0"'}]}, headers=auth).status_code == 400
    assert client.post(complete, json={"parts": [*listed, {"partNumber": 3, "etag": '"0"'}]}, headers=auth).status_code == 400
    assert client.post(complete, json={"parts": listed}, headers={"Authorization": "Bearer x"}).status_code == 401
    done = client.post(complete, json={"parts": listed}, headers=auth)
    assert done.status_code == 200 and done.json()["access_url"] == access
    served = client.get(path_of(access))
    assert served.content == b"Hello world" and served.headers["content-type"] == "image/png"
    assert client.post(complete, json={"parts": listed}, headers=auth).status_code == 200  # a retried complete
    late = client.put(f"{path_of(access)}/multipart/{upload_id}/3", content=b"!", headers=auth)
    assert late.status_code == 404


def test_js_client_multipart_protocol(client):
    """Issue 11 item 2: @fal-ai/client's `initiate-multipart` (files over 90 MiB) answered 404. Parts go
    unauthenticated to `{upload_url path}/{n}?token=`, each answered with `{partNumber, etag}`."""
    target = client.post(
        "/rest/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
        json={"file_name": "big.bin", "content_type": "application/octet-stream"},
    )
    assert target.status_code == 200, target.text
    url = urlsplit(target.json()["upload_url"])
    answers = [client.put(f"{url.path}/{n}?{url.query}", content=data) for n, data in ((1, b"a" * 7), (2, b"b" * 3))]
    assert [answer.json()["partNumber"] for answer in answers] == [1, 2]
    assert client.put(f"{url.path}/3?token=forged", content=b"c").status_code == 401
    done = client.post(f"{url.path}/complete?{url.query}", json={"parts": [a.json() for a in answers]})
    assert done.status_code == 200, done.text
    assert client.get(path_of(target.json()["file_url"])).content == b"a" * 7 + b"b" * 3
    assert client.put(f"{url.path}/3?{url.query}", content=b"c").status_code == 404


def test_a_multipart_upload_belongs_to_its_key(make_client):
    client = make_client(api_keys=("key-a", "key-b"))
    auth_a, auth_b = bearer(client, Authorization="Key key-a"), bearer(client, Authorization="Key key-b")
    created = client.post("/cdn/files/upload/multipart", headers=auth_a).json()
    part = f"{path_of(created['access_url'])}/multipart/{created['uploadId']}/1"
    assert client.put(part, content=b"x", headers=auth_b).status_code == 404
    assert client.put(part, content=b"x", headers=auth_a).status_code == 200


def test_multipart_uploads_count_against_the_limits(make_client):
    client = make_client(max_upload_bytes=100, upload_quota_bytes=150, upload_quota_files=2)
    first, second = (
        urlsplit(client.post("/rest/storage/upload/initiate-multipart", json={}).json()["upload_url"]) for _ in range(2)
    )
    assert client.post("/rest/storage/upload/initiate-multipart", json={}).status_code == 413
    assert client.put(f"{first.path}/1?{first.query}", content=b"x" * 60).status_code == 200
    assert client.put(f"{first.path}/2?{first.query}", content=b"x" * 60).status_code == 413  # the file > 100
    assert client.put(f"{second.path}/1?{second.query}", content=b"x" * 95).status_code == 413  # the key > 150
    assert client.put(f"{second.path}/1?{second.query}", content=b"x" * 90).status_code == 200


# -- what dead writers leave (issue 10 item 20) ---------------------------------------------------


def test_stale_part_files_and_abandoned_multipart_uploads_are_purged(tmp_path, registry):
    """Issue 10 item 20: `.part` files left by killed writes were never purged."""
    files = tmp_path / "data" / "files"
    (files / "ab").mkdir(parents=True)
    stale, fresh = files / "ab" / ("ab" + "c" * 20 + ".part"), files / "ab" / ("ab" + "d" * 20 + ".part")
    abandoned = files / "multipart" / ("e" * 22)
    abandoned.mkdir(parents=True)
    (abandoned / "session.json").write_text('{"owner": "anonymous"}')
    (abandoned / "1.bin").write_bytes(b"part")
    stale.write_bytes(b"killed mid-write")
    fresh.write_bytes(b"being written")
    for path, age in ((stale, STALE_PART_SECONDS + 60), (abandoned / "session.json", 2 * 86400), (abandoned / "1.bin", 2 * 86400), (abandoned, 2 * 86400)):
        os.utime(path, (time.time() - age, time.time() - age))
    client = start_app(tmp_path / "data", registry, janitor_seconds=0.05)
    try:
        deadline = time.monotonic() + 10
        while (stale.exists() or abandoned.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not stale.exists() and not abandoned.exists()
        assert fresh.exists()
    finally:
        client.__exit__(None, None, None)


def test_an_upload_larger_than_the_json_body_limit_is_stored(make_client):
    """fal-client sends files up to 100 MiB in one request, and the 96 MiB JSON body limit refused
    those between 96 and 100 MiB on both of its upload paths; uploads have their own limits."""
    client = make_client(max_body_bytes=1024, max_upload_bytes=4096)
    token = client.post("/rest/storage/auth/token", json={}).json()["token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    stored = client.post("/cdn/files/upload", content=b"x" * 3000, headers=headers)
    assert stored.status_code == 200, stored.text
    target = client.post("/rest/storage/upload/initiate", json={"file_name": "a.bin"}).json()
    assert client.put(path_of(target["upload_url"]), content=b"y" * 3000).status_code == 200
    assert client.post("/cdn/files/upload", content=b"x" * 5000, headers=headers).status_code == 413
    json_body = {"Content-Type": "application/json"}
    assert client.post("/queue/kiln-test/steps", content=b"{" + b" " * 2000 + b"}", headers=json_body).status_code == 413
