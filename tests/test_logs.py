"""Log lines: one per connect, login, kick and disconnect with user, device and address, in
plain text by default and as JSON objects with LOG_FORMAT=json."""
from __future__ import annotations

import json

from support import Gateway, uid, wait_for


def _session(gateway: Gateway, user: str) -> None:
    """Connect and log in on a phone, then on a tablet (the phone is kicked), then leave."""
    phone, tablet = gateway.client(), gateway.client()
    phone.login(user, "phone")
    tablet.login(user, "tablet")
    phone.expect("disconnect")
    tablet.close()
    wait_for(lambda: gateway.presence(user) is None, what="the tablet's disconnect")


def test_plain_lines_name_user_device_and_address(gateway):
    user = uid()
    _session(gateway, user)
    lines = [line for line in gateway.log_text().splitlines() if f"user={user}" in line]
    assert [line.split(": ", 1)[1].split()[0] for line in lines] == [
        "login", "login", "kick", "disconnect"]
    assert all(" address=127.0.0.1" in line for line in lines), lines
    assert "device=phone" in lines[2] and "logout=True" in lines[2]


def test_json_lines_carry_the_same_fields(start_gateway):
    gateway = start_gateway(LOG_FORMAT="json")
    user = uid()
    _session(gateway, user)
    gateway.publish("snschat", "{broken")
    wait_for(lambda: "skipped a message on snschat" in gateway.log_text())
    records = [json.loads(line) for line in gateway.log_text().splitlines() if line.strip()]
    assert any(record["logger"] == "gunicorn.error" for record in records)
    mine = [record for record in records if record.get("user") == user]
    assert [(r["event"], r["device"], r["address"]) for r in mine] == [
        ("login", "phone", "127.0.0.1"), ("login", "tablet", "127.0.0.1"),
        ("kick", "phone", "127.0.0.1"), ("disconnect", "tablet", "127.0.0.1")]
    connects = [r for r in records if r.get("event") == "connect"]
    assert len(connects) >= 2 and all(r["address"] == "127.0.0.1" for r in connects)
    skipped = [r for r in records if "skipped a message" in r["message"]]
    assert skipped[0]["level"] == "WARNING" and skipped[0]["time"].endswith("Z")
    gateway.assert_unharmed()
