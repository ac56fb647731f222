"""Fixtures: real redis-server processes and real gunicorn gateways, started per session.

Each gateway gets a Redis of its own, because pub/sub channels are shared by every
database of a server and two gateways must not both take one channel message.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from pushapp.config import Config
from pushapp.ops.embedded_redis import EmbeddedRedis, free_port
from pushapp.store.redis_url import connect
from pushapp.store.store import Store
from redis_servers import Cluster, redis_binary
from support import JS_DIR, LACKING, Client, Gateway, Subscriber, uid

SEED_CHANNELS = ("login_message_channel", "chat_filter_channel", "chat_message_history_channel",
                 "chat_message_channel", "geo")


@pytest.fixture(scope="session")
def start_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], EmbeddedRedis]]:
    """Start a throwaway redis-server (the embedded default's binary) on a free port."""
    servers: list[EmbeddedRedis] = []

    def start() -> EmbeddedRedis:
        server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Redis Cluster of three masters with a replica each (tests/redis_servers.py), for
    the tests of one module."""
    started = Cluster(tmp_path_factory.mktemp("cluster"), redis_binary()).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def store_config(start_redis: Callable[[], EmbeddedRedis]) -> Config:
    """Settings for a ``Store`` used in this process, on a Redis of this module's own."""
    return Config.from_env({"AUTH_MODE": "insecure", "REDIS_URL": start_redis().url,
                            "KEY_PREFIX": f"unit{uid()}:"})


@pytest.fixture
def store(store_config: Config) -> Iterator[Store]:
    """A ``Store`` called directly, without a gateway around it."""
    client = connect(store_config)
    yield Store(store_config, client)
    client.connection_pool.disconnect()


@pytest.fixture(scope="session")
def start_gateway(start_redis: Callable[[], EmbeddedRedis],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gateway]]:
    """Start gunicorn serving pushapp with these environment settings, on its own Redis."""
    gateways: list[Gateway] = []

    def start(**env: Any) -> Gateway:
        log = tmp_path_factory.mktemp("gateway") / "gunicorn.log"
        gateway = Gateway(start_redis(), log, **env)
        gateways.append(gateway)
        return gateway.start()

    yield start
    for gateway in gateways:
        gateway.terminate()
    for gateway in gateways:
        gateway.wait()


@pytest.fixture(scope="session")
def gateway(start_gateway: Callable[..., Gateway]) -> Iterator[Gateway]:
    """The gateway as the seed's users run it (external chat filter), with a short push
    delay so the no-ack push can be seen. After every test it must still be the same
    worker, with no traceback in its log, whatever the tests threw at it."""
    gateway = start_gateway(PUSH_DELAY=1.5)
    yield gateway
    gateway.assert_unharmed()


@pytest.fixture(scope="session")
def direct_gateway(start_gateway: Callable[..., Gateway]) -> Gateway:
    """A gateway with every knob turned: direct chat routing, its own channel names and key
    prefix, and small storage limits."""
    return start_gateway(
        CHAT_FILTER="direct", KEY_PREFIX="px:", CHANNEL_SNSCHAT="in_chat",
        CHANNEL_NOTIFICATION="in_notify", CHANNEL_LOGIN="out_login",
        CHANNEL_CHAT_HISTORY="out_history", CHANNEL_CHAT_PUSH="out_push",
        CHANNEL_CHAT_FILTER="out_filter", CHANNEL_GEO="out_geo",
        STORE_MAX_ENTRIES=5, STORE_MAX_AGE=2, MAX_EVENT_BYTES=2048,
        PING_INTERVAL=7, PING_TIMEOUT=4,
    )


@pytest.fixture
def channels(gateway: Gateway) -> Iterator[Subscriber]:
    subscriber = Subscriber(gateway.redis_server.url, *SEED_CHANNELS)
    yield subscriber
    subscriber.close()


@pytest.fixture
def clients(gateway: Gateway) -> Iterator[Callable[..., Client]]:
    """Make clients of the default gateway; all are closed after the test."""
    made: list[Client] = []

    def make(**kwargs: Any) -> Client:
        client = gateway.client(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def user() -> str:
    return uid()


def _pinned_version() -> str:
    return json.loads((JS_DIR / "package.json").read_text())["dependencies"]["socket.io-client"]


def _installed_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None


@pytest.fixture(scope="session")
def node() -> str:
    """node's path, once tests/js has its locked packages: a fresh clone gets them from
    ``npm ci``, and so does a checkout whose installed client is not the pinned one."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"JavaScript interop tests cannot run: {' and '.join(missing)} not on PATH. "
                    "Install Node.js 18 or newer with npm; these tests do not skip.",
                    pytrace=False)
    if _installed_version() != _pinned_version():
        try:
            result = subprocess.run([shutil.which("npm"), "ci", "--no-audit", "--no-fund"],
                                    cwd=JS_DIR, capture_output=True, text=True, timeout=100)
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {JS_DIR} took more than 100 s", pytrace=False)
        if result.returncode != 0:
            pytest.fail(f"npm ci in {JS_DIR} failed ({result.returncode}):\n"
                        f"{result.stdout}\n{result.stderr}", pytrace=False)
        assert _installed_version() == _pinned_version(), "npm ci did not install the pin"
    return shutil.which("node")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """End the run with a line per missing system program and the tests it kept from
    running (support.require_binary), so that such skips are not lost among the others."""
    lacking: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        found = re.search(LACKING + r" (\S+):", reason)
        if found:
            lacking[found.group(1)] += 1
    for name, count in sorted(lacking.items()):
        terminalreporter.write_line(f"{LACKING} {name}: {count} tests", red=True, bold=True)
