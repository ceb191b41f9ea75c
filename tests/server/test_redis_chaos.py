"""Chaos on a three-node deployment (issue 13's acceptance): one redis-server, two `kiln serve` and one
`kiln worker` sharing `--queue` and `--storage`; 300 post-processing requests submitted round-robin
to the two API nodes; `kill -9` of the worker node while it holds requests, and of redis-server once
(restarted on the same AOF) while requests are still being submitted. Every accepted request
completes, its result reads the same from both API nodes, no webhook is delivered twice, and the
attempt log shows no request ran on two live workers."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx
import pytest

from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import KilnProcess
from tests.fixtures.redis_server import KilnWorker, start_redis_server
from tests.fixtures.webhook_receivers import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(170)]

REQUESTS = 300
LEASE_SECONDS = 6
ENDPOINT = "/queue/fal-ai/post-processing"
PREFIX = "chaos"


def test_three_nodes_survive_a_worker_and_a_redis_kill(tmp_path):
    redis_server = start_redis_server(tmp_path / "redis")
    queue = redis_server.queue_url(PREFIX)
    receiver = Receiver()
    common = (
        "--queue", queue, "--storage", str(tmp_path / "files"), "--lease-seconds", str(LEASE_SECONDS),
        "--allow-private-urls", "--log-level", "warning",
    )
    apis = [KilnProcess(tmp_path / f"api{index}", *common) for index in range(2)]
    worker = KilnWorker(tmp_path / "worker", *common, "--public-url", apis[0].url)
    nodes = [*apis, worker]
    db = redis_server.client()
    stop = threading.Event()
    try:
        for node in nodes:  # from this thread: a node dies with the thread that started it
            node.spawn()
        for api in apis:
            api.wait_healthy()
        worker_node = worker.wait_ready().node_id(queue)

        accepted: dict[str, int] = {}  # request id -> the API node that accepted it
        submitted = refused = 0
        lock = threading.Lock()
        indices = iter(range(REQUESTS))

        def submit(index: int) -> None:
            nonlocal submitted, refused
            base = apis[index % 2].url
            image = data_uri(png_bytes(gradient_image(96 + index % 7, 64)))
            body = {"image_url": image, "enable_vignette": True, "enable_grain": True, "enable_blur": True}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stop.is_set():  # a restarting queue answers 503
                try:
                    response = httpx.post(f"{base}{ENDPOINT}?fal_webhook={receiver.url}", json=body, timeout=10)
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    with lock:
                        accepted[response.json()["request_id"]] = index % 2
                        submitted += 1
                    return
                with lock:
                    refused += 1
                time.sleep(0.2)

        def submit_some() -> None:
            while not stop.is_set():
                with lock:
                    index = next(indices, None)
                if index is None:
                    return
                submit(index)
                time.sleep(0.05)  # spread over seconds, so the kills land among submissions

        submitters = [threading.Thread(target=submit_some, daemon=True) for _ in range(4)]
        for thread in submitters:
            thread.start()

        # 1. kill -9 the worker node while it holds requests
        def held_by_worker() -> bool:
            leased = db.zrange(f"{PREFIX}:leases", 0, -1)
            pipe = db.pipeline(transaction=False)
            for rid in leased:
                pipe.hget(f"{PREFIX}:job:{rid.decode()}", "lease_owner")
            return any((owner or b"").decode().startswith(worker_node) for owner in pipe.execute())

        deadline = time.monotonic() + 60
        while not held_by_worker():
            assert time.monotonic() < deadline, "the worker node never took a request"
            time.sleep(0.002)
        worker.kill()
        worker_killed_at = time.time()

        # 2. kill -9 redis-server while requests are still submitted, and restart it on its AOF
        deadline = time.monotonic() + 60
        while submitted < REQUESTS * 2 // 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        redis_killed_at = time.monotonic()
        redis_server.restart()
        redis_down = time.monotonic() - redis_killed_at
        for thread in submitters:
            thread.join(90)
        assert len(accepted) == REQUESTS

        # every accepted request completes (the worker node's leases are reclaimed after LEASE_SECONDS)
        db = redis_server.client()
        deadline = time.monotonic() + 60
        while db.zcard(f"{PREFIX}:done") < REQUESTS:
            assert time.monotonic() < deadline, f"{db.zcard(f'{PREFIX}:done')} of {REQUESTS} completed"
            time.sleep(0.2)

        # each result reads the same from both API nodes, and so does its image
        with httpx.Client(timeout=30) as client:
            for request_id in accepted:
                results = [client.get(f"{api.url}{ENDPOINT}/requests/{request_id}") for api in apis]
                assert [r.status_code for r in results] == [200, 200], results[0].text
                assert results[0].json() == results[1].json()
                path = urlsplit(results[0].json()["images"][0]["url"]).path
                files = [client.get(api.url + path) for api in apis]
                assert [f.status_code for f in files] == [200, 200] and files[0].content == files[1].content

        # no webhook delivered twice (all are delivered: wait for the last ones)
        deadline = time.monotonic() + 60
        while len({headers["webhook-id"] for headers, _, _ in receiver.deliveries}) < REQUESTS:
            assert time.monotonic() < deadline, f"{len(receiver.deliveries)} webhooks delivered"
            time.sleep(0.2)
        time.sleep(1.0)
        deliveries = Counter(headers["webhook-id"] for headers, _, _ in receiver.deliveries)
        assert set(deliveries) == set(accepted)
        assert max(deliveries.values()) == 1, [rid for rid, count in deliveries.items() if count > 1]
        assert all(json.loads(body)["status"] == "OK" for _, body, _ in receiver.deliveries)

        # the attempt log: a request ran on a second worker only after the first one died
        reclaimed = returned = 0
        for request_id in accepted:
            log = [json.loads(entry) for entry in db.lrange(f"{PREFIX}:attempts:{request_id}", 0, -1)]
            first_run: dict[str, float] = {}
            for kind, worker_id, at in log:
                if kind == "running":
                    first_run.setdefault(worker_id, at)
                elif kind == "returned":  # handed to it, and lost on the way (the redis kill): it never ran it
                    first_run.pop(worker_id)
                    returned += 1
            workers = list(first_run)
            for earlier, later in zip(workers, workers[1:]):
                assert earlier.startswith(worker_node), (request_id, log)  # only the killed node lost requests
                assert first_run[later] > worker_killed_at, (request_id, log)
            claimed = [worker_id for kind, worker_id, _ in log if kind == "claimed"]
            reclaimed += len(claimed) > 1 and claimed[0].startswith(worker_node)
        assert reclaimed >= 1, "nothing the killed worker node held was run again"
        print(
            f"chaos: {REQUESTS} accepted ({refused} submits refused or failed and retried), redis down "
            f"{redis_down:.3f}s, {reclaimed} request(s) of the killed worker run again, {returned} hand-off(s) "
            f"the restart lost given back, "
            f"{sum(deliveries.values())} webhooks for {len(deliveries)} requests"
        )
    finally:
        stop.set()
        for node in nodes:
            node.stop()
        receiver.close()
        redis_server.stop()
