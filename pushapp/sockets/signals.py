"""The signals between the workers of the gateway: the one module that builds and reads
every one.

A worker that stores a message, or logs a user in, tells the worker holding the user's
socket over that worker's own channel, ``<prefix>node:<node>`` (a signal for itself is
handed over without Redis; on a Redis Cluster of Redis 7 the store sends it with SPUBLISH,
to that channel's shard only). A signal is a JSON object whose ``k`` says what it is:

- ``"kick"``: a newer login replaced socket ``s`` of user ``u``; ``l``: it was another
  device (the socket is told to log out).
- ``0``: a notification not stored, text ``m``, for the users ``u`` connected there.
- a kind's flag (pushapp.kinds: 1 chat, 2 notification): messages just stored, ``e``
  one ``[user, id, prev, text]`` per chat, or ``[user, id, prev]`` per recipient of the
  notification whose one text is ``m``.

It lives with the sockets because delivery sends the kick and receives them all; the ingest
sends the others. It imports nothing of pushapp but the leaves: whoever receives them is a
``Receiver`` (pushapp.sockets.delivery.Delivery).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from ..config import Config
from ..kinds import CHAT


class Stored(NamedTuple):
    """A message just stored for ``user``: its id, the id marked as sent to the user's
    socket before it (None: none) and its text."""

    user: str
    id: str
    prev: str | None
    raw: bytes


class Receiver(Protocol):
    """What a signal asks of the worker that reads it (its delivery)."""

    def kick(self, user: str, sid: str, logout: bool) -> None: ...

    def deliver_unstored(self, users: list[str], raw: str) -> None: ...

    def deliver_stored(self, kind: int, stored: list[Stored]) -> None: ...


def channel(config: Config, node: str) -> str:
    """The channel of ``node``'s signals."""
    return config.key("node", node)


def kick(user: str, sid: str, logout: bool) -> dict[str, Any]:
    """Close socket ``sid`` of ``user``, replaced by a newer login."""
    return {"k": "kick", "u": user, "s": sid, "l": logout}


def unstored(users: list[str], raw: bytes) -> dict[str, Any]:
    """A notification not stored, for those of ``users`` connected to the node."""
    return {"k": 0, "u": users, "m": raw.decode()}


def stored(kind: int, messages: list[Stored]) -> dict[str, Any]:
    """Messages of ``kind`` just stored for users connected to the node (each text once for
    a notification, which is the same for every user)."""
    if kind == CHAT:
        return {"k": kind, "e": [[s.user, s.id, s.prev, s.raw.decode()] for s in messages]}
    return {"k": kind, "m": messages[0].raw.decode(),
            "e": [[s.user, s.id, s.prev] for s in messages]}


def read(signal: dict[str, Any], receiver: Receiver) -> None:
    """Do what ``signal`` asks, for this node's sockets."""
    kind = signal["k"]
    if kind == "kick":
        receiver.kick(signal["u"], signal["s"], signal["l"])
    elif kind == 0:
        receiver.deliver_unstored(signal["u"], signal["m"])
    elif kind == CHAT:
        receiver.deliver_stored(kind, [Stored(user, msg_id, prev, raw.encode())
                                       for user, msg_id, prev, raw in signal["e"]])
    else:
        raw = signal["m"].encode()
        receiver.deliver_stored(kind, [Stored(user, msg_id, prev, raw)
                                       for user, msg_id, prev in signal["e"]])
