"""The worker's memory management and failure handling, with pipelines that simulate a small GPU."""

from __future__ import annotations

import threading
import uuid
from typing import ClassVar

import pytest
import torch
from pydantic import BaseModel

from pipelines.contract import Pipeline, PipelineSettings
from server.context import MediaIO
from server.fetch import FetchPolicy, UrlFetcher
from server.files import FileStore
from server.registry import Registry
from server.store import JobStatus, NewJob
from server.store.sqlite import SqliteJobStore
from server.weights import WeightsLock, WeightsStore
from server.worker import Worker

CAPACITY = 2
memory = {"used": 0}


class Empty(BaseModel):
    pass


class Result(BaseModel):
    batch_size: int


class SizedPipeline(Pipeline):
    """Takes `size` units of a device that holds CAPACITY; releases them when garbage collected."""

    Input = Empty
    Output = Result
    size: ClassVar[int]
    max_batch_size = 4

    def setup(self, device, weights, settings):
        super().setup(device, weights, settings)
        if memory["used"] + self.size > CAPACITY:
            raise torch.OutOfMemoryError("simulated: device full")
        memory["used"] += self.size
        self.holding = (memory, self.size)

    def __del__(self):
        if hasattr(self, "holding"):
            device_memory, size = self.holding
            device_memory["used"] -= size

    def decode(self, inputs, request):
        return inputs

    def batch_key(self, item):
        return "same"

    def predict(self, items, requests):
        return [Result(batch_size=len(items)) for _ in items]

    def encode(self, prediction, inputs, request):
        return prediction


class Small1(SizedPipeline):
    endpoint_id = "test/small-1"
    size = 1


class Small2(SizedPipeline):
    endpoint_id = "test/small-2"
    size = 1


class Large(SizedPipeline):
    endpoint_id = "test/large"
    size = 2


class TooLarge(SizedPipeline):
    endpoint_id = "test/too-large"
    size = 3


class NoBatchMemory(SizedPipeline):
    """Fits alone, runs out of memory on any batch larger than one."""

    endpoint_id = "test/no-batch-memory"
    size = 0

    def predict(self, items, requests):
        if len(items) > 1:
            raise torch.OutOfMemoryError("simulated: batch too large")
        return super().predict(items, requests)


class PairsOnly(SizedPipeline):
    endpoint_id = "test/pairs-only"
    size = 0

    def batch_limit(self, item):
        return 2


class DeviceFault(SizedPipeline):
    endpoint_id = "test/device-fault"
    size = 0

    def predict(self, items, requests):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class WrongOutput(SizedPipeline):
    """`encode` returns another model than the endpoint's Output."""

    endpoint_id = "test/wrong-output"
    size = 0

    def encode(self, prediction, inputs, request):
        return Empty()


class InvalidOutput(SizedPipeline):
    """`encode` returns the Output type built without validation, holding a value its schema refuses."""

    endpoint_id = "test/invalid-output"
    size = 0

    def encode(self, prediction, inputs, request):
        return Result.model_construct(batch_size="many")


class TooFewPredictions(SizedPipeline):
    endpoint_id = "test/too-few-predictions"
    size = 0

    def predict(self, items, requests):
        return super().predict(items, requests)[1:]


@pytest.fixture
def harness(tmp_path):
    memory["used"] = 0
    pipelines = [
        Small1, Small2, Large, TooLarge, NoBatchMemory, PairsOnly, DeviceFault,
        WrongOutput, InvalidOutput, TooFewPredictions,
    ]
    store = SqliteJobStore(tmp_path / "q.sqlite3", lease_seconds=30, max_attempts=3)
    fatal = threading.Event()
    worker = Worker(
        torch.device("cpu"),
        worker_id="test-worker",
        store=store,
        registry=Registry(pipelines),
        weights=WeightsStore(tmp_path / "weights", WeightsLock(tmp_path / "weights.lock")),
        settings=PipelineSettings(),
        media=MediaIO(fetcher=UrlFetcher(FetchPolicy()), files=FileStore(tmp_path / "files", "http://k"), max_image_pixels=10**6),
        max_batch_size=8,
        on_fatal_error=fatal.set,
        stopping=threading.Event(),
    )

    def run(endpoint: str, count: int = 1) -> list:
        for _ in range(count):
            store.submit(NewJob(request_id=str(uuid.uuid4()), endpoint=endpoint, owner="o", payload={}))
        jobs = store.claim("test-worker", {endpoint: 8})
        worker.run_batch(jobs)
        return [store.get(job.request_id) for job in jobs]

    worker.store = store
    yield worker, run, fatal
    store.close()


def loaded(worker) -> list[str]:
    return worker.pipelines.warm()


def test_least_recently_used_pipelines_are_evicted_when_memory_runs_short(harness):
    worker, run, _ = harness
    run("test/small-1")
    run("test/small-2")
    run("test/small-1")
    assert loaded(worker) == ["test/small-2", "test/small-1"] and memory["used"] == 2
    [done] = run("test/large")
    assert done.result.status_code == 200
    assert loaded(worker) == ["test/large"] and memory["used"] == 2
    run("test/small-2")
    assert loaded(worker) == ["test/small-2"]


def test_a_pipeline_that_never_fits_fails_cleanly(harness):
    worker, run, _ = harness
    [failed] = run("test/too-large")
    assert failed.status is JobStatus.COMPLETED
    assert failed.result.status_code == 413 and failed.result.error_type == "out_of_memory"
    [after] = run("test/small-1")
    assert after.result.status_code == 200


def test_out_of_memory_on_a_batch_retries_one_by_one(harness):
    _, run, _ = harness
    jobs = run("test/no-batch-memory", count=3)
    assert [job.result.body["batch_size"] for job in jobs] == [1, 1, 1]


def test_a_claimed_batch_is_split_at_the_pipelines_batch_limit(harness):
    _, run, _ = harness
    jobs = run("test/pairs-only", count=5)
    assert [job.result.body["batch_size"] for job in jobs] == [2, 2, 2, 2, 1]


def test_fatal_device_error_asks_for_a_restart(harness):
    _, run, fatal = harness
    run("test/device-fault")
    assert fatal.is_set()


def failed_on_first_attempt(store, job, step: str) -> None:
    """COMPLETED with fal's error shape, on attempt 1, and a status-log line naming `step`."""
    assert job.status is JobStatus.COMPLETED and job.attempts == 1
    assert job.result.status_code == 500 and job.result.error_type == "runner_server_error"
    assert job.result.body == {"detail": job.result.error, "error_type": "runner_server_error"}
    errors = [entry.message for entry in store.logs(job.request_id) if entry.level == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{step} failed: "), errors


@pytest.mark.parametrize(
    ("endpoint", "step", "message"),
    [
        ("test/wrong-output", "output check", "`encode` returned Empty, not the endpoint's Result"),
        ("test/invalid-output", "output check", "batch_size"),
        ("test/too-few-predictions", "predict", "`predict` returned 1 prediction(s) for 2 request(s)"),
    ],
)
def test_a_broken_step_completes_its_requests_with_an_error_at_once(harness, endpoint, step, message):
    worker, run, _ = harness
    jobs = run(endpoint, count=2)
    for job in jobs:
        failed_on_first_attempt(worker.store, job, step)
        assert message in job.result.error


def test_a_result_the_store_refuses_completes_the_request_with_an_error(harness, monkeypatch):
    worker, run, _ = harness
    complete = worker.store.complete

    def refuse_results(request_id, result):
        if result.ok:
            raise ValueError("the database refused the row")
        return complete(request_id, result)

    monkeypatch.setattr(worker.store, "complete", refuse_results)
    [job] = run("test/small-1")
    failed_on_first_attempt(worker.store, job, "complete")
    assert "the database refused the row" in job.result.error


def test_the_next_claim_takes_only_what_the_last_batch_could_run(harness):
    """Requests past what one `predict` call takes stay queued, so they can still be cancelled at once."""
    worker, run, _ = harness
    run("test/pairs-only", count=3)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    for request_id in ids:
        worker.store.submit(NewJob(request_id=request_id, endpoint="test/pairs-only", owner="o", payload={}))
    claimed = worker.store.claim("test-worker", worker._claim_limits)
    assert [job.request_id for job in claimed] == ids[:2]
    assert [worker.store.get(request_id).status for request_id in ids[2:]] == [JobStatus.IN_QUEUE] * 3


def test_warm_endpoints_are_set_up_before_the_worker_reports_ready(make_client):
    client = make_client(warm_endpoints=("kiln-test/steps",))
    health = client.get("/health").json()
    while health["workers"]["cpu"] == "starting":
        health = client.get("/health").json()
    assert health["pipelines"]["cpu"] == {"kiln-test/steps": "ready"}


def test_an_unknown_warm_endpoint_stops_the_start(make_client):
    with pytest.raises(ValueError, match="kiln-test/nothing"):
        make_client(warm_endpoints=("kiln-test/nothing",))
