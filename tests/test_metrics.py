"""/metrics scraped after real traffic: Socket.IO clients, HTTP and channel messages, acks,
a redelivery, bad input, a Redis restart, and two workers, one of which dies."""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pushapp.ops.backlog import COUNT_EVERY
from support import API_KEY, WAIT, Gateway, Subscriber, clients_on_workers, uid, wait_for


def scrape(gateway: Gateway, token: str | None = None) -> dict[tuple, float]:
    """Every sample, keyed by name and sorted labels."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(gateway.url + "/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples}


def value(samples: dict[tuple, float], name: str, **labels: str) -> float:
    return samples.get((name, *sorted(labels.items())), 0.0)


@pytest.fixture
def fresh(start_gateway) -> Iterator[Gateway]:
    gateway = start_gateway()
    yield gateway
    gateway.assert_unharmed()


def test_metrics_count_real_traffic(fresh):
    alice, bob, carol, dave = (uid(name) for name in ("alice", "bob", "carol", "dave"))
    a, b = fresh.client(), fresh.client()
    first_carol = fresh.raw()
    try:
        a.login(alice)
        b.login(bob)
        first_carol.call("login", {"myAuraId": carol, "deviceId": "d"})

        fresh.api("POST", "/notifications", json={"toWho": [alice, bob, dave], "needStore": True})
        a.expect("notification")
        b.expect("notification")
        fresh.publish("snschat", {"from": "x", "to": alice, "via": "channel"})
        fresh.api("POST", "/chats", json={"to": alice, "via": "http"})
        assert len(a.expect_chats(2)) == 2

        # carol takes a chat without acking it, then logs in again: it is sent again.
        fresh.api("POST", "/chats", json={"to": carol, "n": 1})
        first_carol.expect("chat")
        second_carol = fresh.raw()
        second_carol.call("login", {"myAuraId": carol, "deviceId": "d"})
        (batch,), ack_id = second_carol.expect("chat")
        assert [m["n"] for m in json.loads(batch)] == [1]
        second_carol.ack(ack_id, 1)
        assert first_carol.closed.wait(10)

        fresh.api("POST", "/chats", data=b"{")
        fresh.publish("notification", "not json")
        for user in (alice, bob, carol):
            wait_for(lambda u=user: not fresh.pending("chat", u) and not fresh.pending("notif", u),
                     what=f"{user}'s acks")
        # The backlog is counted every COUNT_EVERY seconds: it may take that long to show.
        def counted() -> dict[tuple, float] | None:
            s = scrape(fresh)
            done = (value(s, "pushapp_errors_total", reason="channel_message_invalid"),
                    value(s, "pushapp_stored_messages", kind="notification"),
                    value(s, "pushapp_stored_messages", kind="chat"))
            return s if done == (1, 1, 0) else None

        samples = wait_for(counted, timeout=WAIT + COUNT_EVERY,
                           what="the bad message and the stored ones counted")

        expected = {
            ("pushapp_connections",): 3,
            ("pushapp_logins_total",): 4,
            ("pushapp_messages_in_total", "notification"): 1,
            ("pushapp_messages_in_total", "chat"): 3,
            ("pushapp_messages_out_total", "notification"): 2,
            ("pushapp_messages_out_total", "chat"): 4,
            ("pushapp_acks_total", "notification"): 2,
            ("pushapp_acks_total", "chat"): 3,
            ("pushapp_redeliveries_total", "chat"): 1,
            ("pushapp_redeliveries_total", "notification"): 0,
            ("pushapp_delivery_latency_seconds_count", "notification"): 2,
            ("pushapp_delivery_latency_seconds_count", "chat"): 3,
            ("pushapp_stored_messages", "notification"): 1,
            ("pushapp_stored_messages", "chat"): 0,
            ("pushapp_listener_reconnects_total",): 0,
        }
        found = {key: value(samples, key[0], **({"kind": key[1]} if len(key) > 1 else {}))
                 for key in expected}
        assert found == expected
        assert value(samples, "pushapp_errors_total", reason="api_rejected") == 1
        assert value(samples, "pushapp_errors_total", reason="channel_message_invalid") == 1
        assert 0 < value(samples, "pushapp_delivery_latency_seconds_sum", kind="chat") < 10
    finally:
        for client in (a, b, first_carol, second_carol):
            client.close()
    wait_for(lambda: value(scrape(fresh), "pushapp_connections") == 0,
             what="the connections gauge to drop to 0")


def test_every_worker_counts_and_a_dead_ones_sockets_do_not(start_gateway):
    gateway = start_gateway(WORKERS=2)
    made = clients_on_workers(gateway)
    clients, users = [client for client, _ in made], [user for _, user in made]
    try:
        samples = scrape(gateway)
        assert value(samples, "pushapp_logins_total") == len(users)
        assert value(samples, "pushapp_connections") == len(users)

        victim = gateway.presence(users[0])[0]
        on_victim = sum(gateway.presence(user)[0] == victim for user in users)
        os.kill(int(victim.split(":")[1]), signal.SIGKILL)
        wait_for(lambda: value(scrape(gateway), "pushapp_connections") == len(users) - on_victim,
                 what="the dead worker's connections to stop counting")
        assert value(scrape(gateway), "pushapp_logins_total") == len(users)
    finally:
        for client in clients:
            client.close()


def test_listener_reconnects_and_redis_errors_are_counted(fresh):
    fresh.redis_server.stop()
    try:
        wait_for(lambda: requests.get(fresh.url + "/health/ready", timeout=5).status_code == 503)
        samples = scrape(fresh)
        assert ("pushapp_stored_messages", ("kind", "chat")) not in samples
        assert value(samples, "pushapp_errors_total", reason="redis") >= 1
    finally:
        fresh.redis_server.start()
    fresh.wait_ready()
    assert value(scrape(fresh), "pushapp_listener_reconnects_total") >= 1


def test_chats_no_filter_server_hears_are_counted_and_warned_of_once(fresh):
    unheard = "reached no subscriber of chat_filter_channel"
    client = fresh.client()
    filter_server = Subscriber(fresh.redis_server.url, "chat_filter_channel")
    try:
        client.login(uid())
        assert client.call("chat", {"to": "bob", "n": 0}) == 1
        filter_server.expect("chat_filter_channel", lambda m: m["n"] == 0)
        filter_server.close()
        wait_for(lambda: fresh.redis.pubsub_numsub("chat_filter_channel")[0][1] == 0,
                 what="the filter server to be gone")
        assert value(scrape(fresh), "pushapp_errors_total", reason="chat_filter_unheard") == 0
        assert unheard not in fresh.log_text()

        for n in range(1, 21):
            assert client.call("chat", {"to": "bob", "n": n}) == 1
        assert value(scrape(fresh), "pushapp_errors_total", reason="chat_filter_unheard") == 20
        lines = [line for line in fresh.log_text().splitlines() if unheard in line]
        assert len(lines) == 1, lines
        assert "WARNING" in lines[0] and ": 1 chat(s) from clients" in lines[0]
    finally:
        client.close()


def command_calls(gateway: Gateway) -> dict[str, int]:
    """How many times Redis ran each command since it started."""
    return {name.removeprefix("cmdstat_"): stats["calls"]
            for name, stats in gateway.redis.info("commandstats").items()}


def test_a_scrape_costs_redis_the_same_however_many_users_wait(start_gateway):
    """5,000 users with a stored notification: 50 scrapes cost Redis one command each
    (when every scrape counted the streams itself, 11 each, and 100 ms per 10,000 users),
    and the figure follows stores and acks within the counting period."""
    token = "metrics-token-5c0a1e"
    gateway = start_gateway(METRICS_TOKEN=token)
    users = [uid("many") for _ in range(5000)]
    with gateway.redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.xadd(gateway.user_key(user, "notif"), {"m": '{"toWho": [], "needStore": true}'})
        pipe.execute()

    def stored() -> tuple[float, float]:
        samples = scrape(gateway, token)
        return (value(samples, "pushapp_stored_messages", kind="chat"),
                value(samples, "pushapp_stored_messages", kind="notification"))

    wait_for(lambda: stored() == (0, 5000), timeout=WAIT + COUNT_EVERY, what="the count")
    before = command_calls(gateway)
    for _ in range(50):
        samples = scrape(gateway, token)
    after = command_calls(gateway)
    ran = {name: calls - before.get(name, 0) for name, calls in after.items()
           if calls != before.get(name, 0)}
    ran.pop("info")  # the first INFO
    print(f"\n50 scrapes with 5,000 users stored: Redis ran {ran}")
    assert value(samples, "pushapp_stored_messages_age_seconds") < 3 * COUNT_EVERY
    # One HGETALL a scrape; the gateway's own background work (lease, inbox, and one
    # count at most: a SCAN per thousand keys) on top.
    assert ran["hgetall"] == 50 and ran.get("scan", 0) <= 10
    assert sum(ran.values()) <= 50 + 30

    client = gateway.raw(auto_ack=True)
    try:
        client.call("login", {"myAuraId": users[0]})
        for n in range(3):
            assert gateway.api("POST", "/chats", json={"to": "offline-" + users[1], "n": n}
                               ).status_code == 200
        wait_for(lambda: stored() == (3, 4999), timeout=WAIT + COUNT_EVERY,
                 what="an ack and three stores counted")
    finally:
        client.close()


def test_metrics_token_is_required_when_set(start_gateway):
    gateway = start_gateway(METRICS_TOKEN="metrics-token-7f3b")
    url = gateway.url + "/metrics"
    for headers in ({}, {"Authorization": "Bearer metrics-token-7f3c"},
                    {"Authorization": "Basic metrics-token-7f3b"},
                    {"Authorization": "Bearer " + API_KEY}):
        answer = requests.get(url, headers=headers, timeout=10)
        assert answer.status_code == 401, headers
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "pushapp_" not in answer.text
    answer = requests.get(url, headers={"Authorization": "Bearer metrics-token-7f3b"},
                          timeout=10)
    assert answer.status_code == 200 and "pushapp_logins_total" in answer.text
    assert gateway.log_text().count("metrics scrape refused") == 4


def test_many_observations_at_once_count_as_each_would() -> None:
    """pushapp.internals.prometheus_histograms.observe_many: one write per bucket, the same
    buckets, count and sum as observing each amount, bounds and beyond the last included."""
    from prometheus_client import CollectorRegistry, Histogram

    from pushapp.internals.prometheus_histograms import observe_many

    amounts = [0.0, 0.05, 0.051, 0.1, 3.0, 60, 61, 1e9, 0.25, 0.25]
    samples = []
    for observe in (lambda child: [child.observe(a) for a in amounts],
                    lambda child: observe_many(child, amounts)):
        histogram = Histogram("h", "h", ["kind"], buckets=(0.05, 0.1, 0.25, 1, 60),
                              registry=CollectorRegistry())
        observe(histogram.labels("chat"))
        observe_many(histogram.labels("chat"), [])
        samples.append({(s.name, s.labels.get("le")): s.value
                        for s in histogram.collect()[0].samples if not s.name.endswith("_created")})
    assert samples[0] == samples[1]
    assert samples[1][("h_count", None)] == len(amounts)
