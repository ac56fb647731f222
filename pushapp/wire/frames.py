"""Websocket framing (RFC 6455), the server's side: frames in from bytes, frames out.

Once a connection has left the HTTP server, its bytes arrive in whatever pieces the
kernel hands over; :class:`FrameReader` keeps what is not a whole frame yet and returns
the whole ones. It is the per-message hot path of every client, so it does the least the
protocol asks: check the header, wait for the whole frame (whose size is checked against
the limit from its header, before it is read), unmask it with one integer XOR. wsproto
does the same generically (extensions, incremental UTF-8 decoding, a generator per
connection) at about three times the cost per message.
"""
from __future__ import annotations

import struct

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

NORMAL_CLOSURE = 1000
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
INVALID_DATA = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013


class FrameError(Exception):
    """The client broke the protocol; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def frame(opcode: int, payload: bytes) -> bytes:
    """A whole, unmasked frame, as a server sends them."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason.encode()[:123])


def _unmask(payload: bytes, mask: bytes) -> bytes:
    size = len(payload)
    if not size:
        return b""
    key = int.from_bytes((mask * (size // 4 + 1))[:size], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(size, "big")


class FrameReader:
    """Whole messages out of the bytes a client sends: ``feed`` returns a list of
    ``(opcode, payload)`` with TEXT payloads decoded, fragments joined and control frames
    passed as they come. Raises :class:`FrameError` when the client breaks the protocol,
    a message would pass ``limit`` bytes, or, without ``binary``, a message is binary:
    refused from its first header, so that none of it is buffered."""

    __slots__ = ("limit", "binary", "_buffer", "_parts", "_opcode", "_size")

    def __init__(self, limit: int, binary: bool = True) -> None:
        self.limit = limit
        self.binary = binary
        self._buffer = b""
        self._parts: list[bytes] | None = None
        self._opcode = 0
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes | str]]:
        buffer = self._buffer + data if self._buffer else data
        out: list[tuple[int, bytes | str]] = []
        start, end = 0, len(buffer)
        while end - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            if first & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise FrameError(PROTOCOL_ERROR, "a client's frames must be masked")
            opcode, size, head = first & 0x0F, second & 0x7F, start + 2
            if size == 126:
                if end - head < 2:
                    break
                size, head = int.from_bytes(buffer[head:head + 2], "big"), head + 2
            elif size == 127:
                if end - head < 8:
                    break
                size, head = int.from_bytes(buffer[head:head + 8], "big"), head + 8
            if opcode >= CLOSE and (size > 125 or not first & 0x80):
                raise FrameError(PROTOCOL_ERROR, "a control frame must be whole and short")
            if opcode == BINARY and not self.binary:
                raise FrameError(UNSUPPORTED_DATA, "binary messages are not accepted")
            if size + self._size > self.limit:
                raise FrameError(MESSAGE_TOO_BIG, f"a message over {self.limit} bytes")
            if end - head < 4 + size:
                break
            payload = _unmask(buffer[head + 4:head + 4 + size], buffer[head:head + 4])
            start = head + 4 + size
            message = self._message(opcode, bool(first & 0x80), payload)
            if message is not None:
                out.append(message)
        self._buffer = buffer[start:]
        return out

    def _message(self, opcode: int, fin: bool, payload: bytes
                 ) -> tuple[int, bytes | str] | None:
        if opcode >= CLOSE:
            return opcode, payload
        if opcode == CONTINUATION:
            if self._parts is None:
                raise FrameError(PROTOCOL_ERROR, "a continuation with nothing to continue")
        elif opcode in (TEXT, BINARY):
            if self._parts is not None:
                raise FrameError(PROTOCOL_ERROR, "a new message inside a fragmented one")
            self._opcode = opcode
            if fin:
                return opcode, self._decode(opcode, payload)
            self._parts = []
        else:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        self._parts.append(payload)
        self._size += len(payload)
        if not fin:
            return None
        whole, self._parts, self._size = b"".join(self._parts), None, 0
        return self._opcode, self._decode(self._opcode, whole)

    @staticmethod
    def _decode(opcode: int, payload: bytes) -> bytes | str:
        if opcode == BINARY:
            return payload
        try:
            return payload.decode()
        except UnicodeDecodeError:
            raise FrameError(INVALID_DATA, "a text message that is not UTF-8") from None
