"""The sockets of one worker: each one's state (``Conn``) and the registry of them by sid
and by user.

A leaf: it imports nothing of pushapp, so that delivery, the ack timers and the events all
take ``Conn`` from here without importing each other. The registry's dicts are read
directly where a lookup is per message (delivery, events); they change only through
``open``, ``bind`` and ``close``. What a ``Conn`` holds is written by its owners only: its
claims when it opens (here), its login, cursors, send flags and unacked counts by
delivery, its ack deadlines by the ack timers (pushapp.sockets.ack_timers); the events
read it.
"""
from __future__ import annotations

import math
from typing import Any


class Conn:
    """A connected socket; ``user`` is set by its login. Kept small: there is one per
    connection."""

    __slots__ = ("sid", "user", "device", "claims", "expires", "chat_cursor", "notif_cursor",
                 "busy", "dirty", "unacked_chats", "unacked_notifs", "resend_at", "push_at",
                 "closed")

    def __init__(self, sid: str, claims: Any = None) -> None:
        self.sid = sid
        self.user: str | None = None
        self.device = ""
        self.claims: Any = claims
        self.expires: float | None = None
        self.chat_cursor: str | None = None
        self.notif_cursor: str | None = None
        self.busy = 0
        self.dirty = 0
        self.unacked_chats = 0
        self.unacked_notifs = 0
        self.resend_at = math.inf
        self.push_at = math.inf
        self.closed = False


class Connections:
    """This worker's sockets, by Socket.IO sid and, once logged in, by user (a user's newest
    socket here; an older one is replaced at login)."""

    def __init__(self) -> None:
        self.by_sid: dict[str, Conn] = {}
        self.by_user: dict[str, Conn] = {}

    def open(self, sid: str, claims: Any = None) -> Conn:
        """A socket connected (with the claims of a token given as it connected): its
        state, not logged in yet."""
        conn = self.by_sid[sid] = Conn(sid, claims)
        return conn

    def bind(self, conn: Conn) -> None:
        """``conn`` logged in as ``conn.user``: it is that user's socket here now."""
        self.by_user[conn.user] = conn

    def close(self, conn: Conn) -> None:
        """``conn`` went: out of the registry, and marked closed for whoever still holds it."""
        conn.closed = True
        self.by_sid.pop(conn.sid, None)
        if self.by_user.get(conn.user) is conn:
            del self.by_user[conn.user]
