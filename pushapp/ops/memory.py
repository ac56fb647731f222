"""Give memory back to the system after many clients have left.

What a connection held is freed when it closes, but the C allocator keeps the freed pages
for reuse: a worker that held 20,000 clients keeps most of that memory after they have gone
(a network blip, a deploy of the load balancer), although nothing uses it.
Once the sockets have fallen well below their peak and stopped falling, the watcher runs
the cyclic collector and asks glibc to return its free pages (``malloc_trim``). Elsewhere
than glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Callable

import gevent

log = logging.getLogger(__name__)

_CHECK_EVERY = 1.0
# Trim once the sockets are fewer than this share of their peak since the last trim,
# and the peak was worth it.
_DROP_SHARE = 0.5
_MIN_DROP = 1000
# ... and they have stopped falling: fewer than this share of the peak closed in the last
# interval (a mass disconnect takes several seconds to clean up).
_SETTLED_SHARE = 0.01


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


class MemoryReturn:
    """Watches the number of open sockets and trims after a large drop."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.peak = self.last = 0
        self._trim = _malloc_trim()

    def run(self) -> None:
        while True:
            gevent.sleep(_CHECK_EVERY)
            self.check()

    def check(self) -> None:
        now, before = self.count(), self.last
        self.peak, self.last = max(self.peak, now), now
        settled = before - now <= self.peak * _SETTLED_SHARE
        if self.peak - now >= _MIN_DROP and now < self.peak * _DROP_SHARE and settled:
            gc.collect()
            if self._trim is not None:
                self._trim(0)
            log.info("%d of %d sockets have closed: memory returned to the system",
                     self.peak - now, self.peak)
            self.peak = now
