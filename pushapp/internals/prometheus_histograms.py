"""prometheus_client's histogram parts that pushapp relies on: many observations written
as one increment per bucket touched. Under gunicorn every increment is a lock and a write
to a memory-mapped file (pushapp.ops.metrics), and the delivery latency is observed for
every acked message: a batch of acks observed one by one costs two writes a message, the
same batch here one write per bucket it touches. prometheus_client has no public call for
it."""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics import Histogram

from . import Reliance

__all__ = ["RELIED_ON", "observe_many"]

RELIED_ON: tuple[Reliance, ...] = (
    Reliance(Histogram, "_upper_bounds", None, "the buckets' bounds, +Inf last: each amount "
             "goes to the first bound it does not pass, as observe does.", instance=True),
    Reliance(Histogram, "_buckets", None, "one value per bucket, not cumulative, incremented "
             "as observe does.", instance=True),
    Reliance(Histogram, "_sum", None, "the sum of the observations.", instance=True),
)


def observe_many(child: Any, amounts: Iterable[float]) -> None:
    """``child.observe(amount)`` for each of ``amounts`` (a labelled histogram's child),
    written as one increment per bucket touched and one of the sum."""
    bounds = child._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for amount in amounts:
        counts[bisect_left(bounds, amount)] += 1
        total += amount
    if not any(counts):
        return
    child._sum.inc(total)
    for bucket, count in zip(child._buckets, counts):
        if count:
            bucket.inc(count)
