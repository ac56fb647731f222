"""What ``STORE_WAIT_REPLICAS=1`` costs the store: chats appended in batches, as the
listener stores what it heard together, against a master with one replica on loopback,
with WAIT off and on.

    .venv/bin/python -m bench.wait_cost [--rounds 7] [--chats 5000]

Starts its own redis-server pair (the system's, else the embedded one's binary) in a
temporary directory and stops it. Per batch size and setting, each round stores
``--chats`` chats to 1,000 users; the table gives the medians over the rounds of: wall µs
per stored chat, the client's CPU µs per stored chat, and the round trip of one store call
(median and 99th percentile of the round's calls). The settings alternate within each
round, so that both see the same machine.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from pushapp.config import Config
from pushapp.ops.embedded_redis import find_binary, free_port
from pushapp.store.redis_url import connect
from pushapp.store.store import Store

HOST = "127.0.0.1"
BATCHES = (1, 10, 100)
USERS = 1000
CHAT = b'{"from":"alice","to":"%s","text":"' + b"x" * 150 + b'","time":1700000000000}'


def _server(binary: str, directory: Path, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    directory.mkdir()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--logfile", str(directory / "redis.log"),
         *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    client = redis.Redis(HOST, port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.05)


def _store(port: int, replicas: int) -> Store:
    config = Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": f"redis://{HOST}:{port}/0",
                              "KEY_PREFIX": f"bench{replicas}:",
                              "STORE_WAIT_REPLICAS": str(replicas),
                              "STORE_WAIT_TIMEOUT_MS": "1000"})
    return Store(config, connect(config))


def _round(store: Store, batch: int, chats: int) -> tuple[float, float, float, float]:
    """µs per chat (wall, CPU), and the median and p99 of a store call's round trip (µs)."""
    calls = max(1, chats // batch)
    users = [f"user{i}" for i in range(USERS)]
    payloads = [(user, CHAT % user.encode()) for user in users] * 2
    latencies = []
    wall, cpu = time.perf_counter(), time.process_time()
    for call in range(calls):
        start = call * batch % USERS
        items = payloads[start:start + batch]
        began = time.perf_counter()
        store.store_chats(items)
        latencies.append(time.perf_counter() - began)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies.sort()
    stored = calls * batch
    return (wall / stored * 1e6, cpu / stored * 1e6, statistics.median(latencies) * 1e6,
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chats", type=int, default=5000, help="chats per round and setting")
    options = parser.parse_args()
    binary = shutil.which("redis-server") or find_binary()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        master, port = _server(binary, Path(folder) / "master", "--repl-diskless-sync-delay", "0")
        replica, replica_port = _server(binary, Path(folder) / "replica",
                                        "--replicaof", HOST, str(port))
        try:
            watch = redis.Redis(HOST, replica_port)
            while watch.info("replication").get("master_link_status") != "up":
                time.sleep(0.05)
            stores = {replicas: _store(port, replicas) for replicas in (0, 1)}
            results: dict[tuple[int, int], list[tuple[float, ...]]] = {}
            for store in stores.values():  # warm up: scripts loaded, connections made
                _round(store, 10, 200)
            for round_ in range(options.rounds):
                for batch in BATCHES:
                    order = (0, 1) if round_ % 2 == 0 else (1, 0)
                    for replicas in order:
                        results.setdefault((batch, replicas), []).append(
                            _round(stores[replicas], batch, options.chats))
        finally:
            replica.terminate()
            master.terminate()
            replica.wait()
            master.wait()
    print(f"redis-server: {version.split()[2]}; {options.rounds} rounds of "
          f"{options.chats} chats per batch size and setting; medians of the rounds\n")
    print("| chats per store call | STORE_WAIT_REPLICAS | µs per chat (wall) "
          "| client CPU µs per chat | round trip, median (µs) | round trip, p99 (µs) |")
    print("|---|---|---|---|---|---|")
    for batch in BATCHES:
        for replicas in (0, 1):
            rows = results[(batch, replicas)]
            medians = [statistics.median(row[i] for row in rows) for i in range(4)]
            print(f"| {batch} | {replicas} | " + " | ".join(f"{value:,.1f}" if value < 100
                                                           else f"{value:,.0f}"
                                                           for value in medians) + " |")


if __name__ == "__main__":
    main()
