"""What the gateway counts, for Prometheus.

Under gunicorn every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(set by gunicorn.conf.py before any worker imports this), and ``/metrics`` on any worker
adds them all up. An update is a lock and a write to a memory-mapped file: measured under
gevent, 2 to 3 µs, and 10 µs per acked message (histogram and counter).

The stored-message backlog is counted by walking every stream in Redis, which costs Redis
about 100 ms per 10,000 users with stored messages. Not at each scrape, then: the ingest
lease holder counts in the background (``BacklogCount``) and saves the totals in Redis, and
a scrape on any worker reads them, one command whatever the number of users. The figure is
as old as the last count, which the scrape tells too. Counters kept exact as messages are
stored, trimmed and acked were the other way, but a user's stream that expires takes its
messages with it unseen, so they would drift.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

import gevent
import redis
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest, multiprocess)
from prometheus_client.core import GaugeMetricFamily, Metric

from .store import KIND_NAMES, Store

log = logging.getLogger(__name__)

# Seconds between two counts of the stored messages, at least; longer when a count takes
# more than a twentieth of it, so that counting never costs Redis more than that share.
COUNT_EVERY = 5.0

CONNECTIONS = Gauge("pushapp_connections", "Socket.IO connections open now",
                    multiprocess_mode="livesum")
LOGINS = Counter("pushapp_logins", "Logins accepted")
MESSAGES_IN = Counter("pushapp_messages_in", "Messages from business servers (Redis channels "
                      "and HTTP API) handled, by kind", ["kind"])
MESSAGES_OUT = Counter("pushapp_messages_out", "Messages sent to sockets, by kind", ["kind"])
ACKS = Counter("pushapp_acks", "Stored messages acknowledged by a client, by kind", ["kind"])
REDELIVERIES = Counter("pushapp_redeliveries", "Messages sent to a socket that had been sent "
                       "before without an ack, by kind", ["kind"])
LATENCY = Histogram("pushapp_delivery_latency_seconds", "From storing a message to its ack",
                    ["kind"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800,
                                       3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600))
LISTENER_RECONNECTS = Counter("pushapp_listener_reconnects", "Times the pub/sub listener lost "
                              "Redis and connected again")
ERRORS = Counter("pushapp_errors", "Errors, by reason", ["reason"])


def acked(kind: str, ids: Iterable[str]) -> None:
    """Count acked stored messages and how long each waited: a stream id starts with the
    millisecond it was stored."""
    now_ms = time.time() * 1000
    name = KIND_NAMES[kind]
    histogram = LATENCY.labels(name)
    count = 0
    for msg_id in ids:
        histogram.observe(max(0.0, now_ms - int(msg_id.partition("-")[0])) / 1000)
        count += 1
    ACKS.labels(name).inc(count)


def resent(kind: str, count: int) -> None:
    if count:
        REDELIVERIES.labels(KIND_NAMES[kind]).inc(count)


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
            family.add_metric([KIND_NAMES[kind]], total)
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
    registry = CollectorRegistry()
    registry.register(Backlog(store))
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY) + generate_latest(registry), CONTENT_TYPE_LATEST
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
