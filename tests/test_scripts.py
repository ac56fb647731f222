"""Each Lua script of the store (pushapp/store/scripts.py), on its own, against a real Redis.

In process and fast: the ``Store`` is called directly, without a gateway around it, and
each test looks at the keys the script left, as its header in scripts.py says.
"""
from __future__ import annotations

import time

import pytest
import redis

from pushapp.config import Config
from pushapp.store.store import Presence, Store, user_key
from support import uid


@pytest.fixture
def config(store_config: Config) -> Config:
    return store_config


def _presence(node: str, sid: str = "sid1") -> Presence:
    return Presence(node, sid, "phone", int(time.time() * 1000))


def test_append_stores_in_order_and_answers_the_previous_id(store: Store) -> None:
    user, away = uid(), uid()
    store.login(user, _presence("node-a"), b"{}", {}, {})
    first, second = store.store_chats([(user, b'{"n":1}'), (user, b'{"n":2}')])
    assert first.prev is None and second.prev == first.id
    assert [raw for _, raw in _rows(store, user, "chat")] == [b'{"n":1}', b'{"n":2}']
    assert store.redis.pttl(store.key(user, "chat")) > 0
    # Nobody's socket: nothing is marked as sent, nothing comes before.
    first, second = store.store_chats([(away, b'{"n":1}'), (away, b'{"n":2}')])
    assert (first.node, first.prev, second.node, second.prev) == (None, None, None, None)
    # A read moves the mark: what comes next follows on from what it read.
    store.login(away, _presence("node-a", "sid2"), b"{}", {}, {"chat": None})
    [third] = store.store_chats([(away, b'{"n":3}')])
    assert third.prev == second.id


def test_append_fails_only_the_message_whose_key_holds_another_type(store: Store) -> None:
    good, bad = uid(), uid()
    store.redis.set(store.key(bad, "chat"), "not a stream")
    placements = store.store_chats([(good, b"{}"), (bad, b"{}")])
    assert placements[0].id is not None
    assert isinstance(placements[1], redis.ResponseError)


def test_append_marks_as_sent_to_a_live_node(store: Store) -> None:
    user, node = uid(), f"node-{uid()}"
    store.heartbeat(node, 30)
    store.redis.hset(store.key(user, "on"), mapping=dict(zip(
        ("node", "sid", "device", "since"), _presence(node))))
    (placement,) = store.store_notification([user], b'{"n":1}')
    assert placement.node == node
    assert store.redis.hget(store.key(user, "sent"), "notif").decode() == placement.id


def test_read_answers_the_rows_after_a_start_and_how_many_were_sent_before(
        store: Store) -> None:
    user = uid()
    ids = [placement.id for placement in store.store_chats([(user, b"1"), (user, b"2"),
                                                              (user, b"3")])]
    (batch,) = store.read([("chat", user, ids[0])], 10)
    assert [entry.id for entry in batch.entries] == ids[1:] and batch.resent == 0
    (again,) = store.read([("chat", user, None)], 10)
    assert [entry.raw for entry in again.entries] == [b"1", b"2", b"3"]
    assert again.resent == 3  # the first read marked every row up to ids[2] as sent


def test_login_binds_replaces_trims_what_was_seen_and_reads(store: Store) -> None:
    user, node = uid(), f"node-{uid()}"
    store.heartbeat(node, 30)  # a presence counts only while its node is alive
    ids = [p.id for p in store.store_chats([(user, b"1"), (user, b"2")])]
    old, batches = store.login(user, _presence(node, "a"), b'{"u":1}', {"chat": ids[0]},
                               {"chat": None, "notif": None})
    assert old is None
    assert [entry.raw for entry in batches["chat"].entries] == [b"2"]
    assert batches["notif"].entries == []
    old, _ = store.login(user, _presence(node, "b"), b"{}", {}, {})
    assert old is not None and old.sid == "a"
    assert store.presence(user).sid == "b"


def test_unbind_drops_only_the_presence_still_of_that_socket(store: Store) -> None:
    user, node = uid(), f"node-{uid()}"
    store.login(user, _presence(node, "b"), b"{}", {}, {})
    assert store.unbind([(user, "a")]) == 0
    assert store.unbind([(user, "b")]) == 1
    assert store.redis.exists(store.key(user, "on")) == 0


def test_hold_lease_renews_its_own_and_refuses_another_holder(store: Store) -> None:
    store.redis.delete(store.lease_key)
    assert store.hold_lease("a", 10)
    assert store.hold_lease("a", 10)
    assert not store.hold_lease("b", 10)
    assert store.lease_holder() == "a"
    assert 0 < store.redis.pttl(store.lease_key) <= 10_000


def test_drop_lease_drops_only_the_given_holders(store: Store) -> None:
    store.redis.delete(store.lease_key)
    assert store.hold_lease("a", 10)
    assert not store.drop_lease("b")
    assert store.drop_lease("a")
    assert store.lease_holder() is None


def test_user_keys_share_the_users_hash_tag(config: Config) -> None:
    assert user_key(config.key_prefix, "alice", "chat") == f"{config.key_prefix}{{alice}}:chat"
    assert user_key(config.key_prefix, "alice", "notif") == f"{config.key_prefix}{{alice}}:notif"


def _rows(store: Store, user: str, kind: str) -> list[tuple[str, bytes]]:
    return [(msg_id.decode(), fields[b"m"])
            for msg_id, fields in store.redis.xrange(store.key(user, kind))]
