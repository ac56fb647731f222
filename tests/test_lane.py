"""The store's own connections for a chat's commands (pushapp/store/lane.py), against a real
Redis: what it answers, a script Redis has lost, batches at the same moment, and a
connection that breaks.
"""
from __future__ import annotations

import pytest
import redis

from pushapp.store.lane import KEPT, Lane
from pushapp.store.store import Store
from support import uid


def test_replies_come_in_order_and_a_failed_command_answers_its_error(store: Store) -> None:
    key = f"lane{uid()}"
    lane = Lane(store.redis)
    answers = lane.execute([("SET", key, "x"), ("XADD", key, "*", "m", "1"), ("GET", key)])
    assert answers[0] == b"OK" and answers[2] == b"x"
    assert isinstance(answers[1], redis.ResponseError) and "WRONGTYPE" in str(answers[1])


def test_a_script_redis_lost_runs_once_after_script_flush(store: Store) -> None:
    user = uid()
    store.store_chats([(user, b'{"n":1}')])
    store.redis.script_flush()
    [placement] = store.store_chats([(user, b'{"n":2}')])
    assert placement.id is not None
    rows = store.redis.xrange(store.key(user, "chat"))
    assert [fields[b"m"] for _, fields in rows] == [b'{"n":1}', b'{"n":2}']


def test_batches_at_the_same_moment_get_a_connection_each_then_the_pools(store: Store) -> None:
    lane = Lane(store.redis)
    kept, out = [], []
    for _ in range(KEPT):
        [client_id] = lane.execute([("CLIENT", "ID")])
        kept.append(client_id)
        # As if its batch were still out (the tests run without gevent's patching, so a
        # batch cannot be caught in flight): the next batch needs another connection.
        out.append(lane._idle.pop())
    assert len(set(kept)) == KEPT
    pool = store.redis.connection_pool
    [other] = lane.execute([("CLIENT", "ID")])
    assert other not in kept and lane._kept == KEPT
    connection = pool.get_connection()  # the one it lent last: the pool is a stack
    try:
        connection.send_command("CLIENT", "ID")
        assert connection.read_response() == other
    finally:
        pool.release(connection)
    lane._idle.extend(out)
    assert lane.execute([("CLIENT", "ID")])[0] in kept


def test_a_broken_connection_raises_and_the_next_batch_connects_again(store: Store) -> None:
    lane = Lane(store.redis)
    name = f"lane{uid()}"
    lane.execute([("CLIENT", "SETNAME", name)])
    store.redis.client_kill_filter(_id=_client_id(store, name))
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        lane.execute([("PING",)])
    assert lane.execute([("PING",)]) == [b"PONG"]


def _client_id(store: Store, name: str) -> int:
    [found] = [client["id"] for client in store.redis.client_list() if client["name"] == name]
    return int(found)


def test_a_command_after_the_scripts_runs_in_every_batch_on_their_connection(
        store: Store) -> None:
    lane, key = Lane(store.redis), f"lane{uid()}"
    script = store.redis.register_script("return redis.call('INCR', KEYS[1])")
    store.redis.script_load(script.script)
    answers, followed = lane.scripts(script, [([key], [])], then=("CLIENT", "ID"))
    [own] = lane.execute([("CLIENT", "ID")])
    assert (answers, followed) == ([1], [own])
    store.redis.script_flush()
    answers, followed = lane.scripts(script, [([key], []), ([key], [])], then=("CLIENT", "ID"))
    assert (answers, followed) == ([2, 3], [own, own])
