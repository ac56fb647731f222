"""The HTTP API end to end: real HTTP to gunicorn, real Socket.IO clients, real Redis."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from support import Gateway, uid, wait_for, without_mids

def post(gateway: Gateway, path: str, body, **headers: str) -> requests.Response:
    return gateway.api("POST", path, json=body, headers=headers)


def get(gateway: Gateway, path: str) -> requests.Response:
    return gateway.api("GET", path)


def test_a_notification_reaches_who_is_online_and_waits_for_the_others(gateway, clients):
    online, offline = uid(), uid()
    client = clients()
    client.login(online)
    message = {"toWho": [online, offline, online], "needStore": True, "title": "hi",
               "extra": {"kept": [1, 2]}}
    answer = post(gateway, "/notifications", message)
    assert answer.status_code == 200, answer.text
    outcome = answer.json()
    assert (outcome["recipients"], outcome["online"], outcome["stored"]) == (2, 1, 2)
    assert set(outcome["ids"]) == {online, offline}
    received = json.loads(client.expect("notification"))
    assert received["mid"] == outcome["ids"][online]
    assert without_mids(received) == message
    assert gateway.pending("notif", offline) == [message]
    later = clients()
    later.login(offline)
    assert without_mids(json.loads(later.expect("notification"))) == message


def test_an_unstored_notification_goes_only_to_who_is_online(gateway, clients):
    online, offline = uid(), uid()
    client = clients()
    client.login(online)
    answer = post(gateway, "/notifications", {"toWho": [online, offline], "n": 1})
    assert answer.json() == {"recipients": 2, "online": 1, "stored": 0, "ids": {}}
    assert json.loads(client.expect("notification")) == {"toWho": [online, offline], "n": 1}
    assert gateway.pending("notif", offline) == []


def test_http_and_the_channel_take_the_same_path(gateway, channels):
    """A chat to an offline user, once on snschat and once over HTTP: both are stored the
    same way, archived on the history channel, and ask for a mobile push."""
    by_channel, by_http = uid(), uid()
    gateway.publish("snschat", {"from": "bob", "to": by_channel, "text": "same"})
    answer = post(gateway, "/chats", {"from": "bob", "to": by_http, "text": "same"})
    assert answer.status_code == 200
    assert answer.json()["stored"] == 1 and answer.json()["online"] == 0
    wait_for(lambda: gateway.pending("chat", by_channel))
    assert gateway.pending("chat", by_channel) == [{"from": "bob", "to": by_channel,
                                                    "text": "same"}]
    assert gateway.pending("chat", by_http) == [{"from": "bob", "to": by_http, "text": "same"}]
    for user in (by_channel, by_http):
        channels.expect("chat_message_history_channel", lambda m, u=user: m.get("to") == u)
        channels.expect("chat_message_channel", lambda m, u=user: m == {"toWho": u})


def test_a_chat_to_an_online_user_is_sent_and_leaves_the_store_when_acked(gateway, clients):
    user = uid()
    client = clients()
    client.login(user)
    answer = post(gateway, "/chats", {"from": "bob", "to": user, "text": "yo"})
    assert answer.json()["online"] == 1
    [chat] = json.loads(client.expect("chat"))
    assert chat["mid"] == answer.json()["ids"][user]
    wait_for(lambda: gateway.pending("chat", user) == [], what="the acked chat to go")


def test_a_batch_is_handled_in_order(gateway, clients):
    user = uid()
    client = clients()
    client.login(user)
    messages = [{"toWho": [user], "needStore": True, "n": n} for n in range(3)]
    answer = post(gateway, "/notifications/batch", {"messages": messages})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["stored"] for r in results] == [1, 1, 1]
    assert [json.loads(client.expect("notification"))["n"] for _ in range(3)] == [0, 1, 2]
    chats = post(gateway, "/chats/batch",
                 {"messages": [{"to": user, "n": 1}, {"to": user, "n": 2}]})
    assert [r["recipients"] for r in chats.json()["results"]] == [1, 1]
    assert [m["n"] for m in client.expect_chats(2)] == [1, 2]


def test_a_batch_with_one_bad_message_stores_none(gateway):
    user = uid()
    answer = post(gateway, "/notifications/batch", {"messages": [
        {"toWho": [user], "needStore": True}, {"toWho": [user], "needStore": True},
        {"toWho": [user, {"id": 1}], "needStore": True}]})
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{"field": "messages[2].toWho[1]",
                                        "message": "must be a string or an integer, not an "
                                                   "object"}]
    assert gateway.pending("notif", user) == []


@pytest.mark.parametrize("path,body,status,says", [
    ("/notifications", b"{not json", 400, "body is not valid JSON"),
    ("/notifications", b"", 400, "body is not valid JSON"),
    ("/notifications", [1, 2], 400, "body must be a JSON object, not a list"),
    ("/notifications", {"needStore": True}, 422, "toWho: Field required"),
    ("/notifications", {"toWho": "alice"}, 422, "toWho: Input should be a valid list"),
    ("/notifications", {"toWho": ["a", True]}, 422,
     "toWho[1]: must be a string or an integer, not a boolean"),
    ("/notifications", {"toWho": ["a", " "]}, 422, "toWho[1]: must not be empty"),
    ("/notifications", {"toWho": ["x" * 129]}, 422, "toWho[0]: is longer than 128 characters"),
    ("/notifications", {"toWho": ["a"], "needStore": "yes"}, 422,
     "needStore: must be true or false, not a string"),
    ("/notifications", {"toWho": ["a"], "needStore": 1.0}, 422,
     "needStore: must be true or false, not a number"),
    ("/notifications", {"toWho": [str(n) for n in range(10_001)]}, 422,
     "toWho: List should have at most 10000 items"),
    ("/chats", {"text": "to nobody"}, 422, "to: Field required"),
    ("/chats", {"to": 3.5}, 422, "to: must be a string or an integer, not a number"),
    ("/chats/batch", [{"to": "a"}], 400, "body must be a JSON object"),
    ("/chats/batch", {"messages": [{"to": "a"}], "more": 1}, 422,
     "more: Extra inputs are not permitted"),
    ("/chats/batch", {"messages": [{"to": "a"}] * 1001}, 422,
     "messages: List should have at most 1000 items"),
])
def test_bad_bodies_are_refused_with_the_field_named(gateway, path, body, status, says):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = gateway.api("POST", path, data=data, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["error"].startswith(says), answer.json()
    assert requests.get(gateway.url + "/monitor", timeout=5).text == "OK"


def test_a_bad_idempotency_key_is_refused(gateway):
    for key in ("has space", "x" * 256, "ключ"):
        answer = gateway.api("POST", "/chats", json={"to": uid()},
                             headers={"Idempotency-Key": key.encode().decode("latin-1")})
        assert answer.status_code == 400, key
        assert answer.json()["error"].startswith("Idempotency-Key: ")


def test_an_idempotency_key_replays_the_first_answer_and_stores_once(gateway):
    user, key = uid(), uid("key")
    first = post(gateway, "/chats", {"to": user, "n": 1}, **{"Idempotency-Key": key})
    again = post(gateway, "/chats", {"to": user, "n": 1}, **{"Idempotency-Key": key})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert gateway.pending("chat", user) == [{"to": user, "n": 1}]
    other = post(gateway, "/chats", {"to": user, "n": 2}, **{"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    elsewhere = post(gateway, "/notifications", {"toWho": [user], "needStore": True},
                     **{"Idempotency-Key": key})
    assert elsewhere.status_code == 200 and elsewhere.json()["stored"] == 1, \
        "a key is scoped to its endpoint"
    assert len(gateway.pending("chat", user)) == 1


def test_concurrent_requests_with_one_key_store_once(gateway):
    """Twelve senders at once with one key, on a notification big enough (2,000
    recipients) that the first is still being stored when the others arrive: it is stored
    once, the others are told it is in flight (409) or get its answer."""
    statuses: set[int] = set()
    for _ in range(3):
        user, key = uid(), uid("key")
        message = {"toWho": [user] + [f"{user}-{n}" for n in range(1999)], "needStore": True}
        start = threading.Barrier(12)
        answers: list[requests.Response] = []

        def send(message: dict, key: str, start: threading.Barrier,
                 answers: list[requests.Response]) -> None:
            start.wait()
            answers.append(post(gateway, "/notifications", message, **{"Idempotency-Key": key}))

        threads = [threading.Thread(target=send, args=(message, key, start, answers))
                   for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(gateway.pending("notif", user)) == 1
        statuses |= {answer.status_code for answer in answers}
        assert statuses <= {200, 409}
        ids = {answer.json()["ids"][user] for answer in answers if answer.status_code == 200}
        assert len(ids) == 1, ids
        if 409 in statuses:
            break
    assert 409 in statuses, "no request ever overlapped the first one"


def test_presence_says_online_since_when_and_on_which_device(gateway, clients):
    user = uid()
    assert get(gateway, f"/users/{user}/presence").json() == {"user": user, "online": False}
    client = clients()
    before = int(time.time() * 1000)
    client.login(user, "phone-7")
    presence = get(gateway, f"/users/{user}/presence").json()
    assert presence["online"] is True and presence["device"] == "phone-7"
    assert presence["node"] == gateway.node
    assert before - 5 <= presence["since_ms"] <= int(time.time() * 1000)
    assert presence["since"].endswith("Z")
    client.close()
    wait_for(lambda: get(gateway, f"/users/{user}/presence").json()["online"] is False,
             what="the user to go offline")


def test_a_user_whose_worker_stopped_beating_reads_offline(gateway, clients):
    user = uid()
    client = clients()
    client.login(user)
    node = gateway.presence(user)[0]
    presence = gateway.presence(user)
    gateway.set_presence(user, "gone:1:dead", *presence[1:])
    assert get(gateway, f"/users/{user}/presence").json()["online"] is False
    gateway.set_presence(user, *presence)
    assert get(gateway, f"/users/{user}/presence").json()["node"] == node


def test_pending_counts_and_the_operators_clear(gateway, clients):
    user = uid()
    for n in range(2):
        post(gateway, "/chats", {"to": user, "n": n})
    post(gateway, "/notifications", {"toWho": [user], "needStore": True})
    assert get(gateway, f"/users/{user}/pending").json() == {
        "user": user, "pending": {"chat": 2, "notification": 1}}
    cleared = gateway.api("DELETE", f"/users/{user}/pending?kind=chat")
    assert cleared.json() == {"user": user, "removed": {"chat": 2, "notification": 0}}
    assert get(gateway, f"/users/{user}/pending").json()["pending"] == {"chat": 0,
                                                                         "notification": 1}
    cleared = gateway.api("DELETE", f"/users/{user}/pending")
    assert cleared.json()["removed"] == {"chat": 0, "notification": 1}
    wrong = gateway.api("DELETE", f"/users/{user}/pending?kind=geo")
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "kind"
    client = clients()
    client.login(user)
    client.quiet("chat", 0.5)
    client.quiet("notification", 0.1)


@pytest.mark.parametrize("user", ["a/b", "line\nbreak", "12345", "ü ñ 中", "a//b/"])
def test_any_user_id_can_be_looked_at(gateway, user):
    post(gateway, "/chats", {"to": user, "t": "x"})
    path = f"/users/{requests.utils.quote(user, safe='')}/pending"
    answer = get(gateway, path)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"] == user and answer.json()["pending"]["chat"] >= 1
    gateway.api("DELETE", path)


@pytest.mark.parametrize("user,says", [(" ", "must not be empty"),
                                       ("x" * 129, "is longer than 128 characters")])
def test_a_bad_user_id_in_a_path_is_named(gateway, user, says):
    answer = get(gateway, f"/users/{user}/presence")
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{"field": "user", "message": says}]


def test_limits_are_settings_and_the_document_says_them(start_gateway):
    gateway = start_gateway(API_MAX_BODY_BYTES=2000, API_MAX_BATCH=2, MAX_RECIPIENTS=3,
                            MAX_USER_ID_LENGTH=8)
    too_big = post(gateway, "/notifications", {"toWho": ["a"], "blob": "x" * 3000})
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "the body is larger than 2000 bytes"
    assert post(gateway, "/chats/batch", {"messages": [{"to": "a"}] * 3}).status_code == 422
    assert post(gateway, "/notifications", {"toWho": ["a", "b", "c", "d"]}).status_code == 422
    assert post(gateway, "/chats", {"to": "123456789"}).status_code == 422
    assert post(gateway, "/chats", {"to": "12345678"}).status_code == 200
    schemas = get(gateway, "/openapi.json").json()["components"]["schemas"]
    assert schemas["ChatBatch"]["properties"]["messages"]["maxItems"] == 2
    assert schemas["Notification"]["properties"]["toWho"]["maxItems"] == 3
    assert schemas["Chat"]["properties"]["to"]["anyOf"][0]["maxLength"] == 8
    gateway.assert_unharmed()


def test_redis_failures_answer_503_and_a_retry_stores_once(start_gateway):
    gateway = start_gateway()
    user, key = uid(), uid("key")
    gateway.redis_server.stop()
    try:
        answer = post(gateway, "/chats", {"to": user}, **{"Idempotency-Key": key})
        assert answer.status_code == 503
        assert answer.json()["error"].startswith("Redis unavailable, try again")
        assert get(gateway, f"/users/{user}/presence").status_code == 503
        ready = requests.get(gateway.url + "/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert ready.json()["reason"]
    finally:
        gateway.redis_server.start()
    gateway.wait_ready()
    retry = post(gateway, "/chats", {"to": user}, **{"Idempotency-Key": key})
    assert retry.status_code == 200
    assert post(gateway, "/chats", {"to": user}, **{"Idempotency-Key": key}).json() == retry.json()
    assert gateway.pending("chat", user) == [{"to": user}]
    gateway.assert_unharmed()


def test_a_batch_cut_short_by_redis_says_how_many_were_stored(start_gateway):
    """Redis refusing writes midway (out of memory): the 503 says how many messages, from
    the first, are stored, so the sender retries only the rest."""
    gateway = start_gateway()
    users = [uid() for _ in range(8)]
    blob = "x" * 100_000
    used = gateway.redis.info("memory")["used_memory"]
    gateway.redis.config_set("maxmemory", used + 350_000)
    try:
        answer = post(gateway, "/chats/batch", {"messages": [{"to": u, "b": blob} for u in users]})
    finally:
        gateway.redis.config_set("maxmemory", 0)
    assert answer.status_code == 503, answer.text
    done = answer.json()["done"]
    assert 0 < done < len(users)
    assert [len(gateway.pending("chat", u)) for u in users] == [1] * done + [0] * (8 - done)
    rest = post(gateway, "/chats/batch", {"messages": [{"to": u, "b": blob} for u in users[done:]]})
    assert rest.status_code == 200
    assert [len(gateway.pending("chat", u)) for u in users] == [1] * 8
    gateway.assert_unharmed()
