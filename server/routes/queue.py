"""fal's queue API: submit, status, status stream, result and cancel.

Submit takes the full endpoint id; the other calls take `[namespace/]owner/alias` (as both official
clients build them) or the full id. Status answers 202 until the request is COMPLETED, then 200;
`logs` is always present (null unless asked for) and `queue_position` is present while queued.
"""

import json
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from server.deps import OwnerDep, ServicesDep
from server.endpoints import app_prefix, matches_app
from server.errors import BadRequest, Cancelled, EndpointUnavailable, FieldError, NotFound
from server.fetch import FetchError
from server.registry import Endpoint, Registry
from server.schemas import CancelResponse, ErrorBody, QueueStatus
from server.services import Services
from server.store import CancelOutcome, Job, JobResult, JobStatus, LogEntry, NewJob, Priority

STREAM_KEEPALIVE_SECONDS = 15.0
CANCEL_STATUS_CODES = {
    CancelOutcome.OK: 200,
    CancelOutcome.CANCELLATION_REQUESTED: 202,
    CancelOutcome.ALREADY_COMPLETED: 400,
    CancelOutcome.NOT_FOUND: 404,
}
TRUE_FLAGS = frozenset({"1", "true", "yes"})

PriorityHeader = Annotated[
    str | None, Header(alias="X-Fal-Queue-Priority", description="`normal` (default) or `low`")
]
StartTimeoutHeader = Annotated[
    str | None,
    Header(alias="X-Fal-Request-Timeout", description="Seconds the request may wait in the queue before it starts"),
]
StartTimeoutHeaderNew = Annotated[str | None, Header(alias="X-Fal-Request-Start-Timeout", include_in_schema=False)]
LogsFlag = Annotated[str | None, Query(description="`1`/`true` to include logs")]


# ids Kiln issues are UUIDs; anything outside this shape cannot exist and is never echoed in a header
REQUEST_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def request_headers(request_id: str) -> dict[str, str]:
    return {"x-fal-request-id": request_id} if REQUEST_ID.match(request_id) else {}


def accept(
    services: Services,
    endpoint: Endpoint,
    inputs: BaseModel,
    *,
    owner: str,
    priority: str | None,
    start_timeout: str | None,
    webhook_url: str | None = None,
    max_queue_length: int | None = None,
) -> tuple[str, int]:
    """Validates what the schema cannot and enqueues the request; returns its id and queue position."""
    reason = endpoint.unavailable_reason(services.weights)
    if reason:
        raise EndpointUnavailable(reason)
    inputs = endpoint.pipeline.prepare(inputs)
    if webhook_url:
        try:
            services.fetcher.check(webhook_url)
        except FetchError as error:
            raise FieldError(("fal_webhook",), str(error), type=error.kind, location="query") from None
    deadline = None
    if start_timeout and start_timeout.strip():
        try:
            seconds = float(start_timeout)
        except ValueError:
            seconds = float("nan")
        if not seconds > 0:
            raise FieldError(("X-Fal-Request-Timeout",), "must be a positive number of seconds", location="header")
        deadline = time.time() + seconds
    request_id = str(uuid.uuid4())
    position = services.store.submit(
        NewJob(
            request_id=request_id,
            endpoint=endpoint.endpoint_id,
            owner=owner,
            payload=inputs.model_dump(mode="json"),
            priority=Priority.LOW if (priority or "").strip().lower() == "low" else Priority.NORMAL,
            webhook_url=webhook_url or None,
            start_deadline=deadline,
        ),
        max_queue_length=max_queue_length,
    )
    return request_id, position


def queue_base(request: Request, services: Services) -> str:
    return request.scope.get("kiln.queue_base") or services.settings.base_url + "/queue"


def base_status(base: str, endpoint_id: str, request_id: str, status: JobStatus) -> dict[str, Any]:
    response_url = f"{base}/{app_prefix(endpoint_id)}/requests/{request_id}"
    return {
        "status": status.value,
        "request_id": request_id,
        "gateway_request_id": request_id,
        "response_url": response_url,
        "status_url": response_url + "/status",
        "cancel_url": response_url + "/cancel",
        "logs": None,
        "metrics": {},
    }


def status_body(
    job: Job, *, base: str, position: int | None, logs: list[LogEntry] | None
) -> dict[str, Any]:
    body = base_status(base, job.endpoint, job.request_id, job.status)
    if logs is not None:
        body["logs"] = [log_line(entry) for entry in logs]
    if job.status is JobStatus.IN_QUEUE:
        body["queue_position"] = position
    if job.result is not None:
        body["metrics"] = dict(job.result.metrics)
        if job.result.error is not None:
            body["error"] = job.result.error
            body["error_type"] = job.result.error_type
    return body


def log_line(entry: LogEntry) -> dict[str, Any]:
    return {
        "message": entry.message,
        "level": entry.level,
        "source": "USER",
        "timestamp": datetime.fromtimestamp(entry.timestamp, timezone.utc).isoformat(),
    }


def find_job(services: Services, owner: str, app_path: str, request_id: str) -> Job:
    """The caller's job, or NotFound: another key's request does not exist for this caller."""
    job = services.store.get(request_id) if REQUEST_ID.match(request_id) else None
    if job is None or job.owner != owner or not matches_app(job.endpoint, app_path):
        raise NotFound("Request not found")
    return job


def wants_logs(flag: str | None) -> bool:
    return (flag or "").strip().lower() in TRUE_FLAGS


def result_response(job: Job) -> JSONResponse:
    result = job.result
    headers = {**result.headers, **request_headers(job.request_id)}
    return JSONResponse(result.body, status_code=result.status_code, headers=headers)


def build_router(registry: Registry) -> APIRouter:
    router = APIRouter(prefix="/queue", tags=["queue"])
    for endpoint in registry:
        if endpoint.pipeline is not None:
            router.add_api_route(
                f"/{endpoint.endpoint_id}",
                submit_route(endpoint),
                methods=["POST"],
                response_model=QueueStatus,
                responses={422: {}, 429: {"model": ErrorBody}, 503: {"model": ErrorBody}},
                summary=f"Submit a request to {endpoint.endpoint_id}",
                name=f"submit:{endpoint.endpoint_id}",
            )
    for suffix in ("/status", "/status/"):
        router.add_api_route(
            "/{app_path:path}/requests/{request_id}" + suffix,
            get_status,
            methods=["GET"],
            response_model=QueueStatus,
            responses={202: {"model": QueueStatus}, 404: {"model": ErrorBody}},
            include_in_schema=suffix == "/status",
        )
    router.add_api_route(
        "/{app_path:path}/requests/{request_id}/status/stream",
        stream_status,
        methods=["GET"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": ErrorBody}},
    )
    for suffix in ("", "/"):
        router.add_api_route(
            "/{app_path:path}/requests/{request_id}" + suffix,
            get_result,
            methods=["GET"],
            responses={200: {"description": "The endpoint's output"}, 400: {"model": ErrorBody}, 404: {"model": ErrorBody}},
            include_in_schema=suffix == "",
        )
        router.add_api_route(
            "/{app_path:path}/requests/{request_id}/cancel" + suffix,
            cancel_request,
            methods=["PUT"],
            response_model=CancelResponse,
            responses={202: {"model": CancelResponse}, 400: {"model": CancelResponse}, 404: {"model": CancelResponse}},
            include_in_schema=suffix == "",
        )
    router.add_api_route("/{endpoint_path:path}", unknown_endpoint, methods=["POST"], include_in_schema=False)
    return router


def submit_route(endpoint: Endpoint):
    Input = endpoint.pipeline.Input

    def submit(
        request: Request,
        services: ServicesDep,
        owner: OwnerDep,
        inputs: Input,
        priority: PriorityHeader = None,
        start_timeout: StartTimeoutHeader = None,
        start_timeout_new: StartTimeoutHeaderNew = None,
        fal_webhook: Annotated[str | None, Query(description="URL to POST the result to when done")] = None,
        fal_max_queue_length: Annotated[
            int | None, Query(ge=0, description="Reject with 429 when this many requests already wait")
        ] = None,
    ) -> JSONResponse:
        request_id, position = accept(
            services,
            endpoint,
            inputs,
            owner=owner,
            priority=priority,
            start_timeout=start_timeout_new or start_timeout,
            webhook_url=fal_webhook,
            max_queue_length=fal_max_queue_length,
        )
        body = base_status(queue_base(request, services), endpoint.endpoint_id, request_id, JobStatus.IN_QUEUE)
        body["queue_position"] = position
        return JSONResponse(body, headers=request_headers(request_id))

    return submit


def get_status(
    request: Request, services: ServicesDep, owner: OwnerDep, app_path: str, request_id: str, logs: LogsFlag = None
) -> JSONResponse:
    """The request's state; 202 while it waits or runs, 200 once COMPLETED."""
    job = find_job(services, owner, app_path, request_id)
    body = status_body(
        job,
        base=queue_base(request, services),
        position=services.store.queue_position(job) if job.status is JobStatus.IN_QUEUE else None,
        logs=services.store.logs(request_id) if wants_logs(logs) else None,
    )
    status_code = 200 if job.status is JobStatus.COMPLETED else 202
    return JSONResponse(body, status_code=status_code, headers=request_headers(request_id))


async def stream_status(
    request: Request, services: ServicesDep, owner: OwnerDep, app_path: str, request_id: str, logs: LogsFlag = None
) -> StreamingResponse:
    """Server-sent events, one per change, each carrying only logs new since the previous event."""
    find_job(services, owner, app_path, request_id)
    with_logs = wants_logs(logs)
    base = queue_base(request, services)

    async def events():
        last_log = 0
        last_state = None
        with services.store.changes.subscribe(request_id) as subscription:
            while True:
                job = services.store.get(request_id)
                if job is None:
                    return
                new_logs = services.store.logs(request_id, after_seq=last_log) if with_logs else None
                position = services.store.queue_position(job) if job.status is JobStatus.IN_QUEUE else None
                if (job.status, position) != last_state or new_logs:
                    if new_logs:
                        last_log = new_logs[-1].seq
                    last_state = (job.status, position)
                    body = status_body(job, base=base, position=position, logs=new_logs)
                    yield f"data: {json.dumps(body)}\n\n"
                if job.status is JobStatus.COMPLETED:
                    return
                if not await subscription.wait(STREAM_KEEPALIVE_SECONDS):
                    yield ": keep-alive\n\n"

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={**request_headers(request_id), "Cache-Control": "no-cache"}
    )


def get_result(services: ServicesDep, owner: OwnerDep, app_path: str, request_id: str) -> JSONResponse:
    """The endpoint's response with its own status code; 400 while the request is not done."""
    job = find_job(services, owner, app_path, request_id)
    if job.status is not JobStatus.COMPLETED:
        raise BadRequest("Request is still in progress")
    return result_response(job)


def cancel_request(services: ServicesDep, owner: OwnerDep, app_path: str, request_id: str) -> JSONResponse:
    """Removes a queued request (200) or asks a running one to stop at its next step (202)."""
    try:
        find_job(services, owner, app_path, request_id)
    except NotFound:
        outcome = CancelOutcome.NOT_FOUND
    else:
        outcome = services.store.cancel(request_id, JobResult.from_error(Cancelled()))
        if outcome is CancelOutcome.CANCELLATION_REQUESTED:
            services.pool.cancel(request_id)
    return JSONResponse(
        {"status": outcome.value}, status_code=CANCEL_STATUS_CODES[outcome], headers=request_headers(request_id)
    )


def unknown_endpoint(endpoint_path: str) -> None:
    raise NotFound(f"Endpoint {endpoint_path.strip('/')} is not served here")


async def wait_until_completed(services: Services, request: Request, request_id: str) -> Job | None:
    """Waits for a request to complete; cancels it and returns None if the HTTP client goes away."""
    with services.store.changes.subscribe(request_id) as subscription:
        while True:
            job = services.store.get(request_id)
            if job.status is JobStatus.COMPLETED:
                return job
            await subscription.wait(1.0)
            if await request.is_disconnected():
                services.store.cancel(request_id, JobResult.from_error(Cancelled("The client disconnected")))
                services.pool.cancel(request_id)
                return None
