"""python-engineio's, python-socketio's and Flask-SocketIO's private parts that pushapp
relies on: the Engine.IO socket and server (pushapp.wire.transport), python-socketio's
message handling (pushapp.sockets.server) and client manager (pushapp.wire.manager), and
the server Flask-SocketIO builds (pushapp.app adopts it)."""
from __future__ import annotations

from engineio import exceptions as engineio_exceptions
from engineio import packet as engineio_packet
from engineio import payload as engineio_payload
from engineio.server import Server as EngineServer
from engineio.socket import Socket as EngineSocket
from flask_socketio import SocketIO
from socketio import Manager as SocketManager
from socketio import Server as SocketServer
from socketio import packet as socketio_packet

from . import Reliance

__all__ = ["EngineServer", "EngineSocket", "RELIED_ON", "SocketManager", "SocketServer",
           "engineio_exceptions", "engineio_packet", "engineio_payload", "socketio_packet"]

RELIED_ON: tuple[Reliance, ...] = (
    # python-engineio: the websocket transport (pushapp.wire.transport).
    Reliance(EngineSocket, "_websocket_handler", ("ws",),
             "LeanSocket overrides it to take the websocket over (upgrade probe, then reads "
             "by the event loop, direct writes); a change leaves websockets on the slow path "
             "or unserved."),
    Reliance(EngineSocket, "send", ("pkt",), "LeanSocket frames a packet and writes it."),
    Reliance(EngineSocket, "receive", ("pkt",), "LeanSocket filters pongs and upgrades."),
    Reliance(EngineSocket, "close", ("wait", "abort", "reason"),
             "LeanSocket closes without waiting, with a close frame."),
    Reliance(EngineSocket, "queue", None, "the long-poll queue a websocket upgrade ends.",
             instance=True),
    Reliance(EngineSocket, "last_ping", None, "a pong is refused unless a ping is out.",
             instance=True),
    Reliance(EngineServer, "sockets", None,
             "the Engine.IO sockets by sid: capacity, the drain and the DueQueues read it.",
             instance=True),
    Reliance(EngineServer, "handlers", None,
             "LeanEngineServer wraps the 'connect' handler python-socketio registered; "
             "LeanSocket hands a websocket's MESSAGE to the 'message' one.",
             instance=True),
    Reliance(EngineServer, "on", ("event", "handler"), "the connect handler is replaced."),
    Reliance(EngineServer, "ping_interval", None, "the pinger's period.", instance=True),
    Reliance(engineio_packet.Packet, "__init__", ("packet_type", "data", "encoded_packet"),
             "packets decoded and built by the transport."),
    Reliance(engineio_payload.Payload, "__init__", ("packets", "encoded_payload"),
             "a long poll's body read as packets before the upgrade."),
    Reliance(engineio_exceptions, "UnknownPacketError", None, "a bad packet is refused."),
    Reliance(engineio_exceptions, "SocketIsClosedError", None, "a send after the close."),
    # Flask-SocketIO: it builds python-socketio's server, with no way to pass a class.
    Reliance(SocketIO, "server", None, "the python-socketio server init_app built, which "
             "create_app adopts as GatewayServer (and its eio as LeanEngineServer).",
             instance=True),
    # python-socketio: message handling (pushapp.sockets.server.GatewayServer).
    Reliance(SocketServer, "_handle_eio_message", ("eio_sid", "data"),
             "GatewayServer replaces it (rate limits, acks of nothing, binary refused) and "
             "binds it again on the Engine.IO server; a rename leaves the limits unapplied."),
    Reliance(SocketServer, "_handle_connect", ("eio_sid", "namespace", "data"),
             "called for a CONNECT packet that passed the limits."),
    Reliance(SocketServer, "_handle_disconnect", ("eio_sid", "namespace", "reason"),
             "called for a DISCONNECT packet."),
    Reliance(SocketServer, "_handle_event", ("eio_sid", "namespace", "id", "data"),
             "called for an EVENT packet that passed the limits."),
    Reliance(SocketServer, "_handle_ack", ("eio_sid", "namespace", "id", "data"),
             "called for an ACK of something sent."),
    Reliance(SocketServer, "_send_packet", ("eio_sid", "pkt"),
             "a refusal's answer is sent as a packet."),
    Reliance(SocketServer, "_handle_event_internal",
             ("server", "sid", "eio_sid", "data", "namespace", "id"),
             "overridden to note whether the client asked for an ack and to write the ack "
             "as text."),
    Reliance(SocketServer, "_trigger_event", ("event", "namespace"),
             "runs an event's handler, from the override above."),
    Reliance(SocketServer, "not_handled", None, "what _trigger_event answers for an event "
             "with no handler: no ack is sent.", instance=True),
    Reliance(SocketServer, "packet_class", None, "packets decoded and built by the server.",
             instance=True),
    Reliance(SocketServer, "reason", None, "the disconnect reason of a client's DISCONNECT."),
    Reliance(SocketServer, "eio", None, "the Engine.IO server adopted as LeanEngineServer.",
             instance=True),
    Reliance(SocketServer, "environ", None, "the environ per Engine.IO sid.", instance=True),
    Reliance(socketio_packet, "Packet", None, "ACK, CONNECT, … packet types."),
    # python-socketio: the client manager (pushapp.wire.manager.GatewayManager).
    Reliance(SocketManager, "basic_enter_room", ("sid", "namespace", "room", "eio_sid"),
             "overridden: no room per sid (a mass disconnect was quadratic)."),
    Reliance(SocketManager, "basic_leave_room", ("sid", "namespace", "room"),
             "called on disconnect."),
    Reliance(SocketManager, "get_participants", ("namespace", "room"),
             "overridden: a sid's own room answered from the sid table."),
    Reliance(SocketManager, "basic_disconnect", ("sid", "namespace", "kwargs"),
             "overridden: constant time."),
    Reliance(SocketManager, "rooms", None, "the sid table of each namespace.", instance=True),
    Reliance(SocketManager, "_generate_ack_id", ("sid", "callback"),
             "GatewayServer.emit_acked registers the callback of an event it writes as text; "
             "a change leaves acks of deliveries unanswered."),
    Reliance(SocketManager, "callbacks", None, "acks awaited per sid: an ack of nothing is "
             "refused.", instance=True),
    Reliance(SocketManager, "pending_disconnect", None, "cleaned on disconnect.",
             instance=True),
)
