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

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import redis
import requests
from redis.commands.core import Script

from pushapp.config import Config
from pushapp.store import migration
from pushapp.store.capped import Oversized, capped_client
from pushapp.store.idempotency_records import IdempotencyRecords
from pushapp.store.inbox_stream import InboxStream
from pushapp.store.redis_url import connect, sharded_pubsub
from pushapp.store.slots import batched
from pushapp.store.store import Presence, Store, user_key
from pushapp.store.subscription import Subscription
from redis_servers import HOST, Cluster, redis7_binary, redis_binary, version
from support import Client, Gateway, uid, wait_for


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

    # Each slot's call goes to its master by name: no round trip per call to ask a node
    # for its keys (COMMAND GETKEYS, what redis-py's cluster pipeline does otherwise).
    getkeys = _getkeys_calls(cluster)
    notified = store.store_notification(users[::-1], b'{"n":1}')
    assert _getkeys_calls(cluster) == getkeys
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


def _getkeys_calls(cluster: Cluster) -> int:
    return sum(node.client.info("commandstats").get("cmdstat_command|getkeys", {})
               .get("calls", 0) for node in cluster.masters)


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


def test_upgrade_keys_finds_nothing_to_move_and_marks_the_layout(cluster_config: Config,
                                                                 store: Store) -> None:
    assert migration.upgrade(cluster_config, store.redis, "test") == 0
    assert store.redis.get(cluster_config.key("layout")) == migration.LAYOUT


def _next_message(subscription: Subscription) -> tuple[str, bytes | Oversized]:
    def heard() -> tuple[str, bytes | Oversized] | None:
        return subscription.next() if subscription.readable(0.1) else None

    return wait_for(heard, what="a message on the subscription")


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "plain"])
def test_one_subscription_hears_the_business_and_signal_channels_capped(
        cluster: Cluster, sharded: bool) -> None:
    """Redis 7 masters: the signal channel is sharded, as the store chose; ``plain`` is
    what a cluster with a master older than 7.0 gets."""
    config = Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": cluster.url,
                              "MAX_CHANNEL_MESSAGE_BYTES": "1000"})
    client = capped_client(config, "test-capped", exempt=(own := config.key("node", uid())))
    if sharded:
        redis7_binary()  # the cluster's binary when there is one
        assert sharded_pubsub(client)
    subscription = Subscription(client, own, sharded)
    business = uid("business")
    publisher = Store(config, connect(config))
    holder = cluster.master_of(own)
    try:
        subscription.subscribe(own, business)
        wait_for(lambda: holder.client.pubsub_numsub(business)[0][1],
                 what="the subscription on the master of the signal channel's slot")
        # A PUBLISH on any master reaches it (and counts there only).
        for master in cluster.masters:
            assert master.client.publish(business, master.port) == (master is holder)
            assert _next_message(subscription) == (business, str(master.port).encode())
        signal = b"s" * 5000  # a signal is exempt from the cap
        if sharded:
            assert publisher.sharded and publisher.publish(own, signal) == 1
        else:
            assert holder.client.publish(own, signal) == 1
        assert _next_message(subscription) == (own, signal)
        publisher.publish(business, b"b" * 5000)
        channel, data = _next_message(subscription)
        assert channel == business and isinstance(data, Oversized) and data.size == 5000
    finally:
        subscription.close()
        publisher.redis.close()


# The gateways: two gunicorn processes of one worker each, as two hosts would run them,
# on the cluster. The chat filter is the gateway itself, so that chats from clients are
# stored and delivered without a filter server.

@pytest.fixture(scope="module")
def gateways(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[list[Gateway]]:
    config = Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": cluster.url})
    # The tests' own client, as a business server's (Gateway.redis): the whole cluster.
    seed = SimpleNamespace(url=f"redis://{HOST}:{cluster.masters[0].port}/0")
    started = []
    try:
        for _ in range(2):
            gateway = Gateway(seed, tmp_path_factory.mktemp("gateway") / "gunicorn.log",
                              REDIS_URL=cluster.url, CHAT_FILTER="direct")
            gateway.redis = connect(config)
            started.append(gateway)
            gateway.start()
        yield started
        for gateway in started:
            gateway.assert_unharmed()
    finally:
        for gateway in started:
            gateway.terminate()
        for gateway in started:
            gateway.wait()


def _publish(cluster: Cluster, channel: str, message: dict) -> None:
    """PUBLISH ``message`` once a gateway listens on ``channel``: on a cluster a PUBLISH
    counts only the subscribers of the node it ran on, so the test asks every node."""
    live = [node for node in cluster.nodes if node.process.poll() is None]
    wait_for(lambda: any(node.client.pubsub_numsub(channel)[0][1] for node in live),
             what=f"a listener on {channel}")
    live[0].client.publish(channel, json.dumps(message))


@pytest.fixture
def logged_in(cluster: Cluster, gateways: list[Gateway]
              ) -> Iterator[Callable[[int], list[tuple[str, Client]]]]:
    """Log in users whose keys sit ``each`` on each master, on the two gateways in turn;
    all are closed after the test."""
    made: list[Client] = []

    def log_in(each: int) -> list[tuple[str, Client]]:
        users = _users_on_every_master(
            cluster, lambda user: user_key("pushapp:", user, "chat"), each)
        pairs = []
        for index, user in enumerate(users):
            client = gateways[index % 2].client()
            made.append(client)
            client.login(user)
            pairs.append((user, client))
        return pairs

    yield log_in
    for client in made:
        client.close()


def test_chats_and_notifications_reach_users_on_every_master_and_gateway(
        cluster: Cluster, gateways: list[Gateway], logged_in) -> None:
    pairs = logged_in(2)
    first = gateways[0]
    # Each client chats to the next, through whichever gateway it is on.
    for (_, client), (to, _) in zip(pairs, pairs[1:] + pairs[:1]):
        assert client.call("chat", {"to": to, "text": f"hi {to}"}) == 1
    for user, client in pairs:
        assert [chat["text"] for chat in client.expect_chats(1)] == [f"hi {user}"]
    # From a business server, on the channels.
    users = [user for user, _ in pairs]
    for user in users:
        _publish(cluster, "snschat", {"from": "biz", "to": user, "n": 1})
    _publish(cluster, "notification", {"toWho": users, "needStore": True, "n": 2})
    for user, client in pairs:
        assert client.expect_chats(1)[0]["n"] == 1
        assert json.loads(client.expect("notification"))["n"] == 2
    # Acks removed exactly what was acked: nothing is left.
    for user in users:
        wait_for(lambda u=user: not first.pending("chat", u) and not first.pending("notif", u),
                 what=f"{user}'s acked messages to leave the store")
    assert first.api("GET", f"/users/{users[0]}/presence").json()["online"] is True
    assert first.api("GET", "/users/online?limit=1000").json()["users"]


def test_pending_messages_at_login_and_the_http_api(cluster: Cluster, gateways: list[Gateway],
                                                    logged_in) -> None:
    offline = _users_on_every_master(cluster, lambda u: user_key("pushapp:", u, "chat"), 1)
    first, second = gateways
    answer = first.api("POST", "/notifications",
                       json={"toWho": offline, "needStore": True, "n": 1})
    assert answer.status_code == 200 and answer.json()["stored"] == len(offline)
    chats = second.api("POST", "/chats/batch", json={"messages": [
        {"from": "biz", "to": user, "n": 2} for user in offline]})
    assert [result["stored"] for result in chats.json()["results"]] == [1] * len(offline)
    assert second.api("GET", f"/users/{offline[0]}/pending").json()["pending"] \
        == {"chat": 1, "notification": 1}
    for index, user in enumerate(offline):
        client = gateways[index % 2].client()
        try:
            client.login(user)
            assert json.loads(client.expect("notification"))["n"] == 1
            assert client.expect_chats(1)[0]["n"] == 2
            wait_for(lambda u=user: not first.pending("chat", u), what="the ack")
        finally:
            client.close()


def test_a_login_on_the_other_gateway_kicks_the_first(gateways: list[Gateway]) -> None:
    user = uid()
    first, second = gateways[0].client(), gateways[1].client()
    try:
        first.login(user, device="phone")
        second.login(user, device="laptop")
        first.expect("logout")
        first.expect("disconnect")
        assert gateways[0].presence(user)[0] == gateways[1].node
    finally:
        first.close()
        second.close()


def test_each_message_is_stored_once_and_delivered_once(cluster: Cluster, logged_in) -> None:
    pairs = logged_in(2)
    for n in range(20):
        for user, _ in pairs:
            _publish(cluster, "snschat", {"to": user, "n": n})
    for user, client in pairs:
        assert [chat["n"] for chat in client.expect_chats(20)] == list(range(20))
    # The last chat came after every one before it: a second copy would have come too.
    for user, client in pairs:
        _publish(cluster, "snschat", {"to": user, "n": "last"})
        assert [chat["n"] for chat in client.expect_chats(1)] == ["last"]


class _ChatLoad:
    """Chats to ``users`` over the HTTP API of the gateways in turn, from a thread, as
    fast as they are answered; ``stored`` holds (user, n, when) of each one answered as
    stored. Answers of a failover (503: Redis unavailable) are expected and not kept."""

    def __init__(self, gateways: list[Gateway], users: list[str]) -> None:
        self.gateways = gateways
        self.users = users
        self.stored: list[tuple[str, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for n in itertools.count():
            for user in self.users:
                if self._stop.is_set():
                    return
                try:
                    answer = self.gateways[n % 2].api("POST", "/chats",
                                                      json={"to": user, "n": n})
                except requests.RequestException:
                    continue
                if answer.status_code == 200 and answer.json()["stored"] == 1:
                    self.stored.append((user, n, time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _chats_until(client: Client, wanted: set) -> set:
    """The numbers (``n``) of the chats ``client`` is sent until it has had all of
    ``wanted``, or none comes for 30 s."""
    got: set = set()
    while not wanted <= got:
        try:
            got |= {chat["n"] for chat in client.expect_chats(1, timeout=30)}
        except AssertionError:
            break
    return got


@pytest.mark.fault
def test_a_killed_masters_replica_takes_over_and_nothing_it_had_is_lost(
        cluster: Cluster, gateways: list[Gateway], logged_in) -> None:
    """Kept last in this module: a master of the module's cluster stays down after it.
    The master killed holds the inbox stream and the keys of one of the users."""
    pairs = logged_in(1)
    users = [user for user, _ in pairs]
    inbox = gateways[0].key("inbox")
    victim = cluster.master_of(inbox)
    late = next(user for user in iter(uid, None)
                if cluster.master_of(user_key("pushapp:", user, "chat")) is victim)
    for n in range(10):
        answer = gateways[n % 2].api("POST", "/chats", json={"to": late, "n": n})
        assert answer.json()["stored"] == 1
    # Redis replicates asynchronously (docs/deployment.md): the test waits for each
    # replica to have what its master holds (the presences, the chats for ``late``).
    for master in cluster.masters:
        assert master.client.execute_command("WAIT", 1, 5000) == 1

    load = _ChatLoad(gateways, users)
    try:
        wait_for(lambda: len(load.stored) >= 3 * len(users), what="chats stored under load")
        victim.kill()
        wait_for(lambda: not gateways[0].is_ready(), what="readiness to say a master is down")
        # A worker starting now asks the nodes that answer which pub/sub its signals use.
        config = Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": cluster.url})
        assert sharded_pubsub(connect(config)) == (version(redis_binary()) >= (7, 0))
        replica = cluster.replica_of(victim)
        wait_for(lambda: replica.info("replication")["role"] == "master", 30,
                 "the replica's promotion")
        wait_for(lambda: all(gateway.is_ready() for gateway in gateways), 30,
                 "the gateways ready again, by themselves")
        promoted_at = time.monotonic()
        wait_for(lambda: {user for user, _, when in load.stored if when > promoted_at}
                 == set(users), 30, "a chat stored for every user after the promotion")
    finally:
        load.stop()
    # The durable inbox is read again, on the promoted replica.
    gateways[0].redis.xadd(inbox, {"channel": "snschat",
                                   "data": json.dumps({"to": users[0], "n": "inbox"})})

    # The sockets stayed open and are delivered every chat stored after the promotion,
    # also those whose signal between workers went out while the master of the signal's
    # channel was changing, or while their worker's heartbeat could not be written.
    for user, client in pairs:
        wanted = {n for to, n, when in load.stored if to == user and when > promoted_at}
        wanted |= {"inbox"} if user == users[0] else set()
        missing = wanted - _chats_until(client, wanted)
        assert not missing, f"chats stored for {user} never delivered: {missing}"
    # What the replica had before the kill is all there.
    client = gateways[1].client()
    try:
        client.login(late)
        assert sorted(chat["n"] for chat in client.expect_chats(10)) == list(range(10))
    finally:
        client.close()
