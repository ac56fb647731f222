"""The gunicorn worker: gevent-websocket's, with a bound on websocket frame size and a
prompt goodbye to its clients when it stops.

gevent-websocket reads a whole frame into memory before python-engineio can check its
size, so one client announcing a 4 GB frame would make the worker try to buffer it. This
handler refuses to read any frame larger than ``MAX_FRAME_BYTES``: the connection is
closed instead.

Once a websocket is set up, pushapp.transport takes the connection over and the handler
ends: the bound applies to the frames read while a long-polling client upgrades, and
pushapp.frames bounds the rest.

A worker stops gracefully on SIGTERM (gunicorn's stop, and its graceful reload on SIGHUP)
and after ``max_requests`` HTTP requests (gunicorn's setting, which gevent's server
otherwise ignores): its HTTP server turns new Engine.IO sessions away with 503, and the
gateway drains its clients (pushapp.drain) before the process exits.
"""
from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import parse_qs

from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import WebSocket

from .config import Config

if TYPE_CHECKING:
    from .limits import Limits

# The environ key of the client's address (see BoundedWebSocketHandler.client).
CLIENT_ADDRESS = "pushapp.client_address"
# Seconds of the graceful timeout kept for the worker's own exit (Redis goodbyes).
_EXIT_MARGIN = 1.0


def _bounded(read: Callable[[int], bytes], limit: int) -> Callable[[int], bytes]:
    def read_frame_payload(count: int) -> bytes:
        if count > limit:
            raise OSError(f"websocket frame of {count} bytes exceeds {limit}")
        return read(count)

    return read_frame_payload


def _new_session(environ: dict) -> bool:
    """Whether a request opens an Engine.IO session (its first request has no sid)."""
    return (environ.get("PATH_INFO", "").startswith("/socket.io")
            and "sid" not in parse_qs(environ.get("QUERY_STRING", "")))


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


class Proxies:
    """The proxies whose ``X-Forwarded-For`` names the client (``FORWARDED_ALLOW_IPS``:
    addresses or networks, or ``*`` for any)."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.anyone = "*" in allowed
        self.networks = [ipaddress.ip_network(item, strict=False)
                         for item in allowed if item != "*"]

    def trust(self, peer: str) -> bool:
        if self.anyone:
            return True
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class BoundedWebSocketHandler(WebSocketHandler):
    """Each HTTP request, websocket handshakes included: counted for ``max_requests``,
    turned away if it opens a session while the worker stops, and bounded in frame size
    if it becomes a websocket. ``worker`` is set in each worker process."""

    _config = Config.from_env()
    max_frame_bytes = _config.max_frame_bytes
    proxies = Proxies(_config.forwarded_allow_ips)
    worker: "GatewayWorker | None" = None
    limits: "Limits | None" = None

    def get_environ(self) -> dict:
        """The request, with the client's address (``CLIENT_ADDRESS``)."""
        environ = super().get_environ()
        environ[CLIENT_ADDRESS] = self.client(environ)
        return environ

    def client(self, environ: dict) -> str:
        """The client's address: the peer's, or behind a trusted proxy the last
        ``X-Forwarded-For`` entry (the one that proxy wrote; earlier ones come from the
        client and may be forged)."""
        peer = environ.get("REMOTE_ADDR", "")
        forwarded = environ.get("HTTP_X_FORWARDED_FOR", "").rpartition(",")[2].strip()
        return forwarded if forwarded and self.proxies.trust(peer) else peer

    def run_application(self) -> Any:
        worker = self.worker
        if worker is not None:
            worker.count_request()
            if not worker.alive and _new_session(self.environ):
                self.result = _turned_away(self.environ, self.start_response)
                self.process_result()
                return None
        return super().run_application()

    def upgrade_connection(self) -> Any:
        result = super().upgrade_connection()
        websocket = getattr(self, "websocket", None)
        if websocket is not None:
            websocket.__class__ = QuietWebSocket
            websocket.raw_read = _bounded(websocket.raw_read, self.max_frame_bytes)
        return result


class GatewayWorker(GeventWebSocketWorker):
    wsgi_handler = BoundedWebSocketHandler
    _stopping_since = 0.0

    def init_process(self) -> None:
        BoundedWebSocketHandler.worker = self
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        gateway = self._gateway()
        if gateway is not None:
            BoundedWebSocketHandler.limits = gateway.limits

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
