"""Soak: thousands of connected clients under steady traffic for minutes.

Not in the default run (it takes ``SOAK_SECONDS``, 180 by default): ``bin/test -m soak``.
The clients are bench/loadgen.py's lean asyncio clients, in two processes; each logs in,
answers pings and acks what it gets, as an app does. The test prints the worker's RSS
over time and asserts that it does not keep growing, that every stored notification was
delivered and acknowledged, and how much memory comes back once the clients have left.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time

import pytest
import redis

from bench.loadgen import LoadGen
from support import wait_for

CLIENTS = int(os.environ.get("SOAK_CLIENTS", "2000"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))

pytestmark = [pytest.mark.soak, pytest.mark.timeout(SECONDS + 300)]
RECIPIENTS, RATE = 50, 10  # 10 stored notifications a second to 50 users: 500 deliveries/s


def _publish(redis_url: str, users: list[str], stop: threading.Event, sent: list[int]) -> None:
    client = redis.Redis.from_url(redis_url)
    while not stop.is_set():
        started = time.monotonic()
        body = {"toWho": random.sample(users, RECIPIENTS), "needStore": True, "ts": time.time()}
        if client.publish("notification", json.dumps(body)) > 0:
            sent[0] += RECIPIENTS
        stop.wait(max(0.0, 1 / RATE - (time.monotonic() - started)))
    client.close()


def test_thousands_of_clients_for_minutes_hold_steady(start_gateway):
    gateway = start_gateway(PING_INTERVAL=25, PING_TIMEOUT=20)
    users = [f"soak-{n}" for n in range(CLIENTS)]
    load = LoadGen("127.0.0.1", gateway.port, processes=2)
    try:
        start_rss = gateway.worker_rss()
        connected = load.connect(users, window=100)
        assert connected["ok"] == CLIENTS, connected
        stop, sent = threading.Event(), [0]
        publisher = threading.Thread(target=_publish,
                                     args=(gateway.redis_server.url, users, stop, sent))
        publisher.start()
        samples = []
        ends = time.monotonic() + SECONDS
        while time.monotonic() < ends:
            time.sleep(min(10.0, max(0.0, ends - time.monotonic())))
            samples.append(gateway.worker_rss())
        stop.set()
        publisher.join()
        wait_for(lambda: not any(gateway.redis.xlen(gateway.user_key(u, "notif")) for u in users),
                 timeout=60, what="every stored notification to be acked")
        snapshot = load.snapshot()
        delivered = snapshot["count"]["notif"]
        third = max(1, len(samples) // 3)
        early, late = statistics.median(samples[:third]), statistics.median(samples[-third:])
        load.drop()
        time.sleep(5)
        after = gateway.worker_rss()
        figures = {
            "clients": CLIENTS, "seconds": SECONDS, "published_deliveries": sent[0],
            "delivered": delivered, "lost": max(0, sent[0] - delivered),
            "connected_at_end": snapshot["connected"],
            "rss_mb": {"start": round(start_rss / 2**20, 1),
                       "samples": [round(s / 2**20, 1) for s in samples],
                       "after_all_left": round(after / 2**20, 1)},
        }
        print("\nsoak: " + json.dumps(figures))
        assert snapshot["connected"] == CLIENTS, "clients were dropped during the soak"
        assert delivered >= sent[0], "stored notifications were lost"
        assert late - early < 0.1 * early, f"RSS kept growing: {early} -> {late}"
    finally:
        load.close()
