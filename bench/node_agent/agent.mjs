// A benchmark load agent: thousands of official socket.io-client v4 clients in one node
// process, each over its own websocket, so that a scenario measures a gateway against the
// client library web and hybrid apps ship (bench/loadgen.py's agents speak the protocol
// themselves, for scenarios whose load that library could not produce on this machine).
//
//   node agent.mjs URL
//
// The coordinator (bench/loadgen.py: LoadGen with agent="node") writes one command a line,
// a JSON array [name, args], and reads one JSON line back per command, in order:
//   ["connect", {users, peers, tokens, source, window, timeout}] -> {ok, errors}
//       connect and log in `users` from the source address `source`, `window` at a time;
//       each user chats with its peer; a token goes in the login when the gateway wants one
//   ["pingpong", {starters, duration}] -> {sent}
//       for `duration` seconds every pair chats ping-pong: each starter sends a chat, and a
//       client that receives a new chat from its peer acks the batch with its length (as
//       the seed's clients do) and answers with its next chat; one chat in flight per pair
//   ["snapshot", {reset}] -> {count, last_rx, connected, errors, lat (with reset)}
//   ["drop", {}] -> {dropped}        every client disconnects
//   ["stop", {}]                     disconnect and exit (so does the end of stdin)
// Times are epoch seconds with sub-millisecond precision: a chat carries its send time
// `ts`, and its receiver, in whichever agent process, records now - ts.
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";

const url = process.argv[2];
if (!url) {
  process.stderr.write("usage: node agent.mjs URL\n");
  process.exit(2);
}

const clients = new Map(); // user -> Client
let count = {};
let lat = {};
let lastRx = {};
let errors = [];
let loopUntil = 0;

function now() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

function bump(name, by = 1) {
  count[name] = (count[name] ?? 0) + by;
}

function sample(name, seconds) {
  (lat[name] ??= []).push(seconds);
}

class Client {
  constructor(user, peer, token) {
    this.user = user;
    this.peer = peer;
    this.token = token;
    this.seq = 0; // the n of the last chat sent
    this.seen = 0; // the highest n received from the peer
    this.dropping = false;
    this.socket = null;
  }

  // Connect from `source` and log in; resolves once the login is acked.
  open(source, timeoutMs) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("timeout")), timeoutMs);
      const fail = (error) => {
        clearTimeout(timer);
        reject(error);
      };
      const socket = io(url, {
        transports: ["websocket"],
        forceNew: true,
        reconnection: false,
        timeout: timeoutMs,
        localAddress: source,
      });
      this.socket = socket;
      socket.on("connect_error", fail);
      socket.on("disconnect", () => {
        if (!this.dropping) {
          bump("closed_by_server");
        }
        if (clients.get(this.user) === this) {
          clients.delete(this.user);
        }
      });
      socket.on("chat", (batch, ack) => this.onChat(batch, ack));
      socket.onAny((event, ...args) => {
        if (event !== "chat") {
          bump("event_" + event);
        }
        if (event === "error" && errors.length < 5) {
          errors.push(JSON.stringify(args).slice(0, 200));
        }
      });
      socket.on("connect", () => this.login(() => {
        clearTimeout(timer);
        resolve();
      }, fail));
    });
  }

  login(resolve, reject) {
    const userinfo = { myAuraId: this.user, deviceId: "bench" };
    if (this.token) {
      userinfo.token = this.token;
    }
    const sent = now();
    this.socket.emit("login", userinfo, (answer) => {
      if (answer && answer.error) {
        bump("login_error");
        if (answer.error.includes("try again")) { // so it does, in a second
          setTimeout(() => this.login(resolve, reject), 1000);
        } else {
          reject(new Error(answer.error));
        }
        return;
      }
      bump("login");
      sample("login", now() - sent);
      resolve();
    });
  }

  chat() {
    this.seq += 1;
    const sent = now();
    bump("chat_sent");
    this.socket.emit("chat", { from: this.user, to: this.peer, ts: sent, n: this.seq }, (answer) => {
      bump(answer && answer.error ? "chat_ack_error" : "chat_ack");
      sample("chat_ack", now() - sent);
    });
  }

  // A batch is the seed's JSON string of the pending list (pushapp sends the same).
  onChat(batch, ack) {
    const at = now();
    const messages = typeof batch === "string" ? JSON.parse(batch) : batch;
    let fresh = false;
    for (const message of messages) {
      if (message.n > this.seen) {
        this.seen = message.n;
        sample("chat", at - message.ts);
        bump("chat");
        fresh = true;
      } else {
        bump("chat_dup");
      }
    }
    bump("chat_batches");
    lastRx.chat = at;
    if (typeof ack === "function") {
      ack(messages.length);
    }
    if (fresh && at < loopUntil) {
      this.chat();
    }
  }

  close() {
    this.dropping = true;
    this.socket.disconnect();
  }
}

const commands = {
  async connect({ users, peers, tokens, source, window, timeout }) {
    const failed = {};
    let next = 0;
    const worker = async () => {
      while (next < users.length) {
        const i = next++;
        const client = new Client(users[i], peers[i], tokens[i]);
        clients.set(client.user, client);
        try {
          await client.open(source, timeout * 1000);
        } catch (error) {
          const key = String(error.message ?? error).slice(0, 60);
          failed[key] = (failed[key] ?? 0) + 1;
          clients.delete(client.user);
          client.close();
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, users.length) }, worker));
    const errorCount = Object.values(failed).reduce((a, b) => a + b, 0);
    return { ok: users.length - errorCount, errors: failed };
  },

  async pingpong({ starters, duration }) {
    loopUntil = now() + duration;
    const before = count.chat_sent ?? 0;
    for (const user of starters) {
      clients.get(user)?.chat();
    }
    await new Promise((resolve) => setTimeout(resolve, duration * 1000));
    return { sent: (count.chat_sent ?? 0) - before };
  },

  async snapshot({ reset }) {
    const result = { count, last_rx: lastRx, connected: clients.size, errors };
    if (reset) {
      result.lat = lat;
      count = {};
      lat = {};
      lastRx = {};
      errors = [];
    } else {
      result.count = { ...count };
      result.last_rx = { ...lastRx };
    }
    return result;
  },

  async drop() {
    const all = [...clients.values()];
    clients.clear();
    for (const client of all) {
      client.close();
    }
    return { dropped: all.length };
  },
};

function reply(result) {
  process.stdout.write(JSON.stringify(result) + "\n");
}

// Commands run one after the other, as the coordinator waits for each answer.
let queue = Promise.resolve();
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const [name, args] = JSON.parse(line);
  if (name === "stop") {
    lines.close();
    return;
  }
  queue = queue.then(() => commands[name](args)).then(reply,
    (error) => reply({ exception: `${error.name}: ${error.message}` }));
});
lines.on("close", () => {
  queue.then(() => commands.drop()).then(() => setTimeout(() => process.exit(0), 200));
});
