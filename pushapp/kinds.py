"""The two kinds of message, chat and notification, and every name each goes by.

One definition instead of three vocabularies: the store names a kind by the last part of
its stream key, the HTTP API, metrics labels and logs by its public name, delivery and the
signals between workers by a bit. The lookups below are derived from ``Kind`` once, so
that hot paths index a dict or test an int and never build an enum member per message.
Imports nothing of pushapp: every layer may use it.
"""
from __future__ import annotations

import enum


class Kind(enum.Enum):
    """A message's kind, with its three names.

    ``key``: the last part of a user's stream key (``<prefix>{<user>}:chat``,
    ``<prefix>{<user>}:notif``) and the store's name for the kind; renaming it would orphan
    every stored message. ``label``: what the HTTP API, metrics labels and logs show.
    ``flag``: the bit a socket's ``busy``/``dirty`` masks use in delivery, and the ``k`` of
    a delivery signal between workers (0 there is a kick).
    """

    CHAT = ("chat", "chat", 1)
    NOTIFICATION = ("notif", "notification", 2)

    def __init__(self, key: str, label: str, flag: int) -> None:
        self.key = key
        self.label = label
        self.flag = flag


# Delivery's bits, as plain ints: a socket's masks are tested per message.
CHAT = Kind.CHAT.flag
NOTIF = Kind.NOTIFICATION.flag
# The store's names, in the order its replies hold them.
KEY_PARTS: tuple[str, ...] = tuple(kind.key for kind in Kind)
# Store name -> public name (the API's ``kind``, metrics' ``kind`` label).
LABELS: dict[str, str] = {kind.key: kind.label for kind in Kind}
# Public name -> store name (a client's lastMids, the API's kind).
KEY_OF_LABEL: dict[str, str] = {kind.label: kind.key for kind in Kind}
# Delivery bit -> store name.
KEY_OF_FLAG: dict[int, str] = {kind.flag: kind.key for kind in Kind}
