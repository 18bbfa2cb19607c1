// Benchmarks: configure a run (POST /api/benchmarks), watch its progress (GET /api/benchmarks/{id}), then plots:
// latency CDF, percentiles, throughput vs batch size; the past runs across the mesh, and a comparison of runs.

import { $, api, el, fmtMs, fmtNum, fmtTime, postJson, showError } from "./lib.js";
import { barChart, lineChart } from "./charts.js";
import { members, onCluster } from "./cluster.js";
import { onModels, models } from "./models.js";

const bench = { polling: null, current: null };
const targetLabel = (t) => [t.model, t.framework, t.device, t.node].filter(Boolean).join(" · ");

// ---------------------------------------------------------------- the form

function renderTargetChoices() {
  const box = $("bench-targets");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const options = [];
  for (const m of models.local) {
    for (const f of m.frameworks.filter((f) => f.available)) options.push({ model: m.name, version: m.version, framework: f.name });
  }
  box.replaceChildren(...(options.length ? options.map((o, i) => {
    const value = JSON.stringify(o);
    return el("span", { class: "chip-check" },
      el("input", { type: "checkbox", id: `bench-t-${i}`, value, checked: checked.size ? checked.has(value) : i === 0 }),
      el("label", { for: `bench-t-${i}`, text: `${o.model} · ${o.framework}` }));
  }) : [el("p", { class: "muted", text: "This node serves no models to benchmark." })]));
}

function renderNodeChoices() {
  const select = $("bench-node");
  const previous = select.value;
  const alive = members().filter((m) => m.state === "alive");
  const key = alive.map((m) => m.id + m.name).join();
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  select.replaceChildren(el("option", { value: "", text: "auto (routed)" }), ...alive.map((m) => el("option", { value: m.id, text: m.name })));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function intList(raw, field) {
  const parts = raw.split(/[\s,]+/).filter(Boolean);
  const values = parts.map(Number);
  if (!parts.length || values.some((v) => !Number.isInteger(v) || v < 1)) throw new Error(`${field}: give whole numbers ≥ 1, separated by commas.`);
  return values;
}

function requestFromForm() {
  const form = $("bench-form");
  const scenario = form.elements.scenario.value;
  const node = $("bench-node").value;
  const targets = [...$("bench-targets").querySelectorAll("input:checked")].map((i) => ({ ...JSON.parse(i.value), ...(node ? { node } : {}) }));
  if (!targets.length) throw new Error("Choose at least one target (model · framework).");
  const doc = { scenario, targets, batch_sizes: intList(form.elements.batch_sizes.value, "Batch sizes") };
  const name = form.elements.name.value.trim();
  if (name) doc.name = name;
  if (scenario === "server") {
    const qps = Number(form.elements.qps.value);
    if (form.elements.qps.value) doc.qps = qps;
    if (form.elements.p99_bound_ms.value) doc.p99_bound_ms = Number(form.elements.p99_bound_ms.value);
  } else {
    doc.concurrency = intList(form.elements.concurrency.value, "Concurrency");
  }
  if (form.elements.min_queries.value) doc.min_queries = Number(form.elements.min_queries.value);
  if (form.elements.min_duration_s.value) doc.min_duration_s = Number(form.elements.min_duration_s.value);
  return doc;
}

async function onSubmit(event) {
  event.preventDefault();
  let doc;
  try {
    doc = requestFromForm();
  } catch (err) {
    showError($("bench-error"), err.message);
    return;
  }
  showError($("bench-error"), null);
  $("bench-submit").disabled = true;
  $("bench-submit").textContent = "Starting…";
  try {
    const started = await postJson("/api/benchmarks", doc);
    watch(started.id);
  } catch (err) {
    showError($("bench-error"), err.message);
  } finally {
    $("bench-submit").disabled = false;
    $("bench-submit").textContent = "Start benchmark";
  }
}

function updateScenario() {
  const server = $("bench-form").elements.scenario.value === "server";
  $("bench-server-fields").hidden = !server;
  $("bench-concurrency-field").hidden = server;
}

// ---------------------------------------------------------------- progress and results

function progressView(run) {
  const p = run.progress || { done: 0, total: 0, fraction: 0, phase: run.status };
  const pct = Math.round((p.fraction || 0) * 100);
  return el("div", { class: "progress-block" },
    el("div", { class: "progress-line" },
      el("span", { class: `badge badge-${run.status === "done" ? "ok" : run.status === "running" ? "pending" : "bad"}`, text: run.status }),
      el("span", { text: ` ${p.phase || ""} · ${p.done ?? 0} / ${p.total ?? "?"} queries` })),
    el("progress", { max: 100, value: pct, "aria-label": "benchmark progress", text: `${pct}%` }));
}

/** #benchmarks/{id}: a run's page, one that can be bookmarked or shared. */
export function openRun(id) {
  if (bench.current !== id) watch(id);
}

async function watch(id) {
  clearTimeout(bench.polling);
  if (bench.current !== id) $("bench-run").replaceChildren(el("p", { class: "muted", text: "Loading the run…" }));
  bench.current = id;
  // the address names the run shown (without a hashchange), unless the user has gone to another section meanwhile
  if (/^#benchmarks\b/.test(location.hash) && location.hash !== `#benchmarks/${id}`) {
    history.replaceState(null, "", `#benchmarks/${encodeURIComponent(id)}`);
  }
  const box = $("bench-run");
  try {
    const run = await api(`/api/benchmarks/${encodeURIComponent(id)}`);
    if (bench.current !== id) return;
    $("bench-status").replaceChildren(el("h3", {}, run.name || run.id, " ", el("span", { class: "muted small", text: `${run.scenario} · ${fmtTime(run.created_at)}` })), progressView(run));
    $("bench-status").dataset.status = run.status;
    if (run.status === "running") {
      $("bench-status").append(el("button", { type: "button", class: "button button-secondary button-small", text: "Cancel run",
        onclick: async () => {
          try {
            await postJson(`/api/benchmarks/${encodeURIComponent(id)}/cancel`, {});
          } catch (err) {
            showError($("bench-error"), err.message);
          }
        } }));
      bench.polling = setTimeout(() => watch(id), 500);
      return;
    }
    if (run.error) $("bench-status").append(el("div", { class: "error-box", role: "alert", text: run.error }));
    box.replaceChildren(...resultsView(run));
    loadRuns();
  } catch (err) {
    showError($("bench-error"), err.message);
  }
}

function resultKey(r) {
  return `${targetLabel(r.target)} · batch ${r.batch_size} · conc. ${r.concurrency}${r.qps ? ` · ${r.qps} qps` : ""}`;
}

/** Legend names without the parts every series shares (said once, above the charts): "batch 1", "batch 2". */
export function shortNames(labels) {
  const split = labels.map((l) => l.split(" · "));
  if (labels.length < 2) return { common: "", names: labels };
  const common = split[0].filter((part) => split.every((parts) => parts.includes(part)));
  const names = split.map((parts) => parts.filter((p) => !common.includes(p)).join(" · ") || "all");
  return { common: common.join(" · "), names };
}

function resultsView(run) {
  const results = run.results || [];
  if (!results.length) return [el("p", { class: "muted", text: "This run has no results." })];
  const table = el("table", { class: "small-table results-table" },
    el("thead", {}, el("tr", {}, ["target", "batch", "conc.", "queries", "inputs/s", "p50", "p90", "p99", "max", "compute", "queue", "network"]
      .map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, results.map((r) => el("tr", {},
      el("td", { text: targetLabel(r.target) }), el("td", { text: r.batch_size }), el("td", { text: r.concurrency }),
      el("td", { text: r.queries }), el("td", { text: fmtNum(r.throughput_ips) }),
      ["p50", "p90", "p99", "max"].map((k) => el("td", { text: fmtMs(r.latency_ms?.[k]) })),
      ["compute", "queue", "network"].map((k) => el("td", { text: fmtMs(r.breakdown_ms?.[k]) }))))));
  const short = shortNames(results.map(resultKey));
  const cdf = lineChart(results.map((r, i) => ({ name: short.names[i], points: r.cdf || [] })),
    { title: "Latency CDF", xLabel: "latency (ms)", yLabel: "fraction of queries", step: true, yMin: 0 });
  const pct = barChart(["p50", "p90", "p95", "p99"], results.map((r, i) => ({ name: short.names[i], values: ["p50", "p90", "p95", "p99"].map((k) => r.latency_ms?.[k]) })),
    { title: "Latency percentiles", xLabel: "percentile", yLabel: "latency (ms)", unit: "ms" });
  const byTarget = new Map();
  for (const r of results) {
    const key = `${targetLabel(r.target)} · conc. ${r.concurrency}`;
    if (!byTarget.has(key)) byTarget.set(key, []);
    byTarget.get(key).push([r.batch_size, r.throughput_ips]);
  }
  const sweep = [...byTarget.values()].some((pts) => pts.length > 1); // a single batch size makes no curve
  const curves = shortNames([...byTarget.keys()]).names;
  const thr = !sweep ? null : lineChart([...byTarget.values()].map((pts, i) => ({ name: curves[i], points: pts.sort((a, b) => a[0] - b[0]) })),
    { title: "Throughput vs batch size", xLabel: "batch size", yLabel: "throughput (inputs/s)", yUnit: "inputs/s", markers: true, yMin: 0, xLog2: true });
  const exportLinks = el("p", { class: "small" }, "Export raw queries: ",
    el("a", { href: `/api/benchmarks/${encodeURIComponent(run.id)}/export?format=csv`, download: `${run.id}.csv`, text: "CSV" }), " · ",
    el("a", { href: `/api/benchmarks/${encodeURIComponent(run.id)}/export?format=json`, text: "JSON" }));
  return [el("div", { class: "table-scroll" }, table),
    short.common ? el("p", { class: "small muted charts-common" }, "Every series: ", el("b", { text: short.common })) : "",
    el("div", { class: "charts" }, cdf, pct, thr), exportLinks];
}

// ---------------------------------------------------------------- past runs and comparison

async function loadRuns() {
  try {
    const doc = await api("/api/benchmarks");
    const runs = doc.runs || [];
    $("bench-runs").replaceChildren(runs.length ? el("table", { class: "small-table" },
      el("thead", {}, el("tr", {}, ["", "run", "scenario", "status", "node", "created", "inputs/s", "p50", "p99"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, runs.map((r) => el("tr", {},
        el("td", {}, el("input", { type: "checkbox", value: r.id, "aria-label": `compare ${r.name || r.id}`, class: "compare-check" })),
        el("td", {}, el("button", { type: "button", class: "button-link", text: r.name || r.id, onclick: () => watch(r.id) })),
        el("td", { text: r.scenario }), el("td", { text: r.status }), el("td", { text: r.node?.name || "—" }),
        el("td", { text: fmtTime(r.created_at) }), el("td", { text: fmtNum(r.summary?.throughput_ips) }),
        el("td", { text: fmtMs(r.summary?.p50_ms) }), el("td", { text: fmtMs(r.summary?.p99_ms) })))))
      : el("p", { class: "muted", text: "No runs yet." }),
    doc.unreachable?.length ? el("p", { class: "muted small", text: `Unreachable: ${doc.unreachable.join(", ")}` }) : "");
  } catch (err) {
    $("bench-runs").replaceChildren(el("div", { class: "error-box", role: "alert", text: `Past runs unavailable: ${err.message}` }));
  }
}

async function compare() {
  const ids = [...$("bench-runs").querySelectorAll(".compare-check:checked")].map((i) => i.value);
  const box = $("bench-compare");
  if (ids.length < 2) {
    box.replaceChildren(el("p", { class: "muted", text: "Tick two or more runs to compare them." }));
    return;
  }
  try {
    const doc = await api(`/api/benchmarks/compare?ids=${ids.map(encodeURIComponent).join(",")}`);
    const rows = doc.rows || [];
    const names = new Map((doc.runs || []).map((r) => [r.id, r.name || r.id]));
    const label = (row) => `${row.run_name || names.get(row.run_id) || row.run_id} · ${targetLabel(row.target || {})} · batch ${row.batch_size} · conc. ${row.concurrency}`;
    const short = shortNames(rows.map(label));
    box.replaceChildren(
      short.common ? el("p", { class: "small muted charts-common" }, "Every series: ", el("b", { text: short.common })) : "",
      el("div", { class: "charts" },
        barChart(["inputs/s"], rows.map((r, i) => ({ name: short.names[i], values: [r.throughput_ips] })), { title: "Throughput across runs", yLabel: "throughput (inputs/s)", unit: "inputs/s" }),
        barChart(["p50", "p99"], rows.map((r, i) => ({ name: short.names[i], values: [r.p50_ms, r.p99_ms] })), { title: "Latency across runs", xLabel: "percentile", yLabel: "latency (ms)", unit: "ms" })));
  } catch (err) {
    box.replaceChildren(el("div", { class: "error-box", role: "alert", text: err.message }));
  }
}

export function initBenchmarks() {
  $("bench-form").addEventListener("submit", onSubmit);
  $("bench-form").elements.scenario.addEventListener("change", updateScenario);
  $("bench-compare-button").addEventListener("click", compare);
  $("bench-refresh").addEventListener("click", loadRuns);
  updateScenario();
  onModels(renderTargetChoices);
  onCluster(renderNodeChoices);
  loadRuns();
}
