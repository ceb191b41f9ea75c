"""`/metrics`: Prometheus's text format, read before and after requests to see the figures move.

Counters are per process (several test apps share them), so every check is a difference between
two scrapes of the same app; the gauges are read from the app's own queue and workers.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server import metrics
from testkit.servers import free_port
from tests.fixtures.apps import occupy_worker, submit, wait_status
from tests.fixtures.webhook_receivers import Receiver

STEPS = "kiln-test/steps"


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Sample name and sorted labels -> value, for every sample `/metrics` answers."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_for(client, condition, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(client)
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def test_counters_and_latency_histograms_move_with_a_request(client):
    before = scrape(client)
    queued = submit(client, {"steps": 2})
    wait_status(client, queued["status_url"], "COMPLETED")
    after = wait_for(client, lambda s: moved(before, s, "kiln_requests_completed_total", endpoint=STEPS, outcome="ok") >= 1)
    assert moved(before, after, "kiln_requests_submitted_total", endpoint=STEPS, priority="normal") == 1
    assert moved(before, after, "kiln_requests_completed_total", endpoint=STEPS, outcome="ok") == 1
    for histogram in ("kiln_queue_wait_seconds", "kiln_run_seconds", "kiln_request_duration_seconds"):
        assert moved(before, after, f"{histogram}_count", endpoint=STEPS) == 1, histogram
        assert moved(before, after, f"{histogram}_bucket", endpoint=STEPS, le="+Inf") == 1, histogram
    assert moved(before, after, "kiln_request_duration_seconds_sum", endpoint=STEPS) >= moved(
        before, after, "kiln_run_seconds_sum", endpoint=STEPS
    )
    # this app's worker set the pipeline up for the request (a fresh app, so a fresh set-up)
    assert moved(before, after, "kiln_pipeline_setup_seconds_count", endpoint=STEPS, device="cpu") == 1
    # the process collectors come with prometheus-client's default registry
    assert value(after, "process_resident_memory_bytes") > 0


def test_failures_are_counted_by_error_type(client):
    before = scrape(client)
    low = {"X-Fal-Queue-Priority": "low"}
    queued = submit(client, {"fail_with": "error"}, headers=low)
    wait_status(client, queued["status_url"], "COMPLETED")
    after = wait_for(client, lambda s: moved(before, s, "kiln_request_failures_total", endpoint=STEPS, error_type="runner_server_error") >= 1)
    assert moved(before, after, "kiln_requests_submitted_total", endpoint=STEPS, priority="low") == 1
    assert moved(before, after, "kiln_request_failures_total", endpoint=STEPS, error_type="runner_server_error") == 1
    assert moved(before, after, "kiln_requests_completed_total", endpoint=STEPS, outcome="error") == 1


def test_queue_depth_in_progress_and_worker_state_are_read_at_scrape_time(client):
    idle = scrape(client)
    assert value(idle, "kiln_worker_state", device="cpu", state="ready") == 1
    assert value(idle, "kiln_worker_state", device="cpu", state="busy") == 0
    blocker = occupy_worker(client)
    waiting = [submit(client, {"steps": 1}) for _ in range(2)]
    busy = wait_for(client, lambda s: value(s, "kiln_worker_state", device="cpu", state="busy") == 1)
    assert value(busy, "kiln_worker_state", device="cpu", state="busy") == 1
    assert value(busy, "kiln_requests_in_progress", endpoint=STEPS) == 1
    depth = sum(v for (name, labels), v in busy.items() if name == "kiln_queue_depth" and ("endpoint", STEPS) in labels)
    assert depth == 2
    for queued in (blocker, *waiting):
        client.put(queued["cancel_url"])
    for queued in (blocker, *waiting):
        wait_status(client, queued["status_url"], "COMPLETED")
    drained = wait_for(client, lambda s: value(s, "kiln_requests_in_progress", endpoint=STEPS) == 0)
    assert value(drained, "kiln_requests_in_progress", endpoint=STEPS) == 0


def test_webhook_deliveries_and_failures_are_counted(make_client):
    client = make_client(allow_private_urls=True, webhook_first_retry_seconds=0.05)
    receiver = Receiver(failures=1)
    try:
        before = scrape(client)
        client.post(f"/queue/{STEPS}?fal_webhook={receiver.url}", json={"steps": 1}).raise_for_status()
        receiver.wait_for(2)
        after = wait_for(client, lambda s: moved(before, s, "kiln_webhook_deliveries_total", outcome="delivered") >= 1)
    finally:
        receiver.close()
    assert moved(before, after, "kiln_webhook_deliveries_total", outcome="failed") == 1
    assert moved(before, after, "kiln_webhook_deliveries_total", outcome="delivered") == 1


def test_metrics_is_for_prometheus_not_for_the_api_schema(client):
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_a_worker_node_serves_metrics_on_a_port_of_its_own():
    """`kiln worker --metrics-port`: a node without the HTTP API still reports its workers and the queue."""
    store = SimpleNamespace(queue_depths=lambda: {"fal-ai/post-processing": {"IN_QUEUE": 3, "IN_PROGRESS": 1}})
    pool = SimpleNamespace(states=lambda: {"cuda:0": "busy", "cuda:1": "failed: CUDA error"})
    services = SimpleNamespace(store=store, pool=pool)
    port = free_port()
    server = metrics.serve_on_port(lambda: services, port, host="127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        server.shutdown()
    assert 'kiln_queue_depth{endpoint="fal-ai/post-processing",priority="all"} 3.0' in text
    assert 'kiln_requests_in_progress{endpoint="fal-ai/post-processing"} 1.0' in text
    assert 'kiln_worker_state{device="cuda:0",state="busy"} 1.0' in text
    assert 'kiln_worker_state{device="cuda:1",state="failed"} 1.0' in text
    assert "# HELP kiln_requests_submitted_total" in text  # and the process's counters
