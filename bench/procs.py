"""The processes a benchmark runs and watches: Redis (one server, or a Redis Cluster), a
gateway (under gunicorn, or the Node baseline), the filter server, py-spy; and what /proc
says about each (RSS, CPU seconds, open files)."""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import redis

from pushapp.ops.embedded_redis import PUBSUB_BUFFER_LIMIT, find_binary, free_port

ROOT = Path(__file__).resolve().parents[1]
NODE_SEED = ROOT / "bench" / "node_seed"
_TICKS = os.sysconf("SC_CLK_TCK")


class Sample(NamedTuple):
    """One reading of a process: resident memory in KiB, CPU seconds used, open files."""

    rss_kb: int
    cpu_s: float
    fds: int


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return Sample(rss, cpu, len(os.listdir(f"/proc/{pid}/fd")))


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far, 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as kids:
            return [int(kid) for kid in kids.read().split()]
    except OSError:
        return []


class Gateway:
    """A gateway in a process group of its own: gunicorn with one worker (``forks``: the
    worker is the master's child), or one node process that is its own worker."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 forks: bool = True) -> None:
        self.name = name
        self.port = free_port()
        self.env = {"BIND": f"127.0.0.1:{self.port}", **env}
        self.argv = argv
        self.log_path = log_path
        self.forks = forks
        self.process: subprocess.Popen | None = None
        self.worker = 0

    @property
    def command(self) -> str:
        """The command as a shell line, with the environment it runs in."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {' '.join(shlex.quote(a) for a in self.argv)}"

    def start(self, timeout: float = 30.0) -> "Gateway":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env={**os.environ, **self.env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            kids = children(self.process.pid) if self.forks else [self.process.pid]
            if kids and self._ready():
                self.worker = kids[0]
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout}s; see {self.log_path}")

    def _ready(self) -> bool:
        """pushapp: /health/ready (subscribed and a lease holder); the baselines: /monitor
        (the Node one listens once it has subscribed)."""
        path = "/health/ready" if self.name == "pushapp" else "/monitor"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL what is left after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _gunicorn(name: str, config: str, app: str, redis_url: str, log_path: Path,
              env: dict[str, str]) -> Gateway:
    return Gateway(name, [sys.executable, "-m", "gunicorn", "-c", config, app],
                   {"WORKERS": "1", "LOG_LEVEL": "INFO", "REDIS_URL": redis_url, **env},
                   log_path)


def pushapp_gateway(redis_url: str, log_path: Path, **env: str) -> Gateway:
    """pushapp exactly as deployed: ``gunicorn -c gunicorn.conf.py wsgi:app``."""
    return _gunicorn("pushapp", "gunicorn.conf.py", "wsgi:app", redis_url, log_path, env)


def baseline_gateway(redis_url: str, log_path: Path, **env: str) -> Gateway:
    """The naive Flask port, under pushapp's worker class (bench/baseline_gunicorn.conf.py)."""
    return _gunicorn("baseline", "bench/baseline_gunicorn.conf.py", "bench.baseline_app:app",
                     redis_url, log_path, env)


def node_gateway(redis_url: str, log_path: Path, **env: str) -> Gateway:
    """The seed's server ported to socket.io v4 (bench/node_seed/server.mjs): one node
    process, one core, as the seed ran."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH: the Node baseline needs Node.js 18+")
    return Gateway("node", [node, str(NODE_SEED / "server.mjs")],
                   {"REDIS_URL": redis_url, **env}, log_path, forks=False)


def node_packages(directory: Path) -> None:
    """``npm ci`` in ``directory`` unless its node_modules holds what its package-lock.json
    locks (a stamp of the lock file's hash, written after a successful install): a fresh
    checkout, or one whose lock changed since, gets the pinned packages, as
    tests/test_interop_js.py does for tests/js."""
    digest = hashlib.sha1((directory / "package-lock.json").read_bytes()).hexdigest()
    stamp = directory / "node_modules" / ".bench-lock-sha1"
    if stamp.exists() and stamp.read_text() == digest:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not on PATH: {directory} needs its packages (npm ci)")
    print(f"# npm ci in {directory.relative_to(ROOT)}", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=directory,
                   check=True, timeout=300)
    stamp.write_text(digest)


class Profiler:
    """py-spy sampling one process into a raw (collapsed stacks) file until stopped."""

    def __init__(self, pid: int, path: Path, rate: int = 250) -> None:
        self.path = path
        binary = Path(sys.executable).with_name("py-spy")
        self.process = subprocess.Popen(
            [str(binary), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--nonblocking", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> Path:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.path


def filter_server(redis_url: str, limit_s: float) -> None:
    """The business server between ``chat_filter_channel`` and ``snschat``: every chat a
    client sends comes back unchanged. Reads what is pending, republishes it in one
    pipeline; stops after ``limit_s`` or when its parent dies."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("chat_filter_channel")

    def next_message(wait: float) -> dict | None:
        # Read a message whole once it has begun to arrive: get_message(timeout=0) raises
        # TimeoutError on one only partly received, which a burst of chats brings about.
        if not pubsub.connection.can_read(timeout=wait):
            return None
        return pubsub.get_message(timeout=None)

    parent = os.getppid()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and os.getppid() == parent:
        message = next_message(0.2)
        if message is None:
            continue
        pipe = client.pipeline(transaction=False)
        while message is not None:
            pipe.publish("snschat", message["data"])
            message = next_message(0)
        pipe.execute()


def cluster_binary() -> str:
    """The redis-server a bench cluster runs, picked as tests/redis_servers.py picks it:
    ``$REDIS_SERVER_BIN`` if set, else the system's when it is 7.0 or newer (sharded
    pub/sub), else the embedded Redis's (6.2: the signals go over plain pub/sub)."""
    if os.environ.get("REDIS_SERVER_BIN"):
        return os.environ["REDIS_SERVER_BIN"]
    system = shutil.which("redis-server")
    if system:
        said = subprocess.run([system, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"v=(\d+)\.(\d+)", said)
        if found and (int(found[1]), int(found[2])) >= (7, 0):
            return system
    return find_binary()


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            try:
                with socket.socket() as bus:
                    bus.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                pass


class RedisCluster:
    """A Redis Cluster of ``masters`` masters and no replicas on loopback ports, each
    persisting as the single bench Redis does (AOF, fsync every second) in a folder of
    its own, formed with CLUSTER MEET and ADDSLOTS (an equal share of the 16384 slots
    each), as ``redis-cli --cluster create`` does. The same interface as
    ``EmbeddedRedis`` where the runner uses it: ``url``, ``start``, ``stop``; and the
    masters' ``pids`` and plain ``node_urls``."""

    SLOTS = 16384

    def __init__(self, data_dir: Path, masters: int = 3) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = cluster_binary()
        self.ports = [_cluster_port() for _ in range(masters)]
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def node_urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def start(self, timeout: float = 30.0) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        for index, port in enumerate(self.ports):
            folder = self.data_dir / f"node-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            self.processes.append(subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                 "--logfile", str(folder / "redis.log"), "--daemonize", "no",
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                 "--client-output-buffer-limit", *PUBSUB_BUFFER_LIMIT.split(),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "5000"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True))
        clients = [redis.Redis("127.0.0.1", port, socket_timeout=5, decode_responses=True)
                   for port in self.ports]
        deadline = time.monotonic() + timeout

        def wait(check, what: str) -> None:
            while not check():
                for process in self.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"a cluster redis-server exited with "
                                           f"{process.returncode}; see {self.data_dir}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis Cluster: no {what} within {timeout}s")
                time.sleep(0.05)

        def answers() -> bool:
            try:
                return all(client.ping() for client in clients)
            except redis.ConnectionError:
                return False

        wait(answers, "answer from every node")
        for port in self.ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        share = self.SLOTS // len(clients)
        for index, client in enumerate(clients):
            last = self.SLOTS if index == len(clients) - 1 else (index + 1) * share
            client.execute_command("CLUSTER", "ADDSLOTS", *range(index * share, last))
        wait(lambda: all("cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
                         for client in clients), "cluster_state:ok on every node")
        for client in clients:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to each node (it flushes its AOF), SIGKILL to one that lingers."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
