"""`fal_webhook` delivery: fal's payload, signed with Kiln's Ed25519 key in fal's four headers.

Deliveries live in the queue store (written in the same transaction that completes the request),
so a restart never drops or duplicates one. They are retried with exponential backoff, about ten
tries over two hours by default, as fal does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.fetch import FetchError, UrlFetcher
from server.store import Job, JobStore

logger = logging.getLogger(__name__)

MAX_RETRY_SECONDS = 1800.0


class WebhookSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        # RFC 7638 thumbprint, so receivers can pin the key they saw
        thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": self._x}, separators=(",", ":"))
        self.key_id = base64.urlsafe_b64encode(hashlib.sha256(thumbprint.encode()).digest()).rstrip(b"=").decode()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self._x, "kid": self.key_id, "use": "sig", "alg": "EdDSA"}]}

    def headers(self, *, request_id: str, user_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": str(timestamp),
            "X-Fal-Webhook-Signature": self._private_key.sign(message).hex(),
        }


def webhook_payload(job: Job) -> dict[str, Any]:
    result = job.result
    assert result is not None, "only completed requests have webhooks"
    payload: dict[str, Any] = {
        "request_id": job.request_id,
        "gateway_request_id": job.request_id,
        "status": "OK" if result.ok else "ERROR",
        "payload": result.body,
    }
    if not result.ok:
        payload["error"] = f"Invalid status code: {result.status_code}"
    return payload


def retry_delay(attempts: int, first: float) -> float:
    """Delay before the next try after `attempts` failed ones: first, 3x, 9x, ... capped at 30 min."""
    return min(first * 3 ** (attempts - 1), MAX_RETRY_SECONDS)


class WebhookDispatcher(threading.Thread):
    def __init__(
        self,
        store: JobStore,
        fetcher: UrlFetcher,
        signer: WebhookSigner,
        *,
        max_attempts: int,
        first_retry_seconds: float,
        timeout_seconds: float,
        poll_seconds: float = 0.25,
    ) -> None:
        super().__init__(name="kiln-webhooks", daemon=True)
        self._store = store
        self._fetcher = fetcher
        self._signer = signer
        self._max_attempts = max_attempts
        self._first_retry = first_retry_seconds
        self._timeout = timeout_seconds
        self._poll = poll_seconds
        self._stopping = threading.Event()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stopping.wait(self._poll):
            try:
                for delivery in self._store.webhooks_due(limit=32):
                    self._deliver(delivery.request_id, delivery.url, delivery.attempts)
            except Exception:
                logger.exception("webhook dispatch failed; retrying")

    def _deliver(self, request_id: str, url: str, previous_attempts: int) -> None:
        job = self._store.get(request_id)
        if job is None or job.result is None:
            self._store.webhook_attempted(request_id, delivered=False, retry_in=None, error="request is gone")
            return
        body = json.dumps(webhook_payload(job), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            **self._signer.headers(request_id=request_id, user_id=job.owner, body=body, timestamp=int(time.time())),
        }
        attempts = previous_attempts + 1
        try:
            status = self._fetcher.post(url, body, headers, timeout=self._timeout)
            error = None if 200 <= status < 300 else f"receiver answered HTTP {status}"
        except FetchError as failure:
            error = str(failure)
        if error is None:
            self._store.webhook_attempted(request_id, delivered=True, retry_in=None, error=None)
            return
        retry_in = retry_delay(attempts, self._first_retry) if attempts < self._max_attempts else None
        logger.warning("webhook for %s failed (attempt %d): %s", request_id, attempts, error)
        self._store.webhook_attempted(request_id, delivered=False, retry_in=retry_in, error=error)
