"""The FastAPI application: fal's routes generated from the registered pipelines' models."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import server
from server.config import Settings
from server.errors import KilnError, NotFound, PayloadTooLarge
from server.middleware import BodyTooLarge, ProtocolRouting
from server.registry import Registry
from server.routes import docs, meta, metrics, queue, run, storage, ui
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
    app.include_router(metrics.router)
    app.include_router(ui.router)
    app.add_exception_handler(KilnError, kiln_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(
        ProtocolRouting,
        owners=registry.owners,
        max_body_bytes=settings.max_body_bytes,
        scheme="https" if settings.base_url.startswith("https") else "http",
        public_url=settings.public_url,
        allowed_hosts=settings.allowed_hosts,
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


async def http_error_handler(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own HTTP errors, in fal's shapes where theirs would mislead a client.

    - A body that could not be read as JSON (not UTF-8, nested past the parser's recursion limit, an
      integer of more than 4300 digits) is FastAPI's 400 "There was an error parsing the body" with a
      string `detail`; it is bad input like any other, so 422 in FastAPI's `detail` list shape.
    - A GET for a path under `/queue/` or `/run/` that only a POST route matches is 404, not 405:
      there is nothing to get there, and fal answers 404.
    - A path nothing serves is 404 in fal's shape, `error_type` and `X-Fal-Error-Type` included (the
      clients read those; fal-client's realtime token call to `/rest/tokens/` reported none).
    """
    cause = error.__cause__
    if error.status_code == 400 and cause is not None:
        if isinstance(cause, BodyTooLarge):  # the middleware turns any answer into 413; be exact anyway
            return await kiln_error_handler(request, PayloadTooLarge("The request body is too large"))
        return JSONResponse(
            {"detail": [{"loc": ["body"], "msg": body_parse_message(cause), "type": "json_invalid"}]},
            status_code=422,
        )
    if error.status_code == 405 and request.method in ("GET", "HEAD") and request.url.path.startswith(("/queue/", "/run/")):
        return await kiln_error_handler(request, NotFound(f"Nothing to {request.method} at {request.url.path}"))
    if error.status_code == 404:
        return await kiln_error_handler(request, NotFound(f"Nothing is served at {request.url.path}"))
    return await http_exception_handler(request, error)


def body_parse_message(cause: BaseException) -> str:
    """What was wrong with a body that did not parse, in words for the caller (not Python's)."""
    if isinstance(cause, UnicodeDecodeError):
        return f"The body is not valid UTF-8 (byte 0x{cause.object[cause.start]:02x} at position {cause.start})"
    if isinstance(cause, RecursionError):
        return "The body's JSON is nested too deeply to parse"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "The body's JSON has an integer with more digits than the 4300 Python parses"
    return f"The body could not be parsed as JSON ({type(cause).__name__})"


async def unexpected_error_handler(request: Request, error: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "Internal server error", "error_type": "internal_error"}, status_code=500)
