"""A device that cannot run is refused at start-up. `--device cuda` on a host without working CUDA
used to start zero workers, answer /health 200 "ok" and accept requests that stayed IN_QUEUE forever."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import server.worker
from server.worker import DeviceUnavailable, resolve_devices
from testkit.servers import REPO, free_port

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")


@no_cuda
@pytest.mark.slow
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cpu,cuda:1"])
def test_kiln_serve_refuses_a_device_it_cannot_use(tmp_path, device):
    serve = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--device", device, "--port", str(free_port()),
         "--data-dir", str(tmp_path / "data")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert serve.returncode != 0
    assert serve.stderr.strip().splitlines()[-1].startswith("kiln serve: ")
    assert "cuda" in serve.stderr.lower()


def test_the_cpu_and_auto_always_resolve():
    assert resolve_devices("cpu") == [torch.device("cpu")]
    assert resolve_devices("auto")
    with pytest.raises(DeviceUnavailable, match="not a device list"):
        resolve_devices("gpu-please")


@no_cuda
def test_an_app_on_an_unusable_device_does_not_start(make_client):
    with pytest.raises(DeviceUnavailable, match="cuda"):
        make_client(device="cuda")


@no_cuda
def test_health_is_503_while_no_worker_can_take_requests(make_client, monkeypatch):
    """A worker whose device fails after the check (here: the check is skipped) reports why."""
    monkeypatch.setattr(server.worker, "check_device", lambda device: None)
    client = make_client(device="cuda:0")
    health = client.get("/health")
    while health.json()["workers"]["cuda:0"] == "starting":
        health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert health.json()["workers"]["cuda:0"].startswith("failed: ")


@no_cuda
def test_auto_does_not_fall_back_to_the_cpu_silently_where_cuda_was_expected(monkeypatch, tmp_path):
    """A CUDA wheel on a host whose driver is too old for it looked like a host without a GPU: Kiln
    served on the CPU without a word. With an NVIDIA driver present, `auto` now refuses."""
    driver = tmp_path / "version"
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.00\n")
    monkeypatch.setattr(server.worker, "NVIDIA_DRIVER", str(driver))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(DeviceUnavailable, match="--device cpu"):
        resolve_devices("auto")
    assert resolve_devices("cpu") == [torch.device("cpu")]
    monkeypatch.setattr(torch.version, "cuda", None)
    assert resolve_devices("auto") == [torch.device("cpu")]
