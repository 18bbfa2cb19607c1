// Playground: images (uploads, drops, bundled samples) × targets (models × frameworks × nodes), results side by
// side: top-5 bars, the latency breakdown, the node that served, and a link to the request's trace.

import { $, api, el, fmtMs, fmtPct, showError, smooth, thumb } from "./lib.js";
import { members, onCluster } from "./cluster.js";
import { deployments, onModels, models } from "./models.js";

const pg = { items: [], samples: [], busy: false };
const STAGES = ["decode", "preprocess", "queue", "compute", "postprocess"];
const STAGE_NOTES = {
  decode: "image bytes to pixels", preprocess: "resize, crop, normalise", queue: "waiting for a batch and a worker",
  compute: "the framework's forward pass (shared by the batch)", postprocess: "softmax and top-k",
  other: "total minus the stages: routing, transport, worker hand-off, a lazy model load",
};

// ---------------------------------------------------------------- targets

/** Image models this node knows: its own (with frameworks) and those only peers serve (auto framework). */
function imageModels() {
  const out = models.local.filter((m) => m.input_type === "image")
    .map((m) => ({ name: m.name, version: m.version, frameworks: m.frameworks.filter((f) => f.available).map((f) => f.name) }));
  for (const key of deployments().keys()) {
    const [name, version] = key.split("@");
    if (!out.some((m) => m.name === name && m.version === version) && !models.local.some((m) => m.name === name)) {
      out.push({ name, version, frameworks: [] });
    }
  }
  return out;
}

function renderTargets() {
  const box = $("pg-models");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const list = imageModels();
  box.replaceChildren(...(list.length ? list.map((m, i) => {
    const id = `pg-model-${i}`;
    const value = `${m.name}@${m.version}`;
    return el("div", { class: "target-model" },
      el("input", { type: "checkbox", id, value, checked: checked.size ? checked.has(value) : i === 0, "data-model": m.name, onchange: updateRun }),
      el("label", { for: id }, m.name, " ", el("span", { class: "version", text: m.version })),
      el("span", { class: "chips" }, m.frameworks.length ? m.frameworks.map((f) => {
        const fid = `${id}-${f}`;
        return el("span", { class: "chip-check" },
          el("input", { type: "checkbox", id: fid, value: f, "data-framework-of": value, onchange: updateRun }),
          el("label", { for: fid, text: f }));
      }) : el("span", { class: "muted small", text: "framework: auto (served by a peer)" })));
  }) : [el("p", { class: "muted", text: "No image models in the mesh." })]));
  renderNodes();
  renderSamples();
  updateRun();
}

function renderNodes() {
  const box = $("pg-nodes");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const alive = members().filter((m) => m.state === "alive");
  const key = alive.map((m) => `${m.id}=${m.name}`).join();
  if (box.dataset.key === key) return; // unchanged: keep the boxes (and the keyboard focus) as they are
  box.dataset.key = key;
  box.replaceChildren(...alive.map((m, i) => el("span", { class: "chip-check" },
    el("input", { type: "checkbox", id: `pg-node-${i}`, value: m.id, checked: checked.has(m.id), onchange: updateRun }),
    el("label", { for: `pg-node-${i}`, text: m.name }))));
}

/** [{model, version, framework|null, node|null, nodeName}] */
function targets() {
  const chosen = [...$("pg-models").querySelectorAll("input[data-model]:checked")].map((i) => i.value);
  const nodes = [...$("pg-nodes").querySelectorAll("input:checked")].map((i) => ({ id: i.value, name: i.nextSibling.textContent }));
  const out = [];
  for (const value of chosen) {
    const [model, version] = value.split("@");
    const fws = [...$("pg-models").querySelectorAll(`input[data-framework-of="${CSS.escape(value)}"]:checked`)].map((i) => i.value);
    for (const framework of fws.length ? fws : [null]) {
      for (const node of nodes.length ? nodes : [null]) out.push({ model, version, framework, node: node?.id ?? null, nodeName: node?.name });
    }
  }
  return out;
}

function updateRun() {
  const n = targets().length;
  const ok = !pg.busy && pg.items.length > 0 && n > 0;
  $("pg-run").disabled = !ok;
  $("pg-run").textContent = pg.busy ? "Running…" : `Run ${n || ""} target(s) on ${pg.items.length} image(s)`;
}

// ---------------------------------------------------------------- images

function addItem(item) {
  if (pg.items.some((it) => it.key === item.key)) return;
  pg.items.push(item);
  renderTray();
}

function removeItem(key) {
  const item = pg.items.find((it) => it.key === key);
  if (item && !item.sample) URL.revokeObjectURL(item.thumb);
  pg.items = pg.items.filter((it) => it.key !== key);
  renderTray();
}

function addFiles(fileList) {
  const files = [...fileList];
  const images = files.filter((f) => !f.type || f.type.startsWith("image/"));
  images.forEach((f) => addItem({ key: `file:${f.name}:${f.size}:${f.lastModified}`, name: f.name, thumb: URL.createObjectURL(f), getBlob: async () => f }));
  showError($("pg-error"), images.length < files.length ? `Skipped ${files.length - images.length} file(s) that are not images.` : null);
}

function toggleSample(sample) {
  const key = `sample:${sample.url}`;
  if (pg.items.some((it) => it.key === key)) return removeItem(key);
  addItem({ key, name: sample.name, thumb: sample.url, sample: true, getBlob: async () => {
    const resp = await fetch(sample.url).catch(() => null);
    if (!resp || !resp.ok) throw new Error(`Cannot fetch sample ${sample.name}.`);
    return resp.blob();
  } });
}

function renderTray() {
  const keys = new Set(pg.items.map((it) => it.key));
  for (const btn of $("pg-samples").querySelectorAll("button[data-key]")) btn.setAttribute("aria-pressed", keys.has(btn.dataset.key));
  $("pg-tray").replaceChildren(...(pg.items.length ? pg.items.map((it) => el("li", { class: "tray-item" },
    thumb(it.thumb, ""), el("span", { class: "tray-name", text: it.name, title: it.name }),
    el("button", { type: "button", class: "icon-button", "aria-label": `Remove ${it.name}`, text: "×", onclick: () => removeItem(it.key) })))
    : [el("li", { class: "muted tray-empty", text: "No images selected yet." })]));
  $("pg-clear").hidden = pg.items.length === 0;
  updateRun();
}

function renderSamples() {
  const chosen = new Set([...$("pg-models").querySelectorAll("input[data-model]:checked")].map((i) => i.dataset.model));
  const suited = pg.samples.filter((s) => !s.models?.length || !chosen.size || s.models.some((m) => chosen.has(m)));
  $("pg-samples").replaceChildren(...(suited.length ? suited.map((s) => el("button", {
    type: "button", class: "sample", "data-key": `sample:${s.url}`, "aria-pressed": "false",
    title: s.label ? `${s.name}: ${s.label}` : s.name, onclick: () => toggleSample(s) },
    thumb(s.url, ""), el("span", { class: "sample-name", text: s.name })))
    : [el("p", { class: "muted", text: pg.samples.length ? "No bundled samples suit the chosen models." : "No bundled samples on this node." })]));
  renderTray();
}

// ---------------------------------------------------------------- run

async function predictOnce(target, blobs) {
  const form = new FormData();
  form.append("model", target.model);
  form.append("version", target.version);
  if (target.framework) form.append("framework", target.framework);
  if (target.node) form.append("node", target.node);
  form.append("top_k", "5");
  blobs.forEach(({ blob, name }) => form.append("image", blob, name));
  const started = performance.now();
  const doc = await api("/api/predict", { method: "POST", body: form, headers: { "X-Carml-Trace-Level": "model" } });
  return { doc, roundTripMs: performance.now() - started };
}

async function onRun(event) {
  event.preventDefault();
  const list = targets();
  if (pg.busy || !list.length || !pg.items.length) return;
  const items = [...pg.items];
  pg.busy = true;
  updateRun();
  showError($("pg-error"), null);
  $("pg-results").setAttribute("aria-busy", "true");
  try {
    const blobs = await Promise.all(items.map(async (it) => ({ name: it.name, blob: await it.getBlob() })));
    const runs = [];
    for (const [i, target] of list.entries()) {
      $("pg-status").textContent = `Running ${i + 1} of ${list.length}: ${label(target)}…`;
      try {
        runs.push({ target, ...(await predictOnce(target, blobs)) });
      } catch (err) {
        runs.push({ target, error: err.message });
      }
    }
    renderResults(items, runs);
    $("pg-status").textContent = `Done: ${items.length} image(s) × ${runs.length} target(s).`;
  } catch (err) {
    showError($("pg-error"), err.message);
    $("pg-status").textContent = "";
  } finally {
    pg.busy = false;
    $("pg-results").setAttribute("aria-busy", "false");
    updateRun();
  }
}

const label = (t) => `${t.model} ${t.version} · ${t.framework || "auto"}${t.nodeName ? ` · on ${t.nodeName}` : ""}`;

function predictionList(predictions) {
  return el("ol", { class: "predictions" }, predictions.map((p) => el("li", { class: "prediction" },
    el("div", { class: "pred-line" },
      el("span", { class: "pred-label" }, p.label ?? `class ${p.index}`, " ", el("span", { class: "pred-index", text: `#${p.index}` })),
      el("span", { class: "pred-pct", text: fmtPct(p.probability) })),
    el("div", { class: "bar", "aria-hidden": "true" }, el("span", { style: `width: ${Math.max(0.5, p.probability * 100)}%` })))));
}

function timingBreakdown(t) {
  const total = t.total || STAGES.reduce((s, k) => s + (t[k] || 0), 0) || 1;
  const other = Math.max(0, total - STAGES.reduce((s, k) => s + (t[k] || 0), 0));
  const parts = [...STAGES.map((k) => [k, t[k] || 0]), ["other", other]];
  const describe = parts.map(([k, v]) => `${k} ${fmtMs(v)}`).join(", ");
  return el("div", { class: "timing" },
    el("div", { class: "stack", role: "img", "aria-label": `timing: ${describe}; total ${fmtMs(total)}` },
      parts.filter(([, v]) => v > 0).map(([k, v]) => el("span", { class: `seg seg-${k}`, style: `width: ${(v / total) * 100}%`, title: `${k} ${fmtMs(v)}` }))),
    el("ul", { class: "legend" }, parts.map(([k, v]) => el("li", { title: STAGE_NOTES[k] }, el("span", { class: `swatch seg-${k}`, "aria-hidden": "true" }), `${k} `, el("b", { text: fmtMs(v) }))),
      el("li", { class: "legend-total" }, "total ", el("b", { text: fmtMs(total) }))));
}

function runColumn(run, imageIndex) {
  const head = el("h4", { text: label(run.target) });
  if (run.error) return el("div", { class: "run" }, head, el("div", { class: "error-box", role: "alert", text: run.error }));
  const d = run.doc;
  const result = d.results?.[imageIndex];
  if (!result) return el("div", { class: "run" }, head, el("p", { class: "muted", text: "No result for this image." }));
  return el("div", { class: "run", "data-framework": d.framework, "data-target-node": run.target.nodeName || "" },
    head,
    predictionList(result.predictions || []),
    result.timings_ms ? timingBreakdown(result.timings_ms) : null,
    el("p", { class: "small muted served" },
      "served by ", el("b", { class: "served-node", text: d.node?.name || d.node?.id || "?" }),
      ` · ${d.framework}/${d.device} · batch ${d.batch_size} · round trip ${fmtMs(run.roundTripMs)}`,
      d.trace_id ? [" · ", el("a", { class: "trace-link", href: `#trace/${d.trace_id}`, text: "trace" })] : null));
}

function renderResults(items, runs) {
  const cards = items.map((it, i) => el("article", { class: "result card" },
    el("div", { class: "result-image" }, thumb(it.thumb, it.name), el("span", { class: "small tray-name", text: it.name })),
    el("div", { class: "runs", style: `--runs: ${Math.min(runs.length, 4)}` }, runs.map((run) => runColumn(run, i)))));
  $("pg-results").replaceChildren(...cards);
  $("pg-results").scrollIntoView({ behavior: smooth(), block: "start" });
}

// ---------------------------------------------------------------- init

function wireDropZone() {
  const zone = $("pg-drop");
  const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { stop(e); zone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => { stop(e); zone.classList.remove("dragging"); }));
  zone.addEventListener("drop", (e) => addFiles(e.dataTransfer?.files || []));
  ["dragover", "drop"].forEach((t) => window.addEventListener(t, (e) => e.preventDefault()));
}

export function initPlayground() {
  $("pg-files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("pg-clear").addEventListener("click", () => [...pg.items].forEach((it) => removeItem(it.key)));
  $("pg-form").addEventListener("submit", onRun);
  $("pg-models").addEventListener("change", renderSamples);
  wireDropZone();
  renderTray();
  onModels(renderTargets);
  onCluster(() => {
    // cheap: only the node list and peer-only models change with the cluster
    const before = $("pg-models").childElementCount;
    if (imageModels().length !== before) renderTargets();
    else renderNodes();
  });
  api("/api/samples").then((doc) => { pg.samples = doc.samples || []; renderSamples(); })
    .catch((err) => $("pg-samples").replaceChildren(el("p", { class: "muted", text: `Samples unavailable: ${err.message}` })));
}
