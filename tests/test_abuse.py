"""An attacker with loopback clients and no token: nothing it does costs the gateway more
than the limits allow, and the other users notice nothing.

Each attack runs against a real gateway with real sockets: half-open requests from three
source addresses in processes of their own, binary packets and frames, namespace cycling,
garbage by the thousand, payloads nested hundreds deep. Each checks what stops it, and
what a bystander still gets.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

import jwt
import pytest
import requests
import websocket

from support import ROOT, WAIT, Gateway, close_code, uid, wait_for

HEADER_TIMEOUT = 3.0
LOGIN_TIMEOUT = 3.0
RATE_LIMIT, RATE_BURST, RATE_STRIKES = 5, 10, 5
SECRET = "abuse-test-secret-of-32-bytes-or-more"
EIO_URL = "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"


@pytest.fixture(scope="module")
def target(start_gateway) -> Gateway:
    """The gateway under attack; after the module, still the same worker, no traceback."""
    gateway = start_gateway(HEADER_TIMEOUT=HEADER_TIMEOUT, LOGIN_TIMEOUT=LOGIN_TIMEOUT,
                            RATE_LIMIT=RATE_LIMIT, RATE_BURST=RATE_BURST,
                            RATE_STRIKES=RATE_STRIKES, MAX_HANDSHAKES_PER_IP=50)
    yield gateway
    gateway.assert_unharmed()


@pytest.fixture
def bystander(target):
    """A logged-in user whose traffic every attack must leave alone."""
    user = uid("bystander")
    client = target.client()
    client.login(user)
    yield client
    assert client.call("hb") == 1, "the bystander lost its connection"
    target.publish("snschat", {"from": "x", "to": user, "check": "after"})
    assert any(m.get("check") == "after" for m in json.loads(client.expect("chat")))
    client.close()


def engine_socket(gateway: Gateway, **kwargs) -> websocket.WebSocket:
    """A websocket with its Engine.IO session open, not yet connected to Socket.IO."""
    ws = websocket.create_connection(EIO_URL.format(port=gateway.port), timeout=WAIT, **kwargs)
    opening = ws.recv()
    assert opening.startswith("0"), opening
    return ws


def joined(gateway: Gateway, **kwargs) -> websocket.WebSocket:
    """A websocket connected to the default namespace, not logged in."""
    ws = engine_socket(gateway, **kwargs)
    ws.send("40")
    assert ws.recv().startswith("40{")
    return ws


def log_lines(gateway: Gateway) -> int:
    """Lines about clients' errors so far (pushapp.wire.limits writes them all)."""
    return gateway.log_text().count(" pushapp.wire.limits: ")


def errors_counted(gateway: Gateway, reason: str) -> float:
    """``pushapp_errors_total{reason=…}`` as /metrics says now."""
    text = requests.get(gateway.url + "/metrics", timeout=WAIT).text
    found = re.search(rf'^pushapp_errors_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def timed_get(gateway: Gateway, path: str) -> float:
    started = time.monotonic()
    answer = requests.get(gateway.url + path, timeout=5)
    assert answer.status_code == 200, (path, answer.status_code, answer.text)
    return time.monotonic() - started


# -- 1. connections that do not earn their place ------------------------------------------

SLOW_HEADS_PER_ADDRESS = 1000


def test_half_open_requests_are_capped_per_address_and_closed_after_the_timeout(target):
    lines_before = log_lines(target)
    attackers = [subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "slow_heads.py"), str(target.port), source,
         str(SLOW_HEADS_PER_ADDRESS), str(HEADER_TIMEOUT + 6)],
        stdout=subprocess.PIPE, text=True) for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]
    try:
        for attacker in attackers:
            assert attacker.stdout.readline().strip() == "ready"
        # Every half-open request is in; the gateway serves everyone else meanwhile.
        latencies = [timed_get(target, path) for path in ("/monitor", "/health/ready") * 3]
        assert max(latencies) < 1.0, latencies
        user, client = uid(), target.client()
        assert client.login(user) == 1 and client.call("hb") == 1
        client.close()
        reports = [json.loads(attacker.communicate(timeout=HEADER_TIMEOUT + 20)[0])
                   for attacker in attackers]
    finally:
        for attacker in attackers:
            attacker.kill()
    for report in reports:
        closed = report["closed"]
        assert report["open"] == 0 and len(closed) == report["opened"], report["open"]
        at_once = [t for t in closed if t < HEADER_TIMEOUT / 2]
        held = [t for t in closed if t >= HEADER_TIMEOUT / 2]
        # The first 50 of an address are held (its handshake limit), until the timeout.
        assert len(held) <= 50, len(held)
        assert len(at_once) + report["refused"] >= SLOW_HEADS_PER_ADDRESS - 50
        assert all(HEADER_TIMEOUT - 0.5 <= t <= HEADER_TIMEOUT + 2.5 for t in held), held
    # ~3,000 refusals and ~150 timeouts: a bounded number of lines, not one each.
    assert log_lines(target) - lines_before <= 2 * (50 + 1)
    assert errors_counted(target, "handshakes_per_ip") >= 3 * (SLOW_HEADS_PER_ADDRESS - 50)


def test_the_header_timeout_spares_long_polls_and_websockets(target):
    """Only the head is timed: an idle websocket and a long poll outlive HEADER_TIMEOUT."""
    websocket_client = target.client()
    polling_client = target.client(transports=("polling",))
    websocket_client.login(uid())
    polling_client.login(uid())
    time.sleep(HEADER_TIMEOUT + 1)
    assert websocket_client.call("hb") == 1
    assert polling_client.call("hb") == 1
    websocket_client.close()
    polling_client.close()


def test_engine_io_sessions_count_as_handshakes_until_the_socketio_connect(start_gateway):
    gateway = start_gateway(MAX_HANDSHAKES_PER_IP=3, LOGIN_TIMEOUT=30)
    waiting = [engine_socket(gateway) for _ in range(3)]
    refused = websocket.create_connection(EIO_URL.format(port=gateway.port), timeout=WAIT)
    assert close_code(refused) == 1013, "a fourth handshake of the address is refused"
    waiting[0].send("40")
    assert waiting[0].recv().startswith("40{")
    engine_socket(gateway).close()  # the connect made room for one more
    for ws in waiting:
        ws.close()
    gateway.stop()


def test_a_socket_that_does_not_log_in_is_closed(target, bystander):
    silent, rejoined = joined(target), joined(target)
    started = time.monotonic()
    rejoined.send('420["login",{"myAuraId":"%s","deviceId":"d"}]' % uid())
    assert rejoined.recv() == "430[1]"
    rejoined.send("41")  # leaves the namespace: it must log in again within the timeout
    rejoined.send("40")
    assert rejoined.recv().startswith("40{")
    assert close_code(silent) == 1008
    assert LOGIN_TIMEOUT - 0.5 <= time.monotonic() - started <= LOGIN_TIMEOUT + 2.0
    assert close_code(rejoined) == 1008


def test_health_and_readiness_answer_at_the_socket_cap(start_gateway):
    """300 files: 204 sockets. With all of them taken by long polls (each a request in
    progress, as many as gevent's pool had room for) a further client is turned away,
    and /monitor and /health/ready still answer at once."""
    gateway = start_gateway(open_files=300, LOGIN_TIMEOUT=120)
    capacity = 300 - 32 - 64
    url = gateway.url + "/socket.io/?EIO=4&transport=polling"
    polling = threading.Semaphore(0)

    def hold_a_long_poll() -> None:
        session = requests.Session()
        try:
            sid = json.loads(session.get(url, timeout=WAIT).text[1:])["sid"]
            session.post(f"{url}&sid={sid}", data="40", timeout=WAIT)
            polling.release()
            while True:
                session.get(f"{url}&sid={sid}", timeout=70)
        except requests.RequestException:
            return  # the gateway stopped

    try:
        for _ in range(capacity):
            threading.Thread(target=hold_a_long_poll, daemon=True).start()
        for _ in range(capacity):
            assert polling.acquire(timeout=30), "a long poll did not start"
        refused = requests.get(url, timeout=WAIT)
        assert refused.status_code == 401 and "full" in refused.text
        latencies = [timed_get(gateway, path) for path in ("/monitor", "/health/ready") * 3]
        assert max(latencies) < 1.0, latencies
    finally:
        gateway.stop()


# -- 2. nothing is held beyond the limits ------------------------------------------------

def test_binary_packets_cut_the_connection_off_and_cost_no_memory(target, bystander):
    rss_before = target.worker_rss()
    ws = joined(target)
    ws.send('451000000-["hb"]')  # a BINARY_EVENT announcing a million attachments
    sent = 0
    try:
        for _ in range(100):
            ws.send_binary(os.urandom(200 * 1024))
            sent += 1
    except (websocket.WebSocketException, ConnectionError):
        pass
    assert close_code(ws) in (1003, None)
    assert sent < 100, "the connection must be cut off, not read to the end"
    assert target.worker_rss() - rss_before < 5 * 1024 * 1024


def test_a_binary_frame_is_refused_from_its_header(target, bystander):
    ws = joined(target)
    header = bytes((0x80 | 0x2, 0x80 | 127)) + struct.pack("!Q", 200 * 1024) + os.urandom(4)
    ws.sock.sendall(header)  # the 200 KB it announces never follow
    assert close_code(ws, timeout=3) == 1003


def test_a_polling_body_over_the_frame_limit_is_refused_at_once(target, bystander):
    url = target.url + "/socket.io/?EIO=4&transport=polling"
    sid = json.loads(requests.get(url, timeout=WAIT).text[1:])["sid"]
    started = time.monotonic()
    answer = requests.post(f"{url}&sid={sid}", data=b"4" + b"x" * 300 * 1024, timeout=WAIT)
    assert answer.status_code == 413
    assert time.monotonic() - started < 1.0
    assert answer.headers["Connection"] == "close"


def test_an_api_body_over_its_limit_is_not_read(target):
    """The 413 comes while the body is still being sent, and the connection closes."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=WAIT) as sock:
        sock.sendall(b"POST /api/v1/chats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     b"test-api-key\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000000\r\n\r\n{")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body) == {"error": "the body is larger than 4000000 bytes"}


# -- 3. limits that cannot be reset by rejoining ---------------------------------------------

def cycle_the_namespace(ws: websocket.WebSocket, pause: float, seconds: float, events: int = 3
                        ) -> tuple[int, float, threading.Event]:
    """Leave and join the namespace and send ``events`` ``hb`` each cycle, as a client
    hoping for a fresh bucket each time; ``pause`` seconds between cycles. How many packets were
    accepted (connects and events), in how many seconds, and the event set when the
    server closes the connection."""
    accepted = [1]  # the first connect
    closed = threading.Event()

    def read() -> None:
        try:
            while True:
                frame = ws.recv()
                accepted[0] += frame.startswith("40{") or (
                    frame.startswith("43") and frame.endswith("[1]"))
        except (websocket.WebSocketException, ConnectionError, OSError):
            closed.set()

    threading.Thread(target=read, daemon=True).start()
    started = time.monotonic()
    ack_ids = iter(range(1, 1_000_000))
    try:
        while not closed.is_set() and time.monotonic() - started < seconds:
            ws.send("41")
            ws.send("40")
            for _ in range(events):
                ws.send(f'42{next(ack_ids)}["hb"]')
            time.sleep(pause)
    except (websocket.WebSocketException, ConnectionError):
        pass
    elapsed = time.monotonic() - started
    time.sleep(0.3)  # the last answers
    return accepted[0], elapsed, closed


def test_namespace_cycling_neither_resets_the_rate_nor_escapes_the_flood_close(target,
                                                                             bystander):
    accepted, elapsed, closed = cycle_the_namespace(joined(target), 0.01, 10)
    assert closed.wait(2), "a client cycling the namespace to flood must be closed"
    assert accepted <= RATE_LIMIT * elapsed + RATE_BURST


def test_rejoining_never_buys_more_than_the_rate(start_gateway):
    """With strikes out of the way (RATE_STRIKES 1000), a client that rejoins ten times a
    second and sends five events each time is never closed; still, what it gets accepted
    over seconds is the rate and one burst, not a burst a rejoin."""
    gateway = start_gateway(RATE_LIMIT=RATE_LIMIT, RATE_BURST=RATE_BURST, RATE_STRIKES=1000)
    ws = joined(gateway)
    accepted, elapsed, closed = cycle_the_namespace(ws, 0.1, 4, events=5)
    assert not closed.is_set()
    assert accepted <= RATE_LIMIT * elapsed + RATE_BURST
    ws.close()
    gateway.stop()


def test_a_reconnecting_user_gets_no_fresh_burst(target, bystander):
    """The bucket a logged-in connection leaves behind is the user's next login's."""
    user = uid()

    def burst() -> int:
        """Log in as ``user`` and send ``hb`` until refused: how many were accepted."""
        ws = joined(target)
        ws.send('420["login",{"myAuraId":"%s","deviceId":"d"}]' % user)
        assert ws.recv() == "430[1]"
        accepted = 0
        while True:
            ws.send(f'42{accepted + 1}["hb"]')
            if not ws.recv().endswith("[1]"):
                break
            accepted += 1
        ws.close()
        return accepted

    assert burst() == RATE_BURST - 2  # the connect and the login took one each
    assert burst() <= 1, "a reconnect must not refill the bucket"


# -- 4. bad input is cheap ---------------------------------------------------------------------

def test_thousands_of_malformed_packets_close_the_socket_after_the_strikes(target,
                                                                          bystander):
    lines_before = log_lines(target)
    counted_before = errors_counted(target, "malformed_packet")
    ws = joined(target)
    sent = 0
    try:
        for number in range(5000):
            ws.send(f'42["hb", {number}')  # JSON cut short
            sent += 1
    except (websocket.WebSocketException, ConnectionError):
        pass
    assert close_code(ws) in (1008, None)
    wait_for(lambda: errors_counted(target, "malformed_packet") - counted_before
             >= RATE_STRIKES, what="the strikes to be counted")
    assert errors_counted(target, "malformed_packet") - counted_before <= RATE_STRIKES + 1
    # 3 lines for the packets, 1 for the cut-off.
    assert log_lines(target) - lines_before <= 4, target.log_tail(10)


def test_acks_of_nothing_are_strikes_and_break_nothing(target, bystander):
    """Ack 0 would have deleted python-socketio's ack counter (kept under id 0), and the
    next delivery asking for an ack would have raised."""
    user = uid()
    ws = joined(target)
    ws.send('420["login",{"myAuraId":"%s","deviceId":"d"}]' % user)
    assert ws.recv() == "430[1]"
    target.publish("snschat", {"from": "x", "to": user, "text": "first"})
    assert ws.recv().startswith("421")  # a chat batch asking for ack 1, left unacked
    counted = errors_counted(target, "bad_ack")
    for ack in ("430[]", "4399[1]", "433"):
        ws.send(ack)
    target.publish("snschat", {"from": "x", "to": user, "text": "still delivered"})
    frame = ws.recv()
    assert frame.startswith("422") and "still delivered" in frame, frame
    assert errors_counted(target, "bad_ack") - counted == 3
    assert "Traceback" not in target.log_text()
    ws.close()


def test_errors_of_many_sockets_are_logged_up_to_a_bound_then_summed_up(target, bystander):
    lines_before = log_lines(target)
    sockets = [joined(target) for _ in range(40)]
    for ws in sockets:
        for _ in range(3):
            ws.send("9 not a packet type")
    for ws in sockets:
        ws.close()
    summary = wait_for(lambda: re.search(r"(\d+) more client errors in the last 10s were not "
                                         r"logged", target.log_text()), 15, "the summary line")
    assert int(summary.group(1)) >= 40 * 3 - 50
    assert log_lines(target) - lines_before <= 50 + 1


def test_payloads_nested_too_deep_get_a_clear_error(target, bystander):
    user, client = uid(), target.client()
    client.login(user)
    deep = json.loads("[" * 300 + "]" * 300)
    answer = client.call("chat", {"to": "bob", "deep": deep})
    assert answer == {"error": "payload is nested too deep: more than 32 levels"}
    assert client.call("chat", {"to": "bob", "deep": json.loads("[" * 20 + "]" * 20)}) == 1
    client.close()
    body = '{"from": "a", "to": "b", "x": ' + "[" * 300 + "]" * 300 + "}"
    api = target.api("POST", "/chats", data=body, headers={"Content-Type": "application/json"})
    assert api.status_code == 400
    assert api.json() == {"error": "body is nested too deep: more than 32 levels"}
    assert "Traceback" not in target.log_text()


def test_an_integer_sub_is_refused(start_gateway):
    """A token's sub is a string: 42 is not taken for the user "42"."""
    gateway = start_gateway(AUTH_MODE="jwt", JWT_SECRET=SECRET)
    client = gateway.client()
    minted = jwt.encode({"sub": 42, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert client.call("login", {"token": minted}) == {"error": "sub must be a string"}
    client.expect("disconnect")
    gateway.stop()


# -- 5. headers ----------------------------------------------------------------------------

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "frame-ancestors 'none'",
                    "X-Frame-Options": "DENY"}


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/monitor", 200), ("GET", "/health/ready", 200), ("GET", "/metrics", 200),
    ("GET", "/api/v1/openapi.json", 200), ("GET", "/no/such/path", 404),
    ("GET", "/socket.io/?EIO=4&transport=polling", 200),
    ("GET", "/socket.io/?EIO=3&transport=polling", 400),
])
def test_every_answer_forbids_sniffing_and_framing(target, method, path, status):
    answer = requests.request(method, target.url + path, timeout=WAIT)
    assert answer.status_code == status
    for name, value in SECURITY_HEADERS.items():
        assert answer.headers.get(name) == value, (path, name)


@pytest.mark.parametrize("method,path,status,error", [
    ("GET", "/api/v1/nothing/here", 404, "no such path: /api/v1/nothing/here"),
    ("DELETE", "/api/v1/chats", 405, "DELETE is not allowed on /api/v1/chats; allowed: "
                                     "OPTIONS, POST"),
    ("POST", "/api/v1/chats", 413, "the body is larger than 4000000 bytes"),
])
def test_api_errors_are_json(target, method, path, status, error):
    body = b"x" * 4_000_001 if status == 413 else None
    answer = target.api(method, path.removeprefix("/api/v1"), data=body)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"error": error}
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
