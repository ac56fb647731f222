"""Bad input from clients: the sender gets a reason, the socket and the worker live on."""
from __future__ import annotations

import json

import pytest
import requests

from support import uid

BAD_PAYLOADS = [
    ("login", [], "payload missing"),
    ("login", [[1, 2]], "must be a JSON object, not a list"),
    ("login", [42], "must be a JSON object, not a number"),
    ("login", ["{not json"], "not valid JSON"),
    ("login", ['["a"]'], "must be a JSON object, not a list"),
    ("login", [{"deviceId": "d"}], "myAuraId is missing"),
    ("login", [{"myAuraId": ""}], "myAuraId must not be empty"),
    ("login", [{"myAuraId": {"id": 1}}], "myAuraId must be a string or an integer"),
    ("login", [{"myAuraId": True}], "myAuraId must be a string or an integer"),
    ("login", [{"myAuraId": "x" * 500}], "myAuraId is longer than 128"),
    ("login", [{"myAuraId": "ok", "deviceId": ["d"]}], "deviceId must be a string"),
    ("chat", [{"to": "bob"}], "not logged in"),
    ("geo", [{"lat": 1}], "not logged in"),
]

LOGGED_IN_BAD_PAYLOADS = [
    ("chat", [], "payload missing"),
    ("chat", ["text"], "not valid JSON"),
    ("chat", [0], "must be a JSON object, not a number"),
    ("chat", [{"text": "to nobody"}], "to is missing"),
    ("chat", [{"to": 3.5}], "to must be a string or an integer"),
    ("chat", [{"to": "bob", "blob": "x" * 70_000}], "payload too large"),
    ("chat", ["x" * 70_000], "payload too large"),
    ("geo", [], "payload missing"),
    ("geo", [[1.0, 2.0]], "must be a JSON object"),
    ("geo", [{"lat": "y" * 70_000}], "payload too large"),
    ("login", [{"myAuraId": "someone-else"}], "logged in as another user"),
]


def _assert_alive(client):
    assert client.call("hb") == 1


@pytest.mark.parametrize("event,args,reason", BAD_PAYLOADS)
def test_bad_payload_gets_an_error_ack(clients, event, args, reason):
    client = clients()
    answer = client.call(event, *args)
    assert reason in answer["error"], answer
    _assert_alive(client)


@pytest.mark.parametrize("event,args,reason", LOGGED_IN_BAD_PAYLOADS)
def test_bad_payload_after_login_gets_an_error_ack(clients, user, event, args, reason):
    client = clients()
    client.login(user)
    answer = client.call(event, *args)
    assert reason in answer["error"], answer
    _assert_alive(client)


def test_bad_payload_without_ack_gets_an_error_event(clients, user):
    client = clients()
    client.sio.emit("login", {"deviceId": "no user"})
    assert client.expect("error") == {"event": "login", "error": "myAuraId is missing"}
    client.login(user)
    client.sio.emit("chat", {"from": "mallory", "to": user})
    error = client.expect("error")
    assert error == {"event": "chat", "error": "from does not match the logged-in user"}
    _assert_alive(client)


def test_unknown_events_get_an_error(clients):
    client = clients()
    assert "unknown event" in client.call("subscribe", {"room": 1})["error"]
    client.sio.emit("whatever")
    assert client.expect("error")["event"] == "whatever"
    _assert_alive(client)


def test_garbage_frames_leave_the_socket_and_worker_alive(gateway, user):
    raw = gateway.raw()
    for frame in ("42", "42[", "42{}", "42[1,2]", "4", "9", "42[\"chat\"", "42" + "[" * 5000):
        raw.send_raw(frame)
    assert raw.call("hb") == [1] or raw.closed.is_set()
    fresh = gateway.raw()
    assert fresh.call("login", {"myAuraId": user}) == [1]
    assert requests.get(gateway.url + "/monitor", timeout=5).text == "OK"
    fresh.close()
    raw.close()


def test_frame_over_the_transport_limit_closes_only_that_socket(gateway, clients, user):
    bystander = clients()
    bystander.login(user)
    raw = gateway.raw()
    raw.send_raw("42" + json.dumps(["chat", {"to": "x", "blob": "z" * 1_100_000}]))
    assert raw.closed.wait(10), "a frame over MAX_FRAME_BYTES should close its socket"
    _assert_alive(bystander)
    gateway.publish("snschat", {"from": "bob", "to": user, "ok": True})
    assert json.loads(bystander.expect("chat"))[0]["ok"] is True


def test_bad_chat_ack_counts_remove_nothing(gateway, user):
    raw = gateway.raw()
    raw.call("login", {"myAuraId": user})
    for count in ("many", -1, None, {"n": 1}, True):
        gateway.publish("snschat", {"from": "bob", "to": user, "c": repr(count)})
        _, ack_id = raw.expect("chat")
        raw.ack(ack_id, count)
    assert raw.call("hb") == [1]
    assert len(gateway.pending("chat", user)) == 5
    raw.close()


def test_event_limit_is_configurable(direct_gateway):
    client = direct_gateway.client()
    try:
        client.login(uid())
        answer = client.call("chat", {"to": "bob", "blob": "x" * 3000})
        assert "the limit is 2048" in answer["error"]
    finally:
        client.close()
