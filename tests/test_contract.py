"""The seed's contract, end to end: real clients, real gunicorn, real Redis."""
from __future__ import annotations

import json
import time

import requests

from support import Subscriber, uid, wait_for, without_mids


def test_login_binds_user_and_publishes_userinfo(gateway, clients, channels, user):
    client = clients()
    client.login(user, "phone-1", nickname="Ann")
    info = channels.expect("login_message_channel", lambda m: m.get("myAuraId") == user)
    assert info == {"myAuraId": user, "deviceId": "phone-1", "nickname": "Ann"}
    node, sid, device, since = gateway.presence(user)
    assert sid == client.sio.get_sid() and device == "phone-1" and since > 0


def test_login_from_another_device_logs_the_old_one_out(gateway, clients, user):
    old, new = clients(), clients()
    old.login(user, "phone")
    new.login(user, "tablet")
    old.expect("logout")
    old.expect("disconnect")
    assert gateway.presence(user)[1] == new.sio.get_sid()
    assert new.call("hb") == 1


def test_login_from_the_same_device_replaces_silently(gateway, clients, user):
    old, new = clients(), clients()
    old.login(user, "phone")
    new.login(user, "phone")
    old.expect("disconnect")
    assert ("logout", None) not in old.events.backlog
    assert gateway.presence(user)[1] == new.sio.get_sid()


def test_login_delivers_stored_chats_and_notifications(gateway, clients, user):
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "while you were out"})
    gateway.publish("notification", {"toWho": [user], "needStore": True, "title": "n1"})
    wait_for(lambda: gateway.pending("chat", user) and gateway.pending("notif", user))
    client = clients()
    client.login(user)
    assert without_mids(json.loads(client.expect("chat"))) == [
        {"from": "bob", "to": user, "text": "while you were out"}]
    assert json.loads(client.expect("notification"))["title"] == "n1"
    wait_for(lambda: not gateway.pending("chat", user) and not gateway.pending("notif", user),
             what="acked messages to leave the store")


def test_chat_is_published_to_the_filter_channel_and_acked(gateway, clients, channels, user):
    client = clients()
    client.login(user)
    assert client.call("chat", {"from": user, "to": "bob", "text": "hi"}) == 1
    assert channels.expect("chat_filter_channel", lambda m: m.get("from") == user) == {
        "from": user, "to": "bob", "text": "hi"}


def test_hb_acks_1_whatever_it_carries(clients):
    client = clients()
    assert client.call("hb") == 1
    assert client.call("hb", "ping") == 1
    assert client.call("hb", {"any": ["thing"]}) == 1


def test_geo_publishes_position_with_time_and_acks(clients, channels, user):
    client = clients()
    client.login(user)
    before = int(time.time() * 1000)
    assert client.call("geo", {"myAuraId": user, "lat": 31.2, "lng": 121.5}) == 1
    published = channels.expect("geo", lambda m: m["geo"].get("myAuraId") == user)
    assert published["geo"] == {"myAuraId": user, "lat": 31.2, "lng": 121.5}
    assert before <= published["time"] <= int(time.time() * 1000)


def test_geo_delivers_what_is_stored(gateway, clients, user):
    client = clients()
    client.login(user)
    # A message that reached the store without a delivery signal (one lost while Redis
    # was away, say) goes out at the next geo.
    gateway.redis.xadd(gateway.user_key(user, "chat"), {"m": json.dumps({"to": user, "n": 1})})
    assert client.call("geo", {"lat": 1}) == 1
    assert without_mids(json.loads(client.expect("chat"))) == [{"to": user, "n": 1}]


def test_disconnect_unbinds_the_user(gateway, clients, user):
    client = clients()
    client.login(user)
    assert gateway.presence(user)
    client.close()
    wait_for(lambda: gateway.presence(user) is None, what="presence to go")


def test_disconnect_of_a_replaced_socket_keeps_the_new_binding(gateway, clients, user):
    old, new = clients(), clients()
    old.login(user, "phone")
    new.login(user, "phone")
    old.expect("disconnect")
    time.sleep(0.3)
    assert gateway.presence(user)[1] == new.sio.get_sid()
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "still reachable"})
    assert json.loads(new.expect("chat"))[0]["text"] == "still reachable"


def test_snschat_to_online_user_is_stored_archived_and_sent(gateway, clients, channels, user):
    client = clients(chat_ack=lambda batch: 0)
    client.login(user)
    message = {"from": "bob", "to": user, "text": "hello", "extra": {"kept": True}}
    gateway.publish("snschat", message)
    (received,) = json.loads(client.expect("chat"))
    assert without_mids(received) == message
    [(stored_id, _)] = gateway.redis.xrange(gateway.user_key(user, "chat"))
    assert received["mid"] == stored_id.decode(), "each delivery carries its stored id"
    assert channels.expect("chat_message_history_channel",
                           lambda m: m.get("to") == user) == message
    assert gateway.pending("chat", user) == [message]


def test_chat_ack_removes_exactly_the_first_n_of_its_batch(gateway, user):
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    for n in (1, 2, 3):
        gateway.publish("snschat", {"from": "bob", "to": user, "n": n})
    wait_for(lambda: len(gateway.pending("chat", user)) == 3)
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    while True:
        (batch,), ack_id = raw.expect("chat")
        if len(json.loads(batch)) == 3:
            break
    raw.ack(ack_id, 2)
    wait_for(lambda: [m["n"] for m in gateway.pending("chat", user)] == [3],
             what="only the third message to stay")
    raw.close()


def test_messages_stored_meanwhile_go_in_the_next_batch_at_once(gateway, user):
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    gateway.publish("snschat", {"from": "bob", "to": user, "n": 1})
    (first,), first_ack = raw.expect("chat")
    gateway.publish("snschat", {"from": "bob", "to": user, "n": 2})
    started = time.monotonic()
    (second,), second_ack = raw.expect("chat", timeout=2)
    assert time.monotonic() - started < 1.0, "the second batch waited for a timer"
    assert [m["n"] for m in json.loads(first)] == [1]
    assert [m["n"] for m in json.loads(second)] == [2]
    raw.ack(first_ack, 1)
    wait_for(lambda: [m["n"] for m in gateway.pending("chat", user)] == [2])
    raw.ack(second_ack, 1)
    wait_for(lambda: gateway.pending("chat", user) == [])
    raw.close()


def test_snschat_to_offline_user_asks_for_a_mobile_push(gateway, channels, user):
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "are you there"})
    assert channels.expect("chat_message_channel", lambda m: m.get("toWho") == user)
    assert [m["text"] for m in gateway.pending("chat", user)] == ["are you there"]


def test_chat_for_a_user_gone_from_its_worker_asks_for_a_mobile_push(gateway, channels, user):
    # Presence left behind by a disconnect whose unbind failed (Redis away at the time).
    gateway.set_presence(user, gateway.node, "gone-sid", "d", 1)
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "anyone?"})
    assert channels.expect("chat_message_channel", lambda m: m.get("toWho") == user)


def test_unacked_chat_asks_for_a_mobile_push_after_the_delay(gateway, channels, user):
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "ack me"})
    raw.expect("chat")
    sent = time.monotonic()
    channels.expect("chat_message_channel", lambda m: m.get("toWho") == user, timeout=5)
    assert time.monotonic() - sent >= 1.2, "pushed before the push delay (1.5 s) ran out"
    raw.close()


def test_acked_chat_asks_for_no_mobile_push(gateway, clients, channels, user):
    client = clients()
    client.login(user)
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "quick"})
    client.expect("chat")
    try:
        channels.expect("chat_message_channel", lambda m: m.get("toWho") == user, timeout=2.5)
    except AssertionError:
        return
    raise AssertionError("a push was requested for an acked chat")


def test_notification_without_store_reaches_only_who_is_online(gateway, clients, user):
    offline = uid()
    client = clients()
    client.login(user)
    gateway.publish("notification", {"toWho": [user, offline], "needStore": False, "t": "now"})
    received = json.loads(client.expect("notification"))
    assert received == {"toWho": [user, offline], "needStore": False, "t": "now"}
    assert gateway.pending("notif", user) == [] and gateway.pending("notif", offline) == []
    late = clients()
    late.login(offline)
    late.quiet("notification", 0.7)


def test_stored_notification_reaches_online_now_and_offline_at_login(gateway, clients, user):
    offline = uid()
    client = clients()
    client.login(user)
    gateway.publish("notification", {"toWho": [user, offline], "needStore": True, "t": "kept"})
    assert json.loads(client.expect("notification"))["t"] == "kept"
    wait_for(lambda: gateway.pending("notif", offline))
    wait_for(lambda: gateway.pending("notif", user) == [], what="the ack to remove it")
    late = clients()
    late.login(offline)
    assert json.loads(late.expect("notification"))["t"] == "kept"
    wait_for(lambda: gateway.pending("notif", offline) == [])


def test_notification_ack_removes_that_notification_only(gateway, user):
    for n in (1, 2):
        gateway.publish("notification", {"toWho": [user], "needStore": True, "n": n})
    wait_for(lambda: len(gateway.pending("notif", user)) == 2)
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user, "deviceId": "d"})
    (first,), first_ack = raw.expect("notification")
    (second,), _ = raw.expect("notification")
    assert json.loads(first)["n"] == 1 and json.loads(second)["n"] == 2
    raw.ack(first_ack)
    wait_for(lambda: [m["n"] for m in gateway.pending("notif", user)] == [2])
    raw.close()


def test_direct_filter_routes_chat_between_users(direct_gateway):
    alice, bob = uid("alice"), uid("bob")
    a, b = direct_gateway.client(), direct_gateway.client()
    try:
        a.login(alice)
        b.login(bob)
        assert a.call("chat", {"from": alice, "to": bob, "text": "direct"}) == 1
        assert without_mids(json.loads(b.expect("chat"))) == [
            {"from": alice, "to": bob, "text": "direct"}]
        assert a.call("chat", {"to": bob, "text": "no from"}) == 1
        assert without_mids(json.loads(b.expect("chat"))) == [
            {"to": bob, "text": "no from", "from": alice}]
    finally:
        a.close()
        b.close()


def test_channel_names_and_key_prefix_come_from_the_environment(direct_gateway):
    user = uid()
    subscriber = Subscriber(direct_gateway.redis_server.url, "out_login", "out_history",
                            "out_push", "out_geo")
    client = direct_gateway.client()
    try:
        client.login(user)
        subscriber.expect("out_login", lambda m: m["myAuraId"] == user)
        client.call("geo", {"lat": 2})
        subscriber.expect("out_geo", lambda m: m["geo"]["myAuraId"] == user)
        direct_gateway.publish("in_chat", {"from": "x", "to": user, "via": "in_chat"})
        assert json.loads(client.expect("chat"))[0]["via"] == "in_chat"
        subscriber.expect("out_history", lambda m: m["to"] == user)
        direct_gateway.publish("in_notify", {"toWho": [user], "needStore": False, "v": 1})
        assert json.loads(client.expect("notification"))["v"] == 1
        assert direct_gateway.redis.hget(f"px:{{{user}}}:on", "sid")
        offline = uid()
        direct_gateway.publish("in_chat", {"from": "x", "to": offline})
        subscriber.expect("out_push", lambda m: m["toWho"] == offline)
        assert direct_gateway.redis.exists(f"px:{{{offline}}}:chat")
    finally:
        client.close()
        subscriber.close()


def test_monitor_answers_ok_and_other_paths_404(gateway):
    answer = requests.get(gateway.url + "/monitor", timeout=5)
    assert (answer.status_code, answer.text) == (200, "OK")
    assert requests.get(gateway.url + "/no/such/path", timeout=5).status_code == 404
    assert requests.post(gateway.url + "/monitor", timeout=5).status_code == 405


def test_long_polling_transport_works(gateway, clients, user):
    client = clients(transports=("polling",))
    assert client.sio.transport() == "polling"
    client.login(user)
    assert client.call("hb") == 1
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "over polling"})
    assert json.loads(client.expect("chat"))[0]["text"] == "over polling"
    wait_for(lambda: gateway.pending("chat", user) == [])


def test_ping_interval_and_timeout_are_configured(gateway, direct_gateway):
    default, tuned = gateway.raw(), direct_gateway.raw()
    try:
        assert (default.handshake["pingInterval"], default.handshake["pingTimeout"]) == (
            60000, 30000)
        assert (tuned.handshake["pingInterval"], tuned.handshake["pingTimeout"]) == (7000, 4000)
    finally:
        default.close()
        tuned.close()
