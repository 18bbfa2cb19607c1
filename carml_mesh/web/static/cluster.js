// Cluster: the members, live from GET /api/events (Server-Sent Events); joins, failures and leaves as they happen.
// Falls back to polling GET /api/cluster when the stream cannot be used (e.g. a node with --protect-all, since
// EventSource cannot send the Authorization header).

import { $, api, authHeaders, el, fmtBytes } from "./lib.js";

const STATE_BADGE = { alive: "badge-ok", suspect: "badge-pending", dead: "badge-bad", left: "badge-muted" };
const listeners = new Set();
export const cluster = { doc: null, source: null, pollTimer: null, states: new Map() };

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
  const link = m.http && !m.self ? el("a", { href: `${m.http}/`, text: nameOf(m) }) : el("span", { text: nameOf(m) });
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

function render(doc) {
  cluster.doc = doc;
  diffStates(doc);
  $("cluster-name").textContent = doc.cluster ? `${doc.cluster}${doc.encrypted ? " · encrypted" : ""}` : "gossip off";
  const alive = doc.members.filter((m) => m.state === "alive").length;
  $("cluster-summary").textContent = `${doc.members.length} member(s), ${alive} alive`;
  $("cluster-members").replaceChildren(...doc.members.map(memberCard));
  if (doc.note) $("cluster-members").append(el("p", { class: "muted", text: doc.note }));
  for (const fn of listeners) fn(doc);
}

function setLive(text, ok) {
  const badge = $("cluster-live");
  badge.textContent = text;
  badge.className = `badge ${ok ? "badge-ok" : "badge-pending"}`;
}

async function poll() {
  try {
    render(await api("/api/cluster"));
    setLive("polling", true);
  } catch (err) {
    setLive("unreachable", false);
    $("cluster-members").replaceChildren(el("div", { class: "error-box", role: "alert", text: `Cluster view unavailable: ${err.message}` }));
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
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setLive("polling", false);
      poll();
    } else setLive("reconnecting…", false);
  });
}

export function restartCluster() {
  cluster.source?.close();
  clearTimeout(cluster.pollTimer);
  startCluster();
}
