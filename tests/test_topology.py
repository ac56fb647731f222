"""The shipped topology under load and restarts: supervisord runs three gateway instances
of one worker each from supervisor/pushapp.conf (PUSHAPP_INSTANCES=3), nginx balances them
with deploy/nginx/pushapp.conf, and all share one Redis. Swarms of real clients
(socket.io-client under node, python-socketio) connect through nginx from distinct
loopback addresses, log in on every connect, chat, and take stored notifications that a
business server posts through the HTTP API, while the instances are restarted as a group
and one at a time.

Each test prints what it measured. ``bin/test -m deployment`` runs them apart; nginx is
needed (``support.require_binary``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fleets import Fleet, PollingClients, Swarm, Traffic, account, addresses, settle
from pushapp.ops.embedded_redis import free_port
from pushapp.store.store import user_key
from support import ROOT, Supervisor, require_binary, uid, wait_for

pytestmark = pytest.mark.deployment

INSTANCES = 3
DRAIN_WINDOW = 2.0
# The clients' default reconnection delay, socket.io-client's and python-socketio's
# alike: 1 s doubling up to 5 s, each give or take half.
BACKOFF_MAX = 5 * 1.5
# Seconds nginx skips an instance that refused a connection (deploy/nginx/pushapp.conf).
FAIL_TIMEOUT = 2
# Shorter than the default (60 s), for the reason in PollingClients.
PING_INTERVAL = 10
NGINX_CONF = ROOT / "deploy" / "nginx" / "pushapp.conf"
# The instances' ports in the shipped file: BIND's default port, + INSTANCE.
SHIPPED_PORT = 5000

NGINX_MAIN = """
daemon off;
master_process off;
pid {folder}/nginx.pid;
events {{
    worker_connections 4096;
}}
http {{
    log_format topology '$remote_addr "$request" $status $upstream_addr';
    access_log {folder}/access.log topology;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/pushapp.conf;
}}
"""


def shipped_nginx_conf(listen: int, first_port: int) -> str:
    """deploy/nginx/pushapp.conf as shipped, but for this test's ports: its instance lines'
    ports and its listen line change, nothing else."""
    text = NGINX_CONF.read_text()
    changes = {f"server 127.0.0.1:{SHIPPED_PORT + i} ": f"server 127.0.0.1:{first_port + i} "
               for i in range(INSTANCES)}
    changes["listen 80;"] = f"listen 127.0.0.1:{listen};"
    for old, new in changes.items():
        assert text.count(old) == 1, f"{NGINX_CONF} should hold {old!r} once"
        text = text.replace(old, new)
    return text


class Nginx:
    """nginx serving the shipped configuration in front of the instances."""

    def __init__(self, binary: str, folder: Path, first_port: int) -> None:
        self.binary = binary
        self.folder = folder
        folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "pushapp.conf").write_text(shipped_nginx_conf(self.port, first_port))
        (folder / "nginx.conf").write_text(NGINX_MAIN.format(folder=folder))
        self.process: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        with open(self.folder / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                [self.binary, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
                 "-e", str(self.folder / "error.log")], stdout=stderr, stderr=stderr)

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError("nginx exited: "
                                     + (self.folder / "stderr.log").read_text(errors="replace"))
            try:
                return requests.get(self.url + "/monitor", timeout=1).text == "OK"
            except requests.RequestException:
                return False

        wait_for(up, what="nginx to serve /monitor")
        return self

    def logged(self) -> int:
        """How far the access log goes now, for ``requests_from``."""
        return (self.folder / "access.log").stat().st_size

    def requests_from(self, since: int) -> Counter[tuple[str, str]]:
        """Socket.IO requests nginx logged after ``since``, by client address and transport."""
        with open(self.folder / "access.log", "rb") as log:
            log.seek(since)
            text = log.read().decode()
        return Counter(re.findall(r'^(\S+) "\S+ /socket\.io/\?\S*transport=(\w+)', text,
                                  re.MULTILINE))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@dataclasses.dataclass
class Topology:
    supervisor: Supervisor
    nginx: Nginx

    def instance_of(self) -> dict[str, int]:
        """Each instance's worker (its node name), to its INSTANCE number."""
        nodes = self.supervisor.wait_ready()
        return {node: instance for instance, node in enumerate(nodes)}

    @property
    def redis(self) -> Any:
        return self.supervisor.redis

    def user_key(self, user: str, part: str) -> str:
        return user_key("pushapp:", user, part)


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory, start_redis) -> Iterator[Topology]:
    binary = require_binary("nginx", "nginx-light")
    folder = tmp_path_factory.mktemp("topology")
    supervisor = Supervisor(folder, start_redis(), INSTANCES, CHAT_FILTER="direct",
                            DRAIN_WINDOW=DRAIN_WINDOW, PING_INTERVAL=PING_INTERVAL,
                            PING_TIMEOUT=5)
    nginx = Nginx(binary, folder / "nginx", supervisor.port)
    try:
        supervisor.start()
        nginx.start()
        yield Topology(supervisor, nginx)
    finally:
        nginx.stop()
        supervisor.shutdown()


def spread(topology: Topology, fleet: Fleet) -> Counter[int]:
    """How many of the fleet's users each instance holds, from the presence in Redis."""
    instance_of = topology.instance_of()
    with topology.redis.pipeline(transaction=False) as pipe:
        for user in fleet.users:
            pipe.hget(topology.user_key(user, "on"), "node")
        nodes = pipe.execute()
    return Counter(instance_of.get(node.decode()) for node in nodes if node)


def restart(topology: Topology, fleet: Fleet, target: str, others_stay_up: bool) -> dict:
    """``supervisorctl restart target`` while the fleet works; the figures. Every client it
    cut off is told nothing that stops it from reconnecting, and logs in again within the
    command's time (the drain, the exit, the start) and one retry: its backoff, nginx's
    fail_timeout if every instance was down, the time clients of its kind may take to
    notice (``Fleet.unnoticed``), and 3 s for the reconnection itself while every client
    reconnects. When ``others_stay_up`` each client is back within its backoff of being
    cut off."""
    started = time.time() * 1000
    topology.supervisor.ctl("restart", target)
    took = (time.time() * 1000 - started) / 1000
    bound = took + BACKOFF_MAX + FAIL_TIMEOUT + fleet.unnoticed + 3
    cut = {line["c"] for line in fleet.of("disconnect") if line["t"] > started}
    back = settle(fleet.all_logged_in, timeout=bound + 5)
    outages = _outages(fleet, started)
    reasons = Counter(line["reason"] for line in fleet.of("disconnect") if line["t"] > started)
    last_login = max((line["t"] for line in fleet.of("login") if line["t"] > started),
                     default=math.inf)
    figures = {"restart": target, "command took s": round(took, 1),
               "clients cut off": len(cut), "disconnects": len(outages),
               "longest outage s": _seconds(max(outages, default=0)),
               "all back after s": _seconds((last_login - started) / 1000),
               "bound s": round(bound, 1), "disconnect reasons": dict(reasons)}
    print(f"\n{json.dumps(figures)}")
    assert cut, "the restart cut no client off"
    assert not {"io server disconnect", "server disconnect"} & set(reasons), (
        f"clients were told not to reconnect: {dict(reasons)}")
    assert back, f"clients not logged in again, with their last lines: {fleet.stragglers()}"
    assert (last_login - started) / 1000 <= bound, figures
    if others_stay_up:
        assert max(outages) <= BACKOFF_MAX, figures
    return figures


def _outages(fleet: Fleet, since: float) -> list[float]:
    """For each disconnect after ``since``, the seconds until its client's next login."""
    logins: dict[int, list[float]] = defaultdict(list)
    for line in fleet.of("login"):
        if line["ack"] == 1:
            logins[line["c"]].append(line["t"])
    return [(min((t for t in logins[cut["c"]] if t > cut["t"]), default=math.inf) - cut["t"])
            / 1000 for cut in fleet.of("disconnect") if cut["t"] > since]


def _seconds(value: float) -> float | None:
    return round(value, 1) if math.isfinite(value) else None


def restarts_lose_nothing(name: str, topology: Topology, fleet: Fleet) -> None:
    """Under traffic, restart every instance at once, then one; then account for it all."""
    wait_for(fleet.all_logged_in, timeout=60, what="every client to log in")
    traffic = Traffic(topology.nginx.url, fleet)
    try:
        time.sleep(2)
        restart(topology, fleet, "pushapp:*", others_stay_up=False)
        time.sleep(2)
        restart(topology, fleet, "pushapp:pushapp-1", others_stay_up=True)
        time.sleep(2)
    finally:
        traffic.stop()
    account(name, fleet, traffic, topology)


def test_js_clients_spread_over_the_instances_and_get_everything(topology, node):
    """200 socket.io-client clients with the default transports (long-polling, then the
    upgrade) through nginx, from 100 addresses: the hash spreads them over the three
    instances, each login line names the client's own address (nginx's X-Forwarded-For),
    and every stored chat and notification arrives once."""
    users, sources = [uid("js") for _ in range(200)], addresses(0, 100) * 2
    since = topology.nginx.logged()
    swarm = Swarm(node, topology.nginx.url, users, sources)
    try:
        wait_for(swarm.all_logged_in, timeout=60, what="200 logins")
        wait_for(lambda: swarm.transports() == {"websocket": 200}, what="every upgrade")
        per_instance = spread(topology, swarm)
        print(f"\nclients per instance: {dict(sorted(per_instance.items()))}")
        assert sorted(per_instance) == list(range(INSTANCES)), per_instance
        assert min(per_instance.values()) >= 20, per_instance
        traffic = Traffic(topology.nginx.url, swarm)
        time.sleep(5)
        traffic.stop()
        figures = account("js clients, no restart", swarm, traffic, topology)
        assert figures["duplicates after a reconnect"] == 0 and figures["reconnected"] == 0
    finally:
        swarm.close()
    mine = set(users)
    logged = {(user, address) for user, address in re.findall(
        r" login user=(\S+) device=swarm sid=\S+ address=(\S+)", topology.supervisor.log_text())
        if user in mine}
    assert logged == set(zip(users, sources))
    by_source = topology.nginx.requests_from(since)
    assert {address for address, _ in by_source} == set(sources), (
        "every client's requests, long polls and websocket alike, leave from its address")
    assert {transport for _, transport in by_source} == {"polling", "websocket"}


def test_js_clients_come_back_after_restarts_and_lose_nothing(topology, node):
    users = [uid("js") for _ in range(200)]
    swarm = Swarm(node, topology.nginx.url, users, addresses(0, 100) * 2)
    try:
        restarts_lose_nothing("js clients, restarts", topology, swarm)
    finally:
        swarm.close()


def test_polling_clients_come_back_after_restarts_and_lose_nothing(topology):
    """python-socketio on long-polling only: every request of a session must reach the
    instance that holds it, by the address hash alone."""
    users = [uid("py") for _ in range(50)]
    fleet = PollingClients(topology.nginx.url, users, addresses(1, 50), PING_INTERVAL)
    try:
        assert len(spread(topology, fleet)) == INSTANCES
        restarts_lose_nothing("polling clients, restarts", topology, fleet)
    finally:
        fleet.close()
