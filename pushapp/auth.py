"""API keys for the HTTP API: ``Authorization: Bearer <key>``, one of ``API_KEYS``.

Several keys may be valid at once, so a key can be rotated without downtime. Every key is
compared in constant time, and all of them each time, so neither the answer nor its timing
tells how much of a guess was right.
"""
from __future__ import annotations

import hashlib
import hmac


class ApiKeyError(Exception):
    """No usable key; ``str()`` is the reason answered with 401."""


def client_of(keys: tuple[str, ...], authorization: str | None) -> str:
    """A short, stable name of the caller's key (not the key), or ``ApiKeyError``."""
    if not keys:
        raise ApiKeyError("the HTTP API is closed: no API_KEYS are configured")
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiKeyError("missing API key: send Authorization: Bearer <key>")
    given = presented.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise ApiKeyError("wrong API key")
    return hashlib.sha256(given).hexdigest()[:12]
