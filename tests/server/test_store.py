"""The queue on its own, on each backend (SQLite, Redis): ordering, batching, leases, attempts,
idempotent completion."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from server.errors import QueueFull
from server.store import CancelOutcome, JobResult, JobStatus, NewJob, Priority
from server.store import redis as redis_store
from server.store.redis import RedisJobStore
from server.store.sqlite import DataDirLocked, SqliteJobStore
from tests.fixtures.redis_server import start_redis_server


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def open_store(tmp_path, clock, backend, request):
    """Opens the test's queue (again: the same queue) on the backend under test."""
    stores = []
    queue_url = request.getfixturevalue("redis_server").queue_url() if backend == "redis" else None

    def open_(max_attempts: int = 3):
        if backend == "redis":
            store = RedisJobStore.from_url(queue_url, lease_seconds=30, max_attempts=max_attempts, clock=clock)
        else:
            store = SqliteJobStore(tmp_path / "queue.sqlite3", lease_seconds=30, max_attempts=max_attempts, clock=clock)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        try:
            store.close()
        except Exception:
            pass


def job(request_id: str, endpoint: str = "e/a", priority: Priority = Priority.NORMAL, **kw) -> NewJob:
    return NewJob(request_id=request_id, endpoint=endpoint, owner="o", payload={"n": request_id}, priority=priority, **kw)


OK = JobResult(status_code=200, body={"ok": True}, metrics={"inference_time": 0.1})


def test_positions_follow_priority_then_arrival(open_store):
    store = open_store()
    assert store.submit(job("a")) == 0
    assert store.submit(job("b", priority=Priority.LOW)) == 1
    assert store.submit(job("c")) == 1
    positions = {rid: store.queue_position(rid) for rid in "abc"}
    assert positions == {"a": 0, "c": 1, "b": 2}
    assert [j.request_id for j in store.claim("w", {})] == ["a"]
    assert [j.request_id for j in store.claim("w", {})] == ["c"]
    assert [j.request_id for j in store.claim("w", {})] == ["b"]


def test_claim_batches_jobs_of_the_head_endpoint(open_store):
    store = open_store()
    for rid, endpoint in [("a", "e/x"), ("b", "e/y"), ("c", "e/x"), ("d", "e/x")]:
        store.submit(job(rid, endpoint))
    claimed = store.claim("w", {"e/x": 2})
    assert [j.request_id for j in claimed] == ["a", "c"]
    assert all(j.status is JobStatus.IN_PROGRESS and j.attempts == 1 for j in claimed)
    assert [j.request_id for j in store.claim("w", {"e/x": 8})] == ["b"]


def timed_next_jobs(store, worker_id: str, limits: dict, timeout: float) -> tuple[list[str], float]:
    started = time.monotonic()
    jobs = store.next_jobs(worker_id, limits, timeout=timeout)
    return [j.request_id for j in jobs], time.monotonic() - started


def test_next_jobs_claims_at_once_while_requests_wait_and_waits_once_none_do(open_store):
    """A worker asks for its next jobs after every batch, so a claim that leaves requests waiting must
    not make the next ask wait, and an ask that finds none waits (it costs no claim per request)."""
    store = open_store()
    for rid in "abc":
        store.submit(job(rid, "e/x" if rid != "c" else "e/y"))
    assert timed_next_jobs(store, "w", {"e/x": 2}, 10)[0] == ["a", "b"]
    store.complete("a", OK)
    store.complete("b", OK)
    ids, took = timed_next_jobs(store, "w", {}, 10)
    assert ids == ["c"] and took < 5  # `c`, of another endpoint, was left waiting
    store.complete("c", OK)
    ids, took = timed_next_jobs(store, "w", {}, 0.3)
    assert ids == [] and took >= 0.25


def test_a_waiting_worker_is_leased_a_request_by_its_submit(open_store, backend):
    """On Redis the submit itself leases the request to a worker waiting in `next_jobs`, in the same
    script (and fsync): the worker's claim costs no round trip after it."""
    if backend != "redis":
        pytest.skip("SQLite's workers are in its own process: a submit wakes them directly")
    store = open_store()
    handed: list = []
    waiting = threading.Thread(target=lambda: handed.extend(store.next_jobs("w", {"e/a": 4}, timeout=10)))
    waiting.start()
    deadline = time.monotonic() + 10
    while not store._redis.zscore(store._key("idle"), "w"):  # it has asked, found nothing, and waits
        assert time.monotonic() < deadline
        time.sleep(0.01)
    store.submit(job("a"))
    info = store.info("a")  # read as the submit returns, before the worker could claim
    assert info.status is JobStatus.IN_PROGRESS and info.attempts == 1
    waiting.join(10)
    [taken] = handed
    assert (taken.request_id, taken.payload, taken.status, taken.attempts) == ("a", {"n": "a"}, JobStatus.IN_PROGRESS, 1)
    assert (taken.endpoint, taken.owner, taken.webhook_url) == ("e/a", "o", None)
    store.submit(job("b"))  # nobody waits now
    assert store.info("b").status is JobStatus.IN_QUEUE


def test_work_leased_to_a_worker_that_stopped_waiting_goes_back_uncounted(open_store, clock, backend):
    if backend != "redis":
        pytest.skip("only Redis leases work to waiting workers")
    store = open_store()
    assert store.next_jobs("w", {}, timeout=0.05) == []  # it waited, and its wait has not yet lapsed
    store.submit(job("a"))
    assert store.info("a").status is JobStatus.IN_PROGRESS
    store.stop_waiting("w")
    info = store.info("a")
    assert info.status is JobStatus.IN_QUEUE and info.attempts == 0
    assert [j.request_id for j in store.claim("w2", {})] == ["a"]


def test_a_hand_off_that_a_redis_restart_forgot_goes_back_when_the_worker_asks_again(tmp_path, clock):
    """The inbox a submit hands a waiting worker's batch to is not in the AOF. A worker asks again only
    once it has finished what it was given, so what is still leased to it then never reached it: it
    goes back to the queue at once, uncounted, instead of waiting for the lease to expire."""
    server = start_redis_server(tmp_path / "redis")
    try:
        url = server.queue_url()
        store = RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3, clock=clock, listen=False)
        assert store.next_jobs("w", {}, timeout=0.05) == []  # it waited, and its wait has not yet lapsed
        store.submit(job("a"))
        store.submit(job("b"))
        assert store.info("a").status is JobStatus.IN_PROGRESS  # handed to `w`'s inbox
        store.close()
        server.restart()
        store = RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3, clock=clock, listen=False)
        assert store._redis.llen(store._key("inbox", "w")) == 0  # the restart forgot the hand-off
        assert [j.request_id for j in store.claim("w2", {})] == ["b"]
        assert store.claim("w", {}) == []  # a claim is not an ask: nothing goes back
        assert store.info("a").status is JobStatus.IN_PROGRESS

        taken = store.next_jobs("w", {}, timeout=0.05)
        assert [(j.request_id, j.attempts) for j in taken] == [("a", 1)]
        info = store.info("a")
        assert (info.status, info.attempts) == (JobStatus.IN_PROGRESS, 1)
        log = [json.loads(entry)[:2] for entry in store._redis.lrange(store._key("attempts", "a"), 0, -1)]
        assert log == [["claimed", "w"], ["running", "w"], ["returned", "w"], ["claimed", "w"], ["running", "w"]]
        assert store.get("b").status is JobStatus.IN_PROGRESS  # what another worker holds stays its own
        store.close()
    finally:
        server.stop()


def test_max_queue_length_counts_waiting_jobs_of_the_endpoint(open_store):
    store = open_store()
    store.submit(job("a"), max_queue_length=2)
    store.submit(job("b"), max_queue_length=2)
    store.submit(job("other", endpoint="e/other"), max_queue_length=2)
    with pytest.raises(QueueFull):
        store.submit(job("c"), max_queue_length=2)
    assert store.get("c") is None
    store.claim("w", {})
    store.submit(job("c"), max_queue_length=2)


def test_completion_is_idempotent_and_schedules_one_webhook(open_store):
    store = open_store()
    store.submit(job("a", webhook_url="https://example.com/hook"))
    store.claim("w", {})
    assert store.complete("a", OK) is True
    assert store.complete("a", JobResult(status_code=500, body={"detail": "late duplicate"})) is False
    assert store.get("a").result.body == {"ok": True}
    due = store.webhooks_due(10)
    assert [(d.request_id, d.url) for d in due] == [("a", "https://example.com/hook")]
    store.webhook_attempted("a", delivered=True, retry_in=None, error=None)
    assert store.webhooks_due(10) == []


def test_webhook_retries_wait_and_give_up(open_store, clock):
    store = open_store()
    store.submit(job("a", webhook_url="https://example.com/hook"))
    store.complete("a", OK)
    assert store.webhook_sending("a", retry_in=30)  # counted before it is sent
    assert store.webhooks_due(10) == [] and not store.webhook_sending("a", retry_in=30)
    store.webhook_attempted("a", delivered=False, retry_in=60, error="HTTP 500")
    assert store.webhooks_due(10) == []
    clock.now += 61
    assert store.webhooks_due(10)[0].attempts == 1
    assert store.webhook_sending("a", retry_in=30)
    store.webhook_attempted("a", delivered=False, retry_in=None, error="HTTP 500")
    clock.now += 10_000
    assert store.webhooks_due(10) == []


def test_expired_lease_charges_only_a_running_job_until_it_runs_out(open_store, clock):
    store = open_store(max_attempts=2)
    store.submit(job("a"))
    store.claim("w1", {})
    store.mark_running("w1", ["a"], running=False)  # decoded, waiting for the device
    clock.now += 31
    assert store.recover() == []
    assert store.get("a").status is JobStatus.IN_QUEUE
    assert "not counted" in store.logs("a")[-1].message  # it was not running: not its fault
    store.claim("w2", {})  # a claim marks it running
    clock.now += 31
    assert store.recover() == []
    requeued = store.get("a")
    assert requeued.status is JobStatus.IN_QUEUE and requeued.attempts == 2
    assert "strike 1 of 2" in store.logs("a")[-1].message
    store.claim("w3", {})
    clock.now += 31
    assert store.recover() == ["a"]
    failed = store.get("a")
    assert failed.status is JobStatus.COMPLETED
    assert failed.result.status_code == 500 and failed.result.error_type == "runner_server_error"
    assert "2 time(s)" in failed.result.error


def test_heartbeat_keeps_a_long_job_leased(open_store, clock):
    store = open_store()
    store.submit(job("a"))
    store.claim("w", {})
    for _ in range(10):
        clock.now += 20
        store.renew("w", ["a"])
        assert store.recover() == []
    assert store.get("a").status is JobStatus.IN_PROGRESS
    assert store.get("a").attempts == 1
    assert store.renew("someone-else", ["a"]) == set()
    clock.now += 31
    store.recover()
    assert store.get("a").status is JobStatus.IN_QUEUE


def test_cancel_outcomes(open_store):
    store = open_store()
    cancelled = JobResult(status_code=499, body={"detail": "cancelled"}, error="cancelled", error_type="client_cancelled")
    store.submit(job("running"))
    store.submit(job("queued"))
    store.claim("w", {"e/a": 1})
    assert store.cancel("running", cancelled) is CancelOutcome.CANCELLATION_REQUESTED
    assert store.get("running").status is JobStatus.IN_PROGRESS
    assert store.renew("w", ["running"]) == {"running"}
    assert store.cancel("queued", cancelled) is CancelOutcome.OK
    assert store.get("queued").result.error_type == "client_cancelled"
    store.complete("running", cancelled)
    assert store.cancel("running", cancelled) is CancelOutcome.ALREADY_COMPLETED
    assert store.cancel("missing", cancelled) is CancelOutcome.NOT_FOUND


def test_start_deadline_expires_queued_jobs(open_store, clock):
    store = open_store()
    store.submit(job("late", start_deadline=clock.now + 5))
    clock.now += 6
    assert store.claim("w", {}) == []
    assert store.recover() == ["late"]
    result = store.get("late").result
    assert result.status_code == 504 and result.error_type == "request_timeout"


def worker_died(store, open_store, backend, clock):
    """The store as the next process sees it after the one running the workers died: SQLite's
    owner reopens it (and requeues what was left running); on a shared queue the dead worker's
    leases expire and the janitor reclaims them."""
    if backend == "sqlite":
        store.close()
        return open_store()
    clock.now += 31
    store.recover()
    return store


def test_reopening_requeues_jobs_left_running(open_store, tmp_path, clock, backend):
    if backend != "sqlite":
        pytest.skip("one process owns a SQLite queue; a shared queue outlives its nodes (leases expire instead)")
    store = open_store()
    store.submit(job("a"))
    store.submit(job("b"))
    store.claim("w", {"e/a": 1})
    store.close()
    reopened = open_store()
    assert reopened.get("a").status is JobStatus.IN_QUEUE
    assert reopened.get("a").attempts == 1
    assert [j.request_id for j in reopened.claim("w", {})] == ["a"]
    assert reopened.get("a").attempts == 2


def test_one_process_per_data_dir(open_store, backend):
    if backend != "sqlite":
        pytest.skip("a shared queue is shared")
    open_store()
    with pytest.raises(DataDirLocked):
        open_store()


def test_purge_removes_old_completed_jobs_with_their_logs(open_store, clock):
    store = open_store()
    store.submit(job("old"))
    store.submit(job("waiting"))
    store.claim("w", {"e/a": 1})
    store.append_logs("old", [("INFO", "hello")])
    store.complete("old", OK)
    clock.now += 100
    assert store.purge(clock.now - 50) == 1
    assert store.get("old") is None and store.logs("old") == []
    assert store.get("waiting") is not None


def test_a_suspect_runs_alone_and_nothing_runs_beside_it(open_store, clock, backend):
    """Bug (#7): a death was charged to every job its worker had claimed. Now only the jobs marked
    running are charged; each becomes a suspect, leased alone once nothing else runs, with nothing
    leased beside it, so a second death is certainly its own."""
    store = open_store()
    for rid in "abcd":
        store.submit(job(rid))
    assert [j.request_id for j in store.claim("w", {"e/a": 4})] == list("abcd")
    store.mark_running("w", list("bcd"), running=False)  # decoded, waiting for the device
    store = worker_died(store, open_store, backend, clock)  # `a` was running, the others waited
    assert "strike 1 of 3" in store.logs("a")[-1].message
    assert all("not counted" in store.logs(rid)[-1].message for rid in "bcd")
    assert [j.request_id for j in store.claim("w1", {"e/a": 4})] == ["a"]
    assert store.claim("w2", {"e/a": 4}) == []  # nothing beside a suspect
    store.complete("a", OK)
    assert [j.request_id for j in store.claim("w1", {"e/a": 4})] == list("bcd")


def test_a_suspect_waits_until_what_runs_has_finished(open_store, clock):
    store = open_store()
    store.submit(job("long"))
    store.submit(job("crashed"))
    store.claim("w1", {"e/a": 1})
    store.claim("w2", {"e/a": 1})
    store.submit(job("later"))
    clock.now += 20
    store.renew("w1", ["long"])  # w1 lives on; w2 died
    clock.now += 20
    assert store.recover() == []
    assert store.get("crashed").status is JobStatus.IN_QUEUE
    assert store.claim("w2", {"e/a": 4}) == []  # `long` still runs
    store.complete("long", OK)
    assert [j.request_id for j in store.claim("w2", {"e/a": 4})] == ["crashed"]


def test_status_reads_leave_out_payload_and_result_body(open_store):
    store = open_store()
    store.submit(job("a"))
    info = store.info("a")
    assert (info.status, info.owner, info.status_code) == (JobStatus.IN_QUEUE, "o", None)
    assert not hasattr(info, "payload") and store.result("a") is None
    store.claim("w", {})
    store.complete("a", JobResult(status_code=200, body={"big": "x" * 1000}, metrics={"inference_time": 1.5}))
    info = store.info("a")
    assert (info.status, info.status_code, info.metrics) == (JobStatus.COMPLETED, 200, {"inference_time": 1.5})
    assert store.result("a").body == {"big": "x" * 1000}
    assert store.get("a").payload == {"n": "a"}


OLD_SCHEMA = """
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL UNIQUE, endpoint TEXT NOT NULL,
    owner TEXT NOT NULL, payload TEXT NOT NULL, priority INTEGER NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
    started_at REAL, completed_at REAL, start_deadline REAL, attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT,
    lease_expires REAL, cancel_requested INTEGER NOT NULL DEFAULT 0, webhook_url TEXT, result_status INTEGER,
    result_body TEXT, error TEXT, error_type TEXT, metrics TEXT, result_headers TEXT);
CREATE INDEX jobs_queued ON jobs(priority, seq) WHERE status = 'IN_QUEUE';
CREATE INDEX jobs_queued_endpoint ON jobs(endpoint) WHERE status = 'IN_QUEUE';
CREATE TABLE logs (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, timestamp REAL NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE webhooks (request_id TEXT PRIMARY KEY, url TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL, delivered_at REAL, last_error TEXT);
INSERT INTO jobs (request_id, endpoint, owner, payload, priority, status, created_at)
    VALUES ('queued', 'e/a', 'o', '{"n": 1}', 0, 'IN_QUEUE', 1);
INSERT INTO jobs (request_id, endpoint, owner, payload, priority, status, created_at, completed_at, webhook_url,
    result_status, result_body, metrics, result_headers)
    VALUES ('done', 'e/a', 'o', '{"n": 2}', 0, 'COMPLETED', 1, 2, 'https://Hooks.example.com/x', 200, '{"ok": true}', '{}', '{}');
INSERT INTO webhooks (request_id, url, next_attempt_at) VALUES ('done', 'https://Hooks.example.com/x', 2);
"""


def test_a_queue_written_by_the_previous_version_is_upgraded_in_place(open_store, tmp_path, backend):
    if backend != "sqlite":
        pytest.skip("SQLite's schema migration")
    with sqlite3.connect(tmp_path / "queue.sqlite3") as db:
        db.executescript(OLD_SCHEMA)
    store = open_store()
    assert store.get("queued").payload == {"n": 1} and store.queue_position("queued") == 0
    assert store.result("done").body == {"ok": True}
    [delivery] = store.webhooks_due(10)
    assert (delivery.request_id, delivery.owner, delivery.destination) == ("done", "o", "hooks.example.com:443")
    store.submit(job("new"))
    assert [j.request_id for j in store.claim("w", {"e/a": 2})] == ["queued", "new"]


def test_a_worker_with_a_warm_endpoint_takes_its_requests_first_for_a_while(open_store, clock):
    """Affinity: a worker that has an endpoint set up takes that endpoint's requests before a cold
    endpoint's head, at the head's priority only, and only while the head has waited less than
    `affinity_seconds` (10 s); without `warm` the order is exact."""
    store = open_store()
    store.submit(job("cold", "e/cold"))
    store.submit(job("warm-low", "e/warm", priority=Priority.LOW))
    assert [j.request_id for j in store.claim("w", {}, warm=["e/warm"])] == ["cold"]  # priorities stay strict
    store.submit(job("cold-2", "e/cold"))
    store.submit(job("warm-1", "e/warm"))
    store.submit(job("warm-2", "e/warm"))
    assert [j.request_id for j in store.claim("w", {"e/warm": 4}, warm=["e/warm"])] == ["warm-1", "warm-2", "warm-low"]
    store.submit(job("warm-3", "e/warm"))
    clock.now += 11  # cold-2 has waited long enough: it goes first now
    assert [j.request_id for j in store.claim("w", {}, warm=["e/warm"])] == ["cold-2"]
    assert [j.request_id for j in store.claim("w", {})] == ["warm-3"]


def test_release_by_a_worker_leaves_another_workers_lease_alone(open_store, clock):
    store = open_store()
    store.submit(job("a"))
    store.claim("w1", {})
    store.release(["a"], worker_id="w2")
    assert store.get("a").status is JobStatus.IN_PROGRESS
    store.release(["a"], worker_id="w1")
    requeued = store.get("a")
    assert requeued.status is JobStatus.IN_QUEUE and requeued.attempts == 0
    assert store.logs("a")[-1].message == "Interrupted by a server shutdown; requeued"


def test_queue_depths_and_history(open_store, clock):
    store = open_store()
    for rid, endpoint in [("a", "e/x"), ("b", "e/x"), ("c", "e/y")]:
        store.submit(job(rid, endpoint))
        clock.now += 1
    store.claim("w", {"e/x": 1})
    assert store.queue_depths() == {"e/x": {"IN_QUEUE": 1, "IN_PROGRESS": 1}, "e/y": {"IN_QUEUE": 1}}
    store.complete("a", OK)
    assert store.queue_depths() == {"e/x": {"IN_QUEUE": 1}, "e/y": {"IN_QUEUE": 1}}
    assert [info.request_id for info in store.owner_history("o")] == ["c", "b", "a"]
    assert [info.request_id for info in store.owner_history("o", endpoint="e/x", limit=1)] == ["b"]
    assert [info.request_id for info in store.owner_history("o", status=JobStatus.COMPLETED)] == ["a"]
    assert [info.request_id for info in store.owner_history("o", before=clock.now - 1.5)] == ["b", "a"]
    assert store.owner_history("someone-else") == []


def test_nodes_and_shared_secrets(open_store, clock):
    store = open_store()
    store.heartbeat_node("n1", {"role": "serve", "workers": {"cpu": "ready"}})
    assert store.nodes()["n1"]["workers"] == {"cpu": "ready"}
    clock.now += 60
    assert store.nodes() == {}  # not heard of for too long
    store.heartbeat_node("n1", {"role": "serve"})
    store.forget_node("n1")
    assert store.nodes() == {}
    first = store.shared_secret("k", lambda: b"one")
    assert first == b"one" and store.shared_secret("k", lambda: b"two") == b"one"


@pytest.fixture
def redis_nodes(redis_server, clock):
    """Two nodes on one Redis queue: a worker's (listening) and an API node's; with the queue's URL."""
    url = redis_server.queue_url()
    worker_node = RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3, clock=clock)
    api_node = RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3, clock=clock, listen=False)
    yield worker_node, api_node, url
    worker_node.close()
    api_node.close()


def test_redis_log_lines_of_a_short_request_go_with_its_completion(redis_server, redis_nodes, monkeypatch):
    """A worker's lines wait for the log writer's delay; a request that ends sooner takes them into its
    completion script, so another node reads them with the result and no separate write was made."""
    monkeypatch.setattr(redis_store, "LOG_WRITE_DELAY_SECONDS", 60.0)
    worker_node, api_node, url = redis_nodes
    events = url.rsplit("=", 1)[1] + ":events"
    worker_node.submit(job("a"))
    worker_node.claim("w", {})
    worker_node.append_logs("a", [("INFO", "step 1")])
    worker_node.append_logs("a", [("INFO", "step 2")])
    assert worker_node.logs("a")[-1].message == "step 2"  # this node reads its own lines at once
    events_before = redis_server.client().xlen(events)
    worker_node.append_logs("a", [("INFO", "step 3")])
    assert api_node.logs("a")[-1].message == "step 2"  # step 3 waits for the writer
    assert worker_node.complete("a", OK)
    assert [entry.message for entry in api_node.logs("a")] == ["step 1", "step 2", "step 3"]
    assert api_node.info("a").status is JobStatus.COMPLETED
    assert redis_server.client().xlen(events) == events_before + 1


def test_redis_log_lines_of_a_running_request_reach_other_nodes_after_the_delay(redis_nodes, monkeypatch):
    monkeypatch.setattr(redis_store, "LOG_WRITE_DELAY_SECONDS", 0.05)
    worker_node, api_node, _ = redis_nodes
    worker_node.submit(job("a"))
    worker_node.claim("w", {})
    worker_node.append_logs("a", [("INFO", "step 1")])
    deadline = time.monotonic() + 10
    while not api_node.logs("a"):
        assert time.monotonic() < deadline, "the log writer never wrote the line"
        time.sleep(0.02)
    assert [entry.message for entry in api_node.logs("a")] == ["step 1"]
    assert api_node.info("a").status is JobStatus.IN_PROGRESS
