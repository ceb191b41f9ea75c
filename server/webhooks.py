"""`fal_webhook` delivery: fal's payload, signed with Kiln's Ed25519 key in fal's four headers.

Deliveries live in the queue store, written in the same transaction that completes the request.
Delivery is at least once. Each attempt is recorded in the store before it is sent, with the time of
the next try, so a crash during a delivery means a later retry, never a lost webhook; a crash after
the receiver answered and before the answer was recorded means a second delivery. Every attempt for
a request carries the same id, in `webhook-id` (as Standard Webhooks name it) and in fal's
`X-Fal-Webhook-Request-Id`: receivers de-duplicate on it. A failed attempt (no 2xx, an error, a
timeout) is retried with exponential backoff, about ten tries over two hours by default, as fal does.

Deliveries run concurrently on a pool of `concurrency` threads: at most `per_destination` at once to
one receiver (host and port), `per_owner` for one API key. A receiver that
hangs, redirects somewhere invalid or answers garbage costs its own webhooks a timeout and a retry,
while other receivers' webhooks go out; no exception from one delivery stops any other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import threading
import time
from collections import Counter
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server import metrics
from server.fetch import UrlFetcher
from server.store import JobResult, JobStore, QueueUnavailable, WebhookDelivery

logger = logging.getLogger(__name__)

MAX_RETRY_SECONDS = 1800.0
# bounds on deliveries in flight: in all, to one receiver (host:port), and for one owner
CONCURRENCY = 16
PER_DESTINATION = 2
PER_OWNER = 8
MAX_ERROR_CHARS = 500


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


def webhook_payload(request_id: str, result: JobResult) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
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
    """Takes due deliveries from the store, within the bounds, and hands them to its senders."""

    def __init__(
        self,
        store: JobStore,
        fetcher: UrlFetcher,
        signer: WebhookSigner,
        *,
        max_attempts: int,
        first_retry_seconds: float,
        timeout_seconds: float,
        concurrency: int = CONCURRENCY,
        per_destination: int = PER_DESTINATION,
        per_owner: int = PER_OWNER,
        poll_seconds: float = 0.25,
    ) -> None:
        super().__init__(name="kiln-webhooks", daemon=True)
        self._store = store
        self._fetcher = fetcher
        self._signer = signer
        self._max_attempts = max_attempts
        self._first_retry = first_retry_seconds
        self._timeout = timeout_seconds
        self._concurrency = concurrency
        self._per_destination = per_destination
        self._per_owner = per_owner
        self._poll = poll_seconds
        self._stopping = threading.Event()
        # set when a delivery ends, so its slot is refilled at once
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[str, WebhookDelivery] = {}
        # never more queued than free senders: a delivery is handed over only within `concurrency`
        self._handed: queue.SimpleQueue[tuple[WebhookDelivery, float] | None] = queue.SimpleQueue()
        self._senders = [
            threading.Thread(target=self._send_loop, name=f"kiln-webhook-sender-{index}", daemon=True)
            for index in range(concurrency)
        ]

    def stop(self, timeout: float = 10.0) -> None:
        """Stops taking deliveries. Those in flight end within the delivery timeout or with the
        process; either way the store retries any whose outcome was not recorded."""
        self._stopping.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout)
        for _ in self._senders:
            self._handed.put(None)

    def run(self) -> None:
        for sender in self._senders:
            sender.start()
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self._dispatch()
            except Exception:
                logger.exception("webhook dispatch failed; retrying")
            self._wake.wait(self._poll)

    def _dispatch(self) -> None:
        with self._lock:
            free = self._concurrency - len(self._in_flight)
            destinations = Counter(delivery.destination for delivery in self._in_flight.values())
            owners = Counter(delivery.owner for delivery in self._in_flight.values())
        if free <= 0:
            return
        due = self._store.webhooks_due(
            limit=4 * free,
            skip_destinations=[d for d, n in destinations.items() if n >= self._per_destination],
            skip_owners=[o for o, n in owners.items() if n >= self._per_owner],
        )
        for delivery in due:
            if free == 0 or self._stopping.is_set():
                return
            if (
                delivery.request_id in self._in_flight
                or destinations[delivery.destination] >= self._per_destination
                or owners[delivery.owner] >= self._per_owner
            ):
                continue
            if delivery.attempts >= self._max_attempts:
                # the last attempt's outcome was never recorded (the process died during it)
                self._store.webhook_attempted(
                    delivery.request_id, delivered=False, retry_in=None, error="no outcome recorded for the last attempt"
                )
                continue
            # recorded before it is sent: if the outcome is never recorded, it is retried after this
            retry_in = self._timeout + retry_delay(delivery.attempts + 1, self._first_retry)
            if not self._store.webhook_sending(delivery.request_id, retry_in=retry_in):
                continue
            destinations[delivery.destination] += 1
            owners[delivery.owner] += 1
            free -= 1
            with self._lock:
                self._in_flight[delivery.request_id] = delivery
            # the outcome must be recorded before the retry this attempt scheduled falls due
            self._handed.put((delivery, time.monotonic() + retry_in - 1.0))

    def _send_loop(self) -> None:
        while (handed := self._handed.get()) is not None:
            self._attempt(*handed)

    def _attempt(self, delivery: WebhookDelivery, record_by: float | None = None) -> None:
        """One delivery attempt and its outcome recorded; whatever happens, its slot is freed."""
        request_id = delivery.request_id
        attempts = delivery.attempts + 1
        try:
            try:
                error = self._send(delivery)
            except Exception as failure:  # a bad redirect, a broken receiver, a bug: this delivery's
                error = f"{type(failure).__name__}: {failure}"
            metrics.webhook_attempted(error is None)
            if error is None:
                self._record(request_id, record_by, delivered=True, retry_in=None, error=None)
                return
            error = error[:MAX_ERROR_CHARS]
            retry_in = retry_delay(attempts, self._first_retry) if attempts < self._max_attempts else None
            logger.warning("webhook for %s failed (attempt %d of %d): %s", request_id, attempts, self._max_attempts, error)
            self._record(request_id, record_by, delivered=False, retry_in=retry_in, error=error)
        except Exception as failure:
            logger.warning("webhook for %s: could not record the attempt (%s); it is retried later", request_id, failure)
        finally:
            with self._lock:
                self._in_flight.pop(request_id, None)
            self._wake.set()

    def _record(self, request_id: str, record_by: float | None, **outcome) -> None:
        """Records an attempt's outcome, retrying while the queue cannot be reached (a shared queue
        restarting) until `record_by`: once the retry the attempt scheduled is due, it is sent again."""
        delay = 0.1
        while True:
            try:
                self._store.webhook_attempted(request_id, **outcome)
                return
            except QueueUnavailable:
                if record_by is None or time.monotonic() + delay >= record_by or self._stopping.is_set():
                    raise
                time.sleep(delay)
                delay = min(1.0, delay * 2)

    def _send(self, delivery: WebhookDelivery) -> str | None:
        """POSTs the webhook once; None when the receiver took it (2xx), else what went wrong."""
        job = self._store.info(delivery.request_id)
        result = self._store.result(delivery.request_id)
        if job is None or result is None:
            return "the request is gone"
        body = json.dumps(webhook_payload(job.request_id, result), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            # the same on every attempt: what receivers de-duplicate on
            "webhook-id": job.request_id,
            **self._signer.headers(request_id=job.request_id, user_id=job.owner, body=body, timestamp=int(time.time())),
        }
        status = self._fetcher.post(delivery.url, body, headers, timeout=self._timeout)
        return None if 200 <= status < 300 else f"receiver answered HTTP {status}"
