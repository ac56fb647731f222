// THE NODE BASELINE, not pushapp: the seed's Node.js chat and push server (socket.io 0.9,
// node_redis), ported to socket.io v4 and node-redis v4 so that the benchmarks can state
// pushapp's figures as ratios to the server it replaces. Never deploy it.
//
// The code follows the seed line by line, with its behaviour and its bugs (CONTRACT.md,
// "The seed's bugs"): JSON lists read and written back with HGET/HSET, `userid` and
// friends global to every socket, the count-based trim on a `chat` ack, the 5 s resend
// timer, the `key` of a stored notification taken after the loop, a bad channel message
// killing the process. Only what the new versions require changed:
// - `io.set(...)` became the Server's options: the seed's heartbeat (a ping every 4 min,
//   5 min without an answer drops the client) is pingInterval 240 s + pingTimeout 60 s;
//   `xhr-polling` is `polling`; `browser client false` is `serveClient: false`; any
//   origin, as 0.9 allowed;
// - `socket.handshake.address` is a string now, the port comes from the request's socket;
// - node_redis callbacks became node-redis v4 promises (`done` below hands each to the
//   seed's callback unchanged), clients `connect()` first, and a subscriber takes its
//   listener in `subscribe` instead of a "message" event.
// Additions, only so that it can be measured (the Flask baseline has the same ones):
// - `login` acks 1 when the client asks for an ack (seed clients never do), so that a
//   load client knows when a login is done;
// - BIND, REDIS_URL and the CHANNEL_* names (pushapp's settings) come from the environment,
//   and CHAT_FILTER=direct calls `process_msg` where the seed had it commented out.
import { createServer } from "node:http";
import { createClient } from "redis";
import { Server } from "socket.io";

const env = process.env;
const [host, port] = (env.BIND ?? "0.0.0.0:80").split(/:(?=\d+$)/);
const direct = env.CHAT_FILTER === "direct";
const CHANNEL = {
  snschat: env.CHANNEL_SNSCHAT ?? "snschat",
  notification: env.CHANNEL_NOTIFICATION ?? "notification",
  login: env.CHANNEL_LOGIN ?? "login_message_channel",
  chatFilter: env.CHANNEL_CHAT_FILTER ?? "chat_filter_channel",
  chatHistory: env.CHANNEL_CHAT_HISTORY ?? "chat_message_history_channel",
  chatPush: env.CHANNEL_CHAT_PUSH ?? "chat_message_channel",
  geo: env.CHANNEL_GEO ?? "geo",
};

// redis://[:password@]host:port[/db], or unix://[:password@]/path/to/redis.sock
function redisOptions(url) {
  const parsed = new URL(url);
  if (parsed.protocol !== "unix:") {
    return { url };
  }
  const password = parsed.password ? decodeURIComponent(parsed.password) : undefined;
  return { socket: { path: decodeURIComponent(parsed.pathname) }, password };
}

// A node-redis v4 promise to the seed's (err, value) callback.
function done(promise, callback) {
  promise.then((value) => callback(null, value), (err) => callback(err));
}

// The seed's implicit globals: one for the whole process, shared by every socket.
let userid, old_socket, list, msg, index;

var app = createServer(handler),
  io = new Server(app, {
    transports: ["websocket", "polling"],
    pingTimeout: 60 * 1000,
    pingInterval: 4 * 60 * 1000,
    serveClient: false,
    cors: { origin: "*" },
  });

function handler(req, res) {
  if (req.url == "/monitor") {
    res.writeHead(200);
    res.end("OK");
  } else {
    res.writeHead(404);
    res.end();
  }
}

const redisUrl = redisOptions(env.REDIS_URL ?? "redis://127.0.0.1:6379");
var pub = createClient(redisUrl);
var store = createClient(redisUrl);
var snschat = createClient(redisUrl);
var notification = createClient(redisUrl);
var PUSH_TO_IOS_DELAY_TIME = 120000;
var sockets = {};

pub.on("error", function (err) {
  console.log("Error " + err);
});

store.on("error", function (err) {
  console.log("Error " + err);
});

snschat.on("error", function (err) {
  console.log("Error " + err);
});

function send_msg_delay(socket) {
  done(store.hGet("chat_history", socket.userid), function (e, v) {
    if (v) {
      list = JSON.parse(v);
      if (list.length > 0) {
        var msg = JSON.stringify(list);
        socket.isSendingChatMessage = false;
        send_msg(socket, msg);
      }
    }
  });
}

function send_msg(socket, msg) {
  //delay for 5 sec
  if (socket.isSendingChatMessage) {
    setTimeout(function () {
      send_msg_delay(socket);
    }, 5000);
    return;
  }
  socket.isSendingChatMessage = true;

  //start send
  var callSendToIOS = sendToIOSDealy(socket.userid, PUSH_TO_IOS_DELAY_TIME);
  socket.emit("chat", msg, function ack(size) {
    clearTimeout(callSendToIOS);
    done(store.hGet("chat_history", socket.userid), function (e, v) {
      if (v) {
        list = JSON.parse(v);
        if (list.length == size) {
          done(store.hDel("chat_history", socket.userid), function (e, r) {});
        } else if (size < list.length) {
          list = list.splice(size);
          var msglist = JSON.stringify(list);
          done(store.hSet("chat_history", socket.userid, msglist), function (e, r) {});
        }
      }
      socket.isSendingChatMessage = false;
    });
  });
}

function sendToIOSDealy(toWho, time) {
  return setTimeout(function () {
    sendToIOS(toWho);
  }, time);
}

function sendToIOS(toWho) {
  var obj = { toWho: toWho };
  var msg = JSON.stringify(obj);
  console.log("delay send to ios channel:" + msg);
  pub.publish(CHANNEL.chatPush, msg);
}

function send_notification(socket, notif) {
  socket.emit("notification", notif, function ack() {
    store.hDel("nodejs_notification", socket.userid);
  });
}

function send_store_msg(socket, userid) {
  if (socket.isSendStoreMsg) {
    return;
  }

  socket.isSendingChatMessage = false;

  done(store.hGet("chat_history", userid), function (e, msg) {
    if (msg) {
      send_msg(socket, msg);
      done(store.hDel("chat_history", socket.userid), function (e, r) {});
    }
  });

  done(store.hGet("nodejs_notification", userid), function (e, msg) {
    if (msg) {
      var msglist = JSON.parse(msg);
      for (var i = 0; i < msglist.length; i++) {
        send_notification(socket, msglist[i]);
      }
    }
  });
  socket.isSendStoreMsg = true;
}

function pushToChatHistoryChannel(msg) {
  var msgStr = JSON.stringify(msg);
  pub.publish(CHANNEL.chatHistory, msgStr);
}

function process_msg(msg) {
  var list = [];
  done(store.hGet("chat_history", msg.to), function (e, v) {
    if (v) {
      list = JSON.parse(v);
    }
    list.push(msg);
    var msglist = JSON.stringify(list);
    done(store.hSet("chat_history", msg.to, msglist), function (e, r) {});
    if (sockets[msg.to]) {
      send_msg(sockets[msg.to], msglist);
    } else {
      sendToIOS(msg.to);
    }
    pushToChatHistoryChannel(msg);
  });
}

// check redis notifcation channel
function on_notification(msg) {
  var msgobj = JSON.parse(msg);
  var keys = msgobj.toWho;
  var needStore = msgobj.needStore;
  for (index in keys) {
    var key = keys[index];
    if (!needStore) {
      if (sockets[key]) {
        sockets[key].emit("notification", msg);
      }
    } else {
      var list = [];
      done(store.hGet("nodejs_notification", key), function (e, v) {
        if (v) {
          list = JSON.parse(v);
        }
        list.push(msg);
        var msglist = JSON.stringify(list);
        done(store.hSet("nodejs_notification", key, msglist), function (e, r) {});
      });

      if (sockets[key]) {
        send_notification(sockets[key], msg);
      }
    }
  }
}

// check redis snschat channel
function on_snschat(data) {
  msg = JSON.parse(data);
  process_msg(msg);
}

io.sockets.on("connection", function (socket) {
  var address = socket.handshake.address;
  var remotePort = socket.request.socket.remotePort;
  console.log(Date() + " New connection from " + address + ":" + remotePort);
  socket.on("login", function (userinfo, ack) {
    userid = userinfo.myAuraId;
    var deviceid = userinfo.deviceId;
    console.log(Date() + " Login from " + address + ":" + remotePort + " " + userid + " " + deviceid);
    old_socket = sockets[userid];
    if (old_socket && old_socket.deviceid && deviceid && old_socket.deviceid != deviceid) {
      old_socket.relogin = 1;
      old_socket.emit("logout");
      console.log("logout " + old_socket.userid + " " + old_socket.deviceid);
    }

    if (old_socket && old_socket != socket) {
      old_socket.disconnect();
    }

    socket.relogin = 0;
    socket.userid = userid;
    socket.deviceid = deviceid;

    send_store_msg(socket, userid);

    sockets[userid] = socket;
    pub.publish(CHANNEL.login, JSON.stringify(userinfo));
    if (typeof ack === "function") {
      ack(1);
    }
  });

  socket.on("geo", function (geo, ack) {
    if (geo.myAuraId) {
      var now = new Date();
      pub.publish(CHANNEL.geo, JSON.stringify({ geo: geo, time: now.getTime() }));
      socket.userid = geo.myAuraId;
      sockets[socket.userid] = socket;

      if (ack) {
        ack(1);
        send_store_msg(socket, userid);
      }
    }
  });

  socket.on("chat", function (msg, ack) {
    if (direct) {
      process_msg(msg);
    } else {
      pub.publish(CHANNEL.chatFilter, JSON.stringify(msg));
    }
    socket.userid = msg.from;
    sockets[socket.userid] = socket;
    if (ack) {
      ack(1);
    }
  });

  socket.on("hb", function (msg, ack) {
    if (ack) {
      ack(1);
    }
  });

  socket.on("disconnect", function () {
    console.log(Date() + " Disconnect from " + address + ":" + remotePort);
    if (!socket.relogin) {
      delete sockets[socket.userid];
    }
  });
});

// node-redis v4 connects explicitly; the HTTP server listens once the subscriptions stand,
// so that /monitor answering means ready.
await Promise.all([pub, store, snschat, notification].map((client) => client.connect()));
await snschat.subscribe(CHANNEL.snschat, on_snschat);
await notification.subscribe(CHANNEL.notification, on_notification);
app.listen(Number(port), host);
