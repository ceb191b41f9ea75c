"""Fair service between keys, and queue operations whose cost does not grow with the queue (#11)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from server.store import JobResult, NewJob, Priority
from server.store.redis import RedisJobStore
from server.store.sqlite import SqliteJobStore
from tests.fixtures.apps import occupy_worker, submit

CANCELLED = JobResult(status_code=499, body={"detail": "cancelled"}, error="cancelled", error_type="client_cancelled")


@pytest.fixture
def store(tmp_path):
    """A SQLite queue in memory-backed storage where there is some (fsync is then cheap: thousands
    of submits take a second), else in the test's folder."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    opened = SqliteJobStore(folder / "queue.sqlite3", lease_seconds=30, max_attempts=3)
    yield opened
    opened.close()
    if folder != tmp_path:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request):
    """The fairness rules hold on every backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("store")
    opened = RedisJobStore.from_url(request.getfixturevalue("redis_server").queue_url(), lease_seconds=30, max_attempts=3)
    request.addfinalizer(opened.close)
    return opened


def new(request_id: str, owner: str, priority: Priority = Priority.NORMAL) -> NewJob:
    return NewJob(request_id=request_id, endpoint="e/a", owner=owner, payload={}, priority=priority)


def claim_all(store) -> list[str]:
    order = []
    while jobs := store.claim("w", {}):
        order += [job.request_id for job in jobs]
        for job in jobs:
            store.complete(job.request_id, JobResult(status_code=200, body={}))
    return order


def test_keys_take_turns_within_a_priority_and_positions_follow_that_order(any_store):
    """Bug (#11): requests were served strictly by arrival, so a key that queued 8000 requests put
    another key's next request at position 7955. Within a priority, keys now take turns."""
    store = any_store
    alpha = [f"a{i}" for i in range(30)]
    for request_id in alpha:
        store.submit(new(request_id, "alpha"))
    assert [store.submit(new(f"b{i}", "beta")) for i in range(3)] == [1, 3, 5]
    assert store.submit(new("low", "gamma", Priority.LOW)) == 33
    assert store.submit(new("c0", "gamma")) == 2  # a third key joins the rotation at once
    positions = {request_id: store.queue_position(request_id) for request_id in [*alpha, "b0", "b1", "b2", "c0", "low"]}

    order = claim_all(store)
    assert order[:8] == ["a0", "b0", "c0", "a1", "b1", "a2", "b2", "a3"]
    assert order[8:] == alpha[4:] + ["low"]
    assert positions == {request_id: index for index, request_id in enumerate(order)}
    assert store.queue_position("a0") is None  # not queued any more


def test_a_key_that_empties_its_backlog_is_not_sent_to_the_back(any_store):
    store = any_store
    for i in range(20):
        store.submit(new(f"a{i}", "alpha"))
    for i in range(20):
        store.cancel(f"a{i}", CANCELLED)
    store.submit(new("b0", "beta"))
    store.submit(new("b1", "beta"))
    assert store.submit(new("a-again", "alpha")) == 1


def sqlite_steps(store, operation) -> int:
    """The SQLite virtual-machine instructions (in tens) `operation` runs on the store's connections:
    a count of the database work, free of the noise a timing has on a shared machine."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    connections = (store._durable_writer, store._writer, store._reader)
    for connection in connections:
        connection.set_progress_handler(tick, 10)
    try:
        operation()
    finally:
        for connection in connections:
            connection.set_progress_handler(None, 10)
    return steps


def test_submit_and_position_cost_does_not_grow_with_one_keys_backlog(store):
    """Bug (#11): submit throughput fell from 177/s to 55/s as one key queued 8000 requests: submit
    counted the queue ahead (and the endpoint's queue for `fal_max_queue_length`), and every status
    read counted it again. Both now cost O(log n) in the queue length."""

    def submits(tag: str) -> None:
        for i in range(5):
            store.submit(new(f"{tag}-{i}", "beta"), max_queue_length=100_000)
            store.submit(new(f"{tag}-a{i}", "alpha"), max_queue_length=100_000)

    for i in range(100):
        store.submit(new(f"a{i}", "alpha"))
    short = sqlite_steps(store, lambda: submits("short"))
    for i in range(100, 4000):
        store.submit(new(f"a{i}", "alpha"))
    long = sqlite_steps(store, lambda: submits("long"))
    assert long < 1.5 * short + 50, f"submits: {long} steps with 4000 queued against {short} with 100"
    assert sqlite_steps(store, lambda: store.queue_position("long-a0")) <= 50  # a few index pages at most
    assert store.queue_position("long-0") < 20  # behind beta's 5 earlier ones, one of alpha's per turn


def test_another_keys_request_waits_behind_one_request_of_a_big_backlog(make_client):
    """The same over HTTP: with one key's 20 requests waiting, another key's request is next but one."""
    client = make_client(api_keys=("alpha-key", "beta-key"))
    alpha, beta = {"Authorization": "Key alpha-key"}, {"Authorization": "Key beta-key"}
    occupy_worker(client, **alpha)
    for i in range(20):
        submit(client, {"tag": f"a{i}"}, headers=alpha)
    queued = submit(client, {"tag": "b"}, headers=beta)
    assert queued["queue_position"] == 1
    assert client.get(queued["status_url"], headers=beta).json()["queue_position"] == 1
    assert submit(client, {"tag": "a20"}, headers=alpha)["queue_position"] == 21
