"""Real parts for the tests: a gunicorn gateway process, supervisord running the shipped
program, Redis subscribers, and two Socket.IO clients over real sockets (python-socketio's,
and a raw Engine.IO v4 one that can hold an ack back, send garbage, or drop the
connection without a goodbye)."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, NoReturn

import pytest
import redis
import requests
import socketio
import websocket

from pushapp.ops.embedded_redis import EmbeddedRedis, free_port
from pushapp.store.store import user_key

ROOT = Path(__file__).resolve().parents[1]
JS_DIR = ROOT / "tests" / "js"
WAIT = 10.0
API_KEY = "test-api-key"
# Starts the reason of a test skipped because a system program is missing; conftest.py
# counts these skips at the end of the run.
LACKING = "SKIPPED FOR LACK OF"
# The fields of a user's presence hash, in the order Gateway.presence lists them.
PRESENCE = ("node", "sid", "device", "since")


def require_binary(name: str, package: str) -> str:
    """The path of the system program ``name`` (Debian package ``package``). Where it is
    missing the test cannot run: on a developer's machine it is skipped, and the run ends
    with a line counting such skips; on CI (CI=true) it fails, so that a green CI means
    every test ran."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    lacking(f"{name}: not on PATH nor in /usr/sbin (apt-get install {package})")


def lacking(missing: str) -> NoReturn:
    """Skip the test for want of a system program (``missing`` starts with its name and a
    colon), or fail it on CI: see ``require_binary``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"MISSING {missing}; on CI (CI=true) every test must run", pytrace=False)
    pytest.skip(f"{LACKING} {missing}")


def refused_start(**settings: str) -> str:
    """Start gunicorn as deployed with these settings (and no other key or auth mode),
    expecting it to exit at once, before any worker: returns what it wrote."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_MODE", "JWT_"))}
    env.update({"BIND": f"127.0.0.1:{free_port()}", "REDIS_URL": "redis://127.0.0.1:1/0",
                **settings})
    started = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                              "wsgi:app"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=30)
    assert started.returncode != 0
    assert "Traceback" not in started.stderr and "Booting worker" not in started.stderr
    return started.stderr


def uid(prefix: str = "u") -> str:
    """A user id no other test uses, so tests share a gateway without seeing each other."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def without_mids(value: Any) -> Any:
    """A delivered message (or list of them) without the ``mid`` the gateway added."""
    if isinstance(value, list):
        return [without_mids(item) for item in value]
    return {key: item for key, item in value.items() if key != "mid"}


def wait_for(check: Callable[[], Any], timeout: float = WAIT, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Mailbox:
    """What a client or subscriber received, in order; ``take`` finds the first item a
    test is waiting for and keeps the others for later calls."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.backlog: list[Any] = []

    def put(self, item: Any) -> None:
        self.queue.put(item)

    def take(self, accept: Callable[[Any], bool], timeout: float, what: str) -> Any:
        for index, item in enumerate(self.backlog):
            if accept(item):
                return self.backlog.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout}s; got {self.backlog[-10:]}")
            try:
                item = self.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if accept(item):
                return item
            self.backlog.append(item)


class Gateway:
    """pushapp under gunicorn, as deployed: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

    def __init__(self, redis_server: EmbeddedRedis, log_path: Path, open_files: int = 0,
                 args: tuple[str, ...] = (), **env: Any) -> None:
        self.open_files = open_files
        self.args = args
        self.redis_server = redis_server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "BIND": f"127.0.0.1:{self.port}",
            "REDIS_URL": redis_server.url,
            "LOG_LEVEL": "INFO",
            "AUTH_MODE": "insecure",
            "API_KEYS": API_KEY,
            # Tests play thousands of users from one loopback address; test_abuse.py sets
            # the limit it tests.
            "MAX_HANDSHAKES_PER_IP": "100000",
            **{key: str(value) for key, value in env.items()},
        }
        self.prefix = self.env.get("KEY_PREFIX", "pushapp:")
        self.redis = redis.Redis.from_url(redis_server.url)
        self.process: subprocess.Popen | None = None
        self.node = ""

    def start(self) -> "Gateway":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), *self.args,
             "wsgi:app"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=self._limit_open_files if self.open_files else None,
        )
        log.close()
        self.node = self.wait_ready()["node"]
        return self

    def _limit_open_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def is_ready(self) -> bool:
        """Whether ``/health/ready`` answers 200 now."""
        try:
            return requests.get(self.url + "/health/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def assert_unharmed(self) -> None:
        """The worker that started is still the one serving, and nothing raised in it."""
        assert self.wait_ready()["node"] == self.node, "the worker died and was replaced"
        assert "Traceback" not in self.log_text(), self.log_tail(80)

    def ready_node(self, other_than: str) -> str | None:
        """The node of the worker answering ``/health/ready`` now, if it is ready and not
        ``other_than`` (a worker that was stopped)."""
        node = self.wait_ready()["node"]
        return node if node != other_than else None

    def wait_ready(self, timeout: float = 30.0) -> dict:
        def ready() -> dict | None:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n"
                                     + self.log_tail())
            try:
                answer = requests.get(self.url + "/health/ready", timeout=1)
            except requests.RequestException:
                return None
            return answer.json() if answer.status_code == 200 else None

        try:
            return wait_for(ready, timeout, "the gateway to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def stop(self) -> None:
        self.terminate()
        self.wait()

    def terminate(self) -> None:
        """Ask gunicorn to stop (SIGTERM), without waiting."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def user_key(self, user: str, part: str) -> str:
        """The key of one of ``user``'s things: ``chat``, ``notif``, ``on``, ``sent``."""
        return user_key(self.prefix, user, part)

    def publish(self, channel: str, message: Any) -> None:
        """Publish as a careful business server does: again while no gateway hears it."""
        data = message if isinstance(message, (bytes, str)) else json.dumps(message)
        wait_for(lambda: self.redis.publish(channel, data) > 0, what=f"a listener on {channel}")

    def pending(self, kind: str, user: str) -> list[dict]:
        """What the store holds for ``user`` (kind ``chat`` or ``notif``), oldest first."""
        return [json.loads(fields[b"m"]) for _, fields in self.redis.xrange(self.user_key(user, kind))]

    def presence(self, user: str) -> list | None:
        """The user's presence as stored: node, sid, device, since (ms)."""
        node, sid, device, since = self.redis.hmget(self.user_key(user, "on"), PRESENCE)
        return None if node is None else [node.decode(), sid.decode(), device.decode(),
                                          int(since)]

    def set_presence(self, user: str, node: str, sid: str, device: str, since: int) -> None:
        self.redis.hset(self.user_key(user, "on"), mapping=dict(zip(
            PRESENCE, (node, sid, device, since))))

    def api(self, method: str, path: str, headers: dict | None = None,
            **kwargs: Any) -> requests.Response:
        """A call to the HTTP API (``path`` after ``/api/v1``), with the API key."""
        return requests.request(method, f"{self.url}/api/v1{path}", timeout=WAIT,
                                headers={"Authorization": f"Bearer {API_KEY}", **(headers or {})},
                                **kwargs)

    def client(self, **kwargs: Any) -> "Client":
        return Client(self.url, **kwargs)

    def raw(self, auto_ack: bool = False) -> "RawClient":
        return RawClient(self.port, auto_ack)

    def worker_pid(self) -> int:
        """The pid of the worker serving now, from the node name it reports."""
        return int(self.wait_ready()["node"].split(":")[1])

    def worker_rss(self, field: str = "VmRSS") -> int:
        """Resident memory of the worker, in bytes; ``VmHWM``: its peak since start or
        since ``reset_peak_rss``."""
        status = Path(f"/proc/{self.worker_pid()}/status").read_text()
        return int(status.split(f"{field}:")[1].split()[0]) * 1024

    def reset_peak_rss(self) -> None:
        """Start the worker's peak resident memory (``VmHWM``) over from what it holds now."""
        Path(f"/proc/{self.worker_pid()}/clear_refs").write_text("5")


SUPERVISORD_CONF = """
[supervisord]
nodaemon=true
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid
childlogdir={folder}

[unix_http_server]
file={folder}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{folder}/supervisor.sock

[include]
files={root}/supervisor/pushapp.conf
"""


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports, below the range the kernel takes
    outgoing connections' ports from: the instances bind theirs one after the other, and
    a port of that range free now may be an outgoing connection's (to Redis, say) by then."""
    low = _ephemeral_low()
    while True:
        first = random.randrange(max(1024, low - 12000), low - count)
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
        return first


def _ephemeral_low() -> int:
    """The first port of the range outgoing connections take theirs from."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class Supervisor:
    """A real supervisord running the shipped program, supervisor/pushapp.conf, with
    ``instances`` gateways of one worker each on consecutive ports from ``port``."""

    def __init__(self, folder: Path, redis_server: EmbeddedRedis, instances: int,
                 **env: Any) -> None:
        self.folder = folder
        self.instances = instances
        self.port = free_ports(instances)
        self.conf = folder / "supervisord.conf"
        self.conf.write_text(SUPERVISORD_CONF.format(folder=folder, root=ROOT))
        self.env = {
            **os.environ,
            "PUSHAPP_HOME": str(ROOT),
            "PUSHAPP_INSTANCES": str(instances),
            "REDIS_URL": redis_server.url,
            "BIND": f"127.0.0.1:{self.port}",
            "AUTH_MODE": "insecure",
            "API_KEYS": API_KEY,
            **{key: str(value) for key, value in env.items()},
        }
        self.redis = redis.Redis.from_url(redis_server.url)
        self.process: subprocess.Popen | None = None

    def start(self) -> "Supervisor":
        self.process = subprocess.Popen(
            [Path(sys.executable).parent / "supervisord", "-c", self.conf], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def url(self, instance: int) -> str:
        return f"http://127.0.0.1:{self.port + instance}"

    def ctl(self, *args: str) -> str:
        """Run supervisorctl; its output (its exit status tells only whether all is RUNNING)."""
        return subprocess.run([Path(sys.executable).parent / "supervisorctl", "-c", self.conf,
                               *args], capture_output=True, text=True, timeout=60).stdout

    def states(self) -> dict[str, str]:
        """Each process's state, by name (``pushapp:pushapp-0``: ``RUNNING``)."""
        return dict(line.split()[:2] for line in self.ctl("status").splitlines()
                    if len(line.split()) >= 2)

    def node(self, instance: int) -> str | None:
        """The node name (host:worker pid) of an instance that is ready, else None."""
        try:
            answer = requests.get(self.url(instance) + "/health/ready", timeout=1)
        except requests.RequestException:
            return None
        return answer.json()["node"] if answer.status_code == 200 else None

    def wait_ready(self, timeout: float = 40.0) -> list[str]:
        """Wait until every instance is RUNNING and ready; their node names."""
        names = [f"pushapp:pushapp-{i}" for i in range(self.instances)]

        def ready() -> list[str] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"supervisord exited with {self.process.returncode}:\n"
                                     + self.log_tail())
            states = self.states()
            nodes = [self.node(i) for i in range(self.instances)]
            return nodes if all(states.get(n) == "RUNNING" for n in names) and all(nodes) \
                else None

        try:
            return wait_for(ready, timeout, "every instance to be RUNNING and ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.ctl('status')}\n{self.log_tail()}") from None

    def log_text(self) -> str:
        """What the instances wrote (supervisord keeps one log per process)."""
        return "".join(path.read_text(errors="replace")
                       for path in sorted(self.folder.glob("pushapp-*-stdout*.log")))

    def log_tail(self, lines: int = 40) -> str:
        own = self.folder / "supervisord.log"
        text = own.read_text(errors="replace") if own.exists() else ""
        return "\n".join((text + self.log_text()).splitlines()[-lines:])

    def shutdown(self) -> None:
        if self.process is None:
            return
        self.ctl("shutdown")
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Subscriber:
    """Listens on Redis channels in a thread, as a business server would."""

    def __init__(self, redis_url: str, *channels: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*channels)
        self.messages = Mailbox()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self.pubsub.listen():
                self.messages.put((message["channel"].decode(), json.loads(message["data"])))
        except (redis.RedisError, ValueError, AttributeError):
            return

    def expect(self, channel: str, match: Callable[[Any], bool] = lambda m: True,
               timeout: float = WAIT) -> Any:
        """The first message on ``channel`` (decoded from JSON) that ``match`` accepts."""
        return self.messages.take(lambda item: item[0] == channel and match(item[1]),
                                  timeout, f"message on {channel}")[1]

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


class Client:
    """python-socketio's client, recording every event it gets. ``chat`` is acked with a
    count decided by ``chat_ack`` (default: the whole batch), ``notification`` with 1."""

    def __init__(self, url: str, transports: tuple[str, ...] = ("websocket",),
                 chat_ack: Callable[[list], Any] = len, connect: bool = True,
                 auth: dict | None = None, headers: dict | None = None) -> None:
        self.url = url
        self.transports = list(transports)
        self.auth = auth
        self.headers = headers or {}
        self.chat_ack = chat_ack
        self.events = Mailbox()
        self.sio = socketio.Client(reconnection=False)
        for name in ("chat", "notification", "logout", "error", "connect_error"):
            self.sio.on(name, self._recorder(name))
        self.sio.on("disconnect", lambda *args: self.events.put(("disconnect", None)))
        if connect:
            self.connect()

    def _recorder(self, name: str) -> Callable[..., Any]:
        def record(*args: Any) -> Any:
            data = args[0] if args else None
            self.events.put((name, data))
            if name == "chat":
                return self.chat_ack(json.loads(data))
            if name == "notification":
                return 1
            return None

        return record

    def connect(self) -> "Client":
        self.sio.connect(self.url, transports=self.transports, wait_timeout=WAIT, auth=self.auth,
                         headers=self.headers)
        return self

    def login(self, user: str, device: str = "dev-1", **extra: Any) -> Any:
        return self.sio.call("login", {"myAuraId": user, "deviceId": device, **extra},
                             timeout=WAIT)

    def call(self, event: str, *args: Any) -> Any:
        return self.sio.call(event, *args, timeout=WAIT) if args else \
            self.sio.call(event, timeout=WAIT)

    def expect(self, name: str, match: Callable[[Any], bool] = lambda d: True,
               timeout: float = WAIT) -> Any:
        """The next event ``name`` whose data ``match`` accepts (others are kept)."""
        return self.events.take(lambda item: item[0] == name and match(item[1]),
                                timeout, f"{name} event")[1]

    def expect_chats(self, count: int, timeout: float = WAIT) -> list[dict]:
        """Chat messages from as many ``chat`` batches as it takes to get ``count``."""
        messages: list[dict] = []
        while len(messages) < count:
            messages += json.loads(self.expect("chat", timeout=timeout))
        return messages

    def quiet(self, name: str, seconds: float) -> None:
        """Assert that no ``name`` event arrives for ``seconds``."""
        try:
            data = self.expect(name, timeout=seconds)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {name} event: {data!r}")

    def close(self) -> None:
        self.sio.disconnect()


class RawClient:
    """A Socket.IO v4 client speaking the frames itself over a real websocket. With
    ``auto_ack`` it acks every ``chat`` batch (with its count) and ``notification`` as it
    arrives and keeps the messages in ``received`` instead of queueing the events."""

    def __init__(self, port: int, auto_ack: bool = False) -> None:
        self.auto_ack = auto_ack
        self.received: list[dict] = []
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=WAIT)
        opening = self.ws.recv()
        assert opening.startswith("0"), opening
        self.handshake = json.loads(opening[1:])
        self.ws.send("40")
        connected = self.ws.recv()
        assert connected.startswith("40"), connected
        self.sid = json.loads(connected[2:])["sid"]
        self._ids = itertools.count(1)
        self._acks: dict[int, queue.Queue] = {}
        self.events = Mailbox()
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                frame = self.ws.recv()
                if not frame:
                    break
                if frame == "2":
                    self.ws.send("3")
                elif frame.startswith("43"):
                    ack_id, data = _split_id(frame[2:])
                    self._acks.pop(ack_id, queue.Queue()).put(data)
                elif frame.startswith("42"):
                    ack_id, data = _split_id(frame[2:])
                    if self.auto_ack and data[0] in ("chat", "notification"):
                        self._take(data[0], json.loads(data[1]), ack_id)
                    else:
                        self.events.put((data[0], data[1:], ack_id))
                elif frame.startswith("41") or frame.startswith("1"):
                    break
        except (websocket.WebSocketException, OSError):
            pass
        self.closed.set()

    def _take(self, event: str, payload: Any, ack_id: int | None) -> None:
        messages = payload if event == "chat" else [payload]
        self.received.extend(messages)
        if ack_id is not None:
            self.ack(ack_id, len(messages) if event == "chat" else 1)

    def emit(self, event: str, *args: Any) -> None:
        self.ws.send("42" + json.dumps([event, *args]))

    def call(self, event: str, *args: Any, timeout: float = WAIT) -> list:
        ack_id = next(self._ids)
        answer: queue.Queue = queue.Queue()
        self._acks[ack_id] = answer
        self.ws.send(f"42{ack_id}" + json.dumps([event, *args]))
        return answer.get(timeout=timeout)

    def send_raw(self, frame: str) -> None:
        self.ws.send(frame)

    def expect(self, name: str, timeout: float = WAIT) -> tuple[list, int | None]:
        """The next event ``name``: its arguments and the ack id to answer it with."""
        _, args, ack_id = self.events.take(lambda item: item[0] == name, timeout,
                                           f"{name} event")
        return args, ack_id

    def ack(self, ack_id: int, *args: Any) -> None:
        self.ws.send(f"43{ack_id}" + json.dumps(list(args)))

    def drop(self) -> None:
        """Cut the connection without a disconnect packet, as a lost network would. (The
        reader thread drops ``ws.sock`` as soon as the shutdown wakes it.)"""
        sock = self.ws.sock
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        try:
            self.ws.send("41")
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass


def close_code(ws: websocket.WebSocket, timeout: float = WAIT) -> int | None:
    """Read a raw websocket until the server closes it: the close code it sent (None: it
    cut the connection without a close frame)."""
    ws.settimeout(timeout)
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return None


def clients_on_workers(gateway: Gateway, workers: int = 2, burst: int = 10,
                       limit: int = 200) -> list[tuple[Client, str]]:
    """Logged-in clients, with their users, until they sit on ``workers`` different
    workers. They connect in bursts: one at a time, a worker that is never busy can win
    every accept."""
    def one(_: int) -> tuple[Client, str]:
        client, user = gateway.client(), uid()
        client.login(user)
        return client, user

    made: list[tuple[Client, str]] = []
    while len({gateway.presence(user)[0] for _, user in made}) < workers:
        assert len(made) < limit, "all connections landed on one worker"
        with ThreadPoolExecutor(burst) as pool:
            made += pool.map(one, range(burst))
    return made


def _split_id(text: str) -> tuple[int | None, list]:
    digits = len(text) - len(text.lstrip("0123456789"))
    return (int(text[:digits]) if digits else None), json.loads(text[digits:])
