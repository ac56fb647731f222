"""What an older pushapp stored, moved into today's key layout once, at start.

Layout 1 kept a user's pending messages in ``<prefix>chat:<user>`` and
``<prefix>notif:<user>``, the newest ids sent in ``<prefix>sent:<user>``, and every
presence in one hash, ``<prefix>online``. Layout 2 (pushapp.store.store) puts every key of one
user under the hash tag ``{user}``. The first process to start after an upgrade (the
gunicorn master, or a worker if the master could not reach Redis) takes a lock and moves
every stream and mark, keeping their ids and expiry; others wait for it. A stream already
written under its new name (by a worker of a host upgraded first) gets the old entries
appended with new ids. Presences are dropped: an upgrade restarts every worker, so every
client logs in again.

On a Redis Cluster the scan walks every master (redis-py's ``scan_iter``) and finds
nothing to move: layout 1 never ran on a cluster (a move takes two slots, which a cluster
would refuse), so only the layout mark is written.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Callable

import gevent
import redis

from ..config import Config
from .store import glob_escape, user_key

log = logging.getLogger(__name__)

LAYOUT = b"2"
_OLD_PARTS = {"chat": "stream", "notif": "stream", "sent": "hash"}
# Seconds a mover holds the lock without renewing it (it renews it every thousand keys).
_LOCK_TTL = 60

# KEYS: old key, new key. ARGV: the new key's type. Unless the old key is gone (SCAN may
# name a key twice), renames the old key to the new one; if
# the new one exists already (a stream written since), appends the old entries to it with
# new ids and drops the old key; a mark hash of the new layout wins over the old one.
_MOVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  return 1
end
if ARGV[1] == 'stream' then
  for _, row in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
    redis.call('XADD', KEYS[2], '*', unpack(row[2]))
  end
end
redis.call('DEL', KEYS[1])
return 0
"""


def upgrade(config: Config, client: redis.Redis, holder: str,
            wait: Callable[[float], None] = time.sleep) -> int:
    """Bring the keys under ``KEY_PREFIX`` to this layout unless that was done: returns
    how many keys were moved (0 when nothing was left to do). ``holder`` names this
    process in the lock; ``wait`` sleeps while another process moves the keys."""
    marker, lock = config.key("layout"), config.key("layout-lock")
    while client.get(marker) != LAYOUT:
        if client.set(lock, holder, nx=True, ex=_LOCK_TTL):
            try:
                moved = _move_all(config, client, lambda: client.expire(lock, _LOCK_TTL))
                client.set(marker, LAYOUT)
            finally:
                client.delete(lock)
            if moved:
                log.warning("moved %d keys of an older pushapp into key layout %s", moved,
                            LAYOUT.decode())
            return moved
        log.info("waiting for %s to bring the keys to layout %s", _text(client.get(lock)),
                 LAYOUT.decode())
        wait(1.0)
    return 0


def upgrade_until_done(config: Config, client: redis.Redis, holder: str) -> None:
    """``upgrade`` in a worker's greenlet, again every few seconds while Redis cannot be
    reached (the master's attempt at start failed too, then)."""
    while True:
        try:
            upgrade(config, client, holder, gevent.sleep)
            return
        except redis.RedisError as exc:
            log.warning("key layout not checked yet, Redis failed: %s; retrying", exc)
            gevent.sleep(5)


def _move_all(config: Config, client: redis.Redis, renew: Callable[[], object]) -> int:
    move = client.register_script(_MOVE)
    prefix, moved = config.key_prefix, 0
    for part, kind in _OLD_PARTS.items():
        old_prefix = config.key(part, "")
        keys = client.scan_iter(match=glob_escape(old_prefix) + "*", count=1000, _type=kind)
        while chunk := list(itertools.islice(keys, 1000)):
            for key in chunk:
                user = _text(key)[len(old_prefix):]
                move(keys=[key, user_key(prefix, user, part)], args=[kind])
            moved += len(chunk)
            renew()
    client.delete(config.key("online"))
    return moved


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
