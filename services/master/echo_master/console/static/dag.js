// Drawing a dataflow as lanes: one lane per device, lanes grouped by tier (edge, fog,
// cloud), each task in its device's lane at the column of its depth in the DAG; edges
// labelled with their model, channel and records/s. Pure: data in, SVG text out.

export const TIERS = ["edge", "fog", "cloud"];
const LABEL_W = 170, COL_W = 230, NODE_W = 160, NODE_H = 38, SLOT_H = 52, PAD = 14, TIER_GAP = 22;

export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

export function rate(r) {
  if (!r) return "0/s";
  if (r >= 10000) return `${(r / 1000).toFixed(0)}k/s`;
  if (r >= 1000) return `${(r / 1000).toFixed(1)}k/s`;
  return `${r >= 10 ? r.toFixed(0) : r.toFixed(1)}/s`;
}

// depth of each task: the longest path from a source (Kahn's order; a cycle cannot be
// submitted, but a task left over keeps depth 0)
export function depths(tasks, edges) {
  const depth = new Map(tasks.map((t) => [t.id, 0]));
  const indeg = new Map(tasks.map((t) => [t.id, 0]));
  const out = new Map(tasks.map((t) => [t.id, []]));
  for (const e of edges) {
    if (!depth.has(e.from) || !depth.has(e.to)) continue;
    out.get(e.from).push(e.to);
    indeg.set(e.to, indeg.get(e.to) + 1);
  }
  const queue = tasks.filter((t) => indeg.get(t.id) === 0).map((t) => t.id);
  while (queue.length) {
    const id = queue.shift();
    for (const next of out.get(id)) {
      depth.set(next, Math.max(depth.get(next), depth.get(id) + 1));
      indeg.set(next, indeg.get(next) - 1);
      if (indeg.get(next) === 0) queue.push(next);
    }
  }
  return depth;
}

export function layout(df, devices) {
  const depth = depths(df.tasks, df.edges);
  const lanes = new Map(); // device -> {device, tier, tasks}
  for (const t of df.tasks) {
    const key = t.device ?? "(not placed)";
    if (!lanes.has(key)) {
      const dev = t.device ? devices.get(t.device) : null;
      lanes.set(key, { device: key, tier: dev ? dev.tier : t.device ? "unknown" : "none", status: dev?.status, tasks: [] });
    }
    lanes.get(key).tasks.push(t);
  }
  const order = (tier) => { const i = TIERS.indexOf(tier); return i < 0 ? TIERS.length : i; };
  const sorted = [...lanes.values()].sort((a, b) => order(a.tier) - order(b.tier) || a.device.localeCompare(b.device));
  const pos = new Map();
  let y = PAD, lastTier = null, maxCol = 0;
  const bands = [];
  for (const lane of sorted) {
    if (lane.tier !== lastTier) {
      y += lastTier === null ? 0 : TIER_GAP;
      bands.push({ tier: lane.tier, y });
      y += 16;
      lastTier = lane.tier;
    }
    const perCol = new Map();
    for (const t of lane.tasks) {
      const col = depth.get(t.id) ?? 0;
      const slot = perCol.get(col) ?? 0;
      perCol.set(col, slot + 1);
      maxCol = Math.max(maxCol, col);
      pos.set(t.id, { x: LABEL_W + col * COL_W, y: y + 7 + slot * SLOT_H, task: t });
    }
    lane.y = y;
    lane.h = Math.max(...perCol.values()) * SLOT_H;
    y += lane.h;
  }
  return { lanes: sorted, bands, pos, width: LABEL_W + (maxCol + 1) * COL_W + PAD, height: y + PAD };
}

export function renderDag(df, devices, selected) {
  const L = layout(df, devices);
  const parts = [];
  parts.push(`<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="${L.width}" height="${L.height}" data-tasks="${df.tasks.length}">`);
  parts.push('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>');
  for (const b of L.bands) parts.push(`<text class="tier-label" x="8" y="${b.y + 12}">${esc(b.tier)}</text>`);
  for (const lane of L.lanes) {
    const cls = TIERS.includes(lane.tier) ? `lane-${lane.tier}` : "lane-none";
    parts.push(`<g class="lane" data-device="${esc(lane.device)}" data-tier="${esc(lane.tier)}">`);
    parts.push(`<rect class="${cls}" x="0" y="${lane.y}" width="${L.width}" height="${lane.h}"/>`);
    parts.push(`<line class="lane-line" x1="0" x2="${L.width}" y1="${lane.y + lane.h}" y2="${lane.y + lane.h}"/>`);
    parts.push(`<text class="lane-label" x="10" y="${lane.y + 22}">${esc(lane.device)}</text>`);
    parts.push(`<text class="lane-sub" x="10" y="${lane.y + 37}">${esc(lane.tier)}${lane.status ? " · " + esc(lane.status) : ""}</text></g>`);
  }
  for (const e of df.edges) {
    const a = L.pos.get(e.from), b = L.pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 2, y2 = b.y + NODE_H / 2;
    const dx = Math.max(40, (x2 - x1) / 2);
    const transport = e.transport ? e.transport.toUpperCase() : "—";
    const relay = e.from.startsWith("relay") || e.to.startsWith("relay") ? " (relay)" : "";
    const label = `${e.model} · ${transport}${relay} · ${rate(e.rate)}`;
    const key = `${e.from}->${e.to}`;
    parts.push(`<path class="edge ${esc(e.transport || "")}" data-edge="${esc(key)}" d="M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}"/>`);
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2 - 4;
    parts.push(`<text class="edge-label" data-edge="${esc(key)}" x="${mx}" y="${my}" text-anchor="middle">${esc(label)}</text>`);
  }
  for (const [id, p] of L.pos) {
    const t = p.task;
    const sel = id === selected ? " sel" : "";
    parts.push(`<g class="task t-${esc(t.state)}${sel}" data-task="${esc(id)}" data-device="${esc(t.device ?? "")}" data-state="${esc(t.state)}" tabindex="0">`);
    parts.push(`<title>${esc(id)} (${esc(t.operator)}) — ${esc(t.state)} on ${esc(t.device ?? "no device")}</title>`);
    parts.push(`<rect x="${p.x}" y="${p.y}" width="${NODE_W}" height="${NODE_H}"/>`);
    parts.push(`<text x="${p.x + 9}" y="${p.y + 16}">${esc(id.length > 20 ? id.slice(0, 19) + "…" : id)}</text>`);
    parts.push(`<text class="op" x="${p.x + 9}" y="${p.y + 30}">${esc(t.operator)} · ${esc(t.state)}</text></g>`);
  }
  parts.push("</svg>");
  return parts.join("");
}
