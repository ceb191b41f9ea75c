"""Pydantic models of fal's protocol bodies and of the file types its endpoints share."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Image(BaseModel):
    """fal's `Image` output type."""

    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(default=None, description="The mime type of the file.")
    file_name: str | None = Field(default=None, description="The name of the file.")
    file_size: int | None = Field(default=None, description="The size of the file in bytes.")
    width: int | None = Field(default=None, description="The width of the image in pixels.")
    height: int | None = Field(default=None, description="The height of the image in pixels.")


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


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    devices: list[str]
    workers: dict[str, str]
    endpoints: dict[str, str]
