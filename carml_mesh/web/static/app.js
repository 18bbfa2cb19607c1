// carml-mesh node page: plain ES module, DOM APIs only (never innerHTML with server data).
//
// Structure, top to bottom:
//   1. helpers      el() builds elements, fmt* format numbers, api() fetches JSON and turns any failure
//                   into an Error whose message is safe to show (the server's {"error": ...} text).
//   2. node         header, hardware/framework facts, manifest problems, workers   (GET /api/node)
//   3. models       cards with attributes, framework chips, hashes                 (GET /api/models)
//   4. form         model/framework/top-k controls, uploads, drop zone, samples    (GET /api/samples)
//   5. predict      one POST /api/predict per framework (one, or all when comparing), then results
//   6. results      per image: thumbnail and one column per framework (top-k bars, timing breakdown)
//   7. init         wires the events and loads everything.

// ---------------------------------------------------------------- 1. helpers

const $ = (id) => document.getElementById(id);

/** Element with attributes ({class, text, title, ...}) and children (nodes or strings, as text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

const fmtPct = (p) => (p > 0 && p < 0.0001 ? "<0.01%" : `${(p * 100).toFixed(p >= 0.995 ? 1 : 2)}%`);
const fmtMs = (ms) => (ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(ms >= 10 ? 1 : 2)} ms`);
const shortHash = (h) => (h ? h.slice(0, 12) : "—");

function fmtBytes(n) {
  if (!Number.isFinite(n) || n <= 0) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i >= 3 ? 1 : 0)} ${units[i]}`;
}

/** Only http(s) links from server data become hrefs. */
function safeHref(url) {
  try {
    const u = new URL(url, location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

/** fetch + JSON; throws an Error with a human-readable message on network or HTTP failure. */
async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, { ...options, headers: { Accept: "application/json", ...options.headers } });
  } catch (err) {
    throw new Error(`Cannot reach the node (${err.message || "network error"}).`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    /* not JSON: handled below */
  }
  if (!resp.ok) {
    const message = body && typeof body.error === "string" ? body.error : `${resp.status} ${resp.statusText}`;
    throw new Error(`${message} (HTTP ${resp.status})`);
  }
  if (body === null) throw new Error(`The node answered ${path} with something that is not JSON.`);
  return body;
}

function showError(containerId, message) {
  const box = $(containerId);
  box.replaceChildren();
  if (message) box.append(el("div", { class: "error-box", role: "alert" }, el("strong", { text: "Error: " }), message));
}

// ---------------------------------------------------------------- 2. node

function renderNode(info) {
  $("node-name").textContent = info.name || "unnamed node";
  $("node-id").textContent = info.id || "";
  const badge = $("node-badge");
  badge.textContent = info.ready ? "ready" : "starting";
  badge.className = `badge ${info.ready ? "badge-ok" : "badge-pending"}`;
  $("footer-version").textContent = `carml-mesh ${info.version || ""}`.trim();
  document.title = `${info.name || "node"} · carml-mesh`;

  const hw = info.hardware || {};
  const gpus = (hw.gpus || []).map((g) => `${g.name} (${fmtBytes(g.memory_bytes)})`);
  const fact = (term, ...value) => el("div", {}, el("dt", { text: term }), el("dd", {}, ...value));
  const chips = (info.frameworks || []).map((f) => el("span", { class: "chip" }, f.name, el("span", { class: "chip-sub", text: f.version })));
  $("node-facts").replaceChildren(
    fact("CPU", `${hw.cpu_model || "unknown"} · ${hw.cores ?? "?"} cores`),
    fact("Memory", fmtBytes(hw.memory_bytes)),
    fact("GPU", gpus.length ? gpus.join(", ") : "none"),
    fact("Devices", (info.devices || []).join(", ") || "none"),
    fact("Executor", info.executor || "—"),
    fact("Frameworks", chips.length ? el("span", { class: "chips" }, chips) : "none installed"),
  );

  const problems = [...(info.problems || []),
    ...Object.entries(info.load_errors || {}).map(([key, msg]) => `${key}: ${msg}`)];
  $("node-warnings").replaceChildren(...(problems.length ? [el("div", { class: "warning-box", role: "status" },
    el("strong", { text: (info.problems || []).length ? "Manifest problems" : "Load errors" }), el("ul", {}, problems.map((p) => el("li", { text: p }))))] : []));
  renderWorkers(info.workers || []);
}

function renderWorkers(workers) {
  $("workers").hidden = workers.length === 0;
  if (!workers.length) return;
  const cols = ["framework", "device", "pid", "alive", "in_flight", "requests", "failures", "restarts"];
  const head = el("tr", {}, cols.map((c) => el("th", { scope: "col", text: c.replace("_", " ") })));
  const rows = workers.map((w) => el("tr", {}, cols.map((c) => el("td", { text: c === "alive" ? (w.alive ? "yes" : "no") : w[c] ?? "—" }))));
  $("workers-body").replaceChildren(el("table", { class: "small-table" }, el("thead", {}, head), el("tbody", {}, rows)));
}

async function loadNode() {
  try {
    const info = await api("/api/node");
    showError("node-error", null);
    renderNode(info);
    if (!info.ready) setTimeout(loadNode, 2000);
  } catch (err) {
    $("node-badge").textContent = "unreachable";
    $("node-badge").className = "badge badge-bad";
    showError("node-error", err.message);
  }
}

// ---------------------------------------------------------------- 2b. cluster (GET /api/cluster, every 2 s)

const STATE_BADGE = { alive: "badge-ok", suspect: "badge-pending", dead: "badge-bad", left: "badge-pending" };

function renderCluster(view) {
  $("cluster-name").textContent = view.cluster ? `· ${view.cluster}${view.encrypted ? " · encrypted" : ""}` : "";
  const rows = view.members.map((m) => {
    const card = m.card || {};
    const name = card.name || (m.self ? "this node" : "…");
    const link = m.http && !m.self ? el("a", { href: m.http + "/", text: name }) : el("span", { text: name });
    return el("tr", {},
      el("td", {}, link, m.self ? el("span", { class: "muted", text: " (you)" }) : null),
      el("td", {}, el("span", { class: `badge ${STATE_BADGE[m.state] || ""}`, text: m.state })),
      el("td", {}, el("code", { text: m.address || "" })),
      el("td", { text: card.cores ? `${card.cores} cores${card.gpus && card.gpus.length ? " · " + card.gpus.join(", ") : ""}` : "—" }),
      el("td", { text: (card.frameworks || []).map((f) => `${f.name} ${f.version}`).join(", ") || "—" }),
      el("td", { text: card.models ? String(card.models.length) : "—" }),
      el("td", { text: card.warm ? card.warm.length ? card.warm.join(", ") : "none" : "—" }),
      el("td", { text: m.last_heard_s === null || m.last_heard_s === undefined ? "—" : `${m.last_heard_s.toFixed(1)} s ago` }));
  });
  const head = ["Node", "State", "Gossip address", "Hardware", "Frameworks", "Models", "Warm", "Last heard"];
  $("cluster").replaceChildren(el("table", { class: "cluster-table" },
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, ...rows)));
}

async function loadCluster() {
  try {
    renderCluster(await api("/api/cluster"));
  } catch (err) {
    $("cluster").replaceChildren(el("p", { class: "muted", text: `Cluster view unavailable: ${err.message}` }));
  }
  setTimeout(loadCluster, 2000);
}

// ---------------------------------------------------------------- 3. models

const state = { models: [], items: [], samples: [], busy: false };

function frameworkChip(f) {
  const warm = f.loaded && f.loaded.length > 0;
  const title = f.available ? `${f.name} ${f.constraint}` + (warm ? ` · loaded on ${f.loaded.join(", ")}` : "") : f.problem || "not available";
  return el("li", { class: `chip ${f.available ? "" : "chip-off"}`, title },
    f.name, el("span", { class: "chip-sub", text: f.constraint }),
    warm ? el("span", { class: "warm", text: "warm" }) : null,
    f.available ? null : el("span", { class: "visually-hidden", text: ` (unavailable: ${f.problem || "unknown"})` }));
}

function modelCard(m, index) {
  const attrs = Object.entries(m.attributes || {});
  const problems = m.frameworks.filter((f) => !f.available && f.problem);
  const canTry = m.input_type === "image" && m.frameworks.some((f) => f.available);
  return el("article", { class: "card" },
    el("header", { class: "card-head" },
      el("h3", {}, m.name, " ", el("span", { class: "version", text: m.version })),
      el("span", { class: "muted small", text: [m.task, m.license].filter(Boolean).join(" · ") })),
    m.description ? el("p", { class: "description", text: m.description }) : null,
    el("p", { class: "small muted", text: `input ${m.input_type} ${JSON.stringify(m.inputs?.[0]?.dimensions || [])}`
      + ` · ${m.output?.classes ?? "?"} classes · devices ${(m.devices || []).join(", ")}` }),
    attrs.length ? el("table", { class: "small-table attrs" }, el("caption", { class: "visually-hidden", text: `${m.name} attributes` }),
      el("tbody", {}, attrs.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k.replaceAll("_", " ") }), el("td", { text: typeof v === "object" ? JSON.stringify(v) : v }))))) : null,
    el("ul", { class: "chips", "aria-label": "frameworks" }, m.frameworks.map(frameworkChip)),
    problems.length ? el("ul", { class: "problem-list small" }, problems.map((f) => el("li", { text: `${f.name}: ${f.problem}` }))) : null,
    el("p", { class: "small hashes" }, m.frameworks.filter((f) => f.sha256).map((f) =>
      el("span", {}, `${f.name} `, el("code", { title: `sha256 ${f.sha256}`, text: shortHash(f.sha256) })))),
    (m.references || []).length ? el("p", { class: "small refs" }, m.references.map((r) => {
      const href = safeHref(r);
      return href ? el("a", { href, rel: "noopener noreferrer", target: "_blank", text: new URL(href).hostname }) : el("span", { text: r });
    })) : null,
    canTry ? el("button", { type: "button", class: "button button-secondary button-small", text: "Try this model",
      onclick: () => selectModel(index) }) : null);
}

async function loadModels() {
  try {
    const { models } = await api("/api/models");
    state.models = models || [];
    showError("models-error", null);
    $("models").replaceChildren(...(state.models.length ? state.models.map(modelCard) : [el("p", { class: "muted", text: "This node serves no models." })]));
    populateModelSelect();
  } catch (err) {
    showError("models-error", err.message);
    $("models").replaceChildren();
  }
}

// ---------------------------------------------------------------- 4. form

const currentModel = () => state.models[Number($("model").value)];
const availableFrameworks = (m) => (m ? m.frameworks.filter((f) => f.available).map((f) => f.name) : []);

function populateModelSelect() {
  const select = $("model");
  const previous = select.value;
  const options = state.models.map((m, i) => ({ m, i })).filter(({ m }) => m.input_type === "image")
    .map(({ m, i }) => el("option", { value: i, disabled: !availableFrameworks(m).length,
      text: `${m.name} ${m.version}${availableFrameworks(m).length ? "" : " (unavailable)"}` }));
  select.replaceChildren(...(options.length ? options : [el("option", { value: "", text: "no image models" })]));
  const firstOk = options.find((o) => !o.disabled);
  if (options.some((o) => o.value === previous && !o.disabled)) select.value = previous;
  else if (firstOk) select.value = firstOk.value;
  updateFrameworkControls();
}

function updateFrameworkControls() {
  const m = currentModel();
  const names = availableFrameworks(m);
  const select = $("framework");
  const previous = select.value;
  select.replaceChildren(el("option", { value: "", text: "auto" }), ...names.map((n) => el("option", { value: n, text: n })));
  if (names.includes(previous)) select.value = previous;
  const compare = $("compare");
  compare.disabled = names.length < 2;
  if (compare.disabled) compare.checked = false;
  select.disabled = compare.checked;
  $("compare-hint").textContent = compare.checked ? `Each image is sent once per framework: ${names.join(", ")}.`
    : names.length < 2 && m ? "Comparison needs at least two available frameworks." : "";
  const topK = $("top-k");
  if (m?.output?.classes) topK.max = m.output.classes;
  updateSubmit();
}

function selectModel(index) {
  $("model").value = String(index);
  updateFrameworkControls();
  $("try").scrollIntoView({ behavior: smooth(), block: "start" });
  $("model").focus({ preventScroll: true });
}

/** Selected images: {key, name, thumb, getBlob(), sample?} */
function addItem(item) {
  if (state.items.some((it) => it.key === item.key)) return;
  state.items.push(item);
  renderTray();
}

function removeItem(key) {
  const item = state.items.find((it) => it.key === key);
  if (item && !item.sample) URL.revokeObjectURL(item.thumb);
  state.items = state.items.filter((it) => it.key !== key);
  renderTray();
}

function addFiles(fileList) {
  const files = [...fileList];
  const images = files.filter((f) => !f.type || f.type.startsWith("image/"));
  images.forEach((f) => addItem({ key: `file:${f.name}:${f.size}:${f.lastModified}`, name: f.name,
    thumb: URL.createObjectURL(f), getBlob: async () => f }));
  showError("predict-error", images.length < files.length ? `Skipped ${files.length - images.length} file(s) that are not images.` : null);
}

function toggleSample(sample) {
  const key = `sample:${sample.url}`;
  if (state.items.some((it) => it.key === key)) return removeItem(key);
  addItem({ key, name: sample.name, thumb: sample.url, sample: true, getBlob: async () => {
    let resp;
    try { resp = await fetch(sample.url); } catch { throw new Error(`Cannot fetch sample ${sample.name}.`); }
    if (!resp.ok) throw new Error(`Cannot fetch sample ${sample.name} (HTTP ${resp.status}).`);
    return resp.blob();
  } });
}

function renderTray() {
  const keys = new Set(state.items.map((it) => it.key));
  for (const btn of $("samples").querySelectorAll("button[data-key]")) btn.setAttribute("aria-pressed", keys.has(btn.dataset.key));
  $("tray").replaceChildren(...(state.items.length ? state.items.map((it) => el("li", { class: "tray-item" },
    thumb(it.thumb, ""), el("span", { class: "tray-name", text: it.name, title: it.name }),
    el("button", { type: "button", class: "icon-button", "aria-label": `Remove ${it.name}`, text: "×", onclick: () => removeItem(it.key) })))
    : [el("li", { class: "muted tray-empty", text: "No images selected yet." })]));
  $("clear-selection").hidden = state.items.length === 0;
  updateSubmit();
}

function renderSamples(samples) {
  state.samples = samples;
  // samples.json says which model each sample suits; show those for the chosen model (all when untagged)
  const model = currentModel();
  const suited = samples.filter((s) => !s.models || !s.models.length || !model || s.models.includes(model.name));
  $("samples").replaceChildren(...(suited.length ? suited.map((s) => el("button", {
    type: "button", class: "sample", "data-key": `sample:${s.url}`, "aria-pressed": "false",
    title: s.label ? `${s.name}: ${s.label}` : s.name, onclick: () => toggleSample(s) },
    thumb(s.url, ""), el("span", { class: "sample-name", text: s.name })))
    : [el("p", { class: "muted", text: samples.length ? "No bundled samples suit this model; upload your own."
      : "This node has no bundled sample images; upload your own." })]));
  renderTray();
}

async function loadSamples() {
  try {
    renderSamples((await api("/api/samples")).samples || []);
  } catch (err) {
    $("samples").replaceChildren(el("p", { class: "muted", text: `Samples unavailable: ${err.message}` }));
  }
}

function updateSubmit() {
  const ok = !state.busy && state.items.length > 0 && availableFrameworks(currentModel()).length > 0;
  $("submit").disabled = !ok;
  $("submit").classList.toggle("busy", state.busy);
  $("submit").querySelector(".label").textContent = state.busy ? "Classifying…" : "Classify";
}

// ---------------------------------------------------------------- 5. predict

async function predictOnce(model, framework, topK, blobs) {
  const form = new FormData();
  form.append("model", model.name);
  form.append("version", model.version);
  if (framework) form.append("framework", framework);
  form.append("top_k", String(topK));
  blobs.forEach(({ blob, name }) => form.append("image", blob, name));
  const started = performance.now();
  const doc = await api("/api/predict", { method: "POST", body: form });
  return { doc, roundTripMs: performance.now() - started };
}

async function onSubmit(event) {
  event.preventDefault();
  const model = currentModel();
  if (state.busy || !model || !state.items.length) return;
  const topK = Math.max(1, Math.min(Number($("top-k").value) || 5, model.output?.classes || 1000));
  $("top-k").value = topK;
  const frameworks = $("compare").checked ? availableFrameworks(model) : [$("framework").value || null];
  const items = [...state.items];
  state.busy = true;
  updateSubmit();
  showError("predict-error", null);
  $("results").setAttribute("aria-busy", "true");
  try {
    const blobs = await Promise.all(items.map(async (it) => ({ name: it.name, blob: await it.getBlob() })));
    const runs = [];
    for (const fw of frameworks) {
      $("submit-status").textContent = frameworks.length > 1 ? `Running ${fw}…` : "";
      try {
        runs.push({ framework: fw, ...(await predictOnce(model, fw, topK, blobs)) });
      } catch (err) {
        if (frameworks.length === 1) throw err;
        runs.push({ framework: fw, error: err.message });
      }
    }
    renderResults(model, items, runs);
    $("submit-status").textContent = `Done: ${items.length} image(s), ${runs.length} run(s).`;
  } catch (err) {
    showError("predict-error", err.message);
    $("submit-status").textContent = "";
  } finally {
    state.busy = false;
    $("results").setAttribute("aria-busy", "false");
    updateSubmit();
    loadModels(); // refresh the "warm" markers
    loadNode();
  }
}

// ---------------------------------------------------------------- 6. results

const STAGES = ["decode", "preprocess", "queue", "compute", "postprocess"];
const STAGE_NOTES = {
  decode: "image bytes to pixels", preprocess: "resize, crop, normalise", queue: "waiting for a batch and a worker",
  compute: "the framework's forward pass (shared by the batch)", postprocess: "softmax and top-k",
  other: "total minus the stages: transport, worker hand-off, a lazy model load",
};
const smooth = () => (matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth");

/** A thumbnail that degrades to a plain placeholder when the browser cannot decode the file. */
const thumb = (src, alt) => el("img", { src, alt, loading: "lazy", onerror: (e) => e.target.replaceWith(
  el("span", { class: "thumb-missing", role: "img", "aria-label": alt || "no preview", text: "?" })) });

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
  if (run.error) {
    return el("div", { class: "run" }, el("h4", { text: run.framework || "auto" }),
      el("div", { class: "error-box", role: "alert", text: run.error }));
  }
  const d = run.doc;
  const result = d.results?.[imageIndex];
  if (!result) return el("div", { class: "run" }, el("p", { class: "muted", text: "No result for this image." }));
  return el("div", { class: "run" },
    el("h4", {}, `${d.framework}/${d.device}`),
    predictionList(result.predictions || []),
    result.timings_ms ? timingBreakdown(result.timings_ms) : null,
    el("p", { class: "small muted served" }, `served by ${d.node?.name || d.node?.id || "?"} · ${d.framework}/${d.device}`,
      ` · batch ${d.batch_size} · round trip ${fmtMs(run.roundTripMs)}`));
}

function renderResults(model, items, runs) {
  $("results-section").hidden = false;
  const cards = items.map((it, i) => el("article", { class: "result card" },
    el("div", { class: "result-image" }, thumb(it.thumb, it.name), el("span", { class: "small tray-name", text: it.name })),
    el("div", { class: `runs runs-${Math.min(runs.length, 3)}` }, runs.map((run) => runColumn(run, i)))));
  $("results").replaceChildren(el("p", { class: "muted", text: `${model.name} ${model.version} · ${items.length} image(s)` +
    (runs.length > 1 ? ` · compared ${runs.map((r) => r.framework).join(" vs ")}` : "") }), ...cards);
  $("results-section").scrollIntoView({ behavior: smooth(), block: "start" });
}

// ---------------------------------------------------------------- 7. init

function wireDropZone() {
  const zone = $("drop-zone");
  const stop = (e) => { e.preventDefault(); e.stopPropagation(); };
  ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (e) => { stop(e); zone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, (e) => { stop(e); zone.classList.remove("dragging"); }));
  zone.addEventListener("drop", (e) => addFiles(e.dataTransfer?.files || []));
  // a file dropped beside the zone must not navigate away from the page
  ["dragover", "drop"].forEach((t) => window.addEventListener(t, (e) => e.preventDefault()));
}

function init() {
  $("model").addEventListener("change", () => { updateFrameworkControls(); renderSamples(state.samples); });
  $("compare").addEventListener("change", updateFrameworkControls);
  $("files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("clear-selection").addEventListener("click", () => [...state.items].forEach((it) => removeItem(it.key)));
  $("predict-form").addEventListener("submit", onSubmit);
  wireDropZone();
  renderTray();
  loadNode();
  loadCluster();
  loadModels();
  loadSamples();
}

init();
