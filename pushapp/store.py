"""Everything pushapp keeps in Redis, each change one atomic step.

Per user and kind (``chat``, ``notif``) a Redis Stream holds the pending messages: the
stream id is the message's unique, ordered id, XADD/XDEL change one entry without reading
the rest, and MAXLEN/MINID bound it. Steps that must happen together (store, trim, expire,
archive, look up where the user is) run as one Lua script. Presence is one hash, user ->
``[node, sid, device, since_ms]``; a node counts only while its heartbeat in the ``nodes``
hash is fresh, so users of a crashed worker read as offline. A small hash per user,
``sent:<user>``, remembers the newest id sent of each kind, so that a message sent again
(to a new login, say, because the last one did not ack) counts as a redelivery.
"""
from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson
import redis

from .collector import Collector
from .config import Config

KINDS = ("chat", "notif")
# How the HTTP API and the metrics name the kinds.
KIND_NAMES = {"chat": "chat", "notif": "notification"}

_LIVE_NODE = """
local function live_node(user, now)
  local v = redis.call('HGET', KEYS[1], user)
  if not v then return false end
  local node = cjson.decode(v)[1]
  local expiry = redis.call('HGET', KEYS[2], node)
  if expiry and tonumber(expiry) >= now then return node end
  return false
end
local function append(stream, raw, maxlen, minid, ttl)
  local id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'm', raw)
  redis.call('XTRIM', stream, 'MINID', minid)
  redis.call('PEXPIRE', stream, ttl)
  return id
end
"""

# KEYS: online, nodes, one stream per chat. ARGV: maxlen, minid, ttl_ms, now_ms, history
# channel, then raw/user pairs. Returns a flat list: id, node (or false) per chat. Writes
# nothing if any of the keys is not a stream.
_STORE_CHATS = _LIVE_NODE + """
for i = 3, #KEYS do
  local kind = redis.call('TYPE', KEYS[i]).ok
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a stream')
  end
end
local out = {}
local now = tonumber(ARGV[4])
for i = 3, #KEYS do
  local raw, user = ARGV[2 * i], ARGV[2 * i + 1]
  out[#out + 1] = append(KEYS[i], raw, ARGV[1], ARGV[2], ARGV[3])
  redis.call('PUBLISH', ARGV[5], raw)
  out[#out + 1] = live_node(user, now)
end
return out
"""

# KEYS: online, nodes, one stream per user (when stored). ARGV: raw, store?, maxlen, minid,
# ttl_ms, now_ms, users... Returns a flat list: id (or false), node (or false) per user.
_STORE_NOTIFICATION = _LIVE_NODE + """
local out = {}
local now = tonumber(ARGV[6])
for i = 7, #ARGV do
  local id = false
  if ARGV[2] == '1' then
    id = append(KEYS[i - 4], ARGV[1], ARGV[3], ARGV[4], ARGV[5])
  end
  out[#out + 1] = id
  out[#out + 1] = live_node(ARGV[i], now)
end
return out
"""

# KEYS: online, nodes. ARGV: user, now_ms. The user's presence if their node is alive.
_PRESENCE = _LIVE_NODE + """
if live_node(ARGV[1], tonumber(ARGV[2])) then return redis.call('HGET', KEYS[1], ARGV[1]) end
return false
"""

# Reading pending messages to send: the rows of a stream from ``start`` on, after how many
# of them were sent before (ids up to the kind's mark in ``marks``); the mark moves past
# them. A key that is not a stream answers -1 and no rows, and fails only its own read.
_READ_FN = """
local function before(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, bms = tonumber(ams), tonumber(bms)
  return ams < bms or (ams == bms and tonumber(aseq) <= tonumber(bseq))
end
local function read(stream, marks, start, count, kind, ttl)
  local rows = redis.pcall('XRANGE', stream, start, '+', 'COUNT', count)
  if rows.err then return {-1, {}} end
  if #rows == 0 then return {0, rows} end
  local mark = redis.call('HGET', marks, kind)
  local seen = 0
  if mark then
    for _, row in ipairs(rows) do
      if before(row[1], mark) then seen = seen + 1 else break end
    end
  end
  if seen < #rows then
    redis.call('HSET', marks, kind, rows[#rows][1])
    redis.call('PEXPIRE', marks, ttl)
  end
  return {seen, rows}
end
"""

# KEYS: stream/marks pairs. ARGV: count, ttl_ms, start/kind pairs.
_READ = _READ_FN + """
local out = {}
for i = 1, #KEYS / 2 do
  out[i] = read(KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i + 1], ARGV[1], ARGV[2 * i + 2], ARGV[2])
end
return out
"""

# Logins, each in one step. KEYS: online, then per login the streams to trim and the
# stream/marks pairs to read. ARGV: login channel, count, ttl_ms, then per login: user,
# presence, userinfo, trims, reads, a MINID per trimmed stream, start/kind per read. Per
# login: binds the user, publishes the userinfo, drops what the client says it has seen,
# and answers the presence it replaced and the first batches read.
_LOGIN = _READ_FN + """
local k, a, out = 2, 4, {}
while a <= #ARGV do
  local user, trims, reads = ARGV[a], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local old = redis.call('HGET', KEYS[1], user)
  redis.call('HSET', KEYS[1], user, ARGV[a + 1])
  redis.call('PUBLISH', ARGV[1], ARGV[a + 2])
  a = a + 5
  for _ = 1, trims do
    redis.pcall('XTRIM', KEYS[k], 'MINID', ARGV[a])
    k, a = k + 1, a + 1
  end
  local batches = {}
  for i = 1, reads do
    batches[i] = read(KEYS[k], KEYS[k + 1], ARGV[a], ARGV[2], ARGV[a + 1], ARGV[3])
    k, a = k + 2, a + 2
  end
  out[#out + 1] = {old, batches}
end
return out
"""

# KEYS: streams. ARGV: one key prefix per kind. Returns the entries of each kind's streams.
_COUNT_STREAMS = """
local totals = {}
for i = 1, #ARGV do totals[i] = 0 end
for _, key in ipairs(KEYS) do
  for i, prefix in ipairs(ARGV) do
    if string.sub(key, 1, #prefix) == prefix then
      totals[i] = totals[i] + redis.call('XLEN', key)
    end
  end
end
return totals
"""

# KEYS: online. ARGV: user/sid pairs. Unbinds each user whose socket is still that sid.
_UNBIND = """
local gone = 0
for i = 1, #ARGV, 2 do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and cjson.decode(v)[2] == ARGV[i + 1] then
    gone = gone + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return gone
"""

# KEYS: lease. ARGV: node, ttl_ms. Renews the lease this node holds or takes a free one.
_HOLD_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease. ARGV: expected holder. Deletes the lease only if it is still that holder's.
_DROP_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Entry(NamedTuple):
    """One stored message: its stream id and the JSON text as it was published."""

    id: str
    raw: bytes


class Placement(NamedTuple):
    """Where a message went for one user: its stored id (None if not stored) and the node
    that holds the user's socket (None when offline)."""

    id: str | None
    node: str | None


class Batch(NamedTuple):
    """Pending messages read for a socket; the first ``resent`` of them were sent before."""

    entries: list[Entry]
    resent: int


# What to read for one socket: kind, user, and the last id sent (None: from the start).
Read = tuple[str, str, str | None]


class _Login(NamedTuple):
    user: str
    presence: Presence
    userinfo: bytes
    seen: dict[str, str]
    reads: Sequence[Read]


class Presence(NamedTuple):
    node: str
    sid: str
    device: str
    since_ms: int

    def encode(self) -> bytes:
        return orjson.dumps(list(self))

    @classmethod
    def decode(cls, raw: bytes | None) -> "Presence | None":
        return None if raw is None else cls(*orjson.loads(raw))


def connect(config: Config, size: int | None = None, **options: Any) -> redis.Redis:
    """A client with a bounded pool (``REDIS_MAX_CONNECTIONS``, or ``size``) that waits for
    a free connection instead of failing (redis-py's default pool raises once 100
    connections are busy); ``options`` go to each connection."""
    pool = redis.BlockingConnectionPool.from_url(
        config.redis_url,
        max_connections=size or config.redis_max_connections,
        timeout=config.redis_pool_timeout,
        health_check_interval=30,
        **options,
    )
    return redis.Redis(connection_pool=pool)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _placements(flat: list) -> list[Placement]:
    return [Placement(i and _text(i), n and _text(n)) for i, n in zip(flat[::2], flat[1::2])]


def _batch(reply: list) -> Batch | redis.ResponseError:
    resent, rows = reply
    if resent < 0:
        return redis.ResponseError("WRONGTYPE a stored message stream holds another type")
    return Batch([Entry(_text(msg_id), fields[fields.index(b"m") + 1])
                  for msg_id, fields in rows], resent)


def _next_id(msg_id: str) -> str:
    """The smallest stream id after ``msg_id``: MINID of a trim that removes it too."""
    ms, seq = msg_id.split("-")
    return f"{ms}-{int(seq) + 1}"


class Store:
    """Redis operations of the gateway; none reads a value to write it back from Python."""

    def __init__(self, config: Config, client: redis.Redis) -> None:
        self.config = config
        self.redis = client
        self.online_key = config.key("online")
        self.nodes_key = config.key("nodes")
        self.lease_key = config.key("ingest-lease")
        self.totals_key = config.key("stored-totals")
        self._store_chats = client.register_script(_STORE_CHATS)
        self._store_notification = client.register_script(_STORE_NOTIFICATION)
        self._presence = client.register_script(_PRESENCE)
        self._read = client.register_script(_READ)
        self._count_streams = client.register_script(_COUNT_STREAMS)
        self._login = client.register_script(_LOGIN)
        self._unbind = client.register_script(_UNBIND)
        self._hold_lease = client.register_script(_HOLD_LEASE)
        self._drop_lease = client.register_script(_DROP_LEASE)
        self._publishes: Collector[tuple[str, bytes | str], int] = Collector(self._publish_all)
        self._logins = Collector(self._login_all, limit=200)

    def stream_key(self, kind: str, user: str) -> str:
        return self.config.key(kind, user)

    def _limits(self) -> tuple[int, str, int, int]:
        now_ms = int(time.time() * 1000)
        max_age_ms = self.config.store_max_age * 1000
        return self.config.store_max_entries, f"{now_ms - max_age_ms}-0", max_age_ms, now_ms

    def store_chats(self, chats: Sequence[tuple[str, bytes]]) -> list[Placement]:
        """Store each (user, chat) in order, publish it to the archive channel, and say
        where its user is, all in one step."""
        maxlen, minid, ttl, now = self._limits()
        flat = self._store_chats(
            keys=[self.online_key, self.nodes_key,
                  *(self.stream_key("chat", user) for user, _ in chats)],
            args=[maxlen, minid, ttl, now, self.config.channel_chat_history,
                  *(part for user, raw in chats for part in (raw, user))])
        return _placements(flat)

    def store_notification(self, users: Sequence[str], raw: bytes, store: bool) -> list[Placement]:
        """Store a notification for each user (if ``store``) and say where each user is."""
        maxlen, minid, ttl, now = self._limits()
        streams = [self.stream_key("notif", user) for user in users] if store else []
        flat = self._store_notification(
            keys=[self.online_key, self.nodes_key, *streams],
            args=[raw, "1" if store else "0", maxlen, minid, ttl, now, *users],
        )
        return _placements(flat)

    def read(self, reads: Sequence[Read], count: int) -> list[Batch | redis.ResponseError]:
        """Pending messages of each (kind, user) after id ``after`` (exclusive; None: all),
        oldest first, at most ``count`` each, to be sent now: one round trip for all. A
        stream that cannot be read answers its error, and fails only its own read."""
        keys, args = self._reads(reads)
        return [_batch(reply) for reply in self._read(keys=keys, args=[count, self._ttl_ms(),
                                                                       *args])]

    def login(self, user: str, presence: Presence, userinfo: bytes, seen: dict[str, str],
              reads: Sequence[Read]) -> tuple[Presence | None,
                                              list[Batch | redis.ResponseError]]:
        """Make ``presence`` the user's socket, publish ``userinfo`` on the login channel,
        remove what the client has seen (kind -> last id it has; later ones stay) and read
        the first batches of ``reads``, in one step, with the logins asked for meanwhile:
        a login storm takes one round trip per batch of logins, not one per login.
        Returns the presence it replaced."""
        return self._logins.call(_Login(user, presence, userinfo, seen, reads))

    def _login_all(self, logins: list[_Login]
                   ) -> list[tuple[Presence | None, list[Batch | redis.ResponseError]]]:
        keys, args = [self.online_key], [self.config.channel_login,
                                         self.config.chat_batch_max, self._ttl_ms()]
        for login in logins:
            read_keys, read_args = self._reads(login.reads)
            keys += [self.stream_key(kind, login.user) for kind in login.seen]
            keys += read_keys
            args += [login.user, login.presence.encode(), login.userinfo, len(login.seen),
                     len(login.reads)]
            args += [_next_id(mid) for mid in login.seen.values()]
            args += read_args
        return [(Presence.decode(old), [_batch(reply) for reply in replies])
                for old, replies in self._login(keys=keys, args=args)]

    def _reads(self, reads: Sequence[Read]) -> tuple[list[str], list[str]]:
        keys, args = [], []
        for kind, user, after in reads:
            keys += (self.stream_key(kind, user), self.config.key("sent", user))
            args += ("(" + after if after else "-", kind)
        return keys, args

    def _ttl_ms(self) -> int:
        return self.config.store_max_age * 1000

    def pending_counts(self, user: str) -> dict[str, int]:
        """Stored messages of each kind waiting for ``user``."""
        with self.redis.pipeline(transaction=False) as pipe:
            for kind in KINDS:
                pipe.xlen(self.stream_key(kind, user))
            return dict(zip(KINDS, pipe.execute()))

    def newest(self, user: str, count: int) -> dict[str, list[Entry]]:
        """The ``count`` newest pending messages of each kind for ``user``, newest first."""
        with self.redis.pipeline(transaction=False) as pipe:
            for kind in KINDS:
                pipe.xrevrange(self.stream_key(kind, user), count=count)
            return {kind: [Entry(_text(msg_id), fields[b"m"]) for msg_id, fields in rows]
                    for kind, rows in zip(KINDS, pipe.execute())}

    def clear(self, user: str, kinds: Sequence[str] = KINDS) -> dict[str, int]:
        """Drop every stored message of ``kinds`` for ``user``; says how many went."""
        with self.redis.pipeline(transaction=True) as pipe:
            for kind in kinds:
                pipe.xlen(self.stream_key(kind, user))
                pipe.delete(self.stream_key(kind, user))
            return dict(zip(kinds, pipe.execute()[::2]))

    def backlog(self) -> dict[str, int]:
        """Stored messages of each kind, all users together. It walks every stream (SCAN,
        summed in Redis a thousand at a time): about 100 ms per 10,000 users with stored
        messages, so it runs in the background (pushapp.metrics.BacklogCount), never for a
        request or a scrape."""
        totals = dict.fromkeys(KINDS, 0)
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.config.key_prefix) + "*"
        keys = self.redis.scan_iter(match=pattern, count=1000, _type="stream")
        while chunk := list(itertools.islice(keys, 1000)):
            counted = self._count_streams(keys=chunk, args=[self.stream_key(kind, "")
                                                            for kind in KINDS])
            for kind, count in zip(KINDS, counted):
                totals[kind] += count
        return totals

    def save_backlog(self, totals: dict[str, int], ttl: float) -> None:
        """Keep ``backlog()``'s totals, counted just now, for every worker's scrapes; they
        lapse after ``ttl`` seconds unless counted again, rather than grow stale."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.totals_key, mapping={**totals, "at": int(time.time() * 1000)})
            pipe.pexpire(self.totals_key, int(ttl * 1000))
            pipe.execute()

    def saved_backlog(self) -> tuple[dict[str, int], float] | None:
        """The totals last saved, and when they were counted (Unix time), or None: one
        command, whatever the number of users."""
        saved = {_text(field): int(count) for field, count in
                 self.redis.hgetall(self.totals_key).items()}
        if not saved:
            return None
        return {kind: saved.get(kind, 0) for kind in KINDS}, saved["at"] / 1000

    def remove(self, acks: Iterable[tuple[str, str, Sequence[str]]]) -> None:
        """Remove exactly these messages (kind, user, ids); others, stored meanwhile, stay.
        One XDEL per stream, all in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for kind, user, ids in acks:
                pipe.xdel(self.stream_key(kind, user), *ids)
            pipe.execute()

    def unbind(self, sockets: Sequence[tuple[str, str]]) -> int:
        """Forget each (user, sid), unless another socket has replaced that sid already.
        Returns how many users went offline."""
        return self._unbind(keys=[self.online_key],
                            args=[part for pair in sockets for part in pair])

    def presence(self, user: str) -> Presence | None:
        """The user's socket, if their node's heartbeat is fresh."""
        return Presence.decode(self._presence(keys=[self.online_key, self.nodes_key],
                                              args=[user, int(time.time() * 1000)]))

    def online(self, limit: int) -> tuple[list[tuple[str, Presence]], bool]:
        """Up to ``limit`` users whose node is alive, and whether there are more. It walks
        the presence hash (HSCAN) until it has found that many: for a look, not for a
        request path."""
        now = int(time.time() * 1000)
        live = {node for node, expiry in self.nodes().items() if expiry >= now}
        found: list[tuple[str, Presence]] = []
        for user, raw in self.redis.hscan_iter(self.online_key, count=1000):
            presence = Presence.decode(raw)
            if presence is not None and presence.node in live:
                if len(found) == limit:
                    return found, True
                found.append((_text(user), presence))
        return found, False

    def nodes(self) -> dict[str, int]:
        """Every node's heartbeat: until when (Unix ms) it counts as alive."""
        return {_text(node): int(expiry) for node, expiry in self.redis.hgetall(self.nodes_key)
                .items()}

    def heartbeat(self, node: str, ttl: float) -> None:
        """Tell every node that ``node`` is alive for ``ttl`` more seconds."""
        self.redis.hset(self.nodes_key, node, int((time.time() + ttl) * 1000))

    def forget_node(self, node: str) -> None:
        self.redis.hdel(self.nodes_key, node)

    def hold_lease(self, node: str, ttl: float) -> bool:
        """Renew or take the ingest lease: the one node that stores channel messages."""
        return bool(self._hold_lease(keys=[self.lease_key], args=[node, int(ttl * 1000)]))

    def lease_holder(self) -> str | None:
        holder = self.redis.get(self.lease_key)
        return holder and _text(holder)

    def drop_lease(self, holder: str) -> bool:
        return bool(self._drop_lease(keys=[self.lease_key], args=[holder]))

    def publish(self, channel: str, data: bytes | str) -> int:
        """Publish ``data``, in one round trip with the others asked for meanwhile (a chat
        flood sends thousands a second); returns once it is published, in the order asked,
        with the number of subscribers that received it (0: it is lost), and raises the
        RedisError a PUBLISH of its own would have."""
        return self._publishes.call((channel, data))

    def _publish_all(self, messages: list[tuple[str, bytes | str]]) -> list[int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for channel, data in messages:
                pipe.publish(channel, data)
            return pipe.execute()
