"""Status reads cost the same whatever the size of the request's payload or result (#10)."""

from __future__ import annotations

import statistics
import time
import uuid

import pytest

from server.store import NewJob
from tests.fixtures.apps import occupy_worker, submit

PAYLOAD_BYTES = 60 * 1024 * 1024


def median_seconds(read, times: int = 5) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        read()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@pytest.mark.parametrize("queue_backend", ["sqlite", "redis"])
def test_polling_a_request_with_a_60_mb_payload_is_as_quick_as_a_small_one(make_client):
    """Bug (#10): every status read loaded and parsed the request's whole payload: with 90 MB each
    poll took 0.5 s, and `/health` stalled 0.4 s in every second while a sync run waited on one.
    Status reads (status, its stream, the sync run's wait) now read neither payload nor result."""
    client = make_client()
    occupy_worker(client)
    small = submit(client, {"tag": "small"})
    services = client.app.state.services
    big_id = str(uuid.uuid4())
    owner = services.store.get(small["request_id"]).owner
    services.store.submit(NewJob(request_id=big_id, endpoint="kiln-test/steps", owner=owner, payload={"tag": "x" * PAYLOAD_BYTES}))
    big_status = small["status_url"].replace(small["request_id"], big_id)

    assert client.get(big_status).json()["queue_position"] == 1
    small_poll = median_seconds(lambda: client.get(small["status_url"]))
    big_poll = median_seconds(lambda: client.get(big_status))
    health = median_seconds(lambda: client.get("/health"))
    assert big_poll < small_poll + 0.05, f"{big_poll:.3f}s a poll with the 60 MB payload, {small_poll:.3f}s without"
    assert health < 0.1
    with client.stream("GET", big_status + "/stream") as stream:
        start = time.perf_counter()
        first = next(line for line in stream.iter_lines() if line.startswith("data:"))
        assert time.perf_counter() - start < 0.25 and '"IN_QUEUE"' in first
