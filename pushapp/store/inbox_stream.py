"""The inbox stream's commands: the durable way in for business servers, as Redis sees it.

Business servers ``XADD <prefix>inbox * channel … data …``; the ingest lease holder reads
the entries through the consumer group ``gateway`` (pushapp.ingest.inbox decides what to do
with them). This module holds the commands and only them, on the client it is given: the
capped one (pushapp.store.capped), whose connection skips data over the limit.
"""
from __future__ import annotations

from typing import Any

import redis

GROUP = "gateway"


class InboxStream:
    """The stream ``key`` as consumer ``node`` of the group ``gateway`` reads it, ``count``
    entries at a time at most."""

    def __init__(self, client: redis.Redis, key: str, node: str, count: int) -> None:
        self.redis = client
        self.key = key
        self.node = node
        self.count = count

    def use(self, client: redis.Redis) -> None:
        """Go on with ``client``; the one used so far is closed."""
        self.redis.close()
        self.redis = client

    def join(self) -> None:
        """Make the group (and the stream) unless it exists: it starts at the stream's first
        entry, so nothing added before the first gateway started is lost."""
        try:
            self.redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_new(self, block_ms: int) -> list[list[Any]]:
        """Entries no consumer has read yet, waiting up to ``block_ms`` for one: a list of
        ``[stream, entries]``, each entry ``(id, fields)``."""
        return self.redis.xreadgroup(GROUP, self.node, {self.key: ">"}, count=self.count,
                                     block=block_ms) or []

    def claim(self, min_idle_ms: int, start: bytes | str) -> tuple[bytes | str, list]:
        """Entries read and not acknowledged for ``min_idle_ms``, from ``start``: the next
        start (``0-0`` once all are seen) and the entries, now this consumer's. (Redis 6.2
        answers [next, entries]; 7 adds the ids of deleted entries.)"""
        reply = self.redis.xautoclaim(self.key, GROUP, self.node, min_idle_ms,
                                      start_id=start, count=self.count)
        return reply[0], reply[1]

    def done(self, ids: list[bytes]) -> None:
        """Acknowledge and delete the entries ``ids``, in one transaction."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(self.key, GROUP, *ids)
        pipe.xdel(self.key, *ids)
        pipe.execute()
