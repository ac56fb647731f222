"""The scenarios, run in one sequence against one gateway (pushapp, the Flask baseline or
the Node baseline).

Every figure comes with the CPU each process used meanwhile (the gateway worker, Redis,
the load agents, the filter server): on a small machine they share the cores, and the
gateway's CPU per operation is the figure that does not depend on who else is busy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import secrets
import shlex
import sys
import time
from array import array
from pathlib import Path
from typing import Any, Callable, Iterator

import jwt
import orjson
import redis

from pushapp.ops.embedded_redis import EmbeddedRedis, free_port

from . import procs
from .loadgen import LoadGen


@dataclasses.dataclass
class Settings:
    """What a run does; the runner's options fill it."""

    connections: int = 2000
    processes: int = 2
    login_window: int = 100
    idle_s: float = 3.0
    hold_s: float = 0.0
    load_clients: int = 500
    load_window: int = 2
    load_s: float = 3.0
    fanout_rates: tuple[float, ...] = (50_000,)
    fanout_stored_rates: tuple[float, ...] = (5_000,)
    fanout_batch: int = 100
    fanout_s: float = 1.0
    chat_pairs: int = 500
    chat_rate: float = 2000
    chat_s: float = 3.0
    curve: tuple[int, ...] = (500, 1000)
    pingpong_users: int = 5000
    pingpong_pairs: int = 200
    pingpong_s: float = 5.0
    stall_s: float = 10.0  # how long deliveries may pause before the rest count as undelivered
    profile_dir: str = ""


def percentile(samples: array, q: float) -> float | None:
    """The ``q`` quantile in milliseconds, None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _per_s(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _master_stats(client: redis.Redis) -> dict:
    """What one redis-server says it did so far: socket reads served (a pipeline usually
    arrives in one), commands run, and calls and µs per command (INFO commandstats)."""
    commands = client.info("commandstats")
    stats = client.info("stats")
    return {"reads": stats["total_reads_processed"],
            "commands": stats["total_commands_processed"],
            "per_command": {name.removeprefix("cmdstat_"): (row["calls"], row["usec"])
                            for name, row in commands.items()}}


def _master_delta(before: dict, after: dict) -> dict:
    """``_master_stats`` between two readings, less the bench's own INFO (the first
    reading's second INFO, one read and one command, is counted by the second)."""
    per_command = {}
    for name, (calls, usec) in after["per_command"].items():
        was_calls, was_usec = before["per_command"].get(name, (0, 0))
        if calls > was_calls:
            per_command[name] = {"calls": calls - was_calls, "usec": usec - was_usec}
    return {"reads": after["reads"] - before["reads"] - 1,
            "commands": after["commands"] - before["commands"] - 1,
            "per_command": per_command}


class Window:
    """CPU each process used, and the gateway worker's memory, between start and stop;
    and per Redis master (one on a single server), its CPU and what it served."""

    def __init__(self, run: "Run") -> None:
        self.run = run
        self.started = time.time()
        self.worker = procs.sample(run.gateway.worker)
        self.cpu = {name: sum(map(procs.cpu_seconds, pids)) for name, pids in run.pids().items()}
        self.masters_cpu = [procs.cpu_seconds(pid) for pid in run.redis_pids]
        self.masters = [_master_stats(client) for client in run.masters]

    def stop(self, ops: float = 0) -> dict:
        """Wall time, CPU % of a core per process and (given ``ops``) µs of CPU per op of
        the gateway worker and of redis-server, the two that serve every op."""
        wall = time.time() - self.started
        worker = procs.sample(self.run.gateway.worker)
        out: dict[str, Any] = {"wall_s": round(wall, 2)}
        used = {name: sum(map(procs.cpu_seconds, pids)) - self.cpu[name]
                for name, pids in self.run.pids().items()}
        for name, seconds in used.items():
            out[f"{name}_cpu_pct"] = round(100 * seconds / wall, 1) if wall else 0.0
        self.run.rss_peak_kb = max(self.run.rss_peak_kb, worker.rss_kb)
        out["worker_cpu_s"] = round(used["worker"], 2)
        if ops:
            out["worker_us_per_op"] = round(1e6 * used["worker"] / ops, 1)
            out["redis_us_per_op"] = round(1e6 * used["redis"] / ops, 1)
        out["worker_rss_mb"] = round(worker.rss_kb / 1024, 1)
        cpu = [procs.cpu_seconds(pid) - was
               for pid, was in zip(self.run.redis_pids, self.masters_cpu)]
        out["masters"] = [{"port": client.connection_pool.connection_kwargs.get("port"),
                           "cpu_s": round(seconds, 3),
                           "share_pct": round(100 * seconds / sum(cpu), 1) if sum(cpu) else 0.0,
                           **_master_delta(before, _master_stats(client))}
                          for client, seconds, before in zip(self.run.masters, cpu, self.masters)]
        return out


GATEWAYS = {"pushapp": procs.pushapp_gateway, "baseline": procs.baseline_gateway,
            "node": procs.node_gateway}


class Run:
    """One gateway with its own Redis, the load agents (python, or node ones running
    socket.io-client) and the filter server; a context manager that stops them all."""

    def __init__(self, target: str, settings: Settings, workdir: Path, emit: Callable[[dict], None],
                 command: str, agent: str = "python", redis_mode: str = "single",
                 **env: str) -> None:
        self.target = target
        self.redis_mode = redis_mode
        self.settings = settings
        self.emit_line = emit
        self.command = command
        name = "-".join([target, *(v.lower() for v in env.values()), agent])
        # pushapp checks login tokens (AUTH_MODE=jwt, its default): the bench signs them.
        # Its per-connection rate limit is lifted: the closed loops measure the worker,
        # and a client whose acks come back fast would otherwise be throttled. So is its
        # cap on handshakes in progress per client address: thousands of clients come
        # from each of a few loopback addresses here, where each would have its own.
        self.jwt_secret = secrets.token_hex(32) if target == "pushapp" else ""
        if self.jwt_secret:
            env = {"JWT_SECRET": self.jwt_secret, "RATE_LIMIT": "1000000",
                   "RATE_BURST": "1000000", "MAX_HANDSHAKES_PER_IP": "1000000", **env}
        # One Redis (on a unix socket as bin/serve runs it, or "tcp": on a loopback port,
        # as a cluster's nodes are), or a Redis Cluster of three masters.
        if redis_mode == "cluster":
            name += "-cluster"
            self.redis_server = procs.RedisCluster(workdir / f"redis-{name}")
            self.redis_server.start()
            node_urls = self.redis_server.node_urls
            self.redis_pids = self.redis_server.pids
        else:
            port = free_port() if redis_mode == "tcp" else None
            name += "-tcp" if port else ""
            self.redis_server = EmbeddedRedis(workdir / f"redis-{name}", port=port)
            self.redis_server.start()
            node_urls = [self.redis_server.url]
            self.redis_pids = [self.redis_server.process.pid]
        # A plain client of each master. The publisher (the business server) and the
        # filter server use the first: a cluster forwards every PUBLISH to every node, and
        # a SUBSCRIBE on any node hears them all.
        self.masters = [redis.Redis.from_url(url) for url in node_urls]
        self.redis = self.masters[0]
        self.published = (0, 0)  # the publisher's pipelines and PUBLISHes, last phase
        self.gateway = GATEWAYS[target](self.redis_server.url, workdir / f"{name}.log", **env)
        self.gateway.start()
        self.loadgen = LoadGen("127.0.0.1", self.gateway.port, settings.processes, agent)
        self.filter = multiprocessing.get_context("spawn").Process(
            target=procs.filter_server, args=(node_urls[0], 3600), daemon=True)
        self.filter.start()
        self.rss_start_kb = procs.sample(self.gateway.worker).rss_kb
        self.rss_peak_kb = self.rss_start_kb
        self.connected = 0

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: object) -> None:
        self.loadgen.close()
        self.filter.kill()
        self.gateway.stop()
        self.redis_server.stop()

    def connect(self, users: list[str], window: int, timeout: float = 60.0,
                paired: bool = True) -> dict:
        """Connect and log in ``users`` (paired: user 2k chats with 2k+1), with tokens."""
        expires = int(time.time()) + 3 * 3600
        tokens = [jwt.encode({"sub": u, "exp": expires}, self.jwt_secret, "HS256")
                  for u in users] if self.jwt_secret else None
        peers = [users[i ^ 1] for i in range(len(users))] if paired else None
        return self.loadgen.connect(users, window, timeout, peers, tokens)

    def pids(self) -> dict[str, list[int]]:
        return {"worker": [self.gateway.worker], "redis": self.redis_pids,
                "loadgen": self.loadgen.pids, "filter": [self.filter.pid]}

    def report(self, scenario: str, params: dict, results: dict) -> dict:
        """Print the scenario's JSON line and return its results."""
        line = {"scenario": scenario, "target": self.target, "redis": self.redis_mode,
                "params": params,
                "results": results, "command": self.command, "gateway": self.gateway.command,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.emit_line(line)
        return results

    @contextlib.contextmanager
    def profiled(self, scenario: str) -> Iterator[None]:
        """With ``--profile``: py-spy records the worker while the block runs."""
        if not self.settings.profile_dir:
            yield
            return
        path = Path(self.settings.profile_dir) / f"{self.target}-{scenario}.txt"
        profiler = procs.Profiler(self.gateway.worker, path)
        try:
            yield
        finally:
            profiler.stop()

    def deliveries(self, name: str, key: str, send: Callable[[], int], each: float,
                   stall_s: float) -> tuple[int, dict, float, dict]:
        """Run ``send`` (it returns how many messages it sent) and wait for ``each``
        deliveries of ``key`` per message. Returns what was sent, the final counters and
        latencies, the time from the first send to the last delivery, and the CPU used."""
        with self.profiled(name):
            window = Window(self)
            began = time.time()
            sent = send()
            snap = self.await_count(key, int(sent * each), stall_s)
            span = snap["last_rx"].get(key, began) - began
            out = window.stop(snap["count"][key])
        self.quiet()
        return sent, self.loadgen.snapshot(reset=True), span, out

    def quiet(self, timeout: float = 30.0) -> None:
        """Wait until nothing arrives at the clients and the worker idles for 0.5 s."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            before = procs.cpu_seconds(self.gateway.worker)
            time.sleep(0.5)
            now = sum(self.loadgen.snapshot()["count"].values())
            if now == last and procs.cpu_seconds(self.gateway.worker) - before < 0.05:
                return
            last = now

    def await_count(self, key: str, expected: int, stall_s: float = 10.0,
                    limit_s: float = 300.0) -> dict:
        """Poll until the clients counted ``expected`` of ``key``, or nothing new came
        for ``stall_s``; returns the last snapshot."""
        deadline = time.monotonic() + limit_s
        last, last_change = -1, time.monotonic()
        while True:
            snap = self.loadgen.snapshot()
            got = snap["count"][key]
            if got != last:
                last, last_change = got, time.monotonic()
            if got >= expected or time.monotonic() - last_change > stall_s \
                    or time.monotonic() > deadline:
                return snap
            time.sleep(0.1)

    def publish_paced(self, per_s: float, duration: float,
                      make: Callable[[int], tuple[str, bytes]]) -> int:
        """Publish ``make(k)`` messages at ``per_s`` for ``duration``, one pipeline a tick."""
        start = time.time()
        sent = pipelines = 0
        while (elapsed := time.time() - start) < duration:
            due = int(per_s * elapsed) - sent
            if due > 0:
                pipe = self.redis.pipeline(transaction=False)
                for k in range(sent, sent + due):
                    pipe.publish(*make(k))
                pipe.execute()
                sent += due
                pipelines += 1
            time.sleep(0.002)
        self.published = (pipelines, sent)
        return sent

    def per_master(self, out: dict, unit: str, ops: float, per: str = "",
                   count: float = 0) -> dict:
        """Redis's figures of a window (``out``) as results: µs of CPU per ``unit`` of
        ``ops`` in all and on each master (``m0_``, ``m1_``, …) with its share of the
        total; and, per ``per`` of ``count`` (a notification published, a chat), the
        socket reads (round trips) and commands each master served, the scripts it ran
        (EVALSHA) and the COMMAND GETKEYS it answered (redis-py's cluster client asks one
        node for the keys of a command whose keys it cannot find itself), in all and per
        master. The publisher's own pipelines and PUBLISHes
        (on the first master) are left out: they are the business server's."""
        masters = out["masters"]
        results: dict[str, Any] = {}
        if ops:
            results[f"redis_us_per_{unit}"] = round(
                1e6 * sum(m["cpu_s"] for m in masters) / ops, 2)
        pipelines, published = self.published
        self.published = (0, 0)
        totals = {"reads": 0.0, "commands": 0.0, "evalsha": 0.0, "getkeys": 0.0}
        for index, master in enumerate(masters):
            if ops:
                results[f"m{index}_redis_us_per_{unit}"] = round(1e6 * master["cpu_s"] / ops, 2)
            results[f"m{index}_share_pct"] = master["share_pct"]
            if not (per and count):
                continue
            scripts = sum(row["calls"] for name, row in master["per_command"].items()
                          if name.startswith("eval"))
            mine = {"reads": master["reads"] - (pipelines if index == 0 else 0),
                    "commands": master["commands"] - (published if index == 0 else 0),
                    "evalsha": scripts,
                    "getkeys": master["per_command"].get("command|getkeys", {}).get("calls", 0)}
            for key, value in mine.items():
                totals[key] += value
                results[f"m{index}_{key}_per_{per}"] = round(value / count, 2)
        if per and count:
            for key, value in totals.items():
                results[f"{key}_per_{per}"] = round(value / count, 2)
        return results

    def open_sockets(self) -> int:
        """Sockets of the gateway's port not yet closed by it (ESTABLISHED or CLOSE_WAIT)."""
        port = f":{self.gateway.port:04X}"
        with open("/proc/net/tcp") as tcp:
            return sum(1 for line in tcp
                       if (fields := line.split(None, 4))[1].endswith(port)
                       and fields[3] in ("01", "08"))

    # The scenarios.

    def capacity(self, users: list[str]) -> dict:
        """Connect and log in every user; logins per second, memory per connection, idle CPU."""
        s = self.settings
        start = procs.sample(self.gateway.worker)
        with self.profiled("logins"):
            window = Window(self)
            result = self.connect(users, s.login_window)
            timing = window.stop(result["ok"])
        logins = self.loadgen.snapshot(reset=True)
        time.sleep(1.0)
        loaded = procs.sample(self.gateway.worker)
        idle = Window(self)
        time.sleep(s.idle_s)
        idle_out = idle.stop()
        held = self.loadgen.snapshot(reset=True)["connected"]
        self.connected = held
        return self.report("capacity", {"connections": len(users), "login_window":
                                        s.login_window * s.processes}, {
            "connected": result["ok"], "held_after_idle": held, "errors": result["errors"],
            "logins_rejected": logins["count"]["login_error"],
            "logins_per_s": _per_s(result["ok"], timing["wall_s"]),
            "worker_ms_per_login": round(timing.get("worker_us_per_op", 0) / 1000, 3),
            "login_cpu": timing,
            "rss_start_mb": round(start.rss_kb / 1024, 1),
            "rss_loaded_mb": round(loaded.rss_kb / 1024, 1),
            "kb_per_connection": round((loaded.rss_kb - start.rss_kb) / max(1, result["ok"]), 1),
            "idle_worker_cpu_pct": idle_out["worker_cpu_pct"], "idle_s": s.idle_s,
            "fds": loaded.fds, **self.per_master(timing, "login", result["ok"]),
        })

    def hold(self, users: list[str]) -> dict:
        """Keep the connections idle for ``hold_s``, sampling memory and CPU each 10 s."""
        s = self.settings
        window = Window(self)
        rss = []
        deadline = time.monotonic() + s.hold_s
        while time.monotonic() < deadline:
            time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
            rss.append(procs.sample(self.gateway.worker).rss_kb)
        out = window.stop()
        snap = self.loadgen.snapshot(reset=True)
        return self.report("hold", {"connections": len(users), "seconds": s.hold_s}, {
            "held": snap["connected"], "closed_by_server": snap["count"]["closed_by_server"],
            "rss_min_mb": round(min(rss) / 1024, 1), "rss_max_mb": round(max(rss) / 1024, 1),
            "worker_cpu_pct": out["worker_cpu_pct"], "cpu": out,
        })

    def acked_events(self, kind: str, users: list[str]) -> dict:
        """``hb`` or ``chat`` with ack, closed loop: acks per second, worker CPU per ack."""
        s = self.settings
        senders = users[:s.load_clients]
        event = "hb" if kind == "hb_ack" else "chat_acks"
        with self.profiled(event):
            window = Window(self)
            acks = self.loadgen.closed_loop(kind, senders, s.load_window, s.load_s)
            out = window.stop(acks)
        if kind == "chat_ack":  # each acked chat is then delivered, through the filter
            self.await_count("chat", acks, stall_s=s.stall_s)
        self.quiet()
        snap = self.loadgen.snapshot(reset=True)
        results = {"acks_per_s": _per_s(acks, s.load_s),
                   "errors": snap["count"][kind + "_error"],
                   "worker_us_per_ack": out.get("worker_us_per_op"),
                   "ack_p50_ms": percentile(snap["lat"][kind], 0.5),
                   "ack_p99_ms": percentile(snap["lat"][kind], 0.99), "cpu": out,
                   **self.per_master(out, "ack", acks)}
        if kind == "chat_ack":
            span = snap["last_rx"].get("chat", window.started) - window.started
            results.update(delivered=snap["count"]["chat"], duplicates=snap["count"]["chat_dup"],
                           deliveries_per_s=_per_s(snap["count"]["chat"], span))
        return self.report(event, {"clients": len(senders), "in_flight_per_client":
                                   s.load_window, "seconds": s.load_s}, results)

    def fanout(self, users: list[str], rate: float, stored: bool) -> dict:
        """Notifications of ``fanout_batch`` recipients each, over all users, published at
        ``rate`` deliveries a second: deliveries per second, publish→receive latency. Past
        what the gateway sustains, the latency is the queue's and the rate its ceiling."""
        s = self.settings
        batch = min(s.fanout_batch, len(users))
        groups = max(1, len(users) // batch)

        def notification(k: int) -> tuple[str, bytes]:
            first = (k % groups) * batch
            return "notification", orjson.dumps({"ts": time.time(), "k": k, "needStore": stored,
                                                 "toWho": users[first:first + batch]})

        event = f"{'fanout_stored' if stored else 'fanout'}_{rate / 1000:g}k"
        online = batch * self.connected / len(users)  # recipients online per notification
        sent, snap, span, out = self.deliveries(
            event, "notif", lambda: self.publish_paced(rate / batch, s.fanout_s, notification),
            online, stall_s=s.stall_s)
        return self.report(event, {"offered_per_s": rate, "recipients_each": batch,
                                   "seconds": s.fanout_s, "connected": self.connected}, {
            "deliveries_per_s": _per_s(snap["count"]["notif"], span),
            "expected": int(sent * online), "delivered": snap["count"]["notif"],
            "p50_ms": percentile(snap["lat"]["notif"], 0.5),
            "p99_ms": percentile(snap["lat"]["notif"], 0.99),
            "worker_us_per_delivery": out.get("worker_us_per_op"), "cpu": out,
            **self.per_master(out, "delivery", snap["count"]["notif"], "notification", sent),
        })

    def chat(self, users: list[str], name: str) -> dict:
        """Pairs chatting at ``chat_rate`` messages a second in all, every message acked by
        the gateway and its batch acked by the receiver: end-to-end latency."""
        s = self.settings
        senders = users[:2 * s.chat_pairs]
        sent, snap, span, out = self.deliveries(
            name, "chat", lambda: self.loadgen.paced_chat(senders, s.chat_rate, s.chat_s),
            1, stall_s=s.stall_s)
        return self.report(name, {"pairs": len(senders) // 2, "offered_per_s": s.chat_rate,
                                  "seconds": s.chat_s}, {
            "sent": sent, "acked": snap["count"]["chat_ack"], "delivered": snap["count"]["chat"],
            "rejected": snap["count"]["chat_ack_error"],
            "undelivered": sent - snap["count"]["chat_ack_error"] - snap["count"]["chat"],
            "duplicates": snap["count"]["chat_dup"],
            "messages_per_s": _per_s(snap["count"]["chat"], span),
            "p50_ms": percentile(snap["lat"]["chat"], 0.5),
            "p99_ms": percentile(snap["lat"]["chat"], 0.99),
            "ack_p99_ms": percentile(snap["lat"]["chat_ack"], 0.99),
            "worker_us_per_message": out.get("worker_us_per_op"), "cpu": out,
            **self.per_master(out, "message", snap["count"]["chat"], "message",
                              snap["count"]["chat"]),
        })

    def pingpong(self, users: list[str]) -> dict:
        """``pingpong_pairs`` pairs of ``users`` (connected with socket.io-client) chat
        ping-pong through the filter server: each side sends its next chat once the
        other's arrived, and acks each batch with its length. Worker and Redis CPU from
        the first send to the last delivery, per chat delivered: everything a chat costs,
        the gateway's ack, the filter's round trip, the store, the delivery and its ack."""
        s = self.settings
        starters = users[:2 * s.pingpong_pairs:2]
        for master in self.masters:
            master.config_resetstat()
        sent, snap, span, out = self.deliveries(
            "pingpong", "chat", lambda: self.loadgen.pingpong(starters, s.pingpong_s), 1,
            stall_s=s.stall_s)
        delivered = snap["count"]["chat"]
        return self.report("pingpong", {"connected": self.connected, "pairs": len(starters),
                                        "seconds": s.pingpong_s}, {
            "sent": sent, "delivered": delivered, "lost": sent - delivered,
            "duplicates": snap["count"]["chat_dup"],
            "gateway_acks": snap["count"]["chat_ack"],
            "ack_errors": snap["count"]["chat_ack_error"],
            "chats_per_s": _per_s(delivered, span),
            "p50_ms": percentile(snap["lat"]["chat"], 0.5),
            "p99_ms": percentile(snap["lat"]["chat"], 0.99),
            "worker_us_per_chat": out.get("worker_us_per_op"),
            "redis_us_per_chat": out.get("redis_us_per_op"),
            "redis_commands_us_per_chat": self._commands_per(delivered), "cpu": out,
            **self.per_master(out, "chat", delivered, "chat", delivered),
        })

    def _commands_per(self, count: int) -> dict[str, float]:
        """Redis's time in each command since the last CONFIG RESETSTAT (INFO
        commandstats), in µs per ``count``, the costliest first; a script's time includes
        the commands it calls, which are listed too."""
        spent: dict[str, float] = {}
        for master in self.masters:  # on a cluster, the sum over the masters
            for name, row in master.info("commandstats").items():
                name = name.removeprefix("cmdstat_")
                spent[name] = spent.get(name, 0.0) + row["usec"] / max(count, 1)
        return {name: round(us, 2) for name, us in
                sorted(spent.items(), key=lambda item: -item[1]) if us >= 0.05}

    def disconnect(self, count: int, name: str = "disconnect") -> dict:
        """Every client drops at once: time and worker CPU until the gateway has closed
        every socket, pushapp has unbound every user, and the worker idles (the baseline
        runs its disconnect handlers in greenlets of their own, after the close)."""
        with self.profiled(name):
            window = Window(self)
            dropped = self.loadgen.drop()
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and (self.open_sockets() or self._bound()):
                time.sleep(0.05)
            while time.monotonic() < deadline:
                before = procs.cpu_seconds(self.gateway.worker)
                time.sleep(0.1)
                if procs.cpu_seconds(self.gateway.worker) - before < 0.02:
                    break
            out = window.stop(dropped)
        out["wall_s"] = round(out["wall_s"] - 0.1, 2)  # the idle tenth of a second
        self.loadgen.snapshot(reset=True)
        return self.report(name, {"connections": count}, {
            "dropped": dropped, "cleanup_s": out["wall_s"], "worker_cpu_s": out["worker_cpu_s"],
            "left_open": self.open_sockets(), "cpu": out,
        })

    def _bound(self) -> bool:
        """Whether pushapp still lists a user as online (the baseline keeps none): a
        presence key ``pushapp:{<user>}:on`` is left."""
        if self.target != "pushapp":
            return False
        return any(next(master.scan_iter(match="pushapp:{*}:on", count=1000, _type="hash"),
                        None) is not None for master in self.masters)

    def memory_return(self) -> dict:
        """After every client left: how much of the RSS growth (to the highest reading of
        any scenario so far) went back."""
        time.sleep(5.0)
        after = procs.sample(self.gateway.worker).rss_kb
        grown = max(1, self.rss_peak_kb - self.rss_start_kb)
        return self.report("memory_return", {}, {
            "rss_start_mb": round(self.rss_start_kb / 1024, 1),
            "rss_peak_mb": round(self.rss_peak_kb / 1024, 1),
            "rss_after_mb": round(after / 1024, 1),
            "returned_pct": round(100 * (self.rss_peak_kb - after) / grown, 1),
        })

    def storm(self, users: list[str]) -> dict:
        """While every user is offline, store a chat and a notification for each; then all
        reconnect at once: time until all are logged in and every stored message arrived
        (None if some never did: the seed stores a notification of several recipients for
        the last of them only, once per recipient, so deliveries alone would count up to
        the number of users while most of them got nothing)."""
        batch = min(self.settings.fanout_batch, len(users))
        pipe = self.redis.pipeline(transaction=False)
        for first in range(0, len(users), batch):
            pipe.publish("notification", orjson.dumps(
                {"ts": time.time(), "needStore": True, "toWho": users[first:first + batch]}))
        for i, user in enumerate(users):
            pipe.publish("snschat", orjson.dumps(
                {"from": users[i ^ 1], "to": user, "ts": time.time(), "n": 1}))
        pipe.execute()
        self.quiet(60)
        with self.profiled("storm"):
            window = Window(self)
            began = time.time()
            result = self.connect(users, len(users), timeout=120.0)
            logged_in = time.time() - began
            self.await_count("notified", len(users), stall_s=15.0)
            snap = self.await_count("chat", len(users), stall_s=15.0)
            last = max(snap["last_rx"].values(), default=began)
            out = window.stop(result["ok"])
        self.loadgen.snapshot(reset=True)
        undelivered = 2 * len(users) - snap["count"]["notified"] - snap["count"]["chat"]
        return self.report("storm", {"connections": len(users)}, {
            "logged_in": result["ok"], "errors": result["errors"],
            "logins_rejected": snap["count"]["login_error"],
            "all_logged_in_s": round(logged_in, 2),
            "all_delivered_s": None if undelivered else round(last - began, 2),
            "undelivered": undelivered, "notifications": snap["count"]["notif"],
            "notified": snap["count"]["notified"], "chats": snap["count"]["chat"],
            "cpu": out,
        })


def run_target(target: str, settings: Settings, workdir: Path,
               emit: Callable[[dict], None], scenarios: set[str],
               redis_mode: str = "single") -> list[dict]:
    """Every scenario against one target, on one Redis (``single``: a unix socket;
    ``tcp``: a loopback port) or a Redis Cluster (``cluster``), in an order where each
    leaves the next a known state; returns the reported lines."""
    lines: list[dict] = []

    def keep(line: dict) -> None:
        lines.append(line)
        emit(line)

    workdir.mkdir(parents=True, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in ["bench/run", *sys.argv[1:]])
    users = [f"c{i}" for i in range(settings.connections)]
    with Run(target, settings, workdir, keep, command, redis_mode=redis_mode) as run:
        run.capacity(users)
        if settings.hold_s:
            run.hold(users)
        if "hb" in scenarios:
            run.acked_events("hb_ack", users)
        if "chat_acks" in scenarios:
            run.acked_events("chat_ack", users)
        for rate in settings.fanout_rates if "fanout" in scenarios else ():
            run.fanout(users, rate, stored=False)
        for rate in settings.fanout_stored_rates if "fanout_stored" in scenarios else ():
            run.fanout(users, rate, stored=True)
        if "chat" in scenarios:
            run.chat(users, "chat")
        run.disconnect(len(users))
        run.memory_return()
        if "storm" in scenarios:
            run.storm(users)
            run.disconnect(len(users), f"disconnect_{len(users)}")
        for size in settings.curve if "curve" in scenarios else ():
            if size >= len(users):
                continue
            run.connect([f"d{size}-{i}" for i in range(size)], settings.login_window,
                        paired=False)
            run.quiet()
            run.disconnect(size, f"disconnect_{size}")
    if "chat_direct" in scenarios:
        with Run(target, settings, workdir, keep, command, redis_mode=redis_mode,
                 CHAT_FILTER="direct") as direct:
            pairs = [f"x{i}" for i in range(2 * settings.chat_pairs)]
            direct.connect(pairs, settings.login_window)
            direct.chat(pairs, "chat_direct")
    if "pingpong" in scenarios:
        with Run(target, settings, workdir, keep, command, agent="node",
                 redis_mode=redis_mode) as js:
            chatters = [f"p{i}" for i in range(settings.pingpong_users)]
            js.connected = js.connect(chatters, settings.login_window)["ok"]
            js.quiet()
            js.pingpong(chatters)
    return lines


def dump(line: dict) -> None:
    print(json.dumps(line), flush=True)
