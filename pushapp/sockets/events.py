"""The seed's Socket.IO events: ``login``, ``chat``, ``hb``, ``geo`` and disconnect.

Every handler checks its payload first. A bad one gets ``{"error": reason}`` as its ack,
or, if the client asked for no ack, an ``error`` event ``{"event", "error"}``; the socket
stays connected either way. The socket's identity is the user it logged in as: ids in
``chat`` and ``geo`` payloads may repeat it but never change it.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import time
from typing import Any, Callable

import gevent
import redis
import socketio

from .. import payloads
from ..config import Config
from ..kinds import CHAT, NOTIF
from ..ops import logs, metrics
from ..store.store import Placement, Store
from ..wire.addresses import client_address
from ..wire.transport import LeanSocket
from .connections import Conn
from .delivery import Delivery
from .identity import AuthError, Authenticator
from .server import GatewayServer, Later, ack_requested, event_name

log = logging.getLogger(__name__)

EVENTS = ("login", "chat", "hb", "geo", "refresh")
# Seconds between two warnings that client chats reach no filter server.
UNHEARD_WARNING_INTERVAL = 60.0


class Unheard:
    """Client chats published on ``CHANNEL_CHAT_FILTER`` that no subscriber received: with
    no filter server running they go nowhere, and the clients, acked, never know. Each is
    counted (``pushapp_errors_total{reason="chat_filter_unheard"}``); a warning says how
    many, at most once per ``UNHEARD_WARNING_INTERVAL``, so a chat flood is one line."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.count = 0
        self.warned = -math.inf

    def add(self) -> None:
        metrics.ERRORS.labels("chat_filter_unheard").inc()
        self.count += 1
        now = time.monotonic()
        if now - self.warned >= UNHEARD_WARNING_INTERVAL:
            log.warning("%d chat(s) from clients reached no subscriber of %s and are lost "
                        "(counted since the last such line, one a minute at most): is the "
                        "filter server running? Without one, set CHAT_FILTER=direct",
                        self.count, self.channel)
            self.count, self.warned = 0, now


class Events:
    """The Socket.IO events of clients: login, chat, acks and the rest.

    ``route_chat`` is the ingest's Router.chat (store, then hand to the recipient's node),
    given by the app rather than imported: a ``CHAT_FILTER=direct`` chat enters the same
    path as a business server's, and the sockets layer stays below the ingest."""

    def __init__(self, config: Config, store: Store, delivery: Delivery,
                 route_chat: Callable[[dict, bytes], dict[str, Placement]],
                 server: GatewayServer) -> None:
        self.config = config
        self.store = store
        self.delivery = delivery
        self.route_chat = route_chat
        self.server = server
        self.errors = server.limits.errors
        self.auth = Authenticator(config)
        self.per_address: dict[str, int] = {}
        self.unheard = Unheard(config.channel_chat_filter)
        # The Engine.IO MESSAGE of an ACK, or of an EVENT of the default namespace whose
        # name is one of these: see at_once.
        names = "hb" if config.chat_filter == "direct" else "chat|hb"
        self._at_once = re.compile(rf'4(?:3|2[0-9]*\["(?:{names})")')

    def register(self) -> None:
        """Handlers go on python-socketio's server itself: Flask-SocketIO's own would build
        a Flask request context (URL matching included) around every event, a fifth of
        the CPU an event costs, for nothing these handlers use."""
        for name in EVENTS:
            self.server.on(name, self._guard(name, getattr(self, "on_" + name)))
        self.server.on("connect", self.on_connect)
        self.server.on("disconnect", self.on_disconnect)
        unknown = self._guard("*", self.on_unknown)
        self.server.on("*", lambda event, sid, *args: unknown(sid, event, *args))

    def _guard(self, event: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Run, and turn every failure into an answer to the client. (The rate was
        checked before, for the whole connection: GatewayServer.)"""
        @functools.wraps(handler)
        def guarded(sid: str, *args: Any) -> Any:
            name = event_name(args) if event == "*" else event
            if sid not in self.delivery.by_sid:
                return self._reject(sid, name, "not connected")
            try:
                return handler(sid, *args)
            except Exception as exc:
                return self._failed(sid, name, exc, ack_requested.get())

        return guarded

    def _failed(self, sid: str, event: str, exc: Exception, asked: bool) -> dict | None:
        """The answer to an event that failed with ``exc``, counted and logged as its kind
        of failure deserves."""
        if isinstance(exc, AuthError):
            self._client_error("auth_refused", sid, "%s refused: %s", event, exc)
            return self._reject(sid, event, str(exc), asked, close=True)
        if isinstance(exc, payloads.PayloadError):
            self._client_error("client_event_invalid", sid, "rejected %s: %s", event, exc,
                               level=logging.INFO)
            return self._reject(sid, event, str(exc), asked)
        if isinstance(exc, redis.RedisError):
            log.error("%s from sid=%s failed, Redis unavailable: %s", event, sid, exc)
            metrics.ERRORS.labels("redis").inc()
            return self._reject(sid, event, "temporarily unavailable, try again", asked)
        log.error("%s from sid=%s failed", event, sid, exc_info=exc)
        metrics.ERRORS.labels("internal").inc()
        return self._reject(sid, event, "internal error", asked)

    def _reject(self, sid: str, event: str, reason: str, asked: bool | None = None,
                close: bool = False) -> dict | None:
        """Answer ``reason`` as the ack, or as an ``error`` event when no ack was asked for
        (``asked``; None: the event being handled says); with ``close``, disconnect once the
        answer has been queued."""
        if close:
            gevent.spawn(self.server.disconnect, sid)
        if ack_requested.get() if asked is None else asked:
            return {"error": reason}
        self.server.emit("error", {"event": event, "error": reason}, to=sid)
        return None

    def _client_error(self, reason: str, sid: str, message: str, *args: Any,
                      level: int = logging.WARNING) -> None:
        """Count and (within the budgets of pushapp.wire.limits.ClientErrors) log a client's
        mistake, with its sid and address."""
        self.errors.report(reason, self._socket(sid), "sid=%s address=%s: " + message, sid,
                           self.delivery.address(sid), *args, level=level)

    def _socket(self, sid: str) -> LeanSocket | None:
        """The Engine.IO socket (the connection) of the namespace connection ``sid``."""
        return self.server.eio.sockets.get(self.server.manager.eio_sid_from_sid(sid, "/"))

    def at_once(self, text: str) -> bool:
        """Whether a websocket message ``text`` (an Engine.IO packet) is one whose handling
        never waits, so that the event loop may run it itself: an ack of something the
        gateway sent (delivery's callbacks only note it), an ``hb``, and a ``chat`` when it
        is published for the filter server (acked later, pushapp.sockets.server.Later),
        not stored here (``CHAT_FILTER=direct``). Anything else, or anything malformed,
        gets a greenlet, and so does whatever follows it on the same connection."""
        return self._at_once.match(text) is not None

    def logged_in(self, eio_sid: str) -> bool:
        """Whether the Engine.IO socket ``eio_sid`` is logged in (pushapp.wire.transport closes
        it if it is not, ``LOGIN_TIMEOUT`` after it opened or left its namespace)."""
        conn = self.delivery.by_sid.get(self.server.manager.sid_from_eio_sid(eio_sid, "/"))
        return conn is not None and conn.user is not None

    def _conn(self, sid: str) -> Conn:
        conn = self.delivery.by_sid[sid]
        if conn.user is None:
            raise payloads.PayloadError("not logged in: send login first")
        return conn

    def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        """Count the address, check a token given in the connect auth, keep its claims."""
        address = client_address(environ, self.config.forwarded_allow_ips)
        limit = self.config.max_connections_per_ip
        if limit and self.per_address.get(address, 0) >= limit:
            self.errors.report("connections_per_ip", None, "refused connection from %s: %d "
                               "connections already", address, limit)
            raise socketio.exceptions.ConnectionRefusedError(
                "too many connections from this address")
        claims = None
        if isinstance(auth, dict) and auth.get("token") and not self.auth.insecure:
            try:
                claims = self.auth.verify(auth["token"])
            except AuthError as exc:
                self.errors.report("auth_refused", None, "connect refused sid=%s address=%s: %s",
                                   sid, address, exc)
                raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.delivery.connect(sid, claims)
        logs.event(log, "connect", sid=sid, address=address)
        metrics.CONNECTIONS.inc()

    def on_disconnect(self, sid: str, reason: Any = None) -> None:
        """Uncount the address and forget the socket; a logged-in user leaves its rate
        bucket behind for its next login. If only the namespace was left (the client's
        ``41``, a kick) and the connection stays open, it must log in again within
        ``LOGIN_TIMEOUT``."""
        sock = self._socket(sid)
        conn = self.delivery.by_sid.get(sid)
        if sock is not None:
            if conn is not None and conn.user is not None:
                self.server.limits.limiter.leave(conn.user, sock)
            if not (sock.closing or sock.closed):
                self.server.eio.login_watch.add(sock.sid)
        address = self.delivery.address(sid)
        left = self.per_address.get(address, 0) - 1
        if left > 0:
            self.per_address[address] = left
        else:
            self.per_address.pop(address, None)
        metrics.CONNECTIONS.dec()
        self.delivery.disconnect(sid)

    def on_unknown(self, sid: str, event: Any, *args: Any) -> None:
        raise payloads.PayloadError("unknown event; the gateway takes " + ", ".join(EVENTS))

    def on_login(self, sid: str, *args: Any) -> int:
        userinfo, _ = payloads.event_object(args, self.config.max_event_bytes)
        who = self.auth.identify(userinfo, self.delivery.by_sid[sid].claims)
        seen = payloads.last_mids(userinfo.pop("lastMids", None))
        userinfo.pop("token", None)
        userinfo.setdefault("myAuraId", who.user)
        self.delivery.login(sid, who, payloads.dumps(userinfo), self.delivery.address(sid),
                            seen)
        sock = self._socket(sid)
        if sock is not None:
            self.server.limits.limiter.join(who.user, sock)
        return 1

    def on_refresh(self, sid: str, *args: Any) -> int:
        """A newer token for the logged-in user moves the socket's expiry."""
        conn = self._conn(sid)
        if self.auth.insecure:
            raise payloads.PayloadError("refresh needs AUTH_MODE=jwt")
        body, _ = payloads.event_object(args, self.config.max_event_bytes)
        claims = self.auth.verify(body.get("token"))
        if claims.user != conn.user:
            raise AuthError("user mismatch")
        self.delivery.set_expiry(conn, claims.expires)
        return 1

    def on_chat(self, sid: str, *args: Any) -> int:
        user = self._conn(sid).user
        message, raw = payloads.event_object(args, self.config.max_event_bytes)
        payloads.same_user(message, "from", user)
        payloads.user_id(message.get("to"), "to", self.config.max_user_id_length)
        if "from" not in message:
            message["from"] = user
            raw = payloads.dumps(message)
        if self.config.chat_filter == "direct":
            self.route_chat(message, raw)
            return 1
        return Later(functools.partial(self._publish_chat, sid, raw, ack_requested.get()))

    def _publish_chat(self, sid: str, raw: bytes, asked: bool,
                      answer: Callable[[Any], None]) -> None:
        """Publish a client's chat for the filter server, and ack it once published: 1, or
        why not. The handler does not wait for it (pushapp.sockets.server.Later)."""
        def published(heard: int | Exception) -> None:
            if isinstance(heard, Exception):
                answer(self._failed(sid, "chat", heard, asked))
                return
            if not heard:
                self.unheard.add()
            answer(1)

        self.store.publish_then(self.config.channel_chat_filter, raw, published)

    def on_hb(self, sid: str, *args: Any) -> int:
        return 1

    def on_geo(self, sid: str, *args: Any) -> int:
        conn = self._conn(sid)
        geo, _ = payloads.event_object(args, self.config.max_event_bytes)
        payloads.same_user(geo, "myAuraId", conn.user)
        geo.setdefault("myAuraId", conn.user)
        self.store.publish(self.config.channel_geo,
                           payloads.dumps({"geo": geo, "time": int(time.time() * 1000)}))
        self.delivery.flush([conn], CHAT | NOTIF)
        return 1
