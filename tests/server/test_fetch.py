"""Tests for server.fetch: SSRF address policy, pinning, redirects and limits.

Everything runs against HTTP servers on loopback; an autouse guard fails any
test that tries to connect or resolve names outside this machine.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.fetch import FetchError, FetchPolicy, UrlFetcher, is_blocked_address

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
BIG = 10_000  # body size of the "/big-*" routes
CAP = 1_000  # max_bytes used against them
NUMERIC_HOSTS = {"localhost", "2130706433", "0x7f.1"}  # resolved from /etc/hosts or inet_aton


# --------------------------------------------------------------------------- network guard


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records every outgoing TCP connection; anything off loopback, or any
    DNS lookup of a real name, fails the test instead of reaching out."""
    attempts: list[tuple[str, int]] = []
    real_connect, real_resolve = socket.create_connection, socket.getaddrinfo

    def connect(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        assert ipaddress.ip_address(address[0]).is_loopback, f"tried to reach {address}"
        return real_connect(address, *args, **kwargs)

    def resolve(host: str, *args: object, **kwargs: object) -> list:
        assert host in NUMERIC_HOSTS or _is_ip(host), f"tried to resolve {host!r}"
        return real_resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return attempts


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- local servers


class Handler(BaseHTTPRequestHandler):
    """Routes GET/POST /<name> to route_<name>; records every request."""

    protocol_version = "HTTP/1.1"
    server: LocalServer

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on us, as the limit and timeout tests intend

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _dispatch(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.command, self.path, self.headers, body))
        name = self.path.split("?")[0].strip("/").replace("-", "_")
        getattr(self, f"route_{name}", self.route_missing)()

    def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self._reply(status, Location=location)

    def route_missing(self) -> None:
        self._reply(404, b"not found")

    def route_image(self) -> None:
        self._reply(200, PNG, Content_Type="image/png")

    def route_secret(self) -> None:
        self._reply(200, b"internal secret")

    def route_echo(self) -> None:
        self._reply(200, self.headers["Host"].encode(), Content_Type="text/plain")

    def route_exact(self) -> None:
        self._reply(200, b"x" * CAP)

    def route_big_honest(self) -> None:
        self._reply(200, b"x" * BIG)

    def route_big_declared(self) -> None:
        """Announces a huge body, then sends almost nothing."""
        self.send_response(200)
        self.send_header("Content-Length", str(10**10))
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        self.server.stop.wait(2)

    def route_big_close(self) -> None:
        """No Content-Length: the body ends when the connection closes."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(b"x" * BIG)

    def route_big_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for _ in range(BIG // 500):
            self.wfile.write(b"1f4\r\n" + b"x" * 500 + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def route_dribble(self) -> None:
        """Keeps every read well inside the read timeout, forever."""
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self._trickle(b"x")

    def route_dribble_close(self) -> None:
        """Like dribble, but close-delimited, so a cut looks like a clean end."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._trickle(b"x")

    def route_dribble_headers(self) -> None:
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        self._trickle(b"a")

    def route_stall(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.write(b"x")
        self.wfile.flush()
        self.server.stop.wait(10)

    def route_redirect_relative(self) -> None:
        self._redirect(302, "/image")

    def route_redirect_loop(self) -> None:
        self._redirect(302, "/redirect-loop")

    def route_redirect_file(self) -> None:
        self._redirect(302, "file:///etc/passwd")

    def route_redirect_away(self) -> None:
        self._redirect(302, self.server.redirect_to)

    def route_redirect_invalid(self) -> None:
        self._redirect(302, "x:y")

    def route_hook(self) -> None:
        self._reply(204)

    def route_hook_redirect(self) -> None:
        self._redirect(307, "/hook")

    def _trickle(self, byte: bytes) -> None:
        for _ in range(400):
            self.wfile.write(byte)
            self.wfile.flush()
            if self.server.stop.wait(0.02):
                return


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), Handler)
        self.requests: list[tuple[str, str, Message, bytes]] = []
        self.stop = threading.Event()
        self.redirect_to = ""

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skip the reverse DNS lookup
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "/") -> str:
        return f"http://{self.server_address[0]}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.requests]


@pytest.fixture(scope="module")
def _servers() -> Iterator[dict[str, LocalServer]]:
    servers: dict[str, LocalServer] = {}
    threads = []
    for host in ("127.0.0.1", "127.0.0.2"):
        try:
            servers[host] = LocalServer(host)
        except OSError:
            continue  # 127.0.0.2 is not routed to lo everywhere
        threads.append(threading.Thread(target=servers[host].serve_forever, daemon=True))
        threads[-1].start()
    yield servers
    for server in servers.values():
        server.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(_servers: dict[str, LocalServer]) -> LocalServer:
    """The HTTP server on 127.0.0.1, with an empty request log."""
    _servers["127.0.0.1"].requests.clear()
    return _servers["127.0.0.1"]


@pytest.fixture
def redirector(_servers: dict[str, LocalServer], server: LocalServer) -> LocalServer:
    if "127.0.0.2" not in _servers:
        pytest.skip("cannot bind 127.0.0.2")
    _servers["127.0.0.2"].requests.clear()
    return _servers["127.0.0.2"]


def exempt(*ips: str) -> Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]:
    """is_blocked_address, except for the given test-server addresses."""
    allowed = {ipaddress.ip_address(ip) for ip in ips}
    return lambda ip: ip not in allowed and is_blocked_address(ip)


@pytest.fixture
def make_fetcher() -> Iterator[Callable[..., UrlFetcher]]:
    fetchers: list[UrlFetcher] = []

    def make(
        exempt_ips: tuple[str, ...] = ("127.0.0.1",),
        resolver: Callable[[str, int], list[str]] | None = None,
        **policy: object,
    ) -> UrlFetcher:
        fetcher = UrlFetcher(FetchPolicy(**policy), resolver=resolver, is_blocked=exempt(*exempt_ips))
        fetchers.append(fetcher)
        return fetcher

    yield make
    for fetcher in fetchers:
        fetcher.close()


def fails(kind: str, call: Callable[[], object]) -> FetchError:
    with pytest.raises(FetchError) as info:
        call()
    assert info.value.kind == kind, str(info.value)
    return info.value


def teredo(server: str, client: str) -> str:
    """A Teredo address (RFC 4380): the client IPv4 is stored inverted."""
    value = (0x2001_0000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= 0xFFFF << 32 | (int(ipaddress.IPv4Address(client)) ^ 0xFFFF_FFFF)
    return str(ipaddress.IPv6Address(value))


# --------------------------------------------------------------------------- address policy


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.100.100.200",
        "192.0.0.192",
        "0.0.0.0",
        "198.18.0.1",
        "203.0.113.9",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::7f00:1",  # IPv4-compatible (deprecated) form of 127.0.0.1
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a9fe:a9fe",
        "64:ff9b:1:a9fe:a9:fe00::",  # RFC 6052 /48 layout of 169.254.169.254
        "2002:7f00:1::1",
        teredo("65.54.227.120", "10.0.0.1"),
        "2001:db8::1",
        "fd00:ec2::254",
        "fc00::1",
        "fe80::1",
        "ff02::1",
        "100::1",
    ],
)
def test_blocked_addresses(address: str) -> None:
    assert is_blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "64:ff9b::808:808",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        teredo("65.54.227.120", "8.8.8.8"),
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_blocked_address(ipaddress.ip_address(address))


# --------------------------------------------------------------------------- fetching


def test_fetch_returns_body_and_declared_type(server: LocalServer, make_fetcher) -> None:
    fetched = make_fetcher().fetch(server.url("/image"))
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"
    assert fetched.url == server.url("/image")
    assert server.requests[0][2]["User-Agent"].startswith("kiln/")


def test_body_of_exactly_max_bytes_is_accepted(server: LocalServer, make_fetcher) -> None:
    assert len(make_fetcher(max_bytes=CAP).fetch(server.url("/exact")).data) == CAP


@pytest.mark.parametrize("path", ["/big-honest", "/big-close", "/big-chunked"])
def test_body_over_max_bytes_is_refused(server: LocalServer, make_fetcher, path: str) -> None:
    error = fails("file_too_large", lambda: make_fetcher(max_bytes=CAP).fetch(server.url(path)))
    assert "limit" in str(error)


def test_declared_length_over_max_bytes_is_refused_before_reading(
    server: LocalServer, make_fetcher
) -> None:
    fetcher = make_fetcher(max_bytes=CAP, total_timeout=1.0)
    fails("file_too_large", lambda: fetcher.fetch(server.url("/big-declared")))


def test_fetcher_is_shared_between_threads(server: LocalServer, make_fetcher) -> None:
    fetcher = make_fetcher()
    results: list[bytes] = []

    def fetch() -> None:
        results.append(fetcher.fetch(server.url("/image")).data)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == [PNG] * 8


@pytest.mark.parametrize("path", ["/dribble", "/dribble-close", "/dribble-headers", "/stall"])
def test_total_timeout_cuts_slow_servers(server: LocalServer, make_fetcher, path: str) -> None:
    fetcher = make_fetcher(total_timeout=0.4, read_timeout=5.0)
    started = time.monotonic()
    error = fails("file_download_error", lambda: fetcher.fetch(server.url(path)))
    assert time.monotonic() - started < 1.5
    assert "Timed out" in str(error)


def test_http_error_status(server: LocalServer, make_fetcher) -> None:
    error = fails("file_download_error", lambda: make_fetcher().fetch(server.url("/nothing-here")))
    assert "404" in str(error)


def test_connection_refused(make_fetcher) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fails("file_download_error", lambda: make_fetcher().fetch(f"http://127.0.0.1:{port}/"))


def test_unreachable_address_falls_back_to_the_next_checked_one(
    server: LocalServer, make_fetcher, connections: list
) -> None:
    fetcher = make_fetcher(
        exempt_ips=("127.0.0.3", "127.0.0.1"), resolver=lambda host, port: ["127.0.0.3", "127.0.0.1"]
    )
    assert fetcher.fetch(f"http://images.example.test:{server.port}/image").data == PNG
    assert connections == [("127.0.0.3", server.port), ("127.0.0.1", server.port)]


def test_allow_private_lifts_only_the_address_check(server: LocalServer) -> None:
    fetcher = UrlFetcher(FetchPolicy(allow_private=True, max_bytes=CAP))
    try:
        # "localhost" goes through the real resolver (/etc/hosts).
        assert fetcher.fetch(f"http://localhost:{server.port}/image").data == PNG
        fails("file_too_large", lambda: fetcher.fetch(server.url("/big-close")))
    finally:
        fetcher.close()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/secret",
        "http://[::1]:{port}/secret",
        "http://localhost:{port}/secret",
        "http://LOCALHOST.:{port}/secret",
        "http://kiln.localhost:{port}/secret",
        "http://2130706433:{port}/secret",  # 127.0.0.1 as one number
        "http://0x7f.1:{port}/secret",
        "http://[::ffff:127.0.0.1]:{port}/secret",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://192.0.0.192/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "https://10.0.0.1/",
    ],
)
def test_default_policy_refuses_private_targets(
    server: LocalServer, connections: list, url: str
) -> None:
    fetcher = UrlFetcher(FetchPolicy())
    try:
        error = fails("url_not_allowed", lambda: fetcher.fetch(url.format(port=server.port)))
    finally:
        fetcher.close()
    assert "--allow-private-urls" in str(error)
    assert connections == []
    assert server.requests == []


@pytest.mark.parametrize(
    "addresses", [["127.0.0.1"], ["93.184.215.14", "10.0.0.7"], ["2606:4700::1", "fe80::1"]]
)
def test_hostname_resolving_to_any_private_address_is_refused(
    make_fetcher, connections: list, addresses: list[str]
) -> None:
    fetcher = make_fetcher(exempt_ips=(), resolver=lambda host, port: addresses)
    fails("url_not_allowed", lambda: fetcher.fetch("http://images.example.test/a.png"))
    assert connections == []


def test_resolution_failure(make_fetcher) -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    fetcher = make_fetcher(resolver=resolver)
    fails("file_download_error", lambda: fetcher.fetch("http://nowhere.example.test/"))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://x/", "gopher://x/", "javascript:alert(1)", "example.com/a.png"]
)
def test_other_schemes_are_refused(make_fetcher, url: str) -> None:
    fails("url_not_allowed", lambda: make_fetcher().fetch(url))


@pytest.mark.parametrize("url", ["example.com/a.png", "//example.com/a.png", "/files/abc/a.png"])
def test_url_without_a_scheme_says_so(make_fetcher, url: str) -> None:
    """Regression (issue 10, item 22): the message read "URL URLs without a scheme is not allowed"."""
    error = fails("url_not_allowed", lambda: make_fetcher().fetch(url))
    assert str(error) == "The URL has no scheme; use an absolute http or https URL."


@pytest.mark.parametrize("url", ["http://user:pw@images.example.test/", "http://[::1", "http:///path"])
def test_malformed_urls_are_invalid(make_fetcher, connections: list, url: str) -> None:
    fails("invalid_url", lambda: make_fetcher().fetch(url))
    assert connections == []


# --------------------------------------------------------------------------- redirects


def test_redirect_to_private_address_is_rechecked(
    server: LocalServer, redirector: LocalServer, make_fetcher
) -> None:
    redirector.redirect_to = server.url("/secret")
    fetcher = make_fetcher(exempt_ips=("127.0.0.2",))
    fails("url_not_allowed", lambda: fetcher.fetch(redirector.url("/redirect-away")))
    assert redirector.paths() == ["/redirect-away"]
    assert server.requests == []


def test_redirect_loop_stops_at_max_redirects(server: LocalServer, make_fetcher) -> None:
    error = fails(
        "file_download_error",
        lambda: make_fetcher(max_redirects=2).fetch(server.url("/redirect-loop")),
    )
    assert "redirects" in str(error)
    assert len(server.requests) == 3


def test_relative_redirect_is_followed(server: LocalServer, make_fetcher) -> None:
    fetched = make_fetcher().fetch(server.url("/redirect-relative"))
    assert fetched.data == PNG
    assert fetched.url == server.url("/image")


def test_redirect_to_other_scheme_is_refused(server: LocalServer, make_fetcher) -> None:
    fails("url_not_allowed", lambda: make_fetcher().fetch(server.url("/redirect-file")))


def test_redirect_to_an_invalid_url_is_a_fetch_error(server: LocalServer, make_fetcher) -> None:
    """Regression (issue 10, item 3): `302 Location: x:y` raised httpx's InvalidURL, which is not an
    HTTPError: httpx builds the next request of every redirect, followed or not. It escaped as a 500
    for inputs, and out of the webhook dispatcher for webhooks (POST, never followed)."""
    error = fails("file_download_error", lambda: make_fetcher().fetch(server.url("/redirect-invalid")))
    assert "redirected to an invalid URL" in str(error)
    fails("file_download_error", lambda: make_fetcher().post(server.url("/redirect-invalid"), b"{}", {}, timeout=2.0))


# --------------------------------------------------------------------------- pinning


def test_request_goes_to_the_checked_address_with_original_host(
    server: LocalServer, make_fetcher, connections: list
) -> None:
    lookups: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return ["127.0.0.1"]

    fetcher = make_fetcher(resolver=resolver)
    fetched = fetcher.fetch(f"http://images.example.test:{server.port}/echo")
    assert fetched.data == f"images.example.test:{server.port}".encode()
    assert lookups == [("images.example.test", server.port)]
    assert connections == [("127.0.0.1", server.port)]


def _self_signed(directory: Path, hostname: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / "server.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def test_https_sends_the_hostname_as_sni_and_verifies_it(tmp_path: Path, make_fetcher) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(_self_signed(tmp_path, "images.example.test"))
    seen: list[str | None] = []
    context.sni_callback = lambda sslobj, name, ctx: seen.append(name)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(5)

    def serve_one() -> None:
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True):
                pass
        except OSError:
            pass  # the client rejects our untrusted certificate, as it should

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        fetcher = make_fetcher(resolver=lambda host, port: ["127.0.0.1"])
        port = listener.getsockname()[1]
        error = fails("file_download_error", lambda: fetcher.fetch(f"https://images.example.test:{port}/"))
        thread.join(5)
    finally:
        listener.close()
    assert seen == ["images.example.test"]
    assert "certificate" in str(error).lower()


# --------------------------------------------------------------------------- data: URIs


def test_data_uri_base64_round_trip(make_fetcher, connections: list) -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    fetched = make_fetcher().fetch(uri)
    assert (fetched.data, fetched.content_type, fetched.url) == (PNG, "image/png", uri)
    assert connections == []


def test_data_uri_base64_tolerates_whitespace_and_missing_padding(make_fetcher) -> None:
    encoded = base64.b64encode(PNG + b"!").decode().rstrip("=")
    wrapped = "\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20))
    assert make_fetcher().fetch(f"data:image/png;base64,{wrapped}").data == PNG + b"!"


def test_data_uri_percent_encoded_text(make_fetcher) -> None:
    fetched = make_fetcher().fetch("data:text/plain;charset=utf-8,hello%20w%C3%B6rld")
    assert fetched.data == "hello wörld".encode()
    assert fetched.content_type == "text/plain;charset=utf-8"


def test_data_uri_without_media_type(make_fetcher) -> None:
    fetched = make_fetcher().fetch("data:,abc")
    assert (fetched.data, fetched.content_type) == (b"abc", None)


@pytest.mark.parametrize(
    "uri", ["data:image/png;base64,iVBOR*w0K", "data:image/png;base64,abcde", "data:image/png;base64"]
)
def test_malformed_data_uri(make_fetcher, uri: str) -> None:
    fails("invalid_url", lambda: make_fetcher().fetch(uri))


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64,AAAA\u00e9",
        "data:image/png;base64,AAAA%FF",
        "data:image/png;base64,AAAA\ud800",
        "data:image/png;base64,\uff21AAA",  # a fullwidth A, which NFKC would make an A
        "data:text/plain,ab\ud800",
    ],
)
def test_non_ascii_data_uri_is_invalid_not_a_crash(make_fetcher, uri: str) -> None:
    """Regression (issue 10, item 2): `b64decode` raises a plain ValueError (not `binascii.Error`) for
    non-ASCII text, and `unquote_to_bytes` a UnicodeEncodeError for a lone surrogate: both were 500s."""
    fails("invalid_url", lambda: make_fetcher().fetch(uri))


@pytest.mark.parametrize(
    "uri",
    [
        "data:application/octet-stream;base64," + base64.b64encode(b"x" * (CAP + 1)).decode(),
        "data:text/plain," + "x" * (CAP + 1),
    ],
)
def test_data_uri_over_max_bytes(make_fetcher, uri: str) -> None:
    fails("file_too_large", lambda: make_fetcher(max_bytes=CAP).fetch(uri))


# --------------------------------------------------------------------------- check() and post()


def test_check_vets_without_connecting(make_fetcher, connections: list) -> None:
    fetcher = make_fetcher(exempt_ips=(), resolver=lambda host, port: ["93.184.215.14"])
    fetcher.check("https://hooks.example.test/kiln")
    fails("url_not_allowed", lambda: fetcher.check("http://169.254.169.254/"))
    fails("url_not_allowed", lambda: fetcher.check("data:,hello"))
    assert connections == []


def test_post_returns_status_and_pins(server: LocalServer, make_fetcher) -> None:
    fetcher = make_fetcher(resolver=lambda host, port: ["127.0.0.1"])
    status = fetcher.post(
        f"http://hooks.example.test:{server.port}/hook",
        b'{"ok": true}',
        {"Content-Type": "application/json", "host": "elsewhere.example.test"},
        timeout=2.0,
    )
    assert status == 204
    method, path, headers, body = server.requests[0]
    assert (method, path, body) == ("POST", "/hook", b'{"ok": true}')
    assert headers.get_all("Host") == [f"hooks.example.test:{server.port}"]
    assert headers["Content-Type"] == "application/json"


def test_post_does_not_follow_redirects(server: LocalServer, make_fetcher) -> None:
    status = make_fetcher().post(server.url("/hook-redirect"), b"{}", {}, timeout=2.0)
    assert status == 307
    assert server.paths() == ["/hook-redirect"]


def test_post_refuses_blocked_addresses(server: LocalServer, connections: list) -> None:
    fetcher = UrlFetcher(FetchPolicy())
    try:
        fails("url_not_allowed", lambda: fetcher.post(server.url("/hook"), b"{}", {}, timeout=2.0))
    finally:
        fetcher.close()
    assert connections == []
    assert server.requests == []


def test_post_times_out(server: LocalServer, make_fetcher) -> None:
    started = time.monotonic()
    fails("file_download_error", lambda: make_fetcher().post(server.url("/dribble-headers"), b"", {}, 0.3))
    assert time.monotonic() - started < 1.5
