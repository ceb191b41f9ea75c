"""The durable job queue behind fal's protocol, as an interface with an embedded SQLite backend.

States are fal's three: IN_QUEUE, IN_PROGRESS, COMPLETED (failed and cancelled requests are
COMPLETED with an error). Every backend keeps the rules below; the tests in tests/server/ hold
each of them.

Order (fairness). Priorities are strict: no LOW job starts while a NORMAL one waits. Within a
priority, owners (API keys) take turns: each queued job has a round, one more than the latest round
its owner has waiting at that priority, and never earlier than the round now being served; jobs are
served by round, then by arrival. So a key that queues 8000 jobs delays another key's next job by at
most one job per key waiting, not by 8000. `queue_position` counts the queued jobs ahead in exactly
this order, and it and `submit` cost O(log n) in the queue length, whatever one key has queued.

Reads. `info` is a job's state without its payload or result body, which may be tens of megabytes:
status polls, status streams and waits read only that. `result` reads the body for the result route
and webhooks; `get` (everything) is for the worker, which needs the payload, and for tests.

Execution is at least once. A job is leased to a worker, the lease is renewed by a heartbeat while
the worker lives, and an expired lease (or a restart) puts the job back in the queue. A worker marks
the jobs it is actually working on (`mark_running`); only those are charged when it dies: jobs it
had merely claimed, or decoded and left waiting for the device, go back uncharged. A job whose
worker died while running it is a suspect: it is next leased alone, only once nothing else runs,
and nothing else is leased while it runs, so a second death is certainly its own. A job is failed
(`runner_server_error`) once its worker has died `max_attempts` times while running it: with the
suspect rule, all but the first of those times it ran alone, so it is the likely cause.
Completion is idempotent: the first result wins and only that completion schedules a webhook.

Affinity. A worker passes the endpoints it has set up (`claim(warm=...)`). When the head of the queue
is of a cold endpoint and has waited less than `affinity_seconds`, the worker takes instead the first
request of its warm endpoints at the head's priority, so a GPU keeps serving the model it holds
instead of loading another one. Priorities stay strict, and no request is passed over once it has
waited `affinity_seconds`, so affinity delays a request by at most that long; without `warm` (one
worker, or a worker with nothing set up) the order above is exact.

Nodes. Several Kiln processes may share one store (a network backend): each registers itself with a
heartbeat (`heartbeat_node`) and `nodes` lists those alive, for `/health` on any of them. Secrets
every node must agree on (the webhook signing key, the upload-token key) come from the store
(`shared_secret`).

Webhooks are delivered at least once. Each attempt is recorded (`webhook_sending`) before it is
sent, with the time of the next try, so a delivery interrupted by a crash is retried, never lost;
a crash after the receiver got it and before `webhook_attempted` recorded that means a second
delivery, which the receiver de-duplicates on the request id it carries.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import json
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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


class QueueUnavailable(KilnError):
    """The queue's server cannot be reached (a network backend restarting); retrying helps.

    503, which both official clients retry, unlike the codes of failures no retry can fix.
    """

    status_code = 503
    error_type = "queue_unavailable"


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
class JobInfo:
    """A job's state without its payload or result body: what status reads need, cheap to read
    however large the request or its result is."""

    request_id: str
    endpoint: str
    owner: str
    priority: Priority
    status: JobStatus
    created_at: float
    started_at: float | None
    completed_at: float | None
    # how many times a worker has claimed it (the attempt a run reports); deaths are counted apart
    attempts: int
    cancel_requested: bool
    # once COMPLETED: the result's HTTP status, error and metrics (`JobStore.result` has the body)
    status_code: int | None = None
    error: str | None = None
    error_type: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """Everything about a job, payload and result included."""

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

    @classmethod
    def stored(
        cls, info: JobInfo, *, payload: str | bytes | None, webhook_url: str | None, body: str | bytes | None, headers: str | bytes | None
    ) -> Job:
        """The job as a backend stores it: its state, and its payload, result body and headers as JSON."""
        state = {name: getattr(info, name) for name in _field_names(cls) & _field_names(JobInfo)}
        return cls(
            **state,
            payload=json.loads(payload) if payload is not None else {},
            webhook_url=webhook_url,
            result=stored_result(info, body, headers),
        )


def _field_names(dataclass_type: type) -> set[str]:
    return {field.name for field in dataclasses.fields(dataclass_type)}


def stored_result(info: JobInfo, body: str | bytes | None, headers: str | bytes | None) -> JobResult | None:
    """A completed job's result from its state and its stored body and headers (JSON); None before."""
    if info.status_code is None or body is None:
        return None
    return JobResult(
        status_code=info.status_code,
        body=json.loads(body),
        error=info.error,
        error_type=info.error_type,
        metrics=info.metrics,
        headers=json.loads(headers) if headers else {},
    )


@dataclass(frozen=True)
class LogEntry:
    seq: int
    timestamp: float
    level: str
    message: str


@dataclass(frozen=True)
class WebhookDelivery:
    """A webhook to deliver. `attempts` counts the tries recorded so far; `owner` and `destination`
    (see `webhook_destination`) are what concurrent deliveries are bounded by."""

    request_id: str
    url: str
    attempts: int
    owner: str = ""
    destination: str = ""


def webhook_destination(url: str) -> str:
    """The receiver a webhook URL names, as `host:port` in lower case: deliveries to one destination
    share a bound, so a receiver that hangs delays only its own webhooks."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or {"http": 80, "https": 443}.get(parts.scheme.lower(), 0)
    return f"{(parts.hostname or '').lower()}:{port}"


class JobStore(abc.ABC):
    """The queue operations the protocol and the worker pool need; one backend per deployment."""

    changes: ChangeFeed

    # -- accepting and reading ---------------------------------------------------------------

    @abc.abstractmethod
    def submit(self, job: NewJob, *, max_queue_length: int | None = None) -> int:
        """Enqueues a job and returns its queue position (as `queue_position`).

        Raises QueueFull when `max_queue_length` jobs of the same endpoint are already waiting.
        """

    @abc.abstractmethod
    def get(self, request_id: str) -> Job | None:
        """The whole job, payload and result body included: for the worker and for tests. Status
        reads use `info`, and the result route `result`, which never load the payload."""

    @abc.abstractmethod
    def info(self, request_id: str) -> JobInfo | None:
        """The job's state without its payload or result body."""

    @abc.abstractmethod
    def result(self, request_id: str) -> JobResult | None:
        """The stored result of a COMPLETED job (None while it is not completed, or when unknown)."""

    @abc.abstractmethod
    def queue_position(self, request_id: str) -> int | None:
        """How many queued jobs are served before this one (0 = next), in the order the module
        docstring gives; None when the job is not queued (any more)."""

    @abc.abstractmethod
    def logs(self, request_id: str, *, after_seq: int = 0) -> list[LogEntry]: ...

    @abc.abstractmethod
    def append_logs(self, request_id: str, entries: Iterable[tuple[str, str]]) -> None:
        """Appends `(level, message)` log lines to a job."""

    # -- workers -------------------------------------------------------------------------------

    @abc.abstractmethod
    def claim(
        self,
        worker_id: str,
        batch_limits: Mapping[str, int],
        *,
        default_batch: int = 1,
        warm: Collection[str] = (),
    ) -> list[Job]:
        """Leases the next job and up to `batch_limits[endpoint] - 1` queued jobs of its endpoint,
        marked running (`mark_running`): the worker starts on them at once.

        A suspect (a job whose worker died while running it) is leased alone, and only once no
        other job is running; while it runs nothing else is leased (empty list). `warm` names the
        endpoints the worker has set up: see Affinity in the module docstring.
        """

    @abc.abstractmethod
    def mark_running(self, worker_id: str, request_ids: Sequence[str], *, running: bool = True) -> None:
        """Records which of its leased jobs the worker is working on (set up, decode, predict,
        encode: `running=True`) and which wait (`running=False`, e.g. decoded jobs waiting for
        the device). A worker's death is charged only to the jobs marked running at the time."""

    @abc.abstractmethod
    def renew(self, worker_id: str, request_ids: Sequence[str]) -> set[str]:
        """Extends the worker's leases; returns the ids among them whose cancellation was requested."""

    @abc.abstractmethod
    def release(self, request_ids: Sequence[str], *, worker_id: str | None = None) -> None:
        """Puts interrupted jobs back in the queue uncharged, their claim not counted (graceful
        shutdown); with `worker_id`, only those that worker still holds."""

    @abc.abstractmethod
    def complete(self, request_id: str, result: JobResult) -> bool:
        """Records the result unless the job is already COMPLETED; True if this call completed it."""

    @abc.abstractmethod
    def cancel(self, request_id: str, result: JobResult) -> CancelOutcome:
        """Completes a queued job with `result`, or flags a running one to stop at its next step."""

    @abc.abstractmethod
    def recover(self) -> list[str]:
        """Requeues jobs whose lease expired (charging those marked running, failing those charged
        `max_attempts` times) and fails those whose start deadline passed in the queue; returns the
        ids it completed."""

    @abc.abstractmethod
    def next_start_deadline(self) -> float | None:
        """The earliest start deadline of a queued job, or None."""

    # -- webhooks and retention -------------------------------------------------------------

    @abc.abstractmethod
    def webhooks_due(
        self, limit: int, *, skip_destinations: Collection[str] = (), skip_owners: Collection[str] = ()
    ) -> list[WebhookDelivery]:
        """Up to `limit` deliveries whose next try is due, oldest first, leaving out those to the
        given destinations and of the given owners (the dispatcher's busy ones)."""

    @abc.abstractmethod
    def webhook_sending(self, request_id: str, *, retry_in: float) -> bool:
        """Records an attempt before it is sent: counts it and sets the next try `retry_in` seconds
        ahead, which is when it is retried if the outcome is never recorded (the process died).
        False when the delivery is no longer due (delivered, given up, purged, or taken already)."""

    @abc.abstractmethod
    def webhook_attempted(self, request_id: str, *, delivered: bool, retry_in: float | None, error: str | None) -> None:
        """Records the outcome of the attempt `webhook_sending` counted: delivered, retry in
        `retry_in` seconds, or (`retry_in=None`, not delivered) give up."""

    @abc.abstractmethod
    def purge(self, older_than: float) -> int:
        """Deletes jobs completed before the timestamp; returns how many."""

    @abc.abstractmethod
    def next_jobs(
        self,
        worker_id: str,
        batch_limits: Mapping[str, int],
        *,
        default_batch: int = 1,
        warm: Collection[str] = (),
        timeout: float,
    ) -> list[Job]:
        """What a worker runs next: a `claim`, waiting up to `timeout` seconds for work if there is
        none (an empty list then). A worker calls it in a loop, each time once it has finished
        what the last call gave it, so it must not cost a round trip to the store per request to
        find the queue empty."""

    def stop_waiting(self, worker_id: str) -> None:
        """Called once a worker stops calling `next_jobs`: a store that leases work to waiting
        workers requeues what it leased to this one and it never took."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the store; later calls raise StoreClosed instead of touching freed resources."""

    # -- the nodes sharing this store, and what they must agree on ---------------------------

    @abc.abstractmethod
    def heartbeat_node(self, node_id: str, record: Mapping[str, Any]) -> None:
        """Records that the node is alive, with what `/health` shows of it (role, workers, warm
        endpoints); a node not heard of for `NODE_TIMEOUT_SECONDS` is gone."""

    @abc.abstractmethod
    def forget_node(self, node_id: str) -> None:
        """Removes a node that is stopping."""

    @abc.abstractmethod
    def nodes(self) -> dict[str, dict[str, Any]]:
        """Node id -> its latest record plus `last_seen` (a timestamp), for the nodes alive."""

    @abc.abstractmethod
    def shared_secret(self, name: str, create: Callable[[], bytes]) -> bytes:
        """The secret `name` every node of the deployment uses, made with `create` by whichever
        node asks first."""

    # -- the web pages: a key's history and the home page's queue depths (server/routes/ui.py) --

    @abc.abstractmethod
    def owner_history(
        self,
        owner: str,
        *,
        endpoint: str | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[JobInfo]:
        """The owner's jobs, newest first: at most `limit` of them, created before `before` when
        given, of one endpoint and in one state when given. Never reads payloads or result bodies."""

    @abc.abstractmethod
    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Endpoint -> `{"IN_QUEUE": n, "IN_PROGRESS": m}` for every endpoint with jobs waiting or running."""


# a node whose heartbeat is older than this is gone from `nodes()`
NODE_TIMEOUT_SECONDS = 15.0


def open_store(
    queue: str,
    *,
    data_dir: Path,
    lease_seconds: float,
    max_attempts: int,
    affinity_seconds: float = 10.0,
) -> JobStore:
    """The store `--queue` names: `sqlite` (the embedded default, in the data dir) or
    `redis://HOST:PORT/DB` (also `rediss://` for TLS, `redis+sentinel://HOST:PORT,.../SERVICE/DB`
    for the primary that Redis Sentinel names; `?prefix=NAME` keeps several deployments
    apart on one Redis)."""
    if queue in ("", "sqlite"):
        from server.store.sqlite import SqliteJobStore

        return SqliteJobStore(
            data_dir / "queue.sqlite3",
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            affinity_seconds=affinity_seconds,
            secrets_dir=data_dir / "keys",
        )
    if queue.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        from server.store.redis import RedisJobStore

        return RedisJobStore.from_url(
            queue, lease_seconds=lease_seconds, max_attempts=max_attempts, affinity_seconds=affinity_seconds
        )
    raise ValueError(f"--queue {queue!r}: use `sqlite` or a URL like redis://HOST:6379/0")
