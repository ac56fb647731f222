"""The seed's contract through the official JavaScript client, socket.io-client v4 under
node, because web and hybrid apps speak it with that client and not with python-socketio.

The client runs tests/js/client.mjs, driven one JSON line at a time. node and npm are
required: without them these tests fail, they never skip (the ``node`` fixture).
"""
from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from support import JS_DIR, WAIT, Gateway, Mailbox, Subscriber, wait_for, without_mids

_EOF = {"type": "eof"}


class JsClient:
    """One socket.io-client in a node process: commands go to its stdin, and each line it
    prints (connect, event, ack, disconnect) is kept until a test expects it."""

    def __init__(self, node: str, url: str, transport: str) -> None:
        self.process = subprocess.Popen(
            [node, str(JS_DIR / "client.mjs"), url, transport], cwd=JS_DIR,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        self.lines = Mailbox()
        self.errors: list[str] = []
        self.connected: dict = {}
        self._ids = itertools.count(1)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        try:
            for line in self.process.stdout:
                self.lines.put(json.loads(line))
        finally:
            self.lines.put(_EOF)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.errors.append(line)

    def wait_connected(self) -> None:
        self.connected = self.expect("connect")

    @property
    def sid(self) -> str:
        return self.connected["sid"]

    def expect(self, kind: str, match: Callable[[dict], bool] = lambda line: True,
               timeout: float = WAIT) -> dict:
        """The next line of type ``kind`` that ``match`` accepts (others are kept)."""
        def accept(line: Any) -> bool:
            if line is _EOF:
                self.lines.put(_EOF)
                raise AssertionError(f"node exited ({self.process.wait(WAIT)}) before a "
                                     f"{kind} line; stderr: {''.join(self.errors)}")
            return line["type"] == kind and match(line)

        try:
            return self.lines.take(accept, timeout, f"{kind} line from node")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; stderr: {''.join(self.errors)}") from None

    def event(self, name: str, timeout: float = WAIT) -> dict:
        """The next server event ``name``: its ``args`` and what the client ``acked``."""
        return self.expect("event", lambda line: line["event"] == name, timeout)

    def send(self, command: dict) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def emit(self, event: str, *args: Any) -> None:
        self.send({"op": "emit", "event": event, "args": list(args)})

    def call(self, event: str, *args: Any) -> list:
        """Emit with an ack callback; the arguments the server acked with."""
        ack_id = next(self._ids)
        self.send({"op": "emit", "event": event, "args": list(args), "ack": True, "id": ack_id})
        return self.expect("ack", lambda line: line["id"] == ack_id)["args"]

    def login(self, user: str, device: str = "dev-1", **extra: Any) -> list:
        return self.call("login", {"myAuraId": user, "deviceId": device, **extra})

    def chat_ack(self, value: int | None) -> None:
        """Ack later chat batches with ``value`` (None: the number of messages in each)."""
        self.send({"op": "chat_ack", "value": value})

    def close(self) -> None:
        try:
            self.send({"op": "close"})
            self.process.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def js(gateway: Gateway, node: str) -> Iterator[Callable[..., JsClient]]:
    """Make connected JavaScript clients of the default gateway; all end after the test."""
    made: list[JsClient] = []

    def make(transport: str = "websocket") -> JsClient:
        client = JsClient(node, gateway.url, transport)
        made.append(client)
        client.wait_connected()
        return client

    yield make
    for client in made:
        client.close()


def test_login_binds_the_js_socket_and_publishes_userinfo(gateway, js, channels, user):
    client = js()
    assert client.connected["transport"] == "websocket"
    assert client.login(user, "web-1", nickname="Ann") == [1]
    info = channels.expect("login_message_channel", lambda m: m.get("myAuraId") == user)
    assert info == {"myAuraId": user, "deviceId": "web-1", "nickname": "Ann"}
    assert gateway.presence(user)[1] == client.sid
    assert client.call("hb") == [1]
    assert client.call("hb", "ping") == [1]


def test_chat_is_acked_1_and_published_to_the_filter_channel(js, channels: Subscriber, user):
    client = js()
    client.login(user)
    assert client.call("chat", {"from": user, "to": "bob", "text": "hi"}) == [1]
    assert channels.expect("chat_filter_channel", lambda m: m.get("from") == user) == {
        "from": user, "to": "bob", "text": "hi"}


def test_geo_is_acked_1_and_published_with_the_time(js, channels: Subscriber, user):
    client = js()
    client.login(user)
    before = int(time.time() * 1000)
    assert client.call("geo", {"myAuraId": user, "lat": 31.2, "lng": 121.5}) == [1]
    published = channels.expect("geo", lambda m: m["geo"].get("myAuraId") == user)
    assert published["geo"] == {"myAuraId": user, "lat": 31.2, "lng": 121.5}
    assert before <= published["time"] <= int(time.time() * 1000)


def test_snschat_arrives_as_a_json_string_and_its_ack_removes_it(gateway, js, user):
    client = js()
    client.login(user)
    message = {"from": "bob", "to": user, "text": "hello", "extra": {"kept": True}}
    gateway.publish("snschat", message)
    chat = client.event("chat")
    assert isinstance(chat["args"][0], str)
    assert without_mids(json.loads(chat["args"][0])) == [message]
    assert chat["acked"] == [1]
    wait_for(lambda: gateway.pending("chat", user) == [], what="the ack to empty the store")


def test_chat_ack_count_removes_only_that_many(gateway, js, user):
    for n in (1, 2):
        gateway.publish("snschat", {"from": "bob", "to": user, "n": n})
    wait_for(lambda: len(gateway.pending("chat", user)) == 2)
    client = js()
    client.chat_ack(1)
    client.login(user)
    chat = client.event("chat")
    assert [m["n"] for m in json.loads(chat["args"][0])] == [1, 2]
    assert chat["acked"] == [1]
    wait_for(lambda: [m["n"] for m in gateway.pending("chat", user)] == [2],
             what="only the second message to stay")


def test_stored_notification_is_delivered_at_login_and_removed_after_ack(gateway, js, user):
    notification = {"toWho": [user], "needStore": True, "title": "kept for you"}
    gateway.publish("notification", notification)
    wait_for(lambda: gateway.pending("notif", user))
    client = js()
    client.login(user)
    delivered = client.event("notification")
    assert isinstance(delivered["args"][0], str)
    assert without_mids(json.loads(delivered["args"][0])) == notification
    assert delivered["acked"] == [1]
    wait_for(lambda: gateway.pending("notif", user) == [], what="the ack to remove it")


def test_login_from_another_device_logs_the_js_client_out(gateway, js, user):
    old, new = js(), js()
    old.login(user, "phone")
    new.login(user, "tablet")
    assert old.event("logout")["args"] == []
    assert old.expect("disconnect")["reason"] == "io server disconnect"
    assert gateway.presence(user)[1] == new.sid
    assert new.call("hb") == [1]


def test_invalid_payload_gets_an_error_ack_or_an_error_event(js, user):
    client = js()
    client.login(user)
    answer = client.call("chat", {"text": "to nobody"})
    assert len(answer) == 1 and "to is missing" in answer[0]["error"], answer
    client.emit("chat", {"text": "to nobody, no ack"})
    assert client.event("error")["args"] == [{"event": "chat", "error": "to is missing"}]
    assert client.call("hb") == [1]


def test_long_polling_transport_works_for_the_js_client(gateway, js, user):
    client = js("polling")
    assert client.connected["transport"] == "polling"
    assert client.login(user) == [1]
    assert client.call("hb") == [1]
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "over polling"})
    chat = client.event("chat")
    assert json.loads(chat["args"][0])[0]["text"] == "over polling"
    wait_for(lambda: gateway.pending("chat", user) == [], what="the ack over polling")
    assert client.call("chat", {"to": "bob", "text": "back over polling"}) == [1]
