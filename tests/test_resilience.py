"""Redis going away and coming back, and the embedded Redis the run command starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import redis
import requests

from pushapp.ops.embedded_redis import free_port
from pushapp.store.store import user_key
from support import ROOT, Client, Gateway, uid, wait_for


def _status(gateway: Gateway) -> int:
    try:
        return requests.get(gateway.url + "/health/ready", timeout=2).status_code
    except requests.RequestException:
        return 0


def test_listener_resubscribes_after_redis_restarts(start_gateway):
    gateway = start_gateway()
    user = uid()
    client = gateway.client()
    try:
        client.login(user)
        gateway.redis_server.stop()
        wait_for(lambda: _status(gateway) == 503, what="readiness to drop with Redis")
        answer = client.call("chat", {"to": "bob"})
        assert answer == {"error": "temporarily unavailable, try again"}
        # Without an ack asked for, the failure comes as an error event.
        client.sio.emit("chat", {"to": "bob"})
        assert client.expect("error") == {"event": "chat",
                                          "error": "temporarily unavailable, try again"}
        assert client.call("hb") == 1
        gateway.redis_server.start()
        wait_for(lambda: _status(gateway) == 200, timeout=20, what="readiness to return")
        gateway.publish("snschat", {"from": "a", "to": user, "after": "restart"})
        assert json.loads(client.expect("chat"))[0]["after"] == "restart"
        log = gateway.log_text()
        assert "listener lost Redis" in log
        assert log.count("listener subscribed to") >= 2
    finally:
        client.close()
    gateway.assert_unharmed()


def test_embedded_redis_is_started_persisted_and_stopped_with_the_gateway(tmp_path):
    """What ``bin/serve`` does with REDIS_URL unset: gunicorn's master starts redis-server
    on a unix socket in the data folder, with an append-only file, and stops it at exit."""
    port = free_port()
    data = tmp_path / "data"
    env = {"BIND": f"127.0.0.1:{port}", "PUSHAPP_DATA_DIR": str(data), "REDIS_URL": "",
           "AUTH_MODE": "insecure"}
    user = uid()

    def serve() -> subprocess.Popen:
        with open(tmp_path / "gunicorn.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _ready(port), timeout=30, what="the gateway with embedded Redis")
        return process

    first = serve()
    store = redis.Redis(unix_socket_path=str(data / "redis.sock"))
    assert store.config_get("appendonly") == {"appendonly": "yes"}
    store.publish("notification", json.dumps({"toWho": [user], "needStore": True, "n": 1}))
    wait_for(lambda: store.xlen(user_key("pushapp:", user, "notif")) == 1)
    store.close()
    first.send_signal(signal.SIGTERM)
    first.wait(20)
    assert not (data / "redis.sock").exists(), "redis-server outlived the gateway"
    assert (data / "appendonly.aof").stat().st_size > 0

    second = serve()
    try:
        client = Client(f"http://127.0.0.1:{port}")
        client.login(user)
        assert json.loads(client.expect("notification"))["n"] == 1
        client.close()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(20)


def _ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).ok
    except requests.RequestException:
        time.sleep(0.1)
        return False


def test_readiness_holds_once_reached(start_gateway):
    """From the first 200 on, a healthy gateway stays ready: no 503 while its worker is
    still taking the ingest lease it has already written to Redis."""
    gateway = start_gateway()
    statuses = [_status(gateway) for _ in range(100)]
    assert statuses == [200] * 100
