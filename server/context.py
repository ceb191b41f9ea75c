"""The server's side of `pipelines.contract.RequestContext`: one running request, as a worker runs it."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.contract import Cancelled, FieldError, Image, RawImage
from server.fetch import Fetched, FetchError, UrlFetcher
from server.files import FileStore
from server.media import CONTENT_TYPES, ImageDecodeError, decode_image, encode_image
from server.store import Job, JobStore


@dataclass(frozen=True)
class MediaIO:
    """The ways in and out of a request shared by every request on a server."""

    fetcher: UrlFetcher
    files: FileStore
    max_image_pixels: int
    png_compression: int = 1
    jpeg_quality: int = 95


class Interrupted(Exception):
    """The server is shutting down; the request goes back to the queue instead of failing."""


class RunningRequest:
    """A claimed job while its worker runs it: what the pipeline may ask of it (the contract's
    `RequestContext`) plus what the worker records about it (timings, provenance)."""

    def __init__(self, job: Job, *, store: JobStore, media: MediaIO, stopping: threading.Event) -> None:
        self.job = job
        self.cancelled = threading.Event()
        if job.cancel_requested:
            self.cancelled.set()
        self.timings: dict[str, float] = {}
        self.provenance: dict[str, Any] = {}
        self._store = store
        self._media = media
        self._stopping = stopping

    @property
    def request_id(self) -> str:
        return self.job.request_id

    # -- the contract ----------------------------------------------------------------------

    def log(self, message: str, level: str = "INFO") -> None:
        self._store.append_logs(self.request_id, [(level, message)])

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        if self._stopping.is_set():
            raise Interrupted()
        if self.cancelled.is_set():
            raise Cancelled()

    def fetch_image(self, url: str, field: str | tuple[str | int, ...]) -> RawImage:
        fetched = self._fetch(url, field)
        try:
            return decode_image(fetched.data, max_pixels=self._media.max_image_pixels)
        except ImageDecodeError as error:
            raise FieldError(field, str(error), type=error.kind) from None

    def image_output(self, pixels: np.ndarray, *, image_format: str = "png", sync_mode: bool = False) -> Image:
        data = encode_image(
            pixels,
            image_format=image_format,
            jpeg_quality=self._media.jpeg_quality,
            png_compression=self._media.png_compression,
        )
        content_type = CONTENT_TYPES[image_format]
        height, width = pixels.shape[:2]
        file_name = f"{self.request_id}.{image_format}"
        if sync_mode:
            url = f"data:{content_type};base64,{base64.b64encode(data).decode()}"
        else:
            url = self._media.files.url(self._media.files.save(data, content_type=content_type, file_name=file_name))
        return Image(
            url=url, content_type=content_type, file_name=file_name, file_size=len(data), width=width, height=height
        )

    def add_provenance(self, fields: Mapping[str, Any]) -> None:
        self.provenance.update(fields)

    # -- the worker's records --------------------------------------------------------------

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time of the block to `timings[stage]` (seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def _fetch(self, url: str, field: str | tuple[str | int, ...]) -> Fetched:
        """The bytes behind a `*_url` input: this server's own file, a data URI or http(s)."""
        stored = self._media.files.resolve(url)
        if stored is not None:
            return Fetched(stored.path.read_bytes(), stored.content_type, url)
        try:
            return self._media.fetcher.fetch(url)
        except FetchError as error:
            raise FieldError(field, str(error), type=error.kind) from None
