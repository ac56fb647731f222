"""The gunicorn worker: gevent-websocket's, with bounds on what an HTTP connection may
cost, and a prompt goodbye to its clients when it stops.

- A request head must be complete within ``HEADER_TIMEOUT``; a connection that sends it
  slowly, or never (slowloris), is closed. The limit covers the head only: a long poll
  waiting for packets, or a websocket once set up, is not affected.
- An address may have ``MAX_HANDSHAKES_PER_IP`` request heads arriving at once (a trusted
  proxy, which finishes heads itself, is not counted); its further connections are closed
  at once. The Engine.IO session that follows counts on against the same limit until its
  Socket.IO connect is done (pushapp.wire.transport).
- The worker takes ``_HTTP_HEADROOM`` requests beyond its socket cap, so that with every
  socket taken (a long poll holds a request) ``/monitor``, ``/health/ready`` and the API
  are still served.
- A body larger than the server will take (a long-polling POST over ``MAX_FRAME_BYTES``,
  an API call over ``API_MAX_BODY_BYTES``) is answered 413 and never read: the
  connection is closed.
- Every answer carries ``X-Content-Type-Options: nosniff`` and forbids framing.

gevent-websocket reads a whole frame into memory before python-engineio can check its
size, so one client announcing a 4 GB frame would make the worker try to buffer it. This
handler refuses to read any frame larger than ``MAX_FRAME_BYTES``: the connection is
closed instead.

Once a websocket is set up, pushapp.wire.transport takes the connection over and the handler
ends: the bound applies to the frames read while a long-polling client upgrades, and
pushapp.wire.frames bounds the rest.

A worker stops gracefully on SIGTERM (gunicorn's stop, and its graceful reload on SIGHUP)
and after ``max_requests`` HTTP requests (gunicorn's setting, which gevent's server
otherwise ignores): its HTTP server turns new Engine.IO sessions (and requests of a
session another worker holds) away with 503, and the
gateway drains its clients (pushapp.drain) before the process exits.

Nothing here may import pushapp.ops.metrics: gunicorn's master imports this module before it
names the metrics directory.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable
from urllib.parse import parse_qs

import gevent
from gevent.pywsgi import Input

from ..config import Config
from ..internals import adopt
from ..internals.gevent_websocket import GeventWebSocketWorker, WebSocket, WebSocketHandler
from .addresses import client_address, trusted_proxy

if TYPE_CHECKING:
    from .limits import Limits

# The environ key of the client's address (pushapp.wire.addresses), found once per request.
CLIENT_ADDRESS = "pushapp.client_address"
# Requests served beyond the socket cap, from the files kept besides the clients' sockets
# (Config.reserved_files).
_HTTP_HEADROOM = 32
# Seconds a connection refused with 413 is still read from, so that closing it does not
# reset it before the client has read the answer.
_LINGER = 1.0
# Answer headers: no content sniffing, no framing by other sites (clickjacking).
_SECURITY_HEADERS = [("X-Content-Type-Options", "nosniff"),
                     ("Content-Security-Policy", "frame-ancestors 'none'"),
                     ("X-Frame-Options", "DENY")]
# Seconds of the graceful timeout kept for the worker's own exit (Redis goodbyes).
_EXIT_MARGIN = 1.0


def _bounded(read: Callable[[int], bytes], limit: int) -> Callable[[int], bytes]:
    def read_frame_payload(count: int) -> bytes:
        if count > limit:
            raise OSError(f"websocket frame of {count} bytes exceeds {limit}")
        return read(count)

    return read_frame_payload


def _not_ours(environ: dict, sessions: Container[str]) -> bool:
    """Whether a request opens an Engine.IO session (its first request has no sid), or
    names one this worker does not hold: while gunicorn replaces a worker, the old and the
    new one both accept, and a client whose session the new one opened may reach the old
    one with its next request or its websocket upgrade."""
    if not environ.get("PATH_INFO", "").startswith("/socket.io"):
        return False
    sid = parse_qs(environ.get("QUERY_STRING", "")).get("sid")
    return not sid or sid[0] not in sessions


def _closing(start_response: Callable[..., Any]) -> Callable[..., Any]:
    """``start_response`` that ends the connection after this answer: a client keeping it
    alive would send its next request to a worker that is stopping."""
    def start(status: str, headers: list, exc_info: Any = None) -> Any:
        headers = [(name, value) for name, value in headers if name.lower() != "connection"]
        return start_response(status, [*headers, ("Connection", "close")], exc_info)

    return start


def _too_large(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("413 Payload Too Large", [("Content-Type", "text/plain"),
                                               ("Connection", "close")])
    return [f"the body is larger than {BoundedWebSocketHandler.max_frame_bytes} "
            "bytes".encode()]


def _turned_away(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI answer for a client that reached a stopping worker: come back in a moment,
    to another worker (Socket.IO clients retry with backoff)."""
    start_response("503 Service Unavailable", [
        ("Content-Type", "text/plain"), ("Retry-After", "1"), ("Connection", "close")])
    return [b"this worker is stopping; connect again"]


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
    """Each HTTP connection, websocket handshakes included: its request heads timed and
    counted per address, each request counted for ``max_requests``, turned away if it
    opens a session, or names one this worker does not hold, while the worker stops (and
    its connection closed after the answer then), refused unread if its body is too large, and bounded in frame size if it
    becomes a websocket. ``worker``, ``limits`` and ``sessions`` are set in each worker
    process."""

    _config = Config.from_env()
    max_frame_bytes = _config.max_frame_bytes
    header_timeout = _config.header_timeout
    trusted = _config.forwarded_allow_ips
    worker: "GatewayWorker | None" = None
    limits: "Limits | None" = None
    # The Engine.IO sessions this worker holds, by sid.
    sessions: Container[str] = frozenset()
    _timer: gevent.Timeout | None = None
    _counted: str | None = None

    def handle_one_request(self) -> Any:
        """One request of the connection, whose head must arrive within ``HEADER_TIMEOUT``
        and, unless the peer is a trusted proxy, within its address's handshake limit."""
        if not self._head_begins():
            return None
        timer = self._timer = gevent.Timeout.start_new(self.header_timeout)
        try:
            return super().handle_one_request()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._report("header_timeout", "closed a connection from %s: no complete request "
                         "head within %gs", self._peer(), self.header_timeout)
            return None
        finally:
            self._head_ends()

    def _head_begins(self) -> bool:
        limits = self.limits
        if limits is None:
            return True
        peer = self._peer()
        if trusted_proxy(peer, self.trusted):
            return True
        if not limits.handshakes.enter(peer):
            self._report("handshakes_per_ip", "closed a connection from %s: it has %d "
                         "handshakes in progress already", peer, limits.handshakes.limit)
            return False
        self._counted = peer
        return True

    def _head_ends(self) -> None:
        """The head is complete (or the request over): its timer and count end."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if self._counted is not None:
            self.limits.handshakes.leave(self._counted)
            self._counted = None

    def get_environ(self) -> dict:
        """The head is complete: the rest of the request has no deadline."""
        self._head_ends()
        environ = super().get_environ()
        environ[CLIENT_ADDRESS] = client_address(environ, self.trusted)
        return environ

    def _peer(self) -> str:
        address = self.client_address
        return address[0] if isinstance(address, tuple) else str(address or "")

    def _report(self, reason: str, message: str, *args: Any) -> None:
        self.limits.errors.report(reason, None, message, *args, level=logging.INFO)

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Any:
        """The answer with the security headers the application did not set itself (the
        pages set a stricter policy)."""
        named = {name.lower() for name, _ in headers}
        return super().start_response(status, [*headers, *(
            header for header in _SECURITY_HEADERS if header[0].lower() not in named)],
            exc_info)

    def read_requestline(self) -> Any:
        """Wait for a connection's next request, known to the worker as idle meanwhile."""
        idle = self.worker.idle if self.worker is not None else None
        if idle is None:
            return super().read_requestline()
        idle.add(self)
        try:
            return super().read_requestline()
        finally:
            idle.discard(self)

    def run_application(self) -> Any:
        worker = self.worker
        if worker is not None:
            worker.count_request()
            if not worker.alive:
                self.start_response = _closing(self.start_response)
                if _not_ours(self.environ, self.sessions):
                    self.result = _turned_away(self.environ, self.start_response)
                    self.process_result()
                    return None
        if self._body_over_limit():
            self.result = _too_large(self.environ, self.start_response)
            self.process_result()
        else:
            super().run_application()
        if self.code == 413:
            self._leave_body_unread()
        return None

    def _body_over_limit(self) -> bool:
        """A long-polling POST larger than ``MAX_FRAME_BYTES`` (python-engineio would read
        it whole, then answer 400)."""
        environ = self.environ
        return (environ.get("REQUEST_METHOD") == "POST"
                and environ.get("PATH_INFO", "").startswith("/socket.io")
                and (self.content_length or 0) > self.max_frame_bytes)

    def _leave_body_unread(self) -> None:
        """A 413: close the connection without reading the body (gevent would read all of
        it first, however large, however slowly sent). Half-close, then read for a moment
        without keeping anything, so that the client gets the answer, not a reset."""
        self.close_connection = True
        self.wsgi_input = Input(self.rfile, 0)
        try:
            self.socket.shutdown(socket.SHUT_WR)
            with gevent.Timeout(_LINGER, False):
                while self.socket.recv(65536):
                    pass
        except OSError:
            pass

    def upgrade_connection(self) -> Any:
        result = super().upgrade_connection()
        websocket = getattr(self, "websocket", None)
        if websocket is not None:
            adopt(websocket, QuietWebSocket)
            websocket.raw_read = _bounded(websocket.raw_read, self.max_frame_bytes)
        return result


class GatewayWorker(GeventWebSocketWorker):
    """``idle``: the handlers of kept-alive connections waiting for their next request,
    which a stopping worker closes at once rather than wait for them until its graceful
    timeout (and then cut off whatever request had just come in on them)."""

    wsgi_handler = BoundedWebSocketHandler
    _stopping_since = 0.0

    def init_process(self) -> None:
        self.idle: set[BoundedWebSocketHandler] = set()
        BoundedWebSocketHandler.worker = self
        self.worker_connections += _HTTP_HEADROOM
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        gateway = self._gateway()
        if gateway is not None:
            BoundedWebSocketHandler.limits = gateway.limits
            BoundedWebSocketHandler.sessions = gateway.socketio.server.eio.sockets

    def count_request(self) -> None:
        """gunicorn's ``max_requests``: a worker that served that many requests drains and
        is replaced, as gunicorn's other workers are."""
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.stop(f"max_requests, after {self.nr} requests")

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop("SIGTERM")

    def stop(self, why: str) -> None:
        """Stop gracefully: the gevent worker's loop stops accepting within a second, the
        gateway drains its clients now."""
        if self.alive:
            self.alive = False
            self._stopping_since = time.monotonic()
        for handler in list(self.idle):
            try:
                handler.socket.shutdown(socket.SHUT_RDWR)
            except (AttributeError, OSError):
                pass  # closed meanwhile
        gateway = self._gateway()
        if gateway is not None:
            gateway.drain.start(why)

    def run(self) -> None:
        """gevent's worker loop, which returns once no request is in progress, then the
        rest of the drain, within gunicorn's graceful timeout."""
        super().run()
        gateway = self._gateway()
        if gateway is None:
            return
        if not self._stopping_since:  # alive was cleared elsewhere (gunicorn itself)
            self._stopping_since = time.monotonic()
        gateway.drain.start("worker exiting")
        deadline = self._stopping_since + self.cfg.graceful_timeout - _EXIT_MARGIN
        while not gateway.drain.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                self.log.warning("drain unfinished at the graceful timeout; exiting")
                return
            self.notify()

    def _gateway(self) -> Any:
        return getattr(self.wsgi, "extensions", {}).get("pushapp")
