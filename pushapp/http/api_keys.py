"""API keys for the HTTP API: ``Authorization: Bearer <key>``, one of ``API_KEYS`` (and
the same check of ``METRICS_TOKEN`` for ``/metrics``).

Several keys may be valid at once, so a key can be rotated without downtime. Every key is
compared in constant time, and all of them each time, so neither the answer nor its timing
tells how much of a guess was right. Wrong keys are limited per client address
(``KeyGuard``), and the admin page keeps a key in its session as the digest of the key
(``session_client``), so the same keys open the API and the dashboard.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable

# Wrong keys one client address may send at once, and how many more per second after that:
# 10 at once, then one every 6 seconds.
GUESS_BURST = 10
GUESS_RATE = 1 / 6
# Addresses remembered at most; beyond that those whose allowance is whole are forgotten.
GUESS_ADDRESSES = 10_000


class ApiKeyError(Exception):
    """No usable key; ``str()`` is the reason answered with 401. ``guess`` is true for a
    key that was presented and is wrong: those are what ``KeyGuard`` counts."""

    def __init__(self, reason: str, guess: bool = False) -> None:
        super().__init__(reason)
        self.guess = guess


class TooManyGuesses(ApiKeyError):
    """Too many wrong keys from one address: answered 429, with ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many wrong API keys from this address: retry in {retry_after} s")
        self.retry_after = retry_after


def digest(key: str) -> str:
    """What the admin session keeps of a key: enough to check it, useless to present."""
    return hashlib.sha256(key.encode()).hexdigest()


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
        raise ApiKeyError("wrong API key", guess=True)
    return hashlib.sha256(given).hexdigest()[:12]


def session_client(keys: tuple[str, ...], remembered: str | None) -> str:
    """The caller's name, as ``client_of`` gives it, from the digest an admin session
    keeps; a key removed from ``API_KEYS`` since the login no longer opens anything."""
    if not keys:
        raise ApiKeyError("the HTTP API is closed: no API_KEYS are configured")
    if not remembered:
        raise ApiKeyError("missing API key: send Authorization: Bearer <key>")
    if not matches(remembered.encode(), (digest(key) for key in keys)):
        raise ApiKeyError("the session's API key is no longer valid: log in again")
    return remembered[:12]


def session_secret(keys: tuple[str, ...]) -> bytes:
    """The key that signs admin session cookies: the same in every worker and instance
    that shares ``API_KEYS``, and a new one (logging everyone out) when they change."""
    return hashlib.sha256(b"pushapp admin session\0" + "\0".join(sorted(keys)).encode()
                          ).digest()


class KeyGuard:
    """Wrong keys per client address, as a token bucket: ``GUESS_BURST`` at once, then
    ``GUESS_RATE`` a second. An address that has used its allowance is refused before its
    key is looked at, right or wrong, so that a guess made meanwhile tells nothing. Kept
    per worker process: with several, an address gets that many allowances."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def _allowance(self, address: str, now: float) -> float:
        tokens, stamp = self._buckets.get(address, (GUESS_BURST, now))
        return min(GUESS_BURST, tokens + (now - stamp) * GUESS_RATE)

    def check(self, address: str) -> None:
        """``TooManyGuesses`` if ``address`` must wait before its next try."""
        allowance = self._allowance(address, time.monotonic())
        if allowance < 1:
            raise TooManyGuesses(math.ceil((1 - allowance) / GUESS_RATE))

    def admit(self, address: str, check: Callable[[], str]) -> str:
        """What ``check`` says of the caller's key (its name, or ``ApiKeyError``), unless
        ``address`` must wait (``TooManyGuesses``); a wrong key is counted."""
        self.check(address)
        try:
            return check()
        except ApiKeyError as exc:
            if exc.guess:
                self.failed(address)
            raise

    def failed(self, address: str) -> None:
        """Count a wrong key from ``address``."""
        now = time.monotonic()
        if len(self._buckets) >= GUESS_ADDRESSES:
            self._buckets = {known: bucket for known, bucket in self._buckets.items()
                             if self._allowance(known, now) < GUESS_BURST}
        self._buckets[address] = (self._allowance(address, now) - 1, now)
