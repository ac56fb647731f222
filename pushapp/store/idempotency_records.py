"""The records behind ``Idempotency-Key``, as Redis keeps them: ``<prefix>idem:<scope>:<key>``.

A request claims a record with one ``SET NX`` (so of two concurrent ones only one wins) and
settles it with a script that touches only its own claim. What a record means, and the
answers made from it, is the HTTP API's (pushapp.http.idempotency).
"""
from __future__ import annotations

import redis

from ..config import Config

# KEYS: the record. ARGV: our claim, the new value ('' deletes), ttl_ms.
# Returns 1 once done, 0 if the record is no longer our claim (it expired, another took it).
_SETTLE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""


class IdempotencyRecords:
    """The records of ``Idempotency-Key``: claimed, read and settled."""

    def __init__(self, config: Config, client: redis.Redis) -> None:
        self.config = config
        self.redis = client
        self._settle = client.register_script(_SETTLE)

    def key(self, scope: str, key: str) -> str:
        """The record of ``key`` sent by ``scope`` (an API client)."""
        return self.config.key("idem", scope, key)

    def claim(self, record: str, token: bytes, seconds: int) -> bool:
        """Hold ``record`` with ``token`` for ``seconds``, unless it exists."""
        return bool(self.redis.set(record, token, nx=True, ex=seconds))

    def get(self, record: str) -> bytes | None:
        return self.redis.get(record)

    def settle(self, record: str, token: bytes, value: bytes | str, ttl_ms: int) -> None:
        """Replace our claim ``token`` with ``value`` for ``ttl_ms`` ('' deletes it)."""
        self._settle(keys=[record], args=[token, value, ttl_ms])
