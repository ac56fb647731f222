"""The shipped supervisord program runs the gateway, and stops it cleanly."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import websocket

from pushapp.embedded_redis import free_port
from support import ROOT, wait_for

SUPERVISORD_CONF = """
[supervisord]
nodaemon=true
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}

[unix_http_server]
file={tmp}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{tmp}/supervisor.sock

[include]
files={root}/supervisor/pushapp.conf
"""


def _monitor(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).text == "OK"
    except requests.RequestException:
        return False


def test_supervisor_program_serves_the_gateway(tmp_path: Path, start_redis):
    redis_server = start_redis()
    port = free_port()
    conf = tmp_path / "supervisord.conf"
    conf.write_text(SUPERVISORD_CONF.format(tmp=tmp_path, root=ROOT))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PUSHAPP_HOME": str(ROOT), "REDIS_URL": redis_server.url,
           "AUTH_MODE": "insecure",
           "BIND": f"127.0.0.1:{port}"}
    supervisord = subprocess.Popen([bin_dir / "supervisord", "-c", conf], env=env)
    ctl = [bin_dir / "supervisorctl", "-c", conf]
    try:
        wait_for(lambda: _monitor(f"http://127.0.0.1:{port}/monitor"), timeout=30,
                 what="the gateway under supervisord")
        wait_for(lambda: "RUNNING" in subprocess.run(
            [*ctl, "status", "pushapp"], capture_output=True, text=True).stdout,
            what="supervisord to call the program RUNNING")
        subprocess.run([*ctl, "stop", "pushapp"], check=True, capture_output=True, timeout=30)
        assert not _monitor(f"http://127.0.0.1:{port}/monitor")
    finally:
        subprocess.run([*ctl, "shutdown"], capture_output=True, timeout=30)
        supervisord.wait(30)


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
