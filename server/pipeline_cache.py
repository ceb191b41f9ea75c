"""The pipelines one worker keeps set up on its device, least recently used first.

A pipeline is set up on the first request for its endpoint (or at start-up, `preload`) and kept warm.
When the device runs out of memory, in `setup` (a pipeline whose memory plan does not fit in what is
free raises it before loading anything) or in a request, the least recently used other pipelines are
evicted. Endpoints that share one model (a pipeline's `memory_group`: the nine editing endpoints on
FLUX.1 Kontext) are evicted together, since evicting one alone frees nothing, and are never evicted
to make room for one of their own group. After a request ran out of memory the failing pipeline is
asked to free its own extra copies too (`release_extra_memory`: FLUX's FP8 transformer). Each
endpoint's state on the device (`loading`, `ready`, `error: …`; absent means cold) is what `/health`
reports; `loading` lasts until a compiled pipeline is warmed.
"""

from __future__ import annotations

import enum
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from pipelines.contract import KilnError, Pipeline, PipelineSettings, Weights
from server import metrics
from server.errors import EndpointUnavailable

logger = logging.getLogger(__name__)

# 413, not 503: the worker has already evicted every other pipeline and run the request alone, so
# only a smaller request can fit; the official clients retry 503 and would run it again in vain
OUT_OF_MEMORY = KilnError(
    "The device ran out of memory running this request alone; try a smaller image or fewer images",
    status_code=413,
    error_type="out_of_memory",
)


def use_compile_cache(folder: Path) -> None:
    """Keeps torch.compile's artefacts (inductor's FX graph and AOTAutograd caches, Triton kernels) in
    `folder`, so a restart on the same data dir loads compiled denoisers instead of compiling them
    again (minutes per FLUX-size model). Variables the operator set are left alone."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


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
        started = time.perf_counter()
        try:
            pipeline = self._set_up(pipeline_class)
            metrics.pipeline_set_up(endpoint_id, self.device, time.perf_counter() - started)
        except Exception as error:
            self._set_state(endpoint_id, f"{PipelineState.ERROR.value}: {error}")
            raise
        self._loaded[endpoint_id] = pipeline
        self._set_state(endpoint_id, PipelineState.READY.value)
        logger.info("%s is warm on %s (%d pipeline(s) loaded)", endpoint_id, self.device, len(self._loaded))
        return pipeline

    def preload(self, pipeline_classes: list[type[Pipeline]]) -> dict[str, str]:
        """Sets up these endpoints now (at start-up, before the worker claims requests), each warmed
        before its state is `ready`; returns each one's state. A failure is recorded, not raised."""
        for pipeline_class in pipeline_classes:
            try:
                self.get(pipeline_class)
            except Exception as error:
                logger.warning(
                    "could not set up %s on %s at start-up: %s", pipeline_class.endpoint_id, self.device, error
                )
                self._set_state(pipeline_class.endpoint_id, f"{PipelineState.ERROR.value}: {error}")
        return {cls.endpoint_id: self.states().get(cls.endpoint_id, "cold") for cls in pipeline_classes}

    def release_memory(self, keep: Pipeline) -> None:
        """Evicts every pipeline but `keep` (and those sharing its model, which would free nothing), lets
        `keep` free its own extra copies, and returns the memory to the device."""
        while self._evict_one(keep=keep):
            pass
        if keep.release_extra_memory():
            logger.info("%s freed its extra copies on %s", keep.endpoint_id, self.device)
        self._empty_cache()

    def _set_up(self, pipeline_class: type[Pipeline]) -> Pipeline:
        while True:
            pipeline = pipeline_class()
            try:
                pipeline.setup(self.device, self._weights, self._settings)
                return pipeline
            except torch.OutOfMemoryError as error:
                del pipeline
                if not self._evict_one():
                    logger.warning("%s does not fit on %s alone: %s", pipeline_class.endpoint_id, self.device, error)
                    raise OUT_OF_MEMORY from None

    def _evict_one(self, keep: Pipeline | None = None) -> bool:
        """Evicts the least recently used pipeline (but `keep`) with every other of its memory group;
        False when there is nothing to evict that would free memory."""
        kept_group = keep.memory_group if keep is not None else None
        victims: list[str] = []
        for endpoint_id, pipeline in self._loaded.items():
            group = pipeline.memory_group
            if pipeline is keep or (group is not None and group == kept_group):
                continue
            victims = [
                other_id
                for other_id, other in self._loaded.items()
                if other is not keep
                and (other_id == endpoint_id or (group is not None and other.memory_group == group))
            ]
            break
        if not victims:
            return False
        for endpoint_id in victims:
            del self._loaded[endpoint_id]
            with self._lock:
                self._states.pop(endpoint_id, None)
        logger.info("evicted %s from %s to free memory", ", ".join(victims), self.device)
        self._empty_cache()
        return True

    def _set_state(self, endpoint_id: str, state: str) -> None:
        with self._lock:
            self._states[endpoint_id] = state

    def _empty_cache(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
