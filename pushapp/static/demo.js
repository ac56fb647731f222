// The chat demo: the official socket.io-client against this gateway (docs/protocol.md),
// and the HTTP API with a key typed into the page. What users and the gateway send is put
// into the page with textContent only, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const insecure = $("demo").dataset.insecure === "yes";
  const LOG_LINES = 200;
  let socket = null;
  let me = "";
  let batches = []; // chat batches received and not acked yet: {messages, ack}
  const shown = new Set(); // mids already in the conversation
  let keyRefused = false;

  function span(text, className) {
    const element = document.createElement("span");
    element.textContent = text;
    if (className) element.className = className;
    return element;
  }

  function add(list, ...parts) {
    const item = document.createElement("li");
    item.append(...parts);
    $(list).append(item);
    return item;
  }

  function say(text) {
    add("log", span(`${new Date().toLocaleTimeString()} ${text}`));
    const log = $("log");
    while (log.children.length > LOG_LINES) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  }

  function status(state, text) {
    $("status").className = `state ${state}`;
    $("status").textContent = text;
    const online = state === "online";
    $("send").disabled = !online;
    $("logout").disabled = socket === null;
  }

  // The user a token names (its sub), for display only: the gateway checks the token.
  function subjectOf(token) {
    try {
      const body = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return String(JSON.parse(atob(body)).sub ?? "");
    } catch {
      return "";
    }
  }

  function describe(message) {
    return typeof message.text === "string" ? message.text : JSON.stringify(message);
  }

  function connect() {
    if (typeof io !== "function") {
      say("socket.io-client is not loaded: see the message at the top");
      return;
    }
    disconnect();
    const device = $("device").value.trim();
    let login;
    if (insecure) {
      me = $("user").value.trim();
      login = { myAuraId: me, deviceId: device };
    } else {
      const token = $("token").value.trim();
      me = subjectOf(token);
      login = { token, deviceId: device };
    }
    if (!$("notify-to").value) $("notify-to").value = me;
    socket = io();
    status("connecting", "connecting…");
    socket.on("connect", () => {
      say(`connected over ${socket.io.engine.transport.name}, sid ${socket.id}; logging in as ${me || "the token's user"}`);
      // The gateway forgets a socket's login when it drops: log in on every connect.
      socket.emit("login", login, (answer) => {
        if (answer === 1) {
          status("online", `logged in as ${me || "the token's user"}`);
          say("login acked: 1");
        } else {
          say(`login refused: ${answer && answer.error ? answer.error : JSON.stringify(answer)}`);
          disconnect();
        }
      });
    });
    socket.on("connect_error", (error) => say(`connect error: ${error.message}`));
    socket.on("disconnect", (reason) => {
      say(`disconnected: ${reason}`);
      if (socket) status("offline", `disconnected (${reason})`);
    });
    socket.io.on("reconnect_attempt", (attempt) => {
      status("connecting", `reconnecting (attempt ${attempt})…`);
      say(`reconnecting, attempt ${attempt}`);
    });
    socket.io.on("reconnect", (attempts) => say(`reconnected after ${attempts} attempts`));
    socket.on("logout", () => say("logout: this user logged in on another device"));
    socket.on("error", (error) => say(`error from the gateway: ${JSON.stringify(error)}`));
    socket.on("chat", received);
    socket.on("notification", notified);
  }

  function disconnect() {
    if (socket) {
      const old = socket;
      socket = null;
      old.disconnect();
    }
    batches = [];
    showPending();
    status("offline", "offline");
  }

  // A chat event is a JSON string of a list of messages, each with its mid; the ack says
  // how many of the batch were taken, and the gateway then deletes exactly those.
  function received(batch, ack) {
    const messages = JSON.parse(batch);
    say(`chat batch of ${messages.length}: ${messages.map((m) => m.mid).join(", ")}`);
    batches.push({ messages, ack });
    if ($("auto-ack").checked) ackAll();
    else showPending();
  }

  function ackAll() {
    for (const { messages, ack } of batches) {
      if (ack) ack(messages.length);
      say(`acked ${messages.length}`);
      for (const message of messages) {
        if (shown.has(message.mid)) continue;
        shown.add(message.mid);
        add("conversation", span(`← ${message.from ?? "?"}: ${describe(message)}`),
            span(message.mid, "mid"));
      }
    }
    batches = [];
    showPending();
  }

  function showPending() {
    const seen = new Set();
    $("pending").replaceChildren();
    for (const { messages } of batches) {
      for (const message of messages) {
        if (seen.has(message.mid)) continue; // sent again after ACK_TIMEOUT
        seen.add(message.mid);
        add("pending", span(`${message.from ?? "?"}: ${describe(message)}`), span(message.mid, "mid"));
      }
    }
    $("ack").disabled = batches.length === 0;
  }

  function notified(payload, ack) {
    const notification = JSON.parse(payload);
    const title = notification.title ?? JSON.stringify(notification);
    const item = add("notifications", span(`${title}`));
    if (notification.mid) item.append(span(notification.mid, "mid"));
    if (ack) {
      ack(1);
      item.append(span("acked", "mid"));
    }
    say(`notification${notification.mid ? ` ${notification.mid}` : ""}${ack ? ", acked" : ""}`);
  }

  function send(event) {
    event.preventDefault();
    const to = $("to").value.trim();
    const text = $("text").value;
    const item = add("conversation", span(`→ ${to}: ${text}`));
    socket.emit("chat", { to, text }, (answer) => {
      item.append(span(`ack ${JSON.stringify(answer)}`, "mid"));
    });
    $("text").value = "";
  }

  async function api(method, path, body) {
    const answer = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${$("api-key").value.trim()}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    return { status: answer.status, body: await answer.json() };
  }

  // Who is online, every 2 seconds while a key is typed; a refused key stops it until the
  // key changes (wrong keys count against this address at the gateway).
  async function refreshOnline() {
    if (!$("api-key").value.trim() || keyRefused) return;
    let answer;
    try {
      answer = await api("GET", "/api/v1/users/online?limit=50");
    } catch (error) {
      return;
    }
    const list = $("online");
    list.replaceChildren();
    if (answer.status !== 200) {
      keyRefused = answer.status === 401 || answer.status === 429;
      add("online", span(answer.body.error ?? `HTTP ${answer.status}`)).className = "hint";
      return;
    }
    for (const user of answer.body.users) {
      const item = add("online", span(user.user), span(` on ${user.device || "no device"}`, "mid"));
      item.dataset.user = user.user;
      item.title = "chat with this user";
      item.addEventListener("click", () => { $("to").value = user.user; });
    }
    if (answer.body.users.length === 0) add("online", span("nobody")).className = "hint";
    if (answer.body.more) add("online", span("and more")).className = "hint";
  }

  async function notify(event) {
    event.preventDefault();
    const toWho = $("notify-to").value.split(",").map((user) => user.trim()).filter(Boolean);
    const answer = await api("POST", "/api/v1/notifications",
      { toWho, needStore: $("notify-store").checked, title: $("notify-title").value });
    $("notify-answer").textContent = `${answer.status} ${JSON.stringify(answer.body)}`;
  }

  $("login-form").addEventListener("submit", (event) => { event.preventDefault(); connect(); });
  $("logout").addEventListener("click", () => { disconnect(); say("logged out"); });
  $("chat-form").addEventListener("submit", send);
  $("ack").addEventListener("click", ackAll);
  $("notify-form").addEventListener("submit", notify);
  $("api-key").addEventListener("input", () => { keyRefused = false; });
  setInterval(refreshOnline, 2000);
  $("api-key").addEventListener("change", refreshOnline);
  status("offline", typeof io === "function" ? "offline" : "no JavaScript client");
})();
