"""Several Kiln processes on one Redis queue behave as one Kiln: a request submitted to one node runs
on another, is polled, streamed, cancelled and fetched anywhere, and `/health` on any node shows the
whole pool."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest

from server.keys import shared_webhook_key
from server.store import JobResult, NewJob
from server.store.redis import RedisJobStore
from server.webhooks import WebhookSigner
from testkit.servers import REPO, KilnProcess, wait_completed
from tests.fixtures.apps import STEPS, TEST_PIPELINES
from tests.fixtures.redis_server import KilnWorker, start_redis_server


def test_a_cancel_on_one_node_reaches_the_worker_running_the_request_on_another(redis_server):
    """Cancelling a running request is a flag in the queue and an event every node hears, so the
    node running it stops it at its next step without waiting for its heartbeat."""
    url = redis_server.queue_url()
    api = RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3)
    gpu = RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3)
    heard = threading.Event()
    gpu.changes.on_cancel(lambda request_id, error_type: heard.set() if (request_id, error_type) == ("r", "client_disconnected") else None)
    try:
        api.submit(NewJob(request_id="r", endpoint="e/a", owner="o", payload={}))
        assert [job.request_id for job in gpu.claim("w", {})] == ["r"]
        disconnected = JobResult(status_code=499, body={}, error="gone", error_type="client_disconnected")
        assert api.cancel("r", disconnected).value == "CANCELLATION_REQUESTED"
        assert heard.wait(5)
        assert gpu.renew("w", ["r"]) == {"r"}  # and the heartbeat says so too
    finally:
        api.close()
        gpu.close()


def test_every_node_signs_webhooks_with_the_same_key(redis_server):
    url = redis_server.queue_url()
    stores = [RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3, listen=False) for _ in range(2)]
    try:
        first, second = (WebhookSigner(shared_webhook_key(store)).jwks() for store in stores)
        assert first == second
    finally:
        for store in stores:
            store.close()


def test_two_api_apps_on_one_queue_see_each_others_requests(make_client, redis_server):
    queue = redis_server.queue_url()
    one, two = make_client(queue=queue), make_client(queue=queue, run_workers=False)
    queued = one.post(STEPS, json={"steps": 2, "tag": "shared"}).json()
    done = wait_completed(two, queued["status_url"])
    assert done["status"] == "COMPLETED"
    assert two.get(queued["response_url"]).json()["tag"] == "shared"
    assert one.get("/.well-known/jwks.json").json() == two.get("/.well-known/jwks.json").json()
    health = two.get("/health")
    assert health.status_code == 200, health.json()  # no workers of its own, but the pool has one
    roles = sorted(node["role"] for node in health.json()["nodes"].values())
    assert roles == ["api", "serve"]


def test_an_api_node_without_any_worker_in_the_pool_is_unhealthy(make_client, redis_server):
    client = make_client(queue=redis_server.queue_url(), run_workers=False)
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["workers"] == {}
    assert client.post(STEPS, json={}).status_code == 200  # it still queues requests, as fal does


def test_kiln_worker_refuses_the_embedded_queue(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "server.cli", "worker", "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode != 0 and "--queue redis://" in completed.stderr


@pytest.mark.slow
def test_an_api_node_and_a_worker_node(redis_server, tmp_path):
    """`kiln serve --no-workers` and `kiln worker` as separate processes sharing queue and storage."""
    queue = redis_server.queue_url()
    common = ("--queue", queue, "--storage", str(tmp_path / "files"))
    api = KilnProcess(tmp_path / "api", "--no-workers", *common, pipelines=TEST_PIPELINES)
    worker = KilnWorker(tmp_path / "worker", *common, "--public-url", api.url, pipelines=TEST_PIPELINES)
    worker.spawn()
    try:
        api.start()
        with httpx.Client(base_url=api.url, timeout=30) as client:
            long = client.post(STEPS, json={"steps": 500, "step_seconds": 0.02, "tag": "long"}).json()
            deadline = time.monotonic() + 30
            while client.get(long["status_url"]).json()["status"] != "IN_PROGRESS":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            deadline = time.monotonic() + 10  # a node's record is as old as its last heartbeat (2 s)
            while True:
                health = client.get("/health").json()
                workers = [node for node in health["nodes"].values() if node["role"] == "worker"]
                if workers and workers[0]["workers"] == {"cpu": "busy"} or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert health["queue"] == {"kiln-test/steps": {"IN_PROGRESS": 1}}
            assert len(workers) == 1 and workers[0]["workers"] == {"cpu": "busy"}
            assert workers[0]["pipelines"] == {"cpu": {"kiln-test/steps": "ready"}}

            started = time.monotonic()
            assert client.put(long["cancel_url"]).status_code == 202
            done = wait_completed(client, long["status_url"])
            assert done["error_type"] == "client_cancelled" and time.monotonic() - started < 10

            events = []
            queued = client.post(STEPS, json={"steps": 3, "step_seconds": 0.05, "tag": "streamed"}).json()
            with client.stream("GET", queued["status_url"] + "/stream?logs=1") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        events.append(httpx.Response(200, content=line[6:]).json())
            assert events[-1]["status"] == "COMPLETED"
            steps = [log["message"] for event in events for log in event["logs"] or [] if log["message"].startswith("step")]
            assert steps == ["step 1/3", "step 2/3", "step 3/3"]
            assert client.get(queued["response_url"]).json()["tag"] == "streamed"
    finally:
        worker.stop()
        api.stop()


@pytest.mark.slow
def test_a_sentinel_failover_keeps_the_queue_on_the_promoted_replica(tmp_path):
    """`redis+sentinel://`: the store follows the primary that Sentinel names, so a request accepted
    before the primary died (and replicated) is still there, and the queue goes on, after failover."""
    primary = start_redis_server(tmp_path / "primary")
    replica = start_redis_server(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    sentinel = None
    store = None
    try:
        deadline = time.monotonic() + 20
        while replica.client().info("replication")["master_link_status"] != "up":
            assert time.monotonic() < deadline, "the replica never synced"
            time.sleep(0.05)
        sentinel = start_redis_server(
            tmp_path / "sentinel",
            "--sentinel",
            config=(
                f"sentinel monitor kiln 127.0.0.1 {primary.port} 1\n"
                "sentinel down-after-milliseconds kiln 300\n"
                "sentinel failover-timeout kiln 3000\n"
            ),
        )
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/kiln/0?prefix=ha"
        store = RedisJobStore.from_url(url, lease_seconds=30, max_attempts=3, listen=False)
        store.submit(NewJob(request_id="before", endpoint="e/a", owner="o", payload={"n": 1}))
        assert primary.client().wait(1, 5000) == 1  # replicated before the primary dies

        primary.kill()
        watcher = sentinel.client()
        deadline = time.monotonic() + 30
        while int(watcher.sentinel_get_master_addr_by_name("kiln")[1]) != replica.port:
            assert time.monotonic() < deadline, "Sentinel never promoted the replica"
            time.sleep(0.1)

        deadline = time.monotonic() + 10  # the promoted replica may still refuse writes for a moment
        while True:
            try:
                store.submit(NewJob(request_id="after", endpoint="e/a", owner="o", payload={"n": 2}))
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert store.info("before").status.value == "IN_QUEUE"
        assert [job.request_id for job in store.claim("w", {"e/a": 2})] == ["before", "after"]
    finally:
        if store is not None:
            store.close()
        for server in (sentinel, replica, primary):
            if server is not None:
                server.stop()
