"""The gunicorn worker: gevent-websocket's, with a bound on websocket frame size and a
prompt goodbye to its clients when it stops.

gevent-websocket reads a whole frame into memory before python-engineio can check its
size, so one client announcing a 4 GB frame would make the worker try to buffer it. This
handler refuses to read any frame larger than ``MAX_FRAME_BYTES``: the connection is
closed instead.

Once a websocket is set up, pushapp.transport takes the connection over and the handler
ends: the bound applies to the frames read while a long-polling client upgrades, and
pushapp.frames bounds the rest.

On SIGTERM gunicorn waits ``graceful_timeout`` for open requests, and a websocket never
ends by itself: the worker disconnects its clients at once, so that they reconnect to a
worker that stays (a new one, on a restart) instead of waiting to be cut off.
"""
from __future__ import annotations

from typing import Any, Callable

import gevent
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket

from .config import Config


def _bounded(read: Callable[[int], bytes], limit: int) -> Callable[[int], bytes]:
    def read_frame_payload(count: int) -> bytes:
        if count > limit:
            raise OSError(f"websocket frame of {count} bytes exceeds {limit}")
        return read(count)

    return read_frame_payload


class _NoApp:
    def on_close(self, *args: Any) -> None:
        pass


class QuietWebSocket(WebSocket):
    """gevent-websocket's ``WebSocket``, without a class made per closed socket: its
    ``current_app`` defines a new class on every call to report a close to nobody, and a
    mass disconnect made that call once per socket."""

    __slots__ = ()
    current_app = _NoApp()


class BoundedWebSocketHandler(WebSocketHandler):
    max_frame_bytes = Config.from_env().max_frame_bytes

    def upgrade_connection(self) -> Any:
        result = super().upgrade_connection()
        websocket = getattr(self, "websocket", None)
        if websocket is not None:
            websocket.__class__ = QuietWebSocket
            websocket.raw_read = _bounded(websocket.raw_read, self.max_frame_bytes)
        return result


class GatewayWorker(GeventWebSocketWorker):
    wsgi_handler = BoundedWebSocketHandler

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        gateway = getattr(self.wsgi, "extensions", {}).get("pushapp")
        if gateway is not None:
            gevent.spawn(gateway.delivery.disconnect_all)
