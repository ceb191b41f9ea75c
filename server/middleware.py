"""ASGI middleware that makes one Kiln port look like fal's several hosts.

- `/api/fal/proxy` with `x-fal-target-url` (the JS client's `proxyUrl` mode) is dispatched in-process
  to the API the target host names, keeping method, path, query and body.
- A request whose Host starts with `queue.` gets the queue API at the root (so with DNS and TLS in
  place a client needs only `FAL_RUN_HOST`); `rest.` gets the storage API at the root; a root path
  that starts with a served owner (`/fal-ai/...`) is the sync API.
- Every queue and run response carries `x-fal-request-id`, errors included.
- Request bodies over the configured size are refused with 413 while they stream in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROXY_PATH = "/api/fal/proxy"
PROXY_TARGETS = {
    "queue.fal.run": "/queue",
    "queue.falrun.com": "/queue",
    "fal.run": "/run",
    "falrun.com": "/run",
    "rest.fal.ai": "/rest",
    "rest.alpha.fal.ai": "/rest",
    "v3.fal.media": "/cdn",
    "v3b.fal.media": "/cdn",
}
HOST_PREFIXES = (("queue.", "/queue"), ("rest.", "/rest"))
# server paths that keep their meaning on every host
UNPREFIXED = ("/health", "/.well-known/", "/openapi.json", "/docs", "/redoc", "/files/", "/api/", "/queue/", "/run/", "/rest/", "/cdn/")
ID_HEADER_PATHS = ("/queue/", "/run/")


class BodyTooLarge(Exception):
    pass


async def send_json(send: Send, status: int, body: dict, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class ProtocolRouting:
    def __init__(self, app: ASGIApp, *, owners: frozenset[str], max_body_bytes: int, scheme: str) -> None:
        self.app = app
        self.owners = owners
        self.max_body_bytes = max_body_bytes
        self.scheme = scheme

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        if scope["path"] == PROXY_PATH:
            error = self._proxy(scope)
            if error:
                await send_json(send, 400, {"detail": error, "error_type": "bad_request"})
                return
        else:
            self._route_by_host(scope)

        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_json(send, 413, self._too_large())
            return

        add_request_id = scope["path"].startswith(ID_HEADER_PATHS)
        started = False
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if add_request_id and not any(key.lower() == b"x-fal-request-id" for key, _ in message["headers"]):
                    message = {**message, "headers": [*message["headers"], (b"x-fal-request-id", str(uuid.uuid4()).encode())]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tagged_send)
        except BodyTooLarge:
            if not started:
                await send_json(send, 413, self._too_large())

    def _too_large(self) -> dict:
        return {"detail": f"The request body is larger than {self.max_body_bytes} bytes", "error_type": "payload_too_large"}

    def _proxy(self, scope: Scope) -> str | None:
        """Rewrites a proxied request to the local route of its fal target; returns an error if none."""
        target = _header(scope, b"x-fal-target-url")
        if not target:
            return "The proxy needs an `x-fal-target-url` header"
        parts = urlsplit(target)
        prefix = PROXY_TARGETS.get((parts.hostname or "").lower())
        if prefix is None or parts.scheme not in ("http", "https"):
            return f"`x-fal-target-url` must point at a fal API host ({', '.join(sorted(PROXY_TARGETS))})"
        scope["path"] = prefix + (parts.path or "/")
        scope["raw_path"] = scope["path"].encode()
        scope["query_string"] = parts.query.encode()
        return None

    def _route_by_host(self, scope: Scope) -> None:
        path = scope["path"]
        if path.startswith(UNPREFIXED):
            return
        host = (_header(scope, b"host") or "").lower()
        for host_prefix, route_prefix in HOST_PREFIXES:
            if host.startswith(host_prefix):
                if route_prefix == "/queue":
                    scope["kiln.queue_base"] = f"{self.scheme}://{host}"
                self._prefix(scope, route_prefix)
                return
        if path.strip("/").split("/", 1)[0] in self.owners:
            self._prefix(scope, "/run")

    @staticmethod
    def _prefix(scope: Scope, prefix: str) -> None:
        scope["path"] = prefix + scope["path"]
        scope["raw_path"] = scope["path"].encode()
