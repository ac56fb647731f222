"""The chat's Socket.IO packets read and written as text (pushapp/wire/packets.py), held to
python-socketio's own packets: what the fast path reads, it reads as the library would;
what it cannot read, it leaves to the library; what it writes, the library would write."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from socketio import packet as sio

from pushapp.payloads import SocketIOJSON
from pushapp.wire import packets


class _Packet(sio.Packet):
    json = SocketIOJSON


READ = ['2["hb"]', '21["chat",{"to":"b","n":1}]', '3123[1]', '37[]', '3[{"error":"x"}]',
        '2999999999999999["chat","text"]']
LEFT = ['2/admin,1["chat"]', '21-["chat"]', '51-["chat",{"_placeholder":true,"num":0}]',
        '2[]', '2[1,"a"]', '3{"a":1}', '2["chat"', '2 ["chat"]', '0', '1', '4{}',
        '21234567890123456["chat"]', '2', '3', '']


@pytest.mark.parametrize("text", READ)
def test_what_it_reads_it_reads_as_python_socketio(text: str) -> None:
    fast, slow = packets.decode(text), _Packet(encoded_packet=text)
    assert fast is not None
    assert (fast.packet_type, fast.id, fast.data, fast.namespace) == \
        (slow.packet_type, slow.id, slow.data, slow.namespace)


@pytest.mark.parametrize("text", LEFT)
def test_anything_else_is_left_to_python_socketio(text: str) -> None:
    assert packets.decode(text) is None


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) |
                           st.text(max_size=20), lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@given(st.one_of(st.none(), st.integers(0, 10**15 - 1)), st.text(min_size=1, max_size=12),
       st.lists(json_values, max_size=3))
def test_events_written_are_python_socketios_and_read_back(ack_id, name, args) -> None:
    text = packets.event(ack_id, name, *args)
    assert text == _Packet(sio.EVENT, data=[name, *args], id=ack_id).encode()
    assert packets.decode(text) == (packets.EVENT, ack_id, [name, *args], None)


@given(st.integers(0, 10**15 - 1), st.lists(json_values, max_size=3))
def test_acks_written_are_python_socketios_and_read_back(ack_id, data) -> None:
    text = packets.ack(ack_id, data)
    assert text == _Packet(sio.ACK, data=data, id=ack_id).encode()
    assert packets.decode(text) == (packets.ACK, ack_id, data, None)
