"""API keys for the HTTP API: ``Authorization: Bearer <key>``, one of ``API_KEYS`` (and
the same check of ``METRICS_TOKEN`` for ``/metrics``).

Several keys may be valid at once, so a key can be rotated without downtime. Every key is
compared in constant time, and all of them each time, so neither the answer nor its timing
tells how much of a guess was right.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


class ApiKeyError(Exception):
    """No usable key; ``str()`` is the reason answered with 401."""


def bearer(authorization: str | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip().encode()


def matches(given: bytes, keys: Iterable[str]) -> bool:
    """Whether ``given`` is one of ``keys``, comparing it with every key in constant time."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


def client_of(keys: tuple[str, ...], authorization: str | None) -> str:
    """A short, stable name of the caller's key (not the key), or ``ApiKeyError``."""
    if not keys:
        raise ApiKeyError("the HTTP API is closed: no API_KEYS are configured")
    given = bearer(authorization)
    if given is None:
        raise ApiKeyError("missing API key: send Authorization: Bearer <key>")
    if not matches(given, keys):
        raise ApiKeyError("wrong API key")
    return hashlib.sha256(given).hexdigest()[:12]
