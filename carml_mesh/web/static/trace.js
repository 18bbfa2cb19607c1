// Trace view: GET /api/v2/trace/{id} (Zipkin v2, assembled across the mesh) as a waterfall: one bar per span,
// placed by timestamp and duration, indented under its parent, coloured by node (tag carml.node.id), worker
// processes (spans named worker.*) hatched; a click (or Enter) shows the span's tags, ids and duration under it.
//
// A framework-level trace holds hundreds of op spans inside a few milliseconds of a long request: subtrees open
// breadth-first only while the list stays short (the rest show "+N spans" and open with a click or →), and
// "Zoom to this span" narrows the time axis to one span's subtree. The list is one tab stop; ↑ ↓ Home End move,
// → ← open and close, Enter or Space shows the details.

import { $, api, colour, el, fmtMs } from "./lib.js";
import { members } from "./cluster.js";

const nodeColours = new Map();
const OPEN_BUDGET = 40; // rows shown before the user opens anything
const tr = { token: 0 }; // the latest showTrace() owns the view; a slower, older one drops its answer

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
  const visit = (s, depth, parent) => {
    if (seen.has(s.id)) return;
    seen.add(s.id);
    const row = { span: s, depth, parent, children: [], descendants: 0 };
    out.push(row);
    parent?.children.push(row);
    (children.get(s.id) || []).sort(byStart).forEach((c) => visit(c, depth + 1, row));
    row.descendants = row.children.reduce((n, c) => n + 1 + c.descendants, 0);
  };
  roots.sort(byStart).forEach((r) => visit(r, 0, null));
  return out;
}

/** The rows opened at first: breadth-first, while the visible list stays within the budget. */
export function initiallyOpen(rows, budget = OPEN_BUDGET) {
  const open = new Set();
  let visible = rows.filter((r) => !r.parent).length;
  const queue = rows.filter((r) => !r.parent);
  while (queue.length) {
    const row = queue.shift();
    if (!row.children.length || visible + row.children.length > budget) continue;
    open.add(row.span.id);
    visible += row.children.length;
    queue.push(...row.children);
  }
  return open;
}

const nodeOf = (s) => s.tags?.["carml.node.id"] || s.localEndpoint?.serviceName || "?";
const processOf = (s) => ((s.name || "").startsWith("worker.") ? "worker" : "node");
const spanMs = (s) => fmtMs((s.duration || 0) / 1000);

function details(s, view) {
  const tags = Object.entries(s.tags || {}).sort(([a], [b]) => a.localeCompare(b));
  const zoomed = view.focus === s.id;
  return el("div", { class: "span-details" },
    el("div", { class: "span-details-head" },
      el("h4", { text: s.name || "(unnamed span)" }),
      s.duration ? el("button", { type: "button", class: "button button-secondary button-small",
        text: zoomed ? "Show the whole trace" : "Zoom to this span", onclick: () => view.zoom(zoomed ? null : s.id) }) : null),
    el("dl", { class: "facts compact" },
      ...[["duration", spanMs(s)], ["span id", s.id], ["parent id", s.parentId || "—"], ["trace id", s.traceId],
        ["kind", s.kind || "—"], ["node", nodeOf(s)], ["process", processOf(s)], ["service", s.localEndpoint?.serviceName || "—"],
        ["start", s.timestamp ? new Date(s.timestamp / 1000).toISOString() : "—"]]
        .map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", {}, el("code", { text: v }))))),
    tags.length ? el("div", { class: "table-scroll" }, el("table", { class: "small-table" }, el("caption", { text: "Tags" }),
      el("tbody", {}, tags.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", {}, el("code", { text: v }))))))) : null,
    (s.annotations || []).length ? el("ul", { class: "small" }, s.annotations.map((a) => el("li", { text: `${a.value} at +${fmtMs((a.timestamp - s.timestamp) / 1000)}` }))) : null);
}

/** Where the duration goes: inside a wide bar, before a bar that reaches the right edge, else after it. */
function msPlacement(left, width) {
  if (width >= 30) return { cls: "span-ms span-ms-in", style: `right:${Math.max(0, 100 - left - width)}%` };
  if (left + width > 75) return { cls: "span-ms", style: `right:${100 - left}%` };
  return { cls: "span-ms", style: `left:${left + width}%` };
}

function waterfall(spans) {
  const rows = layout(spans);
  const byId = new Map(rows.map((r) => [r.span.id, r]));
  const traceStart = Math.min(...spans.map((s) => s.timestamp || Infinity));
  const traceEnd = Math.max(...spans.map((s) => (s.timestamp || traceStart) + (s.duration || 0)));
  const nodes = [...new Set(spans.map(nodeOf))];
  const names = new Map(members().map((m) => [m.id, m.name]));
  const view = { open: initiallyOpen(rows), focus: null, selected: null, zoom: null };

  const summary = el("p", { class: "muted small" });
  const crumbs = el("div", { class: "wf-zoom", "aria-live": "polite" });
  const scale = el("div", { class: "wf-scale", "aria-hidden": "true" });
  const list = el("ol", { class: "waterfall", role: "tree", "aria-label": "spans of the trace, as a tree" });

  const visibleRows = () => {
    const root = view.focus ? byId.get(view.focus) : null;
    const out = [];
    const walk = (row) => {
      out.push(row);
      if (view.open.has(row.span.id) || row === root) row.children.forEach(walk);
    };
    (root ? [root] : rows.filter((r) => !r.parent)).forEach(walk);
    return out;
  };

  function render(focusId) {
    const root = view.focus ? byId.get(view.focus) : null;
    const start = root ? root.span.timestamp : traceStart;
    const total = Math.max(1, root ? root.span.duration || 1 : traceEnd - traceStart);
    const baseDepth = root ? root.depth : 0;
    const shown = visibleRows();
    summary.textContent = `${spans.length} spans · ${nodes.length} node(s) · ${fmtMs((traceEnd - traceStart) / 1000)}`
      + (shown.length < rows.length ? ` · ${shown.length} shown, open a row (▸) for the rest` : "");
    const offset = root ? fmtMs((start - traceStart) / 1000) : "";
    crumbs.replaceChildren(...(root ? [el("span", { text: `Zoomed to ${root.span.name} (${spanMs(root.span)}, from ${offset} into the trace): times from its start.` }), " ",
      el("button", { type: "button", class: "button-link", text: "Show the whole trace", onclick: () => view.zoom(null) })] : []));
    scale.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) =>
      el("span", { style: `left:${f * 100}%`, text: `${root ? "+" : ""}${fmtMs((total * f) / 1000)}` })));
    const current = focusId || view.selected || shown[0]?.span.id;
    list.replaceChildren(...shown.map((row) => {
      const s = row.span;
      const depth = row.depth - baseDepth;
      const ts = s.timestamp || start;
      const left = Math.min(100, Math.max(0, ((ts - start) / total) * 100));
      const width = Math.max(0.3, Math.min(100 - left, ((s.duration || 0) / total) * 100));
      const c = colour(nodeOf(s), nodeColours);
      const ms = msPlacement(left, width);
      const hasChildren = row.children.length > 0;
      const isOpen = hasChildren && (view.open.has(s.id) || row === root);
      const item = el("li", { class: "span-li", role: "none" },
        hasChildren && row !== root ? el("button", { type: "button", class: "span-toggle", tabindex: "-1", style: `left:${depth * 14}px`,
          "aria-label": `${isOpen ? "close" : "open"} ${s.name}`, text: isOpen ? "▾" : "▸", onclick: () => toggle(s.id) }) : null,
        el("button", { type: "button", class: `span-row proc-${processOf(s)}${view.selected === s.id ? " selected" : ""}`,
          role: "treeitem", "aria-level": String(depth + 1), "aria-expanded": hasChildren ? String(isOpen) : null,
          "aria-selected": String(view.selected === s.id), tabindex: s.id === current ? "0" : "-1", "data-span-id": s.id,
          "aria-label": `${s.name}, ${spanMs(s)}, node ${names.get(nodeOf(s)) || nodeOf(s)}${hasChildren && !isOpen ? `, ${row.descendants} spans inside` : ""}`,
          onclick: () => select(s.id) },
          el("span", { class: "span-name", style: `padding-left:${depth * 14 + 18}px`, title: s.name || "" },
            s.name || "(unnamed)", hasChildren && !isOpen ? el("span", { class: "span-more", text: ` +${row.descendants}` }) : null),
          el("span", { class: "span-track" },
            el("span", { class: "span-bar", style: `left:${left}%;width:${width}%;--c:${c}` }),
            el("span", { class: ms.cls, style: ms.style, text: spanMs(s) }))));
      return item;
    }));
    if (view.selected && byId.has(view.selected)) {
      const at = list.querySelector(`[data-span-id="${CSS.escape(view.selected)}"]`);
      if (at) at.closest("li").after(el("li", { class: "span-details-row", role: "none" }, details(byId.get(view.selected).span, view)));
    }
    if (focusId) list.querySelector(`[data-span-id="${CSS.escape(focusId)}"]`)?.focus();
  }

  function toggle(id) {
    if (view.open.has(id)) view.open.delete(id);
    else view.open.add(id);
    render(id);
  }

  function select(id) {
    view.selected = view.selected === id ? null : id; // a second click closes the details
    render(id);
  }

  view.zoom = (id) => {
    view.focus = id;
    if (id) view.open.add(id);
    render(id || view.selected);
  };

  list.addEventListener("keydown", (e) => {
    const buttons = [...list.querySelectorAll(".span-row")];
    const i = buttons.indexOf(document.activeElement);
    if (i < 0) return;
    const id = buttons[i].dataset.spanId;
    const row = byId.get(id);
    const move = (j) => buttons[Math.max(0, Math.min(buttons.length - 1, j))]?.focus();
    const keys = {
      ArrowDown: () => move(i + 1),
      ArrowUp: () => move(i - 1),
      Home: () => move(0),
      End: () => move(buttons.length - 1),
      ArrowRight: () => (row.children.length && !view.open.has(id) ? toggle(id) : move(i + 1)),
      ArrowLeft: () => (view.open.has(id) && row.children.length && view.focus !== id ? toggle(id)
        : row.parent && (!view.focus || row.parent.depth >= byId.get(view.focus).depth)
          ? list.querySelector(`[data-span-id="${CSS.escape(row.parent.span.id)}"]`)?.focus() : null),
    };
    if (!keys[e.key]) return;
    e.preventDefault();
    keys[e.key]();
  });
  // the roving tab stop follows the focus
  list.addEventListener("focusin", (e) => {
    if (!e.target.classList.contains("span-row")) return;
    for (const b of list.querySelectorAll(".span-row[tabindex='0']")) b.tabIndex = -1;
    e.target.tabIndex = 0;
  });

  const legend = el("ul", { class: "chart-legend" },
    nodes.map((n) => el("li", {}, el("span", { class: "swatch", style: `background:${colour(n, nodeColours)}` }),
      `node ${names.get(n) ? `${names.get(n)} (${n})` : n}`)),
    el("li", {}, el("span", { class: "swatch swatch-worker" }), "worker process (hatched)"));
  render(null);
  return el("div", { class: "trace" }, summary, legend,
    el("p", { class: "muted small wf-keys", text: "Click a span for its details. Keys: ↑ ↓ move, → ← open and close, Enter details." }),
    crumbs, el("div", { class: "wf-head" }, el("span", { text: "span" }), scale), list);
}

export async function showTrace(id) {
  const token = ++tr.token;
  const box = $("trace-view");
  $("trace-id").value = id;
  box.setAttribute("aria-busy", "true");
  box.replaceChildren(el("p", { class: "muted", text: `Loading trace ${id}…` }));
  // the serving node exports its spans in the background: a just-finished request's trace may need a moment
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        const spans = await api(`/api/v2/trace/${encodeURIComponent(id)}`);
        if (token !== tr.token) return;
        box.replaceChildren(spans.length ? waterfall(spans) : el("p", { class: "muted", text: "The trace has no spans." }));
        return;
      } catch (err) {
        if (token !== tr.token) return;
        if (err.status === 404 && attempt < 10) {
          await new Promise((r) => setTimeout(r, 300));
          continue;
        }
        box.replaceChildren(el("div", { class: "error-box", role: "alert", text: err.message }),
          err.status === 404 ? el("p", { class: "muted small", text: "Traces are kept in the memory of the nodes that served the request, for about an hour, and are lost when a node restarts." }) : "");
        return;
      }
    }
  } finally {
    if (token === tr.token) box.setAttribute("aria-busy", "false");
  }
}

export function initTrace() {
  $("trace-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("trace-id").value.trim();
    if (!id) return;
    if (location.hash === `#trace/${id}`) showTrace(id); // the same id again: reload it
    else location.hash = `#trace/${id}`;
  });
}
