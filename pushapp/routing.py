"""Messages from business servers: store them, then signal the node holding each recipient.

The pub/sub listener, ``CHAT_FILTER=direct`` chats and the HTTP API all enter here,
so a message is handled the same way whichever way it came in. Signals to another worker
go over that worker's own channel, ``<prefix>node:<node>``.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import redis

from . import metrics, payloads
from .collector import Collector
from .config import Config
from .delivery import CHAT, NOTIF, Delivery
from .store import Placement, Store

log = logging.getLogger(__name__)


class Router:
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

    def chats(self, chats: list[tuple[str, bytes]]) -> list[Placement | redis.ResponseError]:
        """Chats (recipient, raw) heard together: stored in order in one step, then one
        signal per node for all their recipients there. A chat whose stream cannot be
        written (its key holds another type; the script checks them all before writing)
        fails alone: the others are then stored one by one, and its error is its answer."""
        try:
            placements: list[Placement | redis.ResponseError] = list(
                self.store.store_chats(chats))
        except redis.ResponseError:
            if len(chats) == 1:
                raise
            placements = [self._store_alone(chat) for chat in chats]
        metrics.MESSAGES_IN.labels("chat").inc(len(chats))
        by_node: dict[str, dict[str, None]] = defaultdict(dict)
        for (to, _), placement in zip(chats, placements):
            if isinstance(placement, redis.ResponseError):
                continue
            if placement.node is None:
                self.delivery.push(to)
            else:
                by_node[placement.node][to] = None
        for node, users in by_node.items():
            self._signal(node, {"k": CHAT, "u": list(users)})
        return placements

    def _store_alone(self, chat: tuple[str, bytes]) -> Placement | redis.ResponseError:
        try:
            return self.store.store_chats([chat])[0]
        except redis.ResponseError as exc:
            return exc

    def notification(self, message: dict, raw: bytes) -> dict[str, Placement]:
        """A notification as on ``notification``: store per recipient if asked, deliver to
        those online."""
        users, need_store = payloads.notification(
            message, self.config.max_recipients, self.config.max_user_id_length)
        placements = self._place_notification(users, raw, need_store)
        metrics.MESSAGES_IN.labels("notification").inc()
        by_node: dict[str, list[str]] = defaultdict(list)
        for user, placement in zip(users, placements):
            if placement.node is not None:
                by_node[placement.node].append(user)
        for node, online in by_node.items():
            if need_store:
                self._signal(node, {"k": NOTIF, "u": online})
            else:
                self._signal(node, {"k": 0, "u": online, "m": raw.decode()})
        return dict(zip(users, placements))

    def _place_notification(self, users: list[str], raw: bytes,
                            need_store: bool) -> list[Placement]:
        """Store the notification if asked, and find where its recipients are. Unstored,
        the recipients connected to this worker need no presence lookup; if all are here,
        Redis is not asked at all."""
        if need_store:
            return self.store.store_notification(users, raw, True)
        here = [user in self.delivery.by_user for user in users]
        elsewhere = [user for user, local in zip(users, here) if not local]
        found = iter(self.store.store_notification(elsewhere, raw, False) if elsewhere else ())
        placed_here = Placement(None, self.node)
        return [placed_here if local else next(found) for local in here]

    def _signal(self, node: str, signal: dict[str, Any]) -> None:
        if node == self.node:
            self.on_signal(signal)
        else:
            self.store.publish(self.config.key("node", node), payloads.dumps(signal))

    def on_signal(self, signal: dict[str, Any]) -> None:
        """A signal for this node, from itself or from the node that stored a message."""
        kind = signal["k"]
        if kind == "kick":
            self.delivery.kick(signal["u"], signal["s"], signal["l"])
        elif kind == 0:
            self.delivery.deliver_unstored(signal["u"], signal["m"])
        else:
            self.delivery.deliver(kind, signal["u"])
