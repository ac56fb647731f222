"""Swarms of real clients that act as apps do, and the business server that feeds them:
socket.io-client sockets under node (tests/js/swarm.mjs) or python-socketio clients on
long-polling, each logging in on every connect, chatting and acking what it is sent; a
business server posting stored notifications; and the account of what arrived against
what was stored. Used by the restart tests (tests/test_topology.py, tests/test_drain.py).

``gateway`` below is what the messages are stored in: anything with ``redis`` (a client
of the gateway's Redis) and ``key(*parts)`` (its key names), as support.Gateway and
test_topology.Topology have.
"""
from __future__ import annotations

import abc
import json
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import requests
import socketio

from support import API_KEY, JS_DIR, WAIT, uid, wait_for


def addresses(third: int, count: int) -> list[str]:
    """``count`` loopback addresses 127.0.``third``.2 and on: clients that come from several
    addresses, as an app's users do, and stay under a worker's per-address limits."""
    return [f"127.0.{third}.{2 + i}" for i in range(count)]


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
        with self._lock:
            out = [c for c in range(len(self.users)) if not self.logged_in.get(c)]
        return {c: self.last_lines(c) for c in out}

    def last_lines(self, c: int) -> list[dict]:
        """Client ``c``'s last connection lines."""
        kinds = ("connect", "connect_error", "login", "disconnect")
        with self._lock:
            return [line for line in self.lines
                    if line.get("c") == c and line["type"] in kinds][-6:]

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

    
    def __init__(self, url: str, users: list[str], addresses: list[str],
                 ping_interval: float) -> None:
        super().__init__(users, addresses)
        self.unnoticed = ping_interval
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


def account(name: str, fleet: Fleet, traffic: Traffic, gateway: Any) -> dict:
    """Check every stored message against what the clients got; print and return the counts.

    At least once: a message is delivered until an ack of it is processed. One delivered
    on a connection that closed before its ack arrived comes again after the reconnect,
    with the same mid; such duplicates are counted apart, any other is wrong. A chat whose
    own ack was lost with its connection may have been stored: it may arrive, only to
    its recipient."""
    stored = traffic.stored()
    recipients = {**traffic.chats, **stored}
    settle(lambda: set(stored) <= _delivered_keys(fleet), timeout=30)
    settle(lambda: _left_unacked(gateway, fleet.users) == 0, timeout=15)
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
        "left unacked": _left_unacked(gateway, fleet.users),
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


def _left_unacked(gateway: Any, users: list[str]) -> int:
    """Stored messages of ``users`` that no ack has removed."""
    pipe = gateway.redis.pipeline()
    for user in users:
        pipe.xlen(gateway.user_key(user, "chat"))
        pipe.xlen(gateway.user_key(user, "notif"))
    return sum(pipe.execute())
