"""The shipped supervisord program runs the gateway, and stops it cleanly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

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
