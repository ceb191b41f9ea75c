"""The embedded queue: one SQLite database in WAL mode in the data dir.

Accepting, completing and cancelling a request are fsynced before they are answered, so they
survive a kill -9 or a power cut. Logs, claims and lease renewals are committed without an fsync:
a process crash cannot lose them (they are in the WAL), a power cut loses at most the latest ones
(a lost claim only means the job runs again), and the next fsynced commit makes them durable too.
One process owns a data dir (an exclusive lock file enforces it), which is what lets `open` requeue
every job left IN_PROGRESS at once: its worker is certainly gone. Writes are serialised under one
lock; reads use a connection per thread so status polling never waits on an fsync.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from server.errors import Cancelled, KilnError, QueueFull, StartTimeout
from server.store import (
    CancelOutcome,
    StoreClosed,
    Job,
    JobResult,
    JobStatus,
    JobStore,
    LogEntry,
    NewJob,
    Priority,
    WebhookDelivery,
)
from server.store.feed import ChangeFeed

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    owner TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    start_deadline REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    webhook_url TEXT,
    result_status INTEGER,
    result_body TEXT,
    error TEXT,
    error_type TEXT,
    metrics TEXT,
    result_headers TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs(priority, seq) WHERE status = 'IN_QUEUE';
CREATE INDEX IF NOT EXISTS jobs_queued_endpoint ON jobs(endpoint) WHERE status = 'IN_QUEUE';
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs(lease_expires) WHERE status = 'IN_PROGRESS';
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs(completed_at) WHERE status = 'COMPLETED';
CREATE INDEX IF NOT EXISTS jobs_start_deadline ON jobs(start_deadline) WHERE status = 'IN_QUEUE';
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_request ON logs(request_id, seq);
CREATE TABLE IF NOT EXISTS webhooks (
    request_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    delivered_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks(next_attempt_at) WHERE delivered_at IS NULL;
"""

JOB_COLUMNS = (
    "request_id, endpoint, owner, payload, priority, status, created_at, started_at, completed_at, "
    "attempts, cancel_requested, webhook_url, result_status, result_body, error, error_type, metrics, "
    "result_headers"
)


class DataDirLocked(RuntimeError):
    pass


class SqliteJobStore(JobStore):
    def __init__(
        self,
        path: Path,
        *,
        lease_seconds: float,
        max_attempts: int,
        clock=time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._clock = clock
        self._lock_file = _lock_exclusively(path.with_suffix(".lock"))
        self._write_lock = threading.Lock()
        self._closed = False
        self._durable_writer = self._connect(synchronous="FULL")
        self._writer = self._connect(synchronous="NORMAL")
        self._writer.executescript(SCHEMA)
        self._readers = threading.local()
        self.changes = ChangeFeed()
        self._requeue_orphans()

    def _connect(self, synchronous: str = "NORMAL") -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        return connection

    @property
    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._readers, "connection", None)
        if connection is None:
            connection = self._readers.connection = self._connect()
        return connection

    def _write(self, fn, *, durable: bool = False):
        """Runs `fn(connection)` in one IMMEDIATE transaction and returns its result; a durable
        transaction is on disk (fsynced) when this returns."""
        with self._write_lock:
            if self._closed:
                raise StoreClosed("the queue is closed")
            connection = self._durable_writer if durable else self._writer
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = fn(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

    def _requeue_orphans(self) -> None:
        def requeue(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT request_id FROM jobs WHERE status = 'IN_PROGRESS'").fetchall()
            return [row[0] for row in rows]

        orphans = self._write(requeue)
        if orphans:
            logger.warning("found %d request(s) left running by a previous process; requeueing", len(orphans))
            self._expire_leases(orphans, reason="the server stopped while it was running")

    # -- submit and read -------------------------------------------------------------------

    def submit(self, job: NewJob, *, max_queue_length: int | None = None) -> int:
        def insert(db: sqlite3.Connection) -> int:
            if max_queue_length is not None:
                (waiting,) = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'IN_QUEUE' AND endpoint = ?", (job.endpoint,)
                ).fetchone()
                if waiting >= max_queue_length:
                    raise QueueFull(
                        f"The queue for {job.endpoint} already holds {waiting} request(s), "
                        f"the `fal_max_queue_length` of {max_queue_length} given"
                    )
            db.execute(
                "INSERT INTO jobs (request_id, endpoint, owner, payload, priority, status, created_at, "
                "start_deadline, webhook_url) VALUES (?, ?, ?, ?, ?, 'IN_QUEUE', ?, ?, ?)",
                (
                    job.request_id,
                    job.endpoint,
                    job.owner,
                    json.dumps(job.payload, separators=(",", ":")),
                    int(job.priority),
                    self._clock(),
                    job.start_deadline,
                    job.webhook_url,
                ),
            )
            (ahead,) = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'IN_QUEUE' AND priority <= ? AND request_id != ?",
                (int(job.priority), job.request_id),
            ).fetchone()
            return ahead

        position = self._write(insert, durable=True)
        self.changes.publish_work()
        if job.start_deadline is not None:
            self.changes.schedule_changed.set()
        return position

    def get(self, request_id: str) -> Job | None:
        row = self._reader.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        return _job_from_row(row) if row else None

    def queue_position(self, job: Job) -> int:
        row = self._reader.execute(
            "SELECT COUNT(*) FROM jobs AS ahead, jobs AS me WHERE me.request_id = ? "
            "AND ahead.status = 'IN_QUEUE' AND (ahead.priority < me.priority "
            "OR (ahead.priority = me.priority AND ahead.seq < me.seq))",
            (job.request_id,),
        ).fetchone()
        return row[0]

    def logs(self, request_id: str, *, after_seq: int = 0) -> list[LogEntry]:
        rows = self._reader.execute(
            "SELECT seq, timestamp, level, message FROM logs WHERE request_id = ? AND seq > ? ORDER BY seq",
            (request_id, after_seq),
        ).fetchall()
        return [LogEntry(*row) for row in rows]

    def append_logs(self, request_id: str, entries: Iterable[tuple[str, str]]) -> None:
        now = self._clock()
        rows = [(request_id, now, level, message) for level, message in entries]
        if not rows:
            return
        self._write(lambda db: db.executemany(
            "INSERT INTO logs (request_id, timestamp, level, message) VALUES (?, ?, ?, ?)", rows
        ))
        self.changes.publish(request_id)

    # -- workers ---------------------------------------------------------------------------

    def claim(self, worker_id: str, batch_limits: Mapping[str, int], *, default_batch: int = 1) -> list[Job]:
        def lease(db: sqlite3.Connection) -> list[str]:
            now = self._clock()
            head = db.execute(
                "SELECT request_id, endpoint FROM jobs WHERE status = 'IN_QUEUE' "
                "AND (start_deadline IS NULL OR start_deadline >= ?) ORDER BY priority, seq LIMIT 1",
                (now,),
            ).fetchone()
            if head is None:
                return []
            request_id, endpoint = head
            limit = max(1, batch_limits.get(endpoint, default_batch))
            followers = db.execute(
                "SELECT request_id FROM jobs WHERE status = 'IN_QUEUE' AND endpoint = ? AND request_id != ? "
                "AND (start_deadline IS NULL OR start_deadline >= ?) ORDER BY priority, seq LIMIT ?",
                (endpoint, request_id, now, limit - 1),
            ).fetchall()
            ids = [request_id, *(row[0] for row in followers)]
            db.executemany(
                "UPDATE jobs SET status = 'IN_PROGRESS', lease_owner = ?, lease_expires = ?, "
                "attempts = attempts + 1, started_at = ? WHERE request_id = ?",
                [(worker_id, now + self._lease_seconds, now, rid) for rid in ids],
            )
            return ids

        ids = self._write(lease)
        for request_id in ids:
            self.changes.publish(request_id)
        return [job for job in map(self.get, ids) if job is not None]

    def renew(self, worker_id: str, request_ids: Sequence[str]) -> set[str]:
        if not request_ids:
            return set()
        marks = ",".join("?" * len(request_ids))

        def extend(db: sqlite3.Connection) -> set[str]:
            db.execute(
                f"UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND status = 'IN_PROGRESS' "
                f"AND request_id IN ({marks})",
                (self._clock() + self._lease_seconds, worker_id, *request_ids),
            )
            rows = db.execute(
                f"SELECT request_id FROM jobs WHERE cancel_requested = 1 AND request_id IN ({marks})",
                tuple(request_ids),
            ).fetchall()
            return {row[0] for row in rows}

        return self._write(extend)

    def release(self, request_ids: Sequence[str]) -> None:
        def requeue(db: sqlite3.Connection) -> None:
            for request_id in request_ids:
                db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', lease_owner = NULL, lease_expires = NULL, "
                    "attempts = MAX(attempts - 1, 0) WHERE request_id = ? AND status = 'IN_PROGRESS'",
                    (request_id,),
                )
                db.execute(
                    "INSERT INTO logs (request_id, timestamp, level, message) VALUES (?, ?, 'WARN', ?)",
                    (request_id, self._clock(), "Interrupted by a server shutdown; requeued"),
                )

        self._write(requeue)
        for request_id in request_ids:
            self.changes.publish(request_id)

    def complete(self, request_id: str, result: JobResult) -> bool:
        done = self._write(lambda db: _complete(db, request_id, result, self._clock()), durable=True)
        if done:
            self.changes.publish(request_id)
        return done

    def cancel(self, request_id: str, result: JobResult) -> CancelOutcome:
        def cancel(db: sqlite3.Connection) -> CancelOutcome:
            row = db.execute("SELECT status FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
            if row is None:
                return CancelOutcome.NOT_FOUND
            status = JobStatus(row[0])
            if status is JobStatus.COMPLETED:
                return CancelOutcome.ALREADY_COMPLETED
            if status is JobStatus.IN_QUEUE:
                _complete(db, request_id, result, self._clock())
                return CancelOutcome.OK
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE request_id = ?", (request_id,))
            return CancelOutcome.CANCELLATION_REQUESTED

        outcome = self._write(cancel, durable=True)
        self.changes.publish(request_id)
        return outcome

    def recover(self) -> list[str]:
        now = self._clock()
        expired = [
            row[0]
            for row in self._reader.execute(
                "SELECT request_id FROM jobs WHERE status = 'IN_PROGRESS' AND lease_expires < ?", (now,)
            ).fetchall()
        ]
        completed = self._expire_leases(expired, reason="its worker stopped responding")
        late = [
            row[0]
            for row in self._reader.execute(
                "SELECT request_id FROM jobs WHERE status = 'IN_QUEUE' AND start_deadline < ?", (now,)
            ).fetchall()
        ]
        timeout = StartTimeout(
            "The request did not start before the deadline its `X-Fal-Request-Start-Timeout` "
            "(or `X-Fal-Request-Timeout`) header set"
        )
        for request_id in late:
            if self.complete(request_id, JobResult.from_error(timeout)):
                completed.append(request_id)
        return completed

    def _expire_leases(self, request_ids: Sequence[str], *, reason: str) -> list[str]:
        """Puts leased jobs back in the queue, or fails them once out of attempts."""
        failed: list[str] = []
        for request_id in request_ids:

            def expire(db: sqlite3.Connection) -> str:
                row = db.execute(
                    "SELECT attempts, cancel_requested FROM jobs WHERE request_id = ? AND status = 'IN_PROGRESS'",
                    (request_id,),
                ).fetchone()
                if row is None:
                    return "gone"
                attempts, cancel_requested = row
                if cancel_requested:
                    _complete(db, request_id, JobResult.from_error(Cancelled()), self._clock())
                    return "failed"
                if attempts >= self._max_attempts:
                    error = KilnError(
                        f"The request was stopped {attempts} time(s) because {reason}; it will not be retried",
                        error_type="runner_server_error",
                    )
                    _complete(db, request_id, JobResult.from_error(error), self._clock())
                    return "failed"
                db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', lease_owner = NULL, lease_expires = NULL "
                    "WHERE request_id = ?",
                    (request_id,),
                )
                db.execute(
                    "INSERT INTO logs (request_id, timestamp, level, message) VALUES (?, ?, 'WARN', ?)",
                    (request_id, self._clock(), f"Requeued (attempt {attempts} of {self._max_attempts}): {reason}"),
                )
                return "requeued"

            outcome = self._write(expire, durable=True)
            if outcome == "failed":
                failed.append(request_id)
            self.changes.publish(request_id)
        if request_ids:
            self.changes.publish_work()
        return failed

    # -- webhooks and retention ------------------------------------------------------------

    def next_start_deadline(self) -> float | None:
        row = self._reader.execute(
            "SELECT MIN(start_deadline) FROM jobs WHERE status = 'IN_QUEUE' AND start_deadline IS NOT NULL"
        ).fetchone()
        return row[0]

    def webhooks_due(self, limit: int) -> list[WebhookDelivery]:
        rows = self._reader.execute(
            "SELECT request_id, url, attempts FROM webhooks WHERE delivered_at IS NULL "
            "AND next_attempt_at IS NOT NULL AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (self._clock(), limit),
        ).fetchall()
        return [WebhookDelivery(*row) for row in rows]

    def webhook_attempted(self, request_id: str, *, delivered: bool, retry_in: float | None, error: str | None) -> None:
        now = self._clock()
        next_attempt = None if delivered or retry_in is None else now + retry_in
        self._write(lambda db: db.execute(
            "UPDATE webhooks SET attempts = attempts + 1, delivered_at = ?, next_attempt_at = ?, last_error = ? "
            "WHERE request_id = ?",
            (now if delivered else None, next_attempt, error, request_id),
        ))

    def purge(self, older_than: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT request_id FROM jobs WHERE status = 'COMPLETED' AND completed_at < ?", (older_than,)
                ).fetchall()
            ]
            for table in ("logs", "webhooks", "jobs"):
                db.executemany(f"DELETE FROM {table} WHERE request_id = ?", [(rid,) for rid in ids])
            return len(ids)

        return self._write(delete)

    def wait_for_work(self, timeout: float) -> None:
        self.changes.wait_for_work(timeout)

    def close(self) -> None:
        # under the write lock, so a write in flight on another thread finishes before the
        # connections go and a later one raises StoreClosed instead of using a freed handle
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
            self._durable_writer.close()
            self._lock_file.close()


def _complete(db: sqlite3.Connection, request_id: str, result: JobResult, now: float) -> bool:
    cursor = db.execute(
        "UPDATE jobs SET status = 'COMPLETED', completed_at = ?, lease_owner = NULL, lease_expires = NULL, "
        "result_status = ?, result_body = ?, error = ?, error_type = ?, metrics = ?, result_headers = ? "
        "WHERE request_id = ? AND status != 'COMPLETED'",
        (
            now,
            result.status_code,
            json.dumps(result.body, separators=(",", ":")),
            result.error,
            result.error_type,
            json.dumps(dict(result.metrics)),
            json.dumps(dict(result.headers)),
            request_id,
        ),
    )
    if cursor.rowcount != 1:
        return False
    db.execute(
        "INSERT INTO webhooks (request_id, url, next_attempt_at) "
        "SELECT request_id, webhook_url, ? FROM jobs WHERE request_id = ? AND webhook_url IS NOT NULL",
        (now, request_id),
    )
    return True


def _job_from_row(row: tuple[Any, ...]) -> Job:
    (
        request_id, endpoint, owner, payload, priority, status, created_at, started_at, completed_at,
        attempts, cancel_requested, webhook_url, result_status, result_body, error, error_type, metrics,
        result_headers,
    ) = row
    result = None
    if result_status is not None:
        result = JobResult(
            status_code=result_status,
            body=json.loads(result_body),
            error=error,
            error_type=error_type,
            metrics=json.loads(metrics) if metrics else {},
            headers=json.loads(result_headers) if result_headers else {},
        )
    return Job(
        request_id=request_id,
        endpoint=endpoint,
        owner=owner,
        payload=json.loads(payload),
        priority=Priority(priority),
        status=JobStatus(status),
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at,
        attempts=attempts,
        cancel_requested=bool(cancel_requested),
        webhook_url=webhook_url,
        result=result,
    )


def _lock_exclusively(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLocked(f"another Kiln process is using the data dir {path.parent}") from None
    return handle
