"""Fault tests: real processes killed, Redis restarted, connections cut, many clients at
once, floods of garbage. Each prints published / delivered / duplicates / lost and
asserts that nothing is lost (docs/delivery.md). Run apart with ``bin/test -m fault``.
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter

import pytest
import redis
import socketio
import websocket

from support import WAIT, Gateway, uid, wait_for

pytestmark = pytest.mark.fault


class Publisher(threading.Thread):
    """A business server sending ``count`` chats round-robin to ``users``, in order, each
    again until it is accepted: PUBLISH heard by a gateway (> 0), or with ``inbox``,
    added to the gateway's durable inbox stream."""

    def __init__(self, redis_url: str, name: str, users: list[str], count: int,
                 pause: float = 0.0, inbox: str = "") -> None:
        super().__init__(daemon=True)
        self.redis_url, self.tag, self.users, self.count, self.pause = (
            redis_url, name, users, count, pause)
        self.inbox = inbox
        self.sent = 0
        self.retries = 0

    def _send(self, client: redis.Redis, message: str) -> bool:
        if self.inbox:
            return bool(client.xadd(self.inbox, {"channel": "snschat", "data": message}))
        return client.publish("snschat", message) > 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        for seq in range(self.count):
            message = json.dumps({"from": self.tag, "to": self.users[seq % len(self.users)],
                                  "seq": seq})
            while True:
                try:
                    if self._send(client, message):
                        break
                except redis.RedisError:
                    pass
                self.retries += 1
                time.sleep(0.05)
            self.sent += 1
            if self.pause:
                time.sleep(self.pause)


def report(name: str, published: int, deliveries: list[tuple], users: int = 0) -> dict:
    """Count what arrived; print and return published, delivered, duplicates, lost."""
    counts = Counter(deliveries)
    figures = {"published": published, "delivered": len(counts),
               "duplicates": sum(n - 1 for n in counts.values()),
               "lost": published - len(counts)}
    print(f"\n{name}: " + json.dumps({**figures, **({"users": users} if users else {})}))
    return figures


def assert_in_order(received: list[dict]) -> None:
    """Per publisher, first deliveries come in publish order (resends may repeat)."""
    seen: dict[str, set[int]] = {}
    last: dict[str, int] = {}
    for message in received:
        sender, seq = message["from"], message["seq"]
        if seq in seen.setdefault(sender, set()):
            continue
        assert seq > last.get(sender, -1), f"{sender} {seq} came after {last[sender]}"
        seen[sender].add(seq)
        last[sender] = seq


class ReconnectingUser:
    """A python-socketio client that reconnects by itself and logs in again each time,
    as a mobile app does; it acks every batch and records every message."""

    def __init__(self, url: str, user: str) -> None:
        self.user = user
        self.received: list[dict] = []
        self.connects = 0
        self.sio = socketio.Client(reconnection=True, reconnection_delay=0.2,
                                   reconnection_delay_max=1, randomization_factor=0)
        self.sio.on("connect", self._login)
        self.sio.on("chat", self._chat)
        self.sio.connect(url, transports=["websocket"], wait_timeout=WAIT)

    def _login(self) -> None:
        self.connects += 1
        self.sio.emit("login", {"myAuraId": self.user, "deviceId": "phone"})

    def _chat(self, batch: str) -> int:
        messages = json.loads(batch)
        self.received.extend(messages)
        return len(messages)

    def close(self) -> None:
        self.sio.disconnect()


def test_worker_killed_mid_stream_loses_nothing(start_gateway):
    """Through the durable inbox: a PUBLISH heard by the worker an instant before the kill
    dies with it (pub/sub keeps nothing), an inbox entry does not (docs/delivery.md)."""
    gateway = start_gateway(ACK_TIMEOUT=2)
    users = [ReconnectingUser(gateway.url, uid()) for _ in range(10)]
    try:
        wait_for(lambda: all(gateway.presence(u.user) for u in users), what="logins")
        publisher = Publisher(gateway.redis_server.url, "p", [u.user for u in users], 600,
                              pause=0.004, inbox=gateway.key("inbox"))
        publisher.start()
        wait_for(lambda: publisher.sent > 200, what="the stream to be under way")
        old = gateway.worker_pid()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: _new_worker(gateway, old), timeout=30, what="a new worker")
        publisher.join(60)
        assert publisher.sent == 600
        wait_for(lambda: sum(len({m["seq"] for m in u.received}) for u in users) == 600,
                 timeout=30, what="every message")
        figures = report("worker killed", 600,
                         [(m["from"], m["seq"]) for u in users for m in u.received])
        assert figures["lost"] == 0
        assert all(u.connects >= 2 for u in users), "clients should have reconnected"
        for u in users:
            assert_in_order(u.received)
    finally:
        for u in users:
            u.close()


def _new_worker(gateway: Gateway, old: int) -> bool:
    try:
        return gateway.worker_pid() != old
    except AssertionError:
        return False


def test_redis_restart_under_a_stream_loses_nothing_accepted(start_gateway):
    gateway = start_gateway(ACK_TIMEOUT=2)
    clients = [gateway.raw(auto_ack=True) for _ in range(5)]
    users = [uid() for _ in clients]
    for client, user in zip(clients, users):
        client.call("login", {"myAuraId": user})
    publisher = Publisher(gateway.redis_server.url, "p", users, 400, pause=0.005)
    publisher.start()
    wait_for(lambda: publisher.sent > 100, what="the stream to be under way")
    gateway.redis_server.stop()
    time.sleep(1.0)
    gateway.redis_server.start()
    publisher.join(90)
    assert publisher.sent == 400
    wait_for(lambda: len({(m["from"], m["seq"]) for c in clients for m in c.received}) == 400,
             timeout=40, what="every accepted message")
    figures = report("redis restarted", 400,
                     [(m["from"], m["seq"]) for c in clients for m in c.received])
    print(f"publisher retries while Redis was away: {publisher.retries}")
    assert figures["lost"] == 0 and publisher.retries > 0
    for client in clients:
        client.close()


def test_connection_cut_mid_batch_redelivers_only_the_unacked(gateway, user):
    first = gateway.raw()
    first.call("login", {"myAuraId": user, "deviceId": "d"})
    for seq in range(5):
        gateway.publish("snschat", {"from": "p", "to": user, "seq": seq})
    unacked: list[dict] = []
    while len(unacked) < 5:
        (batch,), _ = first.expect("chat")
        unacked += json.loads(batch)
    first.drop()
    second = gateway.raw(auto_ack=True)
    second.call("login", {"myAuraId": user, "deviceId": "d"})
    for seq in range(5, 8):
        gateway.publish("snschat", {"from": "p", "to": user, "seq": seq})
    wait_for(lambda: len(second.received) >= 8, what="the redelivery and the rest")
    delivered = unacked + second.received
    figures = report("connection cut", 8, [(m["from"], m["seq"]) for m in delivered])
    assert figures["lost"] == 0
    assert figures["duplicates"] == 5, "exactly the unacked batch comes twice"
    assert [m["mid"] for m in second.received[:5]] == [m["mid"] for m in unacked]
    wait_for(lambda: gateway.pending("chat", user) == [])
    second.close()


def test_many_clients_and_publishers_lose_nothing_and_keep_order(gateway):
    clients = [gateway.raw(auto_ack=True) for _ in range(200)]
    users = [uid() for _ in clients]
    for client, user in zip(clients, users):
        client.call("login", {"myAuraId": user})
    publishers = [Publisher(gateway.redis_server.url, f"p{i}", random.sample(users, 200), 1000)
                  for i in range(4)]
    for publisher in publishers:
        publisher.start()
    for publisher in publishers:
        publisher.join(120)
    total = sum(p.sent for p in publishers)
    assert total == 4000
    wait_for(lambda: sum(len(c.received) for c in clients) >= total, timeout=60,
             what="every message")
    figures = report("many clients", total,
                     [(m["from"], m["seq"]) for c in clients for m in c.received], len(users))
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    for client in clients:
        per_publisher: dict[str, list[int]] = {}
        for message in client.received:
            per_publisher.setdefault(message["from"], []).append(message["seq"])
        for seqs in per_publisher.values():
            assert seqs == sorted(seqs), "out of order"
        client.close()


GARBAGE_CHANNEL = [b"", b"nope", b"[]", b'{"to": []}', b'{"toWho": 7}', b"{" * 3000,
                   b'{"toWho": ["a"], "needStore": "y"}', os.urandom(64)]
GARBAGE_FRAMES = ["42", "42[", "42[\"chat\",", "43", "4x", "42[\"login\",{\"myAuraId\":[]}]",
                  "42[\"chat\",\"" + "x" * 3000 + "\"]", "42" + "[" * 2000]


def test_a_flood_of_garbage_between_good_messages_costs_no_memory(gateway, user):
    good = gateway.raw(auto_ack=True)
    good.call("login", {"myAuraId": user})
    vandal = gateway.raw()
    rss: list[int] = []
    for round_ in range(4):
        for n in range(1500):
            gateway.redis.publish("snschat", GARBAGE_CHANNEL[n % len(GARBAGE_CHANNEL)])
            gateway.redis.publish("notification", GARBAGE_CHANNEL[n % len(GARBAGE_CHANNEL)])
            if vandal.closed.is_set():
                vandal = gateway.raw()  # garbage gets a socket closed after RATE_STRIKES
            try:
                vandal.send_raw(GARBAGE_FRAMES[n % len(GARBAGE_FRAMES)])
            except (websocket.WebSocketException, OSError):
                vandal.closed.wait(WAIT)
            if n % 30 == 0:
                gateway.publish("snschat", {"from": "p", "to": user, "seq": round_ * 50 + n // 30})
        wait_for(lambda r=round_: len(good.received) >= (r + 1) * 50, what="the good ones")
        rss.append(gateway.worker_rss())
    figures = report("garbage flood", 200, [(m["from"], m["seq"]) for m in good.received])
    print(f"worker RSS after each round (MB): {[round(r / 2**20, 1) for r in rss]}")
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    assert rss[-1] - rss[1] < 8 * 2**20, "memory grew with the garbage"
    good.close()
    vandal.close()
