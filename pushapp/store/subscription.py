"""The listener's pub/sub connection: what it asks of Redis's pub/sub, and nothing else.

The store makes it (over a client of pushapp.store.capped, which never holds a message
larger than ``MAX_CHANNEL_MESSAGE_BYTES``), so that every call to Redis goes through the
store; pushapp.ingest.listener decides what to subscribe to and when, and reads.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from .capped import MESSAGE_KINDS, Oversized


class Subscription:
    """One pub/sub connection: channels joined and left, and messages read as they come.
    Subscribe and unsubscribe confirmations are not messages here.

    ``own`` is this node's signal channel. With ``sharded`` (a cluster whose masters all
    have Redis 7) it is joined with SSUBSCRIBE, the others with SUBSCRIBE. On a cluster
    the one connection goes to the master of ``own``'s slot: it hears every plain channel
    (a cluster forwards each PUBLISH to every node) and ``own``'s shard, so that one
    reader serves both, without pause. The slots are asked for at each new subscription:
    after a failover, that master is the promoted replica."""

    def __init__(self, client: redis.Redis | RedisCluster, own: str, sharded: bool) -> None:
        if isinstance(client, RedisCluster):
            try:
                client.nodes_manager.initialize()
                client = client.get_redis_connection(client.get_node_from_key(own))
            except RedisClusterException as exc:  # no node answered, or a slot has none
                raise redis.ConnectionError(str(exc)) from exc
        self._own = own
        self._sharded = own if sharded else None
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)

    def join_own(self, timeout: float) -> None:
        """Join this node's channel and wait, up to ``timeout`` seconds, for Redis to
        confirm it: whatever is sent on it from then on is heard. On the new connection
        nothing can come before that confirmation."""
        self.subscribe(self._own)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._pubsub.parse_response(
                block=False, timeout=max(0.0, deadline - time.monotonic()))
            if reply is None:
                raise redis.TimeoutError(f"Redis did not confirm the subscription to "
                                         f"{self._own} within {timeout:g}s")
            self._pubsub.handle_message(reply, ignore_subscribe_messages=True)
            if reply[0] in (b"subscribe", b"ssubscribe") and reply[1] == self._own.encode():
                return

    def subscribe(self, *channels: str) -> None:
        plain = [channel for channel in channels if channel != self._sharded]
        if plain:
            self._pubsub.subscribe(*plain)
        if len(plain) < len(channels):
            self._pubsub.ssubscribe(self._sharded)

    def unsubscribe(self, *channels: str) -> None:
        self._pubsub.unsubscribe(*channels)

    def joined(self, channels: Iterable[str]) -> bool:
        """Whether Redis has not yet confirmed leaving any of ``channels``."""
        return any(channel.encode() in self._pubsub.channels for channel in channels)

    def leaving(self) -> bool:
        """Whether an unsubscribe waits for Redis's confirmation."""
        return bool(self._pubsub.pending_unsubscribe_channels)

    def ping_if_due(self) -> None:
        """A PING now and then, as redis-py's ``get_message`` sends them, so that a dead
        connection is noticed."""
        self._pubsub.check_health()

    def readable(self, timeout: float) -> bool:
        """Whether a message (or the start of one) is there within ``timeout`` seconds."""
        return self._pubsub.connection.can_read(timeout=timeout)

    def next(self) -> tuple[str, bytes | Oversized] | None:
        """The next message, read to its end however long Redis takes to send it (a
        timeout in the middle would leave the connection unusable): its channel and its
        data; None for a confirmation or a PING's answer. A message is taken as read
        (redis-py's ``get_message`` costs a health check, a retry wrapper and a dict a
        message, on every chat: docs/benchmarks.md); anything else goes to redis-py,
        which keeps its record of the channels joined. A broken connection raises, and
        the listener connects again."""
        reply = self._pubsub.connection.read_response(
            disconnect_on_error=False, push_request=True, timeout=None)
        if type(reply) is list and len(reply) == 3 and reply[0] in MESSAGE_KINDS:
            return reply[1].decode(), reply[2]
        if reply is None:
            return None
        if self._pubsub.is_health_check_response(reply):
            self._pubsub.health_check_response_counter -= 1  # as redis-py counts them
            return None
        message = self._pubsub.handle_message(reply, ignore_subscribe_messages=True)
        if message is None:
            return None
        return message["channel"].decode(), message["data"]

    def close(self) -> None:
        self._pubsub.close()
