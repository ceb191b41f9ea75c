"""The durable job queue behind fal's protocol, as an interface with an embedded SQLite backend.

States are fal's three: IN_QUEUE, IN_PROGRESS, COMPLETED (failed and cancelled requests are
COMPLETED with an error). Delivery is at least once: a job is leased to a worker, the lease is
renewed by a heartbeat while the worker lives, and an expired lease puts the job back in the queue
until it has been tried `max_attempts` times. Completion is idempotent: the first result wins and
only that completion schedules a webhook.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.errors import KilnError
from server.store.feed import ChangeFeed


class JobStatus(str, enum.Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(enum.IntEnum):
    """`X-Fal-Queue-Priority`; lower sorts first."""

    NORMAL = 0
    LOW = 1


class StoreClosed(RuntimeError):
    """The store was closed (the server is shutting down)."""


class CancelOutcome(str, enum.Enum):
    """The body of fal's cancel response; each maps to one HTTP status."""

    OK = "OK"
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True)
class JobResult:
    """What `GET …/requests/{id}` returns: the app's status code and body, plus status fields."""

    status_code: int
    body: Any
    error: str | None = None
    error_type: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @classmethod
    def from_error(cls, error: KilnError) -> JobResult:
        """The stored result of a request that failed with `error`."""
        return cls(
            status_code=error.status_code,
            body=error.body(),
            error=error.message,
            error_type=error.error_type,
            headers=error.headers(),
        )


@dataclass(frozen=True)
class NewJob:
    request_id: str
    endpoint: str
    owner: str
    payload: Mapping[str, Any]
    priority: Priority = Priority.NORMAL
    webhook_url: str | None = None
    start_deadline: float | None = None


@dataclass(frozen=True)
class Job:
    request_id: str
    endpoint: str
    owner: str
    payload: Mapping[str, Any]
    priority: Priority
    status: JobStatus
    created_at: float
    started_at: float | None
    completed_at: float | None
    attempts: int
    cancel_requested: bool
    webhook_url: str | None
    result: JobResult | None


@dataclass(frozen=True)
class LogEntry:
    seq: int
    timestamp: float
    level: str
    message: str


@dataclass(frozen=True)
class WebhookDelivery:
    request_id: str
    url: str
    attempts: int


class JobStore(abc.ABC):
    """The queue operations the protocol and the worker pool need; one backend per deployment."""

    changes: ChangeFeed

    @abc.abstractmethod
    def submit(self, job: NewJob, *, max_queue_length: int | None = None) -> int:
        """Enqueues a job and returns its queue position.

        Raises QueueFull when `max_queue_length` jobs of the same endpoint are already waiting.
        """

    @abc.abstractmethod
    def get(self, request_id: str) -> Job | None: ...

    @abc.abstractmethod
    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before this one (0 = next)."""

    @abc.abstractmethod
    def logs(self, request_id: str, *, after_seq: int = 0) -> list[LogEntry]: ...

    @abc.abstractmethod
    def append_logs(self, request_id: str, entries: Iterable[tuple[str, str]]) -> None:
        """Appends `(level, message)` log lines to a job."""

    @abc.abstractmethod
    def claim(self, worker_id: str, batch_limits: Mapping[str, int], *, default_batch: int = 1) -> list[Job]:
        """Leases the next job and up to `batch_limits[endpoint] - 1` queued jobs of its endpoint."""

    @abc.abstractmethod
    def renew(self, worker_id: str, request_ids: Sequence[str]) -> set[str]:
        """Extends the worker's leases; returns the ids among them whose cancellation was requested."""

    @abc.abstractmethod
    def release(self, request_ids: Sequence[str]) -> None:
        """Puts interrupted jobs back in the queue without counting the attempt (graceful shutdown)."""

    @abc.abstractmethod
    def complete(self, request_id: str, result: JobResult) -> bool:
        """Records the result unless the job is already COMPLETED; True if this call completed it."""

    @abc.abstractmethod
    def cancel(self, request_id: str, result: JobResult) -> CancelOutcome:
        """Completes a queued job with `result`, or flags a running one to stop at its next step."""

    @abc.abstractmethod
    def recover(self) -> list[str]:
        """Requeues jobs whose lease expired, fails those out of attempts and those whose start
        deadline passed in the queue; returns the ids it completed."""

    @abc.abstractmethod
    def next_start_deadline(self) -> float | None:
        """The earliest start deadline of a queued job, or None."""

    @abc.abstractmethod
    def webhooks_due(self, limit: int) -> list[WebhookDelivery]: ...

    @abc.abstractmethod
    def webhook_attempted(self, request_id: str, *, delivered: bool, retry_in: float | None, error: str | None) -> None:
        """Records a delivery attempt; `retry_in=None` with `delivered=False` gives up."""

    @abc.abstractmethod
    def purge(self, older_than: float) -> int:
        """Deletes jobs completed before the timestamp; returns how many."""

    @abc.abstractmethod
    def wait_for_work(self, timeout: float) -> None:
        """Blocks a worker thread until a job may be claimable or the timeout passes."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the store; later calls raise StoreClosed instead of touching freed resources."""
