"""Health, the webhook public key, and one OpenAPI document per endpoint (as fal publishes)."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

import server
from server.deps import ServicesDep
from server.errors import NotFound
from server.schemas import ErrorBody, Health, Jwks

router = APIRouter(tags=["meta"])

# the protocol routes every endpoint document includes beside the endpoint's own submit and run
SHARED_QUEUE_PATHS = "/queue/{app_path}/requests/"
SCHEMA_REF = "#/components/schemas/"


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(response: Response, services: ServicesDep) -> Health:
    """200 once every worker is up; 503 while none is, or one has stopped or failed."""
    workers = services.pool.states()
    endpoints = {
        pipeline.endpoint_id: pipeline.unavailable_reason(services.weights) or "available"
        for pipeline in services.registry
    }
    healthy = bool(workers) and all(state in ("ready", "busy") for state in workers.values())
    body = Health(
        status="ok" if healthy else "degraded",
        version=server.__version__,
        devices=list(workers),
        workers=workers,
        endpoints=endpoints,
        pipelines=services.pool.pipeline_states(),
        broken_modules={broken.module: broken.error for broken in services.registry.broken},
    )
    response.status_code = 200 if healthy else 503
    return body


@router.get("/.well-known/jwks.json", response_model=Jwks)
def jwks(services: ServicesDep) -> Jwks:
    """The Ed25519 public key that verifies Kiln's `X-Fal-Webhook-Signature`."""
    return Jwks.model_validate(services.webhook_signer.jwks())


@router.get("/api/openapi/queue/openapi.json", responses={404: {"model": ErrorBody}})
def endpoint_openapi(request: Request, endpoint_id: Annotated[str, Query()]) -> dict:
    """The OpenAPI document of one endpoint: its submit and run routes and the queue routes."""
    whole = request.app.openapi()
    own = (f"/queue/{endpoint_id}", f"/run/{endpoint_id}")
    if own[0] not in whole["paths"]:
        raise NotFound(f"Endpoint {endpoint_id} is not served here")
    paths = {path: item for path, item in whole["paths"].items() if path in own or path.startswith(SHARED_QUEUE_PATHS)}
    schemas = whole.get("components", {}).get("schemas", {})
    components = {**whole.get("components", {}), "schemas": {name: schemas[name] for name in referenced(paths, schemas)}}
    return {**whole, "info": {**whole["info"], "title": endpoint_id}, "paths": paths, "components": components}


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
