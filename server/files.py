"""Result and upload files on local disk, served at `{base_url}/files/{id}/{name}`.

Ids are 128-bit random, so a URL is a capability, as on fal's CDN. Each file is a data file plus a
JSON sidecar written before the data is renamed into place, so a crash never leaves a file that is
visible but incomplete.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

FILE_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

# served inline; anything else is served as an attachment so an upload can never run as a page here
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    file_name: str
    content_type: str
    size: int
    path: Path


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
        return f"{self._base_url}/files/{stored.file_id}/{quote(stored.file_name)}"

    def open(self, file_id: str) -> StoredFile | None:
        if not FILE_ID.match(file_id):
            return None
        data_path, meta_path = self._paths(file_id)
        try:
            meta = json.loads(meta_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not data_path.exists():
            return None
        return StoredFile(file_id, meta["file_name"], meta["content_type"], meta["size"], data_path)

    def resolve(self, url: str) -> StoredFile | None:
        """The stored file a URL names, if it is one of this server's file URLs."""
        if not url.startswith(self._base_url + "/files/"):
            return None
        parts = unquote(urlsplit(url).path).split("/")
        try:
            file_id = parts[parts.index("files") + 1]
        except (ValueError, IndexError):
            return None
        return self.open(file_id)

    def purge(self, older_than: float) -> int:
        removed = 0
        for meta_path in self._root.glob("*/*.json"):
            try:
                if meta_path.stat().st_mtime >= older_than:
                    continue
                meta_path.with_suffix("").unlink(missing_ok=True)
                meta_path.unlink()
            except FileNotFoundError:
                continue
            removed += 1
        return removed
