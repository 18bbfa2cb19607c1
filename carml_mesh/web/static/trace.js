// Trace view: GET /api/v2/trace/{id} (Zipkin v2, assembled across the mesh) as a waterfall: one bar per span,
// placed by timestamp and duration, indented under its parent, coloured by node (tag carml.node.id), worker
// processes (spans named worker.*) hatched; a click (or Enter) shows the span's tags, ids and duration.

import { $, api, colour, el, fmtMs } from "./lib.js";
import { members } from "./cluster.js";

const nodeColours = new Map();

/** Spans in depth-first order with their depth; orphans (parent not in the trace) become roots. */
export function layout(spans) {
  const byId = new Map(spans.map((s) => [s.id, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    if (s.parentId && byId.has(s.parentId) && s.parentId !== s.id) {
      if (!children.has(s.parentId)) children.set(s.parentId, []);
      children.get(s.parentId).push(s);
    } else roots.push(s);
  }
  const byStart = (a, b) => (a.timestamp || 0) - (b.timestamp || 0);
  const out = [];
  const seen = new Set();
  const visit = (s, depth) => {
    if (seen.has(s.id)) return;
    seen.add(s.id);
    out.push({ span: s, depth });
    (children.get(s.id) || []).sort(byStart).forEach((c) => visit(c, depth + 1));
  };
  roots.sort(byStart).forEach((r) => visit(r, 0));
  return out;
}

const nodeOf = (s) => s.tags?.["carml.node.id"] || s.localEndpoint?.serviceName || "?";
const processOf = (s) => (s.name || "").startsWith("worker.") ? "worker" : "node";

function details(s) {
  const tags = Object.entries(s.tags || {}).sort(([a], [b]) => a.localeCompare(b));
  return el("div", { class: "span-details" },
    el("h4", { text: s.name || "(unnamed span)" }),
    el("dl", { class: "facts compact" },
      ...[["duration", fmtMs((s.duration || 0) / 1000)], ["span id", s.id], ["parent id", s.parentId || "—"], ["trace id", s.traceId],
        ["kind", s.kind || "—"], ["node", nodeOf(s)], ["process", processOf(s)], ["service", s.localEndpoint?.serviceName || "—"],
        ["start", s.timestamp ? new Date(s.timestamp / 1000).toISOString() : "—"]]
        .map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", {}, el("code", { text: v }))))),
    tags.length ? el("table", { class: "small-table" }, el("caption", { text: "Tags" }),
      el("tbody", {}, tags.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", {}, el("code", { text: v })))))) : null,
    (s.annotations || []).length ? el("ul", { class: "small" }, s.annotations.map((a) => el("li", { text: `${a.value} at +${fmtMs((a.timestamp - s.timestamp) / 1000)}` }))) : null);
}

function waterfall(spans) {
  const rows = layout(spans);
  const start = Math.min(...spans.map((s) => s.timestamp || Infinity));
  const end = Math.max(...spans.map((s) => (s.timestamp || start) + (s.duration || 0)));
  const total = Math.max(1, end - start);
  const nodes = [...new Set(spans.map(nodeOf))];
  const names = new Map(members().map((m) => [m.id, m.name]));
  const panel = el("div", { class: "span-panel", "aria-live": "polite" }, el("p", { class: "muted", text: "Select a span for its details." }));
  const scale = el("div", { class: "wf-scale", "aria-hidden": "true" },
    [0, 0.25, 0.5, 0.75, 1].map((f) => el("span", { style: `left:${f * 100}%`, text: fmtMs((total * f) / 1000) })));
  const list = el("ol", { class: "waterfall", "aria-label": "spans" }, rows.map(({ span: s, depth }) => {
    const left = (((s.timestamp || start) - start) / total) * 100;
    const width = Math.max(0.3, ((s.duration || 0) / total) * 100);
    const c = colour(nodeOf(s), nodeColours);
    const select = (e) => {
      list.querySelectorAll(".span-row.selected").forEach((r) => r.classList.remove("selected"));
      e.currentTarget.classList.add("selected");
      panel.replaceChildren(details(s));
    };
    return el("li", {},
      el("button", { type: "button", class: `span-row proc-${processOf(s)}`, "data-span-id": s.id, onclick: select,
        "aria-label": `${s.name}, ${fmtMs((s.duration || 0) / 1000)}, node ${nodeOf(s)}` },
        el("span", { class: "span-name", style: `padding-left:${depth * 14}px`, text: s.name || "(unnamed)" }),
        el("span", { class: "span-track" },
          el("span", { class: "span-bar", style: `left:${left}%;width:${width}%;--c:${c}` }),
          // the duration beside the bar: after it, or before it when the bar reaches the right edge
          el("span", { class: "span-ms", style: left + width > 80 ? `right:${100 - left}%` : `left:${left + width}%`,
            text: fmtMs((s.duration || 0) / 1000) }))));
  }));
  const legend = el("ul", { class: "chart-legend" },
    nodes.map((n) => el("li", {}, el("span", { class: "swatch", style: `background:${colour(n, nodeColours)}` }),
      `node ${names.get(n) ? `${names.get(n)} (${n})` : n}`)),
    el("li", {}, el("span", { class: "swatch swatch-worker" }), "worker process (hatched)"));
  return el("div", { class: "trace" },
    el("p", { class: "muted small", text: `${spans.length} spans · ${nodes.length} node(s) · ${fmtMs(total / 1000)}` }),
    legend, el("div", { class: "wf-head" }, el("span", { text: "span" }), scale), list, panel);
}

export async function showTrace(id) {
  const box = $("trace-view");
  $("trace-id").value = id;
  box.replaceChildren(el("p", { class: "muted", text: `Loading trace ${id}…` }));
  // the serving node exports its spans in the background: a just-finished request's trace may need a moment
  for (let attempt = 0; ; attempt++) {
    try {
      const spans = await api(`/api/v2/trace/${encodeURIComponent(id)}`);
      box.replaceChildren(spans.length ? waterfall(spans) : el("p", { class: "muted", text: "The trace has no spans." }));
      return;
    } catch (err) {
      if (err.status === 404 && attempt < 10) {
        await new Promise((r) => setTimeout(r, 300));
        continue;
      }
      box.replaceChildren(el("div", { class: "error-box", role: "alert", text: err.message }));
      return;
    }
  }
}

export function initTrace() {
  $("trace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("trace-id").value.trim();
    if (id) location.hash = `#trace/${id}`;
  });
}
