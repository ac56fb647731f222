"""An upgrade keeps what was stored: messages an older pushapp stored under its key layout
(``<prefix>chat:<user>``, ``<prefix>notif:<user>``, ``<prefix>sent:<user>`` and one
``<prefix>online`` hash) are moved into the per-user layout at start and delivered with
the ids they had."""
from __future__ import annotations

import json

from support import Gateway, uid, wait_for


def test_messages_stored_before_the_upgrade_are_delivered_after_it(start_redis,
                                                                   tmp_path_factory):
    server = start_redis()
    old = Gateway(server, tmp_path_factory.mktemp("migration") / "gunicorn.log").redis
    user, odd, both = uid(), "we{ir}d%7B:" + uid(), uid()
    chat_id = old.xadd(f"pushapp:chat:{user}", {"m": json.dumps({"to": user, "n": 1})})
    notif_id = old.xadd(f"pushapp:notif:{user}", {"m": json.dumps({"toWho": [user], "n": 2})})
    old.pexpire(f"pushapp:chat:{user}", 60_000)
    old.hset(f"pushapp:sent:{user}", "chat", chat_id)
    odd_id = old.xadd(f"pushapp:chat:{odd}", {"m": json.dumps({"to": odd, "n": 3})})
    old.hset("pushapp:online", user, json.dumps(["gone:1:1", "sid", "d", 1]))
    # A stream a newer worker wrote already, and the old one of the same user: both kept.
    old.xadd(f"pushapp:chat:{both}", {"m": json.dumps({"to": both, "n": "old"})})
    old.xadd(f"pushapp:{{{both}}}:chat", {"m": json.dumps({"to": both, "n": "new"})})

    gateway = Gateway(server, tmp_path_factory.mktemp("migration") / "gunicorn.log").start()
    try:
        assert "moved 5 keys of an older pushapp into key layout 2" in gateway.log_text()
        assert old.keys("pushapp:chat:*") == old.keys("pushapp:notif:*") == []
        assert not old.exists("pushapp:online", f"pushapp:sent:{user}")
        assert 0 < old.pttl(gateway.user_key(user, "chat")) <= 60_000
        assert old.hget(gateway.user_key(user, "sent"), "chat") == chat_id
        assert [m["n"] for m in gateway.pending("chat", both)] == ["new", "old"]

        client = gateway.client()
        client.login(user)
        assert [(m["n"], m["mid"]) for m in json.loads(client.expect("chat"))] == [
            (1, chat_id.decode())]
        assert json.loads(client.expect("notification"))["mid"] == notif_id.decode()
        wait_for(lambda: not gateway.pending("chat", user) and
                 not gateway.pending("notif", user), what="the acks to remove them")
        other = gateway.client()
        other.login(odd)
        assert [m["mid"] for m in json.loads(other.expect("chat"))] == [odd_id.decode()]
        for each in (client, other):
            each.close()

        gateway.terminate()
        gateway.wait()
        gateway.start()
        assert gateway.log_text().count("into key layout") == 1
    finally:
        gateway.terminate()
        gateway.wait()
