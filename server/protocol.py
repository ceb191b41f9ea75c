"""fal's request semantics, shared by the queue API (`/queue`) and the sync API (`/run`).

A request is accepted (checked, enqueued) the same way by both; its state is reported in fal's
status body; its result is the endpoint's own response with its own status code. Store reads from
async code go through a thread, so the event loop never waits on the database. Status reads use the
store's `info`, never the payload or the result body, so a request's size does not slow its polling;
only the result itself reads the body.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pipelines.contract import FieldError, Pipeline
from server import metrics
from server.endpoints import app_prefix, matches_app
from server.errors import ClientDisconnected, EndpointUnavailable, NotFound
from server.fetch import FetchError
from server.schemas import LogLine, QueueStatus
from server.services import Services
from server.store import JobInfo, JobResult, JobStatus, LogEntry, NewJob, Priority

# ids Kiln issues are UUIDs; anything outside this shape cannot exist and is never echoed in a header
REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def request_headers(request_id: str) -> dict[str, str]:
    return {"x-fal-request-id": request_id} if REQUEST_ID.match(request_id) else {}


# -- fal's request headers -------------------------------------------------------------------


@dataclass(frozen=True)
class QueueOptions:
    """How a request asks to be queued, from fal's headers."""

    priority: Priority = Priority.NORMAL
    # seconds the request may wait in the queue before it starts
    start_timeout: float | None = None


def queue_options(
    priority: Annotated[
        str | None, Header(alias="X-Fal-Queue-Priority", description="`normal` (default) or `low`")
    ] = None,
    start_timeout: Annotated[
        float | None,
        Header(
            alias="X-Fal-Request-Timeout",
            gt=0,
            description="Seconds the request may wait in the queue before it starts",
        ),
    ] = None,
    start_timeout_new: Annotated[
        float | None, Header(alias="X-Fal-Request-Start-Timeout", gt=0, include_in_schema=False)
    ] = None,
) -> QueueOptions:
    """fal's queue headers; an unknown priority is `normal`, as on fal."""
    return QueueOptions(
        priority=Priority.LOW if (priority or "").strip().lower() == "low" else Priority.NORMAL,
        start_timeout=start_timeout_new or start_timeout,
    )


QueueOptionsDep = Annotated[QueueOptions, Depends(queue_options)]


# -- accepting -------------------------------------------------------------------------------


@functools.cache
def request_model(pipeline: type[Pipeline]) -> type[BaseModel]:
    """The endpoint's `Input` as a request body that also keeps the fields it does not declare.

    fal accepts and ignores unknown fields; Kiln keeps them in the stored payload so the worker can
    name them as ignored (the pipeline itself validates against its own `Input`, which drops them).
    """
    model = pipeline.Input
    namespace = {"model_config": {**model.model_config, "extra": "allow"}, "__module__": model.__module__}
    return type(model.__name__, (model,), {**namespace, "__doc__": model.__doc__})


def accept(
    services: Services,
    pipeline: type[Pipeline],
    inputs: BaseModel,
    *,
    owner: str,
    options: QueueOptions,
    webhook_url: str | None = None,
    max_queue_length: int | None = None,
) -> tuple[str, int]:
    """Checks what the schema cannot and enqueues the request; returns its id and queue position."""
    reason = pipeline.unavailable_reason(services.weights)
    if reason:
        raise EndpointUnavailable(reason)
    inputs = pipeline.prepare(inputs)
    if webhook_url:
        try:
            services.fetcher.check(webhook_url)
        except FetchError as error:
            raise FieldError(("fal_webhook",), str(error), type=error.kind, location="query") from None
    request_id = str(uuid.uuid4())
    position = services.store.submit(
        NewJob(
            request_id=request_id,
            endpoint=pipeline.endpoint_id,
            owner=owner,
            payload=inputs.model_dump(mode="json"),
            priority=options.priority,
            webhook_url=webhook_url or None,
            start_deadline=None if options.start_timeout is None else time.time() + options.start_timeout,
        ),
        max_queue_length=max_queue_length,
    )
    metrics.request_submitted(pipeline.endpoint_id, options.priority)
    return request_id, position


# -- reporting -------------------------------------------------------------------------------


def queue_base(request: Request, services: Services) -> str:
    return request.scope.get("kiln.queue_base") or services.settings.base_url + "/queue"


def queue_status(
    base: str,
    endpoint_id: str,
    request_id: str,
    status: JobStatus,
    *,
    position: int | None = None,
    logs: list[LogEntry] | None = None,
    info: JobInfo | None = None,
) -> QueueStatus:
    """fal's status body: the request's URLs, its state, position while queued, logs when asked.

    Fields are set only where fal sends them (`queue_position` while queued, `error` once failed);
    routes serialise it with `exclude_unset`, so an unset field is absent rather than null.
    """
    response_url = f"{base}/{app_prefix(endpoint_id)}/requests/{request_id}"
    fields: dict = {}
    if status is JobStatus.IN_QUEUE:
        fields["queue_position"] = position
    if info is not None and info.error is not None:
        fields.update(error=info.error, error_type=info.error_type)
    return QueueStatus(
        status=status.value,
        request_id=request_id,
        gateway_request_id=request_id,
        response_url=response_url,
        status_url=response_url + "/status",
        cancel_url=response_url + "/cancel",
        logs=None if logs is None else [log_line(entry) for entry in logs],
        metrics=dict(info.metrics) if info is not None else {},
        **fields,
    )


def status_of(job: JobInfo, base: str, *, position: int | None, logs: list[LogEntry] | None) -> QueueStatus:
    return queue_status(base, job.endpoint, job.request_id, job.status, position=position, logs=logs, info=job)


def log_line(entry: LogEntry) -> LogLine:
    return LogLine(
        message=entry.message,
        level=entry.level,
        source="USER",
        timestamp=datetime.fromtimestamp(entry.timestamp, timezone.utc).isoformat(),
    )


def find_job(services: Services, owner: str, app_path: str, request_id: str) -> JobInfo:
    """The caller's job, or NotFound: another key's request does not exist for this caller."""
    job = services.store.info(request_id) if REQUEST_ID.match(request_id) else None
    if job is None or job.owner != owner or not matches_app(job.endpoint, app_path):
        raise NotFound("Request not found")
    return job


def queue_position(services: Services, job: JobInfo) -> tuple[JobInfo, int | None]:
    """The job's place in the queue while it waits; re-read if it left the queue in the meantime."""
    if job.status is not JobStatus.IN_QUEUE:
        return job, None
    position = services.store.queue_position(job.request_id)
    if position is None:
        job = services.store.info(job.request_id) or job
        if job.status is JobStatus.IN_QUEUE:  # back in the queue already (a requeue in between)
            return job, services.store.queue_position(job.request_id) or 0
    return job, position


@dataclass(frozen=True)
class Finished:
    """A completed request's stored result: what the result route and the sync API answer with."""

    request_id: str
    result: JobResult


def finished(services: Services, request_id: str) -> Finished:
    """The stored result of a COMPLETED request (NotFound once retention removed it)."""
    result = services.store.result(request_id)
    if result is None:
        raise NotFound("Request not found")
    return Finished(request_id, result)


def result_response(job: Finished) -> JSONResponse:
    """The endpoint's response as the worker stored it, with its own status code and headers."""
    result = job.result
    headers = {**result.headers, **request_headers(job.request_id)}
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


async def wait_until_completed(services: Services, request: Request, request_id: str) -> Finished | None:
    """Waits for a request to complete; cancels it and returns None if the HTTP client goes away."""
    with services.store.changes.subscribe(request_id) as subscription:
        while True:
            job = await run_in_threadpool(services.store.info, request_id)
            if job.status is JobStatus.COMPLETED:
                return await run_in_threadpool(finished, services, request_id)
            await subscription.wait(1.0)
            if await request.is_disconnected():
                disconnected = ClientDisconnected()
                await run_in_threadpool(services.store.cancel, request_id, JobResult.from_error(disconnected))
                services.pool.cancel(request_id, disconnected)
                return None


def unknown_endpoint(endpoint_path: str) -> None:
    raise NotFound(f"Endpoint {endpoint_path.strip('/')} is not served here")
