"""Server settings: one frozen object built by the CLI (or a test) and passed down explicitly."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.contract import PipelineSettings

LOOPBACK_HOST = "127.0.0.1"


def default_data_dir() -> Path:
    """`KILN_DATA_DIR` (the container image sets /data), else Kiln's folder under the user's data
    directory (XDG on Linux)."""
    if os.environ.get("KILN_DATA_DIR"):
        return Path(os.environ["KILN_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "kiln"


def default_weights_lock() -> Path:
    """The weights.lock shipped with Kiln: beside the source tree, else in the working directory
    (where the container image puts it)."""
    shipped = Path(__file__).resolve().parent.parent / "weights.lock"
    return shipped if shipped.exists() else Path.cwd() / "weights.lock"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Everything a Kiln server needs to know; defaults are the one-command embedded setup."""

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = LOOPBACK_HOST
    port: int = 8000
    public_url: str | None = None
    # without public_url, the host names (besides their `queue.` form) whose Host header may be put in
    # the URLs of a response; any other Host gets URLs built from host and port
    allowed_hosts: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    allow_private_urls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    device: str = "auto"
    # torch intra-op threads for work on the CPU; small tensors get slower, not faster, with more
    cpu_threads: int = 1
    # modules (or packages of modules) whose endpoint classes this server serves
    pipeline_modules: tuple[str, ...] = ("pipelines",)
    # the pipelines' lossless speed-ups; off runs the libraries as they ship
    speedups: bool = True
    # model weights are kept under data_dir unless given a folder of their own
    weights_dir: Path | None = None
    weights_lock: Path = field(default_factory=default_weights_lock)
    # endpoints set up (and their compiled denoisers warmed) at start-up, before /health says ready
    warm_endpoints: tuple[str, ...] = ()

    # result and upload files: a folder (local or shared) or `s3://BUCKET/PREFIX`; None is data_dir/files
    storage: str | None = None
    retention_seconds: float = 7 * 24 * 3600
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 2.0
    max_attempts: int = 3
    max_batch_size: int = 8
    janitor_seconds: float = 5.0
    # the queue: `sqlite` (embedded, in the data dir) or `redis://HOST:PORT/DB`, which several Kiln
    # processes share (server/store/__init__.py, open_store)
    queue: str = "sqlite"
    # this process's parts besides the queue: workers on its devices (`kiln serve --no-workers`
    # runs none) and webhook delivery (`kiln worker`, which serves no HTTP, delivers none)
    run_workers: bool = True
    run_webhooks: bool = True
    # how long a waiting request may be passed over for one of a worker's warm endpoints (server.store)
    affinity_seconds: float = 10.0

    download_timeout_seconds: float = 30.0
    max_download_bytes: int = 64 * 1024 * 1024
    # uploads: one file (multipart included), and what one key may keep stored at once (its uploads
    # live until the retention period deletes them); over either limit is 413
    max_upload_bytes: int = 1024 * 1024 * 1024
    upload_quota_bytes: int = 10 * 1024 * 1024 * 1024
    upload_quota_files: int = 10_000
    max_body_bytes: int = 96 * 1024 * 1024
    max_image_pixels: int = 8192 * 8192
    # working memory one request may need on its worker: with an endpoint's `bytes_per_input_pixel` it
    # sets how many input pixels a request of that endpoint may bring (at most max_image_pixels)
    memory_budget_bytes: int = 8 * 1024**3

    webhook_max_attempts: int = 10
    webhook_first_retry_seconds: float = 5.0
    webhook_timeout_seconds: float = 15.0

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def base_url(self) -> str:
        """Absolute URL clients reach this server at; result and queue URLs are built from it."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls else "http"
        host = self.host if ":" not in self.host else f"[{self.host}]"
        if host in ("0.0.0.0", "[::]"):
            host = LOOPBACK_HOST
        return f"{scheme}://{host}:{self.port}"

    @property
    def pipeline_settings(self) -> PipelineSettings:
        return PipelineSettings(speedups=self.speedups)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def storage_location(self) -> str | Path:
        """`storage` as `server.storage.open_file_store` takes it: the folder, or the s3:// URL."""
        if self.storage is None:
            return self.files_dir
        return self.storage if self.storage.startswith("s3://") else Path(self.storage)

    @property
    def weights_store_dir(self) -> Path:
        return self.weights_dir or self.data_dir / "weights"

    @property
    def compile_cache_dir(self) -> Path:
        """Where torch.compile keeps its artefacts (inductor, Triton) across restarts."""
        return self.data_dir / "compile-cache"
