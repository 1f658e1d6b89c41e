// The dashboard page: draws each snapshot the server streams (server-sent events) as a graph, a connections
// table and the policies; a click on a connection shows its trace. No external script or asset.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function layout(nodes) {
  // one column per namespace, nodes stacked in it
  const byNs = new Map();
  for (const n of nodes) { const ns = n.namespace || "(outside)"; if (!byNs.has(ns)) byNs.set(ns, []); byNs.get(ns).push(n); }
  const pos = new Map(); const cols = [...byNs.keys()];
  const w = 900 / Math.max(cols.length, 1);
  cols.forEach((ns, i) => byNs.get(ns).forEach((n, j) => pos.set(n.id, { x: w * i + w / 2, y: 60 + j * 70, ns })));
  return { pos, cols, w };
}

function drawGraph(snap) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const { pos, cols, w } = layout(snap.nodes);
  cols.forEach((ns, i) => svg.appendChild(el("svg:text", { x: w * i + 8, y: 20, class: "ns-label" }, ns)));
  for (const e of snap.edges) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) continue;
    const g = el("svg:g", { class: "edge" + (e.denied ? " denied" : ""), "data-src": e.src, "data-dst": e.dst });
    g.appendChild(el("svg:line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
    const label = `${e.count} conn, ${e.rate}/s, ${e.bytes_sent + e.bytes_recv} B` + (e.denied ? `, ${e.denied} denied` : "");
    g.appendChild(el("svg:text", { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 4 }, label));
    g.appendChild(el("svg:title", {}, (e.identities || []).join(", ") || "plain TCP"));
    svg.appendChild(g);
  }
  for (const n of snap.nodes) {
    const p = pos.get(n.id);
    const g = el("svg:g", { class: "node " + n.kind, "data-id": n.id });
    g.appendChild(el("svg:circle", { cx: p.x, cy: p.y, r: 12 }));
    g.appendChild(el("svg:text", { x: p.x + 15, y: p.y + 4 }, n.id));
    svg.appendChild(g);
  }
}

function drawTable(snap) {
  const body = document.querySelector("#connections tbody");
  body.replaceChildren();
  for (const c of snap.connections) {
    const tr = el("tr", { class: "conn " + c.outcome, "data-trace": c.trace_id || "" });
    for (const v of [c.time, c.src, c.dst, c.via, c.route, c.status, c.bytes_sent, c.bytes_recv, c.identity, c.outcome + (c.error ? ": " + c.error : "")])
      tr.appendChild(el("td", {}, String(v ?? "")));
    tr.addEventListener("click", () => showTrace(c.trace_id));
    body.appendChild(tr);
  }
  const pol = document.querySelector("#policies tbody");
  pol.replaceChildren();
  for (const p of snap.policies) {
    const tr = el("tr", { class: "policy" });
    for (const v of [p.namespace, p.name, p.action, p.applies_to]) tr.appendChild(el("td", {}, v));
    pol.appendChild(tr);
  }
}

function drawSources(snap) {
  // each node proxy / waypoint / gateway: its access log (a Kubernetes pod's stream, a local cluster's file)
  // and its metrics summary, rows of one shape from either (model.source_row); hidden only before the first
  const panel = document.getElementById("source-panel");
  const rows = snap.sources || [];
  panel.hidden = rows.length === 0;
  const body = document.querySelector("#sources tbody");
  body.replaceChildren();
  for (const s of rows) {
    const m = s.metrics || {};
    const num = (v) => (v === undefined ? "" : String(Math.round(v)));
    const tr = el("tr", { class: "source " + s.state + " metrics-" + (s.metrics_state || "none"), "data-source": s.source });
    const detail = [s.detail, s.metrics_detail].filter(Boolean).join("; ");
    for (const v of [s.source, s.state + (s.restarts ? ` (${s.restarts} restarts)` : ""), s.lines, s.metrics_state || "",
                     s.metrics ? `${num(m.connections_opened)} / ${num(m.connections_open)}` : "", num(m.bytes),
                     num(m.requests), num(m.refusals), detail])
      tr.appendChild(el("td", {}, String(v ?? "")));
    body.appendChild(tr);
  }
}

async function showTrace(id) {
  const out = document.getElementById("trace");
  if (!id) { out.textContent = "this connection has no trace id (the node proxy runs with AMBIENT_TRACE_IDS=0)"; return; }
  const r = await fetch("/api/trace/" + id);
  const t = await r.json();
  if (!r.ok) { out.textContent = t.error || r.statusText; return; }
  const lines = [`connection ${t.trace_id}: ${t.outcome}` + (t.stopped_at ? ` (stopped at ${t.stopped_at}: ${t.reason})` : "")];
  for (const h of t.hops) {
    lines.push(`${h.ok ? "├─" : "├✗"} ${h.kind}  ${h.component} ${h.time} ${h.duration}`);
    for (const [k, v] of Object.entries(h.facts)) lines.push(`│    ${k}: ${v}`);
  }
  out.textContent = lines.join("\n");
  out.dataset.trace = id;
}

function start() {
  const status = document.getElementById("status");
  const es = new EventSource("/events");
  es.addEventListener("snapshot", (ev) => {
    const snap = JSON.parse(ev.data);
    drawGraph(snap); drawTable(snap); drawSources(snap);
    document.getElementById("graph-title").textContent =
      snap.window === 60 ? "Mesh (last minute)" : `Mesh (last ${Math.round(snap.window)} s)`;
    status.textContent = `live: ${snap.connections.length} connections, ${snap.edges.length} edges, proxies ${snap.proxies.join(", ")}`;
  });
  es.onerror = () => { status.textContent = "disconnected, retrying…"; };
}
start();
