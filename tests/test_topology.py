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

import abc
import dataclasses
import json
import math
import random
import re
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import socketio

from pushapp.embedded_redis import free_port
from support import (API_KEY, JS_DIR, ROOT, WAIT, Supervisor, require_binary, uid,
                     wait_for)

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

    def key(self, *parts: str) -> str:
        return "pushapp:" + ":".join(parts)


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


class Fleet(abc.ABC):
    """Clients of one kind; client ``c`` is ``users[c]`` connecting from ``addresses[c]``.
    What they report is kept as lines (dicts in tests/js/swarm.mjs's format: ``type``,
    client ``c``, its connection count ``n``, time ``t`` in ms since the epoch).
    ``unnoticed`` is how long a client of this kind may take to notice a lost session."""

    unnoticed = 0.0

    def __init__(self, users: list[str], addresses: list[str]) -> None:
        self.users = users
        self.addresses = addresses
        self.lines: list[dict] = []
        self.logged_in: dict[int, bool] = {}
        self._lock = threading.Lock()

    def record(self, line: dict) -> None:
        with self._lock:
            self.lines.append(line)
            if line["type"] == "login":
                self.logged_in[line["c"]] = line["ack"] == 1
            elif line["type"] == "disconnect":
                self.logged_in[line["c"]] = False

    def of(self, *types: str) -> list[dict]:
        with self._lock:
            return [line for line in self.lines if line["type"] in types]

    def stragglers(self) -> dict[int, list[dict]]:
        """The clients not logged in now, with their last connection lines."""
        kinds = ("connect", "connect_error", "login", "disconnect")
        with self._lock:
            out = [c for c in range(len(self.users)) if not self.logged_in.get(c)]
            return {c: [line for line in self.lines
                        if line.get("c") == c and line["type"] in kinds][-6:] for c in out}

    def all_logged_in(self) -> bool:
        with self._lock:
            return len(self.logged_in) == len(self.users) and all(self.logged_in.values())

    @abc.abstractmethod
    def chat(self, c: int, to: str, key: str) -> None:
        """Client ``c`` sends ``{to, key}`` as a chat if it is logged in: a ``chat_sent``
        line when it is acked, else a ``chat_unsent`` line."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect every client."""


class Swarm(Fleet):
    """socket.io-client sockets with the client's defaults, all in one node process
    (tests/js/swarm.mjs; what it writes on stderr goes to the test's)."""

    def __init__(self, node: str, url: str, users: list[str], addresses: list[str]) -> None:
        super().__init__(users, addresses)
        self.process = subprocess.Popen(
            [node, str(JS_DIR / "swarm.mjs"), url], cwd=JS_DIR, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self._stdin = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self._send({"op": "add", "clients": [{"user": user, "address": address}
                                             for user, address in zip(users, addresses)]})

    def _read(self) -> None:
        for line in self.process.stdout:
            self.record(json.loads(line))

    def _send(self, command: dict) -> None:
        with self._stdin:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()

    def chat(self, c: int, to: str, key: str) -> None:
        self._send({"op": "chat", "c": c, "to": to, "key": key})

    def transports(self) -> Counter[str]:
        """How many clients are on each transport now."""
        self._send({"op": "summary"})
        summary = wait_for(lambda: self.of("summary"), what="a summary from node")[-1]
        with self._lock:
            self.lines.remove(summary)
        return Counter(client["transport"] for client in summary["clients"])

    def close(self) -> None:
        try:
            self._send({"op": "close"})
            self.process.stdin.close()
            self.process.wait(10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


class SourceAddress(requests.adapters.HTTPAdapter):
    """Connects from a chosen local address."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, source_address=(self.address, 0), **kwargs)


class PollingClients(Fleet):
    """python-socketio clients on long-polling only, reconnecting with the library's
    defaults, each a browser page of the site nginx serves (its Origin).

    When a POST of theirs is refused (nginx sent it to the client's own instance, back
    from a restart, which does not know the session held by the instance it had failed
    over to), python-engineio (4.15) stops only its writer: the client notices when its
    pending poll is answered, by a message or the next ping, then reconnects."""

    unnoticed = float(PING_INTERVAL)

    def __init__(self, url: str, users: list[str], addresses: list[str]) -> None:
        super().__init__(users, addresses)
        self.connects = [0] * len(users)
        self.clients = [self._client(c) for c in range(len(users))]
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda sio: sio.connect(
                url, transports=["polling"], headers={"Origin": url}, wait_timeout=WAIT,
                retry=True), self.clients))

    def _client(self, c: int) -> socketio.Client:
        session = requests.Session()
        session.mount("http://", SourceAddress(self.addresses[c]))
        sio = socketio.Client(http_session=session)

        def out(kind: str, **fields: Any) -> None:
            self._out(c, kind, **fields)

        def login(*ack: Any) -> None:
            out("login", ack=ack[0] if ack else None, error=None, transport="polling")

        def connected() -> None:
            self.connects[c] += 1
            out("connect", sid=sio.get_sid(), transport="polling")
            sio.emit("login", {"myAuraId": self.users[c], "deviceId": "polling"},
                     callback=login)

        def chat(batch: str) -> int:
            messages = json.loads(batch)
            out("chat", messages=[{"key": m.get("key"), "mid": m.get("mid")}
                                  for m in messages])
            return len(messages)

        def notification(payload: str) -> int:
            message = json.loads(payload)
            out("notification", key=message.get("key"), mid=message.get("mid"))
            return 1

        sio.on("connect", connected)
        sio.on("disconnect", lambda reason: out("disconnect", reason=reason))
        sio.on("chat", chat)
        sio.on("notification", notification)
        return sio

    def _out(self, c: int, kind: str, **fields: Any) -> None:
        self.record({"type": kind, "c": c, "n": self.connects[c], "t": time.time() * 1000,
                     **fields})

    def chat(self, c: int, to: str, key: str) -> None:
        if not self.logged_in.get(c):
            self._out(c, "chat_unsent", key=key)
            return
        try:
            self.clients[c].emit(
                "chat", {"to": to, "key": key},
                callback=lambda *ack: self._out(c, "chat_sent", key=key,
                                                ack=ack[0] if ack else None, error=None))
        except socketio.exceptions.SocketIOError:
            self._out(c, "chat_unsent", key=key)

    def close(self) -> None:
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda sio: sio.disconnect(), self.clients))


class Traffic:
    """A business server posting stored notifications through nginx, each with an
    Idempotency-Key and again until it is answered 200 (then it is stored: docs/http-api.md),
    and clients chatting to each other; until ``stop``."""

    def __init__(self, url: str, fleet: Fleet, pause: float = 0.03) -> None:
        self.url = url
        self.fleet = fleet
        self.pause = pause
        self.tag = uid("t")
        self.notifications: dict[str, tuple[str, str]] = {}
        self.chats: dict[str, str] = {}
        self.api_retries = 0
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._notify, daemon=True),
                         threading.Thread(target=self._chat, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _notify(self) -> None:
        session = requests.Session()
        for seq in range(1_000_000):
            if self._stopping.is_set():
                return
            key, user = f"{self.tag}-n{seq}", random.choice(self.fleet.users)
            answer = self._post(session, key, {"toWho": [user], "needStore": True, "key": key})
            self.notifications[key] = (user, answer["ids"][user])
            self._stopping.wait(self.pause)

    def _post(self, session: requests.Session, key: str, body: dict) -> dict:
        while True:
            try:
                answer = session.post(self.url + "/api/v1/notifications", json=body, timeout=5,
                                      headers={"Authorization": f"Bearer {API_KEY}",
                                               "Idempotency-Key": key})
                if answer.status_code == 200:
                    return answer.json()
            except requests.RequestException:
                pass
            self.api_retries += 1
            time.sleep(0.1)

    def _chat(self) -> None:
        users = self.fleet.users
        for seq in range(1_000_000):
            if self._stopping.is_set():
                return
            c, to = random.randrange(len(users)), random.choice(users)
            key = f"{self.tag}-c{seq}"
            self.chats[key] = to
            self.fleet.chat(c, to, key)
            self._stopping.wait(self.pause)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)

    def stored(self) -> dict[str, str]:
        """Every stored message, key to recipient: the notifications answered 200, and the
        chats acked 1 (stored before the ack)."""
        accepted = {line["key"] for line in self.fleet.of("chat_sent") if line["ack"] == 1}
        return {**{key: user for key, (user, _) in self.notifications.items()},
                **{key: to for key, to in self.chats.items() if key in accepted}}


def account(name: str, fleet: Fleet, traffic: Traffic, topology: Topology) -> dict:
    """Check every stored message against what the clients got; print and return the counts.

    At least once: a message is delivered until an ack of it is processed. One delivered
    on a connection that closed before its ack arrived comes again after the reconnect,
    with the same mid; such duplicates are counted apart, any other is wrong. A chat whose
    own ack was lost with its connection may have been stored: it may arrive, only to
    its recipient."""
    stored = traffic.stored()
    recipients = {**traffic.chats, **stored}
    settle(lambda: set(stored) <= _delivered_keys(fleet), timeout=30)
    settle(lambda: _left_unacked(topology, fleet.users) == 0, timeout=15)
    seen: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for line in fleet.of("chat", "notification"):
        for message in line.get("messages") or [line]:
            seen[message["key"]].append((line["c"], line["n"], message["mid"]))
    after_reconnect, wrong = 0, []
    for key, deliveries in seen.items():
        if any(fleet.users[c] != recipients.get(key) for c, _, _ in deliveries):
            wrong.append((key, deliveries))
        for (c0, n0, mid0), (c1, n1, mid1) in zip(deliveries, deliveries[1:]):
            if (c1, mid1) == (c0, mid0) and n1 > n0:
                after_reconnect += 1
            else:
                wrong.append((key, deliveries))
    mids = {key: mid for key, (_, mid) in traffic.notifications.items()}
    wrong += [(key, seen[key]) for key, mid in mids.items()
              if seen.get(key) and seen[key][0][2] != mid]
    disconnects = fleet.of("disconnect")
    chats_sent = len(traffic.chats) - len(fleet.of("chat_unsent"))
    chats_acked = len(stored) - len(traffic.notifications)
    figures = {
        "clients": len(fleet.users),
        "connected": len({line["c"] for line in fleet.of("connect")}),
        "reconnected": len({line["c"] for line in fleet.of("connect") if line["n"] > 1}),
        "stored": len(stored),
        "notifications": len(traffic.notifications),
        "chats acked": chats_acked,
        "chats unconfirmed": chats_sent - chats_acked,
        "unconfirmed chats delivered": len(set(seen) - set(stored)),
        "delivered": len(set(stored) & set(seen)),
        "lost": len(set(stored) - set(seen)),
        "duplicates after a reconnect": after_reconnect,
        "wrong deliveries": len(wrong),
        "left unacked": _left_unacked(topology, fleet.users),
        "api retries": traffic.api_retries,
        "disconnect reasons": dict(Counter(line["reason"] for line in disconnects)),
    }
    print(f"\n{name}: {json.dumps(figures)}")
    assert figures["lost"] == 0 and not wrong, wrong[:5]
    assert figures["left unacked"] == 0
    return figures


def settle(check: Callable[[], bool], timeout: float) -> bool:
    """Wait up to ``timeout`` for ``check``, without failing: the counts tell what is
    missing. Whether it came true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _delivered_keys(fleet: Fleet) -> set[str]:
    return {message["key"] for line in fleet.of("chat", "notification")
            for message in line.get("messages") or [line]}


def _left_unacked(topology: Topology, users: list[str]) -> int:
    """Stored messages of ``users`` that no ack has removed."""
    pipe = topology.supervisor.redis.pipeline()
    for user in users:
        pipe.xlen(topology.key("chat", user))
        pipe.xlen(topology.key("notif", user))
    return sum(pipe.execute())


def addresses(third: int, count: int) -> list[str]:
    """``count`` loopback addresses 127.0.``third``.2 and on, one a client."""
    return [f"127.0.{third}.{2 + i}" for i in range(count)]


def spread(topology: Topology, fleet: Fleet) -> Counter[int]:
    """How many of the fleet's users each instance holds, from the presence in Redis."""
    instance_of = topology.instance_of()
    online = topology.supervisor.redis.hmget(topology.key("online"), fleet.users)
    return Counter(instance_of.get(json.loads(raw)[0]) for raw in online if raw)


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
    fleet = PollingClients(topology.nginx.url, users, addresses(1, 50))
    try:
        assert len(spread(topology, fleet)) == INSTANCES
        restarts_lose_nothing("polling clients, restarts", topology, fleet)
    finally:
        fleet.close()
