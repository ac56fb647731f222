"""Engine.IO's websocket transport, with no greenlet for an idle connection.

python-engineio gives each websocket three greenlets: the HTTP request's, which reads; a
writer that waits on a queue; and one that sleeps until the next ping. A parked greenlet
keeps its saved C stack and its own chunk of Python frame stack, and the request's also
keeps the whole HTTP request (environ, headers, buffers): most of what a connection cost.
Here, once the websocket handshake is done, the connection leaves the HTTP server:

- reading is a callback of the event loop on the socket (a duplicate of the request's
  descriptor, which the HTTP server then closes): it parses the frames and hands
  complete messages to a greenlet that exists while, and only while, the connection has
  messages to handle, one at a time and in order. While it is behind, reading pauses;
- a send writes the frame at once, without blocking. What the kernel does not take (a
  client that reads slowly) waits in a backlog that a greenlet drains while there is
  one; a client behind by more than ``SEND_BACKLOG_MAX_BYTES`` is cut off, so that no
  client can make the worker hold an unbounded amount for it;
- pings come from one greenlet per worker. The ping interval is the same for every
  socket, so the sockets waiting for their next ping form a queue already in due order.

Long-polling sockets, and websockets that the worker itself speaks TLS on, keep
python-engineio's way.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import time
from typing import Any, Callable

import gevent
import gevent.ssl
from gevent.monkey import get_original
from gevent.socket import wait_write

from ..config import Config
from ..internals import adopt
from ..internals.socketio_engineio import EngineServer, EngineSocket
from ..internals.socketio_engineio import engineio_exceptions as exceptions
from ..internals.socketio_engineio import engineio_packet as packet
from ..internals.socketio_engineio import engineio_payload as payload
from .frames import (BINARY, CLOSE, NORMAL_CLOSURE, PING, POLICY_VIOLATION, PONG,
                     SERVICE_RESTART, TEXT, TRY_AGAIN_LATER, UNSUPPORTED_DATA, FrameError,
                     FrameReader, close_frame, frame)
from .limits import Limits, Verdict
from .worker import CLIENT_ADDRESS

log = logging.getLogger(__name__)

_PlainSocket = get_original("socket", "socket")
_READ_SIZE = 65536
# Messages a connection may have waiting to be handled before reading it pauses.
_INBOX_PAUSE = 64
# Seconds a closed connection waits for the client to close its side after the goodbye.
_CLOSE_WAIT = 5.0
# What python-socketio keeps of the request's environ once the websocket is taken over;
# the rest (the request's input, the handshake's websocket, and through them the HTTP
# handler and its descriptor) is let go when the request ends.
_KEPT_ENVIRON = ("REMOTE_ADDR", "REMOTE_PORT", "HTTP_USER_AGENT", "HTTP_X_FORWARDED_FOR",
                 CLIENT_ADDRESS)


class _Written:
    """Stands in for a socket's packet queue once its websocket writes directly: the
    library's ``close`` still puts a wake-up for a writer that no longer exists."""

    def put(self, item: Any) -> None:
        pass

    def join(self) -> None:
        pass


_WRITTEN = _Written()


class LeanSocket(EngineSocket):
    """An Engine.IO socket whose websocket is read by the event loop and written directly.
    The attributes below are class defaults, so a socket that never needs one (most
    never have a backlog, say) holds nothing for it.

    It is also what pushapp limits: the connection a client holds, whatever it does with
    Socket.IO namespaces on it. ``tokens``, ``stamp`` and ``strikes`` are its event
    bucket (pushapp.wire.limits.RateLimiter), ``log_window`` and ``logged`` its budget of
    log lines (ClientErrors), ``handshake`` its client address until its Socket.IO
    connect is done (Handshakes)."""

    tokens = 0.0
    stamp = -math.inf
    strikes = 0
    log_window = -1
    logged = 0
    handshake: str | None = None
    _sock: Any = None
    _reader: Any = None
    _frames: FrameReader | None = None
    _inbox: collections.deque | None = None
    _handling = False
    _peer_gone = False
    _silent = False
    _backlog: list[bytes] | None = None
    _backlog_bytes = 0
    _drainer: gevent.Greenlet | None = None

    def send(self, pkt: packet.Packet) -> None:
        if self._frames is None:
            return super().send(pkt)
        if self.check_ping_timeout():
            self._write(self.server.framed(pkt))

    def send_text(self, text: str) -> None:
        """An Engine.IO MESSAGE of ``text``, a Socket.IO packet already encoded
        (pushapp.wire.packets): framed and written without a packet object on a websocket.
        Nothing is sent once the socket is closed."""
        if self.closed:
            return
        if self._frames is None:
            super().send(packet.Packet(packet.MESSAGE, data=text))
        elif self.check_ping_timeout():
            self._write(frame(TEXT, b"4" + text.encode()))

    def schedule_ping(self) -> None:
        if self.last_ping:
            self.last_ping = None
            self.server.pinger.add(self.sid)

    def ping(self) -> None:
        """Called by the worker's pinger when this socket's ping is due."""
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.send(packet.Packet(packet.PING))

    def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """Close the Engine.IO socket. It never waits for a long poll to take the close
        packet (python-engineio's ``wait``): with no poll pending, the request that closes
        it (a polling POST refused, say) would hang until the client polled again."""
        opened = not (self.closed or self.closing)
        super().close(wait=False, abort=abort, reason=reason)
        if opened:
            self.handshake_done()
        if not opened or self._sock is None:
            return
        self.server.sockets.pop(self.sid, None)
        if self._peer_gone:
            gevent.spawn(self._release)
        else:
            self._write(close_frame(NORMAL_CLOSURE))
            gevent.spawn_later(_CLOSE_WAIT, self._release)

    def goodbye(self) -> None:
        """Close the transport the way standard Socket.IO clients take as a lost connection,
        so that they reconnect (a Socket.IO or Engine.IO close packet would tell them not
        to). A websocket gets close code 1012 (service restart), and what the client sent
        before it saw that (acks, say) is still handled until its own close frame comes
        back; a long-polling session simply ends, and its next poll is refused."""
        self.server.sockets.pop(self.sid, None)
        if self._frames is None:
            self.close(wait=False, abort=True, reason=self.server.reason.SERVER_DISCONNECT)
            return
        self._write(close_frame(SERVICE_RESTART, "server restarting"))
        self._silent = True  # nothing may follow a close frame
        gevent.spawn_later(_CLOSE_WAIT, self._give_up_waiting)

    def handshake_done(self) -> None:
        """The Socket.IO connect is done, or the socket closed: its address has one
        handshake less."""
        if self.handshake is not None:
            self.server.limits.handshakes.leave(self.handshake)
            del self.handshake

    def cut_off(self, code: int, reason: str) -> None:
        """Close a connection that broke the rules, at once: nothing it sent after is
        handled. A websocket gets close code ``code`` (standard clients take it as a lost
        connection and reconnect with backoff); a long-polling session ends."""
        if self._frames is None:
            self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
            return
        if self._silent:
            return  # cut off or said goodbye already
        if self._inbox:
            self._inbox.clear()
        self._write(close_frame(code, reason))
        self._silent = True
        self._peer_ends()

    def misbehaved(self, reason: str, what: str, data: Any) -> None:
        """A packet this connection should not have sent (one that cannot be decoded, an
        ack of nothing): one strike (pushapp.wire.limits), a log line within the budgets, and
        after ``RATE_STRIKES`` in a row the connection is cut off."""
        limits = self.server.limits
        verdict = limits.limiter.strike(self)
        limits.errors.report(reason, self, "eio_sid=%s address=%s: %s: %.100r", self.sid,
                             self.address, what, data)
        if verdict is Verdict.ABUSE:
            limits.errors.report("abuse", None, "eio_sid=%s address=%s: cut off after %d bad "
                                 "packets in a row", self.sid, self.address, self.strikes)
            self.cut_off(POLICY_VIOLATION, "too many bad packets")

    def refuse_binary(self) -> None:
        """Binary data (a binary websocket message, a polling payload's base64 packet, a
        Socket.IO BINARY_EVENT or BINARY_ACK): the protocol has none, and a binary packet
        announces attachments that python-socketio would buffer without bound. The
        connection is cut off."""
        self.server.limits.errors.report("binary", None, "eio_sid=%s address=%s: cut off: "
                                         "binary data", self.sid, self.address)
        self.cut_off(UNSUPPORTED_DATA, "binary data is not accepted")

    @property
    def address(self) -> str:
        """The client's address, for log lines."""
        environ = self.server.environs.get(self.sid, {})
        return environ.get(CLIENT_ADDRESS) or environ.get("REMOTE_ADDR", "")

    def handle_post_request(self, environ: dict) -> None:
        """A long-polling POST. Its size was checked before it was read (pushapp.wire.worker);
        a payload that cannot be decoded is a strike, not python-engineio's traceback."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        try:
            packets = payload.Payload(encoded_payload=body.decode()).packets
        except (ValueError, TypeError, IndexError, UnicodeDecodeError) as exc:
            self.misbehaved("malformed_packet", f"undecodable polling payload ({exc})", body)
            return
        for pkt in packets:
            self.receive(pkt)

    def receive(self, pkt: packet.Packet) -> None:
        """An Engine.IO packet: binary data cuts the connection off; a packet the client
        may not send now is a strike: a type it never sends (python-engineio's
        UnknownPacketError), a pong to no ping, an upgrade on a websocket (each would
        cost work, an upgrade an answer, for nothing)."""
        if pkt.binary:
            self.refuse_binary()
            return
        if (pkt.packet_type == packet.PONG and not self.last_ping) or (
                pkt.packet_type == packet.UPGRADE and self._frames is not None):
            self.misbehaved("malformed_packet", "unexpected Engine.IO packet",
                            pkt.packet_type)
            return
        try:
            super().receive(pkt)
        except exceptions.UnknownPacketError:
            self.misbehaved("malformed_packet", "unexpected Engine.IO packet type",
                            pkt.packet_type)

    def _give_up_waiting(self) -> None:
        """The client did not answer a goodbye in time: end as if it had."""
        if not self._peer_gone:
            self._peer_ends()

    def _websocket_handler(self, ws: Any) -> list:
        """``ws`` is python-engineio's wrapper around gevent-websocket's ``WebSocket``."""
        websocket = ws.environ["wsgi.websocket"]
        handler = websocket.handler
        if isinstance(handler.socket, gevent.ssl.SSLSocket):
            return super()._websocket_handler(ws)
        if self.connected:
            if not self._upgrade(ws):
                return []
        else:
            self.connected = self.upgraded = True
        try:
            sock = _PlainSocket(fileno=os.dup(handler.socket.fileno()))
        except OSError as exc:
            log.warning("%s: cannot take the connection over (%s); closing it", self.sid, exc)
            self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
            return []
        sock.setblocking(False)
        # What the request's reader already buffered belongs to the websocket.
        handler.socket.settimeout(0.0)
        try:
            early = handler.rfile.read1(_READ_SIZE)
        except OSError:
            early = b""  # the client has gone already: reading will see it
        # The HTTP server must neither write a close frame nor read from the connection
        # once this returns; it closes its own descriptor, the duplicate stays open.
        websocket.closed = True
        handler.socket = None
        if self.sid in self.server.environs:
            self.server.environs[self.sid] = {
                key: ws.environ[key] for key in _KEPT_ENVIRON if key in ws.environ}
        self._detach(sock, early)
        return []

    def _upgrade(self, ws: Any) -> bool:
        """A long-polling socket moving to this websocket: probe, then upgrade."""
        self.upgrading = True
        try:
            probe = packet.Packet(encoded_packet=ws.wait())
            if probe.packet_type != packet.PING or probe.data != "probe":
                self.server.logger.info("%s: failed websocket upgrade, no probe", self.sid)
                return False
            ws.send(packet.Packet(packet.PONG, data="probe").encode())
            self.queue.put(packet.Packet(packet.NOOP))  # ends the pending long poll
            if packet.Packet(encoded_packet=ws.wait()).packet_type != packet.UPGRADE:
                self.server.logger.info("%s: failed websocket upgrade, no upgrade packet",
                                        self.sid)
                return False
            self.upgraded = True
            return True
        finally:
            self.upgrading = False

    def _detach(self, sock: Any, early: bytes) -> None:
        """Read through the event loop and write directly from now on: first what was
        queued before the websocket was there (the OPEN packet, say), then let the queue
        go."""
        self._sock = sock
        self._frames = FrameReader(self.server.max_http_buffer_size, binary=False)
        queued, self.queue = self.queue, _WRITTEN
        while not queued.empty():
            pkt = queued.get_nowait()
            if pkt is not None:
                self.send(pkt)
        self._reader = gevent.get_hub().loop.io(sock.fileno(), 1)
        self._reader.start(self._readable)
        if early:
            self._received(early)

    def _readable(self) -> None:
        """The event loop's callback: never blocks, never raises."""
        try:
            data = self._sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._peer_ends()
        elif not self.closed:  # after the goodbye, only the client's end matters
            self._received(data)

    def _received(self, data: bytes) -> None:
        try:
            messages = self._frames.feed(data)
        except FrameError as exc:
            self.server.limits.errors.report(
                "bad_frame", self, "eio_sid=%s address=%s: websocket closed: %s", self.sid,
                self.address, exc, level=logging.INFO)
            self._write(close_frame(exc.code, str(exc)))
            self._peer_ends()
            return
        for opcode, payload in messages:
            if opcode == PING:
                self._write(frame(PONG, payload))
            elif opcode == CLOSE:
                self._write(frame(CLOSE, payload[:2]))  # the client's code, echoed
                self._peer_ends()
                return
            elif opcode != PONG:
                self._handle(payload)

    def _peer_ends(self) -> None:
        """The client closed, broke the protocol or is cut off: stop reading; close the
        Engine.IO socket after whatever came before, in order."""
        self._peer_gone = True
        if self._reader is not None:
            self._reader.stop()
        if self.closed:
            gevent.spawn(self._release)
        else:
            self._handle(None)

    def _handle(self, data: Any) -> None:
        """Handle a message now, in the event loop, if nothing of this connection waits and
        its handler never waits (``LeanEngineServer.at_once``: the packets of a chat);
        else queue it (None: the end) for this connection's handling greenlet."""
        if (not self._handling and not self._inbox and data is not None
                and self.server.at_once(data)):
            self._handle_one(data)
            return
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append(data)
        if len(self._inbox) >= _INBOX_PAUSE and self._reader is not None:
            self._reader.stop()
        if not self._handling:
            self._handling = True
            # A raw greenlet: no Greenlet object to link or join, about half the cost of
            # gevent.spawn, which a chat pays on every packet.
            gevent.spawn_raw(self._handle_inbox)

    def _handle_inbox(self) -> None:
        try:
            while self._inbox:
                data = self._inbox.popleft()
                if data is None:
                    self.close(wait=False, abort=True,
                               reason=self.server.reason.TRANSPORT_CLOSE)
                    return
                if not self._handle_one(data):
                    return
                if (self._reader is not None and not self._reader.active
                        and not self._peer_gone and len(self._inbox) < _INBOX_PAUSE // 2):
                    self._reader.start(self._readable)
        finally:
            self._handling = False
            if not self._inbox:
                self._inbox = None

    def _handle_one(self, data: str) -> bool:
        """Handle one message; False if the connection ended with it."""
        try:
            self._receive_text(data)
        except exceptions.SocketIsClosedError:
            return False
        except Exception:
            log.exception("%s: could not handle a packet; closing", self.sid)
            self._peer_gone = True
            self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_ERROR)
            return False
        return True

    def _receive_text(self, data: str) -> None:
        if data[:1] == "4":
            # A MESSAGE, most of what a client sends: to the server's handler, as
            # python-engineio's socket would hand it, without a packet object.
            try:
                self.server.handlers["message"](self.sid, data[1:])
            except Exception:
                self.server.logger.exception("message handler error")
            return
        try:
            pkt = packet.Packet(encoded_packet=data)
        except (ValueError, TypeError, IndexError) as exc:
            self.misbehaved("malformed_packet", f"undecodable Engine.IO packet ({exc})", data)
            return
        self.receive(pkt)

    def _write(self, data: bytes) -> None:
        """Write without waiting; keep what the kernel did not take for the drainer."""
        sock = self._sock
        if sock is None or self._silent:
            return
        if self._backlog is not None:
            self._queue(data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the client is gone: reading sees it
        if sent < len(data):
            self._backlog, self._backlog_bytes = [data[sent:]], len(data) - sent
            self._drainer = gevent.spawn(self._drain)

    def _queue(self, data: bytes) -> None:
        """Add to the backlog; a client already behind by more than the limit is cut off
        (the newest frame alone, however large, is always let through)."""
        if self._backlog_bytes + len(data) > self.server.send_backlog_max:
            log.warning("%s: client reads too slowly, %d bytes waiting; disconnecting",
                        self.sid, self._backlog_bytes + len(data))
            self._silent = True  # nothing more is written
            self._backlog.clear()
            self._peer_ends()
            return
        self._backlog.append(data)
        self._backlog_bytes += len(data)

    def _drain(self) -> None:
        """Write the backlog, waiting for the socket to take it: the only greenlet that
        waits to write on this connection."""
        sock = self._sock
        try:
            while self._backlog:
                view = memoryview(b"".join(self._backlog))
                self._backlog.clear()
                while view:
                    wait_write(sock.fileno())
                    sent = sock.send(view)
                    self._backlog_bytes -= sent
                    view = view[sent:]
        except OSError:
            pass
        finally:
            self._backlog, self._backlog_bytes, self._drainer = None, 0, None

    def _release(self) -> None:
        """Close the connection for good (once; the drainer stopped first)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._drainer is not None:
            self._drainer.kill()
        self._reader.stop()
        self._reader = self._frames = self._inbox = None
        sock.close()


class DueQueue:
    """Calls ``due(sock)`` for each socket ``delay`` seconds after it was added, from one
    greenlet for the whole worker, alive while some socket waits. The delay is the same
    for every socket, so the sockets waiting form a queue already in due order: no heap,
    no timer per socket. It keeps sids, not sockets, so that a socket closed before it is
    due is freed at once."""

    def __init__(self, delay: float, sockets: dict[str, LeanSocket],
                 due: Callable[[LeanSocket], None]) -> None:
        self.delay = delay
        self.sockets = sockets
        self.due = due
        self.waiting: collections.deque[tuple[float, str]] = collections.deque()
        self._runner: gevent.Greenlet | None = None

    def add(self, sid: str) -> None:
        self.waiting.append((time.monotonic() + self.delay, sid))
        if self._runner is None:
            self._runner = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.kill(block=False)

    def _run(self) -> None:
        try:
            while self.waiting:
                now = time.monotonic()
                while self.waiting and self.waiting[0][0] <= now:
                    sock = self.sockets.get(self.waiting.popleft()[1])
                    if sock is None:
                        continue
                    try:
                        self.due(sock)
                    except Exception:
                        log.exception("%s: %s failed", sock.sid, self.due.__name__)
                if self.waiting:
                    gevent.sleep(self.waiting[0][0] - now)
        finally:
            self._runner = None


class LeanEngineServer(EngineServer):
    """python-engineio's server making :class:`LeanSocket` sockets, at most
    ``max_sockets`` at a time, and closing those that do not log in within
    ``LOGIN_TIMEOUT``. ``environs`` is python-socketio's environ per Engine.IO sid."""

    pinger: DueQueue
    login_watch: DueQueue
    logged_in: Callable[[str], bool]
    at_once: Callable[[str], bool]
    limits: Limits
    send_backlog_max: int
    max_sockets: int
    environs: dict[str, dict]
    _framed: tuple[packet.Packet | None, bytes] = (None, b"")

    @classmethod
    def adopt(cls, server: EngineServer, environs: dict[str, dict], config: Config,
              max_sockets: int, limits: Limits, logged_in: Callable[[str], bool],
              at_once: Callable[[str], bool]) -> None:
        """Turn the server python-socketio built into this class (it offers no way to pass
        one). ``logged_in(sid)`` says whether the Engine.IO socket ``sid`` is logged in;
        ``at_once(text)`` whether a websocket message's handling never waits, so that the
        event loop may run it without a greenlet of its own (a greenlet per packet is a
        cost a chat pays on every packet: docs/benchmarks.md)."""
        adopt(server, cls)
        server.at_once = at_once
        server.pinger = DueQueue(server.ping_interval, server.sockets, LeanSocket.ping)
        server.login_watch = DueQueue(config.login_timeout, server.sockets, server._login_due)
        server.logged_in = logged_in
        server.limits = limits
        server.environs = environs
        server.send_backlog_max = config.send_backlog_max_bytes
        server.max_sockets = max_sockets
        connect = server.handlers["connect"]

        def lean_connect(sid: str, environ: dict, *args: Any) -> Any:
            # The new socket's first event: it has sent nothing, no ping is scheduled.
            if len(server.sockets) > server.max_sockets:
                return server._refuse(environ, "worker_full", "this worker is full", "this "
                                      f"worker holds its maximum of {server.max_sockets} sockets")
            address = environ.get(CLIENT_ADDRESS) or environ.get("REMOTE_ADDR", "")
            if not server.limits.handshakes.enter(address):
                limit = server.limits.handshakes.limit
                return server._refuse(environ, "handshakes_per_ip", "too many handshakes from "
                                      "this address", f"it has {limit} handshakes in progress")
            sock = server.sockets[sid]
            adopt(sock, LeanSocket)
            sock.handshake = address
            server.login_watch.add(sid)
            return connect(sid, environ, *args)

        server.on("connect", lean_connect)

    def framed(self, pkt: packet.Packet) -> bytes:
        """The websocket frame of ``pkt``. An emit to many sockets sends them all the same
        packet object: it is encoded and framed once, for the first of them."""
        last, data = self._framed
        if pkt is not last:
            encoded = pkt.encode()
            data = (frame(TEXT, encoded.encode()) if isinstance(encoded, str)
                    else frame(BINARY, encoded))
            self._framed = (pkt, data)
        return data

    def _login_due(self, sock: LeanSocket) -> None:
        """``LOGIN_TIMEOUT`` after the socket opened or left its namespace: it is closed
        unless it is logged in."""
        if not self.logged_in(sock.sid):
            self.limits.errors.report("login_timeout", None, "eio_sid=%s address=%s: cut off: "
                                      "not logged in within LOGIN_TIMEOUT", sock.sid,
                                      sock.address, level=logging.INFO)
            sock.cut_off(POLICY_VIOLATION, "not logged in")

    def _refuse(self, environ: dict, reason: str, why: str, because: str) -> str:
        """Turn a new client away: a long poll gets ``why`` in a 401, a websocket (whose
        handshake is already done) the close code 1013, try again later; the log line
        (counted as ``reason``) says ``because``."""
        self.limits.errors.report(reason, None, "refused a connection from %s: %s",
                                  environ.get("REMOTE_ADDR", ""), because)
        websocket = environ.get("wsgi.websocket")
        if websocket is not None:
            try:
                websocket.raw_write(close_frame(TRY_AGAIN_LATER, why))
            except OSError:
                pass
            websocket.closed = True
        return why + "; try again later"
