"""What one connection may cost the worker: an event rate, log lines, handshakes.

A connection here is the Engine.IO session, the thing a client holds: its Socket.IO
namespace connection can be left and joined again at will (``41`` then ``40``), so
anything kept there could be reset by rejoining. The limiter's state is three attributes
of the session (class defaults until it first sends something), the log budget two more.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from enum import Enum
from typing import Any

from ..config import Config
from ..ops import metrics
from ..ticker import Ticker

log = logging.getLogger(__name__)


class Verdict(Enum):
    """What a limit says of a packet: go on, refuse it, or cut the connection off."""

    ALLOW = 0
    LIMIT = 1
    ABUSE = 2


class RateLimiter:
    """``RATE_LIMIT`` packets per second with bursts of ``RATE_BURST``; a client refused
    ``RATE_STRIKES`` times in a row is abusing the gateway and is disconnected.

    The bucket is kept on the connection (``tokens``, ``stamp``, ``strikes``); one that
    never sent anything has ``stamp`` -inf, which fills its bucket at the first check.

    It also follows a user from one connection to the next: a logged-in connection that
    goes with its bucket not full leaves it behind for as long as refilling would take
    (``RATE_BURST`` / ``RATE_LIMIT`` seconds), and the user's next login in this worker
    takes it over, so that reconnecting buys no fresh burst.
    """

    def __init__(self, config: Config) -> None:
        self.rate = config.rate_limit
        self.burst = float(config.rate_burst)
        self.strikes = config.rate_strikes
        self._left: dict[str, tuple[float, float, int]] = {}
        self._left_until: collections.deque[tuple[float, str]] = collections.deque()

    def leave(self, user: str, conn: Any) -> None:
        """``user``'s connection ``conn`` goes: keep its bucket if it is not full."""
        now = time.monotonic()
        self._forget_refilled(now)
        tokens = self._level(conn.tokens, conn.stamp, now)
        if tokens < self.burst:
            self._left[user] = (tokens, now, conn.strikes)
            self._left_until.append((now + (self.burst - tokens) / self.rate, user))

    def join(self, user: str, conn: Any) -> None:
        """``user`` logged in on ``conn``: a bucket their last connection left behind
        counts instead, if it holds less."""
        now = time.monotonic()
        self._forget_refilled(now)
        left = self._left.pop(user, None)
        if left is not None and (self._level(left[0], left[1], now)
                                 < self._level(conn.tokens, conn.stamp, now)):
            conn.tokens, conn.stamp, conn.strikes = left

    def check(self, conn: Any) -> Verdict:
        """A packet that asks for work (an event, a namespace connect or disconnect)."""
        if self._take(conn):
            conn.strikes = 0
            return Verdict.ALLOW
        return self._strike(conn)

    def strike(self, conn: Any) -> Verdict:
        """A packet that cannot be used (malformed, an ack of nothing): it spends a token
        as an event would and counts as a refusal, so that a client sending garbage is
        closed after ``RATE_STRIKES`` of it, and one mixing garbage into a flood sooner."""
        self._take(conn)
        return self._strike(conn)

    def _level(self, tokens: float, stamp: float, now: float) -> float:
        """The tokens of a bucket that held ``tokens`` at ``stamp``, refilled until now."""
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def _take(self, conn: Any) -> bool:
        now = time.monotonic()
        tokens = self._level(conn.tokens, conn.stamp, now)
        conn.stamp = now
        if tokens >= 1.0:
            conn.tokens = tokens - 1.0
            return True
        conn.tokens = tokens
        return False

    def _strike(self, conn: Any) -> Verdict:
        conn.strikes += 1
        return Verdict.ABUSE if conn.strikes >= self.strikes else Verdict.LIMIT

    def _forget_refilled(self, now: float) -> None:
        """Drop the buckets left behind that have refilled: they would change nothing."""
        while self._left_until and self._left_until[0][0] <= now:
            user = self._left_until.popleft()[1]
            left = self._left.get(user)
            if left is not None and self._level(left[0], left[1], now) >= self.burst:
                del self._left[user]


class ClientErrors:
    """Client mistakes and abuse, where a flood of them must not become a flood of log
    lines: each is counted in ``pushapp_errors_total{reason}``, but logged only while the
    connection has logged fewer than ``per_connection`` lines in this ``window`` and the
    worker fewer than ``per_window``. After a window in which lines were left out, one
    line says how many.

    A connection keeps its budget in ``log_window`` and ``logged``. Errors reported
    without one count against the worker's budget only: an HTTP request's, and the line
    that says a connection is cut off, which its earlier lines must not hide.
    """

    def __init__(self, per_connection: int = 3, per_window: int = 50,
                 window: float = 10.0) -> None:
        self.per_connection = per_connection
        self.per_window = per_window
        self.window = window
        self._window = -1
        self._lines = 0
        self._suppressed = 0
        self._summary = Ticker(self._summarise, lambda: self._suppressed > 0, window)

    def report(self, reason: str, conn: Any, message: str, *args: Any,
               level: int = logging.WARNING) -> None:
        """Count one error of ``reason``; log ``message % args`` if the budgets allow."""
        metrics.ERRORS.labels(reason).inc()
        window = math.floor(time.monotonic() / self.window)
        if window != self._window:
            self._window, self._lines = window, 0
        if conn is not None and conn.log_window != window:
            conn.log_window, conn.logged = window, 0
        if self._lines >= self.per_window or (
                conn is not None and conn.logged >= self.per_connection):
            self._suppressed += 1
            self._summary.wake()
            return
        self._lines += 1
        if conn is not None:
            conn.logged += 1
        log.log(level, message, *args)

    def _summarise(self) -> None:
        if self._suppressed:
            log.warning("%d more client errors in the last %gs were not logged (counted in "
                        "pushapp_errors_total)", self._suppressed, self.window)
            self._suppressed = 0


class Handshakes:
    """Connections of each client address that have not finished their handshake: an HTTP
    request head still arriving, or an Engine.IO session not yet connected to Socket.IO.
    Such a connection costs the worker a file and memory without a user to show for it,
    so an address may have at most ``MAX_HANDSHAKES_PER_IP`` of them; its further ones
    are closed at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def enter(self, address: str) -> bool:
        """Count one more handshake of ``address``, unless it has its maximum already."""
        count = self.counts.get(address, 0)
        if count >= self.limit:
            return False
        self.counts[address] = count + 1
        return True

    def leave(self, address: str) -> None:
        count = self.counts.get(address, 0) - 1
        if count > 0:
            self.counts[address] = count
        else:
            self.counts.pop(address, None)


@dataclasses.dataclass(frozen=True)
class Limits:
    """One worker's limits on what connections cost, shared by its HTTP server
    (pushapp.wire.worker), its Engine.IO sockets (pushapp.wire.transport) and Socket.IO
    (pushapp.sockets.server)."""

    limiter: RateLimiter
    errors: ClientErrors
    handshakes: Handshakes

    @classmethod
    def from_config(cls, config: Config) -> "Limits":
        return cls(RateLimiter(config), ClientErrors(), Handshakes(config.max_handshakes_per_ip))
