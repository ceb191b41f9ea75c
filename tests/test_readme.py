"""Every code block in the README runs in a test exactly as printed.

A block is run here, or is byte-identical to a file another test runs (the client recipes, which
tests/clients/test_no_egress.py runs under a network guard). A block nobody runs fails
`test_every_block_is_run`, so a new snippet needs a runner. Blocks run with `bash -e` in a scratch
folder, with `.venv/bin` on `PATH` as the README says to activate it, and with the environment a
reader would have (a server URL, a weights store) set up by the test.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from testkit.hub import LocalHub
from testkit.images import gradient_image, png_bytes
from testkit.servers import REPO, KilnProcess, free_port, tied_to_this_process, wait_completed
from tests.fixtures.apps import TEST_PIPELINES

pytestmark = pytest.mark.slow  # servers and `kiln` processes

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", README, re.M | re.S)
RECIPES = [
    REPO / "tests/clients/recipe_python.py",
    REPO / "tests/clients/recipe_python_env.sh",
    REPO / "tests/js/recipe_proxy.mjs",
    REPO / "tests/js/recipe_middleware.mjs",
    REPO / "tests/js/recipe_serverless_client.mjs",
]
BIN = Path(sys.executable).parent


def block(*needles: str) -> str:
    """The one block that contains every needle."""
    found = [text for _, text in BLOCKS if all(needle in text for needle in needles)]
    assert len(found) == 1, f"{len(found)} README blocks contain {needles}"
    return found[0]


def run_block(text: str, cwd: Path, **environment: str) -> subprocess.CompletedProcess:
    env = {**reader_environment(), **environment}
    return subprocess.run(
        tied_to_this_process(["bash", "-e", "-c", text]), cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


# the blocks, each with the test that runs it
TWO_COMMANDS = block("make serve", "make test")
WEIGHTS_ONLINE = block("kiln weights list", "kiln weights pull pixart-sigma-xl-2-1024-ms", "kiln weights verify")
WEIGHTS_GATED = "kiln weights pull flux-1-dev\n"
WEIGHTS_EXPORT = block("kiln weights export flux-1-dev usb")
WEIGHTS_IMPORT = block("kiln weights import flux-1-dev usb/flux-1-dev")
COMPARE = block("kiln compare")
SEVERAL_MACHINES = block("kiln serve --no-workers", "kiln worker")
SCRAPE_CONFIG = block("scrape_configs:")


def test_every_block_is_run():
    claimed = {TWO_COMMANDS, WEIGHTS_ONLINE, WEIGHTS_GATED, WEIGHTS_EXPORT, WEIGHTS_IMPORT, COMPARE, SEVERAL_MACHINES}
    claimed.add(SCRAPE_CONFIG)
    claimed |= {recipe.read_text() for recipe in RECIPES}
    unclaimed = [text for _, text in BLOCKS if text not in claimed]
    assert not unclaimed, f"README blocks no test runs: {unclaimed}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_each_client_recipe_is_the_file_its_test_runs(recipe):
    assert recipe.read_text() in {text for _, text in BLOCKS}, f"the README no longer prints {recipe.name}"


def test_the_two_commands_are_what_ci_and_a_user_run(tmp_path):
    """`make test` is what .ci/run executes; `make serve` is started and must answer /health on :8000."""
    commands = [line.split("#")[0].strip() for line in TWO_COMMANDS.splitlines()]
    assert commands == ["make serve", "make test"]
    assert "make test" in (REPO / ".ci/run").read_text().splitlines()
    with serving(commands[0], REPO, tmp_path / "serve.log", 8000):
        pass


@contextmanager
def serving(script: str, cwd: Path, log: Path, port: int, **environment: str) -> Iterator[str]:
    """Runs `script` (a README block that starts servers) until the block's `with` ends, once
    `127.0.0.1:port/health` answers 200; yields that base URL."""
    url = f"http://127.0.0.1:{port}"
    if httpx_alive(url + "/health"):
        pytest.fail(f"port {port} is taken: the README's block serves there")
    # `timeout` leads its own process group: stopped below, and never outlives 150 s even if this run dies
    process = subprocess.Popen(
        ["timeout", "-s", "KILL", "150", "bash", "-e", "-c", script],
        cwd=cwd,
        env={**reader_environment(), **environment},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not httpx_alive(url + "/health"):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{url} did not answer in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # the block may have exited on its own
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def reader_environment() -> dict[str, str]:
    """This process's environment as a reader's shell has it: `.venv/bin` first on PATH, and none of
    the variables by which an enclosing `make test ARGS=…` would pass its arguments to a `make` the
    block runs."""
    inherited = {name: value for name, value in os.environ.items() if name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}
    return {**inherited, "PATH": f"{BIN}:{os.environ['PATH']}"}


def httpx_alive(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- weights: the README's commands against a local hub serving tiny files under the real names --------

HUB_FILES = {"model_index.json": b'{"_class_name": "Tiny"}', "unet/weights.safetensors": bytes(range(256)) * 64}
GATED_TOKEN = "hf_readme_token"
HUB_MODELS = {
    "pixart-sigma-xl-2-1024-ms": ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", False),
    "nsfw-image-detection": ("Falconsai/nsfw_image_detection", False),
    "flux-1-dev": ("black-forest-labs/FLUX.1-dev", True),
}


@pytest.fixture
def hub(tmp_path) -> Iterator[tuple[LocalHub, Path]]:
    """The hub and a lock that, like the shipped one, leaves the models to be pinned on first use."""
    entries = {}
    with LocalHub() as hub:
        for name, (repo, gated) in HUB_MODELS.items():
            hub.add_repo(repo, HUB_FILES, gated=gated, tokens={GATED_TOKEN})
            files = [{"path": path, "size": None, "sha256": None} for path in HUB_FILES]
            entries[name] = {"repo": repo, "revision": "main", "license": "test", "gated": gated, "files": files}
        lock = tmp_path / "weights.lock"
        lock.write_text(json.dumps({"version": 1, "models": entries}))
        yield hub, lock


def test_the_getting_the_weights_blocks_run_as_printed(hub, tmp_path):
    local_hub, lock = hub
    online = {
        "HF_ENDPOINT": local_hub.endpoint,
        "KILN_WEIGHTS_LOCK": str(lock),
        "KILN_DATA_DIR": str(tmp_path / "online"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    pulled = run_block(WEIGHTS_ONLINE, tmp_path, **online)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.count("files match weights.lock") >= 3

    refused = run_block(WEIGHTS_GATED, tmp_path, **online)
    assert refused.returncode != 0 and "HF_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
    granted = run_block(WEIGHTS_GATED, tmp_path, **online, HF_TOKEN=GATED_TOKEN)
    assert granted.returncode == 0, granted.stderr

    exported = run_block(WEIGHTS_EXPORT, tmp_path, **online, HF_TOKEN=GATED_TOKEN)
    assert exported.returncode == 0, exported.stderr
    air_gapped = {**online, "KILN_DATA_DIR": str(tmp_path / "air-gapped"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    imported = run_block(WEIGHTS_IMPORT, tmp_path, **air_gapped)
    assert imported.returncode == 0, imported.stderr
    store = tmp_path / "air-gapped" / "weights" / "flux-1-dev" / "unet" / "weights.safetensors"
    assert hashlib.sha256(store.read_bytes()).digest() == hashlib.sha256(HUB_FILES["unet/weights.safetensors"]).digest()


def test_the_compare_block_runs_as_printed(tmp_path):
    server = KilnProcess(tmp_path / "data", pipelines=TEST_PIPELINES).start()
    try:
        (tmp_path / "photo.png").write_bytes(png_bytes(gradient_image(48, 32)))
        compared = run_block(COMPARE, tmp_path, KILN_URL=server.url)
    finally:
        server.stop()
    assert compared.returncode == 0, compared.stderr[-3000:]
    manifest = json.loads((tmp_path / "cmp" / "manifest.json").read_text())
    assert len(manifest["cells"]) == 4
    assert (tmp_path / "cmp" / "grid.png").stat().st_size > 0


# -- several machines: the roles block on a real redis-server, its metrics through the scrape config ----


def test_the_several_machines_block_and_scrape_config_run_as_printed(redis_server, tmp_path):
    key = "readme-key"
    environment = {
        "REDIS_URL": redis_server.queue_url(),
        "SHARED_STORAGE": str(tmp_path / "shared-files"),
        "PUBLIC_URL": "http://127.0.0.1:8000",
        "KILN_API_KEYS": key,
        "KILN_DATA_DIR": str(tmp_path / "data"),
    }
    scrape = yaml.safe_load(SCRAPE_CONFIG)["scrape_configs"]
    ports = {job["job_name"]: {int(target.rsplit(":", 1)[1]) for config in job["static_configs"] for target in config["targets"]} for job in scrape}
    assert ports == {"kiln-api": {8000}, "kiln-gpu": {9400}}
    with serving(SEVERAL_MACHINES, tmp_path, tmp_path / "nodes.log", 8000, **environment) as url:
        headers = {"Authorization": f"Key {key}"}
        image = "data:image/png;base64," + base64.b64encode(png_bytes(gradient_image(32, 24))).decode()
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            health = client.get("/health").json()
            assert sorted(node["role"] for node in health["nodes"].values()) == ["api", "worker"]
            queued = client.post("/queue/fal-ai/post-processing", json={"image_url": image, "enable_grain": True}).json()
            done = wait_completed(client, queued["status_url"])
            assert done["status"] == "COMPLETED", done
            result = client.get(queued["response_url"]).json()
            assert client.get(result["images"][0]["url"]).status_code == 200
        scraped = {job: "".join(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text for port in targets) for job, targets in ports.items()}
    worker_completed = re.search(r'^kiln_requests_completed_total\{endpoint="fal-ai/post-processing",outcome="ok"\} (\S+)$', scraped["kiln-gpu"], re.M)
    assert worker_completed and float(worker_completed.group(1)) == 1.0
    assert re.search(r'^kiln_requests_submitted_total\{endpoint="fal-ai/post-processing",priority="normal"\} 1.0$', scraped["kiln-api"], re.M)
    named = set(re.findall(r"`(kiln_[a-z_]+)`", README.split("**Metrics.**")[1].split("```")[0]))
    served = set(re.findall(r"^# TYPE (kiln_[a-z_]+)", "".join(scraped.values()), re.M))
    served |= {name + "_total" for name in served}
    assert named and named <= served, named - served


def test_the_compose_file_runs_the_documented_roles():
    """deploy/compose.yaml: its Redis persists as the README's first row, and every Kiln service's
    command is one `kiln` accepts, on the queue the Redis service serves."""
    from server.cli import build_parser

    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert "compose.yaml" in README
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes --appendfsync always" in redis_command
    roles = {}
    for name, service in services.items():
        if name == "redis":
            continue
        assert service["environment"]["KILN_QUEUE"] == "redis://redis:6379/0"
        command = [re.sub(r"\$\{[^}]*\}", "https://kiln.example.com", word) for word in service["command"]]
        args = build_parser().parse_args(command)
        roles[name] = (args.command, args.no_workers)
    assert roles == {"api": ("serve", True), "gpu": ("worker", False)}
