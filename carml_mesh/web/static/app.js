// carml-mesh node page: plain ES modules, DOM APIs only (never innerHTML with server data), no build step.
//
//   lib.js          el()/svg() builders, formatting, api() (turns any failure into a showable message), banner
//   charts.js       hand-made SVG line and bar charts
//   cluster.js      members live from /api/events (SSE)
//   models.js       catalogue across the mesh, model details, feedback, deploy
//   playground.js   images × models × frameworks × nodes, results side by side
//   benchmarks.js   runs, progress, plots, comparison
//   evaluations.js  digits accuracy
//   trace.js        waterfall of a trace
//
// This file: the header (GET /api/node), the section router (#cluster, #models, ..., #trace/{id}), start-up.

import { $, api, banner, el, fmtBytes } from "./lib.js";
import { initClusterFilter, onReconnect, startCluster } from "./cluster.js";
import { initModels } from "./models.js";
import { initPlayground } from "./playground.js";
import { initBenchmarks, openRun } from "./benchmarks.js";
import { initEvaluations } from "./evaluations.js";
import { initTrace, showTrace } from "./trace.js";

const SECTIONS = ["cluster", "models", "playground", "benchmarks", "evaluations", "trace"];

function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  const [name, arg] = hash.split("/", 2);
  if (!SECTIONS.includes(name) && state.section) return; // e.g. the skip link's #main: stay where we are
  const section = SECTIONS.includes(name) ? name : "cluster";
  state.section = section;
  for (const s of SECTIONS) $(`section-${s}`).hidden = s !== section;
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (section === "trace" && arg) showTrace(arg);
  if (section === "benchmarks" && arg) openRun(arg);
  document.title = `${section[0].toUpperCase()}${section.slice(1)} · ${state.nodeName || "carml-mesh"}`;
}

const state = { nodeName: "", section: "", nodeBanner: false };

function renderNode(info) {
  state.nodeName = info.name || "node";
  $("node-name").textContent = info.name || "unnamed node";
  $("node-id").textContent = info.id || "";
  const badge = $("node-badge");
  badge.textContent = info.ready ? "ready" : "starting";
  badge.className = `badge ${info.ready ? "badge-ok" : "badge-pending"}`;
  $("footer-version").textContent = `carml-mesh ${info.version || ""}`.trim();
  const hw = info.hardware || {};
  const fact = (term, ...value) => el("div", {}, el("dt", { text: term }), el("dd", {}, ...value));
  $("node-facts").replaceChildren(
    fact("CPU", `${hw.cpu_model || "unknown"} · ${hw.cores ?? "?"} cores`),
    fact("Memory", fmtBytes(hw.memory_bytes)),
    fact("GPU", (hw.gpus || []).map((g) => `${g.name} (${fmtBytes(g.memory_bytes)})`).join(", ") || "none"),
    fact("Devices", (info.devices || []).join(", ") || "none"),
    fact("Executor", info.executor || "—"),
    fact("Auth", info.auth?.token ? `API token protects ${info.auth.protects}` : "open (no API token)"),
    fact("Limits", `body ${fmtBytes(info.limits?.max_body_bytes)} · batch ${info.limits?.max_batch ?? "?"} · timeout ${info.limits?.request_timeout_s ?? "?"} s`));
  const problems = [...(info.problems || []), ...Object.entries(info.load_errors || {}).map(([k, m]) => `${k}: ${m}`)];
  $("node-warnings").replaceChildren(...(problems.length ? [el("div", { class: "warning-box", role: "status" },
    el("strong", { text: "Problems" }), el("ul", {}, problems.map((p) => el("li", { text: p }))))] : []));
  const workers = info.workers || [];
  const cols = ["framework", "device", "pid", "alive", "in_flight", "requests", "failures", "restarts"];
  $("workers-body").replaceChildren(workers.length ? el("table", { class: "small-table" },
    el("caption", { text: "Workers" }),
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col", text: c.replace("_", " ") })))),
    el("tbody", {}, workers.map((w) => el("tr", {}, cols.map((c) => el("td", { text: c === "alive" ? (w.alive ? "yes" : "no") : w[c] ?? "—" }))))))
    : el("p", { class: "muted", text: "No workers running yet." }));
}

async function loadNode() {
  try {
    const info = await api("/api/node");
    renderNode(info);
    if (state.nodeBanner) banner(null); // the node is back: its earlier failure no longer applies
    state.nodeBanner = false;
    if (!info.ready) setTimeout(loadNode, 2000);
  } catch (err) {
    $("node-badge").textContent = "unreachable";
    $("node-badge").className = "badge badge-bad";
    banner(`This node's details are unavailable: ${err.message}`);
    state.nodeBanner = true;
  }
}

function init() {
  window.addEventListener("hashchange", () => {
    route();
    $("main").focus({ preventScroll: true }); // keyboard and screen-reader users land in the new section
  });
  // an error nothing else caught: show it rather than fail silently
  window.addEventListener("unhandledrejection", (e) => banner(e.reason?.message || String(e.reason)));
  route();
  loadNode();
  startCluster();
  initClusterFilter();
  onReconnect(loadNode); // a restarted node may have new workers, models or limits
  initModels();
  initPlayground();
  initBenchmarks();
  initEvaluations();
  initTrace();
}

init();
