"""fal endpoint ids: `owner/alias[/path]`, with an optional `workflows/` or `comfy/` namespace.

Submit and run URLs carry the full id; status, result and cancel URLs carry only the app part
(`[namespace/]owner/alias`), which is how both official clients build them.
"""

from __future__ import annotations

NAMESPACES = ("workflows", "comfy")


def app_prefix(endpoint_id: str) -> str:
    """`fal-ai/flux/dev/image-to-image` -> `fal-ai/flux`."""
    parts = endpoint_id.strip("/").split("/")
    width = 3 if parts[0] in NAMESPACES else 2
    return "/".join(parts[:width])


def owner_segment(endpoint_id: str) -> str:
    """The first path segment under which the endpoint is served (its owner or namespace)."""
    return endpoint_id.strip("/").split("/", 1)[0]


def matches_app(endpoint_id: str, app_path: str) -> bool:
    """Whether a status/result/cancel URL's app part names this endpoint.

    Accepts the app prefix the clients send and, as many scripts do, the full endpoint id.
    """
    app_path = app_path.strip("/")
    return app_path in (app_prefix(endpoint_id), endpoint_id.strip("/"))
