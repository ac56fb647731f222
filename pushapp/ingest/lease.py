"""The ingest lease: which one worker of the gateway stores what the business channels carry,
and this node's heartbeat.

Every worker hears the business channels, but only the holder of the lease stores what they
carry: with several workers each message is stored once (seed bug 9). The keepalive renews
the lease and this node's heartbeat; a lease left by a worker of this host that has died is
taken over at once instead of after its TTL. A stopping worker hands the lease over
(``hand_over``) instead of letting it lapse. The lease itself is kept in Redis by the store.
"""
from __future__ import annotations

import logging
import os
import socket
import time

import gevent
import redis

from ..config import Config
from ..store.store import Store

log = logging.getLogger(__name__)


def node_name() -> str:
    """This worker's name among nodes: host, pid and a random tag against pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _dead_here(holder: str) -> bool:
    """Whether ``holder`` names a process of this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False



class Lease:
    """This node's hold on the ingest lease. ``held`` is true until a little before the
    lease could lapse; ``yielding``, once set, stops renewing it (a drain is under way)."""

    def __init__(self, config: Config, store: Store, node: str) -> None:
        self.config = config
        self.store = store
        self.node = node
        self.yielding = False
        self._until = 0.0
        self._running = False

    @property
    def held(self) -> bool:
        return time.monotonic() < self._until

    def keep(self) -> None:
        """Renew the lease and this node's heartbeat every third of ``LEASE_TTL``, until
        ``release``; a Redis failure counts as the lease lost until the next renewal."""
        self._running = True
        ttl = self.config.lease_ttl
        while self._running:
            try:
                self._renew(ttl)
            except redis.RedisError as exc:
                self._until = 0.0
                log.warning("keepalive failed, Redis unreachable: %s", exc)
            gevent.sleep(ttl / 3)

    def _renew(self, ttl: float) -> None:
        started = time.monotonic()
        self.store.heartbeat(self.node, ttl)
        if self.yielding:
            return
        held = self.store.hold_lease(self.node, ttl)
        if not held:
            holder = self.store.lease_holder()
            if holder and _dead_here(holder) and self.store.drop_lease(holder):
                log.warning("took over the ingest lease of dead worker %s", holder)
                held = self.store.hold_lease(self.node, ttl)
        was_leader = self.held
        # Count the lease from before the round trip, and stop short of its expiry, so
        # two workers never both believe they hold it.
        self._until = started + ttl * 0.8 if held else 0.0
        if held != was_leader:
            log.info("node %s %s the ingest lease", self.node, "holds" if held else "lost")

    def hand_over(self) -> None:
        """Drop the lease now, if held, so that another worker takes it at once."""
        was_held, self._until = self.held, 0.0
        try:
            if was_held and self.store.drop_lease(self.node):
                log.info("node %s handed the ingest lease over", self.node)
        except redis.RedisError as exc:
            log.warning("could not drop the ingest lease (it lapses in %gs): %s",
                        self.config.lease_ttl, exc)

    def release(self) -> None:
        """Stop renewing, and hand the lease and this node's users over without waiting for
        their TTLs."""
        self._running = False
        try:
            if self.held:
                self.store.drop_lease(self.node)
            self.store.forget_node(self.node)
        except redis.RedisError as exc:
            log.warning("could not release lease/heartbeat on exit: %s", exc)
