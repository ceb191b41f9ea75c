"""`GET /metrics`: Prometheus's text format, on every node (server/metrics.py says what is in it).

Not in the OpenAPI schema: it is for Prometheus, not for fal's clients. It needs no key, like
`/health`; it names endpoints and counts requests, never a request's content or owner.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from server.metrics import registry_for

router = APIRouter(tags=["meta"])
_registries_lock = threading.Lock()


def server_registry(request: Request) -> CollectorRegistry:
    """What this app's `/metrics` shows (server.metrics.registry_for), made on the first scrape."""
    app = request.app
    with _registries_lock:
        registry = getattr(app.state, "metrics_registry", None)
        if registry is None:
            registry = app.state.metrics_registry = registry_for(lambda: app.state.services)
        return registry


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    # the classic text format: every Prometheus (2.x and 3.x) and agent reads it
    return Response(generate_latest(server_registry(request)), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
