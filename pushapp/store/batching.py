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

import redis
from gevent.event import AsyncResult

from ..ticker import Ticker


log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Collector(Generic[T, R]):
    """Items added by any greenlet, passed to ``run`` in batches of at most ``limit``,
    ``tick`` seconds after the first of a batch came (0: as soon as the greenlets that are
    ready have run). ``run`` may answer a list, one result per item."""

    def __init__(self, run: Callable[[list[T]], list[R] | None], limit: int = 1000,
                 tick: float = 0.0) -> None:
        self.run = run
        self.limit = limit
        self._batches: list[tuple[list[T], AsyncResult]] = []
        self._ticker = Ticker(self.drain, lambda: bool(self._batches), tick)

    def add(self, item: T) -> AsyncResult:
        """Queue ``item``; the result is set (or holds the exception) once its batch ran."""
        return self._queue(item)[0]

    def call(self, item: T) -> R:
        """Queue ``item``, wait for its batch, and return what ``run`` answered for it;
        raises what the batch raised, or the exception ``run`` answered for this item."""
        done, index = self._queue(item)
        answer = done.get()[index]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def then(self, item: T, done: Callable[[R | Exception], None]) -> None:
        """Queue ``item``; once its batch ran, ``done`` gets what ``run`` answered for it, or
        the exception. ``done`` is called by the event loop, with no greenlet waiting for
        the batch: it must not block."""
        batch, index = self._queue(item)
        batch.rawlink(lambda result: done(result.value[index] if result.successful()
                                          else result.exception))

    def _queue(self, item: T) -> tuple[AsyncResult, int]:
        if not self._batches or len(self._batches[-1][0]) >= self.limit:
            self._batches.append(([], AsyncResult()))
        items, done = self._batches[-1]
        items.append(item)
        self._ticker.wake()
        return done, len(items) - 1

    def drain(self) -> None:
        """Run what is queued now, a batch at a time (also when the worker stops)."""
        while self._batches:
            items, done = self._batches.pop(0)
            try:
                answers = self.run(items)
            except redis.RedisError as exc:
                done.set_exception(exc)
            except Exception as exc:
                # A bug: whoever waits gets it too; the greenlet goes on with the rest.
                log.exception("a batch of %d failed", len(items))
                done.set_exception(exc)
            else:
                done.set(answers)
