"""`python -m bench.gpu_smoke` on a machine without CUDA: the checks that need it are skipped, each by
name, the others run on the CPU, and it exits 0 (run as a user runs it, with CUDA hidden)."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.benchmarks import run_on_cpu

CUDA_CHECKS = {
    "cuda_attention_backend",
    "cuda_compile_warm_up",
    "cuda_fp8",
    "cuda_first_block_cache",
    "cuda_out_of_memory",
    "cuda_memory_plan_vs_peak",
}
CPU_CHECKS = {"fused_qkv_parameters", "memory_plan", "tiny_endpoints", "out_of_memory_recovery"}


@pytest.mark.slow  # builds tiny models and runs every endpoint on them: about a minute
def test_the_gpu_smoke_suite_skips_each_cuda_check_by_name_on_a_cpu(tmp_path):
    smoke = run_on_cpu(
        "bench.gpu_smoke", "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path), timeout=600
    )
    lines = [json.loads(line) for line in smoke.stdout.splitlines() if line.startswith("{")]
    results = {line["check"]: line for line in lines}
    summary = results.pop("summary")
    assert set(summary["skipped"]) == CUDA_CHECKS and set(summary["ok"]) == CPU_CHECKS and not summary["failed"]
    for name in CUDA_CHECKS:
        assert results[name]["status"] == "skipped" and "needs CUDA" in results[name]["reason"]
    fused = results["fused_qkv_parameters"]["flux"]
    assert fused["kiln_fused"] == fused["unfused"] < fused["diffusers_fused"]
    endpoints = results["tiny_endpoints"]
    assert endpoints["flux_image_to_image"]["transformers_loaded"] == 1
    assert endpoints["safety_checker"]["shared_by_endpoints"] is True
    assert results["out_of_memory_recovery"]["warm_after_recovery"] == ["fal-ai/flux/dev/image-to-image"]
    (record,) = tmp_path.glob("gpu_smoke-cpu-*.json")
    assert json.loads(record.read_text())["summary"] == summary
