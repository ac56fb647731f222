"""redis-py's private parser classes under pushapp.store.capped: a pub/sub connection that
never holds a message over ``MAX_CHANNEL_MESSAGE_BYTES`` whole needs a socket buffer that
skips a long bulk string instead of reading it, and redis-py has no public hook there."""
from __future__ import annotations

from redis._parsers import _RESP2Parser as RESP2Parser
from redis._parsers.socket import SocketBuffer
from redis import utils as redis_utils
from redis.utils import SENTINEL

from . import Reliance

__all__ = ["RELIED_ON", "RESP2Parser", "SENTINEL", "SocketBuffer"]

RELIED_ON: tuple[Reliance, ...] = (
    Reliance(RESP2Parser, "__init__", ("socket_read_size",),
             "_CappedParser passes its read size through; the limit is its own."),
    Reliance(RESP2Parser, "on_connect", ("connection",),
             "_CappedParser replaces the buffer the base made with a capped one."),
    Reliance(RESP2Parser, "read_response", ("disable_decoding", "timeout"),
             "_CappedParser answers a whole pub/sub message itself, else calls it."),
    Reliance(RESP2Parser, "_sock", None, "the socket the capped buffer reads.", instance=True),
    Reliance(RESP2Parser, "_buffer", None, "the buffer replaced at connect.", instance=True),
    Reliance(SocketBuffer, "__init__", ("socket", "socket_read_size", "socket_timeout"),
             "_CappedBuffer is built as the base is."),
    Reliance(SocketBuffer, "readline", ("timeout",), "overridden to forget the last string."),
    Reliance(SocketBuffer, "read", ("length", "timeout"),
             "overridden: a string over the limit is skipped, answered as Oversized."),
    Reliance(SocketBuffer, "purge", (), "called once a message is sliced out of the buffer."),
    Reliance(SocketBuffer, "_read_from_socket", ("length", "timeout", "raise_on_timeout"),
             "called while skipping, to refill the buffer."),
    Reliance(SocketBuffer, "_buffer", None,
             "the bytes read: a whole message sliced out, truncated while skipping.",
             instance=True),
    Reliance(SocketBuffer, "socket_read_size", None, "the size of each read.", instance=True),
    Reliance(redis_utils, "SENTINEL", None, "the default timeout the buffer's reads take."),
)
