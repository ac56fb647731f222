"""Engine.IO's websocket transport, without a writer greenlet or a ping greenlet per socket.

python-engineio gives each websocket three greenlets: the request's, which reads; a writer
that waits on a queue; and one that sleeps until the next ping. A parked greenlet keeps
its saved C stack and its own chunk of Python frame stack, and the queue its locks: about
half of what a connection cost. Here the request's greenlet is the only one:

- a send writes the frame at once, without blocking. What the kernel does not take (a
  client that reads slowly) waits in a backlog that a greenlet drains while, and only
  while, there is one; a client whose backlog passes ``SEND_BACKLOG_MAX_BYTES`` is cut off,
  so that no client can make the worker hold an unbounded amount for it;
- pings come from one greenlet per worker. The ping interval is the same for every
  socket, so the sockets waiting for their next ping form a queue already in due order.

Long-polling sockets, and sockets that the worker itself speaks TLS on (gevent's SSL
sockets cannot write without blocking), keep python-engineio's way.
"""
from __future__ import annotations

import collections
import logging
import socket as stdlib_socket
import time
from typing import Any

import engineio
import gevent
import gevent.ssl
from engineio import exceptions, packet
from engineio import socket as engineio_socket
from geventwebsocket.websocket import Header, WebSocket

log = logging.getLogger(__name__)

_TEXT, _BINARY = WebSocket.OPCODE_TEXT, WebSocket.OPCODE_BINARY


class _Written:
    """Stands in for a socket's packet queue once its websocket writes directly: the
    library's ``close`` still puts a wake-up for a writer that no longer exists."""

    def put(self, item: Any) -> None:
        pass

    def join(self) -> None:
        pass


_WRITTEN = _Written()


class LeanSocket(engineio_socket.Socket):
    """An Engine.IO socket that writes its websocket frames itself. The attributes below
    are class defaults, so a socket that never needs them holds nothing for them."""

    _sock: Any = None
    _websocket: WebSocket | None = None
    _backlog: list[bytes] | None = None
    _backlog_bytes = 0

    def send(self, pkt: packet.Packet) -> None:
        if self._sock is None:
            return super().send(pkt)
        if not self.check_ping_timeout():
            return
        data = pkt.encode()
        opcode = _BINARY
        if isinstance(data, str):
            data, opcode = data.encode(), _TEXT
        self._write(Header.encode_header(True, opcode, b"", len(data), 0) + data)

    def schedule_ping(self) -> None:
        if self.last_ping:
            self.last_ping = None
            self.server.pinger.add(self)

    def ping(self) -> None:
        """Called by the worker's pinger when this socket's ping is due."""
        if not self.closing and not self.closed:
            self.last_ping = time.time()
            self.send(packet.Packet(packet.PING))

    def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        super().close(wait=wait, abort=abort, reason=reason)
        if self._websocket is not None and not self._websocket.closed:
            self._websocket.close()

    def _websocket_handler(self, ws: Any) -> list:
        """``ws`` is python-engineio's wrapper around gevent-websocket's ``WebSocket``."""
        websocket = ws.environ["wsgi.websocket"]
        sock = websocket.handler.socket
        if isinstance(sock, gevent.ssl.SSLSocket):
            return super()._websocket_handler(ws)
        if self.connected:
            if not self._upgrade(ws):
                return []
        else:
            self.connected = self.upgraded = True
        self._take_over(websocket, sock)
        try:
            self._read(ws, sock)
        finally:
            self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            self._sock = self._backlog = self._websocket = None
        return []

    def _upgrade(self, ws: Any) -> bool:
        """A long-polling socket moving to this websocket: probe, then upgrade."""
        self.upgrading = True
        try:
            probe = packet.Packet(encoded_packet=self._receive(ws))
            if probe.packet_type != packet.PING or probe.data != "probe":
                self.server.logger.info("%s: failed websocket upgrade, no probe", self.sid)
                return False
            ws.send(packet.Packet(packet.PONG, data="probe").encode())
            self.queue.put(packet.Packet(packet.NOOP))  # ends the pending long poll
            if packet.Packet(encoded_packet=self._receive(ws)).packet_type != packet.UPGRADE:
                self.server.logger.info("%s: failed websocket upgrade, no upgrade packet",
                                        self.sid)
                return False
            self.upgraded = True
            return True
        finally:
            self.upgrading = False

    def _take_over(self, websocket: WebSocket, sock: Any) -> None:
        """Write directly from now on: first what was queued before the websocket was
        there (the OPEN packet, say), then let the queue go."""
        websocket.raw_write = self._write  # gevent-websocket's own frames (pong, close) too
        self._websocket, self._sock = websocket, sock
        queued, self.queue = self.queue, _WRITTEN
        while not queued.empty():
            pkt = queued.get_nowait()
            if pkt is not None:
                self.send(pkt)

    def _receive(self, ws: Any) -> Any:
        data = ws.wait()
        if data and len(data) > self.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return data

    def _read(self, ws: Any, sock: Any) -> None:
        sock.settimeout(self.server.ping_interval + self.server.ping_timeout)
        while True:
            try:
                data = self._receive(ws)
            except Exception as exc:
                if not self.closed:
                    self.server.logger.info("%s: websocket read failed: %s", self.sid, exc)
                return
            if data is None:
                return
            try:
                self.receive(packet.Packet(encoded_packet=data))
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                return
            except Exception:
                log.exception("%s: could not handle a packet", self.sid)
                return

    def _write(self, data: bytes) -> None:
        """Write without waiting; keep what the kernel did not take for the drainer."""
        if self._sock is None:
            return
        if self._backlog is not None:
            self._queue(data)
            return
        try:
            sent = self._sock.send(data, 0, timeout=0.0)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the peer is gone: the reading greenlet sees it and closes
        if sent < len(data):
            self._backlog, self._backlog_bytes = [], 0
            self._queue(data[sent:])
            gevent.spawn(self._drain)

    def _queue(self, data: bytes) -> None:
        """Add to the backlog; a client already behind by more than the limit is cut off
        (the newest frame alone, however large, is always let through)."""
        if self._backlog and self._backlog_bytes + len(data) > self.server.send_backlog_max:
            log.warning("%s: client reads too slowly, %d bytes waiting; disconnecting",
                        self.sid, self._backlog_bytes + len(data))
            self._backlog.clear()
            self._cut()
            return
        self._backlog.append(data)
        self._backlog_bytes += len(data)

    def _drain(self) -> None:
        """Write the backlog with blocking sends. The only greenlet that waits to write on
        this socket, so sends never contend."""
        sock = self._sock
        try:
            while self._backlog and self._sock is sock:
                chunk = b"".join(self._backlog)
                self._backlog.clear()
                self._backlog_bytes = 0
                sock.sendall(chunk)
        except OSError:
            pass
        finally:
            self._backlog = None
            self._backlog_bytes = 0

    def _cut(self) -> None:
        """End the connection now: the reading greenlet wakes up and closes the socket;
        until then, nothing more is written."""
        sock, self._sock = self._sock, None
        try:
            sock.shutdown(stdlib_socket.SHUT_RDWR)
        except OSError:
            pass


class Pinger:
    """Sends each socket its ping ``interval`` seconds after it was scheduled, from one
    greenlet for the whole worker."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.due: collections.deque[tuple[float, LeanSocket]] = collections.deque()
        self._runner: gevent.Greenlet | None = None

    def add(self, sock: LeanSocket) -> None:
        self.due.append((time.monotonic() + self.interval, sock))
        if self._runner is None:
            self._runner = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.kill(block=False)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                _, sock = self.due.popleft()
                try:
                    sock.ping()
                except Exception:
                    log.exception("%s: ping failed", sock.sid)
            gevent.sleep(self.due[0][0] - now if self.due else self.interval)


class LeanEngineServer(engineio.Server):
    """python-engineio's server making :class:`LeanSocket` sockets."""

    pinger: Pinger
    send_backlog_max: int

    @classmethod
    def adopt(cls, server: engineio.Server, send_backlog_max: int) -> None:
        """Turn the server python-socketio built into this class (it offers no way to pass
        one)."""
        server.__class__ = cls
        server.pinger = Pinger(server.ping_interval)
        server.send_backlog_max = send_backlog_max

    def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        # A new socket's first event; it has sent nothing yet and has no ping scheduled.
        if event == "connect":
            self.sockets[args[0]].__class__ = LeanSocket
        return super()._trigger_event(event, *args, **kwargs)
