"""fal's sync API: `POST /run/{endpoint_id}` answers with the endpoint's output directly.

Kiln still runs the request through the queue, so it shares the GPU fairly with queued work; if the
caller disconnects first, the request is cancelled.
"""

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from pipelines.contract import Pipeline
from server.deps import OwnerDep, ServicesDep
from server.protocol import (
    QueueOptionsDep,
    accept,
    request_model,
    result_response,
    unknown_endpoint,
    wait_until_completed,
)
from server.registry import Registry
from server.schemas import ErrorBody, ValidationErrorBody


def build_router(registry: Registry) -> APIRouter:
    router = APIRouter(prefix="/run", tags=["run"], responses={401: {"model": ErrorBody}})
    for pipeline in registry:
        router.add_api_route(
            f"/{pipeline.endpoint_id}",
            run_route(pipeline),
            methods=["POST"],
            response_model=pipeline.Output,
            responses={
                422: {"model": ValidationErrorBody},
                413: {"model": ErrorBody},
                499: {"model": ErrorBody},
                500: {"model": ErrorBody},
                501: {"model": ErrorBody},
                504: {"model": ErrorBody},
            },
            summary=f"Run {pipeline.endpoint_id} and wait for the result",
            name=f"run:{pipeline.endpoint_id}",
        )
    router.add_api_route("/{endpoint_path:path}", unknown_endpoint, methods=["POST"], include_in_schema=False)
    return router


def run_route(pipeline: type[Pipeline]):
    Input = request_model(pipeline)

    async def run(
        request: Request, services: ServicesDep, owner: OwnerDep, inputs: Input, options: QueueOptionsDep
    ) -> Response:
        request_id, _ = await run_in_threadpool(accept, services, pipeline, inputs, owner=owner, options=options)
        job = await wait_until_completed(services, request, request_id)
        if job is None:
            return Response(status_code=499, headers={"x-fal-request-id": request_id})
        return result_response(job)

    return run
