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
  new login, say, because the last one did not ack) counts as a redelivery, and so that
  a message stored while the user has a socket says what that socket may have had.

Storing answers, per message, its id, the id marked as sent before it and the node that
holds the user's socket: that node can send what was just stored without reading it back,
when it has sent everything up to that previous id (``pushapp.sockets.delivery``). Older layouts
are moved into this one at start (``pushapp.store.migration``).
"""
from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import redis
from gevent.lock import Semaphore
from redis.cluster import RedisCluster

from ..config import Config
from ..kinds import KEY_PARTS
from . import scripts
from .batching import Collector
from .idempotency_records import IdempotencyRecords
from .lane import Command, Lane
from .redis_url import sharded_pubsub
from .slots import Batched, batched

log = logging.getLogger(__name__)

_PRESENCE_FIELDS = ("node", "sid", "device", "since")

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


class NotReplicated(redis.RedisError):
    """A message the master stored that fewer than ``STORE_WAIT_REPLICAS`` replicas
    acknowledged within ``STORE_WAIT_TIMEOUT_MS``: it does not count as stored, and whoever
    stored it fails as on any Redis failure (the message stays on the master, so a retry
    may store it twice)."""

    def __init__(self, wanted: int, timeout_ms: int, acknowledged: Any) -> None:
        super().__init__(f"stored on the master but not yet on {wanted} replica(s) within "
                         f"{timeout_ms} ms ({acknowledged} acknowledged)")


class Entry(NamedTuple):
    """One stored message: its stream id and the JSON text as it was published."""

    id: str
    raw: bytes


class Placement(NamedTuple):
    """Where a message went for one user: its stored id (None if not stored), the node
    that holds the user's socket (None: no socket), the id marked as sent to that socket
    before it (None: none, or not stored), and whether that node's heartbeat is fresh.

    A node whose heartbeat is not fresh has crashed, or was cut off from Redis for a
    while (a failover, a network blip): its user counts as offline, and is still handed
    the message, which a node that is back delivers."""

    id: str | None
    node: str | None
    prev: str | None = None
    alive: bool = True

    @property
    def online(self) -> bool:
        return self.node is not None and self.alive


class Batch(NamedTuple):
    """Pending messages read for a socket; the first ``resent`` of them were sent before."""

    entries: list[Entry]
    resent: int


# What to read for one socket: kind, user, and the last id sent (None: from the start).
Read = tuple[str, str, str | None]


class Presence(NamedTuple):
    """Where a user's socket is: its worker (node), sid and device, and since when (ms)."""

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _batch(reply: list) -> Batch | redis.ResponseError:
    resent, rows = reply
    if resent < 0:
        return redis.ResponseError("WRONGTYPE a stored message stream holds another type")
    return Batch([Entry(_text(msg_id), fields[fields.index(b"m") + 1])
                  for msg_id, fields in rows], resent)


def _reached(answers: list) -> list:
    """``answers`` of a batched script, unless one is the error of a cluster's slot whose
    call failed (its master unreachable, CLUSTERDOWN, …): then that error, raised. An
    item's own error, such as a stream key holding another type, is a plain
    ResponseError, and stays in its place."""
    for answer in answers:
        if isinstance(answer, redis.RedisError) and type(answer) is not redis.ResponseError:
            raise answer
    return answers


def _logged_in(login: _Login, old: list, replies: list
               ) -> tuple[Presence | None, dict[str, Batch | redis.ResponseError]]:
    """The login script's answer for ``login``: the presence it replaced, and the batches
    of the kinds it read."""
    return Presence.decode(old), {kind: _batch(reply) for kind, reply in zip(KEY_PARTS, replies)
                                  if kind in login.reads}


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
        # STORE_WAIT_REPLICAS: the WAIT that follows an append on its connection (config
        # refuses it on a cluster, where there is no lane).
        self._wait: Command | None = (
            ("WAIT", config.store_wait_replicas, config.store_wait_timeout_ms)
            if config.store_wait_replicas else None)
        # A chat's commands (pushapp.store.lane); a cluster client routes them itself.
        self._lane = Lane(client) if isinstance(client, redis.Redis) else None
        # The batched scripts, split by slot on a cluster (pushapp.store.slots): per item
        # its keys, and the args shared by all before those of each item.
        self._append_chats = batched(client, scripts.APPEND, 3, 4, 1)
        self._append_notif = batched(client, scripts.APPEND, 3, 5, 0)
        self._read = batched(client, scripts.READ, 2, 2, 2)
        self._login = batched(client, scripts.LOGIN, 4, 3, 9)
        self._unbind = batched(client, scripts.UNBIND, 1, 0, 1)
        self.sharded = self._signals_sharded(client)
        # The channels of the workers' signals (pushapp.sockets.signals): published with
        # SPUBLISH when sharded, so that each goes only to its shard.
        self._sharded_prefix = config.key("node", "") if self.sharded else None
        self._hold_lease = client.register_script(scripts.HOLD_LEASE)
        self._drop_lease = client.register_script(scripts.DROP_LEASE)
        self._publishes: Collector[tuple[str, bytes | str], int] = Collector(self._publish_all)
        self._logins = Collector(self._login_all, limit=200)

    @staticmethod
    def _signals_sharded(client: redis.Redis | RedisCluster) -> bool:
        """Whether the signals between workers go over sharded pub/sub: on a cluster whose
        masters all have it (Redis 7), so that a signal reaches only the shard of its
        channel rather than every node. Chosen once, at start, and said in the log."""
        if not isinstance(client, RedisCluster):
            return False
        sharded = sharded_pubsub(client)
        log.info("Redis Cluster: signals between workers over %s", "sharded pub/sub "
                 "(SPUBLISH, SSUBSCRIBE)" if sharded else "plain pub/sub (a master is older "
                 "than Redis 7.0)")
        return sharded

    def ping(self) -> None:
        """One round trip to Redis (on a cluster, to every master: a master that is down
        until its replica is promoted leaves some users' keys unwritable), for a health
        check; raises RedisError if it fails."""
        if isinstance(self.redis, RedisCluster):
            self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            self.redis.ping()

    def idempotency_records(self) -> IdempotencyRecords:
        """The HTTP API's ``Idempotency-Key`` records, on this store's client."""
        return IdempotencyRecords(self.config, self.redis)

    def key(self, user: str, part: str) -> str:
        """The key of one of ``user``'s things (``chat``, ``notif``, ``on``, ``sent``)."""
        return user_key(self.config.key_prefix, user, part)

    def _oldest_kept(self) -> str:
        """MINID of what ``STORE_MAX_AGE`` keeps."""
        return f"{int(time.time() * 1000) - self._ttl_ms()}-0"

    def _ttl_ms(self) -> int:
        return self.config.store_max_age * 1000

    def _placements(self, flat: list) -> list[Placement | redis.RedisError]:
        """The append script's answers, each node with whether it is alive."""
        out: list[Placement | redis.RedisError] = []
        for answer in flat:
            if isinstance(answer, redis.RedisError):
                out.append(answer)
                continue
            msg_id, prev, node = answer
            node = node and _text(node)
            out.append(Placement(_text(msg_id), node or None, prev and _text(prev),
                                 bool(node) and self.liveness.alive(node)))
        return out

    def store_chats(self, chats: Sequence[tuple[str, bytes]]
                    ) -> list[Placement | redis.RedisError]:
        """Store each (user, chat) in order, publish it to the archive channel, and say
        where its user is, all in one step (on a cluster, one per slot). A chat whose
        stream key holds another type answers that error, alone; on a cluster, so do the
        chats of a slot whose master could not be reached, the others being stored."""
        return self._placements(self._script(
            self._append_chats,
            [key for user, _ in chats for key in self._append_keys("chat", user)],
            [self.config.store_max_entries, self._ttl_ms(), self.config.channel_chat_history,
             "chat", *(raw for _, raw in chats)], replicated=True))

    def store_notification(self, users: Sequence[str], raw: bytes
                           ) -> list[Placement | redis.RedisError]:
        """Store a notification for each user and say where each user is. A user whose
        stream key holds another type answers that error; if a master of the cluster
        could not be reached, this raises its error (the notification is then stored
        again, for all, when retried)."""
        return _reached(self._placements(self._script(
            self._append_notif,
            [key for user in users for key in self._append_keys("notif", user)],
            [self.config.store_max_entries, self._ttl_ms(), "", "notif", raw],
            replicated=True)))

    def _script(self, script: Batched, keys: list[str], args: list,
                replicated: bool = False) -> Any:
        """One call of a registered script (on a cluster, one per slot); on the lane when
        there is one. ``replicated``: a store, which with ``STORE_WAIT_REPLICAS`` counts
        only once that many replicas have it: WAIT follows the script in its batch, on its
        connection, and too few acknowledgements raise NotReplicated."""
        if self._lane is None:
            return script(keys=keys, args=args)
        wait = self._wait if replicated else None
        [answer], waited = self._lane.scripts(script, [(keys, args)], then=wait)
        if isinstance(answer, redis.ResponseError):
            raise answer
        for acknowledged in waited:
            if isinstance(acknowledged, redis.ResponseError):
                raise acknowledged
            if acknowledged < self.config.store_wait_replicas:
                raise NotReplicated(self.config.store_wait_replicas,
                                    self.config.store_wait_timeout_ms, acknowledged)
        return answer

    def _commands(self, commands: list[Command]) -> list[Any]:
        """Commands in one round trip, their replies in order; the first that failed
        raises its error, as a pipeline's ``execute`` would."""
        if not commands:
            return []
        if self._lane is not None:
            answers = self._lane.execute(commands)
        else:
            with self.redis.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                answers = pipe.execute(raise_on_error=False)
        for answer in answers:
            if isinstance(answer, redis.ResponseError):
                raise answer
        return answers

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
        replies = _reached(self._script(self._read, keys, [count, self._ttl_ms(), *args]))
        return [_batch(reply) for reply in replies]

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
        return [answer if isinstance(answer, redis.RedisError) else _logged_in(login, *answer)
                for login, answer in zip(logins, self._script(self._login, keys, args))]

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
        then XLEN a thousand at a time), a cost that grows with the users who have stored
        messages, so it runs in the background (pushapp.ops.backlog.BacklogCount), never
        for a request or a scrape."""
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
        self._commands([("XDEL", self.key(user, kind), *ids) for kind, user, ids in acks])

    def unbind(self, sockets: Sequence[tuple[str, str]]) -> int:
        """Forget each (user, sid), unless another socket has replaced that sid already.
        Returns how many users went offline."""
        return sum(_reached(self._script(self._unbind,
                                         [self.key(user, "on") for user, _ in sockets],
                                         [sid for _, sid in sockets])))

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

    def publish_then(self, channel: str, data: bytes | str,
                     done: Callable[[int | Exception], None]) -> None:
        """``publish`` without waiting: ``done`` gets the number of subscribers, or the
        RedisError, once the batch is published (it must not block)."""
        self._publishes.then((channel, data), done)

    def _publish_all(self, messages: list[tuple[str, bytes | str]]) -> list[int]:
        sharded = self._sharded_prefix
        return self._commands([("SPUBLISH" if sharded and channel.startswith(sharded)
                                else "PUBLISH", channel, data) for channel, data in messages])
