"""Kiln's secrets: an HMAC key for upload tokens and the webhook signing key.

Both are created on first start and kept across restarts, so upload URLs stay valid and receivers
can keep the published webhook key. They come from the queue store (`JobStore.shared_secret`), so
every node of a deployment signs with the same keys: with the embedded queue they are owner-only
files in the data dir's keys/ folder, with a shared queue they live in it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def read_or_create(path: Path, make: callable) -> bytes:
    """The file's bytes; made with `make` and written owner-only (0600) when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Short-lived, tamper-proof tokens: base64url(JSON claims) + '.' + HMAC-SHA256."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, claims: dict[str, Any], *, ttl_seconds: float) -> str:
        body = _b64(json.dumps({**claims, "exp": time.time() + ttl_seconds}, separators=(",", ":")).encode())
        return body + "." + _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())

    def verify(self, token: str) -> dict[str, Any] | None:
        """The token's claims, or None if it is forged, malformed or expired."""
        body, _, signature = token.partition(".")
        expected = _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
        if not signature or not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        try:
            claims = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(claims, dict) or claims.get("exp", 0) < time.time():
            return None
        return claims


TOKEN_KEY = "token.key"
WEBHOOK_KEY = "webhook-ed25519.pem"


def _new_token_key() -> bytes:
    return secrets.token_bytes(32)


def _new_webhook_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_token_signer(data_dir: Path) -> TokenSigner:
    return TokenSigner(read_or_create(data_dir / "keys" / TOKEN_KEY, _new_token_key))


def load_webhook_key(data_dir: Path) -> Ed25519PrivateKey:
    return serialization.load_pem_private_key(read_or_create(data_dir / "keys" / WEBHOOK_KEY, _new_webhook_key), None)


def shared_token_signer(store) -> TokenSigner:
    """The upload-token key every node sharing `store` (a `JobStore`) uses."""
    return TokenSigner(store.shared_secret(TOKEN_KEY, _new_token_key))


def shared_webhook_key(store) -> Ed25519PrivateKey:
    """The webhook signing key every node sharing `store` (a `JobStore`) uses."""
    return serialization.load_pem_private_key(store.shared_secret(WEBHOOK_KEY, _new_webhook_key), None)
