"""The pub/sub listener against what business servers may throw at it: messages far over
MAX_CHANNEL_MESSAGE_BYTES, messages at the limit, and more than it can store at once.
Real gunicorn, real redis-server; each test prints its figures."""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from support import Gateway, uid, wait_for
from test_metrics import scrape, value

MB = 2**20
LIMIT = MB  # MAX_CHANNEL_MESSAGE_BYTES' default
QUEUE = 16 * MB  # what the listener's queue holds with that limit


def chat_of(size: int, to: str, **extra: object) -> bytes:
    """A valid chat for ``to`` of exactly ``size`` bytes."""
    head = json.dumps({"from": "p", "to": to, **extra, "pad": ""}).encode()
    return head[:-2] + b"x" * (size - len(head)) + b'"}'


def refusals(gateway: Gateway) -> float:
    return value(scrape(gateway), "pushapp_errors_total", reason="channel_message_too_large")


@pytest.fixture(scope="module")
def guarded(start_gateway) -> Iterator[Gateway]:
    gateway = start_gateway()
    yield gateway
    gateway.assert_unharmed()


def test_huge_channel_messages_are_refused_and_the_listener_stays(guarded):
    """Six 20 MB chats on snschat at once, then 20 stored notifications: Redis's default
    output buffer limit for pub/sub (32 MB) dropped the listener here, and the
    notifications published while it reconnected were lost."""
    user, victim = uid(), uid()
    client = guarded.raw(auto_ack=True)
    client.call("login", {"myAuraId": user})
    refused_before = refusals(guarded)
    rss_before = guarded.worker_rss()
    guarded.reset_peak_rss()
    try:
        with guarded.redis.pipeline(transaction=False) as pipe:
            for n in range(6):
                pipe.publish("snschat", chat_of(20 * MB, victim, n=n))
            heard = pipe.execute()
        published = [guarded.redis.publish("notification", json.dumps(
            {"toWho": [user], "needStore": True, "seq": seq})) for seq in range(20)]
        wait_for(lambda: len(client.received) >= 20, timeout=30, what="the notifications")
        rss_after, peak = guarded.worker_rss(), guarded.worker_rss("VmHWM")
        samples = scrape(guarded)
        refused = refusals(guarded) - refused_before
        lines = [line for line in guarded.log_text().splitlines()
                 if "refused a message" in line and victim in line]
        print(f"\nhuge messages: PUBLISH answers {heard} then {set(published)}; "
              f"{len(client.received)} notifications delivered; {refused:.0f} refused; "
              f"worker RSS {rss_before / MB:.1f} -> {rss_after / MB:.1f} MB, "
              f"peak {peak / MB:.1f} MB; "
              f"longest log line {max(map(len, lines), default=0)} characters")
        assert heard == [1] * 6 and published == [1] * 20
        assert [m["seq"] for m in client.received] == list(range(20))
        assert refused == 6 and len(lines) == 6
        assert all(len(line) < 600 for line in lines)
        assert guarded.redis.exists(guarded.user_key(victim, "chat")) == 0
        assert value(samples, "pushapp_listener_reconnects_total") == 0
        assert "listener lost Redis" not in guarded.log_text()
        assert peak - rss_before < 8 * MB, "a refused message was held in memory"
    finally:
        client.close()


def test_a_message_at_the_limit_is_stored_and_delivered(guarded):
    user = uid()
    client = guarded.raw(auto_ack=True)
    client.call("login", {"myAuraId": user})
    try:
        guarded.publish("snschat", chat_of(LIMIT + 1, user, n=0))
        guarded.publish("snschat", chat_of(LIMIT, user, n=1))
        wait_for(lambda: client.received, what="the chat at the limit")
        assert [m["n"] for m in client.received] == [1]
        assert len(json.dumps(client.received[0])) >= LIMIT
        assert f"refused a message of {LIMIT + 1} bytes from snschat" in guarded.log_text()
    finally:
        client.close()


def test_inbox_entries_over_the_limit_are_refused_and_removed(guarded):
    user = uid()
    inbox = guarded.key("inbox")
    client = guarded.raw(auto_ack=True)
    client.call("login", {"myAuraId": user})
    try:
        refused = guarded.redis.xadd(inbox, {"channel": "snschat",
                                             "data": chat_of(3 * MB, user, n=0)})
        guarded.redis.xadd(inbox, {"channel": "snschat", "data": chat_of(LIMIT, user, n=1)})
        wait_for(lambda: client.received, what="the entry at the limit")
        assert [m["n"] for m in client.received] == [1]
        wait_for(lambda: guarded.redis.xlen(inbox) == 0, what="both entries removed")
        line = f"from the inbox (entry {refused.decode()})"
        assert [line in text for text in guarded.log_text().splitlines()].count(True) == 1
    finally:
        client.close()


def test_a_burst_waits_in_redis_while_the_worker_cannot_read(guarded):
    """The worker stopped for a moment (as a busy CPU or a long pause would hold it) while
    60 MB are published: Redis keeps them for its listener (client-output-buffer-limit
    pubsub, raised in the embedded Redis), and nothing is lost."""
    user = uid()
    client = guarded.raw(auto_ack=True)
    client.call("login", {"myAuraId": user})
    pid = guarded.worker_pid()
    refused_before = refusals(guarded)
    os.kill(pid, signal.SIGSTOP)
    try:
        with guarded.redis.pipeline(transaction=False) as pipe:
            for n in range(40):
                pipe.publish("snschat", chat_of(LIMIT * 3 // 2, uid(), n=n))
            for seq in range(20):
                pipe.publish("notification", json.dumps(
                    {"toWho": [user], "needStore": True, "seq": seq}))
            heard = pipe.execute()
        [listener] = [c for c in guarded.redis.client_list(_type="pubsub")
                      if c["name"].startswith("pushapp-listener:")]
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        wait_for(lambda: len(client.received) >= 20, what="the notifications")
        refused = refusals(guarded) - refused_before
        waited = int(listener["omem"])
        print(f"\nburst while stopped: {waited / MB:.0f} MB waited in Redis for the listener; "
              f"{len(client.received)} notifications delivered")
        assert heard == [1] * 60 and waited > 40 * MB
        assert [m["seq"] for m in client.received] == list(range(20))
        assert refused == 40
        assert value(scrape(guarded), "pushapp_listener_reconnects_total") == 0
    finally:
        client.close()


def test_a_chat_retried_after_its_batch_is_counted_once(guarded):
    """Chats heard together are stored in one step; one whose store fails (its stream key
    holds a string) is retried alone until it is stored. Each is counted as handled once."""
    stuck, user = uid(), uid()
    guarded.redis.set(guarded.user_key(stuck, "chat"), "not a stream")

    def handled() -> float:
        return value(scrape(guarded), "pushapp_messages_in_total", kind="chat")

    before, stalls = handled(), guarded.log_text().count("not stored yet")
    with guarded.redis.pipeline(transaction=False) as pipe:
        for to in (user, stuck, user):
            pipe.publish("snschat", chat_of(100, to))
        assert pipe.execute() == [1, 1, 1]
    wait_for(lambda: guarded.log_text().count("not stored yet") > stalls,
             what="the handler to retry the stuck chat")
    guarded.redis.delete(guarded.user_key(stuck, "chat"))
    wait_for(lambda: guarded.redis.xlen(guarded.user_key(stuck, "chat")) == 1,
             what="the stuck chat stored")
    assert guarded.redis.xlen(guarded.user_key(user, "chat")) == 2
    assert handled() - before == 3


def test_a_full_queue_drops_with_a_log_line_and_a_count(guarded):
    """The handler stalls (its store fails: here the first chat's stream key holds a
    string, and the handler retries it) while the reader reads on: 16 MiB of messages
    wait, the rest are dropped, each with a log line and a count. Once the store works,
    what waited is stored, in order."""
    stuck, user = uid(), uid()
    guarded.redis.set(guarded.user_key(stuck, "chat"), "not a stream")
    stalls = guarded.log_text().count("not stored yet")
    guarded.publish("snschat", chat_of(100, stuck))
    wait_for(lambda: guarded.log_text().count("not stored yet") > stalls,
             what="the handler to stall")
    dropped_before = value(scrape(guarded), "pushapp_errors_total",
                           reason="channel_message_dropped")
    size, count = 800_000, 40
    with guarded.redis.pipeline(transaction=False) as pipe:
        for n in range(count):
            pipe.publish("snschat", chat_of(size, user, n=n))
        assert pipe.execute() == [1] * count

    def dropped() -> float:
        return value(scrape(guarded), "pushapp_errors_total",
                     reason="channel_message_dropped") - dropped_before

    # The queue holds 16 MiB, each message counted with 100 bytes more; the stalled chat
    # holds its share until it is stored.
    fits = (QUEUE - len(chat_of(100, stuck)) - 100) // (size + 100)
    wait_for(lambda: dropped() == count - fits, what="the queue to fill")
    guarded.redis.delete(guarded.user_key(stuck, "chat"))
    wait_for(lambda: guarded.redis.xlen(guarded.user_key(user, "chat")) == fits, timeout=20,
             what="what waited to be stored")
    lines = [line for line in guarded.log_text().splitlines() if "dropped a message" in line]
    print(f"\nfull queue: {count} chats of {size} bytes published while the handler "
          f"stalled: {fits} stored, {dropped():.0f} dropped")
    assert [m["n"] for m in guarded.pending("chat", user)] == list(range(fits))
    assert len(lines) == count - fits and all(len(line) < 600 for line in lines)
    assert guarded.pending("chat", stuck) != []
