"""The worker's link to Redis pub/sub: a reader and a handler greenlet, beside the lease's
keepalive.

The reader takes business servers' channels and this node's own signal channel off the
pub/sub connection as fast as Redis sends them, and does nothing else: a subscriber that
falls behind makes Redis keep its backlog, and Redis drops the subscriber, with every
message of that backlog, once it passes ``client-output-buffer-limit pubsub`` (32 MB by
default), though each PUBLISH had answered 1. It refuses a business message over
``MAX_CHANNEL_MESSAGE_BYTES`` (its connection never holds one whole: pushapp.store.capped) and
queues the others, in the order heard, for the handler. The queue holds at most
``oversized.held_bytes`` (16 MiB by default); a message heard while it is full is dropped
with a log line and a count: the handler is that far behind, most likely because Redis
fails its stores, and Redis would otherwise drop the connection and lose more, uncounted.

The handler takes every message waiting at once (up to ``_BATCH``) and stores a run of
chats in one Lua call, with one delivery signal per node: under a flood it keeps up, where
one round trip per message left it behind the sockets' greenlets. The reader survives
Redis restarts (reconnect with capped, jittered backoff, then resubscribe) and the
handler skips any message it cannot use with one log line, so no message can stop them.

Every worker hears the business channels, but only the holder of the ingest lease
(pushapp.ingest.lease) stores what they carry: with several workers each message is stored
once (seed bug 9).
"""
from __future__ import annotations

import logging
import random
import time
from collections import deque
from functools import partial
from typing import Any, Callable

import gevent
import gevent.event
import orjson
import redis

from .. import payloads
from ..config import Config
from ..ops import metrics
from ..sockets import signals
from ..store.capped import Oversized, capped_client
from ..store.store import Store
from ..store.subscription import Subscription
from .inbox import Inbox
from .lease import Lease
from .oversized import held_bytes, refuse
from .routing import Router

log = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0
# How long a message heard while Redis fails is kept and retried before it is given up.
_STORE_RETRY = 30
# How often the listener looks whether the lease changed hands, at most.
_LEASE_CHECK = 0.2
# Messages read from the subscription, or handled, at once, at most.
_BATCH = 500
# Bytes a queued message is counted for beyond its own: Python's objects around it.
_OVERHEAD = 100
# Seconds Redis has to confirm the subscription to this node's channel.
_CONFIRM_TIMEOUT = 5.0


def _wait_until(check: Callable[[], bool], deadline: float) -> None:
    while not check() and time.monotonic() < deadline:
        gevent.sleep(0.02)


class Heard:
    """Messages the reader took and the handler has not handled yet, in the order heard,
    at most ``budget`` bytes of them (a batch being handled still counts)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self.added = 0
        self.handled = 0
        self._items: deque[tuple[str, bytes]] = deque()
        self._ready = gevent.event.Event()

    def put(self, channel: str, data: bytes) -> bool:
        """Queue a message; False, and nothing queued, if it does not fit in the budget."""
        cost = len(data) + _OVERHEAD
        if self.size + cost > self.budget:
            return False
        self._items.append((channel, data))
        self.size += cost
        self.added += 1
        self._ready.set()
        return True

    def take(self, most: int) -> list[tuple[str, bytes]]:
        """Up to ``most`` messages, oldest first, once there is one."""
        self._ready.wait()
        batch = [self._items.popleft() for _ in range(min(most, len(self._items)))]
        if not self._items:
            self._ready.clear()
        return batch

    def done(self, batch: list[tuple[str, bytes]]) -> None:
        """``batch`` is handled: its bytes are free again."""
        self.size -= sum(len(data) + _OVERHEAD for _, data in batch)
        self.handled += len(batch)


class Listener:
    """The business channels and this node's signal channel, heard, queued and handled;
    the business messages stored only while ``lease`` is held."""

    def __init__(self, config: Config, store: Store, router: Router) -> None:
        self.config = config
        self.store = store
        self.router = router
        self.node = router.node
        self.node_channel = signals.channel(config, self.node)
        self.lease = Lease(config, store, self.node)
        self.subscribed = False
        self.hearing = False
        self._running = False
        self._greenlets: list[gevent.Greenlet] = []
        self._heard = Heard(held_bytes(config.max_channel_message_bytes))
        self._client = capped_client(config, f"pushapp-listener:{self.node}",
                                     self.node_channel)

    @property
    def leader(self) -> bool:
        return self.lease.held

    def start(self) -> None:
        self._running = True
        inbox = Inbox(self.config,
                      partial(capped_client, self.config, f"pushapp-inbox:{self.node}"),
                      self.node, lambda: self.lease.held, self.route)
        self._greenlets = [gevent.spawn(self.lease.keep), gevent.spawn(self._listen),
                           gevent.spawn(self._handle_heard), gevent.spawn(inbox.run)]

    def close(self) -> None:
        """Stop, and hand the lease and this node's users over without waiting for TTLs."""
        self._running = False
        gevent.killall(self._greenlets, block=False)
        self.lease.release()

    def hand_over(self, timeout: float) -> None:
        """Let another worker take the business channels now rather than at the lease's
        TTL: stop renewing the lease, leave the channels, let the handler store whatever
        was heard before Redis confirmed that, then drop the lease. This node's own signal
        channel and heartbeat stay, so its sockets are still served while they are closed."""
        self.lease.yielding = True
        deadline = time.monotonic() + timeout
        _wait_until(lambda: not self.hearing, deadline)
        heard = self._heard.added
        _wait_until(lambda: self._heard.handled >= heard, deadline)
        self.lease.hand_over()

    def ready(self) -> bool:
        """Subscribed, and channel messages are being taken: by this node if it holds the
        ingest lease, else by the node that does."""
        if self.leader:
            return self.hearing
        holder = self.store.lease_holder()
        # Our own name there means we are taking (or losing) the lease: not heard yet.
        return self.subscribed and holder is not None and holder != self.node

    def _listen(self) -> None:
        backoff = 0.1
        lost = False
        while self._running:
            subscription = None
            try:
                subscription = Subscription(self._client, self.node_channel,
                                            self.store.sharded)
                subscription.join_own(_CONFIRM_TIMEOUT)
                self.subscribed = True
                metrics.LISTENER.set(1)
                log.info("listener subscribed to %s", self.node_channel)
                if lost:
                    # Signals sent while this node was not subscribed are gone; what they
                    # announced is stored, and read now.
                    gevent.spawn(self.router.delivery.catch_up)
                backoff = 0.1
                self._serve(subscription)
            except (redis.RedisError, OSError) as exc:
                lost = True
                log.warning("listener lost Redis (%s); reconnecting in %.1fs", exc, backoff)
                metrics.LISTENER_RECONNECTS.inc()
            finally:
                self.subscribed = self.hearing = False
                metrics.LISTENER.set(0)
                if subscription is not None:
                    subscription.close()
            gevent.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _serve(self, subscription: Subscription) -> None:
        """Read messages as they come; hear the business channels exactly while holding
        the lease.

        So a business server's PUBLISH returns how many gateways took the message: 0 means
        none did (no worker holds the lease, or Redis restarted), and it should retry.
        """
        business = (self.config.channel_snschat, self.config.channel_notification)
        self.hearing = False
        while self._running:
            wanted = self.leader and not self.lease.yielding
            if wanted and not self.hearing:
                subscription.subscribe(*business)
                self.hearing = True
                log.info("listener subscribed to %s", ", ".join(business))
            elif self.hearing and not wanted:
                if not subscription.joined(business):
                    # Redis has confirmed: nothing more can come on them.
                    self.hearing = False
                    log.info("listener left %s", ", ".join(business))
                elif not subscription.leaving():
                    subscription.unsubscribe(*business)
            subscription.ping_if_due()
            if not subscription.readable(_LEASE_CHECK):
                continue
            for _ in range(_BATCH):
                message = subscription.next()
                if message is not None:
                    self._take(*message)
                if not subscription.readable(0):
                    break
            gevent.sleep(0)  # the handler's and the sockets' turn

    def _take(self, channel: str, data: bytes | Oversized) -> None:
        """Queue a message heard for the handler. A business message is taken only by the
        lease holder (a worker that has just lost the lease may still hear some before it
        unsubscribes), and refused if it is over ``MAX_CHANNEL_MESSAGE_BYTES``."""
        if channel != self.node_channel:
            if not self.lease.held:
                return
            if isinstance(data, Oversized):
                refuse(channel, data, self.config.max_channel_message_bytes)
                return
        if not self._heard.put(channel, data):
            log.error("dropped a message on %s: %d bytes heard wait to be stored already, the "
                      "most a worker holds: %.200r", channel, self._heard.size, data)
            metrics.ERRORS.labels("channel_message_dropped").inc()

    def _handle_heard(self) -> None:
        """The handler: what the reader queued, stored and routed in order, a batch at a
        time; the batch's bytes count against the queue's budget until it is done."""
        while True:
            batch = self._heard.take(_BATCH)
            self.handle(batch)
            self._heard.done(batch)

    def handle(self, messages: list[tuple[str, bytes]]) -> None:
        """Messages taken, in the order heard. Nothing they carry may raise out of here.
        Chats that follow each other are stored and signalled together, one round trip for
        all."""
        chats: list[tuple[str, bytes]] = []
        for channel, data in messages:
            if channel == self.config.channel_snschat:
                try:
                    chats.append((self.router.recipient(
                        payloads.parse_object(data, "snschat message")), data))
                except payloads.PayloadError as exc:
                    self._skipped(channel, data, exc)
                continue
            self._store_chats(chats)
            chats = []
            self._attempt(channel, [data], self.route, channel, data)
        self._store_chats(chats)

    def _store_chats(self, chats: list[tuple[str, bytes]]) -> None:
        """Store a run of chats heard together; a chat that failed alone (its stream key is
        unusable, or on a cluster its master is down) is retried alone, the others stored
        once."""
        if chats:
            self._attempt(self.config.channel_snschat, [raw for _, raw in chats],
                          self._store_run, chats)

    def _store_run(self, chats: list[tuple[str, bytes]]) -> None:
        for chat, placement in zip(chats, self.router.chats(chats)):
            if isinstance(placement, redis.RedisError):
                self._attempt(self.config.channel_snschat, [chat[1]], self.router.chats, [chat])

    def _attempt(self, channel: str, data: list[bytes], action: Callable[..., Any],
                 *args: Any) -> None:
        """Run ``action`` for messages heard on ``channel``: a message that cannot be used
        is skipped with a log line, and a Redis failure is retried."""
        try:
            action(*args)
        except payloads.PayloadError as exc:
            self._skipped(channel, data[0], exc)
        except redis.RedisError as exc:
            metrics.ERRORS.labels("redis").inc()
            self._retry(channel, data, exc, partial(action, *args))
        except Exception:
            log.exception("skipped %d messages on %s that could not be handled: %.200r",
                          len(data), channel, data[0])
            metrics.ERRORS.labels("internal").inc()

    @staticmethod
    def _skipped(channel: str, data: bytes, exc: Exception) -> None:
        log.warning("skipped a message on %s: %s: %.200r", channel, exc, data)
        metrics.ERRORS.labels("channel_message_invalid").inc()

    def route(self, channel: str, data: bytes) -> None:
        """Hand a message to the router by the channel it came on (or names, in the inbox)."""
        if channel == self.node_channel:
            signals.read(orjson.loads(data), self.router.delivery)
        elif channel == self.config.channel_snschat:
            self.router.chat(payloads.parse_object(data, "snschat message"), data)
        elif channel == self.config.channel_notification:
            self.router.notification(payloads.parse_object(data, "notification"), data)

    def _retry(self, channel: str, data: list[bytes], exc: Exception,
               again: Callable[[], Any]) -> None:
        """Messages heard but not stored because Redis failed: Redis is most likely
        restarting, and nothing heard after them can be stored meanwhile either, so keep
        trying (with backoff) for ``_STORE_RETRY`` seconds before giving them up. The
        reader goes on reading meanwhile, into the queue."""
        log.warning("%d messages on %s not stored yet, Redis failed (%s); retrying",
                    len(data), channel, exc)
        deadline, delay = time.monotonic() + _STORE_RETRY, 0.1
        while self._running and time.monotonic() < deadline:
            gevent.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                again()
            except redis.RedisError as failed:
                exc = failed
                continue
            log.info("%d messages on %s stored after Redis came back", len(data), channel)
            return
        for lost in data:
            log.error("message on %s lost, Redis failed for %ds (%s): %.200r", channel,
                      _STORE_RETRY, exc, lost)
            metrics.ERRORS.labels("channel_message_lost").inc()
