"""Prometheus metrics, served at `/metrics` by every node (server/routes/metrics.py).

Two kinds:
- Events counted where they happen, in this process (prometheus-client's default registry): requests
  submitted and completed, failures by `error_type`, the latency histograms (queue wait, run, end to
  end), webhook attempts, pipeline set-up time. Each node counts what it did; sum over nodes in
  PromQL (`sum by (endpoint) (rate(kiln_requests_completed_total[5m]))`).
- State read at scrape time (`ServerCollector`): queue depth and requests in progress from the queue
  store, which every node shares, so any node reports the whole queue; worker state and device memory
  of this node's workers.

The functions below are what the rest of the server calls, one line where each event happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# seconds: from a trivial post-processing job (milliseconds) to a long FLUX request (minutes)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
SETUP_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800)
WORKER_STATES = ("starting", "ready", "busy", "failed", "stopped")

REQUESTS_SUBMITTED = Counter(
    "kiln_requests_submitted", "Requests accepted into the queue by this node", ["endpoint", "priority"]
)
REQUESTS_COMPLETED = Counter(
    "kiln_requests_completed", "Requests this node's workers completed, by outcome (ok or error)", ["endpoint", "outcome"]
)
REQUEST_FAILURES = Counter(
    "kiln_request_failures", "Requests this node's workers completed with an error, by fal's error_type", ["endpoint", "error_type"]
)
QUEUE_WAIT = Histogram(
    "kiln_queue_wait_seconds", "From submit until a worker started the request", ["endpoint"], buckets=LATENCY_BUCKETS
)
RUN_TIME = Histogram(
    "kiln_run_seconds", "From a worker starting the request until it completed", ["endpoint"], buckets=LATENCY_BUCKETS
)
END_TO_END = Histogram(
    "kiln_request_duration_seconds", "From submit until the request completed", ["endpoint"], buckets=LATENCY_BUCKETS
)
WEBHOOK_DELIVERIES = Counter(
    "kiln_webhook_deliveries", "Webhook delivery attempts by this node, by outcome (delivered or failed)", ["outcome"]
)
PIPELINE_SETUP = Histogram(
    "kiln_pipeline_setup_seconds",
    "Setting an endpoint's pipeline up on a device: loading weights, compiling and warming up",
    ["endpoint", "device"],
    buckets=SETUP_BUCKETS,
)


def request_submitted(endpoint: str, priority: Any) -> None:
    REQUESTS_SUBMITTED.labels(endpoint, getattr(priority, "name", str(priority)).lower()).inc()


def request_completed(job: Any, error_type: str | None = None) -> None:
    """A worker completed `job` (a `server.store.Job`), with `error_type` if it failed."""
    try:
        now = time.time()
        endpoint = job.endpoint
        started = job.started_at or now
        QUEUE_WAIT.labels(endpoint).observe(max(0.0, started - job.created_at))
        RUN_TIME.labels(endpoint).observe(max(0.0, now - started))
        END_TO_END.labels(endpoint).observe(max(0.0, now - job.created_at))
        REQUESTS_COMPLETED.labels(endpoint, "error" if error_type else "ok").inc()
        if error_type:
            REQUEST_FAILURES.labels(endpoint, error_type).inc()
    except Exception:  # a metric must never fail a request
        logger.exception("could not record the completion of %s", getattr(job, "request_id", "?"))


def webhook_attempted(delivered: bool) -> None:
    WEBHOOK_DELIVERIES.labels("delivered" if delivered else "failed").inc()


def pipeline_set_up(endpoint: str, device: Any, seconds: float) -> None:
    PIPELINE_SETUP.labels(endpoint, str(device)).observe(seconds)


class ServerCollector(Collector):
    """The gauges of one running server, read when Prometheus scrapes; `services` returns its
    current `server.services.Services`."""

    def __init__(self, services: Callable[[], Any]) -> None:
        self._services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._queue()
        yield from self._workers()

    def _queue(self) -> Iterator[GaugeMetricFamily]:
        store = self._services().store
        waiting = GaugeMetricFamily(
            "kiln_queue_depth",
            "Requests waiting in the shared queue, per endpoint and priority (`all` where the queue store "
            "does not count priorities apart)",
            labels=["endpoint", "priority"],
        )
        running = GaugeMetricFamily(
            "kiln_requests_in_progress", "Requests running on any node's workers, per endpoint", labels=["endpoint"]
        )
        try:
            depths = store.queue_depths()
            by_priority = store.queue_depths_by_priority() if hasattr(store, "queue_depths_by_priority") else None
        except Exception as error:  # the queue is unreachable: report what this node knows
            logger.warning("metrics: could not read the queue depths: %s", error)
            depths, by_priority = {}, None
        for endpoint, counts in sorted(depths.items()):
            if by_priority is None:
                waiting.add_metric([endpoint, "all"], counts.get("IN_QUEUE", 0))
            running.add_metric([endpoint], counts.get("IN_PROGRESS", 0))
        for endpoint, counts in sorted((by_priority or {}).items()):
            for priority, count in sorted(counts.items()):
                waiting.add_metric([endpoint, priority], count)
        yield waiting
        yield running

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "kiln_worker_state", "1 for the state each of this node's workers is in", labels=["device", "state"]
        )
        memory = GaugeMetricFamily(
            "kiln_device_memory_bytes",
            "Memory of this node's CUDA devices: allocated and reserved by Kiln's tensors, used by every "
            "process and the total",
            labels=["device", "kind"],
        )
        pool = getattr(self._services(), "pool", None)
        states = pool.states() if pool is not None else {}
        for device, current in sorted(states.items()):
            current = current.split(":", 1)[0]
            for name in WORKER_STATES:
                state.add_metric([device, name], 1.0 if current == name else 0.0)
        yield state
        for device in sorted(states):
            if device.startswith("cuda"):
                for kind, value in _cuda_memory(device).items():
                    memory.add_metric([device, kind], value)
        yield memory


class _Everything(Collector):
    """prometheus-client's default registry (the counters, the process figures) and one server's gauges."""

    def __init__(self, services: Callable[[], Any]) -> None:
        self._server = ServerCollector(services)

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()
        yield from self._server.collect()


def registry_for(services: Callable[[], Any]) -> CollectorRegistry:
    """Everything one server's `/metrics` shows; `services` returns its current `Services`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Everything(services))
    return registry


def serve_on_port(services: Callable[[], Any], port: int, host: str = "0.0.0.0") -> Any:
    """`/metrics` on a port of its own, for `kiln worker`, which serves no HTTP API (a daemon thread);
    returns the HTTP server (its `shutdown` stops it)."""
    server, _ = start_http_server(port, addr=host, registry=registry_for(services))
    logger.info("metrics at http://%s:%d/metrics", host, port)
    return server


def _cuda_memory(device: str) -> dict[str, float]:
    import torch

    try:
        free, total = torch.cuda.mem_get_info(device)
        return {
            "allocated": torch.cuda.memory_allocated(device),
            "reserved": torch.cuda.memory_reserved(device),
            "used": total - free,
            "total": total,
        }
    except Exception as error:  # a device that failed: its state says so
        logger.debug("metrics: no memory figures for %s: %s", device, error)
        return {}
