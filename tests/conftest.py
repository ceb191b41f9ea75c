"""Shared fixtures: Kiln servers as real subprocesses, in-process apps, and small test images."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TEST_PIPELINES = ("tests.fixtures.pipelines",)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class KilnProcess:
    """`kiln serve` in a subprocess, as a user starts it; restartable on the same data dir."""

    def __init__(self, data_dir: Path, *extra_args: str, tls: tuple[Path, Path] | None = None, env: dict | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_args = extra_args
        self.tls = tls
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def spawn(self) -> KilnProcess:
        """Starts the process without waiting for it to become healthy."""
        args = [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        for spec in TEST_PIPELINES:
            args += ["--pipeline", spec]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        args += list(self.extra_args)
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def start(self, timeout: float = 90.0) -> KilnProcess:
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kiln exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", verify=False, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kiln did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def kiln_process(tmp_path) -> Iterator[callable]:
    """Factory: `kiln_process(*args)` starts a server on a fresh data dir; all are stopped after."""
    started: list[KilnProcess] = []

    def start(*args: str, data_dir: Path | None = None, **kwargs) -> KilnProcess:
        process = KilnProcess(data_dir or tmp_path / f"data{len(started)}", *args, **kwargs).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def shared_kiln(tmp_path_factory) -> Iterator[KilnProcess]:
    """One plain-HTTP server, no keys, shared by the client tests that do not restart it."""
    process = KilnProcess(tmp_path_factory.mktemp("shared") / "data").start()
    yield process
    process.stop()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def gradient_image(width: int = 16, height: int = 12, channels: int = 3) -> np.ndarray:
    """A deterministic colourful test image, uint8 `(H, W, C)`."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 255 // (width + height - 2)]
    if channels == 4:
        planes.append(np.full_like(x, 200))
    return np.stack(planes, axis=-1).astype(np.uint8)
