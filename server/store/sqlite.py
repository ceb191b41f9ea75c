"""The embedded queue: one SQLite database in WAL mode in the data dir.

Accepting, completing and cancelling a request are fsynced before they are answered, so they
survive a kill -9 or a power cut. Logs, claims and lease renewals are committed without an fsync:
a process crash cannot lose them (they are in the WAL), a power cut loses at most the latest ones
(a lost claim only means the job runs again), and the next fsynced commit makes them durable too.
One process owns a data dir (an exclusive lock file enforces it), which is what lets `open` requeue
every job left IN_PROGRESS at once: its worker is certainly gone. Writes are serialised under one
lock; reads use a connection per thread so status polling never waits on an fsync.

Payloads and result bodies live in tables of their own: SQLite stores a large value in a chain of
overflow pages that must be walked to reach any column after it, so a 90 MB payload in the jobs row
would make every status read walk 90 MB. Queue positions come from an in-memory mirror of the queued
jobs in service order (`_QueueIndex`, rebuilt at open and updated after each commit under the write
lock), since SQLite can only count index entries one by one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
import time
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from server.errors import Cancelled, KilnError, QueueFull, StartTimeout
from server.store import (
    CancelOutcome,
    Job,
    JobInfo,
    JobResult,
    JobStatus,
    JobStore,
    LogEntry,
    NODE_TIMEOUT_SECONDS,
    NewJob,
    Priority,
    StoreClosed,
    WebhookDelivery,
    stored_result,
    webhook_destination,
)
from server.keys import read_or_create
from server.store.feed import ChangeFeed

logger = logging.getLogger(__name__)

TABLES = (
    """CREATE TABLE IF NOT EXISTS jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL UNIQUE,
        endpoint TEXT NOT NULL,
        owner TEXT NOT NULL,
        priority INTEGER NOT NULL,
        fair_round INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        completed_at REAL,
        start_deadline REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        crashes INTEGER NOT NULL DEFAULT 0,
        running INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        webhook_url TEXT,
        result_status INTEGER,
        error TEXT,
        error_type TEXT,
        metrics TEXT
    )""",
    "CREATE TABLE IF NOT EXISTS payloads (request_id TEXT PRIMARY KEY, payload TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS results (request_id TEXT PRIMARY KEY, body TEXT NOT NULL, headers TEXT NOT NULL)",
    # per priority, the latest round a claim took its head from: the round now being served
    "CREATE TABLE IF NOT EXISTS fair_clock (priority INTEGER PRIMARY KEY, round INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS logs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        timestamp REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS webhooks (
        request_id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        owner TEXT NOT NULL DEFAULT '',
        destination TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        delivered_at REAL,
        last_error TEXT
    )""",
)
INDEXES = (
    # service order: priority, round, arrival
    "CREATE INDEX IF NOT EXISTS jobs_order ON jobs(priority, fair_round, seq) WHERE status = 'IN_QUEUE'",
    "CREATE INDEX IF NOT EXISTS jobs_order_endpoint ON jobs(endpoint, priority, fair_round, seq) WHERE status = 'IN_QUEUE'",
    "CREATE INDEX IF NOT EXISTS jobs_owner_round ON jobs(owner, priority, fair_round) WHERE status = 'IN_QUEUE'",
    "CREATE INDEX IF NOT EXISTS jobs_suspects ON jobs(priority, fair_round, seq) WHERE status = 'IN_QUEUE' AND crashes > 0",
    "CREATE INDEX IF NOT EXISTS jobs_leased ON jobs(lease_expires) WHERE status = 'IN_PROGRESS'",
    "CREATE INDEX IF NOT EXISTS jobs_completed ON jobs(completed_at) WHERE status = 'COMPLETED'",
    "CREATE INDEX IF NOT EXISTS jobs_start_deadline ON jobs(start_deadline) WHERE status = 'IN_QUEUE'",
    "CREATE INDEX IF NOT EXISTS logs_request ON logs(request_id, seq)",
    "CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks(next_attempt_at) WHERE delivered_at IS NULL",
)

INFO_COLUMNS = (
    "j.request_id, j.endpoint, j.owner, j.priority, j.status, j.created_at, j.started_at, j.completed_at, "
    "j.attempts, j.cancel_requested, j.result_status, j.error, j.error_type, j.metrics"
)
# what `_QueueIndex.sync` takes
QUEUE_COLUMNS = "request_id, status, endpoint, priority, fair_round, seq"


class DataDirLocked(RuntimeError):
    pass


class SqliteJobStore(JobStore):
    def __init__(
        self,
        path: Path,
        *,
        lease_seconds: float,
        max_attempts: int,
        affinity_seconds: float = 10.0,
        secrets_dir: Path | None = None,
        clock=time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._affinity_seconds = affinity_seconds
        self._secrets_dir = secrets_dir or path.parent / "keys"
        # one process owns the data dir, so the nodes sharing this store are this process's
        self._nodes: dict[str, dict[str, Any]] = {}
        self._clock = clock
        self._lock_file = _lock_exclusively(path.with_suffix(".lock"))
        self._write_lock = threading.Lock()
        self._closed = False
        # rows of jobs a transaction changed, mirrored into `_queue` once it commits
        self._touched: list[tuple[Any, ...]] = []
        self._queue = _QueueIndex()
        self._durable_writer = self._connect(synchronous="FULL")
        self._writer = self._connect(synchronous="NORMAL")
        self._write(_create_schema, durable=True)
        self._readers = threading.local()
        self.changes = ChangeFeed()
        self._queue.sync(self._reader.execute(f"SELECT {QUEUE_COLUMNS} FROM jobs WHERE status = 'IN_QUEUE'"))
        self._requeue_orphans()

    def _connect(self, synchronous: str = "NORMAL") -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        return connection

    @property
    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreClosed("the queue is closed")
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
            self._touched.clear()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = fn(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                self._touched.clear()
                raise
            connection.execute("COMMIT")
            self._queue.sync(self._touched)
            self._touched.clear()
            return result

    def _touch(self, db: sqlite3.Connection, request_ids: Sequence[str]) -> None:
        """Notes the jobs' rows as this transaction leaves them, for `_queue` after the commit."""
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            self._touched += db.execute(
                f"SELECT {QUEUE_COLUMNS} FROM jobs WHERE request_id IN ({','.join('?' * len(chunk))})", tuple(chunk)
            ).fetchall()

    def _requeue_orphans(self) -> None:
        def requeue(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT request_id FROM jobs WHERE status = 'IN_PROGRESS'").fetchall()
            return [row[0] for row in rows]

        orphans = self._write(requeue)
        if orphans:
            logger.warning("found %d request(s) left running by a previous process; requeueing", len(orphans))
            self._expire_leases(orphans, reason="the server stopped")

    # -- submit and read -------------------------------------------------------------------

    def submit(self, job: NewJob, *, max_queue_length: int | None = None) -> int:
        payload = json.dumps(job.payload, separators=(",", ":"))  # outside the lock: it may be large
        priority = int(job.priority)

        def insert(db: sqlite3.Connection) -> None:
            if max_queue_length is not None:
                waiting = self._queue.count(job.endpoint)
                if waiting >= max_queue_length:
                    raise QueueFull(
                        f"The queue for {job.endpoint} already holds {waiting} request(s), "
                        f"the `fal_max_queue_length` of {max_queue_length} given"
                    )
            db.execute(
                "INSERT INTO jobs (request_id, endpoint, owner, priority, fair_round, status, created_at, "
                "start_deadline, webhook_url) VALUES (?, ?, ?, ?, ?, 'IN_QUEUE', ?, ?, ?)",
                (
                    job.request_id,
                    job.endpoint,
                    job.owner,
                    priority,
                    _next_round(db, job.owner, priority),
                    self._clock(),
                    job.start_deadline,
                    job.webhook_url,
                ),
            )
            db.execute("INSERT INTO payloads (request_id, payload) VALUES (?, ?)", (job.request_id, payload))
            self._touch(db, [job.request_id])

        self._write(insert, durable=True)
        self.changes.publish_work()
        if job.start_deadline is not None:
            self.changes.schedule_changed.set()
        position = self._queue.position(job.request_id)
        return 0 if position is None else position  # None: a worker took it already

    def get(self, request_id: str) -> Job | None:
        row = self._reader.execute(
            f"SELECT {INFO_COLUMNS}, j.webhook_url, p.payload, r.body, r.headers FROM jobs AS j "
            "LEFT JOIN payloads AS p ON p.request_id = j.request_id "
            "LEFT JOIN results AS r ON r.request_id = j.request_id WHERE j.request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        info = _info_from_row(row[:14])
        webhook_url, payload, body, headers = row[14:]
        return Job.stored(info, payload=payload, webhook_url=webhook_url, body=body, headers=headers)

    def info(self, request_id: str) -> JobInfo | None:
        row = self._reader.execute(f"SELECT {INFO_COLUMNS} FROM jobs AS j WHERE j.request_id = ?", (request_id,)).fetchone()
        return _info_from_row(row) if row else None

    def result(self, request_id: str) -> JobResult | None:
        row = self._reader.execute(
            f"SELECT {INFO_COLUMNS}, r.body, r.headers FROM jobs AS j JOIN results AS r ON r.request_id = j.request_id "
            "WHERE j.request_id = ? AND j.status = 'COMPLETED'",
            (request_id,),
        ).fetchone()
        return stored_result(_info_from_row(row[:14]), *row[14:]) if row else None

    def queue_position(self, request_id: str) -> int | None:
        return self._queue.position(request_id)

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

    def claim(
        self,
        worker_id: str,
        batch_limits: Mapping[str, int],
        *,
        default_batch: int = 1,
        warm: Collection[str] = (),
    ) -> list[Job]:
        def lease(db: sqlite3.Connection) -> list[str]:
            now = self._clock()
            on_time = "(start_deadline IS NULL OR start_deadline >= ?)"
            if db.execute("SELECT 1 FROM jobs WHERE status = 'IN_PROGRESS' AND crashes > 0 LIMIT 1").fetchone():
                return []  # a suspect is running: it runs alone
            head = db.execute(
                f"SELECT request_id, endpoint, priority, fair_round FROM jobs WHERE status = 'IN_QUEUE' "
                f"AND crashes > 0 AND {on_time} ORDER BY priority, fair_round, seq LIMIT 1",
                (now,),
            ).fetchone()
            if head is not None:
                if db.execute("SELECT 1 FROM jobs WHERE status = 'IN_PROGRESS' LIMIT 1").fetchone():
                    return []  # a suspect waits until what runs now has finished
                ids = [head[0]]
            else:
                head = db.execute(
                    f"SELECT request_id, endpoint, priority, fair_round, created_at FROM jobs WHERE status = 'IN_QUEUE' "
                    f"AND {on_time} ORDER BY priority, fair_round, seq LIMIT 1",
                    (now,),
                ).fetchone()
                if head is None:
                    return []
                first = head
                if warm and head[1] not in warm and head[4] > now - self._affinity_seconds:
                    # the first request of a warm endpoint at the head's priority (see server.store)
                    candidates = [
                        db.execute(
                            f"SELECT request_id, endpoint, fair_round, seq FROM jobs WHERE status = 'IN_QUEUE' "
                            f"AND endpoint = ? AND priority = ? AND crashes = 0 AND {on_time} "
                            "ORDER BY fair_round, seq LIMIT 1",
                            (endpoint, head[2], now),
                        ).fetchone()
                        for endpoint in sorted(warm)
                    ]
                    candidates = [row for row in candidates if row is not None]
                    if candidates:
                        first = min(candidates, key=lambda row: (row[2], row[3]))
                limit = max(1, batch_limits.get(first[1], default_batch))
                followers = db.execute(
                    f"SELECT request_id FROM jobs WHERE status = 'IN_QUEUE' AND endpoint = ? AND request_id != ? "
                    f"AND crashes = 0 AND {on_time} ORDER BY priority, fair_round, seq LIMIT ?",
                    (first[1], first[0], now, limit - 1),
                ).fetchall()
                ids = [first[0], *(row[0] for row in followers)]
            db.executemany(
                "UPDATE jobs SET status = 'IN_PROGRESS', lease_owner = ?, lease_expires = ?, running = 1, "
                "attempts = attempts + 1, started_at = ? WHERE request_id = ?",
                [(worker_id, now + self._lease_seconds, now, rid) for rid in ids],
            )
            db.execute(
                "INSERT INTO fair_clock (priority, round) VALUES (?, ?) "
                "ON CONFLICT (priority) DO UPDATE SET round = MAX(round, excluded.round)",
                (head[2], head[3]),
            )
            self._touch(db, ids)
            return ids

        ids = self._write(lease)
        for request_id in ids:
            self.changes.publish(request_id)
        if ids and self._queue.waiting():
            self.changes.publish_work()
        return [job for job in map(self.get, ids) if job is not None]

    def mark_running(self, worker_id: str, request_ids: Sequence[str], *, running: bool = True) -> None:
        if not request_ids:
            return
        marks = ",".join("?" * len(request_ids))
        self._write(lambda db: db.execute(
            f"UPDATE jobs SET running = ? WHERE lease_owner = ? AND status = 'IN_PROGRESS' AND request_id IN ({marks})",
            (int(running), worker_id, *request_ids),
        ))

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

    def release(self, request_ids: Sequence[str], *, worker_id: str | None = None) -> None:
        def requeue(db: sqlite3.Connection) -> None:
            for request_id in request_ids:
                cursor = db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', lease_owner = NULL, lease_expires = NULL, running = 0, "
                    "attempts = MAX(attempts - 1, 0) WHERE request_id = ? AND status = 'IN_PROGRESS' "
                    "AND (? IS NULL OR lease_owner = ?)",
                    (request_id, worker_id, worker_id),
                )
                if cursor.rowcount != 1:
                    continue
                db.execute(
                    "INSERT INTO logs (request_id, timestamp, level, message) VALUES (?, ?, 'WARN', ?)",
                    (request_id, self._clock(), "Interrupted by a server shutdown; requeued"),
                )
            self._touch(db, request_ids)

        self._write(requeue)
        for request_id in request_ids:
            self.changes.publish(request_id)

    def complete(self, request_id: str, result: JobResult) -> bool:
        stored = _StoredResult(result)  # outside the lock: the body may be large
        done = self._write(lambda db: self._complete(db, request_id, stored, self._clock()), durable=True)
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
                self._complete(db, request_id, _StoredResult(result), self._clock())
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
        completed = self._expire_leases(expired, reason="its worker stopped renewing its lease", lapsed=True)
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

    def _expire_leases(self, request_ids: Sequence[str], *, reason: str, lapsed: bool = False) -> list[str]:
        """Puts leased jobs back in the queue. A job the worker was running is charged: it becomes a
        suspect (see `claim`), or is failed once charged `max_attempts` times. With `lapsed`, only
        jobs whose lease has still lapsed when their transaction runs: a renewal that landed since
        they were found keeps its job."""
        failed: list[str] = []
        for request_id in request_ids:

            def expire(db: sqlite3.Connection, request_id: str = request_id) -> str:
                now = self._clock()
                row = db.execute(
                    "SELECT crashes, running, cancel_requested FROM jobs WHERE request_id = ? AND status = 'IN_PROGRESS' "
                    "AND (? OR lease_expires < ?)",
                    (request_id, not lapsed, now),
                ).fetchone()
                if row is None:
                    return "gone"
                crashes, running, cancel_requested = row
                if cancel_requested:
                    self._complete(db, request_id, _StoredResult(JobResult.from_error(Cancelled())), now)
                    return "failed"
                if running:
                    crashes += 1
                    if crashes >= self._max_attempts:
                        error = KilnError(
                            f"Kiln's worker died {crashes} time(s) while running this request (last: {reason}), "
                            "with nothing else running after the first, so the request is the likely cause; "
                            "it will not be retried",
                            error_type="runner_server_error",
                        )
                        self._complete(db, request_id, _StoredResult(JobResult.from_error(error)), now)
                        return "failed"
                    message = (
                        f"Requeued: {reason} while it was running (strike {crashes} of {self._max_attempts}); "
                        "it runs alone next, so a repeat can be told apart from bad luck"
                    )
                else:
                    message = f"Requeued: {reason} before it started running (not counted against it)"
                db.execute(
                    "UPDATE jobs SET status = 'IN_QUEUE', lease_owner = NULL, lease_expires = NULL, running = 0, "
                    "crashes = ? WHERE request_id = ?",
                    (crashes, request_id),
                )
                db.execute(
                    "INSERT INTO logs (request_id, timestamp, level, message) VALUES (?, ?, 'WARN', ?)",
                    (request_id, now, message),
                )
                self._touch(db, [request_id])
                return "requeued"

            outcome = self._write(expire, durable=True)
            if outcome == "failed":
                failed.append(request_id)
            self.changes.publish(request_id)
        if request_ids:
            self.changes.publish_work()
        return failed

    def _complete(self, db: sqlite3.Connection, request_id: str, stored: _StoredResult, now: float) -> bool:
        """Completes the job unless it already is; schedules its webhook. True if this call did."""
        cursor = db.execute(
            "UPDATE jobs SET status = 'COMPLETED', completed_at = ?, lease_owner = NULL, lease_expires = NULL, "
            "running = 0, result_status = ?, error = ?, error_type = ?, metrics = ? "
            "WHERE request_id = ? AND status != 'COMPLETED'",
            (now, stored.status_code, stored.error, stored.error_type, stored.metrics, request_id),
        )
        if cursor.rowcount != 1:
            return False
        db.execute(
            "INSERT OR REPLACE INTO results (request_id, body, headers) VALUES (?, ?, ?)",
            (request_id, stored.body, stored.headers),
        )
        owner, webhook_url = db.execute("SELECT owner, webhook_url FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        if webhook_url:
            db.execute(
                "INSERT INTO webhooks (request_id, url, owner, destination, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, webhook_url, owner, webhook_destination(webhook_url), now),
            )
        self._touch(db, [request_id])
        return True

    # -- webhooks and retention ------------------------------------------------------------

    def next_start_deadline(self) -> float | None:
        row = self._reader.execute(
            "SELECT MIN(start_deadline) FROM jobs WHERE status = 'IN_QUEUE' AND start_deadline IS NOT NULL"
        ).fetchone()
        return row[0]

    def webhooks_due(
        self, limit: int, *, skip_destinations: Collection[str] = (), skip_owners: Collection[str] = ()
    ) -> list[WebhookDelivery]:
        skip, arguments = "", [self._clock()]
        for column, values in (("destination", skip_destinations), ("owner", skip_owners)):
            if values:
                skip += f" AND {column} NOT IN ({','.join('?' * len(values))})"
                arguments += list(values)
        rows = self._reader.execute(
            "SELECT request_id, url, attempts, owner, destination FROM webhooks WHERE delivered_at IS NULL "
            f"AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?{skip} ORDER BY next_attempt_at LIMIT ?",
            (*arguments, limit),
        ).fetchall()
        return [WebhookDelivery(*row) for row in rows]

    def webhook_sending(self, request_id: str, *, retry_in: float) -> bool:
        now = self._clock()
        cursor = self._write(lambda db: db.execute(
            "UPDATE webhooks SET attempts = attempts + 1, next_attempt_at = ? WHERE request_id = ? "
            "AND delivered_at IS NULL AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?",
            (now + retry_in, request_id, now),
        ))
        return cursor.rowcount == 1

    def webhook_attempted(self, request_id: str, *, delivered: bool, retry_in: float | None, error: str | None) -> None:
        now = self._clock()
        next_attempt = None if delivered or retry_in is None else now + retry_in
        self._write(lambda db: db.execute(
            "UPDATE webhooks SET delivered_at = ?, next_attempt_at = ?, last_error = ? "
            "WHERE request_id = ? AND delivered_at IS NULL",
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
            for table in ("logs", "webhooks", "payloads", "results", "jobs"):
                db.executemany(f"DELETE FROM {table} WHERE request_id = ?", [(rid,) for rid in ids])
            return len(ids)

        return self._write(delete)

    def next_jobs(
        self,
        worker_id: str,
        batch_limits: Mapping[str, int],
        *,
        default_batch: int = 1,
        warm: Collection[str] = (),
        timeout: float,
    ) -> list[Job]:
        # every change that makes work claimable signals the feed, and so does a claim that leaves
        # some waiting: a claim without a signal since the last one would find nothing
        self.changes.wait_for_work(timeout)
        return self.claim(worker_id, batch_limits, default_batch=default_batch, warm=warm)

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

    # -- the web pages: a key's history and the home page's queue depths ----------------------

    def owner_history(
        self,
        owner: str,
        *,
        endpoint: str | None = None,
        status: JobStatus | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[JobInfo]:
        clauses, params = ["j.owner = ?"], [owner]
        for clause, value in (
            ("j.endpoint = ?", endpoint),
            ("j.status = ?", status.value if status is not None else None),
            ("j.created_at < ?", before),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        rows = self._reader.execute(
            f"SELECT {INFO_COLUMNS} FROM jobs AS j WHERE {' AND '.join(clauses)} "
            "ORDER BY j.created_at DESC, j.seq DESC LIMIT ?",
            (*params, max(0, limit)),
        ).fetchall()
        return [_info_from_row(row) for row in rows]

    def queue_depths(self) -> dict[str, dict[str, int]]:
        # waiting jobs from the in-memory index, running ones through the leases' partial index:
        # /health reads this on every probe, so never a scan of the completed jobs
        depths = {endpoint: {JobStatus.IN_QUEUE.value: count} for endpoint, count in self._queue.counts().items()}
        for endpoint, count in self._reader.execute(
            "SELECT endpoint, COUNT(*) FROM jobs WHERE status = 'IN_PROGRESS' GROUP BY endpoint"
        ).fetchall():
            depths.setdefault(endpoint, {})[JobStatus.IN_PROGRESS.value] = count
        return depths

    # -- nodes and secrets: one process owns the data dir --------------------------------------

    def heartbeat_node(self, node_id: str, record: Mapping[str, Any]) -> None:
        self._nodes[node_id] = {**record, "last_seen": self._clock()}

    def forget_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def nodes(self) -> dict[str, dict[str, Any]]:
        oldest = self._clock() - NODE_TIMEOUT_SECONDS
        return {node: dict(record) for node, record in list(self._nodes.items()) if record["last_seen"] >= oldest}

    def shared_secret(self, name: str, create: Callable[[], bytes]) -> bytes:
        """A file in the data dir's keys/ folder, owner-only, kept across restarts."""
        return read_or_create(self._secrets_dir / name, create)


class _StoredResult:
    """A JobResult as its columns, serialised before the write lock is taken."""

    __slots__ = ("body", "error", "error_type", "headers", "metrics", "status_code")

    def __init__(self, result: JobResult) -> None:
        self.status_code = result.status_code
        self.body = json.dumps(result.body, separators=(",", ":"))
        self.error = result.error
        self.error_type = result.error_type
        self.metrics = json.dumps(dict(result.metrics))
        self.headers = json.dumps(dict(result.headers))


def _info_from_row(row: tuple[Any, ...]) -> JobInfo:
    (
        request_id, endpoint, owner, priority, status, created_at, started_at, completed_at, attempts,
        cancel_requested, result_status, error, error_type, metrics,
    ) = row
    return JobInfo(
        request_id=request_id,
        endpoint=endpoint,
        owner=owner,
        priority=Priority(priority),
        status=JobStatus(status),
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at,
        attempts=attempts,
        cancel_requested=bool(cancel_requested),
        status_code=result_status,
        error=error,
        error_type=error_type,
        metrics=json.loads(metrics) if metrics else {},
    )


def _next_round(db: sqlite3.Connection, owner: str, priority: int) -> int:
    """A new job's round: one after its owner's latest waiting job, not before the round now served."""
    (latest,) = db.execute(
        "SELECT MAX(fair_round) FROM jobs WHERE status = 'IN_QUEUE' AND owner = ? AND priority = ?", (owner, priority)
    ).fetchone()
    row = db.execute("SELECT round FROM fair_clock WHERE priority = ?", (priority,)).fetchone()
    serving = row[0] if row else 0
    return serving if latest is None else max(latest + 1, serving)


def _create_schema(db: sqlite3.Connection) -> None:
    _migrate(db)
    for statement in (*TABLES, *INDEXES):
        db.execute(statement)


def _migrate(db: sqlite3.Connection) -> None:
    """Brings a queue written by an older Kiln (payload and result body in the jobs rows, no rounds,
    crash counts or webhook destinations) to this schema, in the transaction that opens it."""
    if "payload" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        return
    logger.warning("upgrading the queue database to this version of Kiln")
    for statement in TABLES[1:3]:
        db.execute(statement)
    db.execute("INSERT INTO payloads (request_id, payload) SELECT request_id, payload FROM jobs")
    db.execute(
        "INSERT INTO results (request_id, body, headers) SELECT request_id, result_body, COALESCE(result_headers, '{}') "
        "FROM jobs WHERE result_status IS NOT NULL"
    )
    for index in ("jobs_queued", "jobs_queued_endpoint"):
        db.execute(f"DROP INDEX IF EXISTS {index}")
    for column in ("payload", "result_body", "result_headers"):
        db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    for column in ("fair_round", "crashes", "running"):
        db.execute(f"ALTER TABLE jobs ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
    for column in ("owner", "destination"):
        db.execute(f"ALTER TABLE webhooks ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    rows = db.execute("SELECT w.request_id, w.url, j.owner FROM webhooks AS w JOIN jobs AS j USING (request_id)").fetchall()
    db.executemany(
        "UPDATE webhooks SET owner = ?, destination = ? WHERE request_id = ?",
        [(owner, webhook_destination(url), request_id) for request_id, url, owner in rows],
    )


class _QueueIndex:
    """The queued jobs in service order (priority, round, arrival), mirrored in memory.

    It answers `queue_position` in O(log n) and counts each endpoint's waiting jobs in O(1). Writers
    `sync` it with the rows a transaction left, after the commit and under the write lock, so it
    follows the commits in order; readers take its own lock, never the write lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._order = _RankedKeys()
        self._per_endpoint: Counter[str] = Counter()

    def sync(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Each row is QUEUE_COLUMNS of one job: added if IN_QUEUE, else removed."""
        with self._lock:
            for request_id, status, endpoint, priority, fair_round, seq in rows:
                known = self._keys.pop(request_id, None)
                if known is not None:
                    self._order.remove(known[0])
                    self._per_endpoint[known[1]] -= 1
                if status == JobStatus.IN_QUEUE.value:
                    key = (priority, fair_round, seq)
                    self._keys[request_id] = (key, endpoint)
                    self._order.add(key)
                    self._per_endpoint[endpoint] += 1

    def position(self, request_id: str) -> int | None:
        with self._lock:
            known = self._keys.get(request_id)
            return None if known is None else self._order.rank(known[0])

    def waiting(self) -> int:
        with self._lock:
            return len(self._keys)

    def count(self, endpoint: str) -> int:
        with self._lock:
            return self._per_endpoint[endpoint]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {endpoint: count for endpoint, count in self._per_endpoint.items() if count > 0}


class _RankedKeys:
    """A sorted set of distinct keys with O(log n) rank (how many keys are smaller).

    Keys sit in sorted blocks of at most 2 * LOAD, found by bisecting the blocks' last keys; a
    Fenwick tree over the block sizes counts the keys before a block. Splitting or dropping a block
    rebuilds the tree, once per LOAD changes at most.
    """

    LOAD = 256

    def __init__(self) -> None:
        self._blocks: list[list[Any]] = []
        self._lasts: list[Any] = []
        self._tree: list[int] = [0]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, key: Any) -> None:
        self._size += 1
        if not self._blocks:
            self._blocks.append([key])
            self._lasts.append(key)
            self._rebuild()
            return
        index = min(bisect_left(self._lasts, key), len(self._blocks) - 1)
        block = self._blocks[index]
        insort(block, key)
        self._lasts[index] = block[-1]
        if len(block) > 2 * self.LOAD:
            self._blocks[index : index + 1] = [block[: self.LOAD], block[self.LOAD :]]
            self._lasts[index : index + 1] = [block[self.LOAD - 1], block[-1]]
            self._rebuild()
        else:
            self._bump(index, 1)

    def remove(self, key: Any) -> None:
        index = bisect_left(self._lasts, key)
        block = self._blocks[index] if index < len(self._blocks) else []
        position = bisect_left(block, key)
        if position == len(block) or block[position] != key:
            raise KeyError(key)
        del block[position]
        self._size -= 1
        if block:
            self._lasts[index] = block[-1]
            self._bump(index, -1)
        else:
            del self._blocks[index], self._lasts[index]
            self._rebuild()

    def rank(self, key: Any) -> int:
        index = bisect_left(self._lasts, key)
        if index == len(self._blocks):
            return self._size
        count, node = 0, index
        while node > 0:
            count += self._tree[node]
            node -= node & -node
        return count + bisect_left(self._blocks[index], key)

    def _bump(self, index: int, delta: int) -> None:
        node = index + 1
        while node < len(self._tree):
            self._tree[node] += delta
            node += node & -node

    def _rebuild(self) -> None:
        tree = [0, *map(len, self._blocks)]
        for node in range(1, len(tree)):
            parent = node + (node & -node)
            if parent < len(tree):
                tree[parent] += tree[node]
        self._tree = tree


def _lock_exclusively(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLocked(f"another Kiln process is using the data dir {path.parent}") from None
    return handle
