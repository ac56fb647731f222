"""The processes a benchmark runs and watches: Redis, a gateway (under gunicorn, or the
Node baseline), the filter server, py-spy; and what /proc says about each (RSS, CPU
seconds, open files)."""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import redis

from pushapp.ops.embedded_redis import free_port

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
