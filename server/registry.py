"""The endpoints this server serves, loaded from `pipelines.PIPELINES` plus any `--pipeline` extras.

The server knows no model by name: everything it needs about an endpoint (schema, batch size,
whether it can run here) comes from the pipeline class.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from pipelines import PIPELINES
from pipelines.base import Pipeline
from server.endpoints import owner_segment
from server.weights import WeightsStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    pipeline: type[Pipeline] | None
    import_error: str | None = None

    def unavailable_reason(self, weights: WeightsStore) -> str | None:
        if self.pipeline is None:
            return f"Endpoint {self.endpoint_id} cannot run on this server: {self.import_error}"
        return self.pipeline.unavailable_reason(weights)


def import_pipeline(spec: str) -> type[Pipeline]:
    """`package.module:Class` -> the class."""
    module_name, _, class_name = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Pipeline)):
        raise TypeError(f"{spec} is not a Pipeline subclass")
    return cls


class Registry:
    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = {endpoint.endpoint_id: endpoint for endpoint in endpoints}

    @classmethod
    def load(cls, builtin: Mapping[str, str] = PIPELINES, extra: Iterable[str] = ()) -> Registry:
        endpoints = []
        for endpoint_id, spec in builtin.items():
            try:
                pipeline = import_pipeline(spec)
            except Exception as error:  # a missing optional dependency must not take the server down
                logger.warning("endpoint %s is unavailable: %s", endpoint_id, error)
                endpoints.append(Endpoint(endpoint_id, None, f"{type(error).__name__}: {error}"))
                continue
            endpoints.append(Endpoint(endpoint_id, pipeline))
        for spec in extra:
            pipeline = import_pipeline(spec)
            endpoints.append(Endpoint(pipeline.endpoint_id, pipeline))
        return cls(endpoints)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints.values())

    def get(self, endpoint_id: str) -> Endpoint | None:
        return self._endpoints.get(endpoint_id.strip("/"))

    @property
    def owners(self) -> frozenset[str]:
        """First path segments of the served ids (`fal-ai`), used to route root-level run URLs."""
        return frozenset(owner_segment(endpoint_id) for endpoint_id in self._endpoints)
