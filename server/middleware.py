"""ASGI middleware that makes one Kiln port look like fal's several hosts.

- `/api/fal/proxy` with `x-fal-target-url` (the JS client's `proxyUrl` mode) is dispatched in-process
  to the API the target host names, keeping method, path, query and body.
- A request whose Host starts with `queue.` gets the queue API at the root (so with DNS and TLS in
  place a client needs only `FAL_RUN_HOST`); `rest.` gets the storage API at the root; a root path
  that starts with a served owner (`/fal-ai/...`) is the sync API.
- Response URLs never carry a Host header the operator did not configure: with `--public-url` they
  are built from it; otherwise a `queue.` Host is kept only if its name is an `--allowed-host`.
- Every queue and run response carries `x-fal-request-id`, errors included (413 too).
- Request bodies over the configured size are refused with 413 while they stream in, also when the
  app has already turned the refusal into an error of its own (FastAPI answers 400 to a failed read).
  File uploads are exempt: they stream to disk and the storage routes enforce the upload limits.
- A submit body (POST under `/queue/` or `/run/`) is read here first: one that is not UTF-8 or nests
  deeper than `MAX_JSON_DEPTH` is refused with FastAPI's 422 body before anything parses it, and a
  trailing slash on the endpoint id is ignored, as fal's gateway does.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

import numpy as np
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
# fal's inputs nest a few levels (a list of objects at most); parsers, validators and serialisers all
# have depth limits of their own (pydantic stops serialising at 255), so refuse deep bodies up front
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_BRACKET_STEPS = np.zeros(256, np.int64)
_BRACKET_STEPS[list(b"[{")], _BRACKET_STEPS[list(b"]}")] = 1, -1
_HOST = re.compile(r"(?P<name>[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::[0-9]{1,5})?")


class BodyTooLarge(Exception):
    pass


def is_streamed_upload(path: str) -> bool:
    """File bodies: the CDN upload routes and the Python client's multipart parts under `/files/`."""
    return path.startswith("/cdn/") or (path.startswith("/files/") and "/multipart/" in path)


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


def json_nests_deeper(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON `body` has arrays or objects nested more than `limit` deep (brackets inside strings
    do not count). Cheap for ordinary bodies: one that has at most `limit` opening brackets cannot."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = np.frombuffer(_JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS), np.uint8)
    depth = 0
    for start in range(0, len(brackets), 1 << 20):
        levels = np.cumsum(_BRACKET_STEPS[brackets[start : start + (1 << 20)]]) + depth
        if levels.max() > limit:
            return True
        depth = int(levels[-1])
    return False


def json_problem(body: bytes) -> str | None:
    """Why a submit body cannot be taken as JSON before any parser sees it, or None: not UTF-8 (JSON
    between systems must be; Python's parser would let encoded surrogates through), or nested deeper
    than `MAX_JSON_DEPTH`."""
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            return f"The body is not valid UTF-8 (byte 0x{body[error.start]:02x} at position {error.start})"
    if json_nests_deeper(body):
        return f"The body's JSON nests more than {MAX_JSON_DEPTH} levels deep; fal's inputs nest a few levels at most"
    return None


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this content type as JSON."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class ProtocolRouting:
    def __init__(
        self,
        app: ASGIApp,
        *,
        owners: frozenset[str],
        max_body_bytes: int,
        scheme: str,
        public_url: str | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.owners = owners
        self.max_body_bytes = max_body_bytes
        self.scheme = scheme
        self.public_url = public_url
        self.allowed_hosts = frozenset(name.lower() for name in allowed_hosts)

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

        add_request_id = scope["path"].startswith(ID_HEADER_PATHS)
        id_headers = [(b"x-fal-request-id", str(uuid.uuid4()).encode())] if add_request_id else []
        if is_streamed_upload(scope["path"]):
            # uploads stream to disk within --max-upload-mib and the key's quota; the JSON limit is not theirs
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            await send_json(send, 413, self._too_large(), id_headers)
            return

        started = False
        too_large = False  # the body passed the limit: whatever the app answers, the client gets 413
        replaced = False  # the app's answer was replaced by that 413; drop the rest of it
        received = 0

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                started = True
                if too_large:  # e.g. FastAPI's 400 "There was an error parsing the body"
                    replaced = True
                    await send_json(send, 413, self._too_large(), id_headers)
                    return
                if add_request_id and not any(key.lower() == b"x-fal-request-id" for key, _ in message["headers"]):
                    message = {**message, "headers": [*message["headers"], *id_headers]}
            await send(message)

        app_receive: Receive = limited_receive
        if scope["method"] == "POST" and add_request_id:
            self._strip_trailing_slash(scope)
            if _is_json(_header(scope, b"content-type")):
                try:
                    body = await _read_body(limited_receive)
                except BodyTooLarge:
                    await send_json(send, 413, self._too_large(), id_headers)
                    return
                problem = json_problem(body)
                if problem:
                    await send_json(send, 422, {"detail": [{"loc": ["body"], "msg": problem, "type": "json_invalid"}]}, id_headers)
                    return
                app_receive = _replay(body, receive)

        try:
            await self.app(scope, app_receive, tagged_send)
        except BodyTooLarge:
            if not started:
                await send_json(send, 413, self._too_large(), id_headers)

    def _too_large(self) -> dict:
        return {"detail": f"The request body is larger than {self.max_body_bytes} bytes", "error_type": "payload_too_large"}

    @staticmethod
    def _strip_trailing_slash(scope: Scope) -> None:
        """`POST /queue/fal-ai/post-processing/` submits to `fal-ai/post-processing`, as on fal."""
        path = scope["path"]
        if path.endswith("/") and path.rstrip("/").count("/") > 1:
            scope["path"] = path.rstrip("/")
            scope["raw_path"] = scope["path"].encode()

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
                if route_prefix == "/queue" and self._is_allowed_host(host):
                    scope["kiln.queue_base"] = f"{self.scheme}://{host}"
                self._prefix(scope, route_prefix)
                return
        if path.strip("/").split("/", 1)[0] in self.owners:
            self._prefix(scope, "/run")

    def _is_allowed_host(self, host: str) -> bool:
        """Whether response URLs may be built on this Host: never with --public-url (URLs come from it),
        else only for a configured name or its `queue.` form, so a forged Host is never reflected."""
        match = _HOST.fullmatch(host)
        if self.public_url or match is None:
            return False
        name = match["name"]
        return name in self.allowed_hosts or name.removeprefix("queue.") in self.allowed_hosts

    @staticmethod
    def _prefix(scope: Scope, prefix: str) -> None:
        scope["path"] = prefix + scope["path"]
        scope["raw_path"] = scope["path"].encode()


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (`receive` enforces the size limit)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app `body` already read, then passes on (disconnect and the like)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
