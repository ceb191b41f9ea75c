"""Scale-out: requests/s of small post-processing jobs with 1, 2 and 3 `kiln worker` processes on one
Redis queue, beside the embedded SQLite queue in one process, and the queue's own latency.

Every setup serves the same trivial job (a 64x64 PNG, color correction, the result inline), so the
numbers are the queue's and the processes', not the kernels'. The setups, all started at once (each
on a Redis queue of its own, so an idle one hears nothing of the others):

- `sqlite`: `kiln serve` (the embedded queue, its one worker in the same process);
- `redis_1proc`: `kiln serve --queue redis://…`, the same single process on Redis; measured again
  as `redis_1proc_everysec` with Redis fsyncing its AOF once a second instead of on every write;
- `redis_workers_N`: `kiln serve --no-workers` plus N `kiln worker` processes on the Redis queue.

Latency (submit -> COMPLETED on the status stream, concurrency 1) is measured in `--rounds` rounds,
every setup once per round in turn, so a change in the machine's background load reaches every
setup alike; p50 and p99 are over all rounds, and each setup's p50 less `sqlite`'s is what it adds
per request. Throughput is measured once per setup at concurrency 32, with the share of the machine's
CPU time that was busy meanwhile. Redis runs as the README
recommends (AOF, `appendfsync always`). On a machine with fewer cores than processes, throughput
stops growing once the cores are used up: the record says how many there are.

    python -m bench.scale_out [--requests 300] [--workers 3] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.common import percentile, write_result
from bench.queue_overhead import kiln_queue, measure, timed_calls
from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import REPO, RedisServer, free_port, tied_to_this_process

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        tied_to_this_process([sys.executable, *args]), cwd=REPO, env=ENV, stdout=open(log, "ab"), stderr=subprocess.STDOUT
    )


def wait_healthy(url: str, processes: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("a Kiln process exited while starting")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy")


class Setup:
    """One deployment on loopback: an API process (with its workers unless `workers`) plus `workers`
    `kiln worker` processes, on `queue` (None: the embedded SQLite queue)."""

    def __init__(self, name: str, queue: str | None, workers: int, folder: Path) -> None:
        self.name = name
        self.workers = workers
        self.url = f"http://127.0.0.1:{free_port()}"
        common = ["--log-level", "warning", "--device", "cpu"]
        serve = ["-m", "server.cli", "serve", "--port", self.url.rsplit(":", 1)[1],
                 "--data-dir", str(folder / f"{name}-api"), *common]
        if queue is not None:
            serve += ["--queue", f"{queue}?prefix={name}"]
        if workers:
            serve.append("--no-workers")
        self.processes = [spawn(serve, folder / f"{name}-api.log")]
        for index in range(workers):
            self.processes.append(spawn(
                ["-m", "server.cli", "worker", "--data-dir", str(folder / f"{name}-w{index}"), "--queue",
                 f"{queue}?prefix={name}", "--public-url", self.url, *common],
                folder / f"{name}-w{index}.log",
            ))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def busy_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot (Linux `/proc/stat`), None elsewhere."""
    try:
        fields = [float(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def submit_to_completed(client: httpx.AsyncClient, payload: dict):
    return kiln_queue(client, payload, with_result=False)


@contextmanager
def appendfsync(redis: RedisServer, policy: str) -> Iterator[None]:
    redis.client().config_set("appendfsync", policy)
    try:
        yield
    finally:
        redis.client().config_set("appendfsync", "always")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per throughput measurement")
    parser.add_argument("--workers", type=int, default=3, help="the most worker processes to measure")
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds (every setup once per round)")
    parser.add_argument("--note", default="", help="recorded with the numbers (e.g. that the machine was shared)")
    args = parser.parse_args()

    body = {"image_url": data_uri(png_bytes(gradient_image(64, 64))), "enable_color_correction": True,
            "brightness": 10.0, "sync_mode": True}
    folder = Path(tempfile.mkdtemp(prefix="kiln-scale-out-"))
    redis = RedisServer(folder / "redis").start()
    setups = [Setup("sqlite", None, 0, folder), Setup("redis_1proc", redis.url, 0, folder)]
    setups += [Setup(f"redis_workers_{n}", redis.url, n, folder) for n in range(1, args.workers + 1)]
    # (name in the results, setup, Redis's fsync policy while it is measured)
    measured = [(setups[0].name, setups[0], "always"), (setups[1].name, setups[1], "always"),
                ("redis_1proc_everysec", setups[1], "everysec"), *((s.name, s, "always") for s in setups[2:])]
    per_round = max(20, args.requests // 2 // args.rounds)
    latencies: dict[str, list[float]] = {name: [] for name, _, _ in measured}
    results: dict[str, dict] = {}
    try:
        for setup in setups:
            wait_healthy(setup.url, setup.processes)
        for _ in range(args.rounds):
            for name, setup, policy in measured:
                with appendfsync(redis, policy):
                    taken, _ = asyncio.run(timed_calls(setup.url, submit_to_completed, body, 1, per_round))
                latencies[name] += taken
        for name, setup, policy in measured:
            with appendfsync(redis, policy):
                before = busy_cpu_seconds()
                throughput = asyncio.run(measure(setup.url, submit_to_completed, body, 32, args.requests))
                after = busy_cpu_seconds()
            results[name] = {
                "processes": 1 + setup.workers,
                "worker_processes": setup.workers or 1,
                "p50_ms_c1": round(percentile(latencies[name], 0.5) * 1e3, 3),
                "p99_ms_c1": round(percentile(latencies[name], 0.99) * 1e3, 3),
                "requests_c1": len(latencies[name]),
                "requests_per_s_c32": throughput["requests_per_s"],
                "p50_ms_c32": throughput["p50_ms"],
                # the share of all cores busy meanwhile (benchmark client and Redis included)
                "cpu_busy_c32": None if before is None else round((after[0] - before[0]) / (after[1] - before[1]), 3),
            }
    finally:
        for setup in setups:
            setup.stop()
        redis.stop()

    base = results["sqlite"]
    print(f"{'setup':<22}{'procs':>6}{'p50 ms c1':>11}{'+ms p50':>9}{'p99 ms c1':>11}{'req/s c32':>11}{'x sqlite':>10}"
          f"{'cpu busy':>10}")
    for name, numbers in results.items():
        numbers["p50_overhead_ms_vs_sqlite"] = round(numbers["p50_ms_c1"] - base["p50_ms_c1"], 3)
        numbers["throughput_vs_sqlite"] = round(numbers["requests_per_s_c32"] / base["requests_per_s_c32"], 2)
        print(f"{name:<22}{numbers['processes']:>6}{numbers['p50_ms_c1']:>11.2f}"
              f"{numbers['p50_overhead_ms_vs_sqlite']:>+9.2f}{numbers['p99_ms_c1']:>11.2f}"
              f"{numbers['requests_per_s_c32']:>11.1f}{numbers['throughput_vs_sqlite']:>10.2f}"
              f"{numbers['cpu_busy_c32'] or float('nan'):>10.0%}")
    path = write_result("scale_out", {
        "image": "64x64 PNG", "work": "color correction, sync_mode",
        "redis": "appendonly yes, appendfsync always (redis_1proc_everysec: everysec)",
        "latency": f"{args.rounds} rounds of {per_round} requests per setup, the setups in turn",
        "note": args.note,
        "redis_p50_overhead_ms_vs_sqlite": results["redis_1proc"]["p50_overhead_ms_vs_sqlite"],
        "redis_everysec_p50_overhead_ms_vs_sqlite": results["redis_1proc_everysec"]["p50_overhead_ms_vs_sqlite"],
        "results": results,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
