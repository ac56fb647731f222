"""Messages from business servers: store them, then hand them to the node holding each
recipient.

The pub/sub listener, ``CHAT_FILTER=direct`` chats and the HTTP API all enter here,
so a message is handled the same way whichever way it came in. Signals to another worker
go over that worker's own channel (pushapp.sockets.signals builds and reads them).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import redis

from .. import payloads
from ..config import Config
from ..kinds import CHAT, NOTIF
from ..ops import metrics
from ..sockets import signals
from ..sockets.delivery import Delivery
from ..sockets.signals import Stored
from ..store.batching import Collector
from ..store.store import Placement, Store

log = logging.getLogger(__name__)


class Router:
    """The one way a message goes in, whoever sent it: stored, then delivered by this worker
    or signalled to the worker holding each recipient."""

    def __init__(self, config: Config, store: Store, delivery: Delivery) -> None:
        self.config = config
        self.store = store
        self.delivery = delivery
        self.node = delivery.node
        self._one_by_one = Collector(self.chats, limit=500)

    def chat(self, message: dict, raw: bytes) -> dict[str, Placement]:
        """A chat as on ``snschat``: store for ``to``, archive, deliver or ask for a push.
        Returns, per recipient, the stored id and the node it was online at. Chats that
        come one at a time from many greenlets (``CHAT_FILTER=direct`` clients, API
        requests) in the same moment are stored and signalled together."""
        to = self.recipient(message)
        return {to: self._one_by_one.call((to, raw))}

    def recipient(self, chat: dict) -> str:
        """Whom a chat is for; raises PayloadError if it names no valid user."""
        return payloads.user_id(chat.get("to"), "to", self.config.max_user_id_length)

    def chats(self, chats: list[tuple[str, bytes]]) -> list[Placement | redis.RedisError]:
        """Chats (recipient, raw) heard together: stored in order in one step, then handed
        to the nodes of their recipients, one signal per node; a recipient whose node's
        heartbeat is not fresh is also asked a mobile push. A chat whose stream cannot
        be written (its key holds another type, or on a cluster its master is down) fails
        alone, its error its answer; a lone chat raises it. Chats stored on the master but
        not on ``STORE_WAIT_REPLICAS`` replicas in time raise NotReplicated, all of them,
        before any is delivered: whoever retries stores them again, and the first copies,
        still on the master, reach their users at their next read (at least once)."""
        placements = self.store.store_chats(chats)
        if len(chats) == 1 and isinstance(placements[0], redis.RedisError):
            raise placements[0]
        by_node: dict[str, list[Stored]] = defaultdict(list)
        handled = 0
        for (to, raw), placement in zip(chats, placements):
            if isinstance(placement, redis.RedisError):
                continue  # not counted: its sender retries it
            handled += 1
            if not placement.online:
                self.delivery.push(to)
            if placement.node is not None:
                by_node[placement.node].append(Stored(to, placement.id, placement.prev, raw))
        metrics.labelled(metrics.MESSAGES_IN, "chat").inc(handled)
        for node, stored in by_node.items():
            self._hand_over(node, CHAT, stored)
        return placements

    def notification(self, message: dict, raw: bytes) -> dict[str, Placement]:
        """A notification as on ``notification``: store per recipient if asked, deliver to
        those online."""
        users, need_store = payloads.notification(
            message, self.config.max_recipients, self.config.max_user_id_length)
        placements = (self._store_notification(users, raw) if need_store
                      else self._locate(users))
        metrics.labelled(metrics.MESSAGES_IN, "notification").inc()
        by_node: dict[str, list[Stored]] = defaultdict(list)
        for user, placement in zip(users, placements):
            if placement.node is not None:
                by_node[placement.node].append(Stored(user, placement.id, placement.prev, raw))
        for node, stored in by_node.items():
            if need_store:
                self._hand_over(node, NOTIF, stored)
            else:
                self._signal(node, signals.unstored([s.user for s in stored], raw))
        return dict(zip(users, placements))

    def _store_notification(self, users: list[str], raw: bytes) -> list[Placement]:
        """Store a notification for each user; one whose stream key holds another type is
        left out with a log line (the others are stored)."""
        placements = []
        for user, placement in zip(users, self.store.store_notification(users, raw)):
            if isinstance(placement, redis.ResponseError):
                log.warning("notification for user=%s not stored: %s", user, placement)
                metrics.ERRORS.labels("redis").inc()
                placement = Placement(None, None)
            placements.append(placement)
        return placements

    def _locate(self, users: list[str]) -> list[Placement]:
        """Where the recipients of an unstored notification are. Those connected to this
        worker need no lookup; if all are here, Redis is not asked at all."""
        here = [user in self.delivery.by_user for user in users]
        elsewhere = [user for user, local in zip(users, here) if not local]
        found = iter(self.store.locate(elsewhere) if elsewhere else ())
        return [Placement(None, self.node if local else next(found)) for local in here]

    def _hand_over(self, node: str, kind: int, stored: list[Stored]) -> None:
        """Messages just stored, to the node holding their users' sockets: this worker's
        delivery directly, another's over its channel (each text once for a notification,
        which is the same for every user)."""
        if node == self.node:
            self.delivery.deliver_stored(kind, stored)
        else:
            self._signal(node, signals.stored(kind, stored))

    def _signal(self, node: str, signal: dict[str, Any]) -> None:
        if node == self.node:
            signals.read(signal, self.delivery)
        else:
            self.store.publish(signals.channel(self.config, node), payloads.dumps(signal))
