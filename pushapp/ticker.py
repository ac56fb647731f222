"""A greenlet that exists only while there is work: the timer beneath batching, ack timers
and the client-error summary.

One greenlet per pending thing (a batch, a socket waiting for acks) cost a spawn and a kill
each and memory per socket; one ticker per owner, asleep between periods and gone when idle,
costs nothing on an idle worker. It imports nothing of pushapp, so that every layer may use it.
"""
from __future__ import annotations

from typing import Callable

import gevent


class Ticker:
    """A greenlet that runs ``work`` every ``period`` seconds while ``busy()`` says there
    is some, and ends when there is none; ``wake`` starts it again."""

    def __init__(self, work: Callable[[], None], busy: Callable[[], bool],
                 period: float) -> None:
        self.work = work
        self.busy = busy
        self.period = period
        self._running = False

    def wake(self) -> None:
        if not self._running:
            self._running = True
            gevent.spawn_raw(self._loop)

    def _loop(self) -> None:
        try:
            while self.busy():
                gevent.sleep(self.period)
                self.work()
        finally:
            self._running = False
