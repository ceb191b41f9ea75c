"""Kiln's web pages (home, a playground per endpoint, compare, history), their assets, and the few
JSON calls only the pages make: a key's history, a request's inputs, saved comparisons.

Pages are server-rendered Jinja2 templates with a little plain JavaScript (`server/ui/`); every
asset is served from here, so they work on an air-gapped host. A page carries no secret and needs no
key: the key is typed once into the page, kept in the browser's localStorage and sent by the page's
own fetch calls as `Authorization: Key ...`, as any fal client sends it; the server never reads a
cookie. Everything here is left out of `/openapi.json`, which documents fal's protocol.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from pydantic import BaseModel, Field

import server
from server.compare import (
    DEFAULT_SEED,
    MAX_AXIS_VALUES,
    MAX_CELLS,
    ComparisonError,
    ComparisonSpec,
    ComparisonStore,
    plan,
)
from server.deps import OwnerDep, ServicesDep
from server.endpoints import app_prefix
from server.errors import FieldError, NotFound
from server.protocol import REQUEST_ID, queue_base
from server.routes import meta
from server.services import Services
from server.store import JobStatus
from server.ui.forms import input_fields

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
STATIC_DIR = UI_DIR / "static"
STATIC_NAME = re.compile(r"^[a-z0-9-]+\.(js|css|svg)$")
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CODE_SPAN = re.compile(r"`([^`]+)`")
HISTORY_PAGE = 50

router = APIRouter(tags=["ui"], include_in_schema=False)
templates = Jinja2Templates(directory=UI_DIR / "templates")


def code_spans(text: str) -> Markup:
    """Escaped text with its `backticked` parts (commands, flags) as <code>."""
    return Markup(CODE_SPAN.sub(lambda match: f"<code>{match.group(1)}</code>", str(escape(text))))


templates.env.filters["code_spans"] = code_spans


def security_headers(services: Services) -> dict[str, str]:
    """Only Kiln's own scripts and styles may run; fetches go to this server (and its public URL)."""
    base = services.settings.base_url
    return {
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
            f"connect-src 'self' {base}; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def page(
    request: Request, services: Services, template: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {"keys_required": services.keys.enabled, "version": server.__version__, **context},
        status_code=status_code,
        headers=security_headers(services),
    )


def endpoint_states(services: Services) -> dict[str, str | None]:
    """Endpoint id -> why it cannot run here (None when it can), sorted by id."""
    return {
        pipeline.endpoint_id: pipeline.unavailable_reason(services.weights)
        for pipeline in sorted(services.registry, key=lambda pipeline: pipeline.endpoint_id)
    }


def fields_json(request: Request, endpoint_id: str) -> list[dict[str, Any]]:
    return [field.to_json() for field in input_fields(request.app.openapi(), endpoint_id)]


# -- pages ---------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request, services: ServicesDep) -> HTMLResponse:
    """Every endpoint with its state from /health, the workers, the queue, the key's recent requests."""
    health = meta.health(Response(), services)
    depths = services.store.queue_depths()
    endpoints = [
        {
            "id": endpoint_id,
            "reason": None if state == "available" else state.removeprefix(f"{endpoint_id} cannot run: "),
            "queued": depths.get(endpoint_id, {}).get(JobStatus.IN_QUEUE.value, 0),
            "running": depths.get(endpoint_id, {}).get(JobStatus.IN_PROGRESS.value, 0),
        }
        for endpoint_id, state in sorted(health.endpoints.items(), key=lambda item: (item[1] != "available", item[0]))
    ]
    return page(
        request,
        services,
        "home.html",
        health=health,
        endpoints=endpoints,
        config={"endpoints": [endpoint["id"] for endpoint in endpoints]},
    )


@router.get("/playground/{endpoint_id:path}", response_class=HTMLResponse)
def playground(request: Request, services: ServicesDep, endpoint_id: str) -> HTMLResponse:
    """A form generated from the endpoint's input schema, run through the public queue protocol."""
    pipeline = services.registry.get(endpoint_id)
    if pipeline is None:
        return page(
            request, services, "missing.html", status_code=404, message=f"No endpoint {endpoint_id} is served here."
        )
    endpoint_id = pipeline.endpoint_id
    reason = pipeline.unavailable_reason(services.weights)
    config = {
        "endpoint": endpoint_id,
        "fields": fields_json(request, endpoint_id),
        "base_url": services.settings.base_url,
        "unavailable": reason,
    }
    return page(request, services, "playground.html", endpoint=endpoint_id, reason=reason, config=config)


@router.get("/compare", response_class=HTMLResponse)
@router.get("/compare/{comparison_id}", response_class=HTMLResponse)
def compare(request: Request, services: ServicesDep, comparison_id: str | None = None) -> HTMLResponse:
    """One base input over rows and columns of variations; `/compare/{id}` reopens a saved one."""
    states = endpoint_states(services)
    config = {
        "endpoints": {
            endpoint_id: {"fields": fields_json(request, endpoint_id), "unavailable": reason}
            for endpoint_id, reason in states.items()
        },
        "selected": request.query_params.getlist("endpoint"),
        "comparison_id": comparison_id,
        "max_cells": MAX_CELLS,
        "max_values": MAX_AXIS_VALUES,
        "default_seed": DEFAULT_SEED,
    }
    return page(request, services, "compare.html", config=config, max_cells=MAX_CELLS, max_values=MAX_AXIS_VALUES)


@router.get("/history", response_class=HTMLResponse)
def history(request: Request, services: ServicesDep) -> HTMLResponse:
    """The key's requests, each reopening in its playground with its inputs."""
    return page(request, services, "history.html", config={"endpoints": list(endpoint_states(services))})


@router.get("/ui/static/{name}")
def static_file(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if not STATIC_NAME.match(name) or not path.is_file():
        raise NotFound(f"No asset {name}")
    return FileResponse(
        path,
        media_type=STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


# -- the pages' JSON calls -----------------------------------------------------------------------


class HistoryItem(BaseModel):
    request_id: str
    endpoint: str
    status: JobStatus
    created_at: float
    completed_at: float | None
    status_code: int | None
    error: str | None
    error_type: str | None
    playground_url: str


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    # pass as `before` for the next (older) page; None on the last page
    next_before: float | None


@router.get("/ui/api/history", response_model=HistoryPage)
def history_items(
    services: ServicesDep,
    owner: OwnerDep,
    endpoint: str | None = None,
    status: JobStatus | None = None,
    before: float | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = HISTORY_PAGE,
) -> HistoryPage:
    """The caller's requests, newest first."""
    jobs = services.store.owner_history(owner, endpoint=endpoint or None, status=status, limit=limit, before=before)
    items = [
        HistoryItem(
            request_id=job.request_id,
            endpoint=job.endpoint,
            status=job.status,
            created_at=job.created_at,
            completed_at=job.completed_at,
            status_code=job.status_code,
            error=job.error,
            error_type=job.error_type,
            playground_url=f"/playground/{job.endpoint}?request={job.request_id}",
        )
        for job in jobs
    ]
    return HistoryPage(items=items, next_before=items[-1].created_at if len(items) == limit else None)


def request_urls(request: Request, services: Services, endpoint: str, request_id: str) -> dict[str, str]:
    """fal's status, result and cancel URLs of a request, as its submit answered them."""
    base = f"{queue_base(request, services)}/{app_prefix(endpoint)}/requests/{request_id}"
    return {"status_url": f"{base}/status", "response_url": base, "cancel_url": f"{base}/cancel"}


@router.get("/ui/api/requests/{request_id}")
def request_inputs(request: Request, services: ServicesDep, owner: OwnerDep, request_id: str) -> dict[str, Any]:
    """One of the caller's requests with the inputs it was sent with, to reopen it in its playground."""
    job = services.store.get(request_id) if REQUEST_ID.match(request_id) else None
    if job is None or job.owner != owner:
        raise NotFound("Request not found")
    return {
        "request_id": job.request_id,
        "endpoint": job.endpoint,
        "status": job.status.value,
        "payload": job.payload,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
        **request_urls(request, services, job.endpoint, job.request_id),
    }


def comparisons(services: Services) -> ComparisonStore:
    return ComparisonStore(services.settings.data_dir / "comparisons")


def comparison_view(record: dict[str, Any]) -> dict[str, Any]:
    return {**{key: value for key, value in record.items() if key != "owner"}, "permalink": f"/compare/{record['id']}"}


@router.post("/ui/api/comparisons")
def create_comparison(request: Request, services: ServicesDep, owner: OwnerDep, spec: ComparisonSpec) -> dict[str, Any]:
    """Checks and saves a comparison and returns its cells; the page then submits each cell through
    the queue and records the request ids here, so the permalink can show them again."""
    document = request.app.openapi()
    fields = {
        endpoint: input_fields(document, endpoint) for endpoint in spec.endpoints if services.registry.get(endpoint)
    }
    try:
        planned = plan(spec, fields)
    except ComparisonError as error:
        raise FieldError(error.loc, str(error)) from None
    return comparison_view(comparisons(services).create(owner, spec, planned))


@router.get("/ui/api/comparisons/{comparison_id}")
def get_comparison(services: ServicesDep, owner: OwnerDep, comparison_id: str) -> dict[str, Any]:
    record = comparisons(services).get(comparison_id, owner)
    if record is None:
        raise NotFound("Comparison not found")
    return comparison_view(record)


class CellRequest(BaseModel):
    """What became of one cell's submit: its request id, or the error that refused it."""

    request_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    http_status: int | None = None


class CellRequests(BaseModel):
    cells: list[CellRequest] = Field(description="One per cell, in the comparison's order")


@router.put("/ui/api/comparisons/{comparison_id}/requests")
def record_requests(
    request: Request, services: ServicesDep, owner: OwnerDep, comparison_id: str, body: CellRequests
) -> dict[str, Any]:
    """Records the request each cell was submitted as (each must be the caller's, on the cell's endpoint)."""
    store = comparisons(services)
    record = store.get(comparison_id, owner)
    if record is None:
        raise NotFound("Comparison not found")
    if len(body.cells) != len(record["cells"]):
        raise FieldError(("cells",), f"the comparison has {len(record['cells'])} cells, not {len(body.cells)}")
    updates = []
    for index, (cell, update) in enumerate(zip(record["cells"], body.cells, strict=True)):
        if update.request_id is None:
            updates.append(
                {
                    "request_id": None,
                    "error": update.error or "not submitted",
                    "error_type": update.error_type,
                    "http_status": update.http_status,
                }
            )
            continue
        job = services.store.info(update.request_id) if REQUEST_ID.match(update.request_id) else None
        if job is None or job.owner != owner or job.endpoint != cell["endpoint"]:
            raise FieldError(
                ("cells", index, "request_id"), f"no request {update.request_id} of {cell['endpoint']} is yours"
            )
        updates.append(
            {
                "request_id": job.request_id,
                "error": None,
                **request_urls(request, services, job.endpoint, job.request_id),
            }
        )
    return comparison_view(store.update_cells(record, updates))
