"""One regression test for each of the seed's bugs (CONTRACT.md, "The seed's bugs")."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import redis

from support import Subscriber, clients_on_workers, uid, wait_for, without_mids

PUBLISHERS, PER_PUBLISHER = 20, 25


def _publish_concurrently(redis_url: str, channel: str, user: str) -> None:
    """PUBLISHERS business servers, each with its own connection, all at once."""
    start = threading.Barrier(PUBLISHERS)

    def publisher(p: int) -> None:
        client = redis.Redis.from_url(redis_url)
        start.wait()
        for n in range(PER_PUBLISHER):
            client.publish(channel, json.dumps({"from": f"p{p}", "to": user, "n": n}))
        client.close()

    threads = [threading.Thread(target=publisher, args=(p,)) for p in range(PUBLISHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _assert_each_once_in_order(messages: list[dict]) -> None:
    counts = Counter((m["from"], m["n"]) for m in messages)
    duplicates = [key for key, seen in counts.items() if seen > 1]
    assert not duplicates, f"delivered twice: {duplicates[:5]}"
    total = PUBLISHERS * PER_PUBLISHER
    assert len(counts) == total, f"lost {total - len(counts)}"
    for p in range(PUBLISHERS):
        order = [m["n"] for m in messages if m["from"] == f"p{p}"]
        assert order == sorted(order), f"publisher p{p} out of order: {order}"


def test_bug1_concurrent_messages_to_one_offline_user_are_all_stored(gateway, clients, user):
    _publish_concurrently(gateway.redis_server.url, "snschat", user)
    total = PUBLISHERS * PER_PUBLISHER
    wait_for(lambda: len(gateway.pending("chat", user)) == total, what=f"{total} stored")
    client = clients()
    client.login(user)
    _assert_each_once_in_order(client.expect_chats(total))
    wait_for(lambda: gateway.pending("chat", user) == [], what="all acked")


def test_bug1_concurrent_messages_to_one_online_user_arrive_once_each(gateway, clients, user):
    client = clients()
    client.login(user)
    _publish_concurrently(gateway.redis_server.url, "snschat", user)
    _assert_each_once_in_order(client.expect_chats(PUBLISHERS * PER_PUBLISHER))
    client.quiet("chat", 0.5)
    wait_for(lambda: gateway.pending("chat", user) == [], what="all acked")


def test_bug2_a_notification_ack_removes_only_that_notification(gateway, user):
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    for n in (1, 2, 3):
        gateway.publish("notification", {"toWho": [user], "needStore": True, "n": n})
    acks = [raw.expect("notification")[1] for _ in range(3)]
    raw.ack(acks[1])
    wait_for(lambda: [m["n"] for m in gateway.pending("notif", user)] == [1, 3])
    raw.close()


def test_bug3_chat_ack_counts_only_its_own_batch(gateway, user):
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    gateway.publish("snschat", {"from": "a", "to": user, "n": 1})
    (first,), first_ack = raw.expect("chat")
    for n in (2, 3):
        gateway.publish("snschat", {"from": "a", "to": user, "n": n})
    later: list[int] = []
    while len(later) < 2:
        (batch,), _ = raw.expect("chat")
        later += [m["n"] for m in json.loads(batch)]
    assert [m["n"] for m in json.loads(first)] == [1] and later == [2, 3]
    raw.ack(first_ack, 1)
    wait_for(lambda: [m["n"] for m in gateway.pending("chat", user)] == [2, 3],
             what="messages stored after the batch to stay")
    raw.close()


def test_bug4_each_socket_keeps_its_own_user(gateway, clients, channels):
    first, second = uid(), uid()
    a, b = clients(), clients()
    a.login(first)
    b.login(second)
    assert a.call("geo", {"lat": 1}) == 1
    published = channels.expect("geo", lambda m: m["geo"]["myAuraId"] in (first, second))
    assert published["geo"]["myAuraId"] == first


def test_bug5_events_cannot_rebind_a_socket_to_another_user(gateway, clients, user):
    victim = uid("victim")
    attacker, victim_client = clients(), clients()
    victim_client.login(victim)
    attacker.login(user)
    assert "does not match" in attacker.call("chat", {"from": victim, "to": "x"})["error"]
    assert "does not match" in attacker.call("geo", {"myAuraId": victim})["error"]
    assert gateway.presence(victim)[1] == victim_client.sio.get_sid()
    gateway.publish("snschat", {"from": "x", "to": victim, "secret": True})
    assert json.loads(victim_client.expect("chat"))[0]["secret"] is True
    attacker.quiet("chat", 0.5)


GARBAGE = [
    b"not json", b"", b"\xff\xfe\x00", b"[1, 2]", b"null", b"42", b'"text"',
    b"{" * 2000, b'{"from": "a"}', b'{"to": {"id": 1}}', b'{"to": ""}',
    b'{"toWho": "single"}', b'{"toWho": [["nested"]]}', b'{"toWho": ["a"], "needStore": "yes"}',
    json.dumps({"toWho": [f"u{i}" for i in range(10_001)], "needStore": True}).encode(),
]


def test_bug6_malformed_channel_messages_are_skipped_not_fatal(gateway, clients, user):
    client = clients()
    client.login(user)
    for data in GARBAGE:
        gateway.publish("snschat", data)
        gateway.publish("notification", data)
    gateway.publish("snschat", {"from": "a", "to": user, "after": "garbage"})
    gateway.publish("notification", {"toWho": [user], "needStore": False, "after": "garbage"})
    assert json.loads(client.expect("chat"))[0]["after"] == "garbage"
    assert json.loads(client.expect("notification"))["after"] == "garbage"
    log = gateway.log_text()
    assert "skipped a message on snschat: snschat message is not valid JSON" in log
    assert "skipped a message on notification: toWho has 10001 recipients" in log
    gateway.assert_unharmed()


def test_bug7_stored_lists_are_bounded_in_length(direct_gateway):
    user = uid()
    for n in range(8):
        direct_gateway.publish("in_chat", {"from": "a", "to": user, "n": n})
    wait_for(lambda: [m["n"] for m in direct_gateway.pending("chat", user)] == [3, 4, 5, 6, 7],
             what="only the newest STORE_MAX_ENTRIES=5 to stay")
    assert 0 < direct_gateway.redis.pttl(direct_gateway.user_key(user, "chat")) <= 2000


def test_bug7_stored_messages_expire(direct_gateway):
    user = uid()
    direct_gateway.publish("in_chat", {"from": "a", "to": user, "n": "old"})
    wait_for(lambda: direct_gateway.pending("chat", user))
    time.sleep(2.2)
    direct_gateway.publish("in_chat", {"from": "a", "to": user, "n": "new"})
    wait_for(lambda: [m["n"] for m in direct_gateway.pending("chat", user)] == ["new"],
             what="the message older than STORE_MAX_AGE=2s to go")
    wait_for(lambda: not direct_gateway.redis.exists(direct_gateway.user_key(user, "chat")),
             timeout=4, what="the idle stream to expire")


def test_bug8_next_batch_goes_at_once_and_login_resends_what_is_unacked(gateway, user):
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    gateway.publish("snschat", {"from": "a", "to": user, "n": 1})
    raw.expect("chat")
    sent = time.monotonic()
    gateway.publish("snschat", {"from": "a", "to": user, "n": 2})
    raw.expect("chat", timeout=2)
    assert time.monotonic() - sent < 1.0
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    (again,), ack_id = raw.expect("chat")
    assert [m["n"] for m in json.loads(again)] == [1, 2]
    raw.ack(ack_id, 2)
    wait_for(lambda: gateway.pending("chat", user) == [])
    raw.close()


@pytest.fixture(scope="module")
def two_workers(start_gateway):
    return start_gateway(WORKERS=2, PUSH_DELAY=30)


def _spread(gateway, count: int = 2) -> list:
    """Logged-in clients until they sit on ``count`` different workers; one per worker."""
    by_node: dict[str, tuple] = {}
    made = clients_on_workers(gateway, count)
    for client, user in made:
        by_node.setdefault(gateway.presence(user)[0], (client, user))
    for client, _ in made:
        if all(client is not kept for kept, _ in by_node.values()):
            client.close()
    return list(by_node.values())


def test_bug9_two_workers_store_each_message_once_and_reach_every_user(two_workers):
    history = Subscriber(two_workers.redis_server.url, "chat_message_history_channel")
    pairs = _spread(two_workers)
    try:
        for client, user in pairs:
            client.chat_ack = lambda batch: 0
            two_workers.publish("snschat", {"from": "a", "to": user, "once": True})
            assert without_mids(json.loads(client.expect("chat"))) == [
                {"from": "a", "to": user, "once": True}]
            assert len(two_workers.pending("chat", user)) == 1
            history.expect("chat_message_history_channel", lambda m, u=user: m["to"] == u)
        users = [user for _, user in pairs]
        two_workers.publish("notification", {"toWho": users, "needStore": True, "all": 1})
        for client, user in pairs:
            client.expect("notification")
            client.quiet("notification", 0.3)
        time.sleep(0.3)
        with pytest.raises(AssertionError):
            history.expect("chat_message_history_channel", timeout=0.3)
    finally:
        history.close()
        for client, _ in pairs:
            client.close()


def test_bug9_a_login_on_one_worker_logs_out_the_other(two_workers):
    """Each new device's login kicks the previous one; go on until one kick has crossed
    from one worker to the other."""
    user = uid()
    holder = two_workers.client()
    holder.login(user, "device-0")
    node = two_workers.presence(user)[0]
    crossed = False
    for attempt in range(1, 40):
        newer = two_workers.client()
        newer.login(user, f"device-{attempt}")
        newer_node = two_workers.presence(user)[0]
        holder.expect("logout")
        holder.expect("disconnect")
        holder.close()
        holder = newer
        if newer_node != node:
            crossed = True
            break
    holder.close()
    assert crossed, "every login landed on the same worker"
