"""API keys in fal's `Authorization: Key <id>:<secret>` form.

A request belongs to the key that submitted it; every other key is told it does not exist (404,
not 403, so ids cannot be probed).
"""

from __future__ import annotations

import hashlib
import hmac

from server.errors import Unauthorized

ANONYMOUS = "anonymous"


def owner_of_key(key: str) -> str:
    """The stable, non-secret id of a key: the part before `:` of `id:secret`, else a hash."""
    key_id, sep, _ = key.partition(":")
    if sep and key_id:
        return key_id
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class KeyRing:
    """The configured keys; with none configured every caller is the same anonymous owner."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def owner(self, authorization: str | None) -> str:
        """Returns the caller's owner id, or raises Unauthorized."""
        if not self._keys:
            return ANONYMOUS
        scheme, _, credential = (authorization or "").strip().partition(" ")
        if scheme.lower() != "key" or not credential:
            raise Unauthorized("Missing credentials: send `Authorization: Key <your Kiln API key>`")
        presented = credential.strip().encode()
        # compare against every key so the time taken does not reveal which one nearly matched
        matches = [hmac.compare_digest(presented, key) for key in self._keys]
        if not any(matches):
            raise Unauthorized("Invalid API key")
        return owner_of_key(presented.decode())
