"""The timers of unacknowledged deliveries: resend after ``ACK_TIMEOUT``, push after
``PUSH_DELAY``.

One greenlet per socket waiting for acks cost a spawn and a kill per delivery (a tenth of
a stored fan-out's CPU) and a greenlet's memory per socket. Instead each socket keeps two
deadlines, and one greenlet, alive only while some socket waits, looks at the waiting
sockets a few times per ``ACK_TIMEOUT`` (at least once a second).
"""
from __future__ import annotations

import math
import time
from typing import Callable

from ..ticker import Ticker
from .connections import Conn


class AckTimers:
    """The sockets waiting for acks, each with its resend and push deadlines, and the one
    ticker that looks at them; it owns those deadlines (``resend_at``, ``push_at``)."""

    def __init__(self, ack_timeout: float, push_delay: float,
                 resend: Callable[[list[Conn]], None], push: Callable[[str], None]) -> None:
        self.ack_timeout = ack_timeout
        self.push_delay = push_delay
        self.resend = resend
        self.push = push
        self._waiting: set[Conn] = set()
        self._ticker = Ticker(self.check, lambda: bool(self._waiting),
                              min(1.0, ack_timeout / 4, push_delay / 4))

    def sent(self, conn: Conn) -> None:
        """A delivery that asks for an ack went to ``conn``: start its pending period,
        unless one is running."""
        if conn in self._waiting:
            return
        now = time.monotonic()
        conn.resend_at, conn.push_at = now + self.ack_timeout, now + self.push_delay
        self._waiting.add(conn)
        self._ticker.wake()

    def acked(self, conn: Conn) -> None:
        """An ack came: once nothing of ``conn`` waits, its pending period ends."""
        if not (conn.unacked_chats or conn.unacked_notifs):
            self._waiting.discard(conn)

    def check(self) -> None:
        """Ask once for a mobile push for each socket whose chats are unacked after
        ``PUSH_DELAY``, also after it has gone, as the seed did; resend to each connected
        socket whose deliveries are unacked after ``ACK_TIMEOUT``, and again after each
        further ``ACK_TIMEOUT``."""
        now = time.monotonic()
        due = []
        for conn in list(self._waiting):
            if not (conn.unacked_chats or conn.unacked_notifs):
                self._waiting.discard(conn)
                continue
            if conn.unacked_chats and conn.push_at <= now:
                conn.push_at = math.inf
                self.push(conn.user)
            if conn.closed:
                if conn.push_at == math.inf or not conn.unacked_chats:
                    self._waiting.discard(conn)
            elif conn.resend_at <= now:
                conn.resend_at = now + self.ack_timeout
                due.append(conn)
        if due:
            self.resend(due)
