"""The shipped supervisord program (its instances) and systemd unit run the gateway, and
stop it cleanly."""
from __future__ import annotations

import math
import os
import shlex
import signal
import struct
import subprocess
from pathlib import Path

import pytest
import requests
import websocket

from pushapp.config import Config
from pushapp.ops.embedded_redis import free_port
from support import ROOT, Supervisor, require_binary, wait_for


def _monitor(url: str) -> bool:
    try:
        return requests.get(url + "/monitor", timeout=1).text == "OK"
    except requests.RequestException:
        return False


@pytest.mark.deployment
def test_supervisor_program_runs_one_gateway_per_instance(tmp_path: Path, start_redis):
    """PUSHAPP_INSTANCES=2: two gunicorns with a worker each, on BIND's port and the next;
    stopping the group stops both within the drain (no SIGKILL)."""
    supervisor = Supervisor(tmp_path, start_redis(), instances=2, DRAIN_WINDOW=1)
    try:
        nodes = supervisor.start().wait_ready()
        assert len(set(nodes)) == 2, nodes
        assert sorted(supervisor.states()) == ["pushapp:pushapp-0", "pushapp:pushapp-1"]
        assert all(_monitor(supervisor.url(i)) for i in range(2))
        supervisor.ctl("stop", "pushapp:*")
        assert set(supervisor.states().values()) == {"STOPPED"}
        assert not any(_monitor(supervisor.url(i)) for i in range(2))
        own_log = (tmp_path / "supervisord.log").read_text()
        assert own_log.count("(exit status 0)") == 2 and "SIGKILL" not in own_log, own_log
    finally:
        supervisor.shutdown()


UNIT = ROOT / "deploy" / "systemd" / "pushapp.service"
CHECKOUT = "/srv/pushapp"  # where the unit expects the checkout


def _unit_settings(text: str) -> dict[str, list[str]]:
    """The unit's [Service] settings: name -> values, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    return settings


def _local_unit(tmp_path: Path, env_file: Path) -> Path:
    """The unit with its paths pointing at this checkout and ``env_file``."""
    text = UNIT.read_text().replace(CHECKOUT, str(ROOT))
    text = text.replace("EnvironmentFile=/etc/pushapp/pushapp.env", f"EnvironmentFile={env_file}")
    local = tmp_path / "pushapp.service"
    local.write_text(text)
    return local


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path):
    analyze = require_binary("systemd-analyze", "systemd")
    env_file = tmp_path / "pushapp.env"
    env_file.write_text("REDIS_URL=redis://127.0.0.1:6379/0\n")
    verified = subprocess.run([analyze, "verify", _local_unit(tmp_path, env_file)],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stdout + verified.stderr, \
        verified.stdout + verified.stderr


def test_the_systemd_unit_keeps_its_promises():
    settings = _unit_settings(UNIT.read_text())
    assert settings["Restart"] == ["on-failure"]
    assert settings["KillMode"] == ["mixed"]
    assert int(settings["LimitNOFILE"][0]) >= 65536
    assert settings["User"] != ["root"] and settings["EnvironmentFile"]
    graceful = math.ceil(Config(auth_mode="insecure").graceful_timeout)
    assert int(settings["TimeoutStopSec"][0]) >= graceful + 10, "leave the drain a margin"


def test_the_systemd_units_command_serves_and_stops_on_sigterm(tmp_path: Path, start_redis):
    """What systemd would run: ExecStart in WorkingDirectory, with Environment= and then
    the EnvironmentFile's settings; SIGTERM to the main process (KillMode=mixed) stops
    it well within TimeoutStopSec."""
    port = free_port()
    env_file = tmp_path / "pushapp.env"
    env_file.write_text(f"REDIS_URL={start_redis().url}\nAUTH_MODE=insecure\n"
                        f"BIND=127.0.0.1:{port}\n")
    settings = _unit_settings(_local_unit(tmp_path, env_file).read_text())
    env = {"PATH": os.environ["PATH"]}
    for line in settings["Environment"] + env_file.read_text().splitlines():
        name, _, value = line.partition("=")
        env[name] = value
    main = subprocess.Popen(shlex.split(settings["ExecStart"][0]),
                            cwd=settings["WorkingDirectory"][0], env=env)
    try:
        wait_for(lambda: _monitor(f"http://127.0.0.1:{port}"), timeout=30,
                 what="the gateway the unit starts")
    finally:
        main.send_signal(signal.SIGTERM)
        assert main.wait(int(settings["TimeoutStopSec"][0])) == 0


def test_sockets_never_take_the_files_redis_needs(start_gateway):
    """With 300 open files and a Redis pool of 50, a worker holds 186 sockets (300 less
    the 114 it keeps for itself); the next client is turned away with close code 1013
    (try again later), and those connected still reach Redis."""
    gateway = start_gateway(open_files=300, REDIS_MAX_CONNECTIONS=50)
    assert "holds at most 186 sockets" in gateway.log_text()
    first = gateway.raw(auto_ack=True)
    user = "fd-" + str(os.getpid())
    assert first.call("login", {"myAuraId": user}) == [1]
    others = [gateway.raw() for _ in range(185)]
    try:
        turned_away = websocket.create_connection(
            f"ws://127.0.0.1:{gateway.port}/socket.io/?EIO=4&transport=websocket", timeout=5)
        opcode, data = turned_away.recv_data(control_frame=True)
        assert (opcode, struct.unpack("!H", data[:2])[0]) == (websocket.ABNF.OPCODE_CLOSE, 1013)
        assert "maximum of 186 sockets" in gateway.log_text()
        assert first.call("chat", {"to": user, "n": 1}) == [1]
        gateway.publish("snschat", {"from": "x", "to": user, "n": 2})
        wait_for(lambda: [m["n"] for m in first.received] == [2], what="a delivery")
    finally:
        for client in others:
            client.close()
        first.close()
