"""The Socket.IO packets a chat is made of, read and written as text.

Every chat crosses a worker as three packets of the default namespace: the sender's
EVENT (``2<id>["chat",{…}]``), the gateway's ACK of it (``3<id>[1]``) and the EVENT that
delivers it to the recipient, whose ACK comes back. python-socketio builds a packet
object for each, checks it for binary parts and goes through its generic dispatch; these
functions do what those four packets need, and nothing else. Anything else (another
namespace, binary attachments, a packet type the fast path does not know, malformed
text) is not decoded here, and goes the library's way, which reads or refuses it.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

from ..payloads import SocketIOJSON

EVENT = 2
ACK = 3
# The type, the ack id (up to 15 digits here; a longer one, which python-socketio allows
# up to 100, goes the library's way) and the start of the data.
_HEAD = re.compile(r"([23])([0-9]{0,15})\[")


class Packet(NamedTuple):
    """An EVENT or ACK of the default namespace, with the attributes of python-socketio's
    packet that the server reads."""

    packet_type: int
    id: int | None
    data: Any
    namespace: None = None


def decode(text: str) -> Packet | None:
    """``text`` (a Socket.IO packet, without its Engine.IO type) as a packet, if it is an
    EVENT whose data is a list led by the event's name, or an ACK whose data is a list,
    in the default namespace; None for anything else."""
    head = _HEAD.match(text)
    if head is None:
        return None
    try:
        data = SocketIOJSON.loads(text[head.end() - 1:])
    except ValueError:
        return None
    packet_type = EVENT if head[1] == "2" else ACK
    if type(data) is not list or (packet_type == EVENT
                                  and not (data and type(data[0]) is str)):
        return None
    return Packet(packet_type, int(head[2]) if head[2] else None, data)


def event(ack_id: int | None, name: str, *args: Any) -> str:
    """An EVENT of the default namespace, asking for the ack ``ack_id`` (None: no ack)."""
    return ("2" if ack_id is None else f"2{ack_id}") + SocketIOJSON.dumps([name, *args])


def ack(ack_id: int, data: list) -> str:
    """The ACK ``ack_id`` of the default namespace, answering ``data``."""
    return f"3{ack_id}" + SocketIOJSON.dumps(data)
