"""A stopping worker's goodbye, so that a deploy keeps its users.

Standard Socket.IO clients take a Socket.IO DISCONNECT packet (and an Engine.IO CLOSE
packet) as "the server does not want me": socket.io-client then stops for good and
python-socketio does not reconnect. A transport that closes, as when a network drops, is
taken as a lost connection: they reconnect with backoff. So a worker that stops (SIGTERM,
gunicorn's graceful reload, ``max_requests``) drains in this order:

1. it reports not ready (``/health/ready`` answers 503) and its HTTP server turns new
   Engine.IO sessions away (pushapp.wire.worker);
2. it hands the ingest lease over, after handling what it heard on the business channels;
3. it closes its clients' transports, a share every tick over ``DRAIN_WINDOW`` so that
   thousands do not come back in the same moment. What a websocket client sent before it
   saw the goodbye, its acks among them, is still handled;
4. it writes the acks and unbinds that are waiting to Redis, and returns.

Nothing is lost meanwhile: stored messages stay in Redis until acked, and a message sent
but not acked before the goodbye is sent again when its user logs in elsewhere.
"""
from __future__ import annotations

import logging
import math
import time

import gevent
import socketio

from .ingest.listener import Listener
from .sockets.delivery import Delivery

log = logging.getLogger(__name__)

# Seconds between two shares of sockets closed.
_TICK = 0.05
# Seconds the lease hand-over may take before the sockets are closed anyway.
_HAND_OVER = 2.0
# Seconds, after the last goodbye, for the clients' closing handshakes to end.
_SETTLE = 5.0


class Drain:
    """Runs the drain once, in its own greenlet; ``started`` is what readiness reports."""

    def __init__(self, window: float, server: socketio.Server, delivery: Delivery,
                 listener: Listener) -> None:
        self.window = window
        self.server = server
        self.delivery = delivery
        self.listener = listener
        self._greenlet: gevent.Greenlet | None = None

    @property
    def started(self) -> bool:
        return self._greenlet is not None

    def start(self, why: str) -> None:
        """Begin draining (again is a no-op): the worker is stopping, ``why`` says how."""
        if self._greenlet is None:
            log.info("worker stopping (%s): draining %d connections over %gs", why,
                     len(self.server.eio.sockets), self.window)
            self._greenlet = gevent.spawn(self._run)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the drain to end; whether it did."""
        if self._greenlet is None:
            return True
        self._greenlet.join(timeout)
        return self._greenlet.ready()

    def _run(self) -> None:
        started = time.monotonic()
        self.listener.hand_over(_HAND_OVER)
        closed = self._close_transports(started, started + self.window)
        settle_by = time.monotonic() + _SETTLE
        while self.delivery.by_sid and time.monotonic() < settle_by:
            gevent.sleep(_TICK)
        self.delivery.settle()
        log.info("drained in %.1fs: %d connections closed, %d still open", time.monotonic()
                 - started, closed, len(self.delivery.by_sid))

    def _close_transports(self, started: float, deadline: float) -> int:
        """Say goodbye to every socket, evenly over the window: by each tick, the share
        of the sockets there were at the start that the elapsed share of the window says.
        Sockets that connect meanwhile (before the HTTP server turned new ones away) go
        at the end of the window."""
        sockets = self.server.eio.sockets
        total = len(sockets)
        closed = 0
        while sockets:
            now = time.monotonic()
            if now >= deadline:
                due = len(sockets)
            else:
                due = math.ceil(total * (now - started) / (deadline - started)) - closed
            for sid in list(sockets)[:max(0, due)]:
                sock = sockets.get(sid)
                if sock is None:
                    continue
                try:
                    sock.goodbye()
                except Exception:  # a bug: the other sockets still get theirs
                    log.exception("%s: goodbye failed", sid)
                    sockets.pop(sid, None)
                closed += 1
            gevent.sleep(_TICK)
        return closed
