"""``STORE_WAIT_REPLICAS``: a stored message counts as stored only once that many replicas
have it (``WAIT`` after the append, on the append's connection), on a real master and
replica. The replica is paused with SIGSTOP: the master still counts it as connected,
and it acknowledges nothing until SIGCONT.
"""
from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis

from pushapp.config import Config
from pushapp.store.lane import KEPT, Lane
from pushapp.store.redis_url import connect
from pushapp.store.store import NotReplicated, Store
from redis_servers import HOST, Server, redis_binary
from support import Gateway, refused_start, uid, wait_for

TIMEOUT_MS = 300
# What a failed store may take beyond the WAIT's timeout on a loaded machine.
SLACK = 5.0
_VOLATILE = ("--save", "", "--appendonly", "no")


class Pair:
    """A master and its replica (``replicaof``)."""

    def __init__(self, directory) -> None:
        binary = redis_binary()
        # The replica's first sync at once, not after Redis 7's 5 s of diskless delay.
        self.master = Server(binary, directory / "master", *_VOLATILE,
                             "--repl-diskless-sync-delay", "0")
        self.replica = Server(binary, directory / "replica", *_VOLATILE,
                              "--replicaof", HOST, "0")
        self.replica.args[self.replica.args.index("--replicaof") + 2] = str(self.master.port)
        self.url = f"redis://{HOST}:{self.master.port}/0"

    def start(self) -> "Pair":
        for server in (self.master, self.replica):
            server.start().wait_ready()
        wait_for(lambda: self.replica.info("replication").get("master_link_status") == "up",
                 30, "the replica to sync")
        # The master counts a replica in WAIT only once it has its first ack, which may
        # come after the replica sees its link up.
        wait_for(lambda: self.master.info("replication").get("slave0", {}).get("state")
                 == "online", 30, "the master to count its replica")
        return self

    @contextlib.contextmanager
    def replica_paused(self) -> Iterator[None]:
        self.replica.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.replica.process.send_signal(signal.SIGCONT)

    def on_replica(self, key: str) -> list[bytes]:
        """The messages of stream ``key`` as the replica has them now."""
        rows = redis.Redis(HOST, self.replica.port).xrange(key)
        return [fields[b"m"] for _, fields in rows]

    def stop(self) -> None:
        self.replica.kill()
        self.master.kill()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:
    started = Pair(tmp_path_factory.mktemp("replicated")).start()
    yield started
    started.stop()


def _store(pair: Pair, replicas: int) -> Store:
    config = Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": pair.url,
                              "KEY_PREFIX": f"wait{uid()}:",
                              "STORE_WAIT_REPLICAS": str(replicas),
                              "STORE_WAIT_TIMEOUT_MS": str(TIMEOUT_MS)})
    return Store(config, connect(config))


@contextlib.contextmanager
def lane_busy(lane: Lane) -> Iterator[None]:
    """As while other greenlets' batches are out on every connection the lane keeps (the
    tests run without gevent's patching, so none can be caught in flight)."""
    idle, kept = lane._idle, lane._kept
    lane._idle, lane._kept = [], KEPT
    try:
        yield
    finally:
        lane._idle, lane._kept = idle, kept

def test_a_stored_message_is_on_the_replica_when_the_store_returns(pair: Pair) -> None:
    store, user = _store(pair, 1), uid()
    [chat] = store.store_chats([(user, b'{"n":1}')])
    [notification] = store.store_notification([user], b'{"n":2}')
    assert chat.id and notification.id
    # No WAIT on this side: the store's own made sure.
    assert pair.on_replica(store.key(user, "chat")) == [b'{"n":1}']
    assert pair.on_replica(store.key(user, "notif")) == [b'{"n":2}']


def test_too_few_replicas_fail_the_store_on_every_path_within_the_timeout(pair: Pair) -> None:
    store, user = _store(pair, 1), uid()
    with pair.replica_paused():
        started = time.monotonic()
        with pytest.raises(NotReplicated, match=f"stored on the master but not yet on 1 "
                                                f"replica\\(s\\) within {TIMEOUT_MS} ms"):
            store.store_chats([(user, b'{"n":1}')])
        assert TIMEOUT_MS / 1000 * 0.9 <= time.monotonic() - started < TIMEOUT_MS / 1000 + SLACK
        with pytest.raises(NotReplicated):
            store.store_notification([user, uid()], b'{"n":2}')
        # The lane's connections all busy with other batches: the store and its WAIT go on
        # one connection of the pool (a WAIT on a connection that wrote nothing would
        # answer 1 at once).
        with lane_busy(store._lane), pytest.raises(NotReplicated):
            store.store_chats([(user, b'{"n":3}')])
        # A Redis that lost its scripts: EVAL and a WAIT of its own, in a second batch.
        store.redis.script_flush()
        with pytest.raises(NotReplicated):
            store.store_chats([(user, b'{"n":4}')])
    # They are on the master all the same, and reach the replica once it runs again.
    stored = [b'{"n":1}', b'{"n":3}', b'{"n":4}']
    assert [fields[b"m"] for _, fields in store.redis.xrange(store.key(user, "chat"))] == stored
    wait_for(lambda: pair.on_replica(store.key(user, "chat")) == stored, 10,
             "the replica to catch up")
    assert store.store_chats([(user, b'{"n":5}')])[0].id


def test_with_0_a_store_waits_for_no_replica(pair: Pair) -> None:
    store, user = _store(pair, 0), uid()
    with pair.replica_paused():
        started = time.monotonic()
        [placement] = store.store_chats([(user, b'{"n":1}')])
        assert placement.id and time.monotonic() - started < TIMEOUT_MS / 1000


def test_the_gateway_answers_503_and_retries_while_no_replica_acknowledges(
        pair: Pair, tmp_path_factory) -> None:
    gateway = Gateway(SimpleNamespace(url=pair.url),
                      tmp_path_factory.mktemp("wait") / "gunicorn.log",
                      STORE_WAIT_REPLICAS=1, STORE_WAIT_TIMEOUT_MS=TIMEOUT_MS,
                      CHAT_FILTER="direct", KEY_PREFIX=f"gw{uid()}:")
    client = None
    try:
        gateway.start()
        away, sender, other = uid(), uid(), uid()
        answer = gateway.api("POST", "/notifications",
                             json={"toWho": [away], "needStore": True, "n": 1})
        assert answer.status_code == 200 and answer.json()["stored"] == 1
        assert pair.on_replica(gateway.user_key(away, "notif")) == [
            json.dumps({"toWho": [away], "needStore": True, "n": 1},
                       separators=(",", ":")).encode()]
        client = gateway.client()
        client.login(sender)
        assert client.call("chat", {"to": other, "text": "replicated"}) == 1

        key = {"Idempotency-Key": uid("k")}
        body = {"toWho": [away], "needStore": True, "n": 2}
        with pair.replica_paused():
            started = time.monotonic()
            refused = gateway.api("POST", "/notifications", headers=key, json=body)
            assert time.monotonic() - started < TIMEOUT_MS / 1000 + SLACK
            assert refused.status_code == 503, refused.text
            assert (f"not counted as stored: stored on the master but not yet on 1 replica(s) "
                    f"within {TIMEOUT_MS} ms") in refused.json()["error"]
            # A client's chat (CHAT_FILTER=direct) gets its error ack.
            assert client.call("chat", {"to": other, "text": "unreplicated"}) == {
                "error": "temporarily unavailable, try again"}
            # A chat heard on the channel is retried, as on any Redis failure.
            gateway.publish("snschat", {"from": sender, "to": other, "text": "heard"})
            wait_for(lambda: "not stored yet" in gateway.log_text(), 10,
                     "the listener to retry the chat")
        # The Idempotency-Key was not kept: the retry is handled, not replayed.
        retried = gateway.api("POST", "/notifications", headers=key, json=body)
        assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers
        wait_for(lambda: b"heard" in b"".join(pair.on_replica(gateway.user_key(other, "chat"))),
                 15, "the listener's retry to store the chat")
        # At least once: what failed is on the master too, so the notification is there
        # twice.
        assert [json.loads(m)["n"] for m in pair.on_replica(gateway.user_key(away, "notif"))
                ] == [1, 2, 2]
        gateway.assert_unharmed()
    finally:
        if client is not None:
            client.close()
        gateway.terminate()
        gateway.wait()


def test_gunicorn_refuses_it_on_a_cluster_in_one_line() -> None:
    said = refused_start(AUTH_MODE="insecure", REDIS_URL="redis+cluster://127.0.0.1:7000",
                         STORE_WAIT_REPLICAS="1")
    [line] = said.splitlines()
    assert line.startswith("pushapp: STORE_WAIT_REPLICAS=1 is not supported on Redis Cluster")
