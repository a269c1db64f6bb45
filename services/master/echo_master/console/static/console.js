// ECHO's web console: one script for every page (the path says which). It is a client of
// the REST API (/api/v1/...) with the session cookie, and follows /api/v1/live (SSE) to
// update the page in place. No framework, no build step, nothing fetched from elsewhere.
import { esc, rate, renderDag, TIERS } from "./dag.js";

const app = document.getElementById("app");
let session = null;

class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, opts = {}) {
  const method = opts.method || "GET";
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  if (method !== "GET" && session?.csrf) headers["X-ECHO-CSRF"] = session.csrf;
  const r = await fetch(path, { ...opts, method, headers, credentials: "same-origin" });
  if (r.status === 401) {
    location.assign("/ui/login?next=" + encodeURIComponent(location.pathname));
    throw new ApiError(401, { detail: "the session has ended" });
  }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

const canOperate = () => session && (session.role === "operator" || session.role === "admin");
const when = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "—");
const ago = (t) => {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
};
const pill = (state) => `<span class="pill s-${esc(state)}" data-state="${esc(state)}">${esc(state)}</span>`;
const meter = (pct) => pct == null ? '<span class="muted">—</span>'
  : `<meter min="0" max="100" low="70" high="90" optimum="0" value="${pct.toFixed(0)}"></meter><span class="bar-label">${pct.toFixed(0)}%</span>`;

// a long text (a reason naming many tasks) in short, the whole of it one click away
function clipped(text, max = 240) {
  if (text.length <= max) return esc(text);
  return `<details><summary>${esc(text.slice(0, max))}… (${text.length - max} more characters)</summary>${esc(text)}</details>`;
}

function traceLink(traceId) {
  if (!traceId) return '<span class="muted">—</span>';
  if (!session.grafana_url) return `<code class="trace-id">${esc(traceId)}</code>`;
  // the same Explore link as echoctl's (deploy/grafana's Tempo datasource: uid echo-tempo)
  const panes = JSON.stringify({ t: {
    datasource: "echo-tempo",
    queries: [{ refId: "A", datasource: { type: "tempo", uid: "echo-tempo" }, queryType: "traceql", query: traceId }],
    range: { from: "now-24h", to: "now" },
  } });
  const url = `${session.grafana_url.replace(/\/$/, "")}/explore?schemaVersion=1&orgId=1&panes=${encodeURIComponent(panes)}`;
  return `<a class="trace-id mono" href="${esc(url)}" target="_blank" rel="noopener">${esc(traceId)}</a>`;
}

function downtime(m) {
  const move = m.steps.find((s) => (s.name === "drain" || s.name === "restore") && s.started_at);
  const resume = m.steps.find((s) => s.name === "resume" && s.state === "done");
  if (!move || !resume || !resume.ended_at) return null;
  return Math.max(0, resume.ended_at - move.started_at);
}

function frame(active, content) {
  const link = (href, name, key) => `<a href="${href}" class="${active === key ? "here" : ""}">${name}</a>`;
  app.innerHTML = `<header class="top"><span class="brand">ECHO</span><nav>
    ${link("/ui/devices", "Devices", "devices")}${link("/ui/dataflows", "Dataflows", "dataflows")}
    ${canOperate() ? link("/ui/submit", "Submit", "submit") : ""}</nav>
    <div class="who"><span id="live" class="live">live</span>
    <span class="pill" id="role" data-role="${esc(session.role)}">${esc(session.role)}</span>
    <form method="post" action="/ui/logout"><button type="submit" id="logout">Log out</button></form></div></header>
    <main class="page">${content}</main>`;
  delete app.dataset.loading;
}

function follow(topics, handlers) {
  const es = new EventSource("/api/v1/live?topics=" + encodeURIComponent(topics));
  const dot = () => document.getElementById("live");
  dot()?.classList.add("off");
  es.onopen = () => { dot()?.classList.replace("off", "on"); };
  es.onerror = () => { dot()?.classList.replace("on", "off"); };
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  }
  addEventListener("pagehide", () => es.close());
  return es;
}

function notice(text, error = false) {
  const box = document.getElementById("notice");
  if (box) box.innerHTML = text ? `<div class="notice${error ? " error" : ""}" role="status">${esc(text)}</div>` : "";
}

const errorText = (e) => {
  const items = (e.body?.errors || []).map((p) => `${p.loc}: ${p.msg}`);
  return [e.message, ...items].join(" — ");
};

// ------------------------------------------------------------------------------ devices

function deviceRows(devices) {
  return devices.map((d) => `<tr data-device="${esc(d.id)}" data-status="${esc(d.status)}">
    <td><a href="/ui/devices/${encodeURIComponent(d.id)}">${esc(d.id)}</a></td><td>${pill(d.status)}</td>
    <td>${meter(d.cpu_percent)}</td><td>${meter(d.memory_percent)}</td><td class="tasks">${d.tasks}</td>
    <td>${d.input_streams.map(esc).join(", ") || '<span class="muted">—</span>'}</td>
    <td>${d.runtimes.map(esc).join(", ")}</td><td class="muted">${ago(d.last_heartbeat)}</td></tr>`).join("");
}

function renderDevices(devices) {
  const byTier = Object.fromEntries(TIERS.map((t) => [t, []]));
  for (const d of devices) (byTier[d.tier] ||= []).push(d);
  const online = devices.filter((d) => d.status === "online").length;
  document.getElementById("summary").textContent =
    `${devices.length} devices, ${online} online, ${devices.length - online} not`;
  document.getElementById("tiers").innerHTML = Object.entries(byTier).map(([tier, list]) => `
    <section class="tier" data-tier="${esc(tier)}"><div class="tier-head"><h2>${esc(tier)}</h2>
    <span class="count">${list.length} device${list.length === 1 ? "" : "s"}</span></div>
    ${list.length ? `<table class="devices"><thead><tr><th>Device</th><th>Status</th><th>CPU</th><th>Memory</th>
    <th>Tasks</th><th>Input streams</th><th>Runtimes</th><th>Last heartbeat</th></tr></thead>
    <tbody>${deviceRows(list.sort((a, b) => a.id.localeCompare(b.id)))}</tbody></table>` : '<p class="muted">none</p>'}
    </section>`).join("");
}

async function devicesPage() {
  frame("devices", '<h1>Devices</h1><p class="muted" id="summary"></p><div id="tiers"></div>');
  renderDevices(await api("/api/v1/devices"));
  done();
  follow("devices", { devices: renderDevices });
}

async function devicePage(id) {
  frame("devices", `<h1>Device ${esc(id)}</h1><div id="device"></div><h2>Tasks</h2><div id="dtasks"></div>
    <h2>Events</h2><div id="events"></div>`);
  const show = (d) => {
    document.getElementById("device").innerHTML = `<dl class="kv card">
      <dt>Tier</dt><dd>${esc(d.tier)}</dd><dt>Status</dt><dd>${pill(d.status)} <span class="muted">since ${when(d.status_since)}</span></dd>
      <dt>CPU</dt><dd>${meter(d.cpu_percent)}</dd><dt>Memory</dt><dd>${meter(d.memory_percent)}</dd>
      <dt>Capacity</dt><dd>${d.capacity.cpu} CPU, ${d.capacity.memory_mb} MB</dd>
      <dt>Input streams</dt><dd>${d.input_streams.map(esc).join(", ") || "—"}</dd>
      <dt>Runtimes</dt><dd>${d.runtimes.map(esc).join(", ")}</dd>
      <dt>Brokers</dt><dd>${d.connectivity.brokers.map(esc).join(", ")}</dd>
      <dt>Labels</dt><dd>${Object.entries(d.labels).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(", ") || "—"}</dd>
      <dt>Host</dt><dd>${esc(d.hostname)} ${esc(d.arch)} · agent ${esc(d.agent_version)}</dd>
      <dt>Last heartbeat</dt><dd>${ago(d.last_heartbeat)}</dd></dl>`;
  };
  show(await api(`/api/v1/devices/${encodeURIComponent(id)}`));
  const dfs = await api("/api/v1/dataflows");
  const rows = dfs.flatMap((df) => df.tasks.filter((t) => t.device === id).map((t) => `<tr data-task="${esc(t.id)}">
    <td><a href="/ui/dataflows/${encodeURIComponent(df.id)}">${esc(df.name)}</a></td><td>${esc(t.id)}</td>
    <td>${esc(t.operator)}</td><td>${pill(t.state)}</td><td>${rate(t.rate_out)}</td></tr>`));
  document.getElementById("dtasks").innerHTML = rows.length
    ? `<table><thead><tr><th>Dataflow</th><th>Task</th><th>Operator</th><th>State</th><th>Out</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
    : '<p class="muted">no tasks</p>';
  renderEvents(await api(`/api/v1/events?device=${encodeURIComponent(id)}&limit=50`));
  done();
  follow("devices", { devices: (list) => { const d = list.find((x) => x.id === id); if (d) show(d); } });
}

// ---------------------------------------------------------------------------- dataflows

function renderDataflows(dfs) {
  const rows = dfs.sort((a, b) => b.created_at - a.created_at).map((df) => {
    const running = df.tasks.filter((t) => t.state === "running").length;
    return `<tr data-dataflow="${esc(df.id)}"><td><a href="/ui/dataflows/${encodeURIComponent(df.id)}">${esc(df.name)}</a>
      <div class="muted mono">${esc(df.id)}</div></td><td>${pill(df.state)}</td><td>${running} / ${df.tasks.length}</td>
      <td>${df.reason ? clipped(df.reason, 160) : '<span class="muted">—</span>'}</td><td class="muted">${when(df.created_at)}</td></tr>`;
  });
  document.getElementById("dataflows").innerHTML = rows.length
    ? `<table><thead><tr><th>Dataflow</th><th>State</th><th>Tasks running</th><th>Reason</th><th>Created</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
    : '<p class="muted">No dataflows yet.</p>';
}

async function dataflowsPage() {
  frame("dataflows", `<h1>Dataflows</h1>${canOperate() ? '<div class="actions"><a class="button" href="/ui/submit" id="new">Submit a dataflow</a></div>' : ""}<div id="dataflows"></div>`);
  renderDataflows(await api("/api/v1/dataflows"));
  done();
  follow("dataflows", { dataflows: renderDataflows });
}

function renderEvents(events, append = false) {
  const box = document.getElementById("events");
  const rows = events.map((e) => `<tr data-kind="${esc(e.kind)}"><td class="muted">${when(e.time)}</td><td>${esc(e.kind)}</td>
    <td>${esc(e.subject)}</td><td>${esc(e.message)}</td></tr>`);
  if (append && box.querySelector("tbody")) {
    box.querySelector("tbody").insertAdjacentHTML("afterbegin", rows.reverse().join(""));
    return;
  }
  box.innerHTML = rows.length
    ? `<table class="events"><thead><tr><th>Time</th><th>Kind</th><th>Subject</th><th>Message</th></tr></thead><tbody>${rows.reverse().join("")}</tbody></table>`
    : '<table class="events"><thead><tr><th>Time</th><th>Kind</th><th>Subject</th><th>Message</th></tr></thead><tbody></tbody></table>';
}

function renderMigrations(list) {
  const rows = list.map((m) => {
    const d = downtime(m);
    return `<tr data-migration="${esc(m.id)}" data-task="${esc(m.task)}" data-state="${esc(m.state)}">
      <td class="mono">${esc(m.id)}</td><td>${esc(m.task)}</td><td>${esc(m.source || "?")} → ${esc(m.target || "?")}</td>
      <td>${esc(m.origin)}</td><td>${pill(m.state)}${m.error ? ` <span class="muted">${esc(m.error)}</span>` : ""}</td>
      <td class="downtime">${d == null ? "—" : `${(d * 1000).toFixed(0)} ms`}</td><td>${traceLink(m.trace_id)}</td></tr>`;
  });
  document.getElementById("migrations").innerHTML = rows.length
    ? `<table><thead><tr><th>Migration</th><th>Task</th><th>Move</th><th>Origin</th><th>State</th><th>Downtime</th><th>Trace</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
    : '<p class="muted">No migrations.</p>';
}

async function dataflowPage(id) {
  const enc = encodeURIComponent(id);
  const [df, deviceList, events, migrations] = await Promise.all([
    api(`/api/v1/dataflows/${enc}`), api("/api/v1/devices"),
    api(`/api/v1/dataflows/${enc}/events?limit=100`), api(`/api/v1/migrations?dataflow=${enc}&limit=50`).catch(() => []),
  ]);
  let placement = await api(`/api/v1/dataflows/${enc}/placement`).catch(() => null);
  const devices = new Map(deviceList.map((d) => [d.id, d]));
  let current = df, selected = null, target = "";  // target: the device picked to migrate to, kept across live re-renders
  frame("dataflows", `<div class="row"><div class="grow">
    <h1><span id="df-name">${esc(df.name)}</span> <span id="df-state"></span></h1>
    <dl class="kv" id="df-info"></dl>
    ${canOperate() ? `<div class="actions"><button id="rebalance">Rebalance</button><button id="stop" class="danger">Stop</button></div>` : ""}
    <div id="notice"></div>
    <div class="legend"></div>
    <div class="dag-wrap" id="dag"></div>
    <h2>Migrations</h2><div id="migrations"></div>
    <h2>Events</h2><div id="events"></div></div>
    <aside class="side card" id="side"><p class="muted">Click a task to see why it runs where it runs${canOperate() ? ", and to move it" : ""}.</p></aside></div>`);
  document.querySelector(".legend").innerHTML = ["running", "deploying", "migrating", "failed", "stopped"]
    .map((s) => `<span><i class="k-${s}"></i>${s}</span>`).join("") + '<span>edge: model · channel · records/s</span>';

  const info = () => {
    document.getElementById("df-state").innerHTML = pill(current.state);
    document.getElementById("df-info").innerHTML = `<dt>Id</dt><dd class="mono" id="df-id">${esc(current.id)}</dd>
      <dt>Desired</dt><dd>${esc(current.desired)}</dd>
      ${current.reason ? `<dt>Reason</dt><dd id="df-reason">${clipped(current.reason)}</dd>` : ""}
      <dt>Trace</dt><dd id="df-trace">${traceLink(current.trace_id)}</dd><dt>Created</dt><dd>${when(current.created_at)}</dd>`;
  };
  const draw = () => {
    document.getElementById("dag").innerHTML = renderDag(current, devices, selected);
  };
  const side = () => {
    if (!selected) return;
    const t = current.tasks.find((x) => x.id === selected);
    if (!t) return;
    const p = placement?.tasks.find((x) => x.task === t.id);
    const costs = p ? Object.entries(p.costs).map(([k, v]) => `${esc(k)} ${Number(v).toFixed(3)}`).join(", ") : "";
    const choices = [...devices.values()].filter((d) => d.status === "online" && d.id !== t.device)
      .sort((a, b) => TIERS.indexOf(a.tier) - TIERS.indexOf(b.tier) || a.id.localeCompare(b.id));
    document.getElementById("side").innerHTML = `<h2 id="side-task">${esc(t.id)}</h2><dl class="kv">
      <dt>Operator</dt><dd>${esc(t.operator)}</dd><dt>State</dt><dd>${pill(t.state)}</dd>
      <dt>Device</dt><dd id="side-device">${t.device ? `<a href="/ui/devices/${encodeURIComponent(t.device)}">${esc(t.device)}</a>` : "—"}</dd>
      <dt>Generation</dt><dd>${t.generation}</dd><dt>Records</dt><dd>${t.records_in} in, ${t.records_out} out (${rate(t.rate_out)})</dd>
      ${t.reason ? `<dt>Reason</dt><dd>${esc(t.reason)}</dd>` : ""}</dl>
      <h2>Why here</h2><p id="placement-reason">${esc(p?.reason || t.placement_reason || "no placement explanation")}</p>
      ${p ? `<dl class="kv"><dt>Constraints met</dt><dd>${p.satisfied.map(esc).join(", ") || "—"}</dd>
      <dt>Cost terms</dt><dd>${costs || "—"}</dd><dt>Runner-up</dt><dd>${[p.runner_up, p.runner_up_reason].filter(Boolean).map(esc).join(" — ") || "—"}</dd></dl>` : ""}
      ${canOperate() ? `<h2>Migrate</h2><div class="actions"><select id="target"><option value="">the scheduler's choice</option>
      ${choices.map((d) => `<option value="${esc(d.id)}"${d.id === target ? " selected" : ""}>${esc(d.id)} (${esc(d.tier)})</option>`).join("")}</select>
      <button id="migrate" class="primary">Migrate</button></div>` : ""}`;
    document.getElementById("target")?.addEventListener("change", (ev) => { target = ev.target.value; });
    document.getElementById("migrate")?.addEventListener("click", async (ev) => {
      ev.target.disabled = true;
      const device = document.getElementById("target").value;
      target = "";
      try {
        const r = await api(`/api/v1/dataflows/${enc}/tasks/${encodeURIComponent(t.id)}/migrate`, {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(device ? { device } : {}),
        });
        notice(`Migration ${r.migration} of ${t.id} started${device ? ` to ${device}` : ""}.`);
      } catch (e) { notice(errorText(e), true); ev.target.disabled = false; }
    });
  };
  document.getElementById("dag").addEventListener("click", (ev) => {
    const g = ev.target.closest("g.task");
    if (!g) return;
    if (selected !== g.dataset.task) target = "";
    selected = g.dataset.task;
    draw(); side();
  });
  document.getElementById("stop")?.addEventListener("click", async (ev) => {
    if (!confirm(`Stop ${current.name}: every task on every device?`)) return;
    ev.target.disabled = true;
    try { await api(`/api/v1/dataflows/${enc}`, { method: "DELETE" }); notice("Stopping."); }
    catch (e) { notice(errorText(e), true); ev.target.disabled = false; }
  });
  document.getElementById("rebalance")?.addEventListener("click", async (ev) => {
    ev.target.disabled = true;
    try {
      const r = await api(`/api/v1/dataflows/${enc}/rebalance`, { method: "POST" });
      const moves = Object.entries(r.moves).map(([t, d]) => `${t} → ${d}`).join(", ");
      notice(moves ? `Rebalancing: ${moves}.` : "Rebalanced: every task already runs where it fits best.");
    } catch (e) { notice(errorText(e), true); }
    ev.target.disabled = false;
  });
  info(); draw(); renderMigrations(migrations); renderEvents(events);
  done();
  follow(`dataflow:${id}`, {
    dataflow: async (view) => {
      const moved = view.tasks.some((t) => current.tasks.find((o) => o.id === t.id)?.device !== t.device);
      current = view;
      if (moved) {
        placement = await api(`/api/v1/dataflows/${enc}/placement`).catch(() => placement);
        if (view.tasks.some((t) => t.device && !devices.has(t.device))) {
          for (const d of await api("/api/v1/devices")) devices.set(d.id, d);
        }
      }
      info(); draw(); side();
    },
    migrations: renderMigrations,
    event: (e) => renderEvents([e], true),
    gone: () => notice("This dataflow no longer exists.", true),
  });
}

// ------------------------------------------------------------------------------ submit

const SAMPLE = `name: hello
tasks:
  - id: gen
    operator: io.generate
    config: {count: 1000, rate: 50}
    placement: {tier: edge}
  - id: pass
    operator: core.passthrough
    placement: {tier: fog}
  - id: count
    operator: core.count_by_key
    config: {key: sensor}
edges:
  - {from: gen, to: pass}
  - {from: pass, to: count}
`;

async function submitPage() {
  frame("submit", `<h1>Submit a dataflow</h1><p class="muted">YAML (or JSON), as <code>POST /api/v1/dataflows</code> takes it.</p>
    <div class="editor"><pre class="gutter" id="gutter"></pre><textarea id="spec" spellcheck="false" aria-label="dataflow spec"></textarea></div>
    <div class="actions"><button id="check">Check</button><button id="submit" class="primary">Submit</button></div>
    <div id="notice"></div><ul class="problems" id="problems"></ul>`);
  const text = document.getElementById("spec"), gutter = document.getElementById("gutter");
  let bad = new Set();
  const numbers = () => {
    const n = text.value.split("\n").length;
    gutter.innerHTML = Array.from({ length: n }, (_, i) => bad.has(i + 1) ? `<span class="bad" data-line="${i + 1}">${i + 1}</span>` : `${i + 1}`).join("\n");
    gutter.scrollTop = text.scrollTop;
  };
  const goTo = (line) => {
    const lines = text.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((a, l) => a + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[line - 1]?.length ?? 0));
  };
  const show = (errors) => {
    bad = new Set(errors.filter((p) => p.line).map((p) => p.line));
    document.getElementById("problems").innerHTML = errors.map((p) => `<li data-loc="${esc(p.loc)}" data-line="${p.line ?? ""}">
      ${p.line ? `<b>line ${p.line}${p.column ? `, column ${p.column}` : ""}</b> · ` : ""}<code>${esc(p.loc)}</code>: ${esc(p.msg)}</li>`).join("");
    for (const li of document.querySelectorAll("#problems li")) {
      li.addEventListener("click", () => li.dataset.line && goTo(Number(li.dataset.line)));
    }
    numbers();
  };
  const ctype = () => (text.value.trim().startsWith("{") ? "application/json" : "application/yaml");
  text.value = SAMPLE;
  text.addEventListener("input", numbers);
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  document.getElementById("check").addEventListener("click", async () => {
    try {
      const r = await api("/api/v1/specs/validate", { method: "POST", headers: { "Content-Type": ctype() }, body: text.value });
      show(r.errors);
      notice(r.valid ? "The spec is valid." : `${r.errors.length} problem${r.errors.length === 1 ? "" : "s"}.`, !r.valid);
    } catch (e) { notice(errorText(e), true); }
  });
  document.getElementById("submit").addEventListener("click", async () => {
    try {
      const r = await api("/api/v1/dataflows", { method: "POST", headers: { "Content-Type": ctype() }, body: text.value });
      location.assign(`/ui/dataflows/${encodeURIComponent(r.id)}`);
    } catch (e) {
      show(e.body?.errors || []);
      notice(e.message, true);
    }
  });
  numbers();
  done();
}

// -------------------------------------------------------------------------------- main

function done() {
  app.dataset.rendered = "1";
  performance.mark("echo-rendered");
}

async function main() {
  if (!app) return; // the login and 404 pages have no app
  session = await api("/api/v1/console/session");
  const path = location.pathname.replace(/\/+$/, "");
  const m = path.match(/^\/ui\/(devices|dataflows)\/([^/]+)$/);
  if (m) return m[1] === "devices" ? devicePage(decodeURIComponent(m[2])) : dataflowPage(decodeURIComponent(m[2]));
  if (path === "/ui/dataflows") return dataflowsPage();
  if (path === "/ui/submit") return canOperate() ? submitPage() : dataflowsPage();
  return devicesPage();
}

main().catch((e) => {
  if (e instanceof ApiError && e.status === 401) return;
  app.innerHTML = `<main class="page"><div class="notice error" role="alert">The console could not load: ${esc(errorText(e))}</div></main>`;
});
