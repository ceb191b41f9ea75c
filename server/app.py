"""The FastAPI application: fal's routes generated from the registered pipelines' models."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

import server
from server.config import Settings
from server.errors import KilnError
from server.middleware import ProtocolRouting
from server.registry import Registry
from server.routes import docs, meta, queue, run, storage
from server.services import Services

logger = logging.getLogger(__name__)


def create_app(settings: Settings, registry: Registry | None = None) -> FastAPI:
    if registry is None:
        registry = Registry.discover(settings.pipeline_modules)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = Services.start(settings, registry)
        try:
            yield
        finally:
            app.state.services.stop()

    app = FastAPI(
        title="Kiln",
        version=server.__version__,
        description="fal.ai's queue, sync and storage protocol for image endpoints on your own GPUs.",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
    )
    docs.mount(app)
    app.include_router(queue.build_router(registry))
    app.include_router(run.build_router(registry))
    app.include_router(storage.router)
    app.include_router(meta.router)
    app.add_exception_handler(KilnError, kiln_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(
        ProtocolRouting,
        owners=registry.owners,
        max_body_bytes=settings.max_body_bytes,
        scheme="https" if settings.base_url.startswith("https") else "http",
    )
    # browsers calling through the JS client's proxy mode need these; keys travel in headers, not cookies
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "PUT", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type"],
    )
    return app


async def kiln_error_handler(request: Request, error: KilnError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers())


async def validation_error_handler(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, made safe for any input: undecodable bytes must not turn it into a 500."""
    detail = [
        {
            "loc": list(item.get("loc", ())),
            "msg": item.get("msg", ""),
            "type": item.get("type", "value_error"),
            **({"ctx": json.loads(json.dumps(item["ctx"], default=str))} if item.get("ctx") else {}),
        }
        for item in error.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "Internal server error", "error_type": "internal_error"}, status_code=500)
