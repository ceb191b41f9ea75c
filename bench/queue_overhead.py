"""Queue overhead: a trivial 64x64 post-processing job through Kiln vs a bare FastAPI route.

Both servers run as subprocesses on loopback and do the same work (decode, color correction, PNG
encode, data URI back). Kiln is measured three ways: submit then status stream until COMPLETED,
the same plus fetching the result, and the sync `/run` route. Each at concurrency 1 and 32.

    python -m bench.queue_overhead [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import percentile, write_result
from testkit.images import data_uri, gradient_image, png_bytes
from testkit.servers import free_port

REPO = Path(__file__).resolve().parent.parent
ENDPOINT = "fal-ai/post-processing"


def start(args: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{args} did not start")


async def kiln_queue(client: httpx.AsyncClient, body: dict, with_result: bool) -> None:
    submitted = (await client.post(f"/queue/{ENDPOINT}", json=body)).json()
    async with client.stream("GET", submitted["status_url"] + "/stream") as events:
        async for line in events.aiter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["status"] == "COMPLETED":
                break
    if with_result:
        response = await client.get(submitted["response_url"])
        assert response.status_code == 200, response.text


async def kiln_run(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post(f"/run/{ENDPOINT}", json=body)
    assert response.status_code == 200, response.text


async def bare(client: httpx.AsyncClient, body: dict) -> None:
    response = await client.post("/bare", json=body)
    assert response.status_code == 200, response.text


async def timed_calls(base: str, call, body: dict, concurrency: int, total: int) -> tuple[list[float], float]:
    """Each call's latency (seconds) and the time all took, after 10 calls of warm-up."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        for _ in range(min(10, total)):
            await call(client, body)
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                await call(client, body)
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


async def measure(base: str, call, body: dict, concurrency: int, total: int) -> dict:
    latencies, elapsed = await timed_calls(base, call, body, concurrency, total)
    return {
        "p50_ms": round(percentile(latencies, 0.5) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    args = parser.parse_args()

    body = {"image_url": data_uri(png_bytes(gradient_image(64, 64))), "enable_color_correction": True,
            "brightness": 10.0, "sync_mode": True}
    bare_port, kiln_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="kiln-bench-")
    servers = [
        start(["-m", "bench.bare_route", "--port", str(bare_port)], bare_port),
        start(["-m", "server.cli", "serve", "--port", str(kiln_port), "--data-dir", data_dir,
               "--log-level", "warning"], kiln_port),
    ]
    bare_url, kiln_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{kiln_port}"
    variants = {
        "bare_route": (bare_url, bare),
        "kiln_submit_to_completed": (kiln_url, lambda c, b: kiln_queue(c, b, with_result=False)),
        "kiln_submit_to_result": (kiln_url, lambda c, b: kiln_queue(c, b, with_result=True)),
        "kiln_sync_run": (kiln_url, kiln_run),
    }
    results: dict[str, dict] = {}
    try:
        for concurrency in (1, 32):
            for name, (base, call) in variants.items():
                results[f"{name}@c{concurrency}"] = asyncio.run(measure(base, call, body, concurrency, args.requests))
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)

    print(f"{'variant':<36}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'p50 overhead ms':>18}")
    for key, numbers in results.items():
        concurrency = key.rsplit("@", 1)[1]
        overhead = numbers["p50_ms"] - results[f"bare_route@{concurrency}"]["p50_ms"]
        numbers["p50_overhead_ms_vs_bare"] = round(overhead, 3)
        print(f"{key:<36}{numbers['p50_ms']:>10.2f}{numbers['p99_ms']:>10.2f}{numbers['requests_per_s']:>10.1f}{overhead:>18.2f}")
    path = write_result("queue_overhead", {"image": "64x64 PNG", "work": "color correction, sync_mode", "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
