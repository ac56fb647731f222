"""A lean load generator: thousands of Socket.IO v4 clients per process, on raw asyncio.

Each client is one ``asyncio.Protocol`` speaking the websocket framing (RFC 6455) and the
Engine.IO v4 / Socket.IO v4 packets itself: no task, no reader loop, no library object
per connection, so a process holds ten thousand connections in a few tens of megabytes
and spends a few microseconds per message. Like a real client it logs in, answers pings,
acks ``chat`` with the count of messages in the batch and stored ``notification`` with 1.

``LoadGen`` runs several agent processes (the open-files cap is per process) and gives
each connect call a fresh loopback source address (127.0.0.2, .3, …), so neither
ephemeral ports nor sockets left in TIME_WAIT by an earlier phase run out. Publishers
embed a send time ``ts`` (epoch seconds) in each message; receivers record
``receive time - ts`` (every process reads the same clock).

With ``agent="node"`` the agents are node processes running bench/node_agent/agent.mjs
instead: the official socket.io-client v4, one client object per connection, driven by
the same commands over stdin and stdout (``NodeAgent``), for the scenarios that measure a
gateway against the client apps ship rather than the lightest possible one.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import multiprocessing
import os
import random
import re
import resource
import select
import shutil
import struct
import subprocess
import threading
import time
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator

import orjson

try:
    import uvloop
except ImportError:  # plain asyncio works, at a higher CPU cost per message
    uvloop = None

NODE_AGENT = Path(__file__).resolve().parent / "node_agent"
_TS = re.compile(rb'"ts\\?":([0-9.]+)')
_UPGRADE = ("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n")


def ws_frame(payload: bytes) -> bytes:
    """A masked text frame, as every client-to-server frame must be."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 0xFE, size)
    else:
        header = struct.pack("!BBQ", 0x81, 0xFF, size)
    key = random.getrandbits(32).to_bytes(4, "big")
    if not size:
        return header + key
    mask = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")
    return header + key + masked.to_bytes(size, "big")


def _split_ack_id(body: bytes) -> tuple[int | None, bytes]:
    """``123["ev",…]`` -> (123, ``["ev",…]``); no digits -> (None, body)."""
    digits = 0
    while digits < len(body) and 48 <= body[digits] <= 57:
        digits += 1
    return (int(body[:digits]) if digits else None), body[digits:]


class Client(asyncio.Protocol):
    """One Socket.IO client: websocket framing, Engine.IO pings, acks, login."""

    __slots__ = ("agent", "user", "peer", "token", "transport", "buf", "upgraded", "ready",
                 "next_id", "pending", "seq", "seen", "notified", "dropping")

    def __init__(self, agent: "Agent", user: str, peer: str | None, token: str | None) -> None:
        self.agent = agent
        self.user = user
        self.peer = peer
        self.token = token
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.ready: asyncio.Future | None = agent.loop.create_future()
        self.next_id = 0
        self.pending: dict[int, tuple[str, float]] = {}
        self.seq = 0
        self.seen = 0
        self.notified = False
        self.dropping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            _UPGRADE.format(host=self.agent.host, port=self.agent.port, key=key).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.dropping:
            self.agent.count["closed_by_server"] += 1
        self._fail(ConnectionError("closed before login"))
        if self.agent.clients.get(self.user) is self:
            del self.agent.clients[self.user]

    def _fail(self, exc: Exception) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._fail(ConnectionError(buf[:40].decode(errors="replace")))
                self.transport.close()
                return
            self.upgraded = True
            buf = buf[end + 4:]
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            payload = buf[pos + head:end]
            pos = end
            if opcode == 1:
                self.on_packet(payload)
            elif opcode == 8:
                self.transport.close()
            elif opcode == 9:
                self.transport.write(b"\x8a\x80" + os.urandom(4))
        self.buf = buf[pos:]

    def send(self, packet: bytes) -> None:
        self.transport.write(ws_frame(packet))

    def call(self, kind: str, event: list) -> None:
        """Emit ``event`` asking for an ack; the ack's round trip is recorded as ``kind``."""
        ack_id = self.next_id
        self.next_id += 1
        self.pending[ack_id] = (kind, time.time())
        self.send(b"42%d" % ack_id + orjson.dumps(event))

    def login(self) -> None:
        """``login``, with the user's token when the gateway checks tokens."""
        if self.dropping:
            return
        userinfo = {"myAuraId": self.user, "deviceId": "bench"}
        if self.token:
            userinfo["token"] = self.token
        self.call("login", ["login", userinfo])

    def load(self, kind: str) -> None:
        """One more event of the closed loop or paced run: an ``hb``, or a chat to the peer."""
        if kind == "hb_ack":  # with a payload: the seed's handler acks only then
            self.call(kind, ["hb", "ping"])
            return
        self.seq += 1
        self.call(kind, ["chat", {"from": self.user, "to": self.peer, "ts": time.time(),
                                  "n": self.seq}])

    def on_packet(self, packet: bytes) -> None:
        if packet == b"2":
            self.send(b"3")
        elif packet.startswith(b"42"):
            self.on_event(*_split_ack_id(packet[2:]))
        elif packet.startswith(b"43"):
            ack_id, body = _split_ack_id(packet[2:])
            kind, sent = self.pending.pop(ack_id, ("unknown_ack", 0.0))
            if body.startswith(b'[{"error"'):
                self.agent.count[kind + "_error"] += 1
                if kind == "login" and b"try again" in body:  # so it does, in a second
                    self.agent.loop.call_later(1.0, self.login)
                    return
                if kind == "login":
                    self._fail(ConnectionError(body[:120].decode(errors="replace")))
                    return
            self.agent.on_ack(self, kind, sent)
        elif packet.startswith(b"40"):
            self.login()
        elif packet.startswith(b"0"):
            self.send(b"40")
        elif packet.startswith(b"41") or packet.startswith(b"1"):
            self.transport.close()

    def on_event(self, ack_id: int | None, body: bytes) -> None:
        agent = self.agent
        now = time.time()
        if body.startswith(b'["notification"'):
            match = _TS.search(body)
            if match:
                agent.lat["notif"].append(now - float(match.group(1)))
            agent.count["notif"] += 1
            agent.last_rx["notif"] = now
            if not self.notified:  # recipients, as against deliveries
                self.notified = True
                agent.count["notified"] += 1
            if ack_id is not None:
                self.send(b"43%d[1]" % ack_id)
        elif body.startswith(b'["chat"'):
            batch = orjson.loads(body)[1]  # the seed's JSON string of a list
            messages = orjson.loads(batch) if isinstance(batch, str) else batch
            for message in messages:
                if message.get("n", 0) > self.seen:
                    self.seen = message["n"]
                    agent.lat["chat"].append(now - message["ts"])
                    agent.count["chat"] += 1
                else:
                    agent.count["chat_dup"] += 1
            agent.count["chat_batches"] += 1
            agent.last_rx["chat"] = now
            if ack_id is not None:
                self.send(b"43%d[%d]" % (ack_id, len(messages)))
        else:
            name = body[2:body.find(b'"', 2)].decode(errors="replace")
            agent.count["event_" + name] += 1
            if name == "error" and len(agent.errors) < 5:
                agent.errors.append(body[:200].decode(errors="replace"))


class Agent:
    """One load process: its clients by user id, counters and latency samples."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.clients: dict[str, Client] = {}
        self.count: collections.Counter = collections.Counter()
        self.lat: collections.defaultdict = collections.defaultdict(lambda: array("d"))
        self.last_rx: dict[str, float] = {}
        self.errors: list[str] = []
        self.loop_kind = ""
        self.loop_until = 0.0

    def on_ack(self, client: Client, kind: str, sent: float) -> None:
        now = time.time()
        self.lat[kind].append(now - sent)
        self.count[kind] += 1
        if kind == "login":
            if client.ready is not None and not client.ready.done():
                client.ready.set_result(None)
        elif kind == self.loop_kind and now < self.loop_until:
            client.load(kind)

    async def connect(self, users: list[str], peers: list[str | None],
                      tokens: list[str | None], source: str, window: int,
                      timeout: float) -> dict:
        """Connect and log in ``users`` with at most ``window`` logins in progress."""
        gate = asyncio.Semaphore(window)
        errors: collections.Counter = collections.Counter()

        async def one(user: str, peer: str | None, token: str | None) -> None:
            async with gate:
                client = Client(self, user, peer, token)
                self.clients[user] = client
                try:
                    await asyncio.wait_for(self._open(client, source), timeout)
                except (OSError, asyncio.TimeoutError) as exc:
                    errors[type(exc).__name__ + ": " + str(exc)[:60]] += 1
                    self.clients.pop(user, None)
                    client.dropping = True
                    if client.transport is not None:
                        client.transport.abort()
                finally:
                    client.ready = None

        await asyncio.gather(*(one(u, p, t) for u, p, t in zip(users, peers, tokens)))
        return {"ok": len(users) - sum(errors.values()), "errors": dict(errors)}

    async def _open(self, client: Client, source: str) -> None:
        await self.loop.create_connection(lambda: client, self.host, self.port,
                                          local_addr=(source, 0))
        await client.ready

    async def drop(self) -> dict:
        """Close every connection at once (FIN, as when an app is killed)."""
        clients = list(self.clients.values())
        self.clients.clear()
        for client in clients:
            client.dropping = True
            client.transport.close()
        return {"dropped": len(clients)}

    async def closed_loop(self, kind: str, users: list[str], window: int,
                          duration: float) -> dict:
        """Each of ``users`` keeps ``window`` acked events in flight for ``duration``."""
        self.loop_kind, self.loop_until = kind, time.time() + duration
        before = self.count[kind]
        for user in users:
            client = self.clients.get(user)
            for _ in range(window if client else 0):
                client.load(kind)
        await asyncio.sleep(duration)
        self.loop_kind = ""
        return {"acks": self.count[kind] - before}

    async def paced_chat(self, users: list[str], rate: float, duration: float) -> dict:
        """Send ``rate`` chats a second in all, round robin over ``users``."""
        senders = [self.clients[u] for u in users if u in self.clients]
        turn = itertools.cycle(senders)
        start = time.time()
        sent = 0
        while senders and (elapsed := time.time() - start) < duration:
            for _ in range(int(rate * elapsed) - sent):
                next(turn).load("chat_ack")
                sent += 1
            await asyncio.sleep(0.002)
        return {"sent": sent}

    async def snapshot(self, reset: bool) -> dict:
        """Counters, last receive times and (on ``reset``) the latency samples, then clear."""
        result: dict[str, Any] = {"count": dict(self.count), "last_rx": dict(self.last_rx),
                                  "connected": len(self.clients), "errors": list(self.errors)}
        if reset:
            result["lat"] = {name: samples.tobytes() for name, samples in self.lat.items()}
            self.count.clear()
            self.lat.clear()
            self.last_rx.clear()
            self.errors.clear()
        return result


def _agent_main(conn: Connection, host: str, port: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = uvloop.run if uvloop else asyncio.run
    runner(_serve(conn, host, port))


async def _serve(conn: Connection, host: str, port: int) -> None:
    """Run the commands the coordinator sends, each as a task, until ``stop``."""
    agent = Agent(host, port)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        # A thread, not add_reader: the loop would make the pipe non-blocking, and a large
        # result would then be cut short mid-message.
        while True:
            try:
                command = conn.recv()
            except (EOFError, OSError):
                command = ("stop", {})
            loop.call_soon_threadsafe(inbox.put_nowait, command)
            if command[0] == "stop":
                return

    threading.Thread(target=read, daemon=True).start()

    async def run(name: str, args: dict) -> None:
        try:
            conn.send(await getattr(agent, name)(**args))
        except Exception as exc:  # reported to the coordinator, which raises it
            conn.send({"exception": f"{type(exc).__name__}: {exc}"})

    tasks = set()
    while True:
        name, args = await inbox.get()
        if name == "stop":
            await agent.drop()
            return
        task = asyncio.create_task(run(name, args))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def source_addresses() -> Iterator[str]:
    """127.0.0.2, 127.0.0.3, …: a fresh loopback source address for each connect call."""
    for n in itertools.count(2):
        yield f"127.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


class NodeAgent:
    """One node agent (bench/node_agent/agent.mjs), spoken to as a python agent's pipe and
    process are (``send``, ``poll``, ``recv``; ``join``, ``is_alive``, ``kill``), so that
    ``LoadGen`` drives both kinds alike: a command is one JSON line on its stdin, its
    answer one JSON line on its stdout."""

    def __init__(self, host: str, port: int) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH: the node load agents need Node.js 18+")
        self.process = subprocess.Popen(
            [node, str(NODE_AGENT / "agent.mjs"), f"http://{host}:{port}"], cwd=NODE_AGENT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.process.pid
        self._buffer = b""

    def send(self, command: tuple[str, dict]) -> None:
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        self.process.stdin.flush()

    def poll(self, timeout: float) -> bool:
        """True once a whole answer (or the end of the output) is there to ``recv``."""
        deadline = time.monotonic() + timeout
        out = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([out], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return False
            chunk = os.read(out, 1 << 20)
            if not chunk:
                return True  # the agent is gone: recv says so
            self._buffer += chunk
        return True

    def recv(self) -> dict:
        line, found, self._buffer = self._buffer.partition(b"\n")
        if not found:
            raise EOFError(f"node agent {self.pid} exited with {self.process.poll()}")
        return orjson.loads(line)

    def join(self, timeout: float | None = None) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()


class LoadGen:
    """The coordinator: agent processes (python, or node with ``agent="node"``), users
    spread over them round robin."""

    def __init__(self, host: str, port: int, processes: int, agent: str = "python") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection | NodeAgent] = []
        self.procs: list[multiprocessing.Process | NodeAgent] = []
        for _ in range(processes):
            if agent == "node":
                node = NodeAgent(host, port)
                self.conns.append(node)
                self.procs.append(node)
                continue
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_agent_main, args=(child, host, port), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.sources = source_addresses()

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def _each(self, name: str, args: list[dict], timeout: float) -> list[dict]:
        for conn, arg in zip(self.conns, args):
            conn.send((name, arg))
        results = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"load agent did not finish {name} within {timeout:.0f}s")
            result = conn.recv()
            if "exception" in result:
                raise RuntimeError(f"load agent failed in {name}: {result['exception']}")
            results.append(result)
        return results

    def _split(self, items: list) -> list[list]:
        return [items[i::len(self.conns)] for i in range(len(self.conns))]

    def connect(self, users: list[str], window: int, timeout: float = 60.0,
                peers: list[str | None] | None = None,
                tokens: list[str | None] | None = None) -> dict:
        """Connect and log in ``users`` (``window`` logins in flight per process), each
        with its peer for chats and its login token (None: ``myAuraId`` alone)."""
        peers = peers or [None] * len(users)
        tokens = tokens or [None] * len(users)
        results = self._each("connect", [
            {"users": u, "peers": p, "tokens": t, "source": next(self.sources),
             "window": window, "timeout": timeout}
            for u, p, t in zip(self._split(users), self._split(peers), self._split(tokens))
        ], timeout + 30)
        errors: collections.Counter = collections.Counter()
        for result in results:
            errors.update(result["errors"])
        return {"ok": sum(r["ok"] for r in results), "errors": dict(errors)}

    def drop(self) -> int:
        return sum(r["dropped"] for r in self._each("drop", [{}] * len(self.conns), 60))

    def closed_loop(self, kind: str, users: list[str], window: int, duration: float) -> int:
        """Acks received within ``duration`` while each user keeps ``window`` in flight."""
        return sum(r["acks"] for r in self._each(
            "closed_loop", [{"kind": kind, "users": u, "window": window, "duration": duration}
                            for u in self._split(users)], duration + 30))

    def paced_chat(self, users: list[str], rate: float, duration: float) -> int:
        share = rate / len(self.conns)
        return sum(r["sent"] for r in self._each(
            "paced_chat", [{"users": u, "rate": share, "duration": duration}
                           for u in self._split(users)], duration + 30))

    def pingpong(self, starters: list[str], duration: float) -> int:
        """Node agents only: the pairs of ``starters`` chat ping-pong for ``duration``;
        returns the chats sent. Each agent starts those of the starters it holds."""
        return sum(r["sent"] for r in self._each(
            "pingpong", [{"starters": starters, "duration": duration}] * len(self.conns),
            duration + 30))

    def snapshot(self, reset: bool = False) -> dict:
        """Counters summed over the agents; with ``reset`` also the latency samples."""
        results = self._each("snapshot", [{"reset": reset}] * len(self.conns), 60)
        count: collections.Counter = collections.Counter()
        last_rx: dict[str, float] = {}
        lat: dict[str, array] = collections.defaultdict(lambda: array("d"))
        for result in results:
            count.update(result["count"])
            for name, when in result["last_rx"].items():
                last_rx[name] = max(when, last_rx.get(name, 0.0))
            for name, raw in result.get("lat", {}).items():
                if isinstance(raw, bytes):  # a python agent's array
                    lat[name].frombytes(raw)
                else:  # a node agent's JSON list
                    lat[name].extend(raw)
        return {"count": count, "last_rx": last_rx, "lat": lat,
                "connected": sum(r["connected"] for r in results),
                "errors": [e for r in results for e in r["errors"]]}

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop", {}))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
