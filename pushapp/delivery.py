"""What one worker does for the sockets it holds: log them in, and deliver from the store.

Delivery always reads from Redis: a signal ("user U has new chats") makes the worker read
the user's stream after the last id it sent to that socket and emit what it finds. So a
message is never in flight only in a process's memory, and several signals for one user
collapse into one read. Each socket's flushes are serialised by two bit flags instead of
a lock, since it is the cheapest thing to hold at 100k connections.
"""
from __future__ import annotations

import heapq
import logging
import time
from functools import partial
from typing import Any

import gevent
import redis
import socketio

from . import payloads
from .config import Config
from .identity import Identity
from .store import Entry, Presence, Store

log = logging.getLogger(__name__)

CHAT, NOTIF = 1, 2
_KIND_NAMES = {CHAT: "chat", NOTIF: "notif"}


class Conn:
    """A connected socket; ``user`` is set by its login. Kept small: there is one per
    connection."""

    __slots__ = ("sid", "user", "device", "claims", "expires", "chat_cursor", "notif_cursor", "busy",
                 "dirty", "unacked", "push_timer", "closed", "tokens", "stamp", "strikes")

    def __init__(self, sid: str, burst: int) -> None:
        self.sid = sid
        self.user: str | None = None
        self.device = ""
        self.claims: Any = None
        self.expires: float | None = None
        self.chat_cursor: str | None = None
        self.notif_cursor: str | None = None
        self.busy = 0
        self.dirty = 0
        self.unacked = 0
        self.push_timer: Any = None
        self.closed = False
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.strikes = 0


class Delivery:
    """The sockets of this worker, by sid and by user, and how messages reach them."""

    def __init__(self, config: Config, store: Store, server: socketio.Server, node: str) -> None:
        self.config = config
        self.store = store
        self.server = server
        self.node = node
        self.by_sid: dict[str, Conn] = {}
        self.by_user: dict[str, Conn] = {}
        self._expiries: list[tuple[float, str]] = []

    def connect(self, sid: str) -> Conn:
        conn = self.by_sid[sid] = Conn(sid, self.config.rate_burst)
        return conn

    def login(self, sid: str, who: Identity, userinfo: bytes, address: str) -> None:
        """Bind ``who`` to this socket, replace any older socket of theirs, then deliver."""
        conn = self.by_sid[sid]
        if conn.user is not None and conn.user != who.user:
            raise payloads.PayloadError(
                "this socket is logged in as another user; reconnect to switch users")
        # A login asks for everything pending, also what this socket was sent unacked.
        conn.user, conn.device, conn.chat_cursor, conn.notif_cursor = (
            who.user, who.device, None, None)
        self.set_expiry(conn, who.expires)
        old = self.store.bind(who.user, Presence(self.node, sid, who.device, _now_ms()))
        self.by_user[who.user] = conn
        log.info("login user=%s device=%s sid=%s address=%s", who.user, who.device, sid, address)
        if old is not None and old.sid != sid:
            logout = bool(old.device and who.device and old.device != who.device)
            self.kick_everywhere(old, who.user, logout)
        self.store.publish(self.config.channel_login, userinfo)
        self.flush(conn, CHAT | NOTIF)

    def kick_everywhere(self, old: Presence, user: str, logout: bool) -> None:
        if old.node == self.node:
            self.kick(user, old.sid, logout)
        else:
            self.store.publish(self.config.key("node", old.node),
                               payloads.dumps({"k": "kick", "u": user, "s": old.sid, "l": logout}))

    def kick(self, user: str, sid: str, logout: bool) -> None:
        """Close a socket that a newer login of its user replaced (``logout``: another device)."""
        conn = self.by_sid.get(sid)
        if conn is None or conn.user != user:
            return
        log.info("kick user=%s device=%s sid=%s logout=%s", user, conn.device, sid, logout)
        self._forget(conn)
        if logout:
            self.server.emit("logout", to=sid)
        self.server.disconnect(sid)

    def set_expiry(self, conn: Conn, expires: float | None) -> None:
        """Close the socket when its login token expires, unless a refresh moves this."""
        conn.expires = expires
        if expires is not None:
            heapq.heappush(self._expiries, (expires, conn.sid))

    def watch_expiries(self) -> None:
        """Once a second, close the sockets whose login token has expired."""
        while True:
            gevent.sleep(1.0)
            self.close_expired()

    def close_expired(self) -> None:
        """Disconnect every socket whose token has expired; the client may log in again
        with a new token. Entries made stale by a refresh are skipped."""
        now = time.time()
        while self._expiries and self._expiries[0][0] <= now:
            expires, sid = heapq.heappop(self._expiries)
            conn = self.by_sid.get(sid)
            if conn is not None and conn.expires == expires:
                log.info("token expired user=%s sid=%s", conn.user, sid)
                self.server.emit("error", {"event": "refresh", "error": "token expired"}, to=sid)
                self.server.disconnect(sid)

    def disconnect(self, sid: str) -> None:
        conn = self.by_sid.get(sid)
        if conn is None:
            return
        self._forget(conn)
        if conn.user is None:
            return
        log.info("disconnect user=%s device=%s sid=%s", conn.user, conn.device, sid)
        try:
            self.store.unbind(conn.user, sid)
        except redis.RedisError as exc:
            log.warning("could not unbind user=%s sid=%s: %s", conn.user, sid, exc)

    def _forget(self, conn: Conn) -> None:
        conn.closed = True
        self.by_sid.pop(conn.sid, None)
        if self.by_user.get(conn.user) is conn:
            del self.by_user[conn.user]

    def deliver(self, kinds: int, users: list[str]) -> None:
        """New stored messages of ``kinds`` wait for these users: send them to their sockets.
        A chat for a user presence placed here but who has gone (just disconnected, or
        whose unbind failed while Redis was away) asks for a mobile push instead."""
        for user in users:
            conn = self.by_user.get(user)
            if conn is not None:
                self.flush(conn, kinds)
            elif kinds & CHAT:
                self.push(user)

    def deliver_unstored(self, users: list[str], raw: str) -> None:
        """A notification that is not stored: at most once, to whoever is here now."""
        for user in users:
            conn = self.by_user.get(user)
            if conn is not None:
                self.server.emit("notification", raw, to=conn.sid)

    def flush(self, conn: Conn, kinds: int) -> None:
        """Send what is stored after the socket's cursors. If a flush of that kind is
        already running for this socket, mark it dirty; the running one loops once more."""
        for kind in (CHAT, NOTIF):
            if not kinds & kind:
                continue
            if conn.busy & kind:
                conn.dirty |= kind
                continue
            conn.busy |= kind
            try:
                self._drain(conn, kind)
            except redis.RedisError as exc:
                log.warning("delivery to user=%s postponed, Redis failed: %s", conn.user, exc)
            finally:
                conn.busy &= ~kind

    def _drain(self, conn: Conn, kind: int) -> None:
        count = self.config.chat_batch_max
        while not conn.closed:
            conn.dirty &= ~kind
            cursor = conn.chat_cursor if kind == CHAT else conn.notif_cursor
            entries = self.store.read(_KIND_NAMES[kind], conn.user, cursor, count)
            if entries:
                if kind == CHAT:
                    self._send_chats(conn, entries)
                    conn.chat_cursor = entries[-1].id
                else:
                    self._send_notifications(conn, entries)
                    conn.notif_cursor = entries[-1].id
            if len(entries) < count and not conn.dirty & kind:
                return

    def _send_chats(self, conn: Conn, entries: list[Entry]) -> None:
        batch = b"[" + b",".join(entry.raw for entry in entries) + b"]"
        ids = [entry.id for entry in entries]
        self.server.emit("chat", batch.decode(), to=conn.sid,
                         callback=partial(self._chats_acked, conn, ids))
        conn.unacked += 1
        if conn.push_timer is None:
            conn.push_timer = gevent.spawn_later(self.config.push_delay, self._push_due, conn)

    def _chats_acked(self, conn: Conn, ids: list[str], *args: Any) -> None:
        """The seed's ack: the number of messages the client took from this batch."""
        count = args[0] if args else None
        if isinstance(count, str) and count.isdigit():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            log.warning("chat ack from user=%s is not a count: %r", conn.user, args[:1])
            return
        try:
            self.store.remove("chat", conn.user, ids[:count])
        except redis.RedisError as exc:
            log.warning("chat ack of user=%s not applied, Redis failed: %s", conn.user, exc)
        conn.unacked -= 1
        if conn.unacked <= 0 and conn.push_timer is not None:
            conn.push_timer.kill(block=False)
            conn.push_timer = None

    def _push_due(self, conn: Conn) -> None:
        """No ack within the push delay: ask the business servers for a mobile push."""
        conn.push_timer = None
        self.push(conn.user)

    def push(self, user: str) -> None:
        log.info("mobile push requested user=%s", user)
        try:
            self.store.publish(self.config.channel_chat_push, payloads.dumps({"toWho": user}))
        except redis.RedisError as exc:
            log.warning("mobile push for user=%s not published, Redis failed: %s", user, exc)

    def _send_notifications(self, conn: Conn, entries: list[Entry]) -> None:
        for entry in entries:
            self.server.emit("notification", entry.raw.decode(), to=conn.sid,
                             callback=partial(self._notification_acked, conn.user, entry.id))

    def _notification_acked(self, user: str, msg_id: str, *args: Any) -> None:
        try:
            self.store.remove("notif", user, [msg_id])
        except redis.RedisError as exc:
            log.warning("notification ack of user=%s not applied: %s", user, exc)


def _now_ms() -> int:
    return int(time.time() * 1000)
