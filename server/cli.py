"""The `kiln` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from server.config import LOOPBACK_HOST, Settings, default_data_dir, is_loopback_host

logger = logging.getLogger("kiln")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln: fal.ai's image endpoints on your own GPUs")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the server")
    serve.add_argument("--host", default=LOOPBACK_HOST, help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--data-dir", type=Path, default=default_data_dir(), help="queue, results and keys (default: %(default)s)"
    )
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
        "--pipeline", action="append", default=[], metavar="MODULE:CLASS", help="serve an extra pipeline class"
    )
    serve.add_argument("--max-batch-size", type=int, default=8, help="most requests one device call runs together")
    serve.add_argument(
        "--retention-hours", type=float, default=7 * 24, help="how long results and files are kept (default: 168)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    keys = tuple(args.api_key) + tuple(
        key.strip() for key in os.environ.get("KILN_API_KEYS", "").split(",") if key.strip()
    )
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
        extra_pipelines=tuple(args.pipeline),
        max_batch_size=args.max_batch_size,
        retention_seconds=args.retention_hours * 3600,
    )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from server.app import create_app

    settings = settings_from_args(args)
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


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        serve(args)


if __name__ == "__main__":
    main()
