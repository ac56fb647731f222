"""Nobody logs in as someone else, floods, or reaches in from a foreign origin.

Each refusal is checked from the attacker's side (the reason, then the disconnect) and
from a bystander's: a logged-in user whose traffic must be untouched.
"""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time

import jwt
import pytest
import requests
import socketio
import websocket
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushapp.sockets.delivery import client_address
from pushapp.ops.embedded_redis import EmbeddedRedis, free_port
from pushapp.tokens import mint
from support import ROOT, Client, Gateway, Subscriber, refused_start, uid, wait_for

SECRET = "test-secret-of-at-least-32-bytes-length"
AUDIENCE, ISSUER = "pushapp-test", "business-server"


def token(user: str, ttl: float = 600, key: str = SECRET, **claims) -> str:
    now = int(time.time())
    body = {"sub": user, "iat": now, "exp": now + ttl, "aud": AUDIENCE, "iss": ISSUER, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="HS256")


@pytest.fixture(scope="module")
def jwt_gateway(start_gateway) -> Gateway:
    return start_gateway(AUTH_MODE="jwt", JWT_SECRET=SECRET, JWT_AUDIENCE=AUDIENCE,
                         JWT_ISSUER=ISSUER, JWT_LEEWAY=0, RATE_LIMIT=5, RATE_BURST=10,
                         RATE_STRIKES=5)


@pytest.fixture
def bystander(jwt_gateway):
    """A logged-in user whose traffic every attack must leave alone."""
    user = uid("bystander")
    client = jwt_gateway.client()
    client.login(user, token=token(user))
    yield client, user
    assert client.call("hb") == 1, "the bystander lost its connection"
    jwt_gateway.publish("snschat", {"from": "x", "to": user, "check": "after"})
    assert any(m.get("check") == "after" for m in json.loads(client.expect("chat")))
    client.close()


def refused(client: Client, event: str, payload: dict) -> str:
    """Send ``event`` and return the error reason; the socket must then be closed."""
    answer = client.call(event, payload)
    client.expect("disconnect")
    return answer["error"]


def test_a_valid_token_logs_in_its_subject(jwt_gateway, bystander):
    user = uid()
    login_channel = Subscriber(jwt_gateway.redis_server.url, "login_message_channel")
    client = jwt_gateway.client()
    try:
        assert client.call("login", {"deviceId": "d1", "token": token(user)}) == 1
        info = login_channel.expect("login_message_channel", lambda m: m["myAuraId"] == user)
        assert info == {"deviceId": "d1", "myAuraId": user}, "the token must not be published"
        assert jwt_gateway.presence(user)[1] == client.sio.get_sid()
    finally:
        client.close()
        login_channel.close()


def test_a_token_in_the_connect_auth_serves_for_the_login(jwt_gateway, bystander):
    user = uid()
    client = Client(jwt_gateway.url, auth={"token": token(user)})
    try:
        assert client.call("login", {"myAuraId": user, "deviceId": "d"}) == 1
        assert jwt_gateway.presence(user)[1] == client.sio.get_sid()
    finally:
        client.close()


def refused_at_connect(gateway: Gateway, **kwargs) -> str:
    """Connect, expecting a refusal; returns the reason the client was given."""
    client = Client(gateway.url, connect=False, **kwargs)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect()
    return client.expect("connect_error")["message"]


def test_a_bad_token_in_the_connect_auth_is_refused_at_connect(jwt_gateway, bystander):
    forged = token("x", key="another-secret-that-is-32-bytes-long")
    assert refused_at_connect(jwt_gateway, auth={"token": forged}) == "bad signature"


def test_impersonation_through_myauraid_is_refused(jwt_gateway, bystander):
    _, victim = bystander
    reason = refused(jwt_gateway.client(), "login", {"myAuraId": victim, "token": token(uid())})
    assert reason == "user mismatch"


def test_login_without_a_token_is_refused(jwt_gateway, bystander):
    _, victim = bystander
    assert refused(jwt_gateway.client(), "login", {"myAuraId": victim}) == "token missing"


@pytest.mark.parametrize("make,reason", [
    (lambda u: token(u, key="forged-with-another-secret-32bytes"), "bad signature"),
    (lambda u: token(u, ttl=-5), "token expired"),
    (lambda u: token(u, aud="another-service"), "wrong audience"),
    (lambda u: token(u, iss="someone-else"), "wrong issuer"),
    (lambda u: token(u, exp=None), "token lacks exp"),
    (lambda u: token(42), "sub must be a string"),
    (lambda u: jwt.encode({"sub": u, "exp": time.time() + 60, "aud": AUDIENCE, "iss": ISSUER},
                          None, algorithm="none"), "algorithm not allowed"),
    (lambda u: "not.a.token", "invalid token"),
    (lambda u: {"sub": u}, "invalid token"),
])
def test_bad_tokens_are_refused_with_a_reason(jwt_gateway, bystander, make, reason):
    _, victim = bystander
    assert refused(jwt_gateway.client(), "login", {"token": make(victim)}) == reason
    assert jwt_gateway.presence(victim)[1] == bystander[0].sio.get_sid()


def test_chat_and_geo_cannot_speak_for_another_user(jwt_gateway, bystander):
    _, victim = bystander
    user = uid()
    client = jwt_gateway.client()
    try:
        client.login(user, token=token(user))
        assert "does not match" in client.call("chat", {"from": victim, "to": "x"})["error"]
        assert "does not match" in client.call("geo", {"myAuraId": victim})["error"]
    finally:
        client.close()


def test_the_socket_closes_when_its_token_expires(jwt_gateway, bystander):
    user = uid()
    client = jwt_gateway.client()
    client.login(user, token=token(user, ttl=2))
    assert client.expect("error", timeout=5) == {"event": "refresh", "error": "token expired"}
    client.expect("disconnect")
    wait_for(lambda: jwt_gateway.presence(user) is None, what="presence to go")


def test_refresh_moves_the_expiry(jwt_gateway, bystander):
    user = uid()
    client = jwt_gateway.client()
    try:
        client.login(user, token=token(user, ttl=2))
        assert client.call("refresh", {"token": token(user, ttl=600)}) == 1
        time.sleep(3.5)
        assert client.call("hb") == 1
    finally:
        client.close()


def test_refresh_with_another_users_token_is_refused(jwt_gateway, bystander):
    user = uid()
    client = jwt_gateway.client()
    client.login(user, token=token(user))
    assert refused(client, "refresh", {"token": token(uid())}) == "user mismatch"


def test_an_event_flood_is_limited_then_disconnected(jwt_gateway, bystander):
    raw = jwt_gateway.raw()
    answers = [raw.call("hb")[0] for _ in range(9)]
    assert answers == [1] * 9, "the burst (less the namespace connect) must pass"
    limited = raw.call("hb")[0]
    assert limited == {"error": "rate limited: at most 5 events per second"}
    for _ in range(5):
        raw.emit("hb")
    assert raw.closed.wait(5), "a client flooding past RATE_STRIKES must be disconnected"


def test_a_paced_client_is_never_limited(jwt_gateway, bystander):
    raw = jwt_gateway.raw()
    try:
        for _ in range(15):
            assert raw.call("hb") == [1]
            time.sleep(0.2)
    finally:
        raw.close()


def _handshake(gateway: Gateway, origin: str | None) -> bool:
    """Whether Engine.IO opens a session for a websocket from ``origin``. gevent-websocket
    completes the HTTP upgrade before the application runs, so a refused origin shows as a
    socket closed without the open packet."""
    url = f"ws://127.0.0.1:{gateway.port}/socket.io/?EIO=4&transport=websocket"
    try:
        ws = websocket.create_connection(url, timeout=5, origin=origin,
                                         suppress_origin=origin is None)
    except websocket.WebSocketBadStatusException:
        return False
    try:
        return ws.recv().startswith("0")
    except (websocket.WebSocketException, OSError):
        return False
    finally:
        ws.close()


def test_browsers_from_other_origins_are_refused(start_gateway, jwt_gateway, bystander):
    listed = start_gateway(CORS_ALLOWED_ORIGINS="https://app.example,https://admin.example")
    assert not _handshake(listed, "https://evil.example")
    assert _handshake(listed, "https://app.example")
    assert _handshake(listed, None), "native apps send no Origin"
    assert not _handshake(jwt_gateway, "https://evil.example"), "default: own origin only"
    assert _handshake(jwt_gateway, f"http://127.0.0.1:{jwt_gateway.port}")


def test_a_frame_announcing_a_huge_payload_is_cut_off(jwt_gateway, bystander):
    raw = jwt_gateway.raw()
    mask = os.urandom(4)
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 4 * 1024 ** 3) + mask
    raw.ws.sock.sendall(header + b"42" * 100)
    assert raw.closed.wait(5), "a 4 GB frame must be refused before it is read"


def test_connections_per_address_are_capped(start_gateway):
    gateway = start_gateway(MAX_CONNECTIONS_PER_IP=3)
    clients = [gateway.client() for _ in range(3)]
    assert refused_at_connect(gateway) == "too many connections from this address"
    clients.pop().close()
    wait_for(lambda: _try_connect(gateway), what="a freed slot")
    for client in clients:
        client.close()


def _login_addresses(gateway: Gateway, user: str) -> list[str]:
    return [line.rsplit("address=", 1)[1] for line in gateway.log_text().splitlines()
            if f" login user={user} " in line]


@pytest.mark.parametrize("peer, forwarded, trusted, client", [
    ("127.0.0.1", "198.51.100.1, 203.0.113.7", ("127.0.0.1", "::1"), "203.0.113.7"),
    ("::1", "203.0.113.7", ("127.0.0.1", "::1"), "203.0.113.7"),
    ("10.1.2.3", "203.0.113.7", ("10.1.0.0/16",), "203.0.113.7"),
    ("192.0.2.1", "203.0.113.7", ("*",), "203.0.113.7"),
    ("192.0.2.1", "203.0.113.7", ("127.0.0.1", "::1"), "192.0.2.1"),
    ("127.0.0.1", "", ("127.0.0.1",), "127.0.0.1"),
])
def test_the_client_address_trusts_only_listed_proxies(peer, forwarded, trusted, client):
    environ = {"REMOTE_ADDR": peer, **({"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {})}
    assert client_address(environ, trusted) == client


def test_a_trusted_proxy_names_the_client(start_gateway):
    """From a proxy in FORWARDED_ALLOW_IPS (the default trusts 127.0.0.1), the client is
    the last X-Forwarded-For entry, the one the proxy added: it is logged and counted."""
    gateway = start_gateway(MAX_CONNECTIONS_PER_IP=1)
    user = uid()
    first = gateway.client(headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    first.login(user)
    wait_for(lambda: _login_addresses(gateway, user), what="the login line")
    assert _login_addresses(gateway, user) == ["203.0.113.7"]
    other = gateway.client(headers={"X-Forwarded-For": "203.0.113.8"})
    assert refused_at_connect(gateway, headers={"X-Forwarded-For": "203.0.113.7"}) == (
        "too many connections from this address")
    first.close()
    other.close()


def test_a_forged_forwarded_for_from_an_untrusted_peer_is_not_believed(start_gateway):
    gateway = start_gateway(MAX_CONNECTIONS_PER_IP=1, FORWARDED_ALLOW_IPS="10.9.9.9,10.1.0.0/16")
    user = uid()
    forger = gateway.client(headers={"X-Forwarded-For": "203.0.113.7"})
    forger.login(user)
    wait_for(lambda: _login_addresses(gateway, user), what="the login line")
    assert _login_addresses(gateway, user) == ["127.0.0.1"]
    assert refused_at_connect(gateway, headers={"X-Forwarded-For": "203.0.113.8"}) == (
        "too many connections from this address")
    forger.close()


def _try_connect(gateway: Gateway) -> bool:
    try:
        gateway.client().close()
    except socketio.exceptions.ConnectionError:
        return False
    return True


@pytest.fixture(scope="module")
def key_files(tmp_path_factory):
    """An RSA key as PEM, and a JWKS with that RSA key (kid r1) and an EC key (kid e1)."""
    folder = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / "rsa.pub.pem").write_bytes(pem)
    keys = []
    for kid, key, algorithm in (("r1", rsa_key, jwt.algorithms.RSAAlgorithm),
                                ("e1", ec_key, jwt.algorithms.ECAlgorithm)):
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid})
    (folder / "jwks.json").write_text(json.dumps({"keys": keys}))
    return folder, rsa_key, ec_key


def _private_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_rs256_tokens_are_checked_with_a_public_key_file(start_gateway, key_files):
    folder, rsa_key, _ = key_files
    gateway = start_gateway(AUTH_MODE="jwt", JWT_PUBLIC_KEY_FILE=folder / "rsa.pub.pem")
    user = uid()
    good = gateway.client()
    try:
        assert good.call("login", {"token": mint(user, _private_pem(rsa_key), "RS256")}) == 1
        hs256 = mint(user, SECRET, "HS256")
        assert refused(gateway.client(), "login", {"token": hs256}) == "algorithm not allowed"
    finally:
        good.close()


def test_jwks_keys_are_picked_by_kid(start_gateway, key_files):
    folder, rsa_key, ec_key = key_files
    gateway = start_gateway(AUTH_MODE="jwt", JWT_JWKS_FILE=folder / "jwks.json")
    rsa_user, ec_user = uid(), uid()
    by_rsa, by_ec = gateway.client(), gateway.client()
    try:
        assert by_rsa.call("login", {"token": mint(rsa_user, _private_pem(rsa_key), "RS256",
                                                   kid="r1")}) == 1
        assert by_ec.call("login", {"token": mint(ec_user, _private_pem(ec_key), "ES256",
                                                  kid="e1")}) == 1
        other_kid = mint(uid(), _private_pem(rsa_key), "RS256", kid="e1")
        assert refused(gateway.client(), "login", {"token": other_kid}) == "algorithm not allowed"
        unknown_kid = mint(uid(), _private_pem(rsa_key), "RS256", kid="zz")
        assert refused(gateway.client(), "login", {"token": unknown_kid}) == "bad signature"
    finally:
        by_rsa.close()
        by_ec.close()


class JwksEndpoint:
    """An identity provider's JWKS endpoint on a loopback port, in a thread: serves the
    keys it is given and counts the requests."""

    def __init__(self, port: int = 0) -> None:
        self.body = b'{"keys": []}'
        self.requests = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                endpoint.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(endpoint.body)))
                self.end_headers()
                self.wfile.write(endpoint.body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, **keys) -> None:
        """Publish these public keys (kid=private key) and no others."""
        self.body = json.dumps({"keys": [_jwk(kid, key) for kid, key in keys.items()]}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _jwk(kid: str, private_key) -> dict:
    algorithm = (jwt.algorithms.ECAlgorithm if isinstance(private_key, ec.EllipticCurvePrivateKey)
                 else jwt.algorithms.RSAAlgorithm)
    return {**json.loads(algorithm.to_jwk(private_key.public_key())), "kid": kid, "use": "sig"}


def _hs256_by_hand(claims: dict, key: bytes, kid: str) -> str:
    """An HS256 token signed with ``key`` (PyJWT refuses to sign with a public key, as
    an attacker would not)."""
    def part(data: dict) -> bytes:
        return jwt.utils.base64url_encode(json.dumps(data).encode())

    signed = part({"alg": "HS256", "typ": "JWT", "kid": kid}) + b"." + part(claims)
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return (signed + b"." + jwt.utils.base64url_encode(mac)).decode()


@pytest.fixture
def jwks_endpoint():
    endpoint = JwksEndpoint()
    yield endpoint
    endpoint.close()


def _login_with(gateway: Gateway, token: str) -> object:
    """The ack of a login with ``token`` on a new socket."""
    raw = gateway.raw()
    try:
        return raw.call("login", {"token": token, "deviceId": "d"})[0]
    finally:
        raw.close()


def test_jwks_url_keys_rotate_without_a_restart(start_gateway, key_files, jwks_endpoint):
    _, rsa_key, ec_key = key_files
    jwks_endpoint.serve(k1=rsa_key)
    gateway = start_gateway(AUTH_MODE="jwt", JWT_JWKS_URL=jwks_endpoint.url, JWT_JWKS_COOLDOWN=1)
    assert _login_with(gateway, mint(uid(), _private_pem(rsa_key), "RS256", kid="k1")) == 1
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    as_hmac = _hs256_by_hand({"sub": uid(), "exp": int(time.time()) + 60}, public_pem, "k1")
    unsigned = jwt.encode({"sub": uid(), "exp": time.time() + 60}, None, algorithm="none",
                          headers={"kid": "k1"})
    assert _login_with(gateway, as_hmac) == {"error": "algorithm not allowed"}
    assert _login_with(gateway, unsigned) == {"error": "algorithm not allowed"}

    jwks_endpoint.serve(k2=ec_key)  # the issuer rotates: k2 replaces k1
    time.sleep(1.1)  # JWT_JWKS_COOLDOWN since the fetch at start
    fetched = jwks_endpoint.requests
    assert _login_with(gateway, mint(uid(), _private_pem(ec_key), "ES256", kid="k2")) == 1
    assert jwks_endpoint.requests == fetched + 1
    withdrawn = mint(uid(), _private_pem(rsa_key), "RS256", kid="k1")
    assert _login_with(gateway, withdrawn) == {"error": "bad signature"}
    gateway.assert_unharmed()


def test_a_symmetric_key_in_a_jwks_is_never_used(start_gateway, key_files, jwks_endpoint):
    _, rsa_key, _ = key_files
    secret = b"a-secret-that-anyone-can-read-in-the-jwks"
    oct_key = {"kty": "oct", "kid": "h1", "k": jwt.utils.base64url_encode(secret).decode()}
    jwks_endpoint.body = json.dumps({"keys": [oct_key, _jwk("k1", rsa_key)]}).encode()
    gateway = start_gateway(AUTH_MODE="jwt", JWT_JWKS_URL=jwks_endpoint.url)
    forged = jwt.encode({"sub": uid(), "exp": time.time() + 60}, secret, algorithm="HS256",
                        headers={"kid": "h1"})
    assert _login_with(gateway, forged) == {"error": "bad signature"}
    assert _login_with(gateway, mint(uid(), _private_pem(rsa_key), "RS256", kid="k1")) == 1


def test_tokens_naming_unknown_kids_cause_few_fetches(start_gateway, key_files, jwks_endpoint):
    _, rsa_key, _ = key_files
    jwks_endpoint.serve(k1=rsa_key)
    gateway = start_gateway(AUTH_MODE="jwt", JWT_JWKS_URL=jwks_endpoint.url, JWT_JWKS_COOLDOWN=3)
    time.sleep(3)  # past the cooldown of the fetch at start
    fetched, began = jwks_endpoint.requests, time.monotonic()
    for n in range(60):
        made_up = mint(uid(), _private_pem(rsa_key), "RS256", kid=f"random-{n}")
        assert _login_with(gateway, made_up) == {"error": "bad signature"}
    cooldowns = int((time.monotonic() - began) // 3)
    assert 1 <= jwks_endpoint.requests - fetched <= 1 + cooldowns
    assert _login_with(gateway, mint(uid(), _private_pem(rsa_key), "RS256", kid="k1")) == 1
    gateway.assert_unharmed()


def test_an_unreachable_jwks_url_refuses_logins_and_the_worker_lives_on(start_gateway, key_files):
    _, rsa_key, _ = key_files
    port = free_port()
    gateway = start_gateway(AUTH_MODE="jwt", JWT_JWKS_COOLDOWN=1,
                            JWT_JWKS_URL=f"http://127.0.0.1:{port}/jwks.json")
    token = mint(uid(), _private_pem(rsa_key), "RS256", kid="k1")
    assert _login_with(gateway, token) == {"error": "signing keys unavailable, try again later"}
    assert "JWT_JWKS_URL http://127.0.0.1:" in gateway.log_text()
    gateway.assert_unharmed()

    endpoint = JwksEndpoint(port)  # the identity provider is back
    try:
        endpoint.serve(k1=rsa_key)
        time.sleep(1.1)
        assert _login_with(gateway, token) == 1
    finally:
        endpoint.close()


def test_the_token_command_mints_a_working_token(jwt_gateway, bystander):
    user = uid()
    env = {**os.environ, "JWT_SECRET": SECRET, "JWT_AUDIENCE": AUDIENCE, "JWT_ISSUER": ISSUER}
    minted = subprocess.run([sys.executable, "-m", "pushapp.tokens", user, "--ttl", "60"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    client = jwt_gateway.client()
    try:
        assert client.call("login", {"token": minted.stdout.strip()}) == 1
    finally:
        client.close()


def test_without_a_key_or_insecure_mode_the_gateway_refuses_to_start():
    said = refused_start()
    assert "set JWT_SECRET" in said and "AUTH_MODE=insecure" in said


def test_a_short_jwt_secret_stops_the_gateway_at_start_with_one_line():
    said = refused_start(JWT_SECRET="short")
    assert said.splitlines() == [
        "pushapp: JWT_SECRET is 5 bytes: an HS256 secret needs 32 or more, or it can be guessed "
        "offline from one token (make one with: python3 -c 'import secrets; "
        "print(secrets.token_hex(32))')"]


def test_redis_with_a_password_is_reached_through_redis_url(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), password="s3cret")
    server.start()
    try:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        gateway = Gateway(server, tmp_path / "gunicorn.log").start()
        user = uid()
        client = gateway.client()
        client.login(user)
        gateway.publish("snschat", {"from": "a", "to": user, "via": "password"})
        assert json.loads(client.expect("chat"))[0]["via"] == "password"
        client.close()
        gateway.stop()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keyed(start_gateway) -> Gateway:
    """A gateway with two valid API keys, as during a rotation."""
    return start_gateway(API_KEYS="old-key-1234,new-key-5678")


def _post(gateway: Gateway, authorization: str | None, body: dict, **headers) -> requests.Response:
    if authorization is not None:
        headers["Authorization"] = authorization
    return requests.post(gateway.url + "/api/v1/notifications", json=body, headers=headers,
                         timeout=10)


@pytest.mark.parametrize("authorization,reason", [
    (None, "missing API key"),
    ("Bearer", "missing API key"),
    ("Basic b2xkLWtleS0xMjM0Og==", "missing API key"),
    ("Bearer old-key-123", "wrong API key"),
    ("Bearer old-key-1234x", "wrong API key"),
])
def test_the_api_refuses_calls_without_a_valid_key(keyed, authorization, reason):
    user = uid()
    answer = _post(keyed, authorization, {"toWho": [user], "needStore": True})
    assert answer.status_code == 401
    assert answer.json()["error"].startswith(reason)
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert keyed.pending("notif", user) == [], "a refused call must store nothing"
    presence = requests.get(f"{keyed.url}/api/v1/users/{user}/presence", timeout=10,
                            headers={"Authorization": authorization} if authorization else {})
    assert presence.status_code == 401, "operator endpoints need a key too"


def test_every_configured_key_works_during_a_rotation(keyed):
    for key in ("old-key-1234", "new-key-5678"):
        user = uid()
        answer = _post(keyed, f"Bearer {key}", {"toWho": [user], "needStore": True})
        assert answer.status_code == 200, answer.text
        assert keyed.pending("notif", user) != []


def test_idempotency_keys_belong_to_one_api_key(keyed):
    user = uid()
    body = {"toWho": [user], "needStore": True}
    first = _post(keyed, "Bearer old-key-1234", body, **{"Idempotency-Key": "same"})
    second = _post(keyed, "Bearer new-key-5678", body, **{"Idempotency-Key": "same"})
    assert first.status_code == second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers
    assert len(keyed.pending("notif", user)) == 2


def test_without_api_keys_the_api_is_closed(start_gateway):
    closed = start_gateway(API_KEYS="")
    answer = _post(closed, "Bearer anything", {"toWho": ["u"], "needStore": True})
    assert answer.status_code == 401
    assert "no API_KEYS are configured" in answer.json()["error"]


def test_health_metrics_and_the_api_document_stay_open(keyed):
    for path in ("/monitor", "/health/ready", "/metrics", "/api/v1/openapi.json"):
        assert requests.get(keyed.url + path, timeout=10).status_code == 200, path
