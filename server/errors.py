"""Errors in the shapes fal's clients parse.

Validation errors use FastAPI's own body, `{"detail": [{"loc", "msg", "type"}]}`, so clients see one
format whether pydantic or a pipeline rejected the input. Other errors are a flat
`{"detail": str, "error_type": str}` plus the `X-Fal-Error-Type` header.
"""

from __future__ import annotations

from typing import Any


class KilnError(Exception):
    """An error with an HTTP status and a fal `error_type`, safe to show to the caller."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, detail: str, *, status_code: int | None = None, error_type: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type

    @property
    def message(self) -> str:
        return self.detail

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "error_type": self.error_type}

    def headers(self) -> dict[str, str]:
        return {"X-Fal-Error-Type": self.error_type}


class FieldError(KilnError):
    """Input that passed the schema but cannot be used, e.g. an `image_url` that does not decode."""

    status_code = 422

    def __init__(
        self,
        field: str | tuple[str | int, ...],
        message: str,
        *,
        type: str = "value_error",
        location: str = "body",
    ) -> None:
        super().__init__(message, error_type=type)
        self.loc: tuple[str | int, ...] = (location, *((field,) if isinstance(field, str) else field))

    @property
    def message(self) -> str:
        return f"{'.'.join(str(p) for p in self.loc[1:])}: {self.detail}"

    def body(self) -> dict[str, Any]:
        return {"detail": [{"loc": list(self.loc), "msg": self.detail, "type": self.error_type}]}


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
    """The endpoint is registered but cannot run here, e.g. its weights are not installed."""

    status_code = 503
    error_type = "endpoint_unavailable"


class Cancelled(KilnError):
    status_code = 499
    error_type = "client_cancelled"

    def __init__(self, detail: str = "The request was cancelled") -> None:
        super().__init__(detail)


class StartTimeout(KilnError):
    status_code = 504
    error_type = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "X-Fal-Request-Timeout-Type": "user"}
