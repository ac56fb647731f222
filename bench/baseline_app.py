"""THE BASELINE, not pushapp: a literal Flask-SocketIO port of the seed's Node.js server.

It is what a straightforward port looks like, kept only so that the benchmarks can state
each figure of pushapp as a ratio to it, measured in the same run on the same machine.
It has no optimisation: Flask-SocketIO's defaults (a greenlet per event, managed
sessions), the stdlib ``json``, one ``emit`` per recipient, a log line per connection,
and the seed's storage, read-modify-write of JSON lists in Redis hashes (``HGET`` then
``HSET``), with the seed's bugs (lost and duplicated messages under concurrency, the 5 s
resend timer). Never deploy it.

Where it departs from the seed, only so that it can be measured:
- ``login`` acks ``1`` (the seed's had no ack), so that a client knows when it is done;
- the user id is kept per socket (the seed's was one global variable);
- Redis connections come from a pool that waits instead of failing at 100, a setting
  without which one in ten concurrent logins fails;
- ``CHAT_FILTER=direct`` calls ``process_msg`` where the seed had it commented out;
- the ping interval and timeout are pushapp's (``PING_INTERVAL``, ``PING_TIMEOUT``), so
  that idle costs compare.

Run: ``gunicorn -c bench/baseline_gunicorn.conf.py bench.baseline_app:app``.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402  (everything below follows the monkey patching)
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402

PUSH_TO_IOS_DELAY = 120
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
log = logging.getLogger("baseline")

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent", cors_allowed_origins="*",
                    ping_interval=float(os.environ.get("PING_INTERVAL", "60")),
                    ping_timeout=float(os.environ.get("PING_TIMEOUT", "30")))
store = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
    os.environ["REDIS_URL"], max_connections=200))
direct = os.environ.get("CHAT_FILTER") == "direct"

sockets: dict[str, str] = {}  # userid -> sid, as the seed's global map
state: dict[str, dict] = {}  # sid -> the seed's per-socket fields


@app.route("/monitor")
def monitor() -> str:
    return "OK"


@socketio.on("connect")
def on_connect(auth: Any = None) -> None:
    log.info("New connection from %s", request.remote_addr)
    state[request.sid] = {"userid": None, "deviceid": None, "relogin": False,
                          "isSendingChatMessage": False, "isSendStoreMsg": False}


@socketio.on("login")
def on_login(userinfo: dict) -> int:
    sid = request.sid
    userid, deviceid = userinfo["myAuraId"], userinfo.get("deviceId")
    log.info("Login from %s %s %s", request.remote_addr, userid, deviceid)
    old_sid = sockets.get(userid)
    old = state.get(old_sid)
    if old and old["deviceid"] and deviceid and old["deviceid"] != deviceid:
        old["relogin"] = True
        socketio.emit("logout", to=old_sid)
    if old_sid and old_sid != sid:
        socketio.server.disconnect(old_sid)
    me = state[sid]
    me.update(relogin=False, userid=userid, deviceid=deviceid)
    send_store_msg(sid, userid)
    sockets[userid] = sid
    store.publish("login_message_channel", json.dumps(userinfo))
    return 1


@socketio.on("chat")
def on_chat(msg: dict) -> int:
    if direct:
        process_msg(msg)
    else:
        store.publish("chat_filter_channel", json.dumps(msg))
    state[request.sid]["userid"] = msg["from"]
    sockets[msg["from"]] = request.sid
    return 1


@socketio.on("hb")
def on_hb(*args: Any) -> int:
    return 1


@socketio.on("geo")
def on_geo(geo: dict) -> int | None:
    if not geo.get("myAuraId"):
        return None
    store.publish("geo", json.dumps({"geo": geo, "time": int(time.time() * 1000)}))
    state[request.sid]["userid"] = geo["myAuraId"]
    sockets[geo["myAuraId"]] = request.sid
    send_store_msg(request.sid, geo["myAuraId"])
    return 1


@socketio.on("disconnect")
def on_disconnect(reason: Any = None) -> None:
    log.info("Disconnect from %s", request.remote_addr)
    me = state.pop(request.sid, None)
    if me and not me["relogin"]:
        sockets.pop(me["userid"], None)


def send_msg_delay(sid: str) -> None:
    me = state.get(sid)
    value = me and store.hget("chat_history", me["userid"])
    if value and json.loads(value):
        me["isSendingChatMessage"] = False
        send_msg(sid, value.decode())


def send_msg(sid: str, msg: str) -> None:
    """The whole stored list as one ``chat``; while one is unacked, retry in 5 s."""
    me = state.get(sid)
    if me is None:
        return
    if me["isSendingChatMessage"]:
        gevent.spawn_later(5, send_msg_delay, sid)
        return
    me["isSendingChatMessage"] = True
    push = gevent.spawn_later(PUSH_TO_IOS_DELAY, send_to_ios, me["userid"])

    def ack(size: int = 0, *args: Any) -> None:
        push.kill(block=False)
        value = store.hget("chat_history", me["userid"])
        if value:
            messages = json.loads(value)
            if len(messages) == size:
                store.hdel("chat_history", me["userid"])
            elif size < len(messages):
                store.hset("chat_history", me["userid"], json.dumps(messages[size:]))
        me["isSendingChatMessage"] = False

    socketio.emit("chat", msg, to=sid, callback=ack)


def send_to_ios(to_who: str) -> None:
    store.publish("chat_message_channel", json.dumps({"toWho": to_who}))


def send_notification(sid: str, userid: str, notif: str) -> None:
    socketio.emit("notification", notif, to=sid,
                  callback=lambda *args: store.hdel("nodejs_notification", userid))


def send_store_msg(sid: str, userid: str) -> None:
    me = state[sid]
    if me["isSendStoreMsg"]:
        return
    me["isSendingChatMessage"] = False
    msg = store.hget("chat_history", userid)
    if msg:
        send_msg(sid, msg.decode())
        store.hdel("chat_history", userid)
    stored = store.hget("nodejs_notification", userid)
    if stored:
        for notif in json.loads(stored):
            send_notification(sid, userid, notif)
    me["isSendStoreMsg"] = True


def process_msg(msg: dict) -> None:
    value = store.hget("chat_history", msg["to"])
    messages = json.loads(value) if value else []
    messages.append(msg)
    msglist = json.dumps(messages)
    store.hset("chat_history", msg["to"], msglist)
    if msg["to"] in sockets:
        send_msg(sockets[msg["to"]], msglist)
    else:
        send_to_ios(msg["to"])
    store.publish("chat_message_history_channel", json.dumps(msg))


def on_notification(msg: str) -> None:
    message = json.loads(msg)
    for key in message["toWho"]:
        if not message.get("needStore"):
            if key in sockets:
                socketio.emit("notification", msg, to=sockets[key])
            continue
        value = store.hget("nodejs_notification", key)
        stored = json.loads(value) if value else []
        stored.append(msg)
        store.hset("nodejs_notification", key, json.dumps(stored))
        if key in sockets:
            send_notification(sockets[key], key, msg)


def listen(channel: str) -> None:
    """One subscriber per channel, as the seed had; a bad message ends it, as in the seed."""
    pubsub = store.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    for message in pubsub.listen():
        data = message["data"].decode()
        if channel == "snschat":
            process_msg(json.loads(data))
        else:
            on_notification(data)


gevent.spawn(listen, "snschat")
gevent.spawn(listen, "notification")
