"""The durable way in for business servers: a Redis Stream instead of pub/sub.

``XADD <prefix>inbox * channel snschat data '{"from":…,"to":…}'`` (or ``channel
notification``). Unlike PUBLISH, a message added to the stream is kept by Redis until the
gateway has stored it: the ingest lease holder reads it through a consumer group and
acknowledges it only after routing, so a worker killed in between leaves it pending, and
the next lease holder claims and routes it (at least once; a crash between routing and
acknowledging makes a duplicate, with a new mid).

An entry whose ``data`` is over ``MAX_CHANNEL_MESSAGE_BYTES`` is refused (one log line,
a count) and removed: the reader's connection skips it as it arrives (pushapp.store.capped), and
reads at most ``oversized.held_bytes`` of entries at once. The stream's commands are the
store's (pushapp.store.inbox_stream); what to do with each entry is decided here.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
import redis
from redis.exceptions import RedisClusterException

from .. import payloads
from ..config import Config
from ..store.capped import Oversized
from ..store.inbox_stream import InboxStream
from .oversized import held_bytes, refuse

log = logging.getLogger(__name__)

_BLOCK_MS = 1000
# Entries read at once, at most.
_BATCH = 100


class Inbox:
    """The inbox stream's consumer in this worker: reads while the worker holds the lease,
    routes each entry, then acknowledges and deletes it."""

    def __init__(self, config: Config, connect: Callable[[], redis.Redis], node: str,
                 leader: Callable[[], bool], route: Callable[[str, bytes], None]) -> None:
        """``connect`` makes the client that reads and acknowledges the entries: its
        connection must skip data over the limit (``capped.capped_client``)."""
        self.channels = {b"snschat": config.channel_snschat,
                         b"notification": config.channel_notification}
        self.limit = config.max_channel_message_bytes
        self._connect = connect
        self.stream = InboxStream(connect(), config.key("inbox"), node,
                                  max(1, min(_BATCH, held_bytes(self.limit) // self.limit)))
        self.leader = leader
        self.route = route
        # Entries idle this long while this node holds the lease were left by a consumer
        # that is gone (or by this one, after a Redis failure).
        self.claim_idle_ms = int(config.lease_ttl * 1000)

    def run(self) -> None:
        """Consume while this node holds the lease; after any Redis failure start over,
        which first claims what was read and not acknowledged."""
        backoff = 0.1
        while True:
            if not self.leader():
                gevent.sleep(0.2)
                continue
            try:
                self._consume()
            except redis.RedisError as exc:
                log.warning("inbox: Redis failed (%s); retrying in %.1fs", exc, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._reconnect()
            else:
                backoff = 0.1

    def _reconnect(self) -> None:
        """Go on with a new client. On a cluster it asks the nodes for the slots afresh:
        after a failover, redis-py's client has been seen to keep the dead master for
        the stream's slot and connect to it again and again, long after the promotion.
        If no node answers, the old client stays, for the next pass."""
        try:
            client = self._connect()
        except (redis.RedisError, RedisClusterException):
            return
        self.stream.use(client)

    def _consume(self) -> None:
        self.stream.join()
        # Taking over: what earlier holders read and left is older than anything new, so
        # it goes first, whatever its age.
        self._claim_abandoned(0)
        claim_due = time.monotonic() + self.claim_idle_ms / 2000
        while self.leader():
            if time.monotonic() >= claim_due:
                self._claim_abandoned(self.claim_idle_ms)
                claim_due = time.monotonic() + self.claim_idle_ms / 2000
            for _, entries in self.stream.read_new(_BLOCK_MS):
                self._handle(entries)

    def _claim_abandoned(self, min_idle_ms: int) -> None:
        """Route entries read by a consumer that never acknowledged them: a worker that
        died, or this one before a Redis failure."""
        start = "0-0"
        while True:
            start, entries = self.stream.claim(min_idle_ms, start)
            self._handle(entries)
            if start in (b"0-0", "0-0"):
                return

    def _handle(self, entries: list) -> None:
        done = []
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                done.append(entry_id)
                continue
            channel = self.channels.get(fields.get(b"channel", b""))
            data = fields.get(b"data", b"")
            try:
                if channel is None:
                    raise payloads.PayloadError("channel must be snschat or notification")
                if isinstance(data, Oversized):
                    refuse(f"the inbox (entry {entry_id.decode()})", data, self.limit)
                else:
                    self.route(channel, data)
            except payloads.PayloadError as exc:
                log.warning("inbox: skipped entry %s: %s", entry_id, exc)
            done.append(entry_id)
        if done:
            self.stream.done(done)
