"""fal's sync API: `POST /run/{endpoint_id}` answers with the endpoint's output directly.

Kiln still runs the request through the queue, so it shares the GPU fairly with queued work; if the
caller disconnects first, the request is cancelled.
"""


from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from server.deps import OwnerDep, ServicesDep
from server.registry import Endpoint, Registry
from server.routes.queue import (
    PriorityHeader,
    StartTimeoutHeader,
    StartTimeoutHeaderNew,
    accept,
    result_response,
    unknown_endpoint,
    wait_until_completed,
)
from server.schemas import ErrorBody


def build_router(registry: Registry) -> APIRouter:
    router = APIRouter(prefix="/run", tags=["run"])
    for endpoint in registry:
        if endpoint.pipeline is not None:
            router.add_api_route(
                f"/{endpoint.endpoint_id}",
                run_route(endpoint),
                methods=["POST"],
                responses={
                    200: {"model": endpoint.pipeline.Output},
                    422: {},
                    499: {"model": ErrorBody},
                    503: {"model": ErrorBody},
                    504: {"model": ErrorBody},
                },
                summary=f"Run {endpoint.endpoint_id} and wait for the result",
                name=f"run:{endpoint.endpoint_id}",
            )
    router.add_api_route("/{endpoint_path:path}", unknown_endpoint, methods=["POST"], include_in_schema=False)
    return router


def run_route(endpoint: Endpoint):
    Input = endpoint.pipeline.Input

    async def run(
        request: Request,
        services: ServicesDep,
        owner: OwnerDep,
        inputs: Input,
        priority: PriorityHeader = None,
        start_timeout: StartTimeoutHeader = None,
        start_timeout_new: StartTimeoutHeaderNew = None,
    ) -> Response:
        request_id, _ = await run_in_threadpool(
            accept,
            services,
            endpoint,
            inputs,
            owner=owner,
            priority=priority,
            start_timeout=start_timeout_new or start_timeout,
        )
        job = await wait_until_completed(services, request, request_id)
        if job is None:
            return Response(status_code=499, headers={"x-fal-request-id": request_id})
        return result_response(job)

    return run
