"""The contract between the server and an endpoint.

A pipeline is one fal endpoint: its input and output models (the API contract, from which the
OpenAPI documents are generated) and the four stages a worker drives, in LitServe's order:
`setup` once per device, then per request `decode` (host: fetch and decode inputs), `predict`
(device: one call for a batch of compatible requests) and `encode` (host: files and output model).
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Sequence
from typing import ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel

from server.context import RequestContext
from server.weights import WeightsStore

InputT = TypeVar("InputT", bound=BaseModel)
ItemT = TypeVar("ItemT")
PredictionT = TypeVar("PredictionT")


class Pipeline(abc.ABC, Generic[InputT, ItemT, PredictionT]):
    endpoint_id: ClassVar[str]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    # how many compatible requests `predict` may take at once; the server caps it with --max-batch-size
    max_batch_size: ClassVar[int] = 1
    # the weights.lock models `setup` loads; the endpoint is unavailable until they are installed
    models: ClassVar[tuple[str, ...]] = ()

    device: torch.device

    @classmethod
    def unavailable_reason(cls, weights: WeightsStore) -> str | None:
        """Why this endpoint cannot run on this machine (e.g. weights not installed), or None.
        Cheap: it runs on every submit."""
        reason = weights.problem(cls.models)
        return f"{cls.endpoint_id} cannot run: {reason}" if reason else None

    @classmethod
    def prepare(cls, inputs: InputT) -> InputT:
        """Checks rules that span several fields and fills in values drawn at submit time (a seed),
        so a retried request runs exactly as the first try. Raises FieldError."""
        return inputs

    def setup(self, device: torch.device, weights: WeightsStore) -> None:
        """Loads models onto `device`, each from `weights.verified_folder(name)`; runs once per
        worker before the first request."""
        self.device = device

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
    def encode(self, prediction: PredictionT, request: RequestContext) -> BaseModel:
        """Turns one prediction into the endpoint's output model (stores its files)."""
