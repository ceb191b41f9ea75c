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

from pipelines.contract import Cancelled, FieldError, Image, Pipeline, RawImage
from server.config import Settings
from server.fetch import Fetched, FetchError, UrlFetcher
from server.files import FileStore
from server.media import (
    CONTENT_TYPES,
    ImageDecodeError,
    ImageTooLarge,
    decode_image,
    encode_image,
)
from server.store import Job, JobStore


@dataclass(frozen=True)
class PixelLimit:
    """How many input pixels, all its images together, one request of an endpoint may decode, and why."""

    pixels: int
    reason: str


@dataclass(frozen=True)
class MediaIO:
    """The ways in and out of a request shared by every request on a server."""

    fetcher: UrlFetcher
    files: FileStore
    max_image_pixels: int
    png_compression: int = 1
    jpeg_quality: int = 95
    # working memory one request may need on its worker (Settings.memory_budget_bytes)
    memory_budget_bytes: int = Settings.memory_budget_bytes
    # this server's base URL: a `/files/` URL under it that does not resolve is missing, not remote
    base_url: str | None = None

    def pixel_limit(self, pipeline: type[Pipeline] | None) -> PixelLimit:
        """The input pixels one request of `pipeline` may decode: its share of the memory budget at the
        pipeline's bytes per input pixel, never more than `max_image_pixels`."""
        if pipeline is None:
            return PixelLimit(self.max_image_pixels, "the most this server decodes")
        by_memory = self.memory_budget_bytes // max(1, pipeline.bytes_per_input_pixel)
        if by_memory >= self.max_image_pixels:
            return PixelLimit(self.max_image_pixels, "the most this server decodes")
        return PixelLimit(
            by_memory,
            f"at {pipeline.bytes_per_input_pixel} bytes per pixel within the "
            f"{_describe_bytes(self.memory_budget_bytes)} memory budget, `--memory-budget`",
        )


def _describe_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


class Interrupted(Exception):
    """The server is shutting down; the request goes back to the queue instead of failing."""


class RunningRequest:
    """A claimed job while its worker runs it: what the pipeline may ask of it (the contract's
    `RequestContext`) plus what the worker records about it (timings, provenance)."""

    def __init__(
        self,
        job: Job,
        *,
        store: JobStore,
        media: MediaIO,
        stopping: threading.Event,
        pixel_limit: PixelLimit | None = None,
    ) -> None:
        self.job = job
        self.pixel_limit = pixel_limit or media.pixel_limit(None)
        # pixels of the images this request has decoded so far; they share one limit
        self.pixels_decoded = 0
        self.cancelled = threading.Event()
        # why it was cancelled, as the request's result will say: a queued request's cancel stores its own
        self.cancellation = Cancelled()
        if job.cancel_requested:
            self.cancelled.set()
        self.timings: dict[str, float] = {}
        self.provenance: dict[str, Any] = {}
        # as the store last recorded it (`JobStore.mark_running`; a claim marks it): a worker death is
        # charged only when set
        self.marked_running = True
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
            raise self.cancellation

    def cancel(self, reason: Cancelled) -> None:
        """Stops the request at its next step, completing it with `reason`."""
        self.cancellation = reason
        self.cancelled.set()

    def fetch_image(self, url: str, field: str | tuple[str | int, ...]) -> RawImage:
        """Fetches and decodes an image input; refuses from the image header, before decoding, an
        image that would take the request past its pixel limit."""
        fetched = self._fetch(url, field)
        limit = self.pixel_limit
        try:
            image = decode_image(fetched.data, max_pixels=limit.pixels - self.pixels_decoded)
        except ImageTooLarge as error:
            others = f" with the {self.pixels_decoded} pixels of its other images" if self.pixels_decoded else ""
            raise FieldError(
                field,
                f"the image is {error.width}x{error.height} ({error.width * error.height} pixels){others}, "
                f"more than the {limit.pixels} pixels one request of {self.job.endpoint} may bring "
                f"({limit.reason}); downscale it first",
                type=error.kind,
            ) from None
        except ImageDecodeError as error:
            raise FieldError(field, str(error), type=error.kind) from None
        self.pixels_decoded += image.width * image.height
        return image

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
            return Fetched(self._media.files.read(stored), stored.content_type, url)
        if self._media.base_url and url.strip().startswith(self._media.base_url.rstrip("/") + "/files/"):
            raise FieldError(
                field,
                f"{url} is not a file on this server: it never existed or has expired (results and uploads are "
                "kept for the retention period, `--retention-hours`); upload the file again",
                type="file_download_error",
            )
        try:
            return self._media.fetcher.fetch(url)
        except FetchError as error:
            raise FieldError(field, str(error), type=error.kind) from None
