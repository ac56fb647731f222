"""gevent-websocket's parts that pushapp relies on: its handler, websocket and gunicorn
worker, subclassed by pushapp.wire.worker. Imported by gunicorn's master (the worker class),
so it imports gevent-websocket only."""
from __future__ import annotations

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket

from . import Reliance

__all__ = ["GeventWebSocketWorker", "RELIED_ON", "WebSocket", "WebSocketHandler"]

RELIED_ON: tuple[Reliance, ...] = (
    # gevent-websocket: the HTTP and websocket handler and the worker (pushapp.wire.worker).
    Reliance(WebSocketHandler, "handle_one_request", (), "timed and counted per address."),
    Reliance(WebSocketHandler, "get_environ", (), "the client's address added."),
    Reliance(WebSocketHandler, "start_response", ("status", "headers", "exc_info"),
             "security headers added."),
    Reliance(WebSocketHandler, "read_requestline", (), "a stopping worker's idle close."),
    Reliance(WebSocketHandler, "run_application", (), "requests counted, bodies bounded."),
    Reliance(WebSocketHandler, "upgrade_connection", (),
             "the websocket made a QuietWebSocket with a bounded raw_read."),
    Reliance(WebSocket, "raw_read", None, "wrapped to bound a frame's size."),
    Reliance(WebSocket, "raw_write", None, "a refusal's close frame is written raw."),
    Reliance(GeventWebSocketWorker, "init_process", (), "the worker's handler set up."),
    Reliance(GeventWebSocketWorker, "load_wsgi", (), "the handler given the limits."),
    Reliance(GeventWebSocketWorker, "run", (), "a graceful stop drains the gateway."),
    Reliance(GeventWebSocketWorker, "wsgi_handler", None, "pushapp's handler class."),
)
