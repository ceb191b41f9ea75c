"""Where result and upload files live: `--storage DIR` (local or shared disk) or `--storage s3://BUCKET/PREFIX`.

Both stores offer the same operations (`FileStore` in server/files.py is the reference): `save` a
result, `open`/`resolve`/`read` a file, stream an upload in through a writer that enforces the
per-file limit and the key's quota, multipart uploads, single-use upload ids, `purge` by age and
`purge_partial` for what dead writers left. Every node that is given the same `--storage` serves
the same files at the same `/files/{id}/{name}` URLs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union
from urllib.parse import urlsplit

from server.files import FileStore

if TYPE_CHECKING:
    from server.storage.s3 import S3FileStore

# what `--storage` gives: the two stores have the same methods (FileStore's), S3's adds
# `iter_bytes` and `redirect_url` for downloads of files that are not on local disk
FileStorage = Union[FileStore, "S3FileStore"]

# how `/files/` URLs of an object store are answered (KILN_S3_URLS)
URL_MODES = ("proxy", "presigned", "public")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, spec: str) -> S3Location:
        parts = urlsplit(spec)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"`--storage` {spec!r} is not of the form s3://BUCKET/PREFIX")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, prefix + "/" if prefix else "")


@dataclass(frozen=True)
class S3Options:
    """How Kiln talks to the object store beyond what boto3 reads itself (AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
    AWS_DEFAULT_REGION, instance roles)."""

    # proxy: Kiln streams the bytes; presigned: a 307 to a presigned GET; public: a 307 to public_url
    url_mode: str = "proxy"
    # the bucket's public base (a CDN or a public-read bucket), for url_mode `public`
    public_url: str | None = None
    presign_seconds: int = 3600
    # uploads stream to the store in parts of this size (S3's minimum is 5 MiB)
    part_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> S3Options:
        mode = environ.get("KILN_S3_URLS", "proxy").strip().lower() or "proxy"
        if mode not in URL_MODES:
            raise ValueError(f"KILN_S3_URLS must be one of {', '.join(URL_MODES)}; got {mode!r}")
        public_url = environ.get("KILN_S3_PUBLIC_URL") or None
        if mode == "public" and not public_url:
            raise ValueError("KILN_S3_URLS=public needs KILN_S3_PUBLIC_URL, the bucket's public base URL")
        return cls(
            url_mode=mode,
            public_url=public_url,
            presign_seconds=int(environ.get("KILN_S3_PRESIGN_SECONDS", "3600")),
        )


def is_object_store(spec: str | Path | None) -> bool:
    return isinstance(spec, str) and spec.startswith("s3://")


def open_file_store(spec: str | Path, base_url: str, environ: Mapping[str, str] = os.environ) -> FileStorage:
    """The store `--storage` names: a folder, or `s3://BUCKET/PREFIX` (S3Options from `environ`)."""
    if is_object_store(spec):
        from server.storage.s3 import S3FileStore

        return S3FileStore(S3Location.parse(str(spec)), base_url, S3Options.from_environment(environ))
    return FileStore(Path(spec), base_url)
