"""pushapp on Redis Cluster: with ``REDIS_URL=redis+cluster://…`` the store splits its
batched scripts by hash slot, scans every master, and the gateway keeps the contract, on a
real cluster of three masters with a replica each (tests/redis_servers.py), shared by the
tests of this module.

The store is called in process first (its scripts, scans and the one-key commands of the
lease, the inbox stream and idempotency records), then gunicorn gateways run on the
cluster: logins, kicks across gateways, chats and notifications to users on different
masters, acks, the HTTP API, and a master killed under chat load.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.commands.core import Script

from pushapp.config import Config
from pushapp.store.idempotency_records import IdempotencyRecords
from pushapp.store.inbox_stream import InboxStream
from pushapp.store.redis_url import connect
from pushapp.store.slots import batched
from pushapp.store.store import Presence, Store
from redis_servers import Cluster
from support import uid


def _users_on_every_master(cluster: Cluster, key: Callable[[str], str],
                          each: int = 2) -> list[str]:
    """Users whose keys (``key(user)``) sit ``each`` on each of the three masters: the
    first of each master, then the second, and so on."""
    by_master: dict[int, list[str]] = {}
    while len(by_master) < len(cluster.masters) or any(
            len(users) < each for users in by_master.values()):
        user = uid()
        users = by_master.setdefault(cluster.master_of(key(user)).port, [])
        if len(users) < each:
            users.append(user)
    return [user for row in zip(*by_master.values()) for user in row]


@pytest.fixture
def cluster_config(cluster: Cluster) -> Config:
    """Settings on the cluster, with a key prefix of the test's own."""
    return Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": cluster.url,
                            "KEY_PREFIX": f"unit{uid()}:"})


@pytest.fixture
def store(cluster_config: Config) -> Iterator[Store]:
    """A ``Store`` on the cluster, called in process."""
    client = connect(cluster_config)
    yield Store(cluster_config, client)
    client.close()


def _chat_key(store: Store) -> Callable[[str], str]:
    return lambda user: store.key(user, "chat")


def _presence(node: str, sid: str) -> Presence:
    return Presence(node, sid, "phone", int(time.time() * 1000))


def test_one_server_keeps_a_single_script_call(start_redis) -> None:
    client = redis.Redis.from_url(start_redis().url)
    assert isinstance(batched(client, "return 1", 1, 0, 0), Script)


def test_batched_scripts_run_per_slot_and_answer_in_the_callers_order(
        cluster: Cluster, store: Store) -> None:
    users = _users_on_every_master(cluster, _chat_key(store))
    node = f"node-{uid()}"
    store.heartbeat(node, 30)
    online = users[0]
    store.redis.hset(store.key(online, "on"), mapping=dict(zip(
        ("node", "sid", "device", "since"), _presence(node, "s0"))))
    # Redis keeps no script across a restart or a failover: the store loads them again.
    store.redis.script_flush()  # on every master
    placements = store.store_chats([(user, f'{{"to":"{user}"}}'.encode()) for user in users])
    for user, placement in zip(users, placements):
        [(msg_id, fields)] = store.redis.xrange(store.key(user, "chat"))
        assert (msg_id.decode(), fields[b"m"]) == (placement.id, f'{{"to":"{user}"}}'.encode())
    assert [placement.node for placement in placements] == [node] + [None] * (len(users) - 1)

    notified = store.store_notification(users[::-1], b'{"n":1}')
    assert [p.id for p in notified] == [
        store.redis.xrange(store.key(user, "notif"))[0][0].decode() for user in users[::-1]]

    batches = store.read([("notif", user, None) for user in users], 10)
    assert [batch.entries[0].id for batch in batches] == [p.id for p in notified[::-1]]

    for index, user in enumerate(users):
        old, read = store.login(user, _presence(node, f"s{index}"), b"{}", {},
                                {"chat": None})
        assert read["chat"].entries[0].id == placements[index].id
    assert store.unbind([(user, f"s{index}") for index, user in enumerate(users)]
                        + [(users[0], "gone")]) == len(users)
    assert store.locate(users) == [None] * len(users)


def test_a_wrong_type_fails_only_its_item_on_a_cluster(cluster: Cluster, store: Store) -> None:
    good, bad = _users_on_every_master(cluster, _chat_key(store), 1)[:2]
    store.redis.set(store.key(bad, "chat"), "not a stream")
    placements = store.store_chats([(good, b"{}"), (bad, b"{}")])
    assert placements[0].id is not None
    assert isinstance(placements[1], redis.ResponseError)


def test_scans_and_pipelines_reach_every_master(cluster: Cluster, store: Store) -> None:
    users = _users_on_every_master(cluster, _chat_key(store), 3)
    for user in users:
        store.store_chats([(user, b"1"), (user, b"2")])
    assert store.backlog() == {"chat": 2 * len(users), "notif": 0}
    assert {cluster.master_of(store.key(user, "chat")).port for user in users} \
        == {master.port for master in cluster.masters}

    node = f"node-{uid()}"
    store.heartbeat(node, 30)
    for index, user in enumerate(users):
        store.login(user, _presence(node, f"s{index}"), b"{}", {}, {})
    found, more = store.online(1000)
    assert sorted(user for user, _ in found) == sorted(users) and not more
    assert store.locate(users) == [node] * len(users)

    first = users[0]
    assert store.pending_counts(first) == {"chat": 2, "notif": 0}
    newest = store.newest(first, 1)["chat"]
    store.remove([("chat", user, [newest[0].id]) for user in users[:1]])
    assert store.pending_counts(first) == {"chat": 1, "notif": 0}
    assert store.clear(first) == {"chat": 1, "notif": 0}
    store.save_backlog({"chat": 5, "notif": 6}, 30)
    assert store.saved_backlog()[0] == {"chat": 5, "notif": 6}


def test_lease_inbox_and_idempotency_records_on_a_cluster(cluster_config: Config,
                                                          store: Store) -> None:
    node, other = f"node-{uid()}", f"node-{uid()}"
    assert store.hold_lease(node, 5) and not store.hold_lease(other, 5)
    assert store.lease_holder() == node
    assert store.drop_lease(node) and store.hold_lease(other, 5) and store.drop_lease(other)

    inbox = InboxStream(store.redis, cluster_config.key("inbox"), node, 10)
    inbox.join()
    inbox.join()  # the group exists: nothing to do
    store.redis.xadd(cluster_config.key("inbox"), {"channel": "notification", "data": "{}"})
    [[_, entries]] = inbox.read_new(100)
    inbox.done([entry_id for entry_id, _ in entries])
    assert store.redis.xlen(cluster_config.key("inbox")) == 0

    records = IdempotencyRecords(cluster_config, store.redis)
    record = records.key("client", uid())
    assert records.claim(record, b"mine", 60) and not records.claim(record, b"theirs", 60)
    records.settle(record, b"mine", "answer", 60_000)
    assert records.get(record) == b"answer"
