"""The endpoints this server serves, found in the modules it is given at start-up.

The server knows no model by name: it imports the modules named in `Settings.pipeline_modules`
(`pipelines` by default; a package means each of its modules) and serves every `Pipeline`
subclass that sets `endpoint_id` in its own body. Everything else it needs about an endpoint
(schema, batch size, whether it can run here) comes from that class.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import pkgutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType

from pydantic import BaseModel

from pipelines.contract import Pipeline
from server.endpoints import owner_segment

logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """An endpoint class breaks the contract, or two classes claim one endpoint id."""


@dataclass(frozen=True)
class BrokenModule:
    """A module that could not be imported (a missing optional dependency must not stop the server)."""

    module: str
    error: str


def endpoint_classes(module: ModuleType) -> list[type[Pipeline]]:
    """The endpoint classes defined in `module`: Pipeline subclasses that set `endpoint_id` themselves."""
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__ and issubclass(cls, Pipeline) and "endpoint_id" in cls.__dict__
    ]


def check_endpoint_class(cls: type[Pipeline]) -> None:
    """Refuses, at start-up, a class the worker could not drive."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    for name in ("Input", "Output"):
        model = getattr(cls, name, None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise RegistryError(f"{where} must set `{name}` to a pydantic model, not {model!r}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise RegistryError(f"{where} sets `endpoint_id` but does not implement {missing}")
    if not isinstance(cls.endpoint_id, str) or cls.endpoint_id.strip("/") != cls.endpoint_id or "/" not in cls.endpoint_id:
        raise RegistryError(f"{where}.endpoint_id must look like `owner/alias[/path]`, not {cls.endpoint_id!r}")


def _module_names(name: str) -> list[str]:
    """`name` and, when it names a package, each of its modules (not recursively)."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise RegistryError(f"no module named {name!r} to load pipelines from")
    submodules = [f"{name}.{info.name}" for info in pkgutil.iter_modules(spec.submodule_search_locations or [])]
    return [name, *submodules]


class Registry:
    """Endpoint id -> its pipeline class, plus the modules that failed to import."""

    def __init__(self, pipelines: Iterable[type[Pipeline]], broken: Iterable[BrokenModule] = ()) -> None:
        self._pipelines: dict[str, type[Pipeline]] = {}
        for pipeline in pipelines:
            check_endpoint_class(pipeline)
            other = self._pipelines.setdefault(pipeline.endpoint_id, pipeline)
            if other is not pipeline:
                raise RegistryError(
                    f"{pipeline.endpoint_id} is served by both {other.__module__}.{other.__qualname__}"
                    f" and {pipeline.__module__}.{pipeline.__qualname__}"
                )
        self.broken = tuple(broken)

    @classmethod
    def discover(cls, module_names: Iterable[str]) -> Registry:
        """Imports the named modules and packages and registers the endpoint classes they define."""
        pipelines: list[type[Pipeline]] = []
        broken: list[BrokenModule] = []
        for name in (module for package in module_names for module in _module_names(package)):
            try:
                module = importlib.import_module(name)
            except ImportError as error:
                logger.warning("pipeline module %s is unavailable: %s", name, error)
                broken.append(BrokenModule(name, f"{type(error).__name__}: {error}"))
                continue
            pipelines += endpoint_classes(module)
        return cls(pipelines, broken)

    def __iter__(self) -> Iterator[type[Pipeline]]:
        return iter(self._pipelines.values())

    def __len__(self) -> int:
        return len(self._pipelines)

    def get(self, endpoint_id: str) -> type[Pipeline] | None:
        return self._pipelines.get(endpoint_id.strip("/"))

    @property
    def owners(self) -> frozenset[str]:
        """First path segments of the served ids (`fal-ai`), used to route root-level run URLs."""
        return frozenset(owner_segment(endpoint_id) for endpoint_id in self._pipelines)

    def models(self) -> dict[str, list[str]]:
        """weights.lock model name -> the endpoints that load it."""
        users: dict[str, list[str]] = {}
        for pipeline in self:
            for model in pipeline.models:
                users.setdefault(model, []).append(pipeline.endpoint_id)
        return users
