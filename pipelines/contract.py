"""The contract between Kiln's server and its endpoints: both import it, neither owns it.

A pipeline is one fal endpoint: its input and output models (the API contract, from which the
OpenAPI documents are generated) and the stages a worker drives, in LitServe's order: `setup` once
per device, then per request `decode` (host: fetch and decode inputs), `predict` (device: one call
for a batch of compatible requests) and `encode` (host: files and the output model).

What a pipeline may ask of a request is `RequestContext`; of the machine, `Weights` and
`PipelineSettings`, handed to `setup`. The server implements both and is handed the pipeline
classes at start-up; pipelines import only this module, `kernels/` and their own helpers.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, Field

# -- errors a pipeline raises ------------------------------------------------------------------


class KilnError(Exception):
    """An error with an HTTP status and a fal `error_type`, safe to show to the caller."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, detail: str, *, status_code: int | None = None, error_type: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type

    @property
    def message(self) -> str:
        return self.detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "error_type": self.error_type}

    def headers(self) -> dict[str, str]:
        return {"X-Fal-Error-Type": self.error_type}


class FieldError(KilnError):
    """Input that passed the schema but cannot be used, e.g. an `image_url` that does not decode.

    Its body is FastAPI's own 422 body, so clients parse one format whether pydantic or a pipeline
    rejected the input.
    """

    status_code = 422

    def __init__(
        self,
        field: str | tuple[str | int, ...],
        message: str,
        *,
        type: str = "value_error",
        location: str = "body",
    ) -> None:
        super().__init__(message, error_type=type)
        self.loc: tuple[str | int, ...] = (location, *((field,) if isinstance(field, str) else field))

    @property
    def message(self) -> str:
        return f"{'.'.join(str(p) for p in self.loc[1:])}: {self.detail}"

    def body(self) -> dict[str, Any]:
        return {"detail": [{"loc": list(self.loc), "msg": self.detail, "type": self.error_type}]}


class Cancelled(KilnError):
    status_code = 499
    error_type = "client_cancelled"

    def __init__(self, detail: str = "The request was cancelled") -> None:
        super().__init__(detail)


# -- fal's types shared by endpoints -----------------------------------------------------------


class Image(BaseModel):
    """fal's `Image` output type."""

    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(default=None, description="The mime type of the file.")
    file_name: str | None = Field(default=None, description="The name of the file.")
    file_size: int | None = Field(default=None, description="The size of the file in bytes.")
    width: int | None = Field(default=None, description="The width of the image in pixels.")
    height: int | None = Field(default=None, description="The height of the image in pixels.")


class File(BaseModel):
    """fal's `File` output type: an image's file without its pixel size."""

    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(None, description="The mime type of the file.")
    file_name: str | None = Field(None, description="The name of the file.")
    file_size: int | None = Field(None, description="The size of the file in bytes.")

    @classmethod
    def of(cls, image: Image) -> File:
        return cls(**image.model_dump(include=set(cls.model_fields)))


@dataclass(frozen=True)
class RawImage:
    """Decoded pixels, not yet scaled: `(C, H, W)` with C = 3 (RGB) or 4 (RGBA).

    Kept as integers so the conversion to float happens on the device that runs the pipeline.
    `chroma_subsampling` is how the file stored colour against brightness, ``(vertical, horizontal)``: (2, 2)
    for a 4:2:0 JPEG, (1, 2) for 4:2:2, (1, 1) for everything else (the decoder has filled the gaps in by
    interpolation, which a pipeline that measures colours exactly may want to undo). `jpeg_quantization` is a
    YCbCr JPEG's quantisation steps, `(3, 8, 8)` integers for Y, Cb and Cr in row-major order (what the file's
    rounding took away, for a pipeline that models it), and None for every other file.
    """

    pixels: torch.Tensor
    max_value: int
    chroma_subsampling: tuple[int, int] = (1, 1)
    jpeg_quantization: torch.Tensor | None = None

    @property
    def height(self) -> int:
        return self.pixels.shape[1]

    @property
    def width(self) -> int:
        return self.pixels.shape[2]

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[0] == 4

    def to_float(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`(C, H, W)` in [0, 1] on `device`."""
        pixels = self.pixels.to(device, non_blocking=True)
        return pixels.to(dtype) / self.max_value


# -- what a pipeline may ask of a request and of the machine -----------------------------------


class RequestContext(Protocol):
    """One running request as a pipeline sees it."""

    @property
    def request_id(self) -> str: ...

    def log(self, message: str, level: str = "INFO") -> None:
        """Adds a line to the request's status logs."""

    def is_cancelled(self) -> bool:
        """Whether the caller cancelled the request."""

    def raise_if_cancelled(self) -> None:
        """Stops the request here if it was cancelled or the server is shutting down."""

    def fetch_image(self, url: str, field: str | tuple[str | int, ...]) -> RawImage:
        """The decoded image behind a URL input; a bad one raises FieldError on `field`."""

    def image_output(self, pixels: np.ndarray, *, image_format: str = "png", sync_mode: bool = False) -> Image:
        """Encodes `(H, W, C)` uint8 pixels and stores them (or inlines them with `sync_mode`)."""

    def add_provenance(self, fields: Mapping[str, Any]) -> None:
        """Adds what the pipeline knows of how it made the result (seed, scheduler...) to its provenance."""


def report_progress(requests: Sequence[RequestContext], step: int, total: int) -> None:
    """Logs `step i/n` for every request of a batch; stops the batch once all were cancelled or
    the server is shutting down. Pipelines call it once per step."""
    live = [request for request in requests if not request.is_cancelled()]
    if not live:
        raise Cancelled()
    live[0].raise_if_cancelled()
    for request in live:
        request.log(f"step {step}/{total}")


class Weights(Protocol):
    """The verified model weights on this machine, by their weights.lock name."""

    def problem(self, names: Iterable[str]) -> str | None:
        """Why these models cannot be loaded now (not installed, changed...), or None. Cheap."""

    def verified_folder(self, name: str) -> Path:
        """The model's folder, its files checked against the lock; raises when they do not match."""

    def provenance(self, name: str) -> dict[str, str]:
        """Repository, revision and digest of the model, for results' provenance."""

    def folder(self, name: str) -> Path:
        """Where the model's files are, unverified: for planning from their headers, never for loading."""


@dataclass(frozen=True)
class PipelineSettings:
    """What the operator configures for every pipeline; `setup` receives it."""

    # lossless speed-ups (fused projections, fast attention, compile on CUDA, caches); off runs the
    # libraries as they ship, e.g. to compare against them
    speedups: bool = True


GIB = 1024**3


@dataclass(frozen=True)
class MemoryPlan:
    """Device memory (bytes) an endpoint needs, planned from its weights before they are loaded.

    `weights` is the model's copy, shared by every endpoint of that model on a device; the safety
    checker is shared by every diffusion endpoint of the device; `extra` is what the endpoint adds on
    demand (FLUX image-to-image's FP8 transformer, for `acceleration: regular/high`); `activations`
    is the estimated peak working memory of the largest request the endpoint accepts. The CUDA
    context and allocator slack (about 1 GiB) come on top.
    """

    model: str
    weights: int
    safety_checker: int
    extra: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.safety_checker + self.extra + self.activations

    def as_json(self) -> dict[str, Any]:
        names = ("weights", "safety_checker", "extra", "activations", "total")
        return {"model": self.model, **{f"{name}_gib": round(getattr(self, name) / GIB, 2) for name in names}}


# -- the pipeline ------------------------------------------------------------------------------

InputT = TypeVar("InputT", bound=BaseModel)
ItemT = TypeVar("ItemT")
PredictionT = TypeVar("PredictionT")


class Pipeline(abc.ABC, Generic[InputT, ItemT, PredictionT]):
    """One fal endpoint. A class that sets `endpoint_id` in its own body is served; base classes
    that share code between endpoints do not set it."""

    endpoint_id: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    # how many compatible requests `predict` may take at once; the server caps it with --max-batch-size
    max_batch_size: ClassVar[int] = 1
    # the weights.lock models `setup` loads; the endpoint is unavailable until they are installed
    models: ClassVar[tuple[str, ...]] = ()
    # peak working memory (bytes, host and device) one request needs per pixel of its input images,
    # decode to encode; the server divides each worker's memory budget by it to get how many input
    # pixels one request may bring, and refuses more from the image headers, before decoding. An
    # endpoint that does not say is assumed to be heavier than any built-in one.
    bytes_per_input_pixel: ClassVar[int] = 256

    device: torch.device
    settings: PipelineSettings
    # pipelines holding one copy of a model on a device give it the same value, so the worker evicts
    # them together (evicting one alone would free nothing); None: the pipeline holds its own
    memory_group: Hashable | None = None

    @classmethod
    def memory_plan(cls, weights: Weights, device_type: str) -> MemoryPlan | None:
        """The device memory this endpoint needs on a `device_type` device, planned from the installed
        weights without loading them; None when there is nothing to plan or they are not installed."""
        return None

    @classmethod
    def unavailable_reason(cls, weights: Weights) -> str | None:
        """Why this endpoint cannot run on this machine (e.g. weights not installed), or None.
        Cheap: it runs on every submit."""
        reason = weights.problem(cls.models)
        return f"{cls.endpoint_id} cannot run: {reason}" if reason else None

    @classmethod
    def prepare(cls, inputs: InputT) -> InputT:
        """Checks rules that span several fields and fills in values drawn at submit time (a seed),
        so a retried request runs exactly as the first try. Raises FieldError."""
        return inputs

    def setup(self, device: torch.device, weights: Weights, settings: PipelineSettings) -> None:
        """Loads models onto `device`, each from `weights.verified_folder(name)`; runs once per
        device before the first request."""
        self.device = device
        self.settings = settings

    @abc.abstractmethod
    def decode(self, inputs: InputT, request: RequestContext) -> ItemT:
        """Fetches and decodes one request's inputs on the host."""

    def batch_key(self, item: ItemT) -> Hashable | None:
        """Items with equal keys may share one `predict` call; None runs the item alone."""
        return None

    def batch_limit(self, item: ItemT) -> int:
        """How many items like `item` one `predict` call should take on this pipeline's device."""
        return self.max_batch_size

    @abc.abstractmethod
    def predict(self, items: Sequence[ItemT], requests: Sequence[RequestContext]) -> Sequence[PredictionT]:
        """Runs a batch on the device; returns one prediction per item, in order."""

    @abc.abstractmethod
    def encode(self, prediction: PredictionT, inputs: InputT, request: RequestContext) -> BaseModel:
        """Turns one prediction into the endpoint's `Output` (storing its files)."""

    def release_extra_memory(self) -> bool:
        """After an out-of-memory error, frees what the pipeline keeps beside its model (extra copies,
        caches); True if it freed anything. The worker has already evicted every other pipeline."""
        return False
