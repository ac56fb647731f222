// The operator dashboard: /api/v1/stats every second (the numbers of /metrics, summed and
// per worker), and the HTTP API's user routes. The session cookie is the key; the header
// tells the API that this page sent the request. Values are shown with textContent only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SESSION_HEADER = $("admin").dataset.sessionHeader;
  const EVERY_MS = 1000;
  const HISTORY_MS = 5 * 60 * 1000;
  const SVG = "http://www.w3.org/2000/svg";
  const history = []; // {t, conn, msgs}
  let last = null;
  let looked = null; // {user, total}

  async function call(method, path) {
    const answer = await fetch(path, {
      method, headers: { [SESSION_HEADER]: "1" }, credentials: "same-origin", cache: "no-store",
    });
    if (answer.status === 401) {
      location.reload(); // the session ended: the page shows the key form again
      throw new Error("the session ended");
    }
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error ?? `HTTP ${answer.status}`);
    return body;
  }

  const total = (value) => (typeof value === "number" ? value
    : Object.values(value ?? {}).reduce((sum, item) => sum + item, 0));
  const of = (value, label) => (value && value[label]) || 0;
  const fixed = (number) => (number >= 100 ? number.toFixed(0) : number.toFixed(1));

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.append(td);
  }

  function rates(now, before) {
    const seconds = (now.time_ms - before.time_ms) / 1000;
    // Counters only grow; a restarted gateway starts them again, so never below zero.
    return (pick) => Math.max(0, (pick(now.totals) - pick(before.totals)) / seconds);
  }

  function show(stats) {
    const t = stats.totals;
    $("updated").textContent = `updated ${new Date(stats.time_ms).toLocaleTimeString()} by ${stats.node}`;
    $("connections").textContent = String(t.connections ?? 0);
    $("backlog").textContent = t.stored ? `${of(t.stored, "chat")} · ${of(t.stored, "notification")}` : "unknown";
    $("redis").textContent = stats.redis.ok ? `ok · ${stats.redis.latency_ms.toFixed(1)} ms` : "down";
    $("redis").title = stats.redis.error ?? "";
    $("redis").className = stats.redis.ok ? "value" : "value problem";
    $("lease").textContent = stats.lease ?? "nobody holds it";
    const local = stats.workers.filter((worker) => worker.metrics);
    $("listeners").textContent = `${t.listener ?? 0} of ${local.length}`;
    let msgs = 0;
    if (last && stats.time_ms > last.time_ms) {
      const per = rates(stats, last);
      $("logins").textContent = fixed(per((x) => x.logins ?? 0) * 60);
      $("in").textContent = `${fixed(per((x) => of(x.messages_in, "chat")))} · ${fixed(per((x) => of(x.messages_in, "notification")))}`;
      $("out").textContent = `${fixed(per((x) => of(x.messages_out, "chat")))} · ${fixed(per((x) => of(x.messages_out, "notification")))}`;
      $("acks").textContent = fixed(per((x) => total(x.acks)));
      $("errors").textContent = fixed(per((x) => total(x.errors)));
      msgs = per((x) => total(x.messages_in) + total(x.messages_out));
    }
    last = stats;
    history.push({ t: stats.time_ms, conn: t.connections ?? 0, msgs });
    while (history.length && history[0].t < stats.time_ms - HISTORY_MS) history.shift();
    chart();
    workers(stats.workers);
  }

  function workers(rows) {
    const body = $("workers").tBodies[0];
    body.replaceChildren();
    for (const worker of rows) {
      const row = body.insertRow();
      const m = worker.metrics;
      cell(row, worker.node ?? `pid ${worker.pid} (not in Redis)`);
      cell(row, worker.heartbeat_ms == null ? "?" : worker.heartbeat_ms >= 0 ? `${fixed(worker.heartbeat_ms / 1000)} s left` : "stale");
      cell(row, worker.leader ? "holds it" : "");
      cell(row, m ? (m.listener ? "subscribed" : "not subscribed") : "elsewhere");
      for (const pick of [(x) => x.connections ?? 0, (x) => x.logins ?? 0, (x) => total(x.messages_in),
        (x) => total(x.messages_out), (x) => total(x.acks)]) {
        cell(row, m ? String(pick(m)) : "");
      }
    }
  }

  // Two lines, each scaled to its own maximum, over the last five minutes (or since the
  // page opened); drawn in the pixels the chart has now, so its labels are not stretched.
  function chart() {
    const svg = $("chart");
    const width = svg.clientWidth || 600;
    const height = svg.clientHeight || 120;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const now = history[history.length - 1].t;
    const span = Math.max(1, now - history[0].t);
    for (const [key, anchor, x] of [["conn", "start", 4], ["msgs", "end", width - 4]]) {
      const max = Math.max(1, ...history.map((point) => point[key]));
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("class", key);
      line.setAttribute("points", history.map((point) =>
        `${(width - ((now - point.t) / span) * width).toFixed(1)},${(height - 4 - (point[key] / max) * (height - 24)).toFixed(1)}`).join(" "));
      svg.append(line);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", x);
      label.setAttribute("y", 12);
      label.setAttribute("text-anchor", anchor);
      label.textContent = `max ${fixed(max)}${key === "msgs" ? " / s" : ""}`;
      svg.append(label);
    }
  }

  async function tick() {
    try {
      show(await call("GET", "/api/v1/stats"));
      $("stats-error").hidden = true;
    } catch (error) {
      $("stats-error").textContent = `stats not read: ${error.message}`;
      $("stats-error").hidden = false;
    }
    setTimeout(tick, EVERY_MS);
  }

  function age(ms) {
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < 3600000) return `${Math.floor(ms / 60000)} min`;
    return `${(ms / 3600000).toFixed(1)} h`;
  }

  const userPath = (user) => `/api/v1/users/${encodeURIComponent(user)}`;

  async function lookup(user) {
    $("lookup-error").hidden = true;
    let presence;
    let pending;
    try {
      [presence, pending] = await Promise.all([
        call("GET", `${userPath(user)}/presence`), call("GET", `${userPath(user)}/pending?last=10`)]);
    } catch (error) {
      $("lookup-error").textContent = error.message;
      $("lookup-error").hidden = false;
      return;
    }
    $("presence").textContent = presence.online
      ? `online on ${presence.node}, device ${presence.device || "none"}, since ${new Date(presence.since_ms).toLocaleString()}`
      : "offline";
    $("pending-counts").textContent = `${pending.pending.chat} chat, ${pending.pending.notification} notification`;
    const body = $("pending-last").tBodies[0];
    body.replaceChildren();
    for (const message of pending.last) {
      const row = body.insertRow();
      for (const text of [message.kind, message.id, String(message.bytes), age(message.age_ms)]) cell(row, text);
    }
    looked = { user, total: pending.pending.chat + pending.pending.notification };
    $("drop").disabled = looked.total === 0;
    $("user-view").hidden = false;
  }

  $("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    $("drop-confirm").hidden = true;
    $("drop-result").textContent = "";
    lookup($("lookup-user").value.trim());
  });
  $("drop").addEventListener("click", () => {
    $("drop-question").textContent = `Drop the ${looked.total} pending messages of ${looked.user}? They are gone for good; a socket the user has open is not told.`;
    $("drop-confirm").hidden = false;
  });
  $("drop-no").addEventListener("click", () => { $("drop-confirm").hidden = true; });
  $("drop-yes").addEventListener("click", async () => {
    $("drop-confirm").hidden = true;
    try {
      const removed = (await call("DELETE", `${userPath(looked.user)}/pending`)).removed;
      $("drop-result").textContent = `dropped ${removed.chat} chat and ${removed.notification} notification messages`;
    } catch (error) {
      $("drop-result").textContent = `not dropped: ${error.message}`;
    }
    lookup(looked.user);
  });
  tick();
})();
