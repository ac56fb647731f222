// A line-oriented driver of the official socket.io-client v4, so that Python tests can
// check the gateway against the JavaScript client that web and hybrid apps ship.
//
//   node client.mjs URL [websocket|polling]
//
// stdin, one JSON command a line:
//   {"op": "emit", "event": "chat", "args": [...], "ack": true, "id": 7}
//       send an event; with "ack", its answer comes back as an "ack" line carrying "id"
//   {"op": "chat_ack", "value": 2}
//       ack every later "chat" batch with 2; null goes back to the default, the number of
//       messages in the batch ("notification" is always acked with 1)
//   {"op": "close"}
//       disconnect and exit (so does the end of stdin)
//
// stdout, one JSON line for each thing that happens:
//   {"type": "connect", "sid": ..., "transport": ...}   {"type": "connect_error", "message": ...}
//   {"type": "event", "event": ..., "args": [...], "acked": [...] or null}
//   {"type": "ack", "id": ..., "event": ..., "args": [...]}   {"type": "disconnect", "reason": ...}
import { io } from "socket.io-client";
import { onCommands } from "./commands.mjs";

const [url, transport = "websocket"] = process.argv.slice(2);
if (!url || !["websocket", "polling"].includes(transport)) {
  process.stderr.write("usage: node client.mjs URL [websocket|polling]\n");
  process.exit(2);
}

const socket = io(url, { transports: [transport], upgrade: false, reconnection: false });
let chatAck = null;

function out(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

function answerFor(event, args) {
  if (event === "chat") {
    return [chatAck ?? JSON.parse(args[0]).length];
  }
  if (event === "notification") {
    return [1];
  }
  return [];
}

socket.on("connect", () => {
  out({ type: "connect", sid: socket.id, transport: socket.io.engine.transport.name });
});
socket.on("connect_error", (error) => out({ type: "connect_error", message: error.message }));
socket.on("disconnect", (reason) => out({ type: "disconnect", reason }));

// The server's events, also "error", reach onAny; an ack function, when the server asked
// for one, is the last argument.
socket.onAny((event, ...args) => {
  const ack = typeof args.at(-1) === "function" ? args.pop() : null;
  const acked = ack ? answerFor(event, args) : null;
  out({ type: "event", event, args, acked });
  if (ack) {
    ack(...acked);
  }
});

onCommands({
  emit(command) {
    const args = command.args ?? [];
    if (command.ack) {
      socket.emit(command.event, ...args, (...answer) =>
        out({ type: "ack", id: command.id, event: command.event, args: answer }));
    } else {
      socket.emit(command.event, ...args);
    }
  },
  chat_ack(command) {
    chatAck = command.value ?? null;
  },
}, () => socket.disconnect());
