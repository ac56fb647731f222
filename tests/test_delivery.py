"""The delivery promise: ids on every stored delivery, acks by count or id, resends,
one push per pending period, and recovery from the last id a client has seen."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import Subscriber, uid, wait_for


@pytest.fixture(scope="module")
def eager(start_gateway):
    """A gateway that resends after 1 s without an ack, and asks for a push after 2.5 s."""
    return start_gateway(ACK_TIMEOUT=1, PUSH_DELAY=2.5)


def _login(gateway, user, **extra):
    raw = gateway.raw()
    assert raw.call("login", {"myAuraId": user, "deviceId": "d", **extra}) == [1]
    return raw


def _chat_batch(raw, timeout=5):
    (batch,), ack_id = raw.expect("chat", timeout=timeout)
    return json.loads(batch), ack_id


def test_stored_notifications_carry_their_mid(gateway, user):
    raw = _login(gateway, user)
    gateway.publish("notification", {"toWho": [user], "needStore": True, "n": 1})
    (text,), ack_id = raw.expect("notification")
    notification = json.loads(text)
    [(stored_id, _)] = gateway.redis.xrange(gateway.user_key(user, "notif"))
    assert notification == {"toWho": [user], "needStore": True, "n": 1,
                            "mid": stored_id.decode()}
    raw.ack(ack_id)
    wait_for(lambda: gateway.pending("notif", user) == [])
    raw.close()


def test_a_business_mid_is_overridden_by_the_stored_one(gateway, user):
    raw = _login(gateway, user)
    gateway.publish("snschat", {"from": "a", "to": user, "mid": "fake"})
    (message,), _ = _chat_batch(raw)
    assert message["mid"] != "fake" and message["mid"].count("-") == 1
    raw.close()


def test_ack_by_mids_removes_exactly_those(gateway, user):
    for n in range(3):
        gateway.publish("snschat", {"from": "a", "to": user, "n": n})
    wait_for(lambda: len(gateway.pending("chat", user)) == 3)
    raw = _login(gateway, user)
    batch, ack_id = _chat_batch(raw)
    raw.ack(ack_id, [batch[1]["mid"], "1-1"])
    wait_for(lambda: [m["n"] for m in gateway.pending("chat", user)] == [0, 2])
    raw.close()


def test_unacked_chats_are_resent_with_the_same_mids(eager):
    user = uid()
    raw = _login(eager, user)
    eager.publish("snschat", {"from": "a", "to": user, "n": 1})
    first, _ = _chat_batch(raw)
    again, ack_id = _chat_batch(raw, timeout=3)
    assert again == first, "a resend must carry the same messages and mids"
    raw.ack(ack_id, 1)
    wait_for(lambda: eager.pending("chat", user) == [])
    raw.close()


def test_unacked_notifications_are_resent(eager):
    user = uid()
    raw = _login(eager, user)
    eager.publish("notification", {"toWho": [user], "needStore": True, "n": 1})
    (first,), _ = raw.expect("notification")
    (again,), ack_id = raw.expect("notification", timeout=3)
    assert again == first
    raw.ack(ack_id)
    wait_for(lambda: eager.pending("notif", user) == [])
    raw.close()


@pytest.fixture
def unacked_chat(eager):
    """A user of the eager gateway, logged in on a raw socket that a chat was just sent to
    and that will not ack it, and a subscriber to the mobile push channel."""
    user = uid()
    pushes = Subscriber(eager.redis_server.url, "chat_message_channel")
    raw = _login(eager, user)
    eager.publish("snschat", {"from": "a", "to": user, "n": 1})
    yield user, raw, pushes
    pushes.close()
    raw.close()


def test_resends_ask_for_one_mobile_push_per_pending_period(unacked_chat):
    user, raw, pushes = unacked_chat
    resends = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            raw.expect("chat", timeout=deadline - time.monotonic())
            resends += 1
        except AssertionError:
            break
    assert resends >= 3, "the batch should have been resent every second"
    pushes.expect("chat_message_channel", lambda m: m["toWho"] == user, timeout=1)
    with pytest.raises(AssertionError):
        pushes.expect("chat_message_channel", lambda m: m["toWho"] == user, timeout=1)


def test_login_with_last_mids_gets_only_what_came_after(gateway, user):
    for n in range(3):
        gateway.publish("snschat", {"from": "a", "to": user, "n": n})
    gateway.publish("notification", {"toWho": [user], "needStore": True, "n": 0})
    gateway.publish("notification", {"toWho": [user], "needStore": True, "n": 1})
    wait_for(lambda: len(gateway.pending("chat", user)) == 3
             and len(gateway.pending("notif", user)) == 2)
    first = _login(gateway, user)
    batch, _ = _chat_batch(first)
    (notification,), _ = first.expect("notification")
    first.drop()
    seen = {"chat": batch[1]["mid"], "notification": json.loads(notification)["mid"]}
    second = _login(gateway, user, lastMids=seen)
    rest, ack_id = _chat_batch(second)
    assert [m["n"] for m in rest] == [2]
    (later,), _ = second.expect("notification")
    assert json.loads(later)["n"] == 1
    assert [m["n"] for m in gateway.pending("chat", user)] == [2]
    second.close()


@pytest.mark.parametrize("value", ["m1", {"chat": "x"}, {"other": "1-1"}, {"chat": 5}])
def test_bad_last_mids_are_refused(gateway, user, value):
    raw = gateway.raw()
    answer = raw.call("login", {"myAuraId": user, "lastMids": value})[0]
    assert "lastMids" in answer["error"]
    raw.close()


def test_the_inbox_stream_is_a_durable_way_in(gateway, user):
    raw = _login(gateway, user)
    inbox = gateway.key("inbox")
    gateway.redis.xadd(inbox, {"channel": "snschat", "data": json.dumps({"to": user, "n": 1})})
    gateway.redis.xadd(inbox, {"channel": "elsewhere", "data": "{}"})
    gateway.redis.xadd(inbox, {"channel": "snschat", "data": "not json"})
    gateway.redis.xadd(inbox, {"channel": "notification",
                               "data": json.dumps({"toWho": [user], "needStore": True})})
    (message,), _ = _chat_batch(raw)
    assert message["n"] == 1
    raw.expect("notification")
    wait_for(lambda: gateway.redis.xlen(inbox) == 0, what="every entry to be acknowledged")
    assert "inbox: skipped entry" in gateway.log_text()
    raw.close()


def test_a_socket_gone_with_unacked_chats_still_asks_for_its_push(unacked_chat):
    user, raw, pushes = unacked_chat
    _chat_batch(raw)
    sent = time.monotonic()
    raw.drop()
    pushes.expect("chat_message_channel", lambda m: m["toWho"] == user, timeout=5)
    assert time.monotonic() - sent >= 2, "pushed before the push delay (2.5 s) ran out"


def test_every_waiting_socket_gets_its_resend(eager):
    users = [uid() for _ in range(30)]
    clients = [_login(eager, user) for user in users]
    try:
        eager.publish("notification", {"toWho": users, "needStore": True, "n": 1})
        firsts = [raw.expect("notification")[0] for raw in clients]
        for raw, first in zip(clients, firsts):
            again, ack_id = raw.expect("notification", timeout=3)
            assert again == first
            raw.ack(ack_id)
        wait_for(lambda: not any(eager.pending("notif", user) for user in users))
    finally:
        for raw in clients:
            raw.close()


def test_chats_stored_at_once_from_every_way_in_arrive_once_each_in_order(start_gateway):
    """Chats for one user stored at the same time by the listener (``snschat``) and by
    HTTP API requests that land on both workers: the socket gets each exactly once, in the
    order stored, whether it is sent as it was stored, handed over from the other worker,
    or read back because its hand-over lost a race with a read."""
    gateway = start_gateway(WORKERS=2, TRANSPORTS="websocket")
    user, count = uid(), 150
    client = gateway.client()
    try:
        client.login(user)
        gateway.publish("snschat", {"from": "a", "to": user, "n": "first"})

        def post(n: int) -> int:
            return gateway.api("POST", "/chats", json={"to": user, "n": f"api-{n}"}).status_code

        with ThreadPoolExecutor(8) as pool:
            posted = pool.map(post, range(count))
            with gateway.redis.pipeline(transaction=False) as pipe:
                for n in range(count):
                    pipe.publish("snschat", json.dumps({"from": "a", "to": user, "n": f"ch-{n}"}))
                assert pipe.execute() == [1] * count
            assert set(posted) == {200}
        messages = client.expect_chats(2 * count + 1, timeout=30)
        mids = [message["mid"] for message in messages]
        assert len(set(mids)) == len(mids) == 2 * count + 1
        assert mids == sorted(mids, key=lambda mid: tuple(map(int, mid.split("-"))))
        assert sorted(message["n"] for message in messages) == sorted(
            ["first", *(f"api-{n}" for n in range(count)), *(f"ch-{n}" for n in range(count))])
        client.quiet("chat", 1.0)
        wait_for(lambda: not gateway.pending("chat", user), what="every chat acked")
    finally:
        client.close()
