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
from typing import Any, Callable, Generic, TypeVar

import redis
from gevent.event import AsyncResult

from ..ticker import Ticker


log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _Batch(Generic[T]):
    """Items queued together; who waits for the result, and who is called back with it."""

    __slots__ = ("items", "done", "calls")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.done = AsyncResult()
        self.calls: list[tuple[int, Callable[[Any], None]]] = []


class Collector(Generic[T, R]):
    """Items added by any greenlet, passed to ``run`` in batches of at most ``limit``,
    ``tick`` seconds after the first of a batch came (0: as soon as the greenlets that are
    ready have run). ``run`` may answer a list, one result per item."""

    def __init__(self, run: Callable[[list[T]], list[R] | None], limit: int = 1000,
                 tick: float = 0.0) -> None:
        self.run = run
        self.limit = limit
        self._batches: list[_Batch[T]] = []
        self._ticker = Ticker(self.drain, lambda: bool(self._batches), tick)

    def add(self, item: T) -> AsyncResult:
        """Queue ``item``; the result is set (or holds the exception) once its batch ran."""
        return self._queue(item).done

    def call(self, item: T) -> R:
        """Queue ``item``, wait for its batch, and return what ``run`` answered for it;
        raises what the batch raised, or the exception ``run`` answered for this item."""
        batch = self._queue(item)
        index = len(batch.items) - 1
        answer = batch.done.get()[index]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def then(self, item: T, done: Callable[[R | Exception], None]) -> None:
        """Queue ``item``; once its batch ran, ``done`` gets what ``run`` answered for it, or
        the exception. ``done`` is called by the collector's greenlet, with no greenlet
        waiting for the batch (a chat's publish costs no greenlet switch): it must not
        block."""
        batch = self._queue(item)
        batch.calls.append((len(batch.items) - 1, done))

    def _queue(self, item: T) -> _Batch[T]:
        if not self._batches or len(self._batches[-1].items) >= self.limit:
            self._batches.append(_Batch())
        batch = self._batches[-1]
        batch.items.append(item)
        self._ticker.wake()
        return batch

    def drain(self) -> None:
        """Run what is queued now, a batch at a time (also when the worker stops)."""
        while self._batches:
            batch = self._batches.pop(0)
            try:
                answers: Any = self.run(batch.items)
            except redis.RedisError as exc:
                answers = exc
            except Exception as exc:
                # A bug: whoever waits gets it too; the greenlet goes on with the rest.
                log.exception("a batch of %d failed", len(batch.items))
                answers = exc
            failed = isinstance(answers, Exception)
            if failed:
                batch.done.set_exception(answers)
            else:
                batch.done.set(answers)
            for index, done in batch.calls:
                try:
                    done(answers if failed else answers[index])
                except Exception:
                    log.exception("a callback of a batch failed")
