"""Pydantic models of fal's protocol bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class LogLine(BaseModel):
    message: str
    level: Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]
    source: Literal["USER"] = "USER"
    timestamp: str


class QueueStatus(BaseModel):
    """The body of submit, status and each status-stream event."""

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    gateway_request_id: str | None = None
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = Field(default=None, description="Requests ahead of this one; only while IN_QUEUE")
    logs: list[LogLine] | None = Field(description="null unless asked for with `logs=1`")
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None


class CancelResponse(BaseModel):
    status: Literal["OK", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


class ErrorBody(BaseModel):
    detail: str
    error_type: str | None = None


def error_responses(*status_codes: int) -> dict[int, dict]:
    """A route's `responses=` for status codes whose body is an ErrorBody."""
    return {code: {"model": ErrorBody} for code in status_codes}


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """FastAPI's 422 body, which Kiln also uses for inputs a pipeline rejects."""

    detail: list[ValidationErrorItem]


class CdnToken(BaseModel):
    token: str
    token_type: str
    base_url: str
    expires_at: str


class UploadInitiate(BaseModel):
    file_name: str | None = None
    content_type: str = "application/octet-stream"


class UploadTarget(BaseModel):
    upload_url: str
    file_url: str


class UploadedFile(BaseModel):
    access_url: str


class MultipartCreated(BaseModel):
    """The Python client's multipart upload: PUT parts to `{access_url}/multipart/{uploadId}/{n}`."""

    access_url: str
    uploadId: str


class UploadedPart(BaseModel):
    """One stored part; the etag is also the response's `ETag` header."""

    partNumber: int
    etag: str


class CompletedPart(BaseModel):
    partNumber: int = Field(ge=1)
    etag: str


class MultipartComplete(BaseModel):
    parts: list[CompletedPart] = Field(min_length=1)


class Jwk(BaseModel):
    kty: str
    crv: str
    x: str
    kid: str
    use: str
    alg: str


class Jwks(BaseModel):
    keys: list[Jwk]


class NodeState(BaseModel):
    """One Kiln process of the deployment, as its latest heartbeat in the queue describes it."""

    role: Literal["serve", "api", "worker"] = Field(
        description="`serve` (API and workers), `api` (`serve --no-workers`) or `worker` (`kiln worker`, no HTTP)"
    )
    url: str | None = Field(None, description="The base URL of its API; none for a worker")
    hostname: str
    version: str
    workers: dict[str, str] = Field(description="Device -> `starting`, `ready`, `busy`, `failed: …` or `stopped`")
    pipelines: dict[str, dict[str, str]] = Field(
        description="Device -> endpoint id -> `loading`, `ready` or `error: …`: the endpoints it has warm"
    )
    last_seen_seconds: float = Field(description="Seconds since its last heartbeat")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    devices: list[str]
    workers: dict[str, str] = Field(description="Device -> `starting`, `ready`, `busy` or `stopped`")
    endpoints: dict[str, str] = Field(description="Endpoint id -> `available`, or why it cannot run here")
    pipelines: dict[str, dict[str, str]] = Field(
        description="Device -> endpoint id -> `loading`, `ready` or `error: …` (cold endpoints are absent)"
    )
    broken_modules: dict[str, str] = Field(
        default_factory=dict, description="Pipeline modules that could not be imported, and why"
    )
    memory: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Endpoint id -> its planned device memory in GiB (the model it shares with other endpoints, "
        "weights, safety checker, extra copies it loads on demand, activations of its largest request, total), "
        "from the installed weights; absent for endpoints without weights or not installed",
    )
    device_memory: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="CUDA device -> `total_gib` and `free_gib` now"
    )
    node: str = Field("", description="This process's id in the pool of `nodes`")
    nodes: dict[str, NodeState] = Field(
        default_factory=dict,
        description="Every live Kiln process sharing this queue (this one included), by node id",
    )
    queue: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Endpoint id -> `IN_QUEUE` and `IN_PROGRESS` counts across the whole pool (absent when 0)",
    )
    queue_error: str | None = Field(None, description="Why the queue could not be read, when it could not")
