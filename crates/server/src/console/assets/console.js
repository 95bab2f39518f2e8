// The tern console: one page per tab, each drawn from the admin API (/api/v1/...). Text from
// clients (ids, topics, payloads) is only ever set as text, never parsed as HTML.
"use strict";

let csrf = null;
let timer = null;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && path !== "/api/v1/login") {
    showLogin();
    throw new Error("logged out");
  }
  const data = r.status === 204 ? null : await r.json();
  if (!r.ok) throw new Error(data && data.error ? data.error : `HTTP ${r.status}`);
  return data;
}

function fmtDuration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${s % 60}s`;
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MiB`;
  return `${(n / 1073741824).toFixed(2)} GiB`;
}

function fmtTime(ms) { return ms ? new Date(ms).toLocaleString() : ""; }

// ---- pages ----------------------------------------------------------------------------

const pages = {
  overview: { show: refreshOverview, every: 1000 },
  clients: { show: refreshClients, every: 2000 },
  access: { show: refreshUsers, every: 0 },
  topics: { show: refreshTopics, every: 2000 },
  webclient: { show: async () => {}, every: 0 },
};

function showLogin() {
  clearInterval(timer);
  for (const p of document.querySelectorAll(".page")) p.hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("page-login").hidden = false;
}

function showPage() {
  const name = (location.hash.replace(/^#\//, "") || "overview");
  const page = pages[name] ? name : "overview";
  for (const p of document.querySelectorAll(".page")) p.hidden = p.id !== `page-${page}`;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  clearInterval(timer);
  const run = () => pages[page].show().catch((e) => console.warn(e));
  run();
  if (pages[page].every) timer = setInterval(run, pages[page].every);
}

async function start() {
  try {
    const s = await api("GET", "/api/v1/session");
    loggedIn(s);
  } catch (_) {
    showLogin();
  }
}

function loggedIn(session) {
  csrf = session.csrf;
  $("page-login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("who").textContent = session.name;
  showPage();
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("login-error").textContent = "";
  try {
    const s = await api("POST", "/api/v1/login", { name: $("login-name").value, password: $("login-password").value });
    $("login-password").value = "";
    loggedIn(s);
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

$("logout").addEventListener("click", async () => {
  await api("POST", "/api/v1/logout").catch(() => {});
  csrf = null;
  showLogin();
});

window.addEventListener("hashchange", () => { if (csrf) showPage(); });

// ---- overview -------------------------------------------------------------------------

async function refreshOverview() {
  const o = await api("GET", "/api/v1/overview");
  const last = o.rates[o.rates.length - 1] || { in: 0, out: 0 };
  $("ov-clients").textContent = o.clients_connected;
  $("ov-in").textContent = Math.round(last.in);
  $("ov-out").textContent = Math.round(last.out);
  $("ov-retained").textContent = o.retained;
  $("ov-sessions").textContent = o.sessions;
  $("ov-subscriptions").textContent = o.subscriptions;
  $("ov-uptime").textContent = fmtDuration(o.uptime_seconds);
  $("ov-store").textContent = o.store ? fmtBytes(o.store.bytes) + (o.store.failing ? " (cannot write!)" : "") : "off";
  $("ov-version").textContent = o.version;
  $("ov-listeners").replaceChildren(...o.listeners.map((l) => el("tr", {}, el("td", {}, l.address), el("td", {}, l.kind))));
  $("ov-bridges-card").hidden = o.bridges.length === 0;
  $("ov-bridges").replaceChildren(...o.bridges.map((b) => el("tr", { "data-bridge": b.name },
    el("td", {}, b.name), el("td", {}, b.remote),
    el("td", {}, el("span", { class: b.connected ? "badge on" : "badge" }, b.connected ? "connected" : "disconnected")),
    el("td", {}, String(b.queued)), el("td", {}, String(b.forwarded_out)), el("td", {}, String(b.forwarded_in)),
    el("td", {}, String(b.errors)), el("td", {}, b.last_error || ""))));
  drawChart($("ov-chart"), o.rates);
}

function drawChart(canvas, rates) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const points = rates.slice(-120);
  const max = Math.max(10, ...points.map((p) => Math.max(p.in, p.out)));
  ctx.strokeStyle = "#e1e4ea";
  ctx.fillStyle = "#677086";
  ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - pad - (i * (h - 2 * pad)) / 4;
    ctx.beginPath(); ctx.moveTo(pad + 20, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(String(Math.round((max * i) / 4)), 0, y + 4);
  }
  const x = (i) => pad + 20 + (i * (w - pad - 20)) / 119;
  const y = (v) => h - pad - (v / max) * (h - 2 * pad);
  for (const [key, color] of [["in", "#0f6e8c"], ["out", "#e07a1f"]]) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[key])) : ctx.moveTo(x(i), y(p[key]))));
    ctx.stroke();
  }
  ctx.fillStyle = "#677086";
  ctx.fillText("last 2 minutes", w - 90, h - 8);
}

// ---- clients --------------------------------------------------------------------------

let openClient = null;

async function refreshClients() {
  const q = $("clients-search").value;
  const list = await api("GET", `/api/v1/clients?limit=500&q=${encodeURIComponent(q)}`);
  $("clients-count").textContent = `${list.total} connected`;
  $("clients-rows").replaceChildren(...list.items.map((c) => el("tr", { "data-client": c.client_id },
    el("td", {}, c.client_id), el("td", {}, c.username || ""), el("td", {}, c.peer || ""),
    el("td", {}, c.protocol), el("td", {}, `${c.keep_alive} s`), el("td", {}, fmtTime(c.connected_since_ms)),
    el("td", {}, String(c.subscriptions)), el("td", {}, String(c.queued)), el("td", {}, String(c.inflight)),
    el("td", {},
      el("button", { class: "secondary", onclick: () => { openClient = c.client_id; showClient(); } }, "Details"), " ",
      el("button", { class: "danger", "data-disconnect": c.client_id, onclick: () => disconnect(c.client_id) }, "Disconnect")))));
  if (openClient) showClient().catch(() => { $("client-detail").hidden = true; openClient = null; });
}

async function showClient() {
  const c = await api("GET", `/api/v1/clients/${encodeURIComponent(openClient)}`);
  const box = $("client-detail");
  box.hidden = false;
  box.replaceChildren(
    el("h2", {}, `Client ${c.client_id}`),
    el("p", {}, `MQTT ${c.protocol} from ${c.peer}, user ${c.username || "(anonymous)"}, keep alive ${c.keep_alive} s, ` +
      `${c.persistent ? "persistent" : "clean"} session, ${c.queued} queued, ${c.inflight} in flight, ${c.dropped} dropped`),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Subscription"), el("th", {}, "QoS"), el("th", {}, "Options"))),
      el("tbody", {}, ...c.subscription_list.map((s) => el("tr", {}, el("td", {}, s.filter), el("td", {}, String(s.qos)),
        el("td", {}, [s.no_local ? "no local" : "", s.retain_as_published ? "retain as published" : "",
          s.subscription_id ? `id ${s.subscription_id}` : ""].filter(Boolean).join(", ")))))));
}

async function disconnect(id) {
  await api("DELETE", `/api/v1/clients/${encodeURIComponent(id)}`).catch((e) => alert(e.message));
  if (openClient === id) { openClient = null; $("client-detail").hidden = true; }
  setTimeout(() => refreshClients().catch(() => {}), 200);
}

$("clients-search").addEventListener("input", () => refreshClients().catch(() => {}));

// ---- access management ----------------------------------------------------------------

let editing = null;

function ruleRow(rule) {
  const kind = rule && rule.deny ? "deny" : "allow";
  const action = rule ? (rule.allow || rule.deny) : "both";
  const row = el("div", { class: "rule" },
    el("label", {}, "Permission", el("select", { class: "rule-kind" },
      ...["allow", "deny"].map((k) => { const o = el("option", { value: k }, k); o.selected = k === kind; return o; }))),
    el("label", {}, "Action", el("select", { class: "rule-action" },
      ...[["publish", "publish"], ["subscribe", "subscribe"], ["both", "publish and subscribe"]].map(([v, t]) => {
        const o = el("option", { value: v }, t); o.selected = v === action; return o;
      }))),
    el("label", {}, "Topic filter", el("input", { class: "rule-topic", value: rule ? rule.topic : "#", required: "" })),
    el("button", { type: "button", class: "secondary", onclick: () => row.remove() }, "Remove"));
  return row;
}

function resetUserForm() {
  editing = null;
  $("user-form-title").textContent = "Add a user";
  $("user-save").textContent = "Create user";
  $("user-name").disabled = false;
  $("user-name").value = "";
  $("user-password").value = "";
  $("user-password").required = true;
  $("rules").replaceChildren(ruleRow(null));
  $("user-error").textContent = "";
}

function formRules() {
  return [...document.querySelectorAll("#rules .rule")].map((r) => ({
    [r.querySelector(".rule-kind").value]: r.querySelector(".rule-action").value,
    topic: r.querySelector(".rule-topic").value,
  }));
}

async function refreshUsers() {
  if (!$("rules").children.length) resetUserForm();
  let list;
  try {
    list = await api("GET", "/api/v1/users");
  } catch (e) {
    $("user-error").textContent = e.message;
    return;
  }
  const describe = (r) => `${r.allow ? "allow" : "deny"} ${r.allow || r.deny} ${r.topic}`;
  $("users-rows").replaceChildren(...list.items.map((u) => el("tr", { "data-user": u.name },
    el("td", {}, u.name), el("td", {}, u.rules.map(describe).join("; ") || "(none: nothing allowed)"),
    el("td", {},
      el("button", { class: "secondary", onclick: () => editUser(u) }, "Edit"), " ",
      el("button", { class: "danger", onclick: () => deleteUser(u.name) }, "Delete")))));
}

function editUser(u) {
  editing = u.name;
  $("user-form-title").textContent = `Edit ${u.name}`;
  $("user-save").textContent = "Save";
  $("user-name").value = u.name;
  $("user-name").disabled = true;
  $("user-password").value = "";
  $("user-password").required = false;
  $("rules").replaceChildren(...(u.rules.length ? u.rules.map(ruleRow) : [ruleRow(null)]));
}

async function deleteUser(name) {
  if (!confirm(`Delete user ${name}? Its clients are disconnected.`)) return;
  await api("DELETE", `/api/v1/users/${encodeURIComponent(name)}`).catch((e) => alert(e.message));
  if (editing === name) resetUserForm();
  refreshUsers();
}

$("add-rule").addEventListener("click", () => $("rules").append(ruleRow(null)));
$("user-cancel").addEventListener("click", resetUserForm);
$("user-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("user-error").textContent = "";
  try {
    if (editing) {
      const body = { rules: formRules() };
      if ($("user-password").value) body.password = $("user-password").value;
      await api("PUT", `/api/v1/users/${encodeURIComponent(editing)}`, body);
    } else {
      await api("POST", "/api/v1/users", { name: $("user-name").value, password: $("user-password").value, rules: formRules() });
    }
    resetUserForm();
    refreshUsers();
  } catch (err) {
    $("user-error").textContent = err.message;
  }
});

// ---- topics ---------------------------------------------------------------------------

async function refreshTopics() {
  const [t, r] = await Promise.all([
    api("GET", "/api/v1/topics?limit=1000"),
    api("GET", `/api/v1/retained?limit=200&filter=${encodeURIComponent($("retained-filter").value || "#")}`).catch((e) => ({ error: e.message })),
  ]);
  $("topics-count").textContent = `${t.total} topics`;
  const root = {};
  for (const item of t.items) {
    let node = root;
    for (const level of item.topic.split("/")) {
      node.children = node.children || {};
      node = node.children[level] = node.children[level] || {};
    }
    node.item = item;
  }
  const open = new Set([...document.querySelectorAll("#topic-tree details[open]")].map((d) => d.dataset.path));
  const draw = (node, path) => el("ul", {}, ...Object.keys(node.children || {}).sort().map((name) => {
    const child = node.children[name];
    const full = path ? `${path}/${name}` : name;
    const label = [el("span", { class: "name" }, name || "(empty)")];
    if (child.item) {
      label.push(el("span", { class: "msg", "data-topic": full }, child.item.encoding === "utf8" ? child.item.last_payload : `(${child.item.last_size} bytes)`),
        el("span", { class: "meta" }, `${child.item.count} msgs · ${child.item.rate.toFixed(1)}/s · ${fmtTime(child.item.last_at_ms)}`));
    }
    if (!child.children) return el("li", {}, ...label);
    const d = el("details", { "data-path": full }, el("summary", {}, ...label), draw(child, full));
    d.open = open.has(full) || open.size === 0;
    return el("li", {}, d);
  }));
  $("topic-tree").replaceChildren(t.items.length ? draw(root, "") : el("p", { class: "hint" }, "No messages yet."));
  if (r.error) {
    $("retained-count").textContent = r.error;
    return;
  }
  $("retained-count").textContent = `${r.retained_total} retained in all`;
  $("retained-rows").replaceChildren(...r.items.map((m) => el("tr", { "data-retained": m.topic },
    el("td", {}, m.topic), el("td", { class: "payload" }, m.payload), el("td", {}, fmtBytes(m.size)), el("td", {}, String(m.qos)),
    el("td", {}, el("button", { class: "danger", onclick: () => deleteRetained(m.topic) }, "Delete")))));
}

async function deleteRetained(topic) {
  await api("DELETE", `/api/v1/retained?topic=${encodeURIComponent(topic)}`).catch((e) => alert(e.message));
  refreshTopics();
}

// ---- web client -----------------------------------------------------------------------

let mqtt = null;

function wcState(text, on) {
  $("wc-state").textContent = text;
  $("wc-state").classList.toggle("on", !!on);
}

$("wc-url").value = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/mqtt`;
$("wc-client-id").value = `tern-console-${Math.random().toString(16).slice(2, 8)}`;

$("wc-connect").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("wc-error").textContent = "";
  if (mqtt) mqtt.disconnect();
  mqtt = new MqttClient.Client();
  mqtt.onmessage = (m) => {
    $("wc-messages").prepend(el("tr", { class: "wc-message" }, el("td", {}, new Date().toLocaleTimeString()),
      el("td", {}, m.topic), el("td", { class: "payload" }, m.payload), el("td", {}, String(m.qos)), el("td", {}, m.retain ? "yes" : "")));
    while ($("wc-messages").children.length > 200) $("wc-messages").lastChild.remove();
  };
  const client = mqtt;
  mqtt.onclose = () => { if (client === mqtt) { wcState("disconnected"); $("wc-subscriptions").replaceChildren(); } };
  wcState("connecting");
  try {
    await mqtt.connect($("wc-url").value, { clientId: $("wc-client-id").value, username: $("wc-user").value, password: $("wc-password").value, keepalive: 60 });
    wcState("connected", true);
  } catch (err) {
    wcState("disconnected");
    $("wc-error").textContent = err.message;
  }
});

$("wc-disconnect").addEventListener("click", () => { if (mqtt) mqtt.disconnect(); });

$("wc-subscribe").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!mqtt) { $("wc-error").textContent = "connect first"; return; }
  const filter = $("wc-sub-filter").value;
  const granted = await mqtt.subscribe(filter, Number($("wc-sub-qos").value));
  const code = granted && granted[0];
  $("wc-subscriptions").append(el("li", {}, code === 0x80 ? `${filter} (refused)` : `${filter} (QoS ${code})`));
});

$("wc-publish").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!mqtt) { $("wc-error").textContent = "connect first"; return; }
  await mqtt.publish($("wc-pub-topic").value, $("wc-pub-payload").value, Number($("wc-pub-qos").value), $("wc-pub-retain").checked);
});

start();
