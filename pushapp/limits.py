"""Per-connection event rate limits: a token bucket kept in the connection's own slots."""
from __future__ import annotations

import time
from enum import Enum

from .config import Config
from .delivery import Conn


class Verdict(Enum):
    ALLOW = 0
    LIMIT = 1
    ABUSE = 2


class RateLimiter:
    """``RATE_LIMIT`` events per second with bursts of ``RATE_BURST``; a client refused
    ``RATE_STRIKES`` times in a row is abusing the gateway and is disconnected."""

    def __init__(self, config: Config) -> None:
        self.rate = config.rate_limit
        self.burst = float(config.rate_burst)
        self.strikes = config.rate_strikes

    def check(self, conn: Conn) -> Verdict:
        now = time.monotonic()
        conn.tokens = min(self.burst, conn.tokens + (now - conn.stamp) * self.rate)
        conn.stamp = now
        if conn.tokens >= 1.0:
            conn.tokens -= 1.0
            conn.strikes = 0
            return Verdict.ALLOW
        conn.strikes += 1
        return Verdict.ABUSE if conn.strikes >= self.strikes else Verdict.LIMIT
