"""The pipelines one worker keeps set up on its device, least recently used first.

A pipeline is set up on the first request for its endpoint and kept warm. When the device runs out
of memory, in `setup` or in a request, the least recently used other pipelines are evicted. Each
endpoint's state on the device (`loading`, `ready`, `error: …`; absent means cold) is what
`/health` reports.
"""

from __future__ import annotations

import enum
import gc
import logging
import threading
from collections import OrderedDict

import torch

from pipelines.contract import KilnError, Pipeline, PipelineSettings, Weights
from server.errors import EndpointUnavailable

logger = logging.getLogger(__name__)

# 413, not 503: the worker has already evicted every other pipeline and run the request alone, so
# only a smaller request can fit; the official clients retry 503 and would run it again in vain
OUT_OF_MEMORY = KilnError(
    "The device ran out of memory running this request alone; try a smaller image or fewer images",
    status_code=413,
    error_type="out_of_memory",
)


class PipelineState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


class PipelineCache:
    def __init__(self, device: torch.device, weights: Weights, settings: PipelineSettings) -> None:
        self.device = device
        self._weights = weights
        self._settings = settings
        self._loaded: OrderedDict[str, Pipeline] = OrderedDict()
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()

    def states(self) -> dict[str, str]:
        """Endpoint id -> `loading`, `ready` or `error: <why>`, for the endpoints not cold here."""
        with self._lock:
            return dict(self._states)

    def warm(self) -> list[str]:
        """The endpoints set up here, least recently used first."""
        return list(self._loaded)

    def get(self, pipeline_class: type[Pipeline]) -> Pipeline:
        """The endpoint's pipeline set up on this device; raises what `setup` raised, or OUT_OF_MEMORY."""
        endpoint_id = pipeline_class.endpoint_id
        if endpoint_id in self._loaded:
            self._loaded.move_to_end(endpoint_id)
            return self._loaded[endpoint_id]
        reason = pipeline_class.unavailable_reason(self._weights)
        if reason:
            raise EndpointUnavailable(reason)
        self._set_state(endpoint_id, PipelineState.LOADING.value)
        try:
            pipeline = self._set_up(pipeline_class)
        except Exception as error:
            self._set_state(endpoint_id, f"{PipelineState.ERROR.value}: {error}")
            raise
        self._loaded[endpoint_id] = pipeline
        self._set_state(endpoint_id, PipelineState.READY.value)
        logger.info("%s is warm on %s (%d pipeline(s) loaded)", endpoint_id, self.device, len(self._loaded))
        return pipeline

    def release_memory(self, keep: Pipeline) -> None:
        """Evicts every pipeline but `keep` and returns the memory to the device."""
        while self._evict_one(keep=keep):
            pass
        self._empty_cache()

    def _set_up(self, pipeline_class: type[Pipeline]) -> Pipeline:
        while True:
            pipeline = pipeline_class()
            try:
                pipeline.setup(self.device, self._weights, self._settings)
                return pipeline
            except torch.OutOfMemoryError:
                del pipeline
                if not self._evict_one():
                    raise OUT_OF_MEMORY from None

    def _evict_one(self, keep: Pipeline | None = None) -> bool:
        for endpoint_id, pipeline in self._loaded.items():
            if pipeline is not keep:
                del self._loaded[endpoint_id]
                with self._lock:
                    self._states.pop(endpoint_id, None)
                logger.info("evicted %s from %s to free memory", endpoint_id, self.device)
                del pipeline
                self._empty_cache()
                return True
        return False

    def _set_state(self, endpoint_id: str, state: str) -> None:
        with self._lock:
            self._states[endpoint_id] = state

    def _empty_cache(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
