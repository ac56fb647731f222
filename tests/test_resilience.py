"""Redis going away and coming back, and the embedded Redis the run command starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

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
    # Redis 6 writes appendonly.aof; Redis 7 a folder of files (appendonlydir/).
    written = [path for path in data.glob("appendonly*") if path.is_file()] + \
        list(data.glob("appendonlydir/*.aof"))
    assert sum(path.stat().st_size for path in written) > 0, sorted(data.iterdir())

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


def test_a_worker_that_could_not_hear_its_signals_reads_what_they_announced(
        start_redis, tmp_path_factory):
    """Signals between workers are pub/sub, which keeps nothing: a chat stored for a user
    whose worker is not subscribed at that moment (its Redis connection dropped, and its
    channel's permission taken away, so it cannot subscribe again) is not announced to
    it. Once that worker is subscribed again, it reads what its sockets missed."""
    server = start_redis()
    admin = redis.Redis.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "holder", "on", ">secret", "~*", "&*", "+@all")
    holder_url = server.url.replace("redis://", "redis://holder:secret@", 1)
    sender = Gateway(server, tmp_path_factory.mktemp("sender") / "gunicorn.log").start()
    holder = Gateway(SimpleNamespace(url=holder_url),
                     tmp_path_factory.mktemp("holder") / "gunicorn.log").start()
    user = uid()
    client = holder.client()
    try:
        client.login(user)
        admin.execute_command("ACL", "SETUSER", "holder", "resetchannels")
        admin.execute_command("CLIENT", "KILL", "USER", "holder")
        wait_for(lambda: "listener lost Redis" in holder.log_text(),
                 what="the holder's listener to lose its subscription")
        for n in range(3):
            answer = sender.api("POST", "/chats", json={"to": user, "n": n})
            assert answer.json()["stored"] == 1
        client.quiet("chat", 1.0)
        admin.execute_command("ACL", "SETUSER", "holder", "allchannels")
        assert [chat["n"] for chat in client.expect_chats(3)] == [0, 1, 2]
        assert "after the listener came back" in holder.log_text()
    finally:
        client.close()
        for gateway in (holder, sender):
            gateway.stop()


def test_a_worker_whose_heartbeat_went_stale_is_still_handed_its_users_chats(
        start_redis, tmp_path_factory):
    """A worker that missed its heartbeats (paused here; cut off from Redis in a failover)
    counts as gone: a chat for its user asks for a mobile push. It is still signalled the
    chat, and delivers it once it runs again, with no later chat needed to bring it."""
    server = start_redis()
    sender, holder = (Gateway(server, tmp_path_factory.mktemp(name) / "gunicorn.log",
                              LEASE_TTL=1).start() for name in ("sender", "holder"))
    user = uid()
    client = holder.client()
    pid = holder.worker_pid()
    try:
        client.login(user)
        os.kill(pid, signal.SIGSTOP)
        try:
            sent = []

            def stale() -> bool:
                answer = sender.api("POST", "/chats", json={"to": user, "n": len(sent)})
                sent.append(answer.json())
                return answer.json()["online"] == 0

            wait_for(stale, 10, "the sender to count the paused worker as gone")
        finally:
            os.kill(pid, signal.SIGCONT)
        assert all(answer["stored"] == 1 for answer in sent)
        assert [chat["n"] for chat in client.expect_chats(len(sent))] == list(range(len(sent)))
        assert f"mobile push requested user={user}" in sender.log_text()
    finally:
        client.close()
        for gateway in (holder, sender):
            gateway.stop()
