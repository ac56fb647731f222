"""Everything pushapp keeps in Redis, each change one atomic step.

Every key of one user carries the user as a hash tag, ``<prefix>{<user>}:<part>``, so
that they share one Redis Cluster slot and every per-user step is one script on one slot:

- ``{user}:chat``, ``{user}:notif``: Redis Streams of the pending messages of each kind.
  The stream id is the message's unique, ordered id; XADD/XDEL change one entry without
  reading the rest, XADD's MAXLEN bounds the length, and what is older than
  ``STORE_MAX_AGE`` is never read and is trimmed at the next login.
- ``{user}:on``: the user's presence, a hash (node, sid, device, since). A node counts
  only while its heartbeat in the ``nodes`` hash is fresh, so users of a crashed worker
  read as offline; that is checked in the worker, from a copy of ``nodes`` it refreshes
  (``Liveness``), never inside a per-message script.
- ``{user}:sent``: the newest id sent of each kind, so that a message sent again (to a
  new login, say, because the last one did not ack) counts as a redelivery.

Storing answers, per message, its id, the stream's newest id before it and the node that
holds the user's socket: that node can send what was just stored without reading it back,
when it has sent everything up to that previous id (``pushapp.sockets.delivery``). Older layouts
are moved into this one at start (``pushapp.store.migration``).
"""
from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import redis
from gevent.lock import Semaphore

from .batching import Collector
from ..kinds import KEY_PARTS
from ..config import Config

_PRESENCE_FIELDS = ("node", "sid", "device", "since")

# KEYS: per message its user's stream, presence and sent marks. ARGV: maxlen, ttl_ms,
# archive channel ('' for none), the marks' field (the kind), then one text per message,
# or a single text for all of them. Per message: appends it, bounded by MAXLEN, makes the
# stream live ttl_ms more, publishes it on the archive channel and, if the user has a
# socket, marks it as sent to it. Answers per message {id, the stream's newest id before
# it or false, the node of the user's socket or false}, or, for a message whose stream key
# holds another type, that error alone.
_APPEND = """
local maxlen, ttl, channel, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local shared = #ARGV == 5
local out = {}
for i = 1, #KEYS / 3 do
  local stream, presence, marks = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local raw = ARGV[shared and 5 or 4 + i]
  local top = redis.pcall('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  local id = redis.pcall('XADD', stream, 'MAXLEN', maxlen, '*', 'm', raw)
  if type(id) ~= 'string' then
    out[i] = id
  else
    redis.call('PEXPIRE', stream, ttl)
    if channel ~= '' then redis.call('PUBLISH', channel, raw) end
    local node = redis.pcall('HGET', presence, 'node')
    if type(node) == 'string' then
      redis.pcall('HSET', marks, kind, id)
    else
      node = false
    end
    out[i] = {id, top[1] and top[1][1] or false, node}
  end
end
return out
"""

# Reading pending messages to send: the rows of a stream from ``start`` on, after how many
# of them were sent before (ids up to the kind's mark in ``marks``); the mark moves past
# them. A key that is not a stream answers -1 and no rows, and fails only its own read.
# Only logins, resends and deliveries that could not follow on from what a socket was
# sent read; a message stored for a socket that has everything before it is not read back.
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
  if not mark or not before(rows[#rows][1], mark) then
    redis.call('HSET', marks, kind, rows[#rows][1])
  end
  redis.call('PEXPIRE', marks, ttl)
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

# Logins, each in one step. KEYS: per login its user's presence, sent marks, chat stream
# and notif stream. ARGV: login channel, count, ttl_ms, then per login: node, sid, device,
# since, userinfo, and per kind (chat, notif) the MINID to trim to and where to read from
# ('' for no read). Per login: binds the user, publishes the userinfo, drops what the client
# has seen and what is too old, and answers the presence it replaced and the first
# batches read (false for a kind not read).
_LOGIN = _READ_FN + """
local out = {}
for i = 1, #KEYS / 4 do
  local presence, marks = KEYS[4 * i - 3], KEYS[4 * i - 2]
  local a = 3 + 9 * (i - 1)
  local old = redis.call('HMGET', presence, 'node', 'sid', 'device', 'since')
  redis.call('HSET', presence, 'node', ARGV[a + 1], 'sid', ARGV[a + 2],
             'device', ARGV[a + 3], 'since', ARGV[a + 4])
  redis.call('PUBLISH', ARGV[1], ARGV[a + 5])
  -- The marks live STORE_MAX_AGE from the login; the appends only set fields.
  redis.call('HSET', marks, 'login', ARGV[a + 4])
  redis.call('PEXPIRE', marks, ARGV[3])
  local batches = {}
  for k = 1, 2 do
    local stream = KEYS[4 * i - 2 + k]
    redis.pcall('XTRIM', stream, 'MINID', ARGV[a + 4 + 2 * k])
    local start = ARGV[a + 5 + 2 * k]
    batches[k] = start ~= '' and read(stream, marks, start, ARGV[2], k == 1 and 'chat' or 'notif',
                                      ARGV[3]) or false
  end
  out[i] = {old, batches}
end
return out
"""

# KEYS: presence per socket. ARGV: sid per socket. Drops each presence that is still that
# socket's (a newer login may have replaced it).
_UNBIND = """
local gone = 0
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'sid') == ARGV[i] then
    gone = gone + redis.call('DEL', KEYS[i])
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

_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def user_key(prefix: str, user: str, part: str) -> str:
    """The key of one of ``user``'s things: ``<prefix>{<user>}:<part>``. Braces and ``%``
    in a user id are escaped, so that the hash tag is always the whole id."""
    if "{" in user or "}" in user or "%" in user:
        user = user.translate(_ESCAPES)
    return f"{prefix}{{{user}}}:{part}"


def _user_of(key: str, prefix: str, part: str) -> str:
    """The user a ``user_key`` names."""
    tag = key[len(prefix) + 1:-len(part) - 2]
    return re.sub("%(25|7B|7D)", lambda m: bytes.fromhex(m[1]).decode(), tag)


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def stream_id(msg_id: str) -> tuple[int, int]:
    """A stream id as a pair that orders as Redis orders ids."""
    ms, _, seq = msg_id.partition("-")
    return int(ms), int(seq or 0)


class Entry(NamedTuple):
    """One stored message: its stream id and the JSON text as it was published."""

    id: str
    raw: bytes


class Placement(NamedTuple):
    """Where a message went for one user: its stored id (None if not stored), the node
    that holds the user's socket (None when offline), and the newest id the user's stream
    held before it (None: none, or not stored)."""

    id: str | None
    node: str | None
    prev: str | None = None


class Batch(NamedTuple):
    """Pending messages read for a socket; the first ``resent`` of them were sent before."""

    entries: list[Entry]
    resent: int


# What to read for one socket: kind, user, and the last id sent (None: from the start).
Read = tuple[str, str, str | None]


class Presence(NamedTuple):
    node: str
    sid: str
    device: str
    since_ms: int

    @classmethod
    def decode(cls, values: Sequence[bytes | None]) -> "Presence | None":
        """From the presence hash's fields, in ``_PRESENCE_FIELDS`` order."""
        node, sid, device, since = values
        if node is None or sid is None:
            return None
        return cls(_text(node), _text(sid), _text(device or b""), int(since or 0))


class _Login(NamedTuple):
    user: str
    presence: Presence
    userinfo: bytes
    seen: dict[str, str]
    reads: dict[str, str | None]


class Liveness:
    """Which nodes are alive: a copy of the ``nodes`` hash (node -> heartbeat expiry, Unix
    ms), refreshed by this worker's own heartbeat and whenever a node it has not heard of
    comes up, so that no per-message script reads a global key."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._redis = client
        self._key = key
        self._expiries: dict[str, int] = {}
        self._refreshing = Semaphore()

    def update(self, expiries: dict[bytes | str, bytes | int]) -> dict[str, int]:
        self._expiries = {_text(node): int(expiry) for node, expiry in expiries.items()}
        return self._expiries

    def refresh(self) -> dict[str, int]:
        return self.update(self._redis.hgetall(self._key))

    def alive(self, node: str) -> bool:
        expiry = self._expiries.get(node)
        if expiry is None:
            # A node started since the last refresh; many greenlets asking at once share
            # one HGETALL.
            if self._refreshing.locked():
                self._refreshing.wait()
            else:
                with self._refreshing:
                    self.refresh()
            expiry = self._expiries.get(node)
        return expiry is not None and expiry >= time.time() * 1000


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


def _batch(reply: list) -> Batch | redis.ResponseError:
    resent, rows = reply
    if resent < 0:
        return redis.ResponseError("WRONGTYPE a stored message stream holds another type")
    return Batch([Entry(_text(msg_id), fields[fields.index(b"m") + 1])
                  for msg_id, fields in rows], resent)


def _next_id(msg_id: str) -> str:
    """The smallest stream id after ``msg_id``: MINID of a trim that removes it too."""
    ms, seq = stream_id(msg_id)
    return f"{ms}-{seq + 1}"


class Store:
    """Redis operations of the gateway; none reads a value to write it back from Python."""

    def __init__(self, config: Config, client: redis.Redis) -> None:
        self.config = config
        self.redis = client
        self.nodes_key = config.key("nodes")
        self.lease_key = config.key("ingest-lease")
        self.totals_key = config.key("stored-totals")
        self.liveness = Liveness(client, self.nodes_key)
        self._append = client.register_script(_APPEND)
        self._read = client.register_script(_READ)
        self._login = client.register_script(_LOGIN)
        self._unbind = client.register_script(_UNBIND)
        self._hold_lease = client.register_script(_HOLD_LEASE)
        self._drop_lease = client.register_script(_DROP_LEASE)
        self._publishes: Collector[tuple[str, bytes | str], int] = Collector(self._publish_all)
        self._logins = Collector(self._login_all, limit=200)

    def key(self, user: str, part: str) -> str:
        """The key of one of ``user``'s things (``chat``, ``notif``, ``on``, ``sent``)."""
        return user_key(self.config.key_prefix, user, part)

    def _oldest_kept(self) -> str:
        """MINID of what ``STORE_MAX_AGE`` keeps."""
        return f"{int(time.time() * 1000) - self._ttl_ms()}-0"

    def _ttl_ms(self) -> int:
        return self.config.store_max_age * 1000

    def _placements(self, flat: list) -> list[Placement | redis.ResponseError]:
        """The append script's answers, with the nodes that are not alive dropped."""
        out: list[Placement | redis.ResponseError] = []
        for answer in flat:
            if isinstance(answer, redis.ResponseError):
                out.append(answer)
                continue
            msg_id, prev, node = answer
            node = node and _text(node)
            out.append(Placement(_text(msg_id), node if node and self.liveness.alive(node)
                                 else None, prev and _text(prev)))
        return out

    def store_chats(self, chats: Sequence[tuple[str, bytes]]
                    ) -> list[Placement | redis.ResponseError]:
        """Store each (user, chat) in order, publish it to the archive channel, and say
        where its user is, all in one step. A chat whose stream key holds another type
        answers that error, alone."""
        return self._placements(self._append(
            keys=[key for user, _ in chats for key in self._append_keys("chat", user)],
            args=[self.config.store_max_entries, self._ttl_ms(),
                  self.config.channel_chat_history, "chat", *(raw for _, raw in chats)]))

    def store_notification(self, users: Sequence[str], raw: bytes
                           ) -> list[Placement | redis.ResponseError]:
        """Store a notification for each user and say where each user is."""
        return self._placements(self._append(
            keys=[key for user in users for key in self._append_keys("notif", user)],
            args=[self.config.store_max_entries, self._ttl_ms(), "", "notif", raw]))

    def _append_keys(self, kind: str, user: str) -> tuple[str, str, str]:
        return self.key(user, kind), self.key(user, "on"), self.key(user, "sent")

    def locate(self, users: Sequence[str]) -> list[str | None]:
        """The node holding each user's socket, if it is alive: one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hget(self.key(user, "on"), "node")
            nodes = pipe.execute(raise_on_error=False)
        return [_text(node) if isinstance(node, bytes) and self.liveness.alive(_text(node))
                else None for node in nodes]

    def read(self, reads: Sequence[Read], count: int) -> list[Batch | redis.ResponseError]:
        """Pending messages of each (kind, user) after id ``after`` (exclusive; None: all
        that ``STORE_MAX_AGE`` keeps), oldest first, at most ``count`` each, to be sent now:
        one round trip for all. A stream that cannot be read answers its error, and fails
        only its own read."""
        keys, args, oldest = [], [], self._oldest_kept()
        for kind, user, after in reads:
            keys += (self.key(user, kind), self.key(user, "sent"))
            args += ("(" + after if after else oldest, kind)
        return [_batch(reply) for reply in self._read(keys=keys, args=[count, self._ttl_ms(),
                                                                       *args])]

    def login(self, user: str, presence: Presence, userinfo: bytes, seen: dict[str, str],
              reads: dict[str, str | None]) -> tuple[Presence | None,
                                                     dict[str, Batch | redis.ResponseError]]:
        """Make ``presence`` the user's socket, publish ``userinfo`` on the login channel,
        remove what the client has seen (kind -> last id it has; later ones stay) and what
        is older than ``STORE_MAX_AGE``, and read the first batch of each kind in ``reads``
        (kind -> after which id; None: all), in one step, with the logins asked for
        meanwhile: a login storm takes one round trip per batch of logins, not one per
        login. Returns the presence it replaced and the batches."""
        return self._logins.call(_Login(user, presence, userinfo, seen, reads))

    def _login_all(self, logins: list[_Login]
                   ) -> list[tuple[Presence | None, dict[str, Batch | redis.ResponseError]]]:
        oldest = self._oldest_kept()
        keys, args = [], [self.config.channel_login, self.config.chat_batch_max, self._ttl_ms()]
        for login in logins:
            keys += [self.key(login.user, part) for part in ("on", "sent", *KEY_PARTS)]
            args += [*login.presence, login.userinfo]
            for kind in KEY_PARTS:
                trim = oldest
                if kind in login.seen and stream_id(login.seen[kind]) >= stream_id(oldest):
                    trim = _next_id(login.seen[kind])
                after = login.reads.get(kind, "")
                start = "" if kind not in login.reads else "(" + after if after else "-"
                args += [trim, start]
        return [(Presence.decode(old), {kind: _batch(reply) for kind, reply
                                         in zip(KEY_PARTS, replies) if kind in login.reads})
                for login, (old, replies) in zip(logins, self._login(keys=keys, args=args))]

    def pending_counts(self, user: str) -> dict[str, int]:
        """Stored messages of each kind waiting for ``user``."""
        with self.redis.pipeline(transaction=False) as pipe:
            for kind in KEY_PARTS:
                pipe.xlen(self.key(user, kind))
            return dict(zip(KEY_PARTS, pipe.execute()))

    def newest(self, user: str, count: int) -> dict[str, list[Entry]]:
        """The ``count`` newest pending messages of each kind for ``user``, newest first."""
        with self.redis.pipeline(transaction=False) as pipe:
            for kind in KEY_PARTS:
                pipe.xrevrange(self.key(user, kind), count=count)
            return {kind: [Entry(_text(msg_id), fields[b"m"]) for msg_id, fields in rows]
                    for kind, rows in zip(KEY_PARTS, pipe.execute())}

    def clear(self, user: str, kinds: Sequence[str] = KEY_PARTS) -> dict[str, int]:
        """Drop every stored message of ``kinds`` for ``user``; says how many went."""
        with self.redis.pipeline(transaction=True) as pipe:
            for kind in kinds:
                pipe.xlen(self.key(user, kind))
                pipe.delete(self.key(user, kind))
            return dict(zip(kinds, pipe.execute()[::2]))

    def _scan_users(self, part: str, kind: str) -> Iterable[str]:
        """The keys of every user's ``part`` (of Redis type ``kind``), by SCAN."""
        return self.redis.scan_iter(match=glob_escape(self.config.key_prefix) + "{*}:" + part,
                                    count=1000, _type=kind)

    def backlog(self) -> dict[str, int]:
        """Stored messages of each kind, all users together. It walks every stream (SCAN,
        then XLEN a thousand at a time): about 100 ms per 10,000 users with stored
        messages, so it runs in the background (pushapp.ops.backlog.BacklogCount), never for a
        request or a scrape."""
        totals = dict.fromkeys(KEY_PARTS, 0)
        for kind in KEY_PARTS:
            keys = self._scan_users(kind, "stream")
            while chunk := list(itertools.islice(keys, 1000)):
                with self.redis.pipeline(transaction=False) as pipe:
                    for key in chunk:
                        pipe.xlen(key)
                    totals[kind] += sum(pipe.execute())
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
        return {kind: saved.get(kind, 0) for kind in KEY_PARTS}, saved["at"] / 1000

    def remove(self, acks: Iterable[tuple[str, str, Sequence[str]]]) -> None:
        """Remove exactly these messages (kind, user, ids); others, stored meanwhile, stay.
        One XDEL per stream, all in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for kind, user, ids in acks:
                pipe.xdel(self.key(user, kind), *ids)
            pipe.execute()

    def unbind(self, sockets: Sequence[tuple[str, str]]) -> int:
        """Forget each (user, sid), unless another socket has replaced that sid already.
        Returns how many users went offline."""
        return self._unbind(keys=[self.key(user, "on") for user, _ in sockets],
                            args=[sid for _, sid in sockets])

    def presence(self, user: str) -> Presence | None:
        """The user's socket, if their node's heartbeat is fresh."""
        found = Presence.decode(self.redis.hmget(self.key(user, "on"), _PRESENCE_FIELDS))
        return found if found is not None and self.liveness.alive(found.node) else None

    def online(self, limit: int) -> tuple[list[tuple[str, Presence]], bool]:
        """Up to ``limit`` users whose node is alive, and whether there are more. It walks
        every key (SCAN) until it has found that many: for a look, not for a request path."""
        prefix, found = self.config.key_prefix, []
        keys = self._scan_users("on", "hash")
        while chunk := list(itertools.islice(keys, 1000)):
            with self.redis.pipeline(transaction=False) as pipe:
                for key in chunk:
                    pipe.hmget(key, _PRESENCE_FIELDS)
                values = pipe.execute()
            for key, value in zip(chunk, values):
                presence = Presence.decode(value)
                if presence is not None and self.liveness.alive(presence.node):
                    if len(found) == limit:
                        return found, True
                    found.append((_user_of(_text(key), prefix, "on"), presence))
        return found, False

    def nodes(self) -> dict[str, int]:
        """Every node's heartbeat: until when (Unix ms) it counts as alive."""
        return self.liveness.refresh()

    def heartbeat(self, node: str, ttl: float) -> None:
        """Tell every node that ``node`` is alive for ``ttl`` more seconds, and take their
        heartbeats in the same round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.nodes_key, node, int((time.time() + ttl) * 1000))
            pipe.hgetall(self.nodes_key)
            self.liveness.update(pipe.execute()[1])

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
