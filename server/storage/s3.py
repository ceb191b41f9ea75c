"""Result and upload files in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, moto), shared
by every node given the same `--storage s3://BUCKET/PREFIX`.

The same operations as the local `FileStore` (server/files.py), through boto3. Under the prefix:

- `files/<id>`: the file; its name, owner and content type ride on the object (S3 metadata), so one
  HEAD answers `open`. An object appears whole or not at all, so nothing like a `.part` is needed.
- `claims/<id>`: an upload's claim on its file id, created with `If-None-Match: *` before the first
  byte: of two PUTs to one signed upload URL, on any nodes, exactly one gets to store the file.
- `uploads/<owner>/<id>.<size>`: an empty marker per stored upload, so a key's uploads can be counted
  from a listing.
- `multipart/<owner>/<upload id>/session.json` and `<n>.<etag>`: an open multipart upload and its
  parts. A part's etag is a fresh random token (etags are opaque to both clients), so the key of a part
  is known before its bytes arrive and a listing tells every part's size and etag.
- `quota/<owner>.json`: the key's usage ledger (`QuotaLedger`), changed only by conditional writes.

Bodies stream through a local temporary file a part at a time (`ObjectWriter`), never whole in memory;
a body larger than one part becomes an S3 multipart upload. A completed multipart upload (Kiln's
protocol) is joined by the store itself (`UploadPartCopy`) when its parts meet S3's 5 MiB minimum, as
both clients' 10 MiB parts do, else streamed through in order.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from server.errors import BadRequest, NotFound
from server.files import (
    FILE_ID,
    MAX_PARTS,
    MULTIPART_IDLE_SECONDS,
    STALE_PART_SECONDS,
    UPLOAD_ID,
    MultipartSession,
    chosen_parts,
    StoredFile,
    StreamingUpload,
    UploadLimits,
    UploadUrlUsed,
    file_id_in_url,
    new_file_id,
    quota_bytes_error,
    quota_files_error,
    safe_file_name,
)
from server.storage import S3Location, S3Options

logger = logging.getLogger(__name__)

# S3's smallest part but the last; parts this size or larger are joined without passing through Kiln
MIN_PART_BYTES = 5 * 1024 * 1024
# how much quota an upload of unknown length reserves at a time (fewer ledger writes)
RESERVE_GRAIN_BYTES = 8 * 1024 * 1024
READ_BLOCK_BYTES = 1024 * 1024
# conditional writes that lost a race are retried this many times, with jittered backoff
CAS_ATTEMPTS = 64


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _lost_race(error: ClientError) -> bool:
    """A conditional write that failed because someone else wrote first (412), or at the same time
    (409 ConditionalRequestConflict on AWS)."""
    return _status(error) in (409, 412) or _code(error) in ("PreconditionFailed", "ConditionalRequestConflict")


def _missing(error: ClientError) -> bool:
    return _status(error) == 404 or _code(error) in ("NoSuchKey", "NotFound", "404", "NoSuchUpload")


class StorageUnavailable(RuntimeError):
    """`--storage` names an object store this server cannot use."""


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified: float


# the environment boto3 configures itself from; a session (and its parsed service model, slow to
# load) is shared by every store made under the same values
_SESSION_ENVIRONMENT = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
_sessions: dict[tuple, boto3.session.Session] = {}
_sessions_lock = threading.Lock()


def _session() -> boto3.session.Session:
    environment = tuple(os.environ.get(name) for name in _SESSION_ENVIRONMENT)
    with _sessions_lock:
        if environment not in _sessions:
            region = os.environ.get("AWS_REGION")
            _sessions[environment] = boto3.session.Session(region_name=region) if region else boto3.session.Session()
        return _sessions[environment]


class Bucket:
    """The few S3 calls Kiln makes, on keys relative to the prefix."""

    def __init__(self, location: S3Location, options: S3Options) -> None:
        self.name = location.bucket
        self.prefix = location.prefix
        session = _session()
        config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
        with _sessions_lock:  # a session is not safe to make clients from in two threads at once
            self.client = session.client("s3", config=config)
            # a custom endpoint (MinIO, Ceph, moto) usually has no per-bucket DNS names: path-style addressing
            if not urlsplit(self.client.meta.endpoint_url).netloc.endswith("amazonaws.com"):
                self.client = session.client("s3", config=config.merge(Config(s3={"addressing_style": "path"})))

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def put(self, relative: str, body: Any, **extra: Any) -> dict:
        return self.client.put_object(Bucket=self.name, Key=self.key(relative), Body=body, **extra)

    def get(self, relative: str, **extra: Any) -> dict | None:
        try:
            return self.client.get_object(Bucket=self.name, Key=self.key(relative), **extra)
        except ClientError as error:
            if _missing(error):
                return None
            raise

    def head(self, relative: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.name, Key=self.key(relative))
        except ClientError as error:
            if _missing(error):
                return None
            raise

    def delete(self, relatives: Iterable[str]) -> None:
        keys = [self.key(relative) for relative in relatives]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.name, Delete={"Objects": batch, "Quiet": True})

    def list(self, relative_prefix: str) -> Iterator[Listed]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.name, Prefix=self.key(relative_prefix)):
            for entry in page.get("Contents", ()):
                yield Listed(entry["Key"][len(self.prefix) :], entry["Size"], entry["LastModified"].timestamp())


class ObjectWriter:
    """Bytes streaming into one object through a local temporary file, a part at a time.

    Small bodies become one PutObject at `finish`; past `part_bytes` an S3 multipart upload starts and
    each full part is sent as it fills. With `exclusive`, `finish` fails with UploadUrlUsed if the
    object exists already (If-None-Match). Memory use is one read block, whatever the size."""

    def __init__(
        self,
        bucket: Bucket,
        relative: str,
        *,
        content_type: str,
        metadata: dict[str, str],
        part_bytes: int,
        exclusive: bool = False,
    ) -> None:
        self._bucket = bucket
        self._key = bucket.key(relative)
        self._extra = {"ContentType": content_type, "Metadata": metadata}
        self._part_bytes = max(MIN_PART_BYTES, part_bytes)
        self._exclusive = exclusive
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 (open until finish or abort)
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self._spool.write(data)
        self.size += len(data)
        if self._spool.tell() >= self._part_bytes:
            self._send_part()

    def _send_part(self) -> None:
        client = self._bucket.client
        if self._upload_id is None:
            created = client.create_multipart_upload(Bucket=self._bucket.name, Key=self._key, **self._extra)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        self._spool.flush()
        self._spool.seek(0)
        sent = client.upload_part(
            Bucket=self._bucket.name, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=self._spool
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})
        self._spool.seek(0)
        self._spool.truncate()

    def finish(self) -> int:
        """Makes the object visible, whole; returns its size."""
        condition = {"IfNoneMatch": "*"} if self._exclusive else {}
        client = self._bucket.client
        try:
            if self._upload_id is None:
                self._spool.seek(0)
                client.put_object(Bucket=self._bucket.name, Key=self._key, Body=self._spool, **self._extra, **condition)
            else:
                if self._spool.tell():
                    self._send_part()
                client.complete_multipart_upload(
                    Bucket=self._bucket.name,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                    **condition,
                )
                self._upload_id = None
        except ClientError as error:
            if self._exclusive and _lost_race(error):
                raise UploadUrlUsed("This upload URL was used already; initiate a new upload") from None
            raise
        finally:
            self._spool.close()
        return self.size

    def abort(self) -> None:
        self._spool.close()
        if self._upload_id is not None:
            try:
                self._bucket.client.abort_multipart_upload(
                    Bucket=self._bucket.name, Key=self._key, UploadId=self._upload_id
                )
            except ClientError as error:  # purge_partial aborts it later
                logger.warning("could not abort the multipart upload of %s: %s", self._key, error)
            self._upload_id = None


class QuotaLedger:
    """What each key keeps stored, in one small JSON object per key, changed only by conditional
    writes (If-Match on its ETag, If-None-Match for the first), so every node enforces one quota.

    `bytes` and `files` count what is stored; `pending` holds the reservations of uploads streaming in
    now, each stamped when it last grew: a writer that died stops being counted after
    `STALE_PART_SECONDS`. `reconcile` recounts from a listing (what purge runs), which repairs what a
    node that died between storing a file and recording it left behind."""

    def __init__(self, bucket: Bucket) -> None:
        self._bucket = bucket

    def _relative(self, owner: str) -> str:
        return f"quota/{owner}.json"

    def _load(self, owner: str) -> tuple[dict, str | None]:
        got = self._bucket.get(self._relative(owner))
        if got is None:
            return {"bytes": 0, "files": 0, "pending": {}}, None
        doc = json.loads(got["Body"].read())
        doc.setdefault("pending", {})
        return doc, got["ETag"]

    def update(self, owner: str, change: Callable[[dict], Any]) -> Any:
        """Applies `change` to the owner's ledger and writes it back if nobody wrote in between; else
        reads it again and retries. What `change` raises (a quota error) is raised, nothing written."""
        for attempt in range(CAS_ATTEMPTS):
            doc, etag = self._load(owner)
            now = time.time()
            doc["pending"] = {
                writer: entry for writer, entry in doc["pending"].items() if entry["at"] >= now - STALE_PART_SECONDS
            }
            outcome = change(doc)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self._bucket.put(self._relative(owner), json.dumps(doc).encode(), ContentType="application/json", **condition)
                return outcome
            except ClientError as error:
                if not (_lost_race(error) or _missing(error)):
                    raise
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))
        raise RuntimeError(f"the quota ledger of {owner} is too contended to update")

    @staticmethod
    def used(doc: dict) -> tuple[int, int]:
        pending = doc["pending"].values()
        return doc["bytes"] + sum(e["bytes"] for e in pending), doc["files"] + sum(e["files"] for e in pending)

    def usage(self, owner: str) -> tuple[int, int]:
        doc, _ = self._load(owner)
        now = time.time()
        doc["pending"] = {w: e for w, e in doc["pending"].items() if e["at"] >= now - STALE_PART_SECONDS}
        return self.used(doc)

    def reserve(
        self, owner: str, writer: str, limits: UploadLimits, *, files: int = 0, at_least: int = 0, wanted: int = 0, ref: str = ""
    ) -> int:
        """Reserves `files` and at least `at_least` bytes for `writer` (up to `wanted`, within a
        quarter of the room left); returns the bytes reserved. Raises the quota errors."""

        def change(doc: dict) -> int:
            used_bytes, used_files = self.used(doc)
            if files and used_files + files > limits.quota_files:
                raise quota_files_error(used_files, limits)
            if at_least and used_bytes + at_least > limits.quota_bytes:
                raise quota_bytes_error(used_bytes, limits)
            # a grain ahead, but never more than a quarter of the room left: near its quota a key's
            # uploads reserve what they need, and do not starve each other with bytes they will not use
            granted = max(at_least, min(wanted, (limits.quota_bytes - used_bytes) // 4))
            entry = doc["pending"].setdefault(writer, {"bytes": 0, "files": 0, "ref": ref})
            entry["bytes"] += granted
            entry["files"] += files
            entry["at"] = time.time()
            return granted

        return self.update(owner, change)

    def settle(self, owner: str, writer: str, *, size: int, files: int, refund: int = 0) -> None:
        """The writer's upload is stored: its reservation becomes `size` bytes and `files` files kept
        (less `refund` bytes that it replaced)."""

        def change(doc: dict) -> None:
            doc["pending"].pop(writer, None)
            doc["bytes"] = max(0, doc["bytes"] + size - refund)
            doc["files"] = max(0, doc["files"] + files)

        self.update(owner, change)

    def release(self, owner: str, writer: str) -> None:
        self.update(owner, lambda doc: doc["pending"].pop(writer, None))

    def add(self, owner: str, *, size: int = 0, files: int = 0, limits: UploadLimits | None = None) -> None:
        """Adds to (or with negative numbers, takes from) what the owner keeps; with `limits`, refuses
        what would take it past its file quota."""

        def change(doc: dict) -> None:
            if limits is not None and files > 0:
                used_files = self.used(doc)[1]
                if used_files + files > limits.quota_files:
                    raise quota_files_error(used_files, limits)
            doc["bytes"] = max(0, doc["bytes"] + size)
            doc["files"] = max(0, doc["files"] + files)

        self.update(owner, change)

    def reconcile(self, owner: str, stored: Callable[[], dict[str, tuple[int, int]]]) -> None:
        """Sets what the owner keeps to what `stored()` lists (ref -> (bytes, files)), leaving out what
        a pending writer will still record. The ledger is read before the listing and written only if
        unchanged since, so a write in between makes it start over rather than count twice."""
        for attempt in range(CAS_ATTEMPTS):
            doc, etag = self._load(owner)
            listed = stored()
            now = time.time()
            doc["pending"] = {w: e for w, e in doc["pending"].items() if e["at"] >= now - STALE_PART_SECONDS}
            refs = {entry.get("ref") for entry in doc["pending"].values()}
            kept = [usage for ref, usage in listed.items() if ref not in refs]
            if etag is None and not kept and not doc["pending"]:
                return  # nothing stored, nothing recorded
            doc["bytes"], doc["files"] = sum(b for b, _ in kept), sum(f for _, f in kept)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self._bucket.put(self._relative(owner), json.dumps(doc).encode(), ContentType="application/json", **condition)
                return
            except ClientError as error:
                if not (_lost_race(error) or _missing(error)):
                    raise
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))

    def owners(self) -> set[str]:
        return {entry.key[len("quota/") : -len(".json")] for entry in self._bucket.list("quota/")}


class S3FileStore:
    """`FileStore`'s operations on an S3-compatible bucket; see the module docstring for the layout."""

    def __init__(self, location: S3Location, base_url: str, options: S3Options | None = None) -> None:
        self.location = location
        self.options = options or S3Options()
        self._base_url = base_url.rstrip("/")
        self.bucket = Bucket(location, self.options)
        self.ledger = QuotaLedger(self.bucket)
        try:  # refuse to start on a bucket that is not there, rather than fail every upload and result
            self.bucket.client.head_bucket(Bucket=location.bucket)
        except (ClientError, BotoCoreError) as error:
            raise StorageUnavailable(
                f"`--storage s3://{location.bucket}/{location.prefix}`: the bucket cannot be reached ({error}); "
                "check AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), the credentials and that the bucket exists"
            ) from None

    # -- results and reading ---------------------------------------------------------------------

    def save(
        self, data: bytes, *, content_type: str, file_name: str | None, file_id: str | None = None
    ) -> StoredFile:
        file_id = file_id or new_file_id()
        if not FILE_ID.match(file_id):
            raise ValueError(f"invalid file id {file_id!r}")
        name = safe_file_name(file_name)
        self.bucket.put(
            f"files/{file_id}", data, ContentType=content_type, Metadata={"file-name": quote(name)}, IfNoneMatch="*"
        )
        return StoredFile(file_id, name, content_type, len(data))

    def url(self, stored: StoredFile) -> str:
        return self.file_url(stored.file_id, stored.file_name)

    def file_url(self, file_id: str, file_name: str) -> str:
        return f"{self._base_url}/files/{file_id}/{quote(file_name)}"

    def _head(self, file_id: str) -> tuple[StoredFile, str | None] | None:
        if not FILE_ID.match(file_id):
            return None
        head = self.bucket.head(f"files/{file_id}")
        if head is None:
            return None
        metadata = head.get("Metadata", {})
        stored = StoredFile(
            file_id,
            unquote(metadata.get("file-name", "file.bin")),
            head.get("ContentType", "application/octet-stream"),
            head["ContentLength"],
        )
        return stored, metadata.get("owner")

    def open(self, file_id: str) -> StoredFile | None:
        found = self._head(file_id)
        return found[0] if found else None

    def resolve(self, url: str) -> StoredFile | None:
        """The stored file a URL names, if it is one of this server's file URLs."""
        file_id = file_id_in_url(self._base_url, url)
        return None if file_id is None else self.open(file_id)

    def read(self, stored: StoredFile) -> bytes:
        got = self.bucket.get(f"files/{stored.file_id}")
        if got is None:
            raise FileNotFoundError(stored.file_id)
        return got["Body"].read()

    def iter_bytes(self, stored: StoredFile) -> Iterator[bytes] | None:
        """The file's bytes a block at a time (what a proxied `/files/` download sends); None if gone."""
        got = self.bucket.get(f"files/{stored.file_id}")
        if got is None:
            return None

        def blocks(body: Any) -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(READ_BLOCK_BYTES)
            finally:  # also when the client goes away mid-download: the connection goes back to the pool
                body.close()

        return blocks(got["Body"])

    def redirect_url(self, stored: StoredFile) -> str | None:
        """Where a `/files/` download is sent instead of streaming it through Kiln (KILN_S3_URLS):
        a presigned GET, the bucket's public URL, or None to proxy."""
        key = self.bucket.key(f"files/{stored.file_id}")
        if self.options.url_mode == "public":
            return f"{self.options.public_url.rstrip('/')}/{quote(key)}"
        if self.options.url_mode == "presigned":
            disposition = "inline" if stored.content_type.startswith("image/") else "attachment"
            return self.bucket.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket.name,
                    "Key": key,
                    "ResponseContentDisposition": f"{disposition}; filename=\"{stored.file_name}\"",
                },
                ExpiresIn=self.options.presign_seconds,
            )
        return None

    # -- uploads -------------------------------------------------------------------------------

    def begin_upload(
        self,
        owner: str,
        limits: UploadLimits,
        *,
        content_type: str,
        file_name: str | None,
        file_id: str | None = None,
    ) -> S3UploadWriter:
        """Claims `file_id` (a fresh one by default) for an upload by `owner`, on every node at once,
        and returns the writer its bytes stream into. Raises UploadUrlUsed if the id was claimed
        before, and UploadQuotaExceeded if the owner keeps its quota of files."""
        file_id = file_id or new_file_id()
        if not FILE_ID.match(file_id):
            raise NotFound("Unknown upload")
        writer_id = secrets.token_hex(8)
        self.ledger.reserve(owner, writer_id, limits, files=1, ref=file_id)
        try:
            self.bucket.put(f"claims/{file_id}", b"", IfNoneMatch="*")
        except ClientError as error:
            self.ledger.release(owner, writer_id)
            if _lost_race(error):
                raise UploadUrlUsed("This upload URL was used already; initiate a new upload") from None
            raise
        name = safe_file_name(file_name)

        def publish(writer: S3UploadWriter) -> StoredFile:
            self.bucket.put(f"uploads/{owner}/{file_id}.{writer.size}", b"")
            self.ledger.settle(owner, writer_id, size=writer.size, files=1)
            return StoredFile(file_id, name, content_type, writer.size)

        def unclaim() -> None:
            self.bucket.delete([f"claims/{file_id}"])

        target = ObjectWriter(
            self.bucket,
            f"files/{file_id}",
            content_type=content_type,
            metadata={"file-name": quote(name), "owner": owner},
            part_bytes=self.options.part_bytes,
            exclusive=True,
        )
        return S3UploadWriter(self, owner, writer_id, limits, target, on_commit=publish, on_abort=unclaim)

    def uploaded_by(self, file_id: str, owner: str) -> StoredFile | None:
        found = self._head(file_id)
        return found[0] if found and found[1] == owner else None

    # -- multipart uploads ---------------------------------------------------------------------

    def _session_key(self, owner: str, upload_id: str) -> str:
        return f"multipart/{owner}/{upload_id}/session.json"

    def create_multipart(
        self, owner: str, limits: UploadLimits, *, content_type: str, file_name: str | None
    ) -> MultipartSession:
        """Starts a multipart upload by `owner`; it holds one of the owner's files until completed."""
        self.ledger.add(owner, files=1, limits=limits)
        session = MultipartSession.start(owner, content_type=content_type, file_name=file_name)
        try:
            self.bucket.put(self._session_key(owner, session.upload_id), json.dumps(session.to_json()).encode())
        except BaseException:
            self.ledger.add(owner, files=-1)
            raise
        return session

    def _session(self, upload_id: str, file_id: str, owner: str) -> MultipartSession | None:
        if not UPLOAD_ID.match(upload_id):
            return None
        got = self.bucket.get(self._session_key(owner, upload_id))
        if got is None:
            return None
        try:
            session = MultipartSession.from_json(json.loads(got["Body"].read()))
        except (ValueError, KeyError):
            return None
        return session if (session.file_id, session.owner) == (file_id, owner) else None

    def _parts(self, owner: str, upload_id: str) -> dict[int, tuple[int, str, str]]:
        """Part number -> (size, etag, key) of every part stored for a multipart upload (the newest,
        should one part have been sent twice at once)."""
        newest: dict[int, Listed] = {}
        for entry in self.bucket.list(f"multipart/{owner}/{upload_id}/"):
            number, _, etag = entry.key.rsplit("/", 1)[1].partition(".")
            if number.isdigit() and etag != "json":
                if int(number) not in newest or entry.modified >= newest[int(number)].modified:
                    newest[int(number)] = entry
        return {n: (e.size, e.key.rsplit("/", 1)[1].partition(".")[2], e.key) for n, e in newest.items()}

    def begin_part(
        self, upload_id: str, file_id: str, owner: str, part_number: int, limits: UploadLimits
    ) -> S3UploadWriter:
        """The writer one part streams into; a part sent again replaces the earlier one. Committing it
        returns the part's etag."""
        session = self._session(upload_id, file_id, owner)
        if session is None:
            raise NotFound("No such multipart upload, or it was completed already; start a new upload")
        if not 1 <= part_number <= MAX_PARTS:
            raise BadRequest(f"`partNumber` must be between 1 and {MAX_PARTS}; got {part_number}")
        parts = self._parts(owner, upload_id)
        others = sum(size for number, (size, _, _) in parts.items() if number != part_number)
        etag = secrets.token_hex(16)
        relative = f"multipart/{owner}/{upload_id}/{part_number}.{etag}"
        writer_id = secrets.token_hex(8)

        def commit(writer: S3UploadWriter) -> str:
            if self.bucket.head(self._session_key(owner, upload_id)) is None:
                self.bucket.delete([relative])
                raise NotFound("This multipart upload was completed or abandoned; start a new upload")
            replaced = [
                entry
                for entry in self.bucket.list(f"multipart/{owner}/{upload_id}/{part_number}.")
                if entry.key != relative
            ]
            self.bucket.delete(entry.key for entry in replaced)
            self.ledger.settle(owner, writer_id, size=writer.size, files=0, refund=sum(e.size for e in replaced))
            return f'"{etag}"'

        target = ObjectWriter(
            self.bucket, relative, content_type="application/octet-stream", metadata={}, part_bytes=self.options.part_bytes
        )
        return S3UploadWriter(
            self, owner, writer_id, limits, target, on_commit=commit, already=others, ref=self.bucket.key(relative)
        )

    def complete_multipart(
        self, upload_id: str, file_id: str, owner: str, parts: Iterable[tuple[int, str]], limits: UploadLimits
    ) -> StoredFile:
        """Joins the listed parts, in part-number order, into the upload's file; parts not listed are
        dropped. Completing an upload that was completed already returns its file (a retried call)."""
        session = self._session(upload_id, file_id, owner)
        if session is None:
            stored = self.uploaded_by(file_id, owner) if UPLOAD_ID.match(upload_id) else None
            if stored is None:
                raise NotFound("No such multipart upload; start a new upload")
            return stored
        uploaded = self._parts(owner, upload_id)
        numbers, size = chosen_parts(parts, {number: (length, etag) for number, (length, etag, _) in uploaded.items()}, limits)
        unused = sum(size for number, (size, _, _) in uploaded.items() if number not in numbers)
        keys = [uploaded[number][2] for number in numbers]
        metadata = {"file-name": quote(session.file_name), "owner": owner}
        try:
            if all(uploaded[number][0] >= MIN_PART_BYTES for number in numbers[:-1]):
                self._join_in_store(f"files/{file_id}", keys, session.content_type, metadata)
            else:
                self._join_through(f"files/{file_id}", keys, session.content_type, metadata)
        except UploadUrlUsed:
            pass  # a concurrent complete of the same upload finished first: the same file
        self.bucket.put(f"uploads/{owner}/{file_id}.{size}", b"")
        self.bucket.delete([*(entry.key for entry in self.bucket.list(f"multipart/{owner}/{upload_id}/"))])
        if unused:
            self.ledger.add(owner, size=-unused)
        return StoredFile(file_id, session.file_name, session.content_type, size)

    def _join_in_store(self, relative: str, keys: list[str], content_type: str, metadata: dict[str, str]) -> None:
        """The parts copied into one object by the store itself (UploadPartCopy), none through Kiln."""
        client, key = self.bucket.client, self.bucket.key(relative)
        upload_id = client.create_multipart_upload(
            Bucket=self.bucket.name, Key=key, ContentType=content_type, Metadata=metadata
        )["UploadId"]
        try:
            copied = []
            for number, source in enumerate(keys, start=1):
                answer = client.upload_part_copy(
                    Bucket=self.bucket.name,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket.name, "Key": self.bucket.key(source)},
                )
                copied.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            client.complete_multipart_upload(
                Bucket=self.bucket.name, Key=key, UploadId=upload_id, MultipartUpload={"Parts": copied}, IfNoneMatch="*"
            )
        except ClientError as error:
            client.abort_multipart_upload(Bucket=self.bucket.name, Key=key, UploadId=upload_id)
            if _lost_race(error):
                raise UploadUrlUsed("This upload was completed already") from None
            raise

    def _join_through(self, relative: str, keys: list[str], content_type: str, metadata: dict[str, str]) -> None:
        """The parts streamed one after another into one object (parts under S3's minimum part size)."""
        writer = ObjectWriter(
            self.bucket, relative, content_type=content_type, metadata=metadata, part_bytes=self.options.part_bytes, exclusive=True
        )
        try:
            for source in keys:
                got = self.bucket.get(source)
                if got is None:
                    raise BadRequest("A part of this upload disappeared; upload the file again")
                for block in got["Body"].iter_chunks(READ_BLOCK_BYTES):
                    writer.write(block)
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    # -- quotas --------------------------------------------------------------------------------

    def usage(self, owner: str) -> tuple[int, int]:
        """(bytes, files) the owner keeps stored or is uploading now, counted across every node."""
        return self.ledger.usage(owner)

    def _stored_by(self, owner: str) -> dict[str, tuple[int, int]]:
        """What the owner keeps, from a listing: ref -> (bytes, files), refs as pending writers name them."""
        stored: dict[str, tuple[int, int]] = {}
        for entry in self.bucket.list(f"uploads/{owner}/"):
            file_id, _, size = entry.key.rsplit("/", 1)[1].partition(".")
            stored[file_id] = (int(size) if size.isdigit() else 0, 1)
        for entry in self.bucket.list(f"multipart/{owner}/"):
            if entry.key.endswith("/session.json"):
                stored[entry.key] = (0, 1)
            else:
                stored[self.bucket.key(entry.key)] = (entry.size, 0)
        return stored

    def reconcile(self, owners: Iterable[str] | None = None) -> None:
        """Recounts each owner's ledger from what the bucket holds."""
        if owners is None:
            owners = self.ledger.owners() | {e.key.split("/")[1] for e in self.bucket.list("uploads/")}
        for owner in owners:
            self.ledger.reconcile(owner, lambda owner=owner: self._stored_by(owner))

    # -- retention -----------------------------------------------------------------------------

    def purge(self, older_than: float) -> int:
        """Deletes files (results and uploads) stored before `older_than`, then recounts the quotas."""
        expired = [entry.key for entry in self.bucket.list("files/") if entry.modified < older_than]
        self.bucket.delete(expired)
        self.bucket.delete(
            entry.key for folder in ("uploads/", "claims/") for entry in self.bucket.list(folder) if entry.modified < older_than
        )
        self.reconcile()
        return len(expired)

    def purge_partial(self, now: float | None = None) -> int:
        """Deletes what dead writers left: claims without a file and S3 multipart uploads untouched for
        `STALE_PART_SECONDS`, and Kiln multipart uploads without a new part for `MULTIPART_IDLE_SECONDS`.
        Returns how many it deleted."""
        now = time.time() if now is None else now
        removed = 0
        stale_claims = [e.key for e in self.bucket.list("claims/") if e.modified < now - STALE_PART_SECONDS]
        if stale_claims:
            present = {e.key.rsplit("/", 1)[1] for e in self.bucket.list("files/")}
            orphans = [key for key in stale_claims if key.rsplit("/", 1)[1] not in present]
            self.bucket.delete(orphans)
            removed += len(orphans)
        sessions: dict[str, list[Listed]] = {}
        for entry in self.bucket.list("multipart/"):
            sessions.setdefault(entry.key.rsplit("/", 1)[0], []).append(entry)
        owners = set()
        for folder, entries in sessions.items():
            if max(entry.modified for entry in entries) < now - MULTIPART_IDLE_SECONDS:
                self.bucket.delete(entry.key for entry in entries)
                owners.add(folder.split("/")[1])
                removed += 1
        removed += self._abort_stale_uploads(now)
        if owners:
            self.reconcile(owners)
        return removed

    def _abort_stale_uploads(self, now: float) -> int:
        client, aborted = self.bucket.client, 0
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket.name, Prefix=self.bucket.prefix):
            for upload in page.get("Uploads", ()):
                if upload["Initiated"].timestamp() >= now - STALE_PART_SECONDS:
                    continue
                parts = client.list_parts(Bucket=self.bucket.name, Key=upload["Key"], UploadId=upload["UploadId"])
                newest = max((part["LastModified"].timestamp() for part in parts.get("Parts", ())), default=0.0)
                if newest < now - STALE_PART_SECONDS:
                    try:
                        client.abort_multipart_upload(Bucket=self.bucket.name, Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted += 1
                    except ClientError as error:
                        if not _missing(error):
                            raise
        return aborted


class S3UploadWriter(StreamingUpload):
    """An upload streaming into the store (see `server.files.StreamingUpload`), charged to its owner's
    quota as it arrives. Quota is reserved ahead in grains (`RESERVE_GRAIN_BYTES`, or the whole
    declared length), so a ledger write happens every few MiB, not every block."""

    def __init__(
        self,
        store: S3FileStore,
        owner: str,
        writer_id: str,
        limits: UploadLimits,
        target: ObjectWriter,
        *,
        on_commit: Callable[[S3UploadWriter], Any],
        on_abort: Callable[[], None] | None = None,
        already: int = 0,
        ref: str = "",
    ) -> None:
        super().__init__(limits, on_commit=on_commit, on_abort=on_abort, already=already)
        self._store = store
        self._owner = owner
        self._writer_id = writer_id
        self._target = target
        self._ref = ref
        self._reserved = 0

    def _reserve(self, needed: int, wanted: int) -> None:
        self._reserved += self._store.ledger.reserve(
            self._owner, self._writer_id, self._limits, at_least=needed, wanted=wanted, ref=self._ref
        )

    def _announced(self, length: int) -> None:
        if length:
            self._reserve(length, length)

    def _charge(self, length: int) -> None:
        short = self.size + length - self._reserved
        if short > 0:
            room = self._limits.max_file_bytes - self._already - self._reserved
            self._reserve(short, min(max(short, RESERVE_GRAIN_BYTES), room))

    def _append(self, data: bytes) -> None:
        self._target.write(data)

    def _finish(self) -> None:
        self._target.finish()

    def _discard(self) -> None:
        self._target.abort()
        try:
            self._store.ledger.release(self._owner, self._writer_id)
        except Exception as error:  # the reservation lapses on its own after STALE_PART_SECONDS
            logger.warning("could not release an upload's quota reservation: %s", error)
