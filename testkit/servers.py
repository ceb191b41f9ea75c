"""Servers for tests and benchmarks: free ports, `kiln serve` and `redis-server` in subprocesses,
waiting on a request."""

from __future__ import annotations

import os
import signal
import itertools
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent


def tied_to_this_process(command: list[str]) -> list[str]:
    """`command`, started so that the kernel kills it when the process that starts it dies: a test
    run that crashes or is killed never leaves a server listening (util-linux `setpriv --pdeathsig`,
    which sets Linux's PR_SET_PDEATHSIG and execs the command; no Python code runs in the forked child)."""
    return ["setpriv", "--pdeathsig", "KILL", "--", *command]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class KilnProcess:
    """`kiln serve` in a subprocess, as a user starts it; restartable on the same data dir."""

    def __init__(
        self,
        data_dir: Path,
        *extra_args: str,
        pipelines: tuple[str, ...] = (),
        tls: tuple[Path, Path] | None = None,
        env: dict | None = None,
    ):
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_args = extra_args
        self.pipelines = pipelines
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
        for module in self.pipelines:
            args += ["--pipeline", module]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        args += list(self.extra_args)
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            tied_to_this_process(args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return self

    def start(self, timeout: float = 90.0) -> KilnProcess:
        return self.spawn().wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 90.0) -> KilnProcess:
        """Waits for a spawned server's /health to answer 200; stops it if that does not come in time.
        (Spawn from the thread that outlives it: the kernel's parent-death signal follows the thread
        that started the process.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kiln exited with {self.process.returncode}:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", verify=False, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kiln did not become healthy:\n{self.logs()[-3000:]}")

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


def wait_completed(client, status_url: str, timeout: float = 30.0, **headers) -> dict:
    """Polls a status URL with an httpx-like client until the request is COMPLETED; its status body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(status_url, headers=headers)
        if response.json()["status"] == "COMPLETED":
            return response.json()
        time.sleep(0.02)
    raise AssertionError(f"{status_url} did not complete in {timeout}s")


class RedisServer:
    """`redis-server` in a subprocess on a free port, its AOF in `folder`; it dies with the test process."""

    _prefixes = itertools.count()

    def __init__(self, folder: Path, binary: str = "redis-server", *extra_args: str, config: str = "") -> None:
        self.folder = folder
        self.binary = binary
        # e.g. `--replicaof HOST PORT`; or `--sentinel`, with `config` the `sentinel monitor` lines
        # (Sentinel rewrites its config file, so it must be one)
        self.extra_args = extra_args
        self.config = config
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = folder / "redis-server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def queue_url(self, prefix: str | None = None) -> str:
        """A queue of its own on this server (`?prefix=`), for one test or one deployment."""
        prefix = prefix or f"t{next(self._prefixes)}-{uuid.uuid4().hex[:8]}"
        return f"{self.url}?prefix={prefix}"

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "redis.conf"
        if not config.exists():
            config.write_text(self.config)
        command = [
            self.binary, str(config), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no", *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(tied_to_this_process(command), stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start:\n{self.log_path.read_text()}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: nothing is flushed beyond what `appendfsync always` already wrote."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> RedisServer:
        """Starts again on the same port and AOF."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)
