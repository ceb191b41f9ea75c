"""Result and upload files on local disk, served at `{base_url}/files/{id}/{name}`.

This is the default `--storage`; `server/storage/s3.py` keeps the same files in an S3-compatible
object store for several nodes (`server/storage/__init__.py` picks one).

Ids are 128-bit random, so a URL is a capability, as on fal's CDN. Each file is a data file plus a
JSON sidecar written before the data is renamed into place, so a crash never leaves a file that is
visible but incomplete.

Uploads stream into a `.part` file (never the whole body in memory) and are charged to their owner
while they stream: one file may be at most `max_file_bytes`, and what one owner keeps stored (until
retention deletes it) at most `quota_bytes` and `quota_files` (`UploadLimits`). An upload claims its
file id before the first byte, so a signed upload URL can produce one file only. Multipart uploads
keep their parts under `multipart/<upload id>/` until they are completed, then are assembled part by
part into one file. `.part` files and multipart uploads that nothing has touched for a while belong to
writers that died; `purge_partial` deletes them.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from server.errors import BadRequest, KilnError, NotFound, PayloadTooLarge

FILE_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

UPLOAD_ID = FILE_ID
PART_SUFFIX = ".part"
MULTIPART_DIR = "multipart"
MAX_PARTS = 10_000
# a `.part` file nobody has written to for this long belongs to a write that died
STALE_PART_SECONDS = 3600.0
# a multipart upload with no new part for this long is abandoned: its parts are deleted
MULTIPART_IDLE_SECONDS = 24 * 3600.0

# served inline; anything else is served as an attachment so an upload can never run as a page here
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


class UploadQuotaExceeded(KilnError):
    """The owner keeps as many uploaded files as its quota allows.

    413, not 429: both official clients retry 429 (the Python one up to ten times), and only the
    retention period, days away, frees quota."""

    status_code = 413
    error_type = "upload_quota_exceeded"


class UploadUrlUsed(KilnError):
    """A signed upload URL was used before: it can store one file, once."""

    status_code = 403
    error_type = "upload_url_used"


@dataclass(frozen=True)
class UploadLimits:
    """The largest file one upload may store, and what one owner may keep stored at once."""

    max_file_bytes: int
    quota_bytes: int
    quota_files: int


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    file_name: str
    content_type: str
    size: int
    # the file on local disk; None for a file in an object store (read it with the store's `read`)
    path: Path | None = None


def quota_files_error(used_files: int, limits: UploadLimits) -> UploadQuotaExceeded:
    return UploadQuotaExceeded(
        f"This key keeps {used_files} uploaded files, its quota (`--upload-quota-files`) is "
        f"{limits.quota_files}; uploads are deleted after the retention period"
    )


def quota_bytes_error(used_bytes: int, limits: UploadLimits) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"This upload would take the key's uploads past its quota of {limits.quota_bytes} bytes "
        f"(`--upload-quota-mib`); {used_bytes} are in use until the retention period deletes them"
    )


def file_too_large(limits: UploadLimits) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than the {limits.max_file_bytes} bytes this server accepts")


def file_id_in_url(base_url: str, url: str) -> str | None:
    """The file id in one of the `{base_url}/files/{id}/{name}` URLs of a store; None for any other URL."""
    if not url.startswith(base_url + "/files/"):
        return None
    parts = unquote(urlsplit(url).path).split("/")
    try:
        return parts[parts.index("files") + 1]
    except (ValueError, IndexError):
        return None


def new_file_id() -> str:
    return secrets.token_urlsafe(16)


def safe_file_name(name: str | None, default: str = "file.bin") -> str:
    cleaned = UNSAFE_NAME_CHARS.sub("_", os.path.basename(name or "")).strip("._")[:128]
    return cleaned or default


class FileStore:
    def __init__(self, root: Path, base_url: str) -> None:
        self._root = root
        self._base_url = base_url.rstrip("/")
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # owner -> [bytes, files] of its stored uploads and the uploads streaming in; read from disk
        # on first use, then kept in step with every upload and purge
        self._usage: dict[str, list[int]] | None = None
        self._session_locks: dict[str, threading.Lock] = {}

    def _paths(self, file_id: str) -> tuple[Path, Path]:
        folder = self._root / file_id[:2]
        return folder / file_id, folder / f"{file_id}.json"

    def save(
        self, data: bytes, *, content_type: str, file_name: str | None, file_id: str | None = None
    ) -> StoredFile:
        file_id = file_id or new_file_id()
        if not FILE_ID.match(file_id):
            raise ValueError(f"invalid file id {file_id!r}")
        data_path, meta_path = self._paths(file_id)
        data_path.parent.mkdir(exist_ok=True)
        name = safe_file_name(file_name)
        meta = {"file_name": name, "content_type": content_type, "size": len(data), "created_at": time.time()}
        meta_path.write_text(json.dumps(meta))
        partial = data_path.with_suffix(".part")
        partial.write_bytes(data)
        os.replace(partial, data_path)
        return StoredFile(file_id, name, content_type, len(data), data_path)

    def url(self, stored: StoredFile) -> str:
        return self.file_url(stored.file_id, stored.file_name)

    def file_url(self, file_id: str, file_name: str) -> str:
        return f"{self._base_url}/files/{file_id}/{quote(file_name)}"

    def read(self, stored: StoredFile) -> bytes:
        """The bytes of a stored file (an input that names this server's own URL)."""
        return stored.path.read_bytes()

    def open(self, file_id: str) -> StoredFile | None:
        if not FILE_ID.match(file_id):
            return None
        data_path, meta_path = self._paths(file_id)
        if not data_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if meta.get("size") is None:
            return None
        return StoredFile(file_id, meta["file_name"], meta["content_type"], meta["size"], data_path)

    def resolve(self, url: str) -> StoredFile | None:
        """The stored file a URL names, if it is one of this server's file URLs."""
        file_id = file_id_in_url(self._base_url, url)
        return None if file_id is None else self.open(file_id)

    def purge(self, older_than: float) -> int:
        removed = 0
        for meta_path in self._root.glob("*/*.json"):
            try:
                if meta_path.stat().st_mtime >= older_than:
                    continue
                owner, size = self._charged_to(meta_path)
                meta_path.with_suffix("").unlink(missing_ok=True)
                meta_path.unlink()
            except FileNotFoundError:
                continue
            if owner is not None:
                self._refund(owner, size, 1)
            removed += 1
        return removed

    def purge_partial(self, now: float | None = None) -> int:
        """Deletes what dead writers left: `.part` files and upload claims untouched for
        `STALE_PART_SECONDS`, and multipart uploads without a new part for `MULTIPART_IDLE_SECONDS`.
        Returns how many it deleted."""
        now = time.time() if now is None else now
        removed = 0
        for partial in self._root.rglob("*" + PART_SUFFIX):
            try:
                if partial.stat().st_mtime < now - STALE_PART_SECONDS:
                    partial.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        for meta_path in self._root.glob("*/*.json"):
            # a claim whose upload never finished: no data and no `.part` being written
            data_path = meta_path.with_suffix("")
            try:
                if meta_path.stat().st_mtime >= now - STALE_PART_SECONDS or data_path.exists():
                    continue
                if data_path.with_suffix(PART_SUFFIX).exists():
                    continue
                meta_path.unlink()
                removed += 1
            except FileNotFoundError:
                continue
        for session in self._multipart_root.glob("*"):
            try:
                newest = max([session.stat().st_mtime, *(entry.stat().st_mtime for entry in session.iterdir())])
            except OSError:
                continue
            if newest < now - MULTIPART_IDLE_SECONDS:
                with self._session_lock(session.name):
                    removed += self._discard_session(session)
                with self._lock:
                    self._session_locks.pop(session.name, None)
        return removed

    # -- uploads -------------------------------------------------------------------------------

    def begin_upload(
        self,
        owner: str,
        limits: UploadLimits,
        *,
        content_type: str,
        file_name: str | None,
        file_id: str | None = None,
    ) -> UploadWriter:
        """Claims `file_id` (a fresh one by default) for an upload by `owner` and returns the writer
        its bytes stream into. Raises UploadUrlUsed if the id was claimed before, and
        UploadQuotaExceeded if the owner keeps its quota of files."""
        file_id = file_id or new_file_id()
        if not FILE_ID.match(file_id):
            raise NotFound("Unknown upload")
        data_path, meta_path = self._paths(file_id)
        data_path.parent.mkdir(exist_ok=True)
        self._charge(owner, 0, 1, limits)
        meta = {"file_name": safe_file_name(file_name), "content_type": content_type, "owner": owner, "size": None}
        try:
            _write_new(meta_path, json.dumps(meta).encode())
        except FileExistsError:
            self._refund(owner, 0, 1)
            raise UploadUrlUsed("This upload URL was used already; initiate a new upload") from None
        return UploadWriter(
            self,
            owner,
            limits,
            data_path.with_suffix(PART_SUFFIX),
            on_commit=lambda writer: self._publish(file_id, meta, writer.size),
            on_abort=lambda: meta_path.unlink(missing_ok=True),
        )

    def _publish(self, file_id: str, meta: dict, size: int) -> StoredFile:
        """Writes the final sidecar over the claim, then moves the data into place: the file is
        visible from that moment."""
        data_path, meta_path = self._paths(file_id)
        final = {**meta, "size": size, "created_at": time.time()}
        temporary = meta_path.with_suffix(".json" + PART_SUFFIX)
        temporary.write_text(json.dumps(final))
        os.replace(temporary, meta_path)
        os.replace(data_path.with_suffix(PART_SUFFIX), data_path)
        return StoredFile(file_id, final["file_name"], final["content_type"], size, data_path)

    def uploaded_by(self, file_id: str, owner: str) -> StoredFile | None:
        """The stored file `file_id` if `owner` uploaded it."""
        stored = self.open(file_id)
        if stored is None:
            return None
        charged_to, _ = self._charged_to(self._paths(file_id)[1])
        return stored if charged_to == owner else None

    # -- multipart uploads ---------------------------------------------------------------------

    @property
    def _multipart_root(self) -> Path:
        return self._root / MULTIPART_DIR

    def create_multipart(
        self, owner: str, limits: UploadLimits, *, content_type: str, file_name: str | None
    ) -> MultipartSession:
        """Starts a multipart upload by `owner`; it holds one of the owner's files until completed."""
        self._charge(owner, 0, 1, limits)
        session = MultipartSession.start(owner, content_type=content_type, file_name=file_name)
        folder = self._multipart_root / session.upload_id
        folder.mkdir(parents=True)
        (folder / "session.json").write_text(json.dumps(session.to_json()))
        return session

    def _session(self, upload_id: str, file_id: str, owner: str) -> MultipartSession | None:
        """The open multipart upload with these ids, if `owner` started it."""
        if not UPLOAD_ID.match(upload_id):
            return None
        try:
            session = MultipartSession.from_json(json.loads((self._multipart_root / upload_id / "session.json").read_text()))
        except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
            return None
        return session if (session.file_id, session.owner) == (file_id, owner) else None

    def begin_part(
        self, upload_id: str, file_id: str, owner: str, part_number: int, limits: UploadLimits
    ) -> UploadWriter:
        """The writer one part streams into; a part sent again replaces the earlier one. Committing it
        returns the part's etag."""
        session = self._session(upload_id, file_id, owner)
        if session is None:
            raise NotFound("No such multipart upload, or it was completed already; start a new upload")
        if not 1 <= part_number <= MAX_PARTS:
            raise BadRequest(f"`partNumber` must be between 1 and {MAX_PARTS}; got {part_number}")
        folder = self._multipart_root / upload_id
        others = sum(size for number, (size, _) in self._parts(folder).items() if number != part_number)
        partial = folder / f"{part_number}.{secrets.token_hex(8)}{PART_SUFFIX}"
        try:
            return UploadWriter(
                self,
                owner,
                limits,
                partial,
                already=others,
                charged_file=False,
                hashed=True,
                on_commit=lambda writer: self._commit_part(session, part_number, writer),
            )
        except FileNotFoundError:  # completed a moment ago
            raise NotFound("This multipart upload was completed or abandoned; start a new upload") from None

    def _commit_part(self, session: MultipartSession, part_number: int, writer: UploadWriter) -> str:
        folder = self._multipart_root / session.upload_id
        etag = f'"{writer.md5}"'
        with self._session_lock(session.upload_id):
            if not (folder / "session.json").exists():
                raise NotFound("This multipart upload was completed or abandoned; start a new upload")
            earlier = self._parts(folder).get(part_number)
            os.replace(writer.path, folder / f"{part_number}.bin")
            (folder / f"{part_number}.json").write_text(json.dumps({"size": writer.size, "etag": etag}))
        if earlier is not None:
            self._refund(session.owner, earlier[0], 0)
        return etag

    def complete_multipart(
        self, upload_id: str, file_id: str, owner: str, parts: Iterable[tuple[int, str]], limits: UploadLimits
    ) -> StoredFile:
        """Joins the listed parts, in part-number order, into the upload's file; parts not listed are
        dropped. Completing an upload that was completed already returns its file (a retried call)."""
        with self._session_lock(upload_id):
            session = self._session(upload_id, file_id, owner)
            if session is None:
                stored = self.uploaded_by(file_id, owner) if UPLOAD_ID.match(upload_id) else None
                if stored is None:
                    raise NotFound("No such multipart upload; start a new upload")
                return stored
            folder = self._multipart_root / upload_id
            uploaded = self._parts(folder)
            numbers, _ = chosen_parts(parts, uploaded, limits)
            unused = sum(size for number, (size, _) in uploaded.items() if number not in numbers)
            stored = self._join(session, folder, numbers)
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._session_locks.pop(upload_id, None)
        self._refund(owner, unused, 0)
        return stored

    def _join(self, session: MultipartSession, folder: Path, numbers: list[int]) -> StoredFile:
        """Copies the parts one after another into the session's file and publishes it."""
        data_path, meta_path = self._paths(session.file_id)
        data_path.parent.mkdir(exist_ok=True)
        meta = {"file_name": session.file_name, "content_type": session.content_type, "owner": session.owner}
        _write_new(meta_path, json.dumps({**meta, "size": None}).encode())
        partial = data_path.with_suffix(PART_SUFFIX)
        try:
            size = 0
            with open(partial, "wb") as joined:
                for number in numbers:
                    with open(folder / f"{number}.bin", "rb") as part:
                        shutil.copyfileobj(part, joined, 1 << 20)
                size = joined.tell()
            return self._publish(session.file_id, meta, size)
        except BaseException:
            partial.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise

    def _parts(self, folder: Path) -> dict[int, tuple[int, str]]:
        """Part number -> (size, etag) of every part committed in a multipart upload's folder."""
        parts = {}
        for record in folder.glob("*.json"):
            if record.stem.isdigit():
                try:
                    part = json.loads(record.read_text())
                except (FileNotFoundError, ValueError):
                    continue
                parts[int(record.stem)] = (part["size"], part["etag"])
        return parts

    def _discard_session(self, folder: Path) -> int:
        """Deletes an abandoned multipart upload and refunds its owner; 1 if it was there."""
        try:
            owner = json.loads((folder / "session.json").read_text())["owner"]
        except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
            owner = None
        size = sum(size for size, _ in self._parts(folder).values())
        if not folder.exists():
            return 0
        shutil.rmtree(folder, ignore_errors=True)
        if owner is not None:
            self._refund(owner, size, 1)
        return 1

    def _session_lock(self, upload_id: str) -> threading.Lock:
        with self._lock:
            return self._session_locks.setdefault(upload_id, threading.Lock())

    # -- quotas --------------------------------------------------------------------------------

    def usage(self, owner: str) -> tuple[int, int]:
        """(bytes, files) the owner keeps stored or is uploading now."""
        with self._lock:
            used = self._owner_usage(owner)
            return used[0], used[1]

    def _owner_usage(self, owner: str) -> list[int]:
        if self._usage is None:
            self._usage = self._scan_usage()
        return self._usage.setdefault(owner, [0, 0])

    def _charge(self, owner: str, size: int, files: int, limits: UploadLimits) -> None:
        with self._lock:
            used = self._owner_usage(owner)
            if files and used[1] + files > limits.quota_files:
                raise quota_files_error(used[1], limits)
            if size and used[0] + size > limits.quota_bytes:
                raise quota_bytes_error(used[0], limits)
            used[0] += size
            used[1] += files

    def _refund(self, owner: str, size: int, files: int) -> None:
        with self._lock:
            if self._usage is None:
                return
            used = self._owner_usage(owner)
            used[0] = max(0, used[0] - size)
            used[1] = max(0, used[1] - files)

    def _charged_to(self, meta_path: Path) -> tuple[str | None, int]:
        """The owner a stored upload is charged to (None for results and unfinished uploads) and its size."""
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            return None, 0
        if not meta.get("owner") or meta.get("size") is None or not meta_path.with_suffix("").exists():
            return None, 0
        return meta["owner"], meta["size"]

    def _scan_usage(self) -> dict[str, list[int]]:
        usage: dict[str, list[int]] = {}
        for meta_path in self._root.glob("*/*.json"):
            try:
                owner, size = self._charged_to(meta_path)
            except FileNotFoundError:
                continue
            if owner is not None:
                used = usage.setdefault(owner, [0, 0])
                used[0] += size
                used[1] += 1
        for folder in self._multipart_root.glob("*"):
            try:
                owner = json.loads((folder / "session.json").read_text())["owner"]
            except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
                continue
            used = usage.setdefault(owner, [0, 0])
            used[0] += sum(size for size, _ in self._parts(folder).values())
            used[1] += 1
        return usage


@dataclass(frozen=True)
class MultipartSession:
    upload_id: str
    file_id: str
    owner: str
    file_name: str
    content_type: str

    @classmethod
    def start(cls, owner: str, *, content_type: str, file_name: str | None) -> MultipartSession:
        """A new upload's session: fresh upload and file ids, the file name made safe."""
        return cls(new_file_id(), new_file_id(), owner, safe_file_name(file_name), content_type)

    @classmethod
    def from_json(cls, data: dict) -> MultipartSession:
        """Raises KeyError for a record that is not a session."""
        return cls(data["upload_id"], data["file_id"], data["owner"], data["file_name"], data["content_type"])

    def to_json(self) -> dict:
        return {
            "upload_id": self.upload_id,
            "file_id": self.file_id,
            "owner": self.owner,
            "file_name": self.file_name,
            "content_type": self.content_type,
        }


def chosen_parts(
    parts: Iterable[tuple[int, str]], uploaded: Mapping[int, tuple[int, str]], limits: UploadLimits
) -> tuple[list[int], int]:
    """The part numbers a multipart `complete` lists, in order, and the joined file's size; BadRequest
    unless each names an uploaded part (number -> (size, etag)) once with its etag, PayloadTooLarge past
    the file limit."""
    wanted = sorted(parts)
    numbers = [number for number, _ in wanted]
    if not numbers or len(set(numbers)) != len(numbers):
        raise BadRequest("`parts` must list each uploaded part once, with its `partNumber` and `etag`")
    for number, etag in wanted:
        if number not in uploaded:
            raise BadRequest(f"Part {number} was not uploaded")
        if etag.strip('"') != uploaded[number][1].strip('"'):
            raise BadRequest(f"Part {number}: the etag {etag!r} is not the one its upload returned")
    size = sum(uploaded[number][0] for number in numbers)
    if size > limits.max_file_bytes:
        raise file_too_large(limits)
    return numbers, size


class StreamingUpload(abc.ABC):
    """An upload streaming into storage, charged to its owner as it arrives: what the disk's writer
    (`UploadWriter`) and the S3 store's share.

    `write` raises PayloadTooLarge past the file limit or the owner's byte quota; `commit` finishes the
    upload, calls `on_commit(writer)` and returns what it returns; `abort` (also on any failure)
    discards what was written, gives back what was charged and calls `on_abort`. Used from one thread
    at a time.
    """

    def __init__(
        self,
        limits: UploadLimits,
        *,
        on_commit: Callable[[Any], Any],
        on_abort: Callable[[], None] | None = None,
        already: int = 0,
    ) -> None:
        self.size = 0
        self._limits = limits
        self._on_commit = on_commit
        self._on_abort = on_abort
        self._already = already
        self._done = False

    @abc.abstractmethod
    def _charge(self, length: int) -> None:
        """Charges the owner for `length` more bytes; PayloadTooLarge past the quota."""

    @abc.abstractmethod
    def _append(self, data: bytes) -> None:
        """Stores the next bytes, already charged for."""

    @abc.abstractmethod
    def _finish(self) -> None:
        """Completes what `_append` stored, before `on_commit`."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Deletes what `_append` stored and gives back what `_charge` took."""

    def _announced(self, length: int) -> None:
        """Told a body's announced length once it is within the file limit, before any of it is read."""

    def check_declared(self, declared: int) -> None:
        """Refuses a body whose announced length is over the file limit before reading it."""
        try:
            if self._already + declared > self._limits.max_file_bytes:
                raise file_too_large(self._limits)
            self._announced(declared)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        try:
            if self._already + self.size + len(data) > self._limits.max_file_bytes:
                raise file_too_large(self._limits)
            self._charge(len(data))
            self.size += len(data)
            self._append(data)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> Any:
        try:
            self._finish()
            result = self._on_commit(self)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return result

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._discard()
        if self._on_abort:
            self._on_abort()


class UploadWriter(StreamingUpload):
    """An upload streaming into a `.part` file (see `StreamingUpload`), charged to the disk store's quota
    of its owner block by block."""

    def __init__(
        self,
        store: FileStore,
        owner: str,
        limits: UploadLimits,
        path: Path,
        *,
        on_commit: Callable[[UploadWriter], Any],
        on_abort: Callable[[], None] | None = None,
        already: int = 0,
        charged_file: bool = True,
        hashed: bool = False,
    ) -> None:
        super().__init__(limits, on_commit=on_commit, on_abort=on_abort, already=already)
        self.path = path
        self._store = store
        self._owner = owner
        self._charged_file = charged_file
        self._digest = hashlib.md5(usedforsecurity=False) if hashed else None
        self._handle = open(path, "wb")  # noqa: SIM115 (open until commit or abort)

    @property
    def md5(self) -> str:
        return self._digest.hexdigest() if self._digest else ""

    def _charge(self, length: int) -> None:
        self._store._charge(self._owner, length, 0, self._limits)

    def _append(self, data: bytes) -> None:
        self._handle.write(data)
        if self._digest:
            self._digest.update(data)

    def _finish(self) -> None:
        self._handle.close()

    def _discard(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)
        self._store._refund(self._owner, self.size, 1 if self._charged_file else 0)

    def commit(self) -> Any:
        try:
            return super().commit()
        except FileNotFoundError:
            # the `.part` was purged as stale while this upload stalled
            raise BadRequest("The upload stalled for too long and was discarded; upload the file again") from None


def _write_new(path: Path, data: bytes) -> None:
    """Creates `path` holding `data`; FileExistsError if it exists (how an upload claims its id)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
