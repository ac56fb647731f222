"""The seed's Socket.IO events: ``login``, ``chat``, ``hb``, ``geo`` and disconnect.

Every handler checks its payload first. A bad one gets ``{"error": reason}`` as its ack,
or, if the client asked for no ack, an ``error`` event ``{"event", "error"}``; the socket
stays connected either way. The socket's identity is the user it logged in as: ids in
``chat`` and ``geo`` payloads may repeat it but never change it.
"""
from __future__ import annotations

import contextvars
import functools
import logging
import time
from typing import Any, Callable

import redis
import socketio
from flask import request
from flask_socketio import SocketIO

from . import payloads
from .config import Config
from .delivery import CHAT, NOTIF, Delivery
from .identity import identify
from .routing import Router
from .store import Store

log = logging.getLogger(__name__)

EVENTS = ("login", "chat", "hb", "geo")

_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack", default=False)


class GatewayServer(socketio.Server):
    """python-socketio's server with two changes for untrusted clients.

    It records whether the client asked for an ack, so that a handler can answer an error
    as the ack when there is one and as an ``error`` event when there is not. And a packet
    that cannot be decoded costs one log line instead of a traceback, so garbage from a
    client cannot flood the log; the socket stays connected.
    """

    @classmethod
    def adopt(cls, server: socketio.Server) -> None:
        """Turn the server Flask-SocketIO built into this class. Flask-SocketIO offers no way
        to pass a server class; the Engine.IO message handler was bound at construction,
        so it is bound again."""
        server.__class__ = cls
        server.eio.on("message", server._handle_eio_message)

    def _handle_eio_message(self, eio_sid, data):
        try:
            return super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
            log.warning("dropped a malformed packet from eio_sid=%s: %s: %.100r",
                        eio_sid, type(exc).__name__, data)

    def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):  # noqa: A002
        token = _ack_requested.set(id is not None)
        try:
            return super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            _ack_requested.reset(token)


class Events:
    def __init__(self, config: Config, store: Store, delivery: Delivery, router: Router,
                 server: socketio.Server) -> None:
        self.config = config
        self.store = store
        self.delivery = delivery
        self.router = router
        self.server = server

    def register(self, sio: SocketIO) -> None:
        for name in EVENTS:
            sio.on_event(name, self._guard(name, getattr(self, "on_" + name)))
        sio.on_event("connect", self.on_connect)
        sio.on_event("disconnect", self.on_disconnect)
        sio.on_event("*", self.on_unknown)

    def _guard(self, event: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def guarded(*args: Any) -> Any:
            sid = request.sid
            try:
                return handler(sid, *args)
            except payloads.PayloadError as exc:
                return self._reject(sid, event, str(exc))
            except redis.RedisError as exc:
                log.error("%s from sid=%s failed, Redis unavailable: %s", event, sid, exc)
                return self._reject(sid, event, "temporarily unavailable, try again")
            except Exception:
                log.exception("%s from sid=%s failed", event, sid)
                return self._reject(sid, event, "internal error")

        return guarded

    def _reject(self, sid: str, event: str, reason: str) -> dict | None:
        log.info("rejected %s from sid=%s: %s", event, sid, reason)
        if _ack_requested.get():
            return {"error": reason}
        self.server.emit("error", {"event": event, "error": reason}, to=sid)
        return None

    def _user(self, sid: str) -> str:
        user = self.delivery.user_of(sid)
        if user is None:
            raise payloads.PayloadError("not logged in: send login first")
        return user

    def on_connect(self, auth: Any = None) -> None:
        log.info("connect sid=%s address=%s", request.sid, request.remote_addr)

    def on_disconnect(self, reason: Any = None) -> None:
        self.delivery.disconnect(request.sid)

    def on_unknown(self, event: Any, *args: Any) -> dict | None:
        return self._reject(request.sid, str(event)[:64],
                            "unknown event; the gateway takes " + ", ".join(EVENTS))

    def on_login(self, sid: str, *args: Any) -> int:
        userinfo, raw = payloads.event_object(args, self.config.max_event_bytes)
        who = identify(userinfo, self.config)
        self.delivery.login(sid, who, raw, request.remote_addr or "")
        return 1

    def on_chat(self, sid: str, *args: Any) -> int:
        user = self._user(sid)
        message, raw = payloads.event_object(args, self.config.max_event_bytes)
        payloads.same_user(message, "from", user)
        payloads.user_id(message.get("to"), "to", self.config.max_user_id_length)
        if "from" not in message:
            message["from"] = user
            raw = payloads.dumps(message)
        if self.config.chat_filter == "direct":
            self.router.chat(message, raw)
        else:
            self.store.publish(self.config.channel_chat_filter, raw)
        return 1

    def on_hb(self, sid: str, *args: Any) -> int:
        return 1

    def on_geo(self, sid: str, *args: Any) -> int:
        user = self._user(sid)
        geo, _ = payloads.event_object(args, self.config.max_event_bytes)
        payloads.same_user(geo, "myAuraId", user)
        geo.setdefault("myAuraId", user)
        self.store.publish(self.config.channel_geo,
                           payloads.dumps({"geo": geo, "time": int(time.time() * 1000)}))
        conn = self.delivery.by_sid.get(sid)
        if conn is not None:
            self.delivery.flush(conn, CHAT | NOTIF)
        return 1
