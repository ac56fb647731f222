"""python-socketio's server as the gateway runs it: every packet a client sends policed
first, and a chat's packets read and written as text (pushapp.wire.packets).

It is what the sockets layer sends through: the events answer their acks through it,
delivery emits through it.
"""
from __future__ import annotations

import contextvars
import logging
from typing import Any, Callable

import socketio

from ..internals import adopt
from ..internals.socketio_engineio import SocketServer
from ..internals.socketio_engineio import socketio_packet as packet
from ..wire import packets
from ..wire.frames import POLICY_VIOLATION
from ..wire.limits import Limits, Verdict
from ..wire.transport import LeanSocket

# Whether the event being handled asked for an ack: a refusal is answered as the ack if
# so, as an ``error`` event if not (pushapp.sockets.events).
ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack", default=False)

# Exceptions that python-socketio raises on a packet that cannot be decoded or dispatched.
_UNDECODABLE = (ValueError, TypeError, IndexError, KeyError, RecursionError)
# The first character of a Socket.IO BINARY_EVENT or BINARY_ACK packet.
_BINARY_TYPES = (str(packet.BINARY_EVENT), str(packet.BINARY_ACK))
_ASKS_WORK = (packet.CONNECT, packet.DISCONNECT, packet.EVENT)


class GatewayServer(SocketServer):
    """python-socketio's server, with every packet a client sends policed first.

    Limits belong to the connection (the Engine.IO socket, pushapp.wire.limits), so that
    leaving and joining the namespace again (``41``, ``40``) resets nothing:

    - binary packets (``45…``, ``46…``) cut the connection off: the contract has none,
      and python-socketio would buffer the attachments they announce without bound;
    - a packet that cannot be decoded, or an ack of nothing the server sent, is a strike;
    - every other packet (an event, a namespace connect or disconnect) spends a token of
      the connection's bucket; over the rate it is refused, an event with the reason,
      and ``RATE_STRIKES`` refusals in a row cut the connection off.

    It also records whether the client asked for an ack, so that a handler can answer an
    error as the ack when there is one and as an ``error`` event when there is not.
    """

    limits: Limits

    @classmethod
    def adopt(cls, server: socketio.Server, limits: Limits) -> None:
        """Turn the server Flask-SocketIO built into this class. Flask-SocketIO offers no way
        to pass a server class; the Engine.IO message handler was bound at construction,
        so it is bound again."""
        adopt(server, cls)
        server.limits = limits
        server.eio.on("message", server._handle_eio_message)

    def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:
            return  # closed meanwhile
        if not isinstance(data, str) or data[:1] in _BINARY_TYPES:
            sock.refuse_binary()
            return
        try:
            pkt = packets.decode(data) or self.packet_class(encoded_packet=data)
            namespace = pkt.namespace or "/"
            if pkt.packet_type == packet.ACK:
                self._client_ack(sock, eio_sid, namespace, pkt, data)
                return
            if pkt.packet_type not in _ASKS_WORK:
                raise ValueError(f"a client may not send packet type {pkt.packet_type}")
            verdict = self.limits.limiter.check(sock)
            if verdict is not Verdict.ALLOW:
                self._over_rate(sock, eio_sid, pkt, verdict is Verdict.ABUSE)
            elif pkt.packet_type == packet.CONNECT:
                self._handle_connect(eio_sid, namespace, pkt.data)
                if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
                    sock.handshake_done()
            elif pkt.packet_type == packet.DISCONNECT:
                self._handle_disconnect(eio_sid, namespace, self.reason.CLIENT_DISCONNECT)
            else:
                self._handle_event(eio_sid, namespace, pkt.id, pkt.data)
        except _UNDECODABLE as exc:
            sock.misbehaved("malformed_packet", f"unusable Socket.IO packet ({exc})", data)

    def _client_ack(self, sock: LeanSocket, eio_sid: str, namespace: str, pkt: packet.Packet,
                    data: str) -> None:
        """An ack is free (the server asked for it), unless it answers nothing it sent. (Ack
        ids start at 1: python-socketio keeps its id counter under 0.)"""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if not pkt.id or pkt.id not in self.manager.callbacks.get(sid, ()):
            sock.misbehaved("bad_ack", "an ack of nothing sent", data)
            return
        self._handle_ack(eio_sid, namespace, pkt.id, pkt.data)

    def _over_rate(self, sock: LeanSocket, eio_sid: str, pkt: packet.Packet, abuse: bool) -> None:
        """Refuse a packet over the connection's rate, with the reason; cut the connection
        off after ``RATE_STRIKES`` refusals in a row."""
        reason = f"rate limited: at most {self.limits.limiter.rate:g} events per second"
        if abuse:
            reason += "; disconnecting"
        self.limits.errors.report("rate_limited", sock, "eio_sid=%s address=%s: %s", eio_sid,
                                  sock.address, reason, level=logging.INFO)
        if pkt.packet_type == packet.EVENT:
            answer = (self.packet_class(packet.ACK, namespace=pkt.namespace, id=pkt.id,
                                        data=[{"error": reason}]) if pkt.id is not None else
                      self.packet_class(packet.EVENT, namespace=pkt.namespace, data=[
                          "error", {"event": event_name(pkt.data), "error": reason}]))
            self._send_packet(eio_sid, answer)
        elif pkt.packet_type == packet.CONNECT:
            self._send_packet(eio_sid, self.packet_class(
                packet.CONNECT_ERROR, data={"message": reason}, namespace=pkt.namespace))
        if abuse:
            self.limits.errors.report("abuse", None, "eio_sid=%s address=%s: cut off: event "
                                      "flood", eio_sid, sock.address)
            sock.cut_off(POLICY_VIOLATION, "event flood")

    def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):  # noqa: A002
        """python-socketio's own, noting whether an ack was asked for, and writing the ack
        of the default namespace as text."""
        token = ack_requested.set(id is not None)
        try:
            answer = server._trigger_event(data[0], namespace, sid, *data[1:])
        finally:
            ack_requested.reset(token)
        if answer is self.not_handled or id is None:
            return
        answer = [] if answer is None else list(answer) if isinstance(answer, tuple) else [answer]
        sock = self.eio.sockets.get(eio_sid)
        if namespace == "/" and isinstance(sock, LeanSocket):
            sock.send_text(packets.ack(id, answer))
        else:
            self._send_packet(eio_sid, self.packet_class(packet.ACK, namespace=namespace,
                                                         id=id, data=answer))

    def emit_acked(self, sid: str, event: str, data: Any, callback: Callable[..., Any]) -> None:
        """Emit ``event`` with ``data`` to the socket ``sid`` of the default namespace, and
        call ``callback`` with its ack: python-socketio's ``emit(…, to=sid,
        callback=…)``, written as text. Nothing is sent to a socket that is gone."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        sock = self.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if not isinstance(sock, LeanSocket):
            self.emit(event, data, to=sid, callback=callback)
            return
        sock.send_text(packets.event(self.manager._generate_ack_id(sid, callback), event, data))


def event_name(data: Any) -> str:
    """The event an EVENT packet's data (or a handler's arguments) names, as far as it
    names one, for answers and log lines."""
    return str(data[0])[:64] if isinstance(data, (list, tuple)) and data else "?"
