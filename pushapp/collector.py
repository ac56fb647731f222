"""Work that many greenlets ask for, done together: one Redis round trip per batch.

A mass disconnect asks for thousands of unbinds within a second, a fan-out for thousands of
acks, a chat flood for thousands of PUBLISHes; each costs a pool checkout and a round trip
when done where it is asked for. A collector keeps what is asked until its greenlet runs,
then hands it all (up to ``limit`` at a time) to one function that does it in one go. The
greenlet exists only while there is work, so an idle worker holds none. Who must know
the outcome (a PUBLISH acked to a client) waits for the batch's result; a Redis failure
reaches them as it would have without the batch.
"""
from __future__ import annotations

import logging
from typing import Callable, Generic, TypeVar

import gevent
import redis
from gevent.event import AsyncResult

log = logging.getLogger(__name__)

T = TypeVar("T")


class Collector(Generic[T]):
    """Items added by any greenlet, passed to ``run`` in batches of at most ``limit``,
    ``tick`` seconds after the first of a batch came (0: as soon as the greenlets that are
    ready have run)."""

    def __init__(self, run: Callable[[list[T]], None], limit: int = 1000,
                 tick: float = 0.0) -> None:
        self.run = run
        self.limit = limit
        self.tick = tick
        self._batches: list[tuple[list[T], AsyncResult]] = []
        self._greenlet: gevent.Greenlet | None = None

    def add(self, item: T) -> AsyncResult:
        """Queue ``item``; the result is set (or holds the exception) once its batch ran."""
        if not self._batches or len(self._batches[-1][0]) >= self.limit:
            self._batches.append(([], AsyncResult()))
        items, done = self._batches[-1]
        items.append(item)
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop)
        return done

    def _loop(self) -> None:
        try:
            while self._batches:
                gevent.sleep(self.tick)
                self.drain()
        finally:
            self._greenlet = None

    def drain(self) -> None:
        """Run what is queued now, a batch at a time (also when the worker stops)."""
        while self._batches:
            items, done = self._batches.pop(0)
            try:
                self.run(items)
            except redis.RedisError as exc:
                done.set_exception(exc)
            except Exception as exc:
                # A bug: whoever waits gets it too; the greenlet goes on with the rest.
                log.exception("a batch of %d failed", len(items))
                done.set_exception(exc)
            else:
                done.set(None)
