"""The stored-message backlog, for Prometheus: counted by one worker, read by every scrape.

The backlog is counted by walking every stream in Redis, a cost that grows with the users
who have stored messages (docs/benchmarks.md). Not at each scrape, then: the ingest lease holder counts
in the background (``BacklogCount``) and saves the totals in Redis, and a scrape on any
worker reads them, one command whatever the number of users. The figure is as old as the
last count, which the scrape tells too. Counters kept exact as messages are stored, trimmed
and acked were the other way, but a user's stream that expires takes its messages with it
unseen, so they would drift. It reads Redis through the store only.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import gevent
import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from ..kinds import LABELS
from ..store.store import Store
from .metrics import ERRORS, registries

log = logging.getLogger(__name__)

# Seconds between two counts of the stored messages, at least; longer when a count takes
# more than a twentieth of it, so that counting never costs Redis more than that share.
COUNT_EVERY = 5.0


class Backlog:
    """The stored messages of all users, as last counted, for a scrape: one read of Redis."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            saved = self.store.saved_backlog()
        except redis.RedisError as exc:
            log.warning("metrics: stored-message backlog not read, Redis failed: %s", exc)
            ERRORS.labels("redis").inc()
            return
        if saved is None:  # not counted yet, or not for a while: no holder of the lease
            return
        totals, counted_at = saved
        family = GaugeMetricFamily("pushapp_stored_messages", "Stored messages waiting for "
                                   "an ack, all users, by kind", labels=["kind"])
        for kind, total in totals.items():
            family.add_metric([LABELS[kind]], total)
        yield family
        yield GaugeMetricFamily("pushapp_stored_messages_age_seconds", "Seconds since "
                                "pushapp_stored_messages was counted",
                                value=max(0.0, time.time() - counted_at))


class BacklogCount:
    """Counts the stored messages of all users while this worker holds the ingest lease
    (so one worker of the gateway counts), every ``COUNT_EVERY`` seconds or more, and saves
    the totals for every worker's scrapes."""

    def __init__(self, store: Store, leader: Callable[[], bool]) -> None:
        self.store = store
        self.leader = leader

    def run(self) -> None:
        while True:
            if not self.leader():
                gevent.sleep(COUNT_EVERY / 5)
                continue
            gevent.sleep(self.count())

    def count(self) -> float:
        """Count and save once; returns the seconds to wait before the next count. Saved
        totals lapse after three of those, so a scrape never shows a figure long stale."""
        started = time.monotonic()
        try:
            totals = self.store.backlog()
            wait = max(COUNT_EVERY, 20 * (time.monotonic() - started))
            self.store.save_backlog(totals, 3 * wait)
        except redis.RedisError as exc:
            log.warning("metrics: stored messages not counted, Redis failed: %s", exc)
            ERRORS.labels("redis").inc()
            return COUNT_EVERY
        return wait


def exposition(store: Store) -> tuple[bytes, str]:
    """The text Prometheus scrapes: every worker's values, and the backlog."""
    return (b"".join(generate_latest(registry) for registry in registries(Backlog(store))),
            CONTENT_TYPE_LATEST)
