"""``Idempotency-Key``: a retried request gets the first answer and stores nothing twice.

The first request with a key claims it with one ``SET NX`` (so of two concurrent ones only
one can win) and, once done, replaces the claim with its answer, kept ``IDEMPOTENCY_TTL``.
A claim lives only ``IN_FLIGHT`` seconds: if its request fails (Redis down), it is deleted
or runs out, and a retry proceeds. Each record carries a hash of the body, so a key sent
again with another body is refused instead of answered with an unrelated result.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, NamedTuple

import orjson

from ..config import Config
from ..store.idempotency_records import IdempotencyRecords

IN_FLIGHT = 60


class Claim(NamedTuple):
    """A key this request holds until it settles it."""

    key: str
    token: bytes
    fingerprint: str


class Earlier(NamedTuple):
    """What an earlier request with the same key left: its answer (``status`` None while
    it is still in flight), and whether it had the same body."""

    same_body: bool
    status: int | None
    body: Any


class Idempotency:
    """The API's idempotent requests, over the records the store keeps."""

    def __init__(self, config: Config, records: IdempotencyRecords) -> None:
        self.config = config
        self.records = records

    def claim(self, scope: str, key: str, body: bytes) -> Claim | Earlier:
        """Hold ``key`` for this request, or say what holds it already."""
        record_key = self.records.key(scope, key)
        fingerprint = hashlib.sha256(body).hexdigest()
        token = orjson.dumps({"fp": fingerprint, "claim": os.urandom(8).hex()})
        while True:
            if self.records.claim(record_key, token, IN_FLIGHT):
                return Claim(record_key, token, fingerprint)
            held = self.records.get(record_key)
            if held is not None:  # else it expired between the two calls: claim again
                record = orjson.loads(held)
                return Earlier(record["fp"] == fingerprint, record.get("status"),
                               record.get("body"))

    def finish(self, claim: Claim, status: int, body: Any) -> None:
        """Keep the answer for retries."""
        answer = orjson.dumps({"fp": claim.fingerprint, "status": status, "body": body})
        self.records.settle(claim.key, claim.token, answer, self.config.idempotency_ttl * 1000)

    def release(self, claim: Claim) -> None:
        """The request failed: let a retry run it."""
        self.records.settle(claim.key, claim.token, "", 0)
