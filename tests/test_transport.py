"""The websocket transport (pushapp/wire/transport.py): direct writes, one pinger per worker,
the polling upgrade, a client that stops reading, and TRANSPORTS."""
from __future__ import annotations

import json
import socket
import time
from typing import Any, Callable

import pytest
import socketio
import websocket

from support import WAIT, Client, Gateway, uid, wait_for


@pytest.fixture(scope="module")
def quick_pings(start_gateway: Callable[..., Gateway]) -> Gateway:
    return start_gateway(PING_INTERVAL=1, PING_TIMEOUT=1)


def _socketio(port: int, **options: Any) -> websocket.WebSocket:
    """A bare websocket through the Socket.IO connect, that answers nothing by itself."""
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=WAIT, **options)
    assert ws.recv().startswith("0")
    ws.send("40")
    assert ws.recv().startswith("40")
    return ws


def _recv_until(ws: websocket.WebSocket, wanted: str, limit: int = 50) -> float:
    for _ in range(limit):
        if ws.recv() == wanted:
            return time.monotonic()
    raise AssertionError(f"no {wanted!r} in {limit} frames")


def test_pings_come_every_interval_while_answered(quick_pings):
    ws = _socketio(quick_pings.port)
    try:
        start = time.monotonic()
        times = []
        for _ in range(3):
            times.append(_recv_until(ws, "2"))
            ws.send("3")
        # The first ping one interval after the connect, each next one an interval after
        # the pong before it.
        assert 0.8 < times[0] - start < 2.5
        assert all(0.8 < later - earlier < 2.5 for earlier, later in zip(times, times[1:]))
    finally:
        ws.close()
    quick_pings.assert_unharmed()


def test_a_client_that_stops_answering_pings_is_dropped(quick_pings):
    ws = _socketio(quick_pings.port)
    try:
        _recv_until(ws, "2")
        deadline = time.monotonic() + 10
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            while time.monotonic() < deadline:
                if not ws.recv():
                    raise ConnectionError("closed")
        assert time.monotonic() < deadline, "still connected 10 s after an unanswered ping"
    finally:
        ws.close()


def test_polling_client_upgrades_to_websocket(gateway, clients, user):
    client = clients(transports=("polling", "websocket"))
    wait_for(lambda: client.sio.transport() == "websocket", what="the upgrade")
    client.login(user)
    assert client.call("hb") == 1
    gateway.publish("snschat", {"from": "bob", "to": user, "text": "after the upgrade"})
    assert json.loads(client.expect("chat"))[0]["text"] == "after the upgrade"


def test_a_client_that_stops_reading_is_cut_off_and_others_are_served(start_gateway):
    """Unstored notifications pile up for a client that reads nothing: past
    SEND_BACKLOG_MAX_BYTES it is disconnected, while another client goes on receiving."""
    gateway = start_gateway(SEND_BACKLOG_MAX_BYTES=65536)
    stalled, reader = uid("stalled"), uid("reader")
    ws = _socketio(gateway.port, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    ws.send(f'421["login",{json.dumps({"myAuraId": stalled, "deviceId": "d"})}]')
    assert ws.recv().startswith("431")
    healthy = gateway.client()
    healthy.login(reader)
    filler = "x" * 16_000
    try:
        for n in range(2000):
            gateway.redis.publish("notification", json.dumps(
                {"toWho": [stalled], "needStore": False, "n": n, "filler": filler}))
            if "reads too slowly" in gateway.log_text():
                break
        wait_for(lambda: "reads too slowly" in gateway.log_text(), what="the cut-off")
        gateway.publish("notification", {"toWho": [reader], "needStore": False, "n": -1})
        assert json.loads(healthy.expect("notification"))["n"] == -1
        # What the stalled client still gets is what its buffers held; then the end.
        ws.settimeout(WAIT)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            for _ in range(10_000):
                if not ws.recv():
                    raise ConnectionError("closed")
    finally:
        ws.close()
        healthy.close()
    gateway.assert_unharmed()


POLLING_WARNING = "WORKERS=2 with TRANSPORTS allowing long-polling"


def test_websocket_only_refuses_long_polling(start_gateway):
    gateway = start_gateway(TRANSPORTS="websocket")
    with pytest.raises(socketio.exceptions.ConnectionError):
        Client(gateway.url, transports=("polling",))
    user = uid()
    client = Client(gateway.url, transports=("websocket",))
    try:
        assert client.login(user) == 1
        gateway.publish("snschat", {"from": "x", "to": user, "via": "websocket"})
        assert json.loads(client.expect("chat"))[0]["via"] == "websocket"
    finally:
        client.close()


def test_several_workers_with_polling_are_warned_of_at_start(start_gateway):
    gateway = start_gateway(WORKERS=2)
    warnings = [line for line in gateway.log_text().splitlines() if POLLING_WARNING in line]
    assert len(warnings) == 1, warnings
    assert "WARNING" in warnings[0] and "Set TRANSPORTS=websocket" in warnings[0]
    websocket_only = start_gateway(WORKERS=2, TRANSPORTS="websocket")
    assert "Booting worker" in websocket_only.log_text()
    assert POLLING_WARNING not in websocket_only.log_text()
