"""The `kiln` command."""

from __future__ import annotations

import argparse
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
from server.registry import Registry
from server.weights import (
    MISMATCH,
    OK,
    WRONG_SIZE,
    FileCheck,
    WeightsLock,
    WeightsLockError,
    WeightsStore,
    WeightsUnavailable,
    lock_from_hub,
)
from server.worker import DeviceUnavailable, resolve_devices

logger = logging.getLogger("kiln")


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
    pull = actions.add_parser("pull", parents=parents, help="download a model's pinned revision, then verify it")
    pull.add_argument("name")
    verify = actions.add_parser("verify", parents=parents, help="rehash every installed file (all models by default)")
    verify.add_argument("names", nargs="*", metavar="NAME")
    import_ = actions.add_parser("import", parents=parents, help="verify a folder you already have and link it in")
    import_.add_argument("name")
    import_.add_argument("path", type=Path, help="a folder in the model repository's layout")
    import_.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    lock = actions.add_parser(
        "lock", parents=parents, help="pin a model's revision and fill its missing sizes and sha256s from the hub"
    )
    lock.add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln: fal.ai's image endpoints on your own GPUs")
    commands = parser.add_subparsers(dest="command", required=True)
    storage = storage_options()

    serve = commands.add_parser("serve", parents=[storage], help="start the server")
    serve.add_argument("--host", default=LOOPBACK_HOST, help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument("--public-url", help="base URL clients reach this server at (default: from --host/--port)")
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
    serve.add_argument("--max-batch-size", type=int, default=8, help="most requests one device call runs together")
    serve.add_argument(
        "--retention-hours", type=float, default=7 * 24, help="how long results and files are kept (default: 168)"
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
    add_weights_commands(commands, [storage])
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
        api_keys=keys,
        allow_private_urls=args.allow_private_urls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        device=args.device,
        cpu_threads=args.cpu_threads,
        pipeline_modules=(*Settings.pipeline_modules, *args.pipeline),
        speedups=args.speedups == "on",
        max_batch_size=args.max_batch_size,
        retention_seconds=args.retention_hours * 3600,
        max_upload_bytes=int(args.max_upload_mib * 1024 * 1024),
        upload_quota_bytes=int(args.upload_quota_mib * 1024 * 1024),
        upload_quota_files=args.upload_quota_files,
        weights_dir=args.weights_dir,
        weights_lock=args.weights_lock,
    )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from server.app import create_app

    settings = settings_from_args(args)
    try:
        resolve_devices(settings.device)
    except DeviceUnavailable as error:
        raise SystemExit(f"kiln serve: {error}") from None
    if not settings.api_keys:
        logger.warning("no API key configured: every local caller is accepted; Kiln listens on loopback only")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
    )


def weights(args: argparse.Namespace) -> int:
    """`kiln weights ...`; returns the exit status (1 when a file does not match the lock)."""
    lock = WeightsLock.load(args.weights_lock)
    store = WeightsStore(args.weights_dir or args.data_dir / "weights", lock)
    if args.weights_command == "list":
        users = Registry.discover(Settings.pipeline_modules).models()
        for name, model in lock.models.items():
            print(f"{name}\t{model.repo}@{model.revision[:12]}\t{model.license}{' (gated)' if model.gated else ''}")
            print(f"\t{describe(store, name)}\t{', '.join(users.get(name, ()))}")
        return 0
    if args.weights_command == "lock":
        lock = WeightsLock(lock.path, {**lock.models, args.name: lock_from_hub(lock.get(args.name))})
        lock.save()
        print(f"{args.name}: pinned {lock.get(args.name).revision} in {lock.path}")
        return 0
    if args.weights_command == "pull":
        return report(args.name, store.pull(args.name, on_file=announce))
    if args.weights_command == "import":
        return report(args.name, store.import_folder(args.name, args.path, copy=args.copy, on_file=announce))
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
    if args.command == "serve":
        serve(args)
    elif args.command == "weights":
        try:
            sys.exit(weights(args))
        except (WeightsLockError, WeightsUnavailable) as error:
            raise SystemExit(f"kiln weights: {error}") from None


if __name__ == "__main__":
    main()
