"""Scale-out: requests/s of small post-processing jobs with 1, 2 and 3 `kiln worker` processes on one
Redis queue, beside the embedded SQLite queue in one process, and the queue's own latency.

Every setup serves the same trivial job (a 64x64 PNG, color correction, the result inline), so the
numbers are the queue's and the processes', not the kernels'. Measured in the same run:

- `sqlite`: `kiln serve` (the embedded queue, its one worker in the same process);
- `redis_1proc`: `kiln serve --queue redis://…`, the same single process on Redis: the p50 latency
  against `sqlite` at concurrency 1 is what the Redis queue adds per request; `redis_1proc_everysec`
  the same with Redis fsyncing its AOF once a second instead of on every write;
- `redis_workers_N`: `kiln serve --no-workers` plus N `kiln worker` processes on the Redis queue.

Throughput is submit -> COMPLETED (status stream) at concurrency 32; latency p50/p99 at concurrency 1.
Redis runs as the README recommends (AOF, `appendfsync always`). On a machine with fewer cores than
processes, throughput stops growing once the cores are used up: the record says how many there are.

    python -m bench.scale_out [--requests 300] [--workers 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import write_result
from bench.queue_overhead import kiln_queue, measure
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


def run_setup(name: str, queue: str | None, workers: int, folder: Path, body: dict, requests: int) -> dict:
    """Starts the setup's processes, measures it, stops them."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = ["--log-level", "warning", "--device", "cpu"]
    serve = ["-m", "server.cli", "serve", "--port", str(port), "--data-dir", str(folder / f"{name}-api"), *common]
    if queue is not None:
        serve += ["--queue", f"{queue}?prefix={name}"]
    if workers:
        serve.append("--no-workers")
    processes = [spawn(serve, folder / f"{name}-api.log")]
    for index in range(workers):
        processes.append(spawn(
            ["-m", "server.cli", "worker", "--data-dir", str(folder / f"{name}-w{index}"), "--queue",
             f"{queue}?prefix={name}", "--public-url", url, *common],
            folder / f"{name}-w{index}.log",
        ))
    try:
        wait_healthy(url, processes)
        call = lambda client, payload: kiln_queue(client, payload, with_result=False)  # noqa: E731
        latency = asyncio.run(measure(url, call, body, 1, max(50, requests // 3)))
        throughput = asyncio.run(measure(url, call, body, 32, requests))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    return {
        "processes": 1 + workers,
        "worker_processes": workers or 1,
        "p50_ms_c1": latency["p50_ms"],
        "p99_ms_c1": latency["p99_ms"],
        "requests_per_s_c32": throughput["requests_per_s"],
        "p50_ms_c32": throughput["p50_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per throughput measurement")
    parser.add_argument("--workers", type=int, default=3, help="the most worker processes to measure")
    parser.add_argument("--note", default="", help="recorded with the numbers (e.g. that the machine was shared)")
    args = parser.parse_args()

    body = {"image_url": data_uri(png_bytes(gradient_image(64, 64))), "enable_color_correction": True,
            "brightness": 10.0, "sync_mode": True}
    folder = Path(tempfile.mkdtemp(prefix="kiln-scale-out-"))
    redis = RedisServer(folder / "redis").start()
    queue = redis.url
    results: dict[str, dict] = {}
    try:
        results["sqlite"] = run_setup("sqlite", None, 0, folder, body, args.requests)
        results["redis_1proc"] = run_setup("redis_1proc", queue, 0, folder, body, args.requests)
        # what the fsync of every write costs: the README's second persistence row
        redis.client().config_set("appendfsync", "everysec")
        results["redis_1proc_everysec"] = run_setup("redis_1proc_everysec", queue, 0, folder, body, args.requests)
        redis.client().config_set("appendfsync", "always")
        for workers in range(1, args.workers + 1):
            results[f"redis_workers_{workers}"] = run_setup(f"redis_w{workers}", queue, workers, folder, body, args.requests)
    finally:
        redis.stop()

    base = results["sqlite"]
    print(f"{'setup':<18}{'procs':>6}{'p50 ms c1':>11}{'p99 ms c1':>11}{'req/s c32':>11}{'x sqlite':>10}")
    for name, numbers in results.items():
        numbers["throughput_vs_sqlite"] = round(numbers["requests_per_s_c32"] / base["requests_per_s_c32"], 2)
        print(f"{name:<18}{numbers['processes']:>6}{numbers['p50_ms_c1']:>11.2f}{numbers['p99_ms_c1']:>11.2f}"
              f"{numbers['requests_per_s_c32']:>11.1f}{numbers['throughput_vs_sqlite']:>10.2f}")
    overhead = round(results["redis_1proc"]["p50_ms_c1"] - base["p50_ms_c1"], 3)
    overhead_everysec = round(results["redis_1proc_everysec"]["p50_ms_c1"] - base["p50_ms_c1"], 3)
    print(
        f"p50 queue overhead of Redis over SQLite (one process, concurrency 1): {overhead:+.2f} ms "
        f"(appendfsync always), {overhead_everysec:+.2f} ms (appendfsync everysec)"
    )
    path = write_result("scale_out", {
        "image": "64x64 PNG", "work": "color correction, sync_mode", "redis": "appendonly yes, appendfsync always (redis_1proc_everysec: everysec)",
        "note": args.note, "redis_p50_overhead_ms_vs_sqlite": overhead,
        "redis_everysec_p50_overhead_ms_vs_sqlite": overhead_everysec, "results": results,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
