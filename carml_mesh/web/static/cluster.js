// Cluster: the members, live from GET /api/events (Server-Sent Events); joins, failures and leaves as they happen.
// Falls back to polling GET /api/cluster when the stream cannot be used (e.g. a node with --protect-all, since
// EventSource cannot send the Authorization header).

import { $, api, authHeaders, el, fmtBytes, safeHref } from "./lib.js";

const STATE_BADGE = { alive: "badge-ok", suspect: "badge-pending", dead: "badge-bad", left: "badge-muted" };
const STATE_ORDER = { alive: 0, suspect: 1, dead: 2, left: 3 };
const FILTER_FROM = 7; // members before the cluster view offers a filter
const TABLE_FROM = 13; // members before the cluster is shown as a table (one line each) rather than cards
const listeners = new Set();
const reconnectListeners = new Set();
export const cluster = { doc: null, source: null, pollTimer: null, states: new Map(), lost: false, filter: "", view: "" };

/** fn() when the page gets the cluster again after losing its node (e.g. the node restarted): reload what it shows. */
export function onReconnect(fn) {
  reconnectListeners.add(fn);
}

/** fn(doc) on every new cluster document (the models and playground sections use the members' cards). */
export function onCluster(fn) {
  listeners.add(fn);
  if (cluster.doc) fn(cluster.doc);
}

/** Members with a card, the serving peers: [{id, name, url, self, state, models: ["name@version"], ...}]. */
export function members() {
  return (cluster.doc?.members || []).map((m) => ({ ...m, name: m.card?.name || (m.self ? "this node" : m.id) }));
}

function nameOf(m) {
  return m.card?.name || m.id;
}

function logActivity(text, kind) {
  const list = $("cluster-activity");
  const time = new Date().toLocaleTimeString();
  list.prepend(el("li", { class: `activity activity-${kind}` }, el("time", { text: time }), " ", text));
  while (list.children.length > 30) list.lastChild.remove();
}

function diffStates(doc) {
  const seen = new Map(doc.members.map((m) => [m.id, m]));
  if (cluster.states.size) {
    for (const [id, m] of seen) {
      const before = cluster.states.get(id);
      if (before === undefined) logActivity(`${nameOf(m)} joined`, "join");
      else if (before !== m.state) {
        const verb = { dead: "failed", left: "left", suspect: "is suspected", alive: "is back" }[m.state] || m.state;
        logActivity(`${nameOf(m)} ${verb}`, m.state === "alive" ? "join" : m.state);
      }
    }
    for (const id of cluster.states.keys()) if (!seen.has(id)) logActivity(`${id} was forgotten`, "left");
  }
  cluster.states = new Map([...seen].map(([id, m]) => [id, m.state]));
}

function memberCard(m) {
  const card = m.card || {};
  const href = m.http && !m.self ? safeHref(`${m.http}/`) : null; // a peer's card is data: only an http(s) link
  const link = href ? el("a", { href, text: nameOf(m) }) : el("span", { text: nameOf(m) });
  const fact = (term, ...value) => el("div", {}, el("dt", { text: term }), el("dd", {}, ...value));
  const hw = card.cores ? `${card.cores} cores · ${fmtBytes(card.memory_bytes)}` : "—";
  return el("article", { class: `member member-${m.state}`, "data-node-id": m.id, "data-state": m.state },
    el("header", { class: "member-head" },
      el("h3", {}, link, m.self ? el("span", { class: "muted small", text: " (this node)" }) : null),
      el("span", { class: `badge ${STATE_BADGE[m.state] || ""}`, text: m.state })),
    el("dl", { class: "facts compact" },
      fact("Address", el("code", { text: m.address || "—" })),
      fact("Hardware", hw),
      fact("CPU", card.cpu_model || "—"),
      fact("GPU", card.gpus?.length ? card.gpus.join(", ") : "none"),
      fact("Executor", card.executor || "—"),
      fact("Frameworks", (card.frameworks || []).map((f) => `${f.name} ${f.version}`).join(", ") || "—"),
      fact("Models", card.models?.length ? card.models.join(", ") : "none"),
      fact("Warm", card.warm?.length ? card.warm.join(", ") : "none"),
      fact("Load", m.load === null || m.load === undefined ? "—" : `${m.load} in flight`),
      fact("Last heard", m.last_heard_s === null || m.last_heard_s === undefined ? "—" : `${m.last_heard_s.toFixed(1)} s ago`)));
}

const searchText = (m) => [nameOf(m), m.id, m.state, m.address, m.card?.cpu_model, m.card?.executor,
  ...(m.card?.models || []), ...(m.card?.frameworks || []).map((f) => f.name)].join(" ").toLowerCase();

function renderMembers() {
  const doc = cluster.doc;
  if (!doc) return;
  const sorted = [...doc.members].sort((a, b) => (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9)
    || Number(b.self) - Number(a.self) || nameOf(a).localeCompare(nameOf(b)));
  const words = cluster.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const shown = words.length ? sorted.filter((m) => words.every((w) => searchText(m).includes(w))) : sorted;
  $("cluster-filter-row").hidden = doc.members.length < FILTER_FROM && !cluster.filter;
  const view = cluster.view || (doc.members.length >= TABLE_FROM ? "table" : "cards");
  for (const b of document.querySelectorAll("#cluster-view button")) b.setAttribute("aria-pressed", String(b.dataset.view === view));
  $("cluster-members").className = view === "table" ? "member-table table-scroll" : "member-grid";
  if (cluster.lost) $("cluster-members").classList.add("stale");
  $("cluster-members").replaceChildren(...(view === "table" && shown.length ? [memberTable(shown)] : shown.map(memberCard)),
    ...(shown.length ? [] : [el("p", { class: "muted", text: `No member matches “${cluster.filter}”.` })]),
    ...(doc.note ? [el("p", { class: "muted", text: doc.note })] : []));
}

function memberTable(list) {
  const cols = ["member", "state", "address", "hardware", "frameworks", "models", "warm", "load", "last heard"];
  return el("table", { class: "small-table" },
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col", text: c })))),
    el("tbody", {}, list.map((m) => {
      const card = m.card || {};
      const href = m.http && !m.self ? safeHref(`${m.http}/`) : null;
      return el("tr", { "data-node-id": m.id, "data-state": m.state },
        el("th", { scope: "row" }, href ? el("a", { href, text: nameOf(m) }) : nameOf(m), m.self ? el("span", { class: "muted small", text: " (this node)" }) : null),
        el("td", {}, el("span", { class: `badge ${STATE_BADGE[m.state] || ""}`, text: m.state })),
        el("td", {}, el("code", { text: m.address || "—" })),
        el("td", { text: card.cores ? `${card.cores} cores · ${fmtBytes(card.memory_bytes)}${card.gpus?.length ? ` · ${card.gpus.length} GPU` : ""}` : "—" }),
        el("td", { text: (card.frameworks || []).map((f) => f.name).join(", ") || "—" }),
        el("td", { title: (card.models || []).join(", "), text: String(card.models?.length ?? 0) }),
        el("td", { title: (card.warm || []).join(", "), text: String(card.warm?.length ?? 0) }),
        el("td", { text: m.load ?? "—" }),
        el("td", { text: m.last_heard_s === null || m.last_heard_s === undefined ? "—" : `${m.last_heard_s.toFixed(1)} s` }));
    })));
}

function render(doc) {
  cluster.doc = doc;
  diffStates(doc);
  $("cluster-name").textContent = doc.cluster ? `${doc.cluster}${doc.encrypted ? " · encrypted" : ""}` : "gossip off";
  const count = (state) => doc.members.filter((m) => m.state === state).length;
  $("cluster-summary").textContent = [`${doc.members.length} member(s)`, `${count("alive")} alive`,
    ...["suspect", "dead", "left"].filter((s) => count(s)).map((s) => `${count(s)} ${s}`)].join(", ");
  const wasLost = cluster.lost;
  cluster.lost = false;
  renderMembers();
  for (const fn of listeners) fn(doc);
  if (wasLost) for (const fn of reconnectListeners) fn();
}

/** The node cannot be reached: keep the last picture, greyed and said to be old, until it answers again. */
function markLost(text) {
  cluster.lost = true;
  setLive(text, false);
  $("node-badge").textContent = "unreachable"; // the header's node badge too; set again when the node answers
  $("node-badge").className = "badge badge-bad";
  if (cluster.doc) {
    $("cluster-members").classList.add("stale");
    $("cluster-summary").textContent = `Lost contact with this node at ${new Date().toLocaleTimeString()}; showing the last known state.`;
  }
}

function setLive(text, ok) {
  const badge = $("cluster-live");
  badge.textContent = text;
  badge.className = `badge ${ok ? "badge-ok" : "badge-pending"}`;
}

async function poll() {
  clearTimeout(cluster.pollTimer);
  try {
    render(await api("/api/cluster"));
    setLive("polling", true);
  } catch (err) {
    if (cluster.doc) markLost("unreachable");
    else {
      setLive("unreachable", false);
      $("cluster-members").replaceChildren(el("div", { class: "error-box", role: "alert", text: `Cluster view unavailable: ${err.message}` }));
    }
  }
  cluster.pollTimer = setTimeout(poll, 2000);
}

export function startCluster() {
  if (Object.keys(authHeaders()).length || typeof EventSource === "undefined") {
    poll();
    return;
  }
  const source = new EventSource("/api/events");
  cluster.source = source;
  source.addEventListener("cluster", (e) => {
    setLive("live", true);
    render(JSON.parse(e.data));
  });
  // EventSource reconnects by itself (after the stream's retry delay) while the node is away; a refusal (e.g. 503:
  // too many streams) closes it for good, and the page polls instead
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setLive("polling", false);
      poll();
    } else markLost("reconnecting…");
  });
}

export function initClusterFilter() {
  for (const b of document.querySelectorAll("#cluster-view button")) {
    b.addEventListener("click", () => {
      cluster.view = b.dataset.view;
      renderMembers();
    });
  }
  $("cluster-filter").addEventListener("input", (e) => {
    cluster.filter = e.target.value.trim();
    renderMembers();
  });
}

export function restartCluster() {
  cluster.source?.close();
  clearTimeout(cluster.pollTimer);
  startCluster();
}
