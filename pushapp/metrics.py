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

import functools
import glob
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

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
LISTENER = Gauge("pushapp_listener_subscribed", "1 while this worker's pub/sub listener is "
                 "subscribed to Redis", multiprocess_mode="liveall")

# The samples the admin dashboard shows (api.stats), by the short names it uses.
SHOWN = {
    "pushapp_connections": "connections",
    "pushapp_logins_total": "logins",
    "pushapp_messages_in_total": "messages_in",
    "pushapp_messages_out_total": "messages_out",
    "pushapp_acks_total": "acks",
    "pushapp_redeliveries_total": "redeliveries",
    "pushapp_listener_reconnects_total": "listener_reconnects",
    "pushapp_listener_subscribed": "listener",
    "pushapp_errors_total": "errors",
    "pushapp_stored_messages": "stored",
}


@functools.lru_cache(maxsize=None)
def labelled(metric: Counter | Histogram, label: str) -> Any:
    """``metric.labels(label)``, looked up once: a chat updates several per message."""
    return metric.labels(label)


def acked(kind: str, ids: Iterable[str]) -> None:
    """Count acked stored messages and how long each waited: a stream id starts with the
    millisecond it was stored."""
    now_ms = time.time() * 1000
    name = KIND_NAMES[kind]
    histogram = labelled(LATENCY, name)
    count = 0
    for msg_id in ids:
        histogram.observe(max(0.0, now_ms - int(msg_id.partition("-")[0])) / 1000)
        count += 1
    labelled(ACKS, name).inc(count)


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


def _registries(backlog: Backlog | None) -> list[CollectorRegistry]:
    """Every worker's values (this process's alone when not under gunicorn), with the
    backlog if given."""
    registry = CollectorRegistry()
    if backlog is not None:
        registry.register(backlog)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return [REGISTRY, registry]
    multiprocess.MultiProcessCollector(registry)
    return [registry]


def exposition(store: Store) -> tuple[bytes, str]:
    """The text Prometheus scrapes: every worker's values, and the backlog."""
    return (b"".join(generate_latest(registry) for registry in _registries(Backlog(store))),
            CONTENT_TYPE_LATEST)


def summary(families: Iterable[Metric]) -> dict[str, float | dict[str, float]]:
    """The ``SHOWN`` samples of ``families`` by short name; a labelled one (kind, reason)
    as a mapping of its label's values. Histograms and per-process labels are left out."""
    found: dict[str, Any] = {}
    for family in families:
        for sample in family.samples:
            name = SHOWN.get(sample.name)
            if name is None:
                continue
            labels = [value for label, value in sample.labels.items() if label != "pid"]
            if labels:
                by_label = found.setdefault(name, {})
                by_label[labels[0]] = by_label.get(labels[0], 0.0) + sample.value
            else:
                found[name] = found.get(name, 0.0) + sample.value
    return found


def totals() -> dict[str, float | dict[str, float]]:
    """Every worker's values summed, as /metrics gives them, without the backlog (a read
    of Redis, which the caller makes where it can answer for Redis failing)."""
    return summary(family for registry in _registries(None) for family in registry.collect())


def by_worker() -> dict[int, dict[str, float | dict[str, float]]]:
    """Each live worker's own values, by pid: the files that /metrics adds up, one
    worker's at a time. Empty when not under gunicorn (no files)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return {}
    files = glob.glob(os.path.join(folder, "*.db"))
    # A live worker has gauge_live*_<pid>.db files; gunicorn removes a dead one's.
    live = {int(Path(name).stem.rpartition("_")[2]) for name in files
            if Path(name).name.startswith("gauge_live")}
    return {pid: summary(multiprocess.MultiProcessCollector.merge(
                [name for name in files if Path(name).stem.endswith(f"_{pid}")]))
            for pid in sorted(live)}
