"""Work done for many sockets at once: a login storm through a small Redis pool, a mass
disconnect, acks of many users and a chat flood, each batched into few round trips, with
nothing lost, nothing removed that was not acked, and presence kept right."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from support import uid, wait_for

USERS = 120


@pytest.fixture(scope="module")
def small_pool(start_gateway):
    """A gateway whose worker has three Redis connections for everything it does."""
    return start_gateway(REDIS_MAX_CONNECTIONS=3, REDIS_POOL_TIMEOUT=5)


def _login(gateway, user, **extra):
    raw = gateway.raw(auto_ack=True)
    assert raw.call("login", {"myAuraId": user, "deviceId": "d", **extra}) == [1]
    return raw


def _login_all(gateway, users):
    with ThreadPoolExecutor(len(users)) as pool:
        return list(pool.map(lambda user: _login(gateway, user), users))


def test_a_login_storm_through_a_small_pool_delivers_everything(small_pool):
    users = [uid() for _ in range(USERS)]
    for user in users:
        small_pool.publish("snschat", {"from": "a", "to": user, "n": 1})
    small_pool.publish("notification", {"toWho": users, "needStore": True, "n": 2})
    wait_for(lambda: all(small_pool.pending("notif", user) for user in users))
    clients = _login_all(small_pool, users)
    try:
        wait_for(lambda: all(len(raw.received) == 2 for raw in clients),
                 what="every stored message")
        assert sorted(m["n"] for raw in clients for m in raw.received) == [1] * USERS + [2] * USERS
        wait_for(lambda: not any(small_pool.pending(kind, user)
                                 for user in users for kind in ("chat", "notif")),
                 what="every ack to remove its message")
    finally:
        for raw in clients:
            raw.close()
    small_pool.assert_unharmed()


def test_a_mass_disconnect_unbinds_everyone_but_who_came_back(small_pool):
    users = [uid() for _ in range(USERS)]
    clients = _login_all(small_pool, users)
    for raw in clients:
        raw.drop()
    back = _login(small_pool, users[0])
    try:
        wait_for(lambda: all(small_pool.presence(user) is None for user in users[1:]),
                 what="every dropped user to be unbound")
        assert small_pool.presence(users[0])[1] == back.sid
    finally:
        back.close()


def test_acks_remove_exactly_what_each_user_acked(small_pool):
    users = [uid() for _ in range(USERS)]
    clients = _login_all(small_pool, users)
    holdout = small_pool.raw()
    holder = uid()
    assert holdout.call("login", {"myAuraId": holder, "deviceId": "d"}) == [1]
    try:
        for n in range(3):
            small_pool.publish("notification", {"toWho": [*users, holder], "needStore": True,
                                                "n": n})
        wait_for(lambda: all(len(raw.received) == 3 for raw in clients), what="deliveries")
        wait_for(lambda: not any(small_pool.pending("notif", user) for user in users),
                 what="the acks")
        for _ in range(3):
            holdout.expect("notification")
        assert [m["n"] for m in small_pool.pending("notif", holder)] == [0, 1, 2]
    finally:
        holdout.close()
        for raw in clients:
            raw.close()


def test_unstored_notifications_reach_local_users_without_a_lookup(small_pool):
    here, away = uid(), uid()
    raw = _login(small_pool, here)
    try:
        answer = small_pool.api("POST", "/notifications",
                                json={"toWho": [away, here], "needStore": False, "n": 1})
        assert answer.status_code == 200, answer.text
        assert answer.json()["online"] == 1
        wait_for(lambda: raw.received, what="the notification")
        assert [m["n"] for m in raw.received] == [1]
    finally:
        raw.close()


def test_a_flood_of_chats_heard_at_once_is_stored_in_order(small_pool):
    users = [uid() for _ in range(3)]
    clients = [_login(small_pool, user) for user in users]
    try:
        with small_pool.redis.pipeline(transaction=False) as pipe:
            for n in range(300):
                pipe.publish("snschat", json.dumps({"from": "a", "to": users[n % 3], "n": n}))
                if n % 50 == 0:
                    pipe.publish("snschat", "{not json")
                    pipe.publish("notification", json.dumps({"toWho": users, "n": n}))
            assert all(pipe.execute()), "the gateway hears snschat"
        wait_for(lambda: all(len([m for m in raw.received if "from" in m]) == 100
                             for raw in clients), what="every chat")
        for index, raw in enumerate(clients):
            assert [m["n"] for m in raw.received if "from" in m] == list(range(index, 300, 3))
            assert [m["n"] for m in raw.received if "toWho" in m] == list(range(0, 300, 50))
    finally:
        for raw in clients:
            raw.close()
    small_pool.assert_unharmed()


def test_chats_sent_at_once_are_all_published_in_order(gateway, channels):
    users = [uid() for _ in range(20)]
    clients = _login_all(gateway, users)

    def send(index):
        raw = clients[index]
        return [raw.call("chat", {"to": users[index - 1], "n": n}) for n in range(20)]

    try:
        with ThreadPoolExecutor(len(users)) as pool:
            assert all(acks == [[1]] * 20 for acks in pool.map(send, range(len(users))))
        for user in users:
            heard = [channels.expect("chat_filter_channel", lambda m, u=user: m["from"] == u)
                     for _ in range(20)]
            assert [m["n"] for m in heard] == list(range(20))
    finally:
        for raw in clients:
            raw.close()


def test_two_devices_logging_in_at_once_leave_one_bound(small_pool):
    user = uid()
    phone, tablet = small_pool.raw(), small_pool.raw()
    try:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(
                lambda pair: pair[0].call("login", {"myAuraId": user, "deviceId": pair[1]}),
                [(phone, "phone"), (tablet, "tablet")]))
        assert answers == [[1], [1]]
        wait_for(lambda: phone.closed.is_set() or tablet.closed.is_set(), what="a kick")
        kept, kicked = (tablet, phone) if phone.closed.is_set() else (phone, tablet)
        kicked.expect("logout")
        assert small_pool.presence(user)[1] == kept.sid
        assert not kept.closed.wait(0.5)
    finally:
        phone.close()
        tablet.close()


@pytest.fixture(scope="module")
def direct(start_gateway):
    return start_gateway(CHAT_FILTER="direct")


def test_direct_chats_sent_at_once_all_arrive_in_order(direct):
    receiver, senders = uid(), [uid() for _ in range(20)]
    inbox = _login(direct, receiver)
    clients = _login_all(direct, senders)

    def send(raw):
        return [raw.call("chat", {"to": receiver, "n": n}) for n in range(10)]

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            assert all(acks == [[1]] * 10 for acks in pool.map(send, clients))
        wait_for(lambda: len(inbox.received) == 200, what="every chat")
        for sender in senders:
            assert [m["n"] for m in inbox.received if m["from"] == sender] == list(range(10))
    finally:
        inbox.close()
        for raw in clients:
            raw.close()


def test_a_chat_whose_stream_is_unusable_fails_alone(direct):
    receivers = [uid() for _ in range(10)]
    direct.redis.set(direct.user_key(receivers[0], "chat"), "not a stream")
    inboxes = _login_all(direct, receivers)
    senders = _login_all(direct, [uid() for _ in receivers])
    try:
        with ThreadPoolExecutor(len(senders)) as pool:
            acks = list(pool.map(lambda pair: pair[0].call("chat", {"to": pair[1], "n": 1}),
                                 zip(senders, receivers)))
        assert "temporarily unavailable" in acks[0][0]["error"]
        assert acks[1:] == [[1]] * (len(receivers) - 1)
        wait_for(lambda: all(len(raw.received) == 1 for raw in inboxes[1:]), what="the chats")
        wait_for(lambda: not any(direct.pending("chat", user) for user in receivers[1:]),
                 what="the acks")
    finally:
        for raw in inboxes + senders:
            raw.close()
    direct.assert_unharmed()
