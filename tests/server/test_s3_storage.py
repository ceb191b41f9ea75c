"""`--storage s3://BUCKET/PREFIX`: what holds across nodes, URL modes, retention and crash repair.

The upload protocol itself runs on both backends in test_storage.py; here two Kiln apps share one
bucket (as two nodes do), against moto's S3 server (tests/fixtures/s3_server.py).
"""

from __future__ import annotations

import shutil
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from server.cli import build_parser, settings_from_args
from server.files import STALE_PART_SECONDS, UploadLimits
from server.storage import S3Location, S3Options, open_file_store
from server.storage.s3 import S3FileStore
from testkit.images import gradient_image, png_bytes
from tests.fixtures.apps import start_app, submit
from tests.fixtures.live_server import served_in_thread
from tests.fixtures.s3_server import moto_s3

MIB = 1024 * 1024


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@pytest.fixture(scope="module")
def s3_server():
    with moto_s3() as server:
        yield server


@pytest.fixture
def bucket(s3_server, monkeypatch) -> str:
    """A fresh bucket's `--storage` URL, with this process's AWS_* variables pointing at moto."""
    for name, value in s3_server.environment.items():
        monkeypatch.setenv(name, value)
    return s3_server.new_bucket()


@pytest.fixture
def two_nodes(tmp_path, registry, bucket):
    """Two Kiln apps (own data dirs, own queues) on one bucket, sharing the upload-token key as
    nodes on one queue do."""
    first = start_app(tmp_path / "a", registry, storage=bucket, api_keys=("key-a",), upload_quota_files=3)
    (tmp_path / "b" / "keys").mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "keys" / "token.key", tmp_path / "b" / "keys" / "token.key")
    second = start_app(tmp_path / "b", registry, storage=bucket, api_keys=("key-a",), upload_quota_files=3)
    yield first, second
    for node in (first, second):
        node.__exit__(None, None, None)


KEY = {"Authorization": "Key key-a"}


def cdn_upload(node, data: bytes, name: str = "in.png"):
    token = node.post("/rest/storage/auth/token", json={}, headers=KEY).json()["token"]
    return node.post(
        "/cdn/files/upload",
        content=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png", "X-Fal-File-Name": name},
    )


def test_files_quotas_and_upload_urls_hold_across_nodes(two_nodes):
    """An upload on one node is served by the other and is an input there; the key's file quota
    counts its uploads on both; a signed upload URL used on one node is used up on the other."""
    a, b = two_nodes
    data = png_bytes(gradient_image(9, 7))
    url = cdn_upload(a, data).json()["access_url"]
    served = b.get(path_of(url))
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/png" and served.headers["x-content-type-options"] == "nosniff"
    result = b.post("/run/kiln-test/steps", json={"image_url": url}, headers=KEY)
    assert result.status_code == 200 and result.json()["image_size"] == [9, 7]

    target = a.post("/rest/storage/upload/initiate", json={"file_name": "x.bin"}, headers=KEY).json()
    assert a.put(path_of(target["upload_url"]), content=b"first").status_code == 200
    again = b.put(path_of(target["upload_url"]), content=b"second")
    assert again.status_code == 403 and again.json()["error_type"] == "upload_url_used"
    assert b.get(path_of(target["file_url"])).content == b"first"
    assert cdn_upload(b, b"x").status_code == 200
    over = cdn_upload(a, b"x")  # three files stored (on both nodes): the quota of 3 is used up
    assert over.status_code == 413 and over.json()["error_type"] == "upload_quota_exceeded"


def test_a_signed_upload_url_stores_one_file_when_two_nodes_race(two_nodes):
    a, b = two_nodes
    for _ in range(3):
        target = a.post("/rest/storage/upload/initiate", json={"file_name": "r.bin"}, headers=KEY).json()
        answers: dict[str, int] = {}

        def put(node, label: str) -> None:
            answers[label] = node.put(path_of(target["upload_url"]), content=label.encode() * 1000).status_code

        threads = [threading.Thread(target=put, args=(node, label)) for node, label in ((a, "a"), (b, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers.values()) == [200, 403], answers
        winner = next(label for label, status in answers.items() if status == 200)
        assert b.get(path_of(target["file_url"])).content == winner.encode() * 1000
        # the quota is 3 files: remove this one before the next round
        store = a.app.state.services.files
        file_id = target["file_url"].split("/")[-2]
        store.bucket.delete([f"files/{file_id}", *(e.key for e in store.bucket.list("uploads/") if file_id in e.key)])
        store.reconcile()


def test_results_are_written_to_the_bucket_and_served_by_every_node(two_nodes):
    a, b = two_nodes
    queued = submit(a, {"image_url": _data_uri()}, path="/queue/fal-ai/post-processing", headers=KEY)
    status_url = queued["status_url"]
    deadline = time.monotonic() + 60
    while a.get(status_url, headers=KEY).json()["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    image = a.get(queued["response_url"], headers=KEY).json()["images"][0]
    assert "/files/" in image["url"]
    served = b.get(urlsplit(image["url"]).path)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert len(served.content) == image["file_size"]


def _data_uri() -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(gradient_image(16, 12))).decode()


@pytest.mark.parametrize("mode", ["presigned", "public"])
def test_files_can_be_served_by_the_store_itself(tmp_path, registry, bucket, s3_server, monkeypatch, mode):
    """KILN_S3_URLS=presigned or public: `/files/` answers 307 to the object, so the bytes never pass
    through Kiln; the result and upload URLs stay Kiln's own (they work as inputs)."""
    monkeypatch.setenv("KILN_S3_URLS", mode)
    location = S3Location.parse(bucket)
    monkeypatch.setenv("KILN_S3_PUBLIC_URL", f"{s3_server.endpoint}/{location.bucket}")
    with served_in_thread(tmp_path / "data", registry, storage=bucket) as base, httpx.Client(base_url=base) as http:
        token = http.post("/rest/storage/auth/token", json={}).json()["token"]
        url = http.post(
            "/cdn/files/upload", content=b"hello", headers={"Authorization": f"Bearer {token}", "X-Fal-File-Name": "a.txt"}
        ).json()["access_url"]
        assert url.startswith(base + "/files/")
        answer = http.get(urlsplit(url).path)
        assert answer.status_code == 307
        location_url = answer.headers["location"]
        assert location_url.startswith(s3_server.endpoint)
        if mode == "public":
            s3_server.client().put_bucket_policy(
                Bucket=location.bucket,
                Policy=f'{{"Statement":[{{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{location.bucket}/*"}}]}}',
            )
        assert httpx.get(location_url).content == b"hello"


def test_multipart_parts_of_5_mib_are_joined_by_the_store(make_client_s3):
    """Parts at S3's minimum size or larger (both clients send 10 MiB) are copied into the file by
    the store (UploadPartCopy), not streamed through Kiln; smaller ones are streamed."""
    client = make_client_s3()
    target = client.post("/rest/storage/upload/initiate-multipart", json={"file_name": "big.bin"}).json()
    url = urlsplit(target["upload_url"])
    blocks = [b"a" * (5 * MIB), b"b" * (5 * MIB), b"tail"]
    parts = [client.put(f"{url.path}/{n}?{url.query}", content=data).json() for n, data in enumerate(blocks, start=1)]
    assert client.post(f"{url.path}/complete?{url.query}", json={"parts": parts}).status_code == 200
    served = client.get(path_of(target["file_url"]))
    assert served.content == b"".join(blocks)
    store = client.app.state.services.files
    assert store.usage("anonymous") == (10 * MIB + 4, 1)
    assert not list(store.bucket.list("multipart/"))


@pytest.fixture
def make_client_s3(tmp_path, registry, bucket):
    clients = []

    def make(**overrides):
        client = start_app(tmp_path / f"data{len(clients)}", registry, storage=bucket, **overrides)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- the store on its own: quotas, retention, what dead writers leave ------------------------------


def new_store(bucket: str) -> S3FileStore:
    return open_file_store(bucket, "http://kiln")


def test_quota_usage_is_shared_by_every_store_and_retention_frees_it(bucket):
    limits = UploadLimits(max_file_bytes=100, quota_bytes=150, quota_files=5)
    store = new_store(bucket)
    writer = store.begin_upload("owner", limits, content_type="text/plain", file_name="a.txt")
    writer.write(b"x" * 100)
    writer.commit()
    store.save(b"a result is no upload", content_type="text/plain", file_name="r.txt")
    assert new_store(bucket).usage("owner") == (100, 1)
    assert store.purge(time.time() + 1) == 2
    assert new_store(bucket).usage("owner") == (0, 0)
    assert not list(store.bucket.list("files/"))


class Later:
    """`time` for server.storage.s3 as it will be `seconds` from now (boto3 keeps the real clock)."""

    sleep = staticmethod(time.sleep)

    def __init__(self, seconds: float) -> None:
        self._offset = seconds

    def time(self) -> float:
        return time.time() + self._offset


def test_a_writer_that_died_stops_counting_and_purge_recounts_the_ledger(bucket, monkeypatch):
    """A node killed mid-upload leaves a reservation that lapses after STALE_PART_SECONDS; one killed
    between storing a file and recording it leaves the file uncounted until purge recounts."""
    limits = UploadLimits(max_file_bytes=1000, quota_bytes=1000, quota_files=5)
    store = new_store(bucket)
    dead = store.begin_upload("owner", limits, content_type="text/plain", file_name="a.txt")
    dead.write(b"x" * 10)  # and the node dies: no commit, no abort
    stored = store.begin_upload("owner", limits, content_type="text/plain", file_name="b.txt")
    stored.write(b"y" * 40)
    stored._target.finish()  # the file is stored, its marker written, then the node dies
    file_id = next(entry.key.rsplit("/", 1)[1] for entry in store.bucket.list("files/"))
    store.bucket.put(f"uploads/owner/{file_id}.40", b"")
    assert store.usage("owner")[1] == 2
    with monkeypatch.context() as later:
        later.setattr("server.storage.s3.time", Later(STALE_PART_SECONDS + 1))
        assert store.usage("owner") == (0, 0)
        assert store.purge(0) == 0
        assert store.usage("owner") == (40, 1)


def test_stale_claims_and_abandoned_uploads_are_purged(bucket):
    limits = UploadLimits(max_file_bytes=100 * MIB, quota_bytes=100 * MIB, quota_files=5)
    store = new_store(bucket)
    # a claim whose upload died, a multipart upload nobody finished, an S3 multipart upload left open
    store.begin_upload("owner", limits, content_type="text/plain", file_name="a.txt")
    session = store.create_multipart("owner", limits, content_type="text/plain", file_name="b.txt")
    part = store.begin_part(session.upload_id, session.file_id, "owner", 1, limits)
    part.write(b"p" * 10)
    part.commit()
    big = store.begin_upload("owner", limits, content_type="text/plain", file_name="c.bin")
    for _ in range(store.options.part_bytes // MIB + 1):  # past one part: an S3 multipart upload is open
        big.write(b"z" * MIB)
    assert store.purge_partial() == 0
    # both claims (no file came of either), the multipart upload, the S3 multipart upload
    assert store.purge_partial(time.time() + 2 * 86400) == 4
    assert not list(store.bucket.list("claims/")) and not list(store.bucket.list("multipart/"))
    assert not store.bucket.client.list_multipart_uploads(Bucket=store.bucket.name).get("Uploads")


def test_storage_flag_environment_and_url_modes(monkeypatch):
    monkeypatch.delenv("KILN_API_KEYS", raising=False)
    monkeypatch.delenv("KILN_STORAGE", raising=False)
    assert settings_from_args(build_parser().parse_args(["serve"])).storage is None
    chosen = settings_from_args(build_parser().parse_args(["serve", "--storage", "s3://bucket/some/prefix/"]))
    assert chosen.storage_location == "s3://bucket/some/prefix/"
    assert S3Location.parse(chosen.storage) == S3Location("bucket", "some/prefix/")
    assert S3Location.parse("s3://bucket") == S3Location("bucket", "")
    monkeypatch.setenv("KILN_STORAGE", "/srv/kiln-files")
    assert str(settings_from_args(build_parser().parse_args(["serve"])).storage_location) == "/srv/kiln-files"
    with pytest.raises(ValueError, match="KILN_S3_PUBLIC_URL"):
        S3Options.from_environment({"KILN_S3_URLS": "public"})
    with pytest.raises(ValueError, match="one of proxy, presigned, public"):
        S3Options.from_environment({"KILN_S3_URLS": "cdn"})
    assert S3Options.from_environment({}).url_mode == "proxy"


def test_a_bucket_that_cannot_be_reached_stops_the_start(s3_server, monkeypatch):
    from server.storage.s3 import StorageUnavailable

    for name, value in s3_server.environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StorageUnavailable, match="s3://no-such-bucket/kiln/"):
        open_file_store("s3://no-such-bucket/kiln", "http://kiln")
