// Many socket.io-client sockets in one node process, each standing for one user's app:
// the client's defaults (long-polling first, then the upgrade to websocket; reconnection
// with backoff), a login on every connect, an ack for everything it is sent. Each client
// connects from its own local address, through an http.Agent that engine.io-client uses
// for long-polling and websocket alike, so that a balancer hashing addresses spreads them.
//
//   node swarm.mjs URL
//
// stdin, one JSON command a line:
//   {"op": "add", "clients": [{"user": "u1", "address": "127.0.0.2"}, ...]}
//       start these clients; their indexes ("c") follow those added before
//   {"op": "chat", "c": 3, "to": "u7", "key": "k1"}
//       client 3 sends a chat {to, key} if it is logged in: a "chat_sent" line with its ack
//       (or the error, after 10 s without one), else a "chat_unsent" line
//   {"op": "summary"}
//       a "summary" line: every client's state
//   {"op": "close"}
//       disconnect every client and exit (so does the end of stdin)
//
// stdout, one JSON line for each thing that happens, with the client's index "c", its
// connection count "n" (1 for the first connection) and the time "t" (ms since the epoch):
//   connect {sid, transport}   connect_error {message}   disconnect {reason}
//   login {ack, error, transport}   chat {messages: [{key, mid}]}   notification {key, mid}
//   chat_sent {key, ack, error}   chat_unsent {key}
import http from "node:http";
import { io } from "socket.io-client";
import { onCommands } from "./commands.mjs";

const [url] = process.argv.slice(2);
if (!url) {
  process.stderr.write("usage: node swarm.mjs URL\n");
  process.exit(2);
}
const ACK_TIMEOUT_MS = 10000;
const agents = new Map();
const clients = [];

function out(client, type, fields = {}) {
  process.stdout.write(JSON.stringify(
    { type, c: client.index, n: client.connects, t: Date.now(), ...fields }) + "\n");
}

function agentFor(address) {
  if (!agents.has(address)) {
    agents.set(address, new http.Agent({ localAddress: address, keepAlive: true }));
  }
  return agents.get(address);
}

function add({ user, address }) {
  const client = { index: clients.length, user, connects: 0, loggedIn: false };
  const socket = io(url, { agent: agentFor(address), forceNew: true });
  client.socket = socket;
  clients.push(client);

  socket.on("connect", () => {
    client.connects += 1;
    client.loggedIn = false;
    out(client, "connect", { sid: socket.id, transport: socket.io.engine.transport.name });
    socket.timeout(ACK_TIMEOUT_MS).emit("login", { myAuraId: user, deviceId: "swarm" },
      (error, ack) => {
        client.loggedIn = !error && ack === 1;
        out(client, "login", {
          ack: ack ?? null, error: error ? error.message : null,
          transport: socket.io.engine?.transport?.name ?? null,
        });
      });
  });
  socket.on("connect_error", (error) => out(client, "connect_error", { message: error.message }));
  socket.on("disconnect", (reason) => {
    client.loggedIn = false;
    out(client, "disconnect", { reason });
  });
  socket.on("chat", (batch, ack) => {
    const messages = JSON.parse(batch);
    out(client, "chat", { messages: messages.map(({ key, mid }) => ({ key, mid })) });
    ack(messages.length);
  });
  socket.on("notification", (payload, ack) => {
    const { key, mid } = JSON.parse(payload);
    out(client, "notification", { key, mid });
    if (ack) {
      ack(1);
    }
  });
}

function chat({ c, to, key }) {
  const client = clients[c];
  if (!client.loggedIn) {
    out(client, "chat_unsent", { key });
    return;
  }
  client.socket.timeout(ACK_TIMEOUT_MS).emit("chat", { to, key }, (error, ack) =>
    out(client, "chat_sent", { key, ack: ack ?? null, error: error ? error.message : null }));
}

function summary() {
  process.stdout.write(JSON.stringify({
    type: "summary",
    t: Date.now(),
    clients: clients.map((client) => ({
      c: client.index, n: client.connects, connected: client.socket.connected,
      loggedIn: client.loggedIn, transport: client.socket.io.engine?.transport?.name ?? null,
    })),
  }) + "\n");
}

onCommands({ add: (command) => command.clients.forEach(add), chat, summary }, () => {
  for (const client of clients) {
    client.socket.disconnect();
  }
  for (const agent of agents.values()) {
    agent.destroy();
  }
});
