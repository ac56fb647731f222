"""``bench/run``: every scenario against pushapp, the Node baseline (the seed's server on
socket.io v4) and the Flask baseline, then a table of ratios.

Each scenario prints one JSON line (results, parameters, the bench command and the
gateway's command line). With ``--repeat N`` the table shows medians over the N rounds;
each round runs the targets one after the other, so every ratio compares figures taken
minutes apart on the same machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import signal
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from . import procs
from .loadgen import NODE_AGENT
from .scenarios import Settings, dump, run_target

SCENARIOS = ("hb", "chat_acks", "fanout", "fanout_stored", "chat", "storm", "curve",
             "chat_direct", "pingpong")

QUICK = Settings(connections=1500, processes=2, login_window=100, idle_s=2, load_clients=1000,
                 load_s=1.5, fanout_rates=(50_000,), fanout_stored_rates=(5_000,), fanout_s=1,
                 chat_pairs=200, chat_rate=1000, chat_s=1, curve=(500,), stall_s=4,
                 pingpong_s=3)
FULL = Settings(connections=19_500, processes=4, login_window=100, idle_s=10,
                load_clients=1000, load_s=5, fanout_rates=(10_000, 50_000),
                fanout_stored_rates=(1_000, 5_000), fanout_s=4, chat_pairs=1000,
                chat_rate=2000, chat_s=4, curve=(1000, 5000, 10_000), stall_s=15,
                pingpong_s=10)

# The table's rows: per kind of scenario (its name up to a rate or size suffix), the
# metrics shown, each with True when higher is better.
METRICS = {
    "capacity": [("connected", True), ("logins_rejected", False), ("logins_per_s", True),
                 ("worker_ms_per_login", False), ("redis_us_per_login", False),
                 ("kb_per_connection", False), ("idle_worker_cpu_pct", False)],
    "hold": [("held", True), ("rss_max_mb", False), ("worker_cpu_pct", False)],
    "hb": [("acks_per_s", True), ("worker_us_per_ack", False), ("ack_p99_ms", False)],
    "chat_acks": [("acks_per_s", True), ("worker_us_per_ack", False),
                  ("deliveries_per_s", True)],
    "fanout": [("deliveries_per_s", True), ("worker_us_per_delivery", False),
               ("p50_ms", False), ("p99_ms", False), ("redis_us_per_delivery", False),
               ("reads_per_notification", False), ("commands_per_notification", False),
               ("evalsha_per_notification", False), ("getkeys_per_notification", False)],
    "chat": [("messages_per_s", True), ("p50_ms", False), ("p99_ms", False),
             ("rejected", False), ("undelivered", False), ("worker_us_per_message", False),
             ("redis_us_per_message", False), ("reads_per_message", False),
             ("commands_per_message", False), ("evalsha_per_message", False),
             ("getkeys_per_message", False)],
    "disconnect": [("cleanup_s", False), ("worker_cpu_s", False)],
    "memory_return": [("rss_after_mb", False), ("returned_pct", True)],
    "storm": [("logins_rejected", False), ("all_logged_in_s", False),
              ("all_delivered_s", False), ("undelivered", False)],
    "pingpong": [("chats_per_s", True), ("p50_ms", False), ("p99_ms", False),
                 ("worker_us_per_chat", False), ("redis_us_per_chat", False),
                 ("lost", False), ("duplicates", False), ("reads_per_chat", False),
                 ("commands_per_chat", False), ("evalsha_per_chat", False),
                 ("getkeys_per_chat", False)],
}
# Per Redis master (m0_, m1_, …: --redis cluster), every figure a scenario gives, shown
# when some column ran on more than one master.
PER_MASTER = re.compile(r"m(\d+)_")
KINDS = {"fanout_stored": "fanout", "chat_direct": "chat"}


def _kind(scenario: str) -> str:
    base = scenario.rstrip("0123456789k.").rstrip("_")
    return KINDS.get(base, base)


def _options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short run (about 3 minutes): 1,500 connections, 1-3 s phases")
    parser.add_argument("--targets", default="pushapp,node,baseline",
                        help="comma-separated: pushapp, node (the seed on socket.io v4), "
                        "baseline (the naive Flask port); the first one's gains over each "
                        "other are shown")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: " + ", ".join(SCENARIOS)
                        + " (capacity, disconnect and memory_return always run)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians")
    parser.add_argument("--connections", type=int, help="logged-in connections held")
    parser.add_argument("--processes", type=int, help="load agent processes")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="seconds to hold the connections idle after connecting")
    parser.add_argument("--fanout-rates", help="comma-separated offered deliveries per second")
    parser.add_argument("--chat-rate", type=float, help="offered chat messages per second")
    parser.add_argument("--curve", help="comma-separated sizes for the mass-disconnect curve")
    parser.add_argument("--profile", metavar="DIR",
                        help="record py-spy profiles of the worker per scenario into DIR")
    parser.add_argument("--json", metavar="FILE", help="also append every JSON line to FILE")
    parser.add_argument("--redis", default="single", type=_redis_modes,
                        help="comma-separated, from: " + ", ".join(REDIS_MODES)
                        + "; each is a column of the table (pushapp only on a cluster)")
    return parser.parse_args(argv)


# What each target runs on (--redis): one Redis on a unix socket, the default; one Redis
# on a loopback port, as a cluster's nodes are; a Redis Cluster of three masters.
REDIS_MODES = ("single", "tcp", "cluster")


def _redis_modes(value: str) -> list[str]:
    modes = [mode for mode in value.split(",") if mode]
    unknown = [mode for mode in modes if mode not in REDIS_MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"--redis takes {', '.join(REDIS_MODES)}, "
                                         f"not {value!r}")
    return modes


def columns(targets: list[str], modes: list[str]) -> list[tuple[str, str, str]]:
    """(target, redis mode, column name) for each target on each mode: the target's name
    alone on one Redis over a unix socket, else ``target/mode``. The baselines keep their
    data in keys of several users per command, which a cluster refuses: only pushapp runs
    on one."""
    return [(target, mode, target if mode == "single" else f"{target}/{mode}")
            for target in targets for mode in modes
            if mode != "cluster" or target == "pushapp"]


def _settings(opts: argparse.Namespace) -> Settings:
    settings = dataclasses.replace(QUICK if opts.quick else FULL, hold_s=opts.hold)
    for field, value in (("connections", opts.connections), ("processes", opts.processes),
                         ("chat_rate", opts.chat_rate)):
        if value:
            settings = dataclasses.replace(settings, **{field: value})
    if opts.fanout_rates:
        settings.fanout_rates = tuple(float(rate) for rate in opts.fanout_rates.split(","))
    if opts.curve:
        settings.curve = tuple(int(size) for size in opts.curve.split(","))
    if opts.profile:
        Path(opts.profile).mkdir(parents=True, exist_ok=True)
        settings.profile_dir = opts.profile
    return settings


def _gain(mine: list[float] | None, base: list[float] | None, higher: bool) -> str:
    """How many times better the median of ``mine`` is than that of ``base``."""
    if not mine or not base:
        return "-"
    a, b = statistics.median(mine), statistics.median(base)
    if a <= 0 or b <= 0:
        return "-"
    return f"x{(a / b if higher else b / a):.2f}"


def table(lines: list[dict], targets: list[str]) -> str:
    """Medians per scenario, metric and target, and the first target's gain over each
    of the others."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for line in lines:
        for metric, value in line["results"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[line["scenario"], metric, line["target"]].append(value)
    rows = [("scenario", "metric", *targets, *(f"gain/{t}" for t in targets[1:]))]
    scenarios = list(dict.fromkeys(line["scenario"] for line in lines))
    for scenario in scenarios:
        for metric, higher in METRICS.get(_kind(scenario), []):
            medians = [values.get((scenario, metric, t)) for t in targets]
            if not any(medians):
                continue
            cells = [f"{statistics.median(m):g}" if m else "-" for m in medians]
            gains = [_gain(medians[0], other, higher) for other in medians[1:]]
            rows.append((scenario, metric, *cells, *gains))
        per_master = sorted({(int(found[1]), metric) for (name, metric, _) in values
                             if name == scenario and (found := PER_MASTER.match(metric))})
        if any(index > 0 for index, _ in per_master):
            for _, metric in per_master:
                medians = [values.get((scenario, metric, t)) for t in targets]
                cells = [f"{statistics.median(m):g}" if m else "-" for m in medians]
                gains = ["-" if metric.endswith("_share_pct") else _gain(medians[0], other, False)
                         for other in medians[1:]]
                rows.append((scenario, metric, *cells, *gains))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths))
                     for row in rows)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_term)
    opts = _options()
    settings = _settings(opts)
    runs = columns([t for t in opts.targets.split(",") if t], opts.redis)
    targets = [name for _, _, name in runs]
    if not runs:
        raise SystemExit("bench/run: nothing to run (on a cluster only pushapp runs)")
    scenarios = set(opts.scenarios.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="pushapp-bench-"))
    if any(target == "node" for target, _, _ in runs):
        procs.node_packages(procs.NODE_SEED)
    if "pingpong" in scenarios:
        procs.node_packages(NODE_AGENT)
    out = open(opts.json, "a") if opts.json else None

    def emit(line: dict) -> None:
        dump(line)
        if out:
            out.write(json.dumps(line) + "\n")
            out.flush()

    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {platform.python_version()}, "
          f"logs in {workdir}; settings: {dataclasses.asdict(settings)}", flush=True)
    started = time.monotonic()
    lines: list[dict] = []
    for round_no in range(opts.repeat):
        for target, mode, name in runs:
            for line in run_target(target, settings, workdir / f"round{round_no}", emit,
                                   scenarios, mode):
                lines.append({**line, "target": name})
    print(f"\n{table(lines, targets)}\n\n# {time.monotonic() - started:.0f} s, "
          f"{opts.repeat} round(s); gain/X: how many times better {targets[0]}'s figure is "
          f"than X's", flush=True)


if __name__ == "__main__":
    main()
