"""Redis connections that never hold a channel message larger than the gateway takes.

A business server may PUBLISH (or add to the inbox stream) anything Redis accepts, up to
512 MB a message. redis-py reads a reply whole, and copies it twice on the way, before
anyone can look at its size: a few large messages cost a worker several times their size
(docs/benchmarks.md). The pub/sub
listener and the inbox reader use the parser below instead. A bulk string longer than
``MAX_CHANNEL_MESSAGE_BYTES`` is read off the socket and thrown away as it arrives, one
read (64 KiB) at a time, and its place in the reply holds an ``Oversized``: its size and
first bytes, for the one log line that refuses it (pushapp.ingest.oversized). A pub/sub
message that is in the buffer whole and within the limit, nearly every one, is sliced out
with a few reads of the buffer rather than parsed bulk by bulk (its cost per chat:
docs/benchmarks.md); anything else goes the parser's way.

This worker's own signal channel is exempt: other workers of the gateway send on it, and
a signal may be larger than a business message (its recipient list, or an HTTP API
notification, whose limit is ``API_MAX_BODY_BYTES``).
"""
from __future__ import annotations

import functools
import io
import socket
from typing import Any, NamedTuple

import redis

from ..config import Config
from ..internals.redis_parsers import SENTINEL, RESP2Parser, SocketBuffer
from .redis_url import connect

# Bytes of a refused message kept for its log line.
_HEAD = 100
# The kinds of a pub/sub message: on a channel (SUBSCRIBE), on a shard channel (SSUBSCRIBE).
MESSAGE_KINDS = (b"message", b"smessage")


class Oversized(NamedTuple):
    """A bulk string longer than the limit, not kept: its size and its first bytes."""

    size: int
    head: bytes


class _CappedBuffer(SocketBuffer):
    """redis-py's socket buffer, but a bulk string over ``limit`` bytes is skipped as it
    arrives, unless it follows the bulk string ``exempt`` in the same reply."""

    def __init__(self, sock: socket.socket, socket_read_size: int,
                 socket_timeout: float | None, limit: int, exempt: bytes | None) -> None:
        super().__init__(sock, socket_read_size, socket_timeout)
        self.limit = limit
        self.exempt = exempt
        self._previous: bytes | None = None

    def readline(self, timeout: float | object = SENTINEL) -> bytes:
        line = super().readline(timeout)
        if line[:1] == b"*":  # a new array: a pub/sub message is [message, channel, data]
            self._previous = None
        return line

    def read(self, length: int, timeout: float | object = SENTINEL) -> bytes | Oversized:
        if length <= self.limit or (self.exempt and self._previous == self.exempt):
            value = super().read(length, timeout)
        else:
            value = self._skip(length, timeout)
        self._previous = value if isinstance(value, bytes) else None
        return value

    def message(self) -> list[bytes] | None:
        """The pub/sub message at the read position, if the buffer holds all of it and
        none of its strings is over the limit (the data of ``exempt``'s may be); else
        None, and the position is left where it was."""
        buf = self._buffer
        start = buf.tell()
        try:
            if buf.readline() == b"*3\r\n":
                kind = self._string(buf, False)
                if kind in MESSAGE_KINDS:
                    channel = self._string(buf, False)
                    if channel is not None:
                        data = self._string(buf, channel == self.exempt)
                        if data is not None:
                            self.purge()
                            return [kind, channel, data]
        except ValueError:  # not a length: the parser says what it is
            pass
        buf.seek(start)
        return None

    def _string(self, buf: io.BytesIO, exempt: bool) -> bytes | None:
        """The bulk string at the read position, if it is whole and may be kept."""
        head = buf.readline()
        if head[:1] != b"$" or head[-2:] != b"\r\n":
            return None
        length = int(head[1:-2])
        if length < 0 or (length > self.limit and not exempt):
            return None
        value = buf.read(length + 2)
        return value[:-2] if len(value) == length + 2 else None

    def _skip(self, length: int, timeout: float | object) -> Oversized:
        """Read ``length`` bytes and the CRLF after them, keeping only the first few. A
        failure on the way leaves the reply half read; the connection is then closed."""
        left, head = length + 2, b""
        while left:
            chunk = self._buffer.read(min(left, self.socket_read_size))
            head += chunk[:_HEAD - len(head)]
            left -= len(chunk)
            if left and not chunk:
                # All that was buffered is read: drop it, and read on from the socket.
                self._buffer.seek(0)
                self._buffer.truncate()
                self._read_from_socket(timeout=timeout)
        return Oversized(length, head[:length])


class _CappedParser(RESP2Parser):
    def __init__(self, socket_read_size: int, limit: int, exempt: bytes | None) -> None:
        super().__init__(socket_read_size)
        self.limit = limit
        self.exempt = exempt

    def on_connect(self, connection: redis.Connection) -> None:
        super().on_connect(connection)
        self._buffer = _CappedBuffer(self._sock, self.socket_read_size,
                                     connection.socket_timeout, self.limit, self.exempt)

    def read_response(self, disable_decoding: bool = False,
                      timeout: float | object = SENTINEL) -> Any:
        message = self._buffer.message()
        if message is not None:
            return message
        return super().read_response(disable_decoding=disable_decoding, timeout=timeout)


def capped_client(config: Config, name: str, exempt: str | None = None) -> redis.Redis:
    """A client of one connection to the gateway's Redis that keeps no bulk string over
    ``MAX_CHANNEL_MESSAGE_BYTES`` (but the one right after ``exempt``: a channel's name
    in a pub/sub message is followed by the message). ``name`` is its name in Redis'
    ``CLIENT LIST``, where operators look at how much Redis keeps for it."""
    parser = functools.partial(_CappedParser, limit=config.max_channel_message_bytes,
                               exempt=exempt.encode() if exempt else None)
    # RESP2: the parser above speaks it; a pub/sub message is then a plain array.
    return connect(config, 1, parser_class=parser, protocol=2, client_name=name)
