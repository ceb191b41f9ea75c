"""What a pipeline sees of one request while a worker runs it: inputs, logs, cancel, files, timings."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from server.errors import Cancelled, FieldError
from server.fetch import FetchError, Fetched, UrlFetcher
from server.files import FileStore
from server.media import CONTENT_TYPES, ImageDecodeError, RawImage, decode_image, encode_image
from server.schemas import Image
from server.store import Job, JobStore

logger = logging.getLogger(__name__)


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


class RequestContext:
    def __init__(self, job: Job, *, store: JobStore, media: MediaIO, stopping: threading.Event) -> None:
        self.request_id = job.request_id
        self.endpoint = job.endpoint
        self.inputs: BaseModel | None = None  # the validated inputs, set before `decode`
        self.attempt = job.attempts
        self.timings: dict[str, float] = {}
        self.provenance: dict[str, Any] = {}
        self.cancelled = threading.Event()
        if job.cancel_requested:
            self.cancelled.set()
        self._store = store
        self._media = media
        self._stopping = stopping

    def log(self, message: str, level: str = "INFO") -> None:
        self._store.append_logs(self.request_id, [(level, message)])

    def raise_if_cancelled(self) -> None:
        """Stops the request here if it was cancelled or the server is shutting down."""
        if self._stopping.is_set():
            raise Interrupted()
        if self.cancelled.is_set():
            raise Cancelled()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time of the block to `timings[stage]` (seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    # -- inputs ----------------------------------------------------------------------------

    def fetch(self, url: str, field: str) -> Fetched:
        """The bytes behind a `*_url` input: this server's own file, a data URI or http(s)."""
        stored = self._media.files.resolve(url)
        if stored is not None:
            return Fetched(stored.path.read_bytes(), stored.content_type, url)
        try:
            return self._media.fetcher.fetch(url)
        except FetchError as error:
            raise FieldError(field, str(error), type=error.kind) from None

    def fetch_image(self, url: str, field: str) -> RawImage:
        fetched = self.fetch(url, field)
        try:
            return decode_image(fetched.data, max_pixels=self._media.max_image_pixels)
        except ImageDecodeError as error:
            raise FieldError(field, str(error), type=error.kind) from None

    # -- outputs ---------------------------------------------------------------------------

    def image_output(self, pixels: np.ndarray, *, image_format: str = "png", sync_mode: bool = False) -> Image:
        """Encodes `(H, W, C)` uint8 pixels and returns fal's Image object for them.

        With `sync_mode` the image travels inline as a data URI and nothing is written to storage.
        """
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


def report_progress(requests: Sequence[RequestContext], step: int, total: int) -> None:
    """Logs `step i/n` for every request of a batch; stops the batch once all were cancelled or
    the server is shutting down. Pipelines call it once per step."""
    live = [request for request in requests if not request.cancelled.is_set()]
    if not live:
        raise Cancelled()
    live[0].raise_if_cancelled()
    for request in live:
        request.log(f"step {step}/{total}")
