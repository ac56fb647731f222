"""Websocket framing (pushapp/wire/frames.py): bytes in any pieces, whole messages out.

The transport's tests send real frames over real sockets; these check the corners a
client library rarely produces: split headers, 64-bit lengths, fragments with control
frames between them, and every way of breaking the protocol."""
from __future__ import annotations

import os
import string
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from pushapp.wire.frames import (BINARY, CLOSE, CONTINUATION, PING, TEXT, FrameError,
                                 FrameReader, close_frame, frame)


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A frame as a client sends it."""
    mask, size = os.urandom(4), len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        header = bytes((first, 0x80 | size))
    elif size < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_messages_come_whole_from_any_split():
    stream = (masked(TEXT, "42[\"hb\"]".encode()) + masked(BINARY, bytes(300))
              + masked(TEXT, "é".encode() * 40_000))
    for step in (1, 3, 7, 1000, len(stream)):
        reader = FrameReader(limit=1 << 20)
        got = []
        for at in range(0, len(stream), step):
            got += reader.feed(stream[at:at + step])
        assert got == [(TEXT, '42["hb"]'), (BINARY, bytes(300)), (TEXT, "é" * 40_000)]


def test_fragments_are_joined_and_control_frames_pass_between_them():
    reader = FrameReader(limit=100)
    got = reader.feed(masked(TEXT, b"he", fin=False) + masked(PING, b"p")
                      + masked(CONTINUATION, b"llo", fin=False) + masked(CONTINUATION, b"!"))
    assert got == [(PING, b"p"), (TEXT, "hello!")]


@pytest.mark.parametrize("data, code", [
    (frame(TEXT, b"unmasked"), 1002),
    (bytes((0x80 | 0x40 | TEXT, 0x80)) + bytes(4), 1002),  # a reserved bit
    (masked(0x3, b""), 1002),  # an unknown opcode
    (masked(CONTINUATION, b"x"), 1002),
    (masked(TEXT, b"a", fin=False) + masked(TEXT, b"b"), 1002),
    (masked(PING, b"x" * 126), 1002),
    (masked(PING, b"x", fin=False), 1002),
    (masked(TEXT, b"\xff\xfe"), 1007),
    (masked(TEXT, b"x" * 101), 1009),
    (masked(TEXT, b"x" * 60, fin=False) + masked(CONTINUATION, b"x" * 60), 1009),
])
def test_broken_frames_are_refused_with_their_close_code(data, code):
    with pytest.raises(FrameError) as refused:
        FrameReader(limit=100).feed(data)
    assert refused.value.code == code


def test_a_huge_frame_is_refused_from_its_header():
    header = bytes((0x80 | TEXT, 0x80 | 127)) + struct.pack("!Q", 4 * 1024 ** 3)
    with pytest.raises(FrameError) as refused:
        FrameReader(limit=1 << 20).feed(header)
    assert refused.value.code == 1009


def test_frames_out():
    assert frame(TEXT, b"2") == b"\x81\x012"
    assert frame(BINARY, bytes(200))[:4] == b"\x82\x7e\x00\xc8"
    assert frame(TEXT, bytes(70_000))[:2] == b"\x81\x7f"
    assert close_frame(1013, "full") == bytes((0x80 | CLOSE, 6)) + b"\x03\xf5full"


# Checked against wsproto (installed with simple-websocket): its client's frames, fragments
# and pings, cut into random pieces, read as wsproto meant them; and our frames out, read
# by its client as we meant them.
_messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=70_000)),
                     min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(messages=_messages, data=st.data())
def test_wsproto_client_frames_read_back_whole(messages, data):
    client = FrameProtocol(client=True, extensions=[])
    stream = b""
    for message in messages:
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(message) - 1)), max_size=3)))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)])]
        for at, piece in enumerate(pieces):
            if data.draw(st.booleans()):
                stream += client.ping(b"p")
            stream += client.send_data(piece, fin=at == len(pieces) - 1)
    reader = FrameReader(limit=1 << 20)
    got = []
    at = 0
    while at < len(stream):
        step = data.draw(st.integers(1, 5000))
        got += reader.feed(stream[at:at + step])
        at += step
    assert [payload for opcode, payload in got if opcode != PING] == messages


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(st.tuples(st.sampled_from([TEXT, BINARY, PING]),
                                   st.binary(max_size=70_000)), min_size=1, max_size=5),
       reason=st.text(alphabet=string.ascii_letters + " .:", max_size=123))
def test_our_frames_read_by_wsproto(messages, reason):
    messages = [(opcode, payload[:125] if opcode == PING else payload)
                for opcode, payload in messages]
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(b"".join(
        frame(opcode, payload.decode("latin-1").encode() if opcode == TEXT else payload)
        for opcode, payload in messages) + close_frame(1000, reason))
    got = list(client.received_frames())
    assert [parsed.opcode.value for parsed in got] == [opcode for opcode, _ in messages] + [CLOSE]
    for (opcode, payload), parsed in zip(messages, got):
        expected = payload.decode("latin-1") if opcode == TEXT else payload
        assert parsed.payload == expected and parsed.message_finished
    code, said = got[-1].payload
    assert code == 1000 and said == reason
