"""fal's queue API: submit, status, status stream, result and cancel.

Submit takes the full endpoint id; the other calls take `[namespace/]owner/alias` (as both official
clients build them) or the full id. Status answers 202 until the request is COMPLETED, then 200;
`logs` is always present (null unless asked for) and `queue_position` is present while queued.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from pipelines.contract import Cancelled, Pipeline
from server.deps import OwnerDep, ServicesDep
from server.errors import BadRequest, NotFound
from server.protocol import (
    QueueOptionsDep,
    accept,
    find_job,
    finished,
    queue_base,
    queue_position,
    queue_status,
    request_headers,
    request_model,
    result_response,
    status_of,
    unknown_endpoint,
)
from server.registry import Registry
from server.schemas import CancelResponse, ErrorBody, QueueStatus, ValidationErrorBody
from server.services import Services
from server.store import CancelOutcome, JobInfo, JobResult, JobStatus

STREAM_KEEPALIVE_SECONDS = 15.0
CANCEL_STATUS_CODES = {
    CancelOutcome.OK: 200,
    CancelOutcome.CANCELLATION_REQUESTED: 202,
    CancelOutcome.ALREADY_COMPLETED: 400,
    CancelOutcome.NOT_FOUND: 404,
}
TRUE_FLAGS = frozenset({"1", "true", "yes"})

LogsFlag = Annotated[str | None, Query(description="`1`/`true` to include logs")]
REQUEST_PATH = "/{app_path:path}/requests/{request_id}"


def wants_logs(flag: str | None) -> bool:
    return (flag or "").strip().lower() in TRUE_FLAGS


def build_router(registry: Registry) -> APIRouter:
    router = APIRouter(prefix="/queue", tags=["queue"], responses={401: {"model": ErrorBody}})
    for pipeline in registry:
        router.add_api_route(
            f"/{pipeline.endpoint_id}",
            submit_route(pipeline),
            methods=["POST"],
            response_model=QueueStatus,
            response_model_exclude_unset=True,
            responses={422: {}, 429: {"model": ErrorBody}, 501: {"model": ErrorBody}},
            summary=f"Submit a request to {pipeline.endpoint_id}",
            name=f"submit:{pipeline.endpoint_id}",
        )
    for suffix in ("/status", "/status/"):
        router.add_api_route(
            REQUEST_PATH + suffix,
            get_status,
            methods=["GET"],
            response_model=QueueStatus,
            response_model_exclude_unset=True,
            responses={202: {"model": QueueStatus}, 404: {"model": ErrorBody}},
            include_in_schema=suffix == "/status",
        )
    router.add_api_route(
        REQUEST_PATH + "/status/stream",
        stream_status,
        methods=["GET"],
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "Server-sent events, each `data:` a status body",
                "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/QueueStatus"}}},
            },
            404: {"model": ErrorBody},
        },
    )
    for suffix in ("", "/"):
        router.add_api_route(
            REQUEST_PATH + suffix,
            get_result,
            methods=["GET"],
            response_model=result_model(registry),
            responses={
                200: {"description": "The endpoint's output, with Kiln's `provenance`"},
                400: {"model": ErrorBody},
                404: {"model": ErrorBody},
                422: {"model": ValidationErrorBody, "description": "The request's inputs could not be used"},
                413: {"model": ErrorBody},
                499: {"model": ErrorBody},
                500: {"model": ErrorBody},
                501: {"model": ErrorBody},
                504: {"model": ErrorBody},
            },
            include_in_schema=suffix == "",
        )
        router.add_api_route(
            REQUEST_PATH + "/cancel" + suffix,
            cancel_request,
            methods=["PUT"],
            response_model=CancelResponse,
            responses={202: {"model": CancelResponse}, 400: {"model": CancelResponse}, 404: {"model": CancelResponse}},
            include_in_schema=suffix == "",
        )
    router.add_api_route("/{endpoint_path:path}", unknown_endpoint, methods=["POST"], include_in_schema=False)
    return router


def result_model(registry: Registry) -> Any:
    """Any served endpoint's `Output`: the result route is shared by every endpoint."""
    outputs = tuple(dict.fromkeys(pipeline.Output for pipeline in registry))
    if not outputs:
        return None
    union = outputs[0]
    for output in outputs[1:]:
        union = union | output
    return union


def submit_route(pipeline: type[Pipeline]):
    Input = request_model(pipeline)

    def submit(
        request: Request,
        response: Response,
        services: ServicesDep,
        owner: OwnerDep,
        inputs: Input,
        options: QueueOptionsDep,
        fal_webhook: Annotated[str | None, Query(description="URL to POST the result to when done")] = None,
        fal_max_queue_length: Annotated[
            int | None, Query(ge=0, description="Reject with 429 when this many requests already wait")
        ] = None,
    ) -> QueueStatus:
        request_id, position = accept(
            services,
            pipeline,
            inputs,
            owner=owner,
            options=options,
            webhook_url=fal_webhook,
            max_queue_length=fal_max_queue_length,
        )
        response.headers.update(request_headers(request_id))
        return queue_status(
            queue_base(request, services), pipeline.endpoint_id, request_id, JobStatus.IN_QUEUE, position=position
        )

    return submit


def get_status(
    request: Request,
    response: Response,
    services: ServicesDep,
    owner: OwnerDep,
    app_path: str,
    request_id: str,
    logs: LogsFlag = None,
) -> QueueStatus:
    """The request's state; 202 while it waits or runs, 200 once COMPLETED."""
    job, position = queue_position(services, find_job(services, owner, app_path, request_id))
    status = status_of(
        job,
        queue_base(request, services),
        position=position,
        logs=services.store.logs(request_id) if wants_logs(logs) else None,
    )
    response.status_code = 200 if job.status is JobStatus.COMPLETED else 202
    response.headers.update(request_headers(request_id))
    return status


async def stream_status(
    request: Request, services: ServicesDep, owner: OwnerDep, app_path: str, request_id: str, logs: LogsFlag = None
) -> StreamingResponse:
    """Server-sent events, one per change, each carrying only logs new since the previous event."""
    with_logs = wants_logs(logs)
    base = queue_base(request, services)

    def snapshot(after_log: int, job: JobInfo | None = None) -> tuple[QueueStatus | None, int]:
        """The request's status (read again unless `job` is given) with the logs after `after_log`,
        and the last log's number."""
        job = job or services.store.info(request_id)
        if job is None:
            return None, after_log
        job, position = queue_position(services, job)
        new_logs = services.store.logs(request_id, after_seq=after_log) if with_logs else None
        return status_of(job, base, position=position, logs=new_logs), new_logs[-1].seq if new_logs else after_log

    # the first event comes from the read that finds the caller's request (404 otherwise): a request
    # already done is answered with that one read
    first, first_log = await run_in_threadpool(lambda: snapshot(0, find_job(services, owner, app_path, request_id)))

    def event(status: QueueStatus) -> str:
        return f"data: {status.model_dump_json(exclude_unset=True)}\n\n"

    async def events():
        yield event(first)
        if first.status == JobStatus.COMPLETED.value:
            return
        last_log, last_state = first_log, (first.status, first.queue_position)
        with services.store.changes.subscribe(request_id) as subscription:
            while True:
                # read once subscribed too: a change since the first read would not wake this loop
                status, newest_log = await run_in_threadpool(snapshot, last_log)
                if status is None:
                    return
                if (status.status, status.queue_position) != last_state or newest_log != last_log:
                    last_log, last_state = newest_log, (status.status, status.queue_position)
                    yield event(status)
                if status.status == JobStatus.COMPLETED.value:
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
    return result_response(finished(services, request_id))


def cancel_request(
    response: Response, services: ServicesDep, owner: OwnerDep, app_path: str, request_id: str
) -> CancelResponse:
    """Removes a queued request (200) or asks a running one to stop at its next step (202)."""
    outcome = cancel(services, owner, app_path, request_id)
    response.status_code = CANCEL_STATUS_CODES[outcome]
    response.headers.update(request_headers(request_id))
    return CancelResponse(status=outcome.value)


def cancel(services: Services, owner: str, app_path: str, request_id: str) -> CancelOutcome:
    try:
        find_job(services, owner, app_path, request_id)
    except NotFound:
        return CancelOutcome.NOT_FOUND
    outcome = services.store.cancel(request_id, JobResult.from_error(Cancelled()))
    if outcome is CancelOutcome.CANCELLATION_REQUESTED:
        services.pool.cancel(request_id)
    return outcome
