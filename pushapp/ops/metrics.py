"""What the gateway counts, for Prometheus.

Under gunicorn every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(set by gunicorn.conf.py before any worker imports this), and ``/metrics`` on any worker
adds them all up. An update is a lock and a write to a memory-mapped file, so the hot
paths look their labelled children up once (``labelled``); its cost is in
docs/benchmarks.md ("Costs the code's comments refer to").

The stored-message backlog, which needs the store, is pushapp.ops.backlog: this module
imports nothing of pushapp but the kinds (and prometheus_client's histogram internals,
pushapp.internals), so that every layer may count.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               multiprocess)
from prometheus_client.core import Metric

from ..internals.prometheus_histograms import observe_many
from ..kinds import LABELS

log = logging.getLogger(__name__)

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
    name = LABELS[kind]
    waited = [max(0.0, now_ms - int(msg_id.partition("-")[0])) / 1000 for msg_id in ids]
    observe_many(labelled(LATENCY, name), waited)
    labelled(ACKS, name).inc(len(waited))


def sent(kind: str, count: int) -> None:
    """Count ``count`` stored messages of ``kind`` (the store's name) sent to sockets."""
    labelled(MESSAGES_OUT, LABELS[kind]).inc(count)


def resent(kind: str, count: int) -> None:
    if count:
        REDELIVERIES.labels(LABELS[kind]).inc(count)


def registries(backlog: Any = None) -> list[CollectorRegistry]:
    """Every worker's values (this process's alone when not under gunicorn), with the
    backlog's collector (pushapp.ops.backlog) if given."""
    registry = CollectorRegistry()
    if backlog is not None:
        registry.register(backlog)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return [REGISTRY, registry]
    multiprocess.MultiProcessCollector(registry)
    return [registry]


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
    return summary(family for registry in registries() for family in registry.collect())


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
