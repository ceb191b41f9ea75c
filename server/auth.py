"""API keys in fal's `Authorization: Key <id>:<secret>` form.

A request belongs to the key that submitted it; every other key is told it does not exist (404,
not 403, so ids cannot be probed). The owner is the whole key, never a part of it: `team:alpha` and
`team:beta` are two owners. What is stored (and sent as a webhook's user id) is a slow hash of the
whole key, so a database or a webhook receiver never learns a key, even a short one.
"""

from __future__ import annotations

import hashlib
import hmac

from server.errors import Unauthorized

ANONYMOUS = "anonymous"


# fixed, so an owner id is the same on every server and across restarts; the iterations make
# guessing a weak key from its id slow, and are paid once per configured key at start-up
OWNER_ID_SALT = b"kiln-owner-id-v1"
OWNER_ID_ITERATIONS = 100_000


def owner_of_key(key: str) -> str:
    """The stable, non-secret id of a key: a PBKDF2-SHA256 hash of the whole key (128 bits)."""
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), OWNER_ID_SALT, OWNER_ID_ITERATIONS)
    return "key-" + digest.hex()[:32]


class KeyRing:
    """The configured keys; with none configured every caller is the same anonymous owner."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        blank = [index for index, key in enumerate(keys) if not key.strip()]
        if blank:
            # an empty key would silently turn authentication off
            raise ValueError(f"API key #{blank[0] + 1} is empty; remove it or give it a value")
        self._keys = tuple(key.strip().encode() for key in keys)
        self._owners = tuple(owner_of_key(key.strip()) for key in keys)

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
        return self._owners[matches.index(True)]
