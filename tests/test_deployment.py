"""The shipped supervisord program runs the gateway's instances, and stops them cleanly."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import requests
import websocket

from support import Supervisor, wait_for

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
