"""`fal_webhook` delivery: fal's payload, Ed25519 signature verifiable with the published key, retries."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from server.keys import load_webhook_key
from server.webhooks import WebhookSigner
from testkit.servers import wait_completed


class Listener:
    """A webhook receiver on loopback that fails the first `failures` deliveries with HTTP 500."""

    def __init__(self, failures: int = 0) -> None:
        self.deliveries: list[tuple[dict, bytes]] = []
        self.failures = failures
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                listener.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(listener.deliveries) <= listener.failures
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.deliveries) >= count, f"got {len(self.deliveries)} deliveries, wanted {count}"


@pytest.fixture
def listener():
    listeners = []

    def make(failures: int = 0) -> Listener:
        listeners.append(Listener(failures))
        return listeners[-1]

    yield make
    for item in listeners:
        item.server.shutdown()


def verify_signature(jwks: dict, headers: dict, body: bytes) -> None:
    """What a receiver does, following fal's docs: rebuild the message, verify with any published key."""
    message = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    assert abs(time.time() - int(headers["x-fal-webhook-timestamp"])) < 300
    for key in jwks["keys"]:
        assert key["kty"] == "OKP" and key["crv"] == "Ed25519"
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(headers["x-fal-webhook-signature"]), message)


def test_webhook_is_signed_retried_and_delivered_once(make_client, listener):
    client = make_client(allow_private_urls=True, webhook_first_retry_seconds=0.2)
    receiver = listener(failures=1)
    queued = client.post(f"/queue/kiln-test/steps?fal_webhook={receiver.url}", json={"tag": "hooked"}).json()
    wait_completed(client, queued["status_url"])
    receiver.wait_for(2)
    time.sleep(0.6)
    assert len(receiver.deliveries) == 2, "delivered again after a success"

    jwks = client.get("/.well-known/jwks.json").json()
    for headers, body in receiver.deliveries:
        verify_signature(jwks, headers, body)
        assert headers["x-fal-webhook-request-id"] == queued["request_id"]
    payload = json.loads(receiver.deliveries[-1][1])
    assert payload["request_id"] == payload["gateway_request_id"] == queued["request_id"]
    assert payload["status"] == "OK" and payload["payload"]["tag"] == "hooked"
    assert "error" not in payload


def test_tampered_body_fails_verification(make_client, listener):
    client = make_client(allow_private_urls=True)
    receiver = listener()
    client.post(f"/queue/kiln-test/steps?fal_webhook={receiver.url}", json={})
    receiver.wait_for(1)
    headers, body = receiver.deliveries[0]
    with pytest.raises(InvalidSignature):
        verify_signature(client.get("/.well-known/jwks.json").json(), headers, body.replace(b"OK", b"KO"))


def test_failed_request_webhook_reports_error(make_client, listener):
    client = make_client(allow_private_urls=True)
    receiver = listener()
    client.post(f"/queue/kiln-test/steps?fal_webhook={receiver.url}", json={"fail_with": "error"})
    receiver.wait_for(1)
    payload = json.loads(receiver.deliveries[0][1])
    assert payload["status"] == "ERROR"
    assert payload["error"] == "Invalid status code: 500"
    assert "failed on purpose" in payload["payload"]["detail"]


def test_signing_key_is_kept_in_the_data_dir(tmp_path):
    first = WebhookSigner(load_webhook_key(tmp_path / "a")).jwks()
    assert WebhookSigner(load_webhook_key(tmp_path / "a")).jwks() == first
    assert WebhookSigner(load_webhook_key(tmp_path / "b")).jwks() != first
    assert (tmp_path / "a" / "keys" / "webhook-ed25519.pem").stat().st_mode & 0o777 == 0o600
