"""What the ingest does with channel messages by size: how many bytes of them a worker holds
while it stores them, and the refusal of one over ``MAX_CHANNEL_MESSAGE_BYTES``.

The store's capped client (pushapp.store.capped) never holds such a message whole and
answers an ``Oversized`` in its place; refusing it (a log line, a count) is the ingest's
decision, shared by the pub/sub listener and the inbox reader.
"""
from __future__ import annotations

import logging

from ..ops import metrics
from ..store.capped import Oversized

log = logging.getLogger(__name__)


def refuse(source: str, message: Oversized, limit: int) -> None:
    """Refuse a message over ``MAX_CHANNEL_MESSAGE_BYTES``: one log line with its size and
    first bytes (never the whole), and a count."""
    log.warning("refused a message of %d bytes from %s, over MAX_CHANNEL_MESSAGE_BYTES (%d); "
                "it begins %r", message.size, source, limit, message.head)
    metrics.ERRORS.labels("channel_message_too_large").inc()


def held_bytes(limit: int) -> int:
    """Bytes of channel messages a worker holds at most while it stores them: 16 of the
    largest it takes, and never less than 16 MiB, so that a burst of small ones fits."""
    return max(16 * 2**20, 16 * limit)
