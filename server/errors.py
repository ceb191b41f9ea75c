"""Errors in the shapes fal's clients parse.

Validation errors use FastAPI's own body, `{"detail": [{"loc", "msg", "type"}]}`, so clients see one
format whether pydantic or a pipeline rejected the input. Other errors are a flat
`{"detail": str, "error_type": str}` plus the `X-Fal-Error-Type` header.
"""

from __future__ import annotations

from pipelines.contract import Cancelled, FieldError, KilnError

__all__ = [
    "BadRequest",
    "Cancelled",
    "ClientDisconnected",
    "EndpointUnavailable",
    "FieldError",
    "KilnError",
    "NotFound",
    "PayloadTooLarge",
    "QueueFull",
    "StartTimeout",
    "Unauthorized",
]


class NotFound(KilnError):
    status_code = 404
    error_type = "not_found"


class BadRequest(KilnError):
    status_code = 400
    error_type = "bad_request"


class Unauthorized(KilnError):
    status_code = 401
    error_type = "unauthorized"


class QueueFull(KilnError):
    status_code = 429
    error_type = "queue_full"


class PayloadTooLarge(KilnError):
    status_code = 413
    error_type = "payload_too_large"


class EndpointUnavailable(KilnError):
    """The endpoint is registered but cannot run here, e.g. its weights are not installed.

    501, not 503: both official clients retry 503 (the JS client three times, `fal.run` included),
    and no retry can install weights; the operator's `kiln weights` command can.
    """

    status_code = 501
    error_type = "endpoint_unavailable"


class ClientDisconnected(Cancelled):
    """The caller of a sync run went away; the request is cancelled with fal's type for that."""

    error_type = "client_disconnected"

    def __init__(self) -> None:
        super().__init__("The client disconnected")


class StartTimeout(KilnError):
    status_code = 504
    error_type = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "X-Fal-Request-Timeout-Type": "user"}
