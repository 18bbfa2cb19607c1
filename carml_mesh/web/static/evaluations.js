// Evaluations: start an accuracy evaluation on the bundled digits split (POST /api/evaluations), watch it, show
// top-1 / top-5 and the most confused classes; the past evaluations across the mesh.

import { $, api, el, fmtPct, fmtTime, postJson, showError } from "./lib.js";
import { onModels, models } from "./models.js";

const ev = { timer: null, current: null };

function renderModelChoices() {
  const select = $("eval-model");
  const previous = select.value;
  const options = [];
  for (const m of models.local) {
    for (const f of m.frameworks.filter((f) => f.available)) options.push({ model: m.name, version: m.version, framework: f.name });
  }
  select.replaceChildren(...options.map((o) => el("option", { value: JSON.stringify(o), text: `${o.model} ${o.version} · ${o.framework}` })));
  const digits = options.find((o) => o.model === "digits-cnn");
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  else if (digits) select.value = JSON.stringify(digits);
}

function resultView(e) {
  const p = e.progress || {};
  const confusions = e.confusions || [];
  return el("div", { class: "eval-result" },
    el("p", {}, el("span", { class: `badge badge-${e.status === "done" ? "ok" : e.status === "running" ? "pending" : "bad"}`, text: e.status }),
      ` ${e.model} · ${e.framework || "auto"} · ${e.dataset?.name || ""} (${e.dataset?.images ?? "?"} images, ${e.dataset?.classes ?? "?"} classes)`),
    e.status === "running" ? el("progress", { max: 100, value: Math.round((p.fraction || 0) * 100), "aria-label": "evaluation progress" }) : null,
    e.error ? el("div", { class: "error-box", role: "alert", text: e.error }) : null,
    Number.isFinite(e.top1) ? el("div", { class: "metrics" },
      el("div", { class: "metric" }, el("span", { class: "metric-value", text: fmtPct(e.top1) }), el("span", { class: "metric-name", text: "top-1" })),
      el("div", { class: "metric" }, el("span", { class: "metric-value", text: fmtPct(e.top5) }), el("span", { class: "metric-name", text: "top-5" }))) : null,
    confusions.length ? el("table", { class: "small-table" },
      el("caption", { text: "Most confused classes" }),
      el("thead", {}, el("tr", {}, ["true", "predicted", "count"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, confusions.slice(0, 10).map((c) => el("tr", {}, el("td", { text: c.true }), el("td", { text: c.predicted }), el("td", { text: c.count })))))
      : e.status === "done" ? el("p", { class: "muted", text: "No confusions: every image was classified right." }) : null);
}

async function watch(id) {
  clearTimeout(ev.timer);
  ev.current = id;
  try {
    const e = await api(`/api/evaluations/${encodeURIComponent(id)}`);
    if (ev.current !== id) return;
    $("eval-result").replaceChildren(resultView(e));
    $("eval-result").dataset.status = e.status;
    if (e.status === "running" || e.status === "queued") ev.timer = setTimeout(() => watch(id), 500);
    else loadList();
  } catch (err) {
    showError($("eval-error"), err.message);
  }
}

async function loadList() {
  try {
    const doc = await api("/api/evaluations");
    const items = doc.evaluations || doc.items || doc.runs || [];
    $("eval-list").replaceChildren(items.length ? el("table", { class: "small-table" },
      el("thead", {}, el("tr", {}, ["evaluation", "model", "status", "top-1", "top-5", "created"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, items.map((e) => el("tr", {},
        el("td", {}, el("button", { type: "button", class: "button-link", text: e.id.slice(0, 8), onclick: () => watch(e.id) })),
        el("td", { text: `${e.model} · ${e.framework || "auto"}` }), el("td", { text: e.status }),
        el("td", { text: Number.isFinite(e.top1) ? fmtPct(e.top1) : "—" }), el("td", { text: Number.isFinite(e.top5) ? fmtPct(e.top5) : "—" }),
        el("td", { text: fmtTime(e.created_at) })))))
      : el("p", { class: "muted", text: "No evaluations yet." }));
  } catch (err) {
    $("eval-list").replaceChildren(el("div", { class: "error-box", role: "alert", text: `Evaluations unavailable: ${err.message}` }));
  }
}

export function initEvaluations() {
  $("eval-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const raw = $("eval-model").value;
    if (!raw) {
      showError($("eval-error"), "This node serves no model to evaluate.");
      return;
    }
    const button = $("eval-form").querySelector("button[type=submit]");
    button.disabled = true; // one evaluation per click, however impatient the clicking
    button.textContent = "Starting…";
    try {
      const started = await postJson("/api/evaluations", { ...JSON.parse(raw), dataset: "digits" });
      showError($("eval-error"), null);
      watch(started.id);
    } catch (err) {
      showError($("eval-error"), err.message);
    } finally {
      button.disabled = false;
      button.textContent = "Evaluate";
    }
  });
  onModels(renderModelChoices);
  loadList();
}
