"""The router and the batching collector on their own, in this process: the router over a
real ``Store`` on a real Redis, handing over to a recorder in place of this worker's
delivery (what a signal to another worker carries is read off Redis, as that worker would);
the collector with greenlets and no gateway around either."""
from __future__ import annotations

import json
import time

import gevent
import orjson
import pytest
import redis

from pushapp.config import Config
from pushapp.ingest.routing import Router
from pushapp.kinds import Kind
from pushapp.sockets import signals
from pushapp.store.batching import Collector
from pushapp.store.store import Presence, Store
from support import uid, wait_for

HERE, THERE = "node-here", "node-there"


class Recorder:
    """This worker's delivery, as the router sees it: what it was handed."""

    node = HERE

    def __init__(self) -> None:
        self.by_user: dict[str, object] = {}
        self.stored: list[tuple[int, list[signals.Stored]]] = []
        self.unstored: list[tuple[list[str], str]] = []
        self.pushed: list[str] = []

    def deliver_stored(self, kind: int, stored: list[signals.Stored]) -> None:
        self.stored.append((kind, stored))

    def deliver_unstored(self, users: list[str], raw: str) -> None:
        self.unstored.append((users, raw))

    def kick(self, user: str, sid: str, logout: bool) -> None:
        raise AssertionError("no kick expected")

    def push(self, user: str) -> None:
        self.pushed.append(user)


@pytest.fixture
def config(store_config: Config) -> Config:
    return store_config


@pytest.fixture(autouse=True)
def nodes_alive(store: Store) -> None:
    for node in (HERE, THERE):
        store.heartbeat(node, 60)


def _online(store: Store, user: str, node: str) -> None:
    store.login(user, Presence(node, uid("sid"), "d", int(time.time() * 1000)), b"{}", {}, {})


def _listen(config: Config, store: Store, node: str) -> redis.client.PubSub:
    """A subscriber to ``node``'s signals, as that node's listener."""
    channel = signals.channel(config, node)
    listener = store.redis.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    wait_for(lambda: store.redis.pubsub_numsub(channel)[0][1] == 1, what="the subscription")
    return listener


def test_chats_are_stored_and_handed_to_the_node_of_each_recipient(config, store):
    here, there, away = uid(), uid(), uid()
    _online(store, here, HERE)
    _online(store, there, THERE)
    delivery, elsewhere = Recorder(), _listen(config, store, THERE)
    router = Router(config, store, delivery)
    chats = [(user, orjson.dumps({"to": user, "n": n}))
             for n, user in enumerate([here, there, away, here])]
    placements = router.chats(chats)

    assert [p.node for p in placements] == [HERE, THERE, None, HERE]
    [(kind, handed)] = delivery.stored
    assert kind == Kind.CHAT.flag
    # Two chats for one user in one step: the second follows on from the first.
    assert [(s.user, s.id, s.prev) for s in handed] == [
        (here, placements[0].id, None), (here, placements[3].id, placements[0].id)]
    assert delivery.pushed == [away]
    signal = None
    for _ in range(50):
        signal = elsewhere.get_message(timeout=0.1)
        if signal is not None:
            break
    received = Recorder()
    signals.read(json.loads(signal["data"]), received)
    assert [(s.user, s.id, json.loads(s.raw)["n"]) for s in received.stored[0][1]] == [
        (there, placements[1].id, 1)]
    elsewhere.close()


def test_a_notification_not_stored_asks_redis_only_for_who_is_not_here(config, store):
    here, there = uid(), uid()
    _online(store, there, THERE)
    delivery = Recorder()
    delivery.by_user[here] = object()  # connected to this worker: no lookup needed
    router = Router(config, store, delivery)
    placed = router.notification({"toWho": [here, there], "needStore": False, "n": 1},
                                 b'{"toWho": [], "n": 1}')
    assert {user: p.node for user, p in placed.items()} == {here: HERE, there: THERE}
    assert all(p.id is None for p in placed.values())
    assert delivery.unstored == [([here], '{"toWho": [], "n": 1}')]


def test_the_collector_runs_what_greenlets_ask_at_once_in_one_batch():
    batches: list[list[int]] = []

    def run(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        return [ValueError(f"no {item}") if item == 3 else item * 10 for item in items]

    collector: Collector[int, int] = Collector(run, limit=4)

    def ask(item: int) -> int | str:
        try:
            return collector.call(item)
        except ValueError as exc:
            return str(exc)

    asked = [gevent.spawn(ask, item) for item in range(6)]
    gevent.joinall(asked, timeout=5)
    assert [greenlet.value for greenlet in asked] == [0, 10, 20, "no 3", 40, 50]
    assert batches == [[0, 1, 2, 3], [4, 5]]


def test_the_collector_calls_back_each_item_of_a_batch_even_if_one_callback_fails():
    fail = False

    def run(items: list[int]) -> list[int]:
        if fail:
            raise redis.ConnectionError("Redis went away")
        return [item * 10 for item in items]

    collector: Collector[int, int] = Collector(run)
    heard: list[tuple[int, object]] = []

    def then(item: int) -> None:
        def done(answer: object) -> None:
            heard.append((item, answer))
            if item == 1:
                raise RuntimeError("a callback's bug")
        collector.then(item, done)

    for item in range(3):
        then(item)
    gevent.sleep(0.05)
    assert heard == [(0, 0), (1, 10), (2, 20)]
    heard.clear()
    fail = True
    for item in range(2):
        then(item)
    gevent.sleep(0.05)
    assert [item for item, _ in heard] == [0, 1]
    assert all(isinstance(answer, redis.ConnectionError) for _, answer in heard)


def test_the_collector_hands_a_failed_batch_to_each_caller():
    def run(items: list[int]) -> list[int]:
        raise redis.ConnectionError("Redis went away")

    collector: Collector[int, int] = Collector(run)
    asked = [gevent.spawn(collector.call, item) for item in range(3)]
    gevent.joinall(asked, timeout=5)
    assert all(isinstance(greenlet.exception, redis.ConnectionError) for greenlet in asked)


def test_the_subscription_reads_a_burst_of_messages_whole_or_in_pieces_in_order(
        store_config: Config, store: Store) -> None:
    """Messages published at once arrive together, some whole in one read of the socket
    and some in pieces (longer than a read): each is heard once, in order, whole, and
    only a business message over the cap is refused, however it arrived."""
    from pushapp.store.capped import Oversized, capped_client
    from pushapp.store.subscription import Subscription

    own, other = f"own{uid()}", f"other{uid()}"
    limit = store_config.max_channel_message_bytes
    subscription = Subscription(capped_client(store_config, "test", exempt=own), own, False)
    sent = [(other, b"a"), (other, b"b" * 100_000), (own, b"c" * (limit + 10)),
            (other, b"d" * limit), (other, b"e" * (limit + 1)), (other, b"f"),
            (other, b"\r\n$3\r\n*3"), (own, b"h")]
    try:
        subscription.subscribe(own, other)
        assert [subscription.next() for _ in range(2) if subscription.readable(5)] == [None] * 2
        with store.redis.pipeline(transaction=False) as pipe:
            for channel, data in sent * 3:
                pipe.publish(channel, data)
            pipe.execute()
        heard = [subscription.next() for _ in range(len(sent) * 3)
                 if subscription.readable(5)]
        refused = [data for _, data in heard if isinstance(data, Oversized)]
        assert [data.size for data in refused] == [limit + 1] * 3
        assert [(channel, data if isinstance(data, bytes) else b"e" * data.size)
                for channel, data in heard] == sent * 3
        assert not subscription.readable(0.2)
    finally:
        subscription.close()


def test_the_subscription_reads_messages_confirmations_and_health_checks(
        store_config: Config, store: Store) -> None:
    """pushapp.store.subscription on one server: messages as (channel, data), a message
    over the cap as Oversized, confirmations and the answers to redis-py's health-check
    PINGs as None (and counted off, as redis-py does), channels joined and left."""
    from pushapp.store.capped import Oversized, capped_client
    from pushapp.store.subscription import Subscription

    own, other = f"own{uid()}", f"other{uid()}"
    subscription = Subscription(capped_client(store_config, "test", exempt=own), own, False)

    def read(count: int) -> list:
        return [subscription.next() for _ in range(count) if subscription.readable(5)]

    try:
        subscription.subscribe(own, other)
        assert read(2) == [None, None]  # the two confirmations
        assert subscription.joined([other])
        subscription._pubsub.connection.next_health_check = 0  # a PING is due
        subscription.ping_if_due()
        assert subscription._pubsub.health_check_response_counter == 1
        store.redis.publish(own, b"signal")
        store.redis.publish(other, b"x" * (store_config.max_channel_message_bytes + 1))
        heard = read(3)
        assert heard[0] is None and subscription._pubsub.health_check_response_counter == 0
        assert heard[1] == (own, b"signal")
        assert heard[2][0] == other and isinstance(heard[2][1], Oversized)
        subscription.unsubscribe(other)
        assert read(1) == [None] and not subscription.joined([other])
    finally:
        subscription.close()
