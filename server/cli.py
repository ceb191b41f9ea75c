"""The `kiln` command."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from server.config import (
    LOOPBACK_HOST,
    Settings,
    default_data_dir,
    default_weights_lock,
    is_loopback_host,
)
from server import metrics
from server.pipeline_cache import use_compile_cache
from server.registry import Registry
from server.weights import (
    MISMATCH,
    OK,
    WRONG_SIZE,
    FileCheck,
    HubError,
    WeightsLock,
    WeightsLockError,
    WeightsStore,
    WeightsUnavailable,
    lock_from_hub,
)
from server.worker import DeviceUnavailable, resolve_devices

logger = logging.getLogger("kiln")
# the longest a thread whose I/O has finished waits for the interpreter while another runs Python
INTERPRETER_SWITCH_SECONDS = 0.001


def storage_options() -> argparse.ArgumentParser:
    """--data-dir and the weights options, shared by `serve` and every `weights` command."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--data-dir", type=Path, default=default_data_dir(), help="queue, results and keys (default: %(default)s)"
    )
    options.add_argument(
        "--weights-dir",
        type=Path,
        default=os.environ.get("KILN_WEIGHTS_DIR"),
        help="model weights store; also KILN_WEIGHTS_DIR (default: DATA_DIR/weights)",
    )
    options.add_argument(
        "--weights-lock",
        type=Path,
        default=os.environ.get("KILN_WEIGHTS_LOCK") or default_weights_lock(),
        help="the lock naming every model file and its sha256; also KILN_WEIGHTS_LOCK (default: %(default)s)",
    )
    return options


def add_weights_commands(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    weights = commands.add_parser("weights", help="install and verify model weights against weights.lock")
    actions = weights.add_subparsers(dest="weights_command", required=True)
    actions.add_parser("list", parents=parents, help="the locked models and whether each is installed")
    pull = actions.add_parser(
        "pull",
        parents=parents,
        help="download a model's pinned revision and verify it; a model weights.lock leaves unpinned is pinned "
        "on first use (in the store's local.lock)",
    )
    pull.add_argument("name")
    pull.add_argument("--revision", help="branch, tag or commit to pin where weights.lock pins none (default: its own)")
    verify = actions.add_parser("verify", parents=parents, help="rehash every installed file (all models by default)")
    verify.add_argument("names", nargs="*", metavar="NAME")
    import_ = actions.add_parser("import", parents=parents, help="verify a folder you already have and link it in")
    import_.add_argument("name")
    import_.add_argument("path", type=Path, help="a folder in the model repository's layout")
    import_.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    import_.add_argument(
        "--revision", help="the commit the folder holds, where neither an export pin nor hub metadata says it"
    )
    export = actions.add_parser(
        "export", parents=parents, help="write a model's verified files and pin to DIR/NAME, for `import` elsewhere"
    )
    export.add_argument("name")
    export.add_argument("directory", type=Path, metavar="DIR")
    export.add_argument("--link", action="store_true", help="hard-link the files instead of copying them")
    lock = actions.add_parser(
        "lock", parents=parents, help="pin a model's revision and fill its missing sizes and sha256s from the hub"
    )
    lock.add_argument("name")
    lock.add_argument("--revision", help="branch, tag or commit to pin (default: the lock's)")
    lock.add_argument(
        "--write-lock",
        action="store_true",
        help="write the pin into --weights-lock itself (to maintain the shipped lock), not the store's local.lock",
    )


MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}


def memory_size(text: str) -> int:
    """`8GiB`, `512MiB`, `4096M` or a number of bytes -> bytes (binary units; `--memory-budget`)."""
    number = text.strip().lower().rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text.strip().lower()[len(number) :]
    try:
        size = float(number) * MEMORY_UNITS[unit]
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write it like 8GiB, 512MiB or 1073741824") from None
    if size < 1024**2:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 1 MiB; a request could not decode any image")
    return int(size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln: fal.ai's image endpoints on your own GPUs")
    commands = parser.add_subparsers(dest="command", required=True)
    storage = storage_options()

    serve = commands.add_parser("serve", parents=[storage], help="start the server")
    serve.add_argument("--host", default=LOOPBACK_HOST, help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument("--public-url", help="base URL clients reach this server at (default: from --host/--port)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="without --public-url: a host name (or its `queue.` form) clients reach this server by, whose Host "
        "header response URLs may use; repeatable (default: none, URLs use --host/--port)",
    )
    serve.add_argument(
        "--memory-budget",
        type=memory_size,
        default="8GiB",
        metavar="SIZE",
        help="working memory one request may need on its worker, e.g. 8GiB or 512MiB; with each endpoint's "
        "bytes per input pixel it caps the pixels of a request's images (default: %(default)s)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted `Authorization: Key` value, repeatable; also KILN_API_KEYS (comma-separated)",
    )
    serve.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="let input URLs and webhooks reach loopback, private and link-local addresses",
    )
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, or a list like cuda:0,cuda:1")
    serve.add_argument(
        "--cpu-threads", type=int, default=1, help="PyTorch threads for work on the CPU (default: %(default)s)"
    )
    serve.add_argument(
        "--pipeline",
        action="append",
        default=[],
        metavar="MODULE",
        help="also serve the endpoints defined in this module (or each module of this package), repeatable",
    )
    serve.add_argument(
        "--speedups",
        choices=["on", "off"],
        default=os.environ.get("KILN_SPEEDUPS", "on"),
        help="the pipelines' lossless speed-ups; off runs diffusers as it ships; also KILN_SPEEDUPS (default: on)",
    )
    serve.add_argument(
        "--warm",
        default=os.environ.get("KILN_WARM", ""),
        metavar="ENDPOINT[,ENDPOINT...]",
        help="endpoints to set up (and compile, on CUDA) at start-up, before /health reports them ready; "
        "also KILN_WARM",
    )
    serve.add_argument("--max-batch-size", type=int, default=8, help="most requests one device call runs together")
    serve.add_argument(
        "--retention-hours", type=float, default=7 * 24, help="how long results and files are kept (default: 168)"
    )
    serve.add_argument(
        "--storage",
        default=os.environ.get("KILN_STORAGE") or None,
        metavar="DIR|s3://BUCKET/PREFIX",
        help="where result and upload files live, the same for every node: a folder or an S3-compatible bucket "
        "(endpoint and credentials from AWS_* variables); also KILN_STORAGE (default: DATA_DIR/files)",
    )
    serve.add_argument(
        "--max-upload-mib", type=float, default=1024, help="largest file one upload may store (default: %(default)s)"
    )
    serve.add_argument(
        "--upload-quota-mib",
        type=float,
        default=10 * 1024,
        help="most upload bytes one key may keep stored until retention deletes them (default: %(default)s)",
    )
    serve.add_argument(
        "--upload-quota-files",
        type=int,
        default=10_000,
        help="most uploaded files one key may keep stored until retention deletes them (default: %(default)s)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--queue",
        default=os.environ.get("KILN_QUEUE") or "sqlite",
        metavar="sqlite|redis://HOST:PORT/DB",
        help="the queue: `sqlite` in the data dir (one process), or a Redis server every node shares "
        "(rediss:// for TLS, redis+sentinel://HOST:26379,.../SERVICE/DB for a Sentinel-managed primary, "
        "?prefix=NAME to keep deployments apart); also KILN_QUEUE (default: %(default)s)",
    )
    serve.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        help="how long a request stays leased to a worker that stopped renewing it (its process died) before "
        "another worker may run it (default: %(default)s)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="`kiln worker`: serve Prometheus metrics at :PORT/metrics on every interface (`kiln serve` has "
        "them at /metrics on its own port) (default: none)",
    )
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="serve the API only and leave the requests to `kiln worker` processes on the same --queue",
    )
    # `kiln worker` takes serve's options (the queue, storage, devices, pipelines, ...); it serves no HTTP
    commands.add_parser(
        "worker",
        parents=[serve],
        add_help=False,
        help="run workers only, on this machine's devices, for the requests of a shared --queue (no HTTP port); "
        "give it the API nodes' --public-url, which result URLs are built from",
    )
    add_weights_commands(commands, [storage])
    # `kiln compare`: server/compare.py
    from server.compare import add_compare_command

    add_compare_command(commands)
    return parser


def api_keys_from(args: argparse.Namespace) -> tuple[str, ...]:
    """`--api-key` values and `KILN_API_KEYS`; an empty or blank key is refused, never dropped, because
    `--api-key "$UNSET_VARIABLE"` must not start a server without authentication."""
    for key in args.api_key:
        if not key.strip():
            raise SystemExit(
                "kiln: `--api-key` was given an empty value (an unset shell variable?); pass the key itself, "
                "or leave out --api-key to serve on loopback without keys"
            )
    environment = os.environ.get("KILN_API_KEYS")
    from_environment = tuple(key.strip() for key in (environment or "").split(",") if key.strip())
    if environment is not None and not from_environment:
        raise SystemExit(
            f"kiln: KILN_API_KEYS is set but holds no key ({environment!r}); set it to comma-separated keys, "
            "or unset it to serve on loopback without keys"
        )
    return tuple(key.strip() for key in args.api_key) + from_environment


def settings_from_args(args: argparse.Namespace) -> Settings:
    keys = api_keys_from(args)
    host = args.host
    if not keys and not is_loopback_host(host):
        logger.warning(
            "no API key configured: listening on %s only instead of %s; set --api-key or KILN_API_KEYS "
            "to accept requests from other machines",
            LOOPBACK_HOST,
            host,
        )
        host = LOOPBACK_HOST
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("kiln: --tls-cert and --tls-key go together")
    return Settings(
        data_dir=args.data_dir,
        host=host,
        port=args.port,
        public_url=args.public_url,
        allowed_hosts=tuple(name.strip().lower() for name in args.allowed_host if name.strip()),
        memory_budget_bytes=args.memory_budget,
        api_keys=keys,
        allow_private_urls=args.allow_private_urls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        device=args.device,
        cpu_threads=args.cpu_threads,
        pipeline_modules=(*Settings.pipeline_modules, *args.pipeline),
        speedups=args.speedups == "on",
        max_batch_size=args.max_batch_size,
        storage=getattr(args, "storage", None),
        retention_seconds=args.retention_hours * 3600,
        max_upload_bytes=int(args.max_upload_mib * 1024 * 1024),
        upload_quota_bytes=int(args.upload_quota_mib * 1024 * 1024),
        upload_quota_files=args.upload_quota_files,
        weights_dir=args.weights_dir,
        weights_lock=args.weights_lock,
        warm_endpoints=tuple(endpoint.strip() for endpoint in args.warm.split(",") if endpoint.strip()),
        queue=args.queue,
        lease_seconds=args.lease_seconds,
        heartbeat_seconds=min(Settings.heartbeat_seconds, args.lease_seconds / 5),
        run_workers=not args.no_workers,
    )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from server.app import create_app

    settings = settings_from_args(args)
    try:
        if settings.run_workers:
            resolve_devices(settings.device)
    except DeviceUnavailable as error:
        raise SystemExit(f"kiln serve: {error}") from None
    if not settings.api_keys:
        logger.warning("no API key configured: every local caller is accepted; Kiln listens on loopback only")
    use_compile_cache(settings.compile_cache_dir)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
    )


def worker(args: argparse.Namespace) -> None:
    """`kiln worker`: this machine's workers on a shared queue, until SIGTERM or SIGINT."""
    import signal
    import threading

    from server.services import Services

    if args.no_workers:
        raise SystemExit("kiln worker: --no-workers leaves a worker nothing to do")
    settings = dataclasses.replace(settings_from_args(args), run_webhooks=False)
    if settings.queue in ("", "sqlite"):
        raise SystemExit(
            "kiln worker: the API nodes' queue is needed: --queue redis://HOST:6379/0 (or KILN_QUEUE); "
            "with the embedded SQLite queue `kiln serve` runs the workers itself"
        )
    try:
        resolve_devices(settings.device)
    except DeviceUnavailable as error:
        raise SystemExit(f"kiln worker: {error}") from None
    use_compile_cache(settings.compile_cache_dir)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    services = Services.start(settings, Registry.discover(settings.pipeline_modules))
    if args.metrics_port:
        metrics.serve_on_port(lambda: services, args.metrics_port)
    try:
        stop.wait()
    finally:
        logger.info("stopping: running requests go back to the queue")
        services.stop()


def weights(args: argparse.Namespace) -> int:
    """`kiln weights ...`; returns the exit status (1 when a file does not match the lock)."""
    lock = WeightsLock.load(args.weights_lock)
    store = WeightsStore(args.weights_dir or args.data_dir / "weights", lock)
    if args.weights_command == "list":
        users = Registry.discover(Settings.pipeline_modules).models()
        for name, model in store.lock.models.items():
            print(f"{name}\t{model.repo}@{model.revision[:12]}\t{model.license}{' (gated)' if model.gated else ''}")
            state = describe(store, name)
            if model.pinned:
                state = f"{store.lock.pinned_where(name)}; {state}"
            print(f"\t{state}\t{', '.join(users.get(name, ()))}")
        return 0
    if args.weights_command == "lock":
        pinned = lock_from_hub(store.lock.get(args.name), args.revision)
        if args.write_lock:
            WeightsLock(lock.path, {**lock.models, args.name: pinned}).save()
        else:
            store.save_pin(pinned)
        print(f"{args.name}: pinned {pinned.revision} in {lock.path if args.write_lock else store.pins_path}")
        return 0
    if args.weights_command == "pull":
        first_use = store.unpinned_reason(args.name) is not None or args.revision is not None
        if first_use:
            print(
                f"{args.name}: weights.lock pins no exact files for it: trusting what the hub serves now "
                "(trust on first use); every file is checked against the hub's own sha256s and the result "
                f"is pinned in {store.pins_path}",
                file=sys.stderr,
            )
        status = report(args.name, store.pull(args.name, revision=args.revision, on_file=announce))
        if first_use and status == 0:
            print(f"{args.name}: pinned {store.lock.get(args.name).revision} in {store.pins_path}")
        return status
    if args.weights_command == "import":
        checks = store.import_folder(args.name, args.path, revision=args.revision, copy=args.copy, on_file=announce)
        status = report(args.name, checks)
        if status == 0 and args.name in store.lock.pinned_here:
            print(f"{args.name}: {store.lock.pinned_where(args.name)}: {store.lock.get(args.name).note}")
        return status
    if args.weights_command == "export":
        target = store.export(args.name, args.directory, link=args.link)
        print(f"{args.name}: exported to {target}; on the other machine run `kiln weights import {args.name} PATH`")
        return 0
    status = 0
    for name in args.names or [n for n in lock.models if store.folder(n).exists()]:
        unpinned = store.unpinned_reason(name)
        if unpinned:
            print(f"{name}: {unpinned}")
            status = 1
            continue
        status |= report(name, store.verify(name, rehash=True, on_file=announce))
    return status


def announce(path: str) -> None:
    print(f"hashing {path}", file=sys.stderr)


def describe(store: WeightsStore, name: str) -> str:
    problem = store.problem([name])
    if problem:
        return problem
    checks = store.check(name)
    return "installed, verified" if all(c.state == OK for c in checks) else "installed, not verified since changed"


def report(name: str, checks: list[FileCheck]) -> int:
    failed = [check for check in checks if check.state != OK]
    for check in failed:
        found = f" (found sha256 {check.found_sha256})" if check.state == MISMATCH else ""
        print(f"{name}: {check.path}: {check.state}{found}")
    if failed:
        corrupt = any(check.state in (MISMATCH, WRONG_SIZE) for check in failed)
        print(f"{name}: {len(failed)} of {len(checks)} files {'do not match weights.lock' if corrupt else 'missing'}")
        return 1
    print(f"{name}: all {len(checks)} files match weights.lock")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command in ("serve", "worker"):
        # Worker threads run Python between their device calls: without this, an HTTP or queue thread
        # whose I/O has finished waits up to Python's default 5 ms for the interpreter.
        sys.setswitchinterval(INTERPRETER_SWITCH_SECONDS)
    if args.command == "serve":
        serve(args)
    elif args.command == "worker":
        worker(args)
    elif args.command == "weights":
        try:
            sys.exit(weights(args))
        except (WeightsLockError, WeightsUnavailable, HubError) as error:
            raise SystemExit(f"kiln weights: {error}") from None
    elif args.command == "compare":
        from server.compare import compare_command

        sys.exit(compare_command(args))


if __name__ == "__main__":
    main()
