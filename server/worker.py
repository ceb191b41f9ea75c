"""The in-process worker pool: one worker thread per CUDA device (one CPU worker without CUDA).

A worker claims the next request and any queued requests of the same endpoint (up to the
pipeline's batch size), decodes them on host threads, runs compatible ones through one `predict`
call, encodes and completes each. It keeps the pipelines it has set up warm and, when the device
runs out of memory, evicts the least recently used ones and tries again. A request's failure,
out-of-memory included, completes that request with an error; the worker carries on. A separate
heartbeat thread renews the leases of running requests and relays cancellations.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

import server
from server.context import Interrupted, MediaIO, RequestContext
from server.errors import Cancelled, EndpointUnavailable, FieldError, KilnError
from server.registry import Registry
from server.store import Job, JobResult, JobStore
from server.weights import WeightsStore

logger = logging.getLogger(__name__)

OUT_OF_MEMORY = KilnError(
    "The device ran out of memory running this request; try a smaller image or fewer images",
    status_code=503,
    error_type="out_of_memory",
)


def resolve_devices(setting: str) -> list[torch.device]:
    """`auto` -> every CUDA device, else the CPU; otherwise a comma-separated list like `cuda:0,cuda:1`."""
    if setting == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    if setting == "cuda":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device(part.strip()) for part in setting.split(",") if part.strip()]


def is_fatal_device_error(error: BaseException) -> bool:
    """Errors after which the CUDA context is unusable (illegal address, device-side assert)."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return isinstance(error, accelerator_error) or (isinstance(error, RuntimeError) and "CUDA error" in str(error))


def exit_process() -> None:
    logger.critical("exiting so a supervisor restarts Kiln; the running requests will be retried")
    os._exit(70)


class Worker(threading.Thread):
    def __init__(
        self,
        device: torch.device,
        *,
        worker_id: str,
        store: JobStore,
        registry: Registry,
        weights: WeightsStore,
        media: MediaIO,
        max_batch_size: int,
        on_fatal_error: Callable[[], None],
        stopping: threading.Event,
    ) -> None:
        super().__init__(name=f"kiln-worker-{device}", daemon=True)
        self.device = device
        self.worker_id = worker_id
        self.state = "starting"
        self._store = store
        self._registry = registry
        self._weights = weights
        self._media = media
        self._batch_limits = {
            endpoint.endpoint_id: min(max_batch_size, endpoint.pipeline.max_batch_size)
            for endpoint in registry
            if endpoint.pipeline is not None
        }
        self._on_fatal_error = on_fatal_error
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._running: dict[str, RequestContext] = {}
        self._running_lock = threading.Lock()
        self._host_threads = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)))
        self._stopping = stopping

    # -- what the pool sees ----------------------------------------------------------------

    def running(self) -> dict[str, RequestContext]:
        with self._running_lock:
            return dict(self._running)

    def run(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.state = "ready"
        while not self._stopping.is_set():
            try:
                jobs = self._store.claim(self.worker_id, self._batch_limits)
            except Exception:
                logger.exception("claiming from the queue failed; retrying")
                time.sleep(1.0)
                continue
            if not jobs:
                self._store.wait_for_work(0.5)
                continue
            self.state = "busy"
            self.process(jobs)
            self.state = "ready"
        self._host_threads.shutdown(wait=False)

    # -- one claimed batch -----------------------------------------------------------------

    def process(self, jobs: Sequence[Job]) -> None:
        requests = [
            RequestContext(job, store=self._store, media=self._media, stopping=self._stopping) for job in jobs
        ]
        with self._running_lock:
            self._running.update((r.request_id, r) for r in requests)
        try:
            self._process(jobs, requests)
        finally:
            with self._running_lock:
                for request in requests:
                    self._running.pop(request.request_id, None)

    def _process(self, jobs: Sequence[Job], requests: Sequence[RequestContext]) -> None:
        endpoint = self._registry.get(jobs[0].endpoint)
        try:
            if endpoint is None or endpoint.pipeline is None:
                raise EndpointUnavailable(f"Endpoint {jobs[0].endpoint} is not available on this server")
            pipeline = self._pipeline_for(endpoint.endpoint_id, endpoint.pipeline)
        except Exception as error:
            for request in requests:
                self._fail(request, error)
            return

        def decode(job: Job, request: RequestContext) -> Any:
            request.log(f"Running on {self.device} (attempt {job.attempts})")
            with request.timed("decode"):
                request.inputs = endpoint.pipeline.Input.model_validate(job.payload)
                request.raise_if_cancelled()
                return pipeline.decode(request.inputs, request)

        groups: dict[Any, list[tuple[RequestContext, Any]]] = {}
        for request, outcome in zip(requests, self._on_host(decode, list(zip(jobs, requests)))):
            if isinstance(outcome, BaseException):
                self._fail(request, outcome)
                continue
            item = outcome
            key = pipeline.batch_key(item)
            groups.setdefault(("batch", key) if key is not None else ("alone", request.request_id), []).append(
                (request, item)
            )
        for group in groups.values():
            limit = max(1, pipeline.batch_limit(group[0][1]))
            for start in range(0, len(group), limit):
                self._predict_and_finish(pipeline, group[start : start + limit])

    def _predict_and_finish(self, pipeline: Any, group: list[tuple[RequestContext, Any]]) -> None:
        requests = [request for request, _ in group]
        live = [(r, item) for r, item in group if not r.cancelled.is_set()]
        for request in requests:
            if request.cancelled.is_set():
                self._fail(request, Cancelled())
        if not live:
            return
        requests = [request for request, _ in live]
        try:
            start = time.perf_counter()
            predictions = pipeline.predict([item for _, item in live], requests)
            elapsed = time.perf_counter() - start
        except torch.OutOfMemoryError:
            self._release_memory(keep=pipeline)
            if len(live) > 1:
                logger.warning("out of memory on a batch of %d; running them one at a time", len(live))
                for single in live:
                    self._predict_and_finish(pipeline, [single])
            else:
                self._fail(requests[0], OUT_OF_MEMORY)
            return
        except Exception as error:
            if is_fatal_device_error(error):
                logger.critical("fatal device error on %s: %s", self.device, error)
                self._on_fatal_error()
            for request in requests:
                self._fail(request, error)
            return
        for request in requests:
            request.timings["predict"] = elapsed
            request.provenance["batch_size"] = len(requests)
        self._on_host(
            lambda request, prediction: self._encode_and_complete(pipeline, request, prediction),
            list(zip(requests, predictions)),
        )

    def _on_host(self, fn: Callable[..., Any], calls: list[tuple]) -> list[Any]:
        """`fn(*args)` for each call, in parallel host threads when there are several; an exception
        is returned in place of its result."""

        def guarded(args: tuple) -> Any:
            try:
                return fn(*args)
            except Exception as error:
                return error

        if len(calls) == 1:
            return [guarded(calls[0])]
        return list(self._host_threads.map(guarded, calls))

    def _encode_and_complete(self, pipeline: Any, request: RequestContext, prediction: Any) -> None:
        try:
            request.raise_if_cancelled()
            with request.timed("encode"):
                output = pipeline.encode(prediction, request)
        except Exception as error:
            self._fail(request, error)
            return
        self._succeed(request, output)

    # -- completion ------------------------------------------------------------------------

    def _succeed(self, request: RequestContext, output: BaseModel) -> None:
        inference_time = sum(request.timings.values())
        body = output.model_dump(mode="json")
        body["provenance"] = {
            "endpoint": request.endpoint,
            "request_id": request.request_id,
            "kiln_version": server.__version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": _device_name(self.device),
            "attempt": request.attempt,
            **request.provenance,
            "timings": {stage: round(seconds, 6) for stage, seconds in request.timings.items()},
        }
        request.log(f"Completed in {inference_time:.3f}s")
        self._store.complete(
            request.request_id, JobResult(status_code=200, body=body, metrics={"inference_time": inference_time})
        )

    def _fail(self, request: RequestContext, error: BaseException) -> None:
        if isinstance(error, Interrupted):
            self._store.release([request.request_id])
            return
        if isinstance(error, ValidationError):
            error = FieldError(tuple(error.errors()[0]["loc"]), error.errors()[0]["msg"])
        if not isinstance(error, KilnError):
            logger.error("request %s failed", request.request_id, exc_info=error)
            error = KilnError(f"{type(error).__name__}: {error}", error_type="runner_server_error")
        request.log(error.message, level="ERROR")
        self._store.complete(request.request_id, JobResult.from_error(error))

    # -- warm pipelines --------------------------------------------------------------------

    def _pipeline_for(self, endpoint_id: str, pipeline_class: type) -> Any:
        if endpoint_id in self._loaded:
            self._loaded.move_to_end(endpoint_id)
            return self._loaded[endpoint_id]
        reason = pipeline_class.unavailable_reason(self._weights)
        if reason:
            raise EndpointUnavailable(reason)
        while True:
            pipeline = pipeline_class()
            try:
                pipeline.setup(self.device, self._weights)
                break
            except torch.OutOfMemoryError:
                del pipeline
                if not self._evict_one():
                    raise OUT_OF_MEMORY from None
        self._loaded[endpoint_id] = pipeline
        logger.info("%s is warm on %s (%d pipeline(s) loaded)", endpoint_id, self.device, len(self._loaded))
        return pipeline

    def _evict_one(self, keep: Any = None) -> bool:
        for endpoint_id, pipeline in self._loaded.items():
            if pipeline is not keep:
                del self._loaded[endpoint_id]
                logger.info("evicted %s from %s to free memory", endpoint_id, self.device)
                del pipeline
                self._empty_cache()
                return True
        return False

    def _release_memory(self, keep: Any) -> None:
        while self._evict_one(keep=keep):
            pass
        self._empty_cache()

    def _empty_cache(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


class WorkerPool:
    def __init__(
        self,
        devices: Sequence[torch.device],
        *,
        instance_id: str,
        store: JobStore,
        registry: Registry,
        weights: WeightsStore,
        media: MediaIO,
        max_batch_size: int,
        heartbeat_seconds: float,
        on_fatal_error: Callable[[], None] = exit_process,
    ) -> None:
        self._store = store
        self._heartbeat_seconds = heartbeat_seconds
        self._stopping = threading.Event()
        self.workers = [
            Worker(
                device,
                worker_id=f"{instance_id}/{device}",
                store=store,
                registry=registry,
                weights=weights,
                media=media,
                max_batch_size=max_batch_size,
                on_fatal_error=on_fatal_error,
                stopping=self._stopping,
            )
            for device in devices
        ]
        self._heartbeat = threading.Thread(target=self._beat, name="kiln-heartbeat", daemon=True)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()
        self._heartbeat.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops claiming; running requests stop at their next step and go back to the queue."""
        self._stopping.set()
        self._store.changes.publish_work()
        for worker in self.workers:
            worker.join(timeout)

    def cancel(self, request_id: str) -> None:
        """Signals a running request in this process to stop at its next step."""
        for worker in self.workers:
            request = worker.running().get(request_id)
            if request is not None:
                request.cancelled.set()

    def states(self) -> dict[str, str]:
        return {str(worker.device): worker.state if worker.is_alive() else "stopped" for worker in self.workers}

    def _beat(self) -> None:
        while not self._stopping.wait(self._heartbeat_seconds):
            for worker in self.workers:
                running = worker.running()
                try:
                    cancelled = self._store.renew(worker.worker_id, list(running))
                except Exception:
                    logger.exception("renewing leases failed")
                    continue
                for request_id in cancelled:
                    running[request_id].cancelled.set()
