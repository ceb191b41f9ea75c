"""Fetch user-supplied URLs (image inputs, webhook targets) without SSRF.

Requests name URLs that the server then fetches, so a client could aim the
server at its own network: cloud metadata endpoints, admin pages on
localhost, services on the LAN.  Every such fetch goes through this module,
which:

* accepts only http and https URLs, plus ``data:`` URIs decoded locally;
* resolves the host once, refuses the URL if *any* address is non-public,
  and connects to exactly the address it checked, so DNS rebinding between
  the check and the connection cannot send the request elsewhere;
* follows redirects by hand, checking every hop the same way;
* caps the body size and the whole download time.

``ipaddress.is_global``/``is_private`` are deliberately not used: on Python
3.11.7 ``192.0.0.192`` counts as global (CVE-2024-4032), 100.64/10 (Alibaba
Cloud metadata) does not count as private, and NAT64 forms of link-local
addresses count as global.  The non-public ranges are listed explicitly
below from the IANA special-purpose address registries instead.

This is a first layer only; deployments should also firewall egress.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import httpx

from server import __version__

logger = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], list[str]]

_ALLOW_FLAG_HINT = "Start the server with `--allow-private-urls` to allow it."

# IANA IPv4 special-purpose entries that are not globally reachable, plus
# multicast and class E.  192.0.0.0/24 is blocked whole, although two /32s in
# it are anycast services, because no image host lives there.
_BLOCKED_IPV4 = tuple(
    IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT; Alibaba Cloud metadata is here
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local; AWS/GCP/Azure metadata is here
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (the CVE-2024-4032 gap)
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including broadcast 255.255.255.255
    )
)

# Public IPv6 unicast is allocated only from 2000::/3.  Everything outside it
# (::/128, ::1, IPv4-compatible ::/96, 64:ff9b:1::/48, 100::/64, fc00::/7,
# fe80::/10, fec0::/10, ff00::/8, ...) is refused once the forms that embed an
# IPv4 address have been unwrapped.  64:ff9b:1::/48 (RFC 8215) is refused
# whole: its operator picks where the IPv4 address sits, so it cannot be
# unwrapped unambiguously.  These are the non-public blocks inside 2000::/3.
_GLOBAL_UNICAST_IPV6 = IPv6Network("2000::/3")
_BLOCKED_IPV6 = tuple(
    IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments (Teredo is unwrapped first)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")

# Cloud metadata services: covered by the ranges above, listed so that the
# most valuable targets stay refused even if the ranges are ever loosened.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254")
)
_BLOCKED_HOSTNAMES = frozenset({"localhost", "metadata.google.internal"})

_WEB_SCHEMES = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


_USER_AGENT = f"kiln/{__version__}"


class FetchError(Exception):
    """A URL could not be fetched. `kind` is a fal-style error type."""

    def __init__(self, message: str, kind: str = "file_download_error") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching user-supplied URLs.

    ``allow_private`` turns off only the address checks, for deployments that
    fetch inputs from their own network; pinning and limits still apply.
    """

    allow_private: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    total_timeout: float = 30.0
    max_bytes: int = 64 * 1024 * 1024
    max_redirects: int = 5


@dataclass(frozen=True)
class Fetched:
    """A downloaded body.

    ``content_type`` is only what the server or data URI declared; callers
    sniff the bytes themselves rather than trust it.
    """

    data: bytes
    content_type: str | None
    url: str


def is_blocked_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is refused unless private URLs are allowed.

    IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4, Teredo) are
    judged by the IPv4 address, since that is where the packets end up.
    """
    if ip in _METADATA_ADDRESSES:
        return True
    if isinstance(ip, IPv4Address):
        return any(ip in net for net in _BLOCKED_IPV4)
    embedded = _embedded_ipv4(ip)
    if embedded:
        return any(is_blocked_address(v4) for v4 in embedded)
    return ip not in _GLOBAL_UNICAST_IPV6 or any(ip in net for net in _BLOCKED_IPV6)


def _embedded_ipv4(ip: IPv6Address) -> tuple[IPv4Address, ...]:
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip in _NAT64_WELL_KNOWN:
        return (IPv4Address(int(ip) & 0xFFFF_FFFF),)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo  # (server, client); both must be public
    return ()


def _is_blocked_hostname(host: str) -> bool:
    """Names refused before resolution, as they may resolve specially (or
    only inside a cloud) to addresses the checks would otherwise have to
    catch."""
    name = host.rstrip(".").lower()
    return name in _BLOCKED_HOSTNAMES or name.endswith(".localhost")


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _describe_size(n: int) -> str:
    mib = 1024 * 1024
    return f"{n // mib} MiB" if n % mib == 0 else f"{n} bytes"


def _too_large(source: str, max_bytes: int) -> FetchError:
    return FetchError(
        f"The file from {source} is larger than the {_describe_size(max_bytes)} limit.",
        "file_too_large",
    )


def _not_allowed(host: str) -> FetchError:
    return FetchError(
        f"Fetching from {host!r} is not allowed: it is, or resolves to, a private, "
        f"loopback, link-local or otherwise non-public address. {_ALLOW_FLAG_HINT}",
        "url_not_allowed",
    )


def _timed_out(url: httpx.URL) -> FetchError:
    return FetchError(f"Timed out downloading from {url.host}.")


def _is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def _decode_data_url(url: str, max_bytes: int) -> Fetched:
    """Decode ``data:[<mediatype>][;base64],<data>`` (RFC 2397) locally."""
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise FetchError("The data: URI has no ',' before its data.", "invalid_url")
    params = header.split(";")
    is_base64 = params[-1].strip().lower() == "base64"
    if is_base64:
        params.pop()
    media_type = ";".join(params).strip() or None
    if is_base64:
        data = _decode_base64(payload, max_bytes)
    else:
        try:
            data = urllib.parse.unquote_to_bytes(payload)
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\ud800" escape
            raise FetchError(
                f"The data: URI holds a character that is not valid Unicode at position {exc.start}.",
                "invalid_url",
            ) from exc
    if len(data) > max_bytes:
        raise _too_large("the data: URI", max_bytes)
    return Fetched(data=data, content_type=media_type, url=url)


def _decode_base64(payload: str, max_bytes: int) -> bytes:
    """Decode base64 the way browsers do for data: URIs: percent-escapes and
    whitespace (line-wrapped encoders) are tolerated, and so is missing
    padding; anything else outside the alphabet is an error."""
    text = "".join(urllib.parse.unquote(payload).split())
    if len(text) > (max_bytes + 2) // 3 * 4:  # the encoded length of max_bytes
        raise _too_large("the data: URI", max_bytes)
    if not text.isascii():  # a non-ASCII character, or a %-escape of a byte over 0x7F
        outside = next(char for char in text if not char.isascii())
        raise FetchError(
            f"The data: URI has invalid base64: {outside!r} is outside base64's alphabet.", "invalid_url"
        )
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise FetchError(f"The data: URI has invalid base64: {exc}.", "invalid_url") from exc


def _parse_web_url(url: str) -> httpx.URL:
    """Parse an http(s) URL, refusing what Kiln will not request.

    The parsed URL is also what gets requested, so the checks and the
    request can never disagree about which host is meant.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise FetchError(f"Invalid URL: {exc}.", "invalid_url") from exc
    if not parsed.scheme:
        raise FetchError(
            "The URL has no scheme; use an absolute http or https URL.", "url_not_allowed"
        )
    if parsed.scheme not in _WEB_SCHEMES:
        raise FetchError(
            f"The URL scheme {parsed.scheme!r} is not allowed; use an http or https URL.",
            "url_not_allowed",
        )
    if parsed.userinfo:
        raise FetchError("URLs with a user name or password are not accepted.", "invalid_url")
    if not parsed.raw_host:
        raise FetchError("The URL has no host.", "invalid_url")
    return parsed


def _redirect_location(response: httpx.Response, url: httpx.URL) -> str | None:
    if response.status_code not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get("location")
    if not location:
        raise FetchError(
            f"{url.host} answered HTTP {response.status_code} without a Location to redirect to."
        )
    return location


def _next_hop(current: httpx.URL, location: str) -> httpx.URL:
    try:
        joined = current.join(location)
    except httpx.InvalidURL as exc:
        raise FetchError(f"{current.host} redirected to an invalid URL: {exc}.") from exc
    return _parse_web_url(str(joined))


def _raise_for_status(response: httpx.Response, url: httpx.URL) -> None:
    """Only 2xx is a download: 4xx/5xx, and 3xx that cannot be followed."""
    if not response.is_success:
        raise FetchError(f"{url.host} answered HTTP {response.status_code}.")


def _transport_error(url: httpx.URL, exc: httpx.HTTPError, deadline_hit: bool) -> FetchError:
    if deadline_hit or isinstance(exc, httpx.TimeoutException):
        return _timed_out(url)
    if isinstance(exc, httpx.ConnectError):
        return FetchError(f"Could not connect to {url.host}: {exc}.")
    return FetchError(f"Error downloading from {url.host}: {exc}.")


class _Watchdog:
    """Cuts a request's connection when its overall deadline passes.

    httpx only has per-operation timeouts, so a server that trickles a byte
    just inside every read timeout, in the headers or the body, could hold a
    worker thread for hours.  Shutting the socket down from a timer thread
    wakes the blocked read with EOF instead.
    """

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._sock = None

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore ``trace`` hook: remember the socket of each new connection
        (TLS replaces the TCP socket object), the only public way to reach it
        before the response headers have arrived."""
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        with self._lock:
            self._sock = info["return_value"].get_extra_info("socket")
            if self.fired:
                self._shutdown()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is None:
            return
        try:
            # The plain-socket method, also for TLS sockets: SSLSocket.shutdown
            # unwraps the TLS object under the reading thread's feet.
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the request finishing


class UrlFetcher:
    """Fetches and vets user-supplied URLs under a FetchPolicy.

    Safe to share between worker threads: per-request state lives on the
    stack and httpx's connection pool is locked.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolver: Resolver | None = None,
        is_blocked: Callable[[IPAddress], bool] = is_blocked_address,
    ) -> None:
        self._policy = policy
        self._resolver = resolver or _system_resolver
        self._is_blocked = is_blocked
        # No keep-alive: connections are keyed by IP, so a pooled TLS
        # connection verified for one hostname could carry a request for
        # another name on the same address.  Identity encoding keeps a small
        # compressed response from inflating far past max_bytes in one chunk.
        self._client = httpx.Client(
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
        )

    def fetch(self, url: str) -> Fetched:
        """Download an http(s) URL or decode a data: URI within the policy."""
        url = url.strip()
        if _is_data_url(url):
            return _decode_data_url(url, self._policy.max_bytes)
        current = _parse_web_url(url)
        deadline = time.monotonic() + self._policy.total_timeout
        for _ in range(self._policy.max_redirects + 1):
            response, body = self._round_trip(
                "GET", current, deadline, read_timeout=self._policy.read_timeout, read_body=True
            )
            location = _redirect_location(response, current)
            if location is None:
                _raise_for_status(response, current)
                return Fetched(body, response.headers.get("content-type"), str(current))
            current = _next_hop(current, location)
        raise FetchError(f"Too many redirects (more than {self._policy.max_redirects}).")

    def check(self, url: str) -> None:
        """Vet an http(s) URL without requesting it, so that a bad webhook
        URL is refused at submit time rather than after the job has run."""
        self._checked_addresses(_parse_web_url(url.strip()))

    def post(self, url: str, content: bytes, headers: Mapping[str, str], timeout: float) -> int:
        """POST once (webhook delivery) and return the HTTP status.

        Redirects are not followed: a receiver has no reason to redirect, and
        following would resend the payload to a host nobody vetted at submit
        time.  ``timeout`` bounds the whole exchange.
        """
        response, _ = self._round_trip(
            "POST",
            _parse_web_url(url.strip()),
            time.monotonic() + timeout,
            read_timeout=timeout,
            headers=headers,
            content=content,
            read_body=False,
        )
        return response.status_code

    def close(self) -> None:
        self._client.close()

    def _checked_addresses(self, url: httpx.URL) -> list[IPAddress]:
        """Resolve ``url``'s host once and apply the address policy."""
        host = url.raw_host.decode("ascii")
        literal = _ip_literal(host)
        if literal is not None:
            addresses = [literal]
        elif not self._policy.allow_private and _is_blocked_hostname(host):
            logger.warning("refused URL host %s by name", host)
            raise _not_allowed(host)
        else:
            addresses = self._resolve(host, url.port or _WEB_SCHEMES[url.scheme])
        if not self._policy.allow_private:
            for address in addresses:
                if self._is_blocked(address):
                    logger.warning("refused URL host %s: non-public address %s", host, address)
                    raise _not_allowed(host)
        return addresses

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            found = self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"Could not resolve host {host!r}.") from exc
        if not found:
            raise FetchError(f"Could not resolve host {host!r}.")
        return [ipaddress.ip_address(address) for address in found]

    def _round_trip(
        self,
        method: str,
        url: httpx.URL,
        deadline: float,
        *,
        read_timeout: float,
        read_body: bool,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """One request to a checked address of ``url``; the body is read (and
        capped) only when wanted and the status is 2xx."""
        addresses = self._checked_addresses(url)
        with _Watchdog(deadline) as watchdog:
            try:
                response = self._send_pinned(
                    method, url, addresses, deadline, read_timeout, watchdog, headers, content
                )
                try:
                    body = self._read_capped(response, url) if read_body and response.is_success else b""
                finally:
                    response.close()
            except httpx.HTTPError as exc:
                raise _transport_error(url, exc, watchdog.fired) from exc
        if watchdog.fired:  # a close-delimited body ends "cleanly" when cut
            raise _timed_out(url)
        return response, body

    def _send_pinned(
        self,
        method: str,
        url: httpx.URL,
        addresses: list[IPAddress],
        deadline: float,
        read_timeout: float,
        watchdog: _Watchdog,
        headers: Mapping[str, str] | None,
        content: bytes | None,
    ) -> httpx.Response:
        """Send to the first checked address that accepts a connection.

        The URL names the IP literal, so httpx connects nowhere else; the
        original Host header and, for https, the SNI name keep virtual hosting
        and certificate verification tied to the real hostname.
        """
        extensions: dict[str, Any] = {"trace": watchdog.trace}
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
        request_headers = httpx.Headers(headers)
        request_headers["Host"] = url.netloc.decode("ascii")  # replaces any casing

        def send(address: IPAddress) -> httpx.Response:
            request = self._client.build_request(
                method,
                url.copy_with(host=str(address)),
                headers=request_headers,
                content=content,
                timeout=self._timeout(url, deadline, read_timeout),
                extensions=extensions,
            )
            try:
                return self._client.send(request, stream=True)
            except httpx.InvalidURL as exc:
                # httpx builds the next request of any redirect, followed or not, and raises
                # InvalidURL (not an HTTPError) on a Location such as `x:y`
                raise FetchError(f"{url.host} redirected to an invalid URL: {exc}.") from exc

        for address in addresses[:-1]:
            try:
                return send(address)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if watchdog.fired:
                    raise
                logger.debug("could not connect to %s at %s; trying the next", url.host, address)
        return send(addresses[-1])

    def _timeout(self, url: httpx.URL, deadline: float, read_timeout: float) -> httpx.Timeout:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(url)
        connect = min(self._policy.connect_timeout, remaining)
        read = min(read_timeout, remaining)
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)

    def _read_capped(self, response: httpx.Response, url: httpx.URL) -> bytes:
        """Read the body, stopping at max_bytes whatever Content-Length says
        (it may be absent, chunked, or a lie)."""
        limit = self._policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(url.host, limit)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise _too_large(url.host, limit)
        return bytes(body)
