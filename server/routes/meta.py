"""Health, the webhook public key, and one OpenAPI document per endpoint (as fal publishes)."""

import logging
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request, Response

import server
from server.deps import ServicesDep
from server.errors import NotFound
from server.nodes import READY_STATES, has_ready_worker
from server.protocol import queue_base
from server.schemas import ErrorBody, Health, Jwks, NodeState
from server.store import QueueUnavailable
from server.services import Services

logger = logging.getLogger(__name__)
router = APIRouter(tags=["meta"])

# the request routes every endpoint shares, by the app part of its id
SHARED_REQUEST_PATH = "/queue/{app_path}/requests/{request_id}"
SCHEMA_REF = "#/components/schemas/"


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(response: Response, services: ServicesDep) -> Health:
    """200 once every worker of this process is up and the pool can run requests; 503 while no
    worker is up, one of this process's has stopped or failed, or the queue cannot be reached.

    A node without workers (`kiln serve --no-workers`) is healthy while any node of the pool has a
    worker up. `nodes` and `queue` show the whole pool, whichever node answers.
    """
    workers = services.pool.states()
    endpoints = {
        pipeline.endpoint_id: pipeline.unavailable_reason(services.weights) or "available"
        for pipeline in services.registry
    }
    nodes, queue, queue_error = {}, {}, None
    try:
        nodes = services.node.pool()
        queue = services.store.queue_depths()
    except QueueUnavailable as error:
        queue_error = error.message
    now = time.time()
    if services.settings.run_workers:
        healthy = bool(workers) and all(state in READY_STATES for state in workers.values())
    else:
        healthy = has_ready_worker(nodes)
    healthy = healthy and queue_error is None
    body = Health(
        status="ok" if healthy else "degraded",
        version=server.__version__,
        devices=list(workers),
        workers=workers,
        endpoints=endpoints,
        pipelines=services.pool.pipeline_states(),
        broken_modules={broken.module: broken.error for broken in services.registry.broken},
        memory=memory_plans(services, workers),
        device_memory=device_memory(workers),
        node=services.node.node_id,
        nodes={
            node: NodeState(**{**record, "last_seen_seconds": round(max(0.0, now - record["last_seen"]), 3)})
            for node, record in nodes.items()
        },
        queue=queue,
        queue_error=queue_error,
    )
    response.status_code = 200 if healthy else 503
    return body


@router.head("/health", include_in_schema=False)
def health_head(response: Response, services: ServicesDep) -> Response:
    """`GET /health`'s status code without its body, for probes and load balancers that use HEAD."""
    health(response, services)
    return Response(status_code=response.status_code)


def memory_plans(services: Services, workers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each endpoint's memory plan (those that have one, with their weights installed) for the kind
    of device this server runs on."""
    kind = "cuda" if any(device.startswith("cuda") for device in workers) else "cpu"
    plans = {}
    for pipeline in services.registry:
        try:
            plan = pipeline.memory_plan(services.weights, kind)
        except Exception:  # a plan is advice: a folder being written must not break /health
            logger.debug("no memory plan for %s", pipeline.endpoint_id, exc_info=True)
            continue
        if plan is not None:
            plans[pipeline.endpoint_id] = plan.as_json()
    return plans


def device_memory(workers: dict[str, str]) -> dict[str, dict[str, float]]:
    found = {}
    for name in workers:
        if name.startswith("cuda"):
            try:
                free, total = torch.cuda.mem_get_info(torch.device(name))
            except Exception:
                continue
            found[name] = {"total_gib": round(total / 1024**3, 2), "free_gib": round(free / 1024**3, 2)}
    return found


@router.get("/.well-known/jwks.json", response_model=Jwks)
def jwks(services: ServicesDep) -> Jwks:
    """The Ed25519 public key that verifies Kiln's `X-Fal-Webhook-Signature`."""
    return Jwks.model_validate(services.webhook_signer.jwks())


@router.get("/api/openapi/queue/openapi.json", responses={404: {"model": ErrorBody}})
def endpoint_openapi(request: Request, services: ServicesDep, endpoint_id: Annotated[str, Query()]) -> dict:
    """One endpoint's queue API in the shape fal publishes for it: the server is the queue base, the
    paths are the full endpoint id (submit, `requests/{request_id}` for the result, and its `status`,
    `status/stream` and `cancel`), submit answers `QueueStatus` and the result the endpoint's output."""
    whole = request.app.openapi()
    paths = whole["paths"]
    if f"/queue/{endpoint_id}" not in paths:
        raise NotFound(f"Endpoint {endpoint_id} is not served here")
    own = f"/{endpoint_id}/requests/{{request_id}}"
    result = paths[SHARED_REQUEST_PATH]["get"]
    output = paths[f"/run/{endpoint_id}"]["post"]["responses"]["200"]
    endpoint_paths = {
        f"/{endpoint_id}": {"post": paths[f"/queue/{endpoint_id}"]["post"]},
        own: {"get": for_endpoint({**result, "responses": {**result["responses"], "200": output}})},
        **{
            own + suffix: {method: for_endpoint(paths[SHARED_REQUEST_PATH + suffix][method])}
            for suffix, method in (("/status", "get"), ("/status/stream", "get"), ("/cancel", "put"))
        },
    }
    schemas = whole["components"]["schemas"]
    return {
        "openapi": whole["openapi"],
        "info": {
            "title": f"Queue OpenAPI for {endpoint_id}",
            "version": whole["info"]["version"],
            "x-fal-metadata": {"endpointId": endpoint_id},
        },
        "servers": [{"url": queue_base(request, services)}],
        "paths": endpoint_paths,
        "components": {
            **whole["components"],
            "schemas": {name: schemas[name] for name in sorted(referenced(endpoint_paths, schemas))},
        },
    }


def for_endpoint(operation: dict) -> dict:
    """A shared request operation without its `app_path` parameter, which the endpoint's own path fixes."""
    parameters = [parameter for parameter in operation.get("parameters", []) if parameter["name"] != "app_path"]
    return {**operation, "parameters": parameters}


def referenced(document: Any, schemas: dict[str, Any]) -> set[str]:
    """Names of the component schemas `document` refers to, directly or through other schemas."""
    found: set[str] = set()
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(SCHEMA_REF):
                name = ref[len(SCHEMA_REF):]
                if name not in found and name in schemas:
                    found.add(name)
                    pending.append(schemas[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found
