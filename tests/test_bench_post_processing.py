"""`python -m bench.post_processing` at a tiny size on the CPU: the benchmark still runs end to end (kernels
against the NumPy reference, `predict`, host encodings, a real `kiln serve`) and writes its record."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.benchmarks import run_on_cpu


@pytest.mark.slow  # starts a server: about 15 s
def test_the_post_processing_benchmark_runs_end_to_end_and_writes_its_record(tmp_path):
    tiny = ["--size", "64", "--runs", "1", "--warmup", "1", "--reference-runs", "1", "--encode-runs", "1"]
    server = ["--batch", "2", "--concurrency", "2", "--requests", "2"]
    run_on_cpu("bench.post_processing", "--device", "cpu", *tiny, *server, "--results", str(tmp_path), timeout=300)
    (path,) = tmp_path.glob("post_processing-cpu-*.json")
    record = json.loads(path.read_text())
    assert record["settings"]["size"] == 64
    assert record["kernels"]["all"]["share_within_1_255"] > 0.99, "the kernels must match the NumPy reference"
    assert record["server"]["c2"]["requests"] == 2
    assert record["server"]["c2"]["mean_batch_size"] >= 1
