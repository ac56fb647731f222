"""What one worker does for the sockets it holds: log them in, and deliver from the store.

A message is stored before it is sent, so that it is never in flight only in a process's
memory. What was just stored goes out at once, without being read back from Redis, to a
socket that has been sent everything its stream held before it (the store says which id
that was); any other socket (a login, a resend, one busy sending, one that missed a
message) reads its stream after the last id it was sent and is sent what it finds; several
such reads for one user collapse into one, and many users' reads are one call. Each
socket's sends are serialised by two bit flags instead of a lock, since it is the cheapest
thing to hold at 100k connections.
"""
from __future__ import annotations

import heapq
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import gevent
import redis

from .. import payloads
from ..config import Config
from ..kinds import CHAT, KEY_OF_FLAG, KEY_OF_LABEL, NOTIF
from ..ops import logs, metrics
from ..store.batching import Collector
from ..store.store import Batch, Entry, Presence, Read, Store, stream_id
from ..wire.addresses import client_address
from . import signals
from .ack_timers import AckTimers
from .connections import Conn, Connections
from .identity import Identity
from .signals import Stored

if TYPE_CHECKING:
    # Imported for its type only: the server module brings the transport, whose worker
    # reads the settings as it is imported.
    from .server import GatewayServer

log = logging.getLogger(__name__)

# Seconds acks and unbinds wait to be sent to Redis with others.
_TICK = 0.005
# Sockets whose streams one round trip of a catch-up reads.
_CATCH_UP_CHUNK = 500
# Seconds a catch-up waits before each try of a read: the first at once.
_CATCH_UP_DELAYS = (0.0, 0.1, 0.5, 1.0, 2.0, 4.0)


class Delivery:
    """How messages reach the sockets of this worker. The sockets themselves are the
    registry's (``connections``); ``by_sid`` and ``by_user`` are its dicts, read here
    without a call per message, and changed only through the registry."""

    def __init__(self, config: Config, store: Store, server: GatewayServer, node: str,
                 connections: Connections) -> None:
        self.config = config
        self.store = store
        self.server = server
        self.node = node
        self.connections = connections
        self.by_sid = connections.by_sid
        self.by_user = connections.by_user
        # Sockets whose login is in Redis now, by user: not bound yet, and what is stored
        # for them meanwhile may come after their login's read.
        self._logging_in: dict[str, Conn] = {}
        self._expiries: list[tuple[float, str]] = []
        self._unbinds = Collector(self._unbind, tick=_TICK)
        self._acks = Collector(self._remove_acked, tick=_TICK)
        self._ack_watch = AckTimers(config.ack_timeout, config.push_delay, self._resend, self.push)

    def connect(self, sid: str, claims: Any = None) -> Conn:
        return self.connections.open(sid, claims)

    def login(self, sid: str, who: Identity, userinfo: bytes, address: str,
              seen: dict[str, str] | None = None) -> None:
        """Bind ``who`` to this socket, replace any older socket of theirs, then deliver.
        ``seen`` (kind -> last mid the client has) acks everything up to those ids first, so
        a reconnecting client gets only what it has not seen."""
        conn = self.by_sid[sid]
        if conn.user is not None and conn.user != who.user:
            raise payloads.PayloadError(
                "this socket is logged in as another user; reconnect to switch users")
        # A login asks for everything pending, also what this socket was sent unacked.
        conn.user, conn.device, conn.chat_cursor, conn.notif_cursor = (
            who.user, who.device, None, None)
        self.set_expiry(conn, who.expires)
        claimed = self._claim([conn], CHAT | NOTIF)
        self._logging_in[who.user] = conn
        try:
            old, read = self.store.login(
                who.user, Presence(self.node, sid, who.device, _now_ms()), userinfo,
                {KEY_OF_LABEL[kind]: mid for kind, mid in (seen or {}).items()},
                {KEY_OF_FLAG[kind]: None for _, kind in claimed})
        except BaseException:
            self._release(claimed)
            raise
        finally:
            if self._logging_in.get(who.user) is conn:
                del self._logging_in[who.user]
        if conn.closed:
            # The socket went during the round trip, maybe before its unbind could apply.
            self._release(claimed)
            self._unbinds.add((who.user, sid))
            return
        self.connections.bind(conn)
        logs.event(log, "login", user=who.user, device=who.device, sid=sid, address=address)
        metrics.LOGINS.inc()
        if old is not None and old.sid != sid:
            logout = bool(old.device and who.device and old.device != who.device)
            self.kick_everywhere(old, who.user, logout)
        self._drain_claimed(claimed, [read[KEY_OF_FLAG[kind]] for _, kind in claimed])

    def kick_everywhere(self, old: Presence, user: str, logout: bool) -> None:
        if old.node == self.node:
            self.kick(user, old.sid, logout)
        else:
            self.store.publish(signals.channel(self.config, old.node),
                               payloads.dumps(signals.kick(user, old.sid, logout)))

    def kick(self, user: str, sid: str, logout: bool) -> None:
        """Close a socket that a newer login of its user replaced (``logout``: another device)."""
        conn = self.by_sid.get(sid)
        if conn is None or conn.user != user:
            return
        logs.event(log, "kick", user=user, device=conn.device, sid=sid,
                   address=self.address(sid), logout=logout)
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
        logs.event(log, "disconnect", user=conn.user, device=conn.device, sid=sid,
                   address=self.address(sid))
        self._unbinds.add((conn.user, sid))

    def _unbind(self, sockets: list[tuple[str, str]]) -> None:
        """Unbind the sockets that went in the last tick: one Lua call for all of them."""
        try:
            self.store.unbind(sockets)
        except redis.RedisError as exc:
            log.warning("could not unbind %d users (%s, ...): %s", len(sockets),
                        sockets[0][0], exc)
            metrics.ERRORS.labels("redis").inc()

    def address(self, sid: str) -> str:
        """The socket's client address, from the environ Engine.IO keeps anyway."""
        return client_address(self.server.get_environ(sid) or {},
                              self.config.forwarded_allow_ips)

    def settle(self) -> None:
        """Write the acks and unbinds still waiting for their tick: the worker is stopping."""
        self._acks.drain()
        self._unbinds.drain()

    def _forget(self, conn: Conn) -> None:
        self.connections.close(conn)

    def deliver_stored(self, kind: int, stored: list[Stored]) -> None:
        """Messages of ``kind`` just stored, in the order stored, for users whose sockets
        are here. A socket sent everything up to the id before a user's first one, and not
        busy sending, is sent them as they are; the others read their streams, in one
        round trip for all. A chat for a user presence placed here but who has gone (just
        disconnected, or whose unbind failed while Redis was away) asks for a mobile push
        instead; one whose login is in Redis now reads once more when it is done."""
        ready: dict[Conn, list[Entry]] = {}
        behind: dict[Conn, None] = {}
        for user, msg_id, prev, raw in stored:
            conn = self.by_user.get(user)
            if conn is None:
                pending = self._logging_in.get(user)
                if pending is not None:
                    # Stored after its login's read, maybe: the login reads once more.
                    pending.dirty |= kind
                elif kind == CHAT:
                    self.push(user)
            elif conn in ready:
                ready[conn].append(Entry(msg_id, raw))
            elif conn not in behind:
                cursor = conn.chat_cursor if kind == CHAT else conn.notif_cursor
                if cursor is not None and stream_id(msg_id) <= stream_id(cursor):
                    continue  # sent already, by a read that came before this hand-over
                if conn.busy & kind or not _follows(cursor, prev):
                    behind[conn] = None
                else:
                    ready[conn] = [Entry(msg_id, raw)]
        count = self.config.chat_batch_max
        sent = 0
        for conn, entries in ready.items():
            for start in range(0, len(entries), count):
                self._send(conn, kind, entries[start:start + count])
            sent += len(entries)
        if sent:
            metrics.sent(KEY_OF_FLAG[kind], sent)
        self.flush(list(behind), kind)

    def deliver_unstored(self, users: list[str], raw: str) -> None:
        """A notification that is not stored: at most once, to whoever is here now. One
        emit to all their sids: the packet is encoded once for every recipient."""
        sids = [conn.sid for conn in map(self.by_user.get, users) if conn is not None]
        if sids:
            self.server.emit("notification", raw, to=sids)
            metrics.sent("notif", len(sids))

    def flush(self, conns: list[Conn], kinds: int) -> bool:
        """Send what is stored after the sockets' cursors. If a flush of that kind is
        already running for a socket, mark it dirty; the running one loops once more.
        False if Redis failed the read: nothing was sent."""
        claimed = self._claim(conns, kinds)
        if not claimed:
            return True
        try:
            batches = self.store.read(self._reads(claimed), self.config.chat_batch_max)
        except redis.RedisError as exc:
            self._release(claimed)
            log.warning("delivery to %d sockets (user=%s, ...) postponed, Redis failed: %s",
                        len(claimed), claimed[0][0].user, exc)
            metrics.ERRORS.labels("redis").inc()
            return False
        self._drain_claimed(claimed, batches)
        return True

    @staticmethod
    def _claim(conns: list[Conn], kinds: int) -> list[tuple[Conn, int]]:
        """Mark the (socket, kind) flushes this call runs; those already running are marked
        dirty instead."""
        claimed = []
        for conn in conns:
            for kind in (CHAT, NOTIF):
                if not kinds & kind:
                    continue
                if conn.busy & kind:
                    conn.dirty |= kind
                    continue
                conn.busy |= kind
                conn.dirty &= ~kind
                claimed.append((conn, kind))
        return claimed

    @staticmethod
    def _release(claimed: list[tuple[Conn, int]]) -> None:
        for conn, kind in claimed:
            conn.busy &= ~kind

    @staticmethod
    def _reads(claimed: list[tuple[Conn, int]]) -> list[Read]:
        return [(KEY_OF_FLAG[kind], conn.user,
                 conn.chat_cursor if kind == CHAT else conn.notif_cursor)
                for conn, kind in claimed]

    def _drain_claimed(self, claimed: list[tuple[Conn, int]],
                       batches: list[Batch | redis.ResponseError]) -> None:
        """Send the first batches read for the claimed flushes, then whatever more is
        stored for them, and release them."""
        for (conn, kind), batch in zip(claimed, batches):
            try:
                self._drain(conn, kind, batch)
            except redis.RedisError as exc:
                log.warning("delivery to user=%s postponed, Redis failed: %s", conn.user, exc)
                metrics.ERRORS.labels("redis").inc()
            finally:
                conn.busy &= ~kind

    def _drain(self, conn: Conn, kind: int, batch: Batch | redis.ResponseError | None) -> None:
        count = self.config.chat_batch_max
        while not conn.closed:
            if batch is None:
                conn.dirty &= ~kind
                [batch] = self.store.read(self._reads([(conn, kind)]), count)
            if isinstance(batch, redis.ResponseError):
                raise batch
            entries, resent = batch
            batch = None
            metrics.resent(KEY_OF_FLAG[kind], resent)
            if entries:
                self._send(conn, kind, entries)
                metrics.sent(KEY_OF_FLAG[kind], len(entries))
            if len(entries) < count and not conn.dirty & kind:
                return

    def _send(self, conn: Conn, kind: int, entries: list[Entry]) -> None:
        """Send stored messages that follow on from the socket's cursor, and move it. The
        caller counts them, once for all it sends at a time: a counter's update under
        gunicorn is a lock and a write to a shared file."""
        if kind == CHAT:
            self._send_chats(conn, entries)
            conn.chat_cursor = entries[-1].id
        else:
            self._send_notifications(conn, entries)
            conn.notif_cursor = entries[-1].id

    def _send_chats(self, conn: Conn, entries: list[Entry]) -> None:
        batch = b"[" + b",".join(with_mid(entry.raw, entry.id) for entry in entries) + b"]"
        ids = [entry.id for entry in entries]
        self.server.emit_acked(conn.sid, "chat", batch.decode(),
                               partial(self._chats_acked, conn, ids))
        conn.unacked_chats += 1
        self._ack_watch.sent(conn)

    def _chats_acked(self, conn: Conn, ids: list[str], *args: Any) -> None:
        """The ack of a ``chat`` batch: the seed's count of messages taken from the batch,
        or a list of the ``mid``s taken. Either removes exactly those messages."""
        taken = _acked_ids(ids, args[0] if args else None)
        if taken is None:
            log.warning("chat ack from user=%s is neither a count nor mids: %.100r",
                        conn.user, args[:1])
            metrics.ERRORS.labels("bad_ack").inc()
            return
        if taken:
            self._acks.add(("chat", conn.user, taken))
        conn.unacked_chats = max(0, conn.unacked_chats - 1)
        self._ack_watch.acked(conn)

    def _send_notifications(self, conn: Conn, entries: list[Entry]) -> None:
        for entry in entries:
            self.server.emit_acked(conn.sid, "notification",
                                   with_mid(entry.raw, entry.id).decode(),
                                   partial(self._notification_acked, conn, entry.id))
        conn.unacked_notifs += len(entries)
        self._ack_watch.sent(conn)

    def _notification_acked(self, conn: Conn, msg_id: str, *args: Any) -> None:
        self._acks.add(("notif", conn.user, [msg_id]))
        conn.unacked_notifs = max(0, conn.unacked_notifs - 1)
        self._ack_watch.acked(conn)

    def _remove_acked(self, acks: list[tuple[str, str, list[str]]]) -> None:
        """Remove what the last tick's acks took, one XDEL per stream, in one round trip."""
        taken: dict[tuple[str, str], list[str]] = {}
        for kind, user, ids in acks:
            taken.setdefault((kind, user), []).extend(ids)
        try:
            self.store.remove([(kind, user, ids) for (kind, user), ids in taken.items()])
        except redis.RedisError as exc:
            log.warning("acks of %d users not applied, Redis failed: %s", len(taken), exc)
            metrics.ERRORS.labels("redis").inc()
            return
        by_kind: dict[str, list[str]] = {}
        for (kind, _), ids in taken.items():
            by_kind.setdefault(kind, []).extend(ids)
        for kind, ids in by_kind.items():
            metrics.acked(kind, ids)

    def _resend(self, conns: list[Conn]) -> None:
        """Send again all that is stored for these sockets: the unacked deliveries, with
        the ``mid``s they had, so that clients can drop what they already have."""
        by_kinds: dict[int, list[Conn]] = {}
        for conn in conns:
            kinds = (CHAT if conn.unacked_chats else 0) | (NOTIF if conn.unacked_notifs else 0)
            log.info("redelivering unacked user=%s kinds=%d", conn.user, kinds)
            if kinds & CHAT:
                conn.chat_cursor, conn.unacked_chats = None, 0
            if kinds & NOTIF:
                conn.notif_cursor, conn.unacked_notifs = None, 0
            by_kinds.setdefault(kinds, []).append(conn)
        for kinds, group in by_kinds.items():
            self.flush(group, kinds)

    def catch_up(self) -> None:
        """Send each socket here what is stored after its cursor. Signals to this worker
        are pub/sub, which keeps nothing: those sent while its listener was reconnecting
        (Redis restarted, or its channel's master failed over) are gone, and the messages
        they announced wait in the store. Called once the listener hears again; a chunk
        of sockets per round trip, so the other greenlets get their turns. A read that
        fails (a connection Redis dropped with the listener's) is tried again a few
        times; if Redis fails throughout, the listener loses it too, and catches up
        again once it is back."""
        conns = list(self.by_user.values())
        for start in range(0, len(conns), _CATCH_UP_CHUNK):
            chunk = conns[start:start + _CATCH_UP_CHUNK]
            for delay in _CATCH_UP_DELAYS:
                gevent.sleep(delay)
                if self.flush([conn for conn in chunk if not conn.closed], CHAT | NOTIF):
                    break
            else:
                log.warning("catch-up after the listener came back given up at socket %d "
                            "of %d: Redis keeps failing", start, len(conns))
                return
        log.info("read the stored messages of %d sockets after the listener came back",
                 len(conns))

    def push(self, user: str) -> None:
        log.info("mobile push requested user=%s", user)
        try:
            self.store.publish(self.config.channel_chat_push, payloads.dumps({"toWho": user}))
        except redis.RedisError as exc:
            log.warning("mobile push for user=%s not published, Redis failed: %s", user, exc)
            metrics.ERRORS.labels("redis").inc()


def with_mid(raw: bytes, mid: str) -> bytes:
    """The stored JSON object with its id added as a last member, ``"mid"``. Added last so
    that it wins over a ``mid`` the business server may have sent; the rest of the text is
    passed on as published."""
    body = raw.rstrip()
    empty = not body.lstrip()[1:-1].strip()
    return body[:-1] + (b'"mid":"' if empty else b',"mid":"') + mid.encode() + b'"}'


def _acked_ids(batch: list[str], ack: Any) -> list[str] | None:
    """Which ids of ``batch`` an ack takes: the first N for a count, the named ones for a
    list of mids; None if the ack is neither."""
    if isinstance(ack, str) and ack.isdigit():
        ack = int(ack)
    if isinstance(ack, int) and not isinstance(ack, bool) and ack >= 0:
        return batch[:ack]
    if isinstance(ack, list) and all(isinstance(mid, str) for mid in ack):
        named = set(ack)
        return [mid for mid in batch if mid in named]
    return None


def _follows(cursor: str | None, prev: str | None) -> bool:
    """Whether a socket sent up to ``cursor`` (None: nothing yet) has everything its
    stream held before an entry stored after ``prev``, the id marked as sent before it
    (None: none marked, which for a socket sent something means the marks are gone)."""
    if prev is None or cursor is None:
        return prev is None and cursor is None
    return stream_id(prev) <= stream_id(cursor)


def _now_ms() -> int:
    return int(time.time() * 1000)
