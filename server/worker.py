"""The in-process worker pool: one worker thread per CUDA device (one CPU worker without CUDA).

A worker claims queued requests of one endpoint, as many as it will run in one `predict` call, and
runs them as a batch (`Worker.run_batch`): set up the pipeline, decode on host threads, group,
predict, check one prediction per request, encode, check the output model, complete. A failure at
any step completes the requests it concerns with fal's error shape and a status-log line naming the
step; the worker carries on. A heartbeat thread renews the leases of running requests and relays
cancellations.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

import server
from server import metrics
from pipelines.contract import (
    Cancelled,
    FieldError,
    KilnError,
    Pipeline,
    PipelineSettings,
    Weights,
)
from server.context import Interrupted, MediaIO, RunningRequest
from server.errors import ClientDisconnected, EndpointUnavailable
from server.pipeline_cache import OUT_OF_MEMORY, PipelineCache
from server.registry import Registry
from server.store import Job, JobResult, JobStore, QueueUnavailable

logger = logging.getLogger(__name__)

NVIDIA_DRIVER = "/proc/driver/nvidia/version"

# how long a worker keeps trying to store a result while the queue cannot be reached (a shared
# queue restarting) before it gives up and leaves the request to the queue, which runs it again
COMPLETE_RETRY_SECONDS = 60.0


class DeviceUnavailable(RuntimeError):
    """A device the operator asked for cannot run work; Kiln refuses to start rather than queue forever."""


def resolve_devices(setting: str) -> list[torch.device]:
    """`auto` -> every CUDA device, else the CPU; otherwise `cpu`, `cuda` (every CUDA device) or a
    comma-separated list like `cuda:0,cuda:1`. Each named device must run a kernel, or DeviceUnavailable."""
    if setting == "auto":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count and cuda_expected():
            raise DeviceUnavailable(
                "this host has an NVIDIA driver and this PyTorch is a CUDA build, but CUDA does not work "
                f"(PyTorch {torch.__version__} needs a driver for CUDA {torch.version.cuda}); fix the driver, "
                "or pass --device cpu to serve on the CPU knowingly"
            )
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    try:
        if setting == "cuda":
            devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        else:
            devices = [torch.device(part.strip()) for part in setting.split(",") if part.strip()]
    except RuntimeError as error:
        raise DeviceUnavailable(f"--device {setting!r} is not a device list: {error}") from None
    if not devices:
        raise DeviceUnavailable(f"--device {setting!r}: no CUDA device is visible to PyTorch")
    for device in devices:
        check_device(device)
    return devices


def cuda_expected() -> bool:
    """A CUDA build of PyTorch on a host with an NVIDIA kernel driver: `auto` must not fall back to
    the CPU there without a word (an old driver for the wheel's CUDA looks exactly like no GPU)."""
    return torch.version.cuda is not None and Path(NVIDIA_DRIVER).exists()


def check_device(device: torch.device) -> None:
    """Runs one tiny kernel on `device`; raises DeviceUnavailable saying why it cannot."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"{device}: this PyTorch has no working CUDA (is the driver installed?)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceUnavailable(f"{device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    try:
        (torch.ones(1, device=device) + 1).cpu()
    except Exception as error:
        raise DeviceUnavailable(f"{device} cannot run work: {error}") from None


def is_fatal_device_error(error: BaseException) -> bool:
    """Errors after which the CUDA context is unusable (illegal address, device-side assert)."""
    if isinstance(error, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return isinstance(error, accelerator_error) or (isinstance(error, RuntimeError) and "CUDA error" in str(error))


def exit_process() -> None:
    logger.critical("exiting so a supervisor restarts Kiln; the running requests will be retried")
    os._exit(70)


def runner_error(message: str) -> KilnError:
    """A failure of the endpoint's code, not of the caller's input."""
    return KilnError(message, error_type="runner_server_error")


@dataclass(frozen=True)
class Decoded:
    """A request whose inputs are validated and decoded: what `predict` and `encode` take."""

    request: RunningRequest
    inputs: BaseModel
    item: Any


class Worker(threading.Thread):
    def __init__(
        self,
        device: torch.device,
        *,
        worker_id: str,
        store: JobStore,
        registry: Registry,
        weights: Weights,
        settings: PipelineSettings,
        media: MediaIO,
        max_batch_size: int,
        on_fatal_error: Callable[[], None],
        stopping: threading.Event,
        warm: Sequence[type[Pipeline]] = (),
    ) -> None:
        super().__init__(name=f"kiln-worker-{device}", daemon=True)
        self.device = device
        self.worker_id = worker_id
        self.state = "starting"
        self.pipelines = PipelineCache(device, weights, settings)
        self._store = store
        self._registry = registry
        self._media = media
        self._max_claim = {pipeline.endpoint_id: min(max_batch_size, pipeline.max_batch_size) for pipeline in registry}
        # how many requests of an endpoint the next claim takes: what the last batch could run in one call
        self._claim_limits = dict(self._max_claim)
        self._on_fatal_error = on_fatal_error
        self._running: dict[str, RunningRequest] = {}
        self._running_lock = threading.Lock()
        self._host_threads = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)))
        self._stopping = stopping
        self._warm = list(warm)

    # -- what the pool sees ----------------------------------------------------------------

    def running(self) -> dict[str, RunningRequest]:
        with self._running_lock:
            return dict(self._running)

    def warm_endpoints(self) -> list[str]:
        """The endpoints set up on this worker's device, which its claims prefer (server.store)."""
        return [endpoint for endpoint, state in self.pipelines.states().items() if state == "ready"]

    def run(self) -> None:
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
        except Exception as error:
            logger.critical("worker on %s cannot start: %s", self.device, error)
            self.state = f"failed: {error}"
            return
        # set up (and warm) before claiming, so /health says ready only once the first request can run
        self.pipelines.preload(self._warm)
        self.state = "ready"
        while not self._stopping.is_set():
            try:
                jobs = self._store.next_jobs(self.worker_id, self._claim_limits, warm=self.warm_endpoints(), timeout=0.5)
            except Exception:
                logger.exception("claiming from the queue failed; retrying")
                self._stopping.wait(1.0)
                continue
            if jobs:
                self.state = "busy"
                self.run_batch(jobs)
                self.state = "ready"
        try:
            self._store.stop_waiting(self.worker_id)
        except Exception as error:
            logger.warning("could not hand back the work leased to this worker while it waited: %s", error)
        self._host_threads.shutdown(wait=False)

    # -- one claimed batch -----------------------------------------------------------------

    def run_batch(self, jobs: Sequence[Job]) -> None:
        """Runs claimed requests of one endpoint to completion, each step checked."""
        requests = [
            RunningRequest(
                job,
                store=self._store,
                media=self._media,
                stopping=self._stopping,
                pixel_limit=self._media.pixel_limit(self._registry.get(job.endpoint)),
            )
            for job in jobs
        ]
        with self._tracking(requests):
            # Claimed requests are marked running: a worker death now is charged to them (see server.store).
            # 1. The endpoint's pipeline, set up on this device.
            try:
                pipeline = self.pipelines.get(self._pipeline_class(jobs[0].endpoint))
            except Exception as error:
                for request in requests:
                    self._fail(request, "setup", error)
                return
            # 2. Validate and decode every request's inputs, on host threads.
            decoded = self._decode(pipeline, requests)
            # 3. Group the requests that can share one `predict` call; the groups that wait their
            # turn are not running.
            batches = list(self._batches(pipeline, decoded))
            self._mark_running([item.request for batch in batches[1:] for item in batch], False)
            for batch in batches:
                self._run(pipeline, batch)

    def _run(self, pipeline: Pipeline, batch: list[Decoded]) -> None:
        # 4. Predict, one device call for the batch.
        live = self._drop_cancelled(batch)
        self._mark_running([decoded.request for decoded in live], True)
        predictions = self._predict(pipeline, live)
        if predictions is None:
            return
        # 5. One prediction per request, else none of them can be trusted.
        if len(predictions) != len(live):
            error = runner_error(f"`predict` returned {len(predictions)} prediction(s) for {len(live)} request(s)")
            for decoded in live:
                self._fail(decoded.request, "predict", error)
            return
        # 6-8. Encode, check the output model and complete each request, on host threads.
        self._on_host(lambda decoded, prediction: self._finish(pipeline, decoded, prediction), list(zip(live, predictions)))

    def _pipeline_class(self, endpoint_id: str) -> type[Pipeline]:
        pipeline_class = self._registry.get(endpoint_id)
        if pipeline_class is None:
            raise EndpointUnavailable(f"Endpoint {endpoint_id} is not available on this server")
        return pipeline_class

    def _decode(self, pipeline: Pipeline, requests: Sequence[RunningRequest]) -> list[Decoded]:
        def decode(request: RunningRequest) -> Decoded:
            request.log(f"Running on {self.device} (attempt {request.job.attempts})")
            with request.timed("decode"):
                inputs = pipeline.Input.model_validate(request.job.payload)
                request.raise_if_cancelled()
                item = pipeline.decode(inputs, request)
            report_unknown_fields(request, pipeline.Input)
            return Decoded(request, inputs, item)

        decoded = []
        for request, outcome in zip(requests, self._on_host(decode, [(r,) for r in requests])):
            if isinstance(outcome, BaseException):
                self._fail(request, "decode", outcome)
            else:
                decoded.append(outcome)
        return decoded

    def _batches(self, pipeline: Pipeline, decoded: list[Decoded]) -> Iterator[list[Decoded]]:
        """Requests with equal `batch_key`s, in chunks of the pipeline's `batch_limit`."""
        groups: dict[Hashable, list[Decoded]] = {}
        limits: dict[Hashable, int] = {}
        for item in decoded:
            try:
                key = pipeline.batch_key(item.item)
                group = ("batch", key) if key is not None else ("alone", item.request.request_id)
                limits.setdefault(group, max(1, int(pipeline.batch_limit(item.item))))
            except Exception as error:
                self._fail(item.request, "group", error)
                continue
            groups.setdefault(group, []).append(item)
        for group, members in groups.items():
            limit = limits[group]
            self._claim_limits[pipeline.endpoint_id] = min(self._max_claim[pipeline.endpoint_id], limit)
            for start in range(0, len(members), limit):
                yield members[start : start + limit]

    def _drop_cancelled(self, batch: list[Decoded]) -> list[Decoded]:
        for decoded in batch:
            if decoded.request.is_cancelled():
                self._fail(decoded.request, "predict", decoded.request.cancellation)
        return [decoded for decoded in batch if not decoded.request.is_cancelled()]

    def _predict(self, pipeline: Pipeline, live: list[Decoded]) -> list[Any] | None:
        """The batch's predictions, or None when the step failed (its requests are then completed)."""
        if not live:
            return None
        requests = [decoded.request for decoded in live]
        try:
            start = time.perf_counter()
            predictions = list(pipeline.predict([decoded.item for decoded in live], requests))
            elapsed = time.perf_counter() - start
        except torch.OutOfMemoryError:
            self.pipelines.release_memory(keep=pipeline)
            if len(live) > 1:
                logger.warning("out of memory on a batch of %d; running them one at a time", len(live))
                for decoded in live:
                    self._run(pipeline, [decoded])
            else:
                self._fail(requests[0], "predict", OUT_OF_MEMORY)
            return None
        except Exception as error:
            if is_fatal_device_error(error):
                logger.critical("fatal device error on %s: %s", self.device, error)
                self._on_fatal_error()
            for request in requests:
                self._fail(request, "predict", error)
            return None
        for request in requests:
            request.timings["predict"] = elapsed
            request.add_provenance({"batch_size": len(requests)})
        return predictions

    def _finish(self, pipeline: Pipeline, decoded: Decoded, prediction: Any) -> None:
        request = decoded.request
        try:
            request.raise_if_cancelled()
            with request.timed("encode"):
                output = pipeline.encode(prediction, decoded.inputs, request)
        except Exception as error:
            self._fail(request, "encode", error)
            return
        try:
            body = checked_output(pipeline, output)
        except Exception as error:
            self._fail(request, "output check", error)
            return
        self._succeed(request, body)

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

    def _mark_running(self, requests: Sequence[RunningRequest], running: bool) -> None:
        changed = [request for request in requests if request.marked_running != running]
        if not changed:
            return
        try:
            self._store.mark_running(self.worker_id, [request.request_id for request in changed], running=running)
        except Exception as error:
            # they run all the same; only a worker death in the meantime would be charged wrongly
            logger.warning("could not record which requests are running: %s", error)
            return
        for request in changed:
            request.marked_running = running

    @contextmanager
    def _tracking(self, requests: Sequence[RunningRequest]) -> Iterator[None]:
        """Makes the requests visible to the heartbeat and to cancellation while they run."""
        with self._running_lock:
            self._running.update((r.request_id, r) for r in requests)
        try:
            yield
        finally:
            with self._running_lock:
                for request in requests:
                    self._running.pop(request.request_id, None)

    # -- completion ------------------------------------------------------------------------

    def _succeed(self, request: RunningRequest, body: dict[str, Any]) -> None:
        inference_time = sum(request.timings.values())
        body["provenance"] = {
            "endpoint": request.job.endpoint,
            "request_id": request.request_id,
            "kiln_version": server.__version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": _device_name(self.device),
            "attempt": request.job.attempts,
            **request.provenance,
            "timings": {stage: round(seconds, 6) for stage, seconds in request.timings.items()},
        }
        self._log(request, f"Completed in {inference_time:.3f}s")
        result = JobResult(status_code=200, body=body, metrics={"inference_time": inference_time})
        try:
            self._complete(request, result)
        except Exception as error:
            self._fail(request, "complete", error)

    def _fail(self, request: RunningRequest, step: str, error: BaseException) -> None:
        """Completes the request with `error` in fal's shape and a status-log line naming the step."""
        if isinstance(error, Interrupted):
            self._store.release([request.request_id], worker_id=self.worker_id)
            return
        if isinstance(error, ValidationError) and step == "decode":
            # the stored inputs no longer validate (a schema changed since submit): the caller's to fix
            first = error.errors()[0]
            error = FieldError(tuple(first["loc"]), first["msg"])
        if isinstance(error, KilnError):
            logger.info("request %s failed in %s: %s", request.request_id, step, error.message)
        else:
            logger.error("request %s failed in %s", request.request_id, step, exc_info=error)
            error = runner_error(f"{type(error).__name__}: {error}")
        if isinstance(error, Cancelled):
            # a batch stops with one Cancelled for all its requests; each keeps the reason it was given
            error = request.cancellation
        self._log(request, error.message if isinstance(error, Cancelled) else f"{step} failed: {error.message}", "ERROR")
        try:
            self._complete(request, JobResult.from_error(error))
        except Exception:
            logger.critical(
                "request %s: its failure could not be stored either; the queue runs it again",
                request.request_id,
                exc_info=True,
            )

    def _complete(self, request: RunningRequest, result: JobResult) -> None:
        """Stores the result, waiting out a queue that cannot be reached for a while: the work is
        done, and the heartbeat keeps the lease meanwhile."""
        deadline = time.monotonic() + COMPLETE_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                self._store.complete(request.request_id, result)
                metrics.request_completed(request.job, result.error_type)
                return
            except QueueUnavailable:
                if time.monotonic() >= deadline or self._stopping.is_set():
                    raise
                logger.warning("request %s: the queue cannot be reached; retrying to store its result", request.request_id)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _log(self, request: RunningRequest, message: str, level: str = "INFO") -> None:
        try:
            request.log(message, level)
        except Exception:
            logger.exception("request %s: could not append to its logs: %s", request.request_id, message)


def report_unknown_fields(request: RunningRequest, model: type[BaseModel]) -> None:
    """Names the fields the endpoint does not know, which fal accepts and ignores, in the status logs
    and in `provenance.ignored` beside the known fields the endpoint ignores (a misspelt
    `enable_vinyette` would otherwise do nothing silently)."""
    unknown = {name: value for name, value in request.job.payload.items() if name not in model.model_fields}
    if not unknown:
        return
    request.log(f"Ignored field(s) this endpoint does not have: {', '.join(sorted(unknown))}", "WARN")
    request.add_provenance({"ignored": {**request.provenance.get("ignored", {}), **unknown}})


def checked_output(pipeline: Pipeline, output: Any) -> dict[str, Any]:
    """The JSON body of an `encode` result, checked against the endpoint's `Output` model."""
    if not isinstance(output, pipeline.Output):
        raise runner_error(f"`encode` returned {type(output).__name__}, not the endpoint's {pipeline.Output.__name__}")
    # a model made with `model_construct` or mutated after validation is caught by the validation
    body = output.model_dump(mode="json", warnings=False)
    pipeline.Output.model_validate(body)
    return body


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
        weights: Weights,
        settings: PipelineSettings,
        media: MediaIO,
        max_batch_size: int,
        heartbeat_seconds: float,
        on_fatal_error: Callable[[], None] = exit_process,
        warm: Sequence[type[Pipeline]] = (),
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
                settings=settings,
                media=media,
                max_batch_size=max_batch_size,
                on_fatal_error=on_fatal_error,
                stopping=self._stopping,
                warm=warm,
            )
            for device in devices
        ]
        self._heartbeat = threading.Thread(target=self._beat, name="kiln-heartbeat", daemon=True)
        # a cancellation requested on another node reaches the worker running the request at once
        store.changes.on_cancel(self._cancelled_elsewhere)

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
        self._heartbeat.join(timeout)

    def cancel(self, request_id: str, reason: Cancelled | None = None) -> None:
        """Signals a running request in this process to stop at its next step, failing with `reason`."""
        for worker in self.workers:
            request = worker.running().get(request_id)
            if request is not None:
                request.cancel(reason or Cancelled())

    def _cancelled_elsewhere(self, request_id: str, error_type: str) -> None:
        self.cancel(request_id, ClientDisconnected() if error_type == ClientDisconnected.error_type else None)

    def states(self) -> dict[str, str]:
        """Device -> `starting`, `ready`, `busy`, `failed: <why>` or `stopped`."""
        return {
            str(worker.device): worker.state if worker.is_alive() or worker.state.startswith("failed") else "stopped"
            for worker in self.workers
        }

    def pipeline_states(self) -> dict[str, dict[str, str]]:
        """Device -> endpoint -> `loading`, `ready` or `error: …` (cold endpoints are absent)."""
        return {str(worker.device): worker.pipelines.states() for worker in self.workers}

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
