"""pushapp on Redis Sentinel: with ``REDIS_URL=redis+sentinel://…/MASTER`` the gateway
stores on the master the sentinels name and follows it through a failover, on a real
master, replica and three sentinels (tests/redis_servers.py)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import redis

from redis_servers import HOST, Sentinels, redis_binary
from support import Gateway, uid, wait_for

pytestmark = pytest.mark.fault


def test_the_gateway_follows_the_master_through_a_failover(tmp_path_factory):
    group = Sentinels(tmp_path_factory.mktemp("sentinel"), redis_binary()).start()
    # The test's own client, as a business server's: the master of the moment.
    master = SimpleNamespace(url=f"redis://{HOST}:{group.master.port}/0")
    gateway = Gateway(master, tmp_path_factory.mktemp("sentinel") / "gunicorn.log",
                      REDIS_URL=group.url)
    client = None
    try:
        gateway.start()
        user, away = uid(), uid()
        client = gateway.client()
        client.login(user)
        gateway.publish("notification", {"toWho": [user], "needStore": True, "n": 1})
        assert json.loads(client.expect("notification"))["n"] == 1
        answer = gateway.api("POST", "/notifications",
                             json={"toWho": [away], "needStore": True, "n": 2})
        assert answer.status_code == 200 and answer.json()["stored"] == 1
        # Redis replicates asynchronously (docs/deployment.md): wait for the replica to
        # have it before the master goes.
        assert gateway.redis.wait(1, 5000) == 1

        group.master.kill()
        wait_for(lambda: not gateway.is_ready(), timeout=10,
                 what="the gateway to say it is not ready while the master is gone")
        promoted = group.replica
        wait_for(lambda: promoted.info("replication")["role"] == "master", timeout=30,
                 what="the sentinels to promote the replica")
        gateway.redis = redis.Redis(HOST, promoted.port)
        wait_for(gateway.is_ready, timeout=30, what="the gateway ready on the new master")

        # The listener subscribed again, on the new master; the socket stayed connected.
        gateway.publish("notification", {"toWho": [user], "needStore": True, "n": 3})
        assert json.loads(client.expect("notification", timeout=15))["n"] == 3
        later = gateway.client()
        later.login(away)
        assert json.loads(later.expect("notification"))["n"] == 2
        later.close()
        gateway.assert_unharmed()
    finally:
        if client is not None:
            client.close()
        gateway.terminate()
        gateway.wait()
        group.stop()


def test_clients_keep_chatting_through_a_forced_failover(tmp_path_factory):
    """``SENTINEL FAILOVER``: the master hands over to its replica while both stay up (the
    old one is made a replica): the gateway's connections to it must not keep writing to
    a replica, and its sockets stay connected and chatting."""
    group = Sentinels(tmp_path_factory.mktemp("sentinel"), redis_binary()).start()
    master = SimpleNamespace(url=f"redis://{HOST}:{group.master.port}/0")
    gateway = Gateway(master, tmp_path_factory.mktemp("sentinel") / "gunicorn.log",
                      REDIS_URL=group.url, CHAT_FILTER="direct")
    clients = []
    try:
        gateway.start()
        alice, bob, away = uid(), uid(), uid()
        sender, receiver = gateway.client(), gateway.client()
        clients += [sender, receiver]
        sender.login(alice)
        receiver.login(bob)
        assert sender.call("chat", {"to": bob, "n": 0}) == 1
        assert [chat["n"] for chat in receiver.expect_chats(1)] == [0]
        answer = gateway.api("POST", "/notifications",
                             json={"toWho": [away], "needStore": True, "n": 1})
        assert answer.status_code == 200 and answer.json()["stored"] == 1
        assert gateway.redis.wait(1, 5000) == 1

        group.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", group.name)
        promoted = group.replica
        wait_for(lambda: promoted.info("replication")["role"] == "master", timeout=30,
                 what="the sentinels to promote the replica")
        wait_for(lambda: group.master.info("replication")["role"] == "slave", timeout=30,
                 what="the old master to be made a replica")
        gateway.redis = redis.Redis(HOST, promoted.port)

        # The same sockets chat on: each chat acked 1 (a chat sent during the switch may
        # be refused, "temporarily unavailable", and is sent again) arrives.
        sent = []
        for n in range(1, 6):
            wait_for(lambda n=n: sender.call("chat", {"to": bob, "n": n}) == 1, timeout=30,
                     what=f"chat {n} acked")
            sent.append(n)
        got = []
        while not set(sent) <= set(got):
            got += [chat["n"] for chat in receiver.expect_chats(1, timeout=15)]
        later = gateway.client()
        clients.append(later)
        later.login(away)
        assert json.loads(later.expect("notification"))["n"] == 1
        gateway.assert_unharmed()
    finally:
        for client in clients:
            client.close()
        gateway.terminate()
        gateway.wait()
        group.stop()
