// Models: the catalogue across the mesh (this node's models in detail, and those the members' cards list), one
// model's manifest, attributes, deployments and feedback (ratings and comments), and the deploy form.

import { $, api, authHeaders, el, fmtTime, getToken, postJson, safeHref, setToken, shortHash, showError } from "./lib.js";
import { members, onCluster, onReconnect, restartCluster } from "./cluster.js";

export const models = { local: [], selected: null, listeners: new Set(), filter: "", shownKey: "", token: 0, drawnLocal: false };
const FILTER_FROM = 9; // models before the catalogue offers a filter

/** fn(localModels) whenever this node's models are (re)loaded. */
export function onModels(fn) {
  models.listeners.add(fn);
  if (models.local.length) fn(models.local);
}

/** name@version -> [member names] for every model some alive member's card lists. */
export function deployments() {
  const where = new Map();
  for (const m of members()) {
    if (m.state !== "alive") continue;
    for (const key of m.card?.models || []) {
      if (!where.has(key)) where.set(key, []);
      where.get(key).push(m);
    }
  }
  return where;
}

function catalogue() {
  const where = deployments();
  const rows = new Map();
  for (const m of models.local) rows.set(`${m.name}@${m.version}`, { name: m.name, version: m.version, local: m });
  for (const key of where.keys()) {
    if (!rows.has(key)) {
      const [name, version] = key.split("@");
      rows.set(key, { name, version, local: null });
    }
  }
  return [...rows.entries()].map(([key, row]) => ({ ...row, key, nodes: where.get(key) || [] }))
    .sort((a, b) => a.key.localeCompare(b.key));
}

function renderCatalogue() {
  const all = catalogue();
  const words = models.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const rows = words.length ? all.filter((r) => words.every((w) => `${r.key} ${r.local?.task || ""}`.toLowerCase().includes(w))) : all;
  $("model-filter-row").hidden = all.length < FILTER_FROM && !models.filter;
  // the cluster sends a new document on every change of load: rebuild the list (and lose the keyboard focus in
  // it) only when what it shows changed
  const shownKey = JSON.stringify([rows.map((r) => [r.key, r.local?.task, r.nodes.length]), models.selected]);
  if (shownKey !== models.shownKey) {
    models.shownKey = shownKey;
    paintCatalogue(rows, all.length);
  }
  if (!models.selected) {
    if (rows.length) selectModel(rows[0].key);
    return;
  }
  const selected = all.find((r) => r.key === models.selected);
  // drawn from a peer's card before this node's models arrived: draw it again, with the manifest
  if (selected && Boolean(selected.local) !== models.drawnLocal) selectModel(models.selected);
  else renderWhere();
}

function paintCatalogue(rows, total) {
  const list = $("model-list");
  list.replaceChildren(...(rows.length ? rows.map((row) => {
    const m = row.local;
    const selected = models.selected === row.key;
    return el("li", {},
      el("button", { type: "button", class: `model-item${selected ? " selected" : ""}`, "aria-pressed": String(selected),
        "data-model": row.name, onclick: () => selectModel(row.key) },
        el("span", { class: "model-item-name" }, row.name, " ", el("span", { class: "version", text: row.version })),
        el("span", { class: "small muted", text: [m?.task, `${row.nodes.length} node(s)`].filter(Boolean).join(" · ") })));
  }) : [el("li", { class: "muted", text: total ? `No model matches “${models.filter}”.` : "No models in the mesh yet." })]));
}

/** "Deployed on": follows the cluster (a peer's card may arrive after the details were drawn). */
function renderWhere() {
  const box = $("model-where");
  if (!box || box.dataset.key !== models.selected) return;
  const row = catalogue().find((r) => r.key === models.selected);
  box.replaceChildren(el("span", {}, "Deployed on: ", (row?.nodes || []).length
    ? row.nodes.map((n, i) => {
      const href = n.http && !n.self ? safeHref(`${n.http}/#models`) : null; // a peer's card is data: http(s) only
      return [i ? ", " : "", href ? el("a", { href, text: n.name }) : el("b", { text: n.name })];
    })
    : el("span", { class: "muted", text: "no alive member lists it" })));
}

export async function loadModels() {
  try {
    models.local = (await api("/api/models")).models || [];
    showError($("models-error"), null);
  } catch (err) {
    showError($("models-error"), err.message);
  }
  renderCatalogue();
  for (const fn of models.listeners) fn(models.local);
}

async function selectModel(key) {
  const token = ++models.token; // a slower answer for a model clicked earlier must not land in this one's details
  const row = catalogue().find((r) => r.key === key);
  models.selected = key;
  models.drawnLocal = Boolean(row?.local); // (before renderCatalogue, which compares it)
  renderCatalogue();
  const [name, version] = key.split("@");
  const box = $("model-detail");
  box.replaceChildren(el("h3", {}, name, " ", el("span", { class: "version", text: version })),
    el("p", { class: "small", id: "model-where", "data-key": key }));
  renderWhere();
  if (row?.local) {
    const loading = el("p", { class: "muted", text: "Loading the manifest…" });
    box.append(loading);
    let part;
    try {
      part = modelDetails(await api(`/api/models/${encodeURIComponent(name)}?version=${encodeURIComponent(version)}`));
    } catch (err) {
      part = el("div", { class: "error-box", role: "alert", text: err.message });
    }
    if (token !== models.token) return;
    loading.replaceWith(part);
  } else {
    box.append(el("p", { class: "muted", text: "This node does not serve this model; open it on a node that does for its manifest." }));
  }
  box.append(feedbackSection(name));
}

function modelDetails(m) {
  const attrs = Object.entries(m.attributes || {});
  const fact = (term, ...value) => el("div", {}, el("dt", { text: term }), el("dd", {}, ...value));
  return el("div", { class: "model-details" },
    m.description ? el("p", { class: "description", text: m.description }) : null,
    el("dl", { class: "facts compact" },
      fact("Task", m.task || "—"),
      fact("License", m.license || "—"),
      fact("Input", `${m.input_type} ${JSON.stringify(m.inputs?.[0]?.dimensions || [])}`),
      fact("Output", `${m.output?.classes ?? "?"} classes`),
      fact("Devices", (m.devices || []).join(", ") || "—"),
      fact("Versions", (m.versions || []).join(", ") || m.version),
      fact("Batching", m.manifest?.batching ? `max ${m.manifest.batching.max_batch_size ?? "—"} · delay ${m.manifest.batching.max_queue_delay_ms ?? "—"} ms` : "—")),
    attrs.length ? el("table", { class: "small-table attrs" },
      el("caption", { text: "Attributes (accuracy and more, from the manifest)" }),
      el("tbody", {}, attrs.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k.replaceAll("_", " ") }),
        el("td", { text: typeof v === "object" ? JSON.stringify(v) : v }))))) : null,
    el("div", { class: "table-scroll" }, el("table", { class: "small-table" },
      el("caption", { text: "Frameworks" }),
      el("thead", {}, el("tr", {}, ["framework", "constraint", "sha256", "state"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, m.frameworks.map((f) => el("tr", {},
        el("td", { text: f.name }), el("td", { text: f.constraint }),
        el("td", {}, el("code", { title: f.sha256 || "", text: shortHash(f.sha256) })),
        el("td", { text: !f.available ? `unavailable: ${f.problem || "?"}` : f.loaded?.length ? `warm on ${f.loaded.join(", ")}` : "available" })))))),
    (m.references || []).length ? el("p", { class: "small refs" }, "References: ", m.references.map((r) => {
      const href = safeHref(r);
      return href ? el("a", { href, rel: "noopener noreferrer", target: "_blank", text: new URL(href).hostname }) : el("span", { text: r });
    })) : null);
}

// ---------------------------------------------------------------- feedback

const stars = (n) => "★".repeat(n) + "☆".repeat(5 - n);

function feedbackSection(name) {
  const list = el("ol", { class: "feedback-list", "aria-live": "polite" }, el("li", { class: "muted", text: "Loading feedback…" }));
  const summary = el("p", { class: "feedback-summary" });
  const error = el("div");
  const ratingName = `rating-${name}`;
  const form = el("form", { class: "feedback-form", novalidate: true },
    el("fieldset", { class: "stars" },
      el("legend", { text: "Your rating" }),
      // 1 to 5 in the markup as on screen, so the arrow keys go the way they point; CSS lights the stars before
      el("div", { class: "star-row" }, [1, 2, 3, 4, 5].map((n) => [
        el("input", { type: "radio", name: ratingName, id: `${ratingName}-${n}`, value: String(n), required: true }),
        el("label", { for: `${ratingName}-${n}`, title: `${n} star${n > 1 ? "s" : ""}` }, "★", el("span", { class: "visually-hidden", text: `${n} stars` })),
      ]))),
    el("div", { class: "field" }, el("label", { for: "fb-comment", text: "Comment" }),
      el("textarea", { id: "fb-comment", name: "comment", rows: 3, maxlength: 2000, placeholder: "What worked, what did not?" })),
    el("div", { class: "form-row" },
      el("div", { class: "field" }, el("label", { for: "fb-author", text: "Name (optional)" }),
        el("input", { id: "fb-author", name: "author", maxlength: 100, autocomplete: "nickname" })),
      el("div", { class: "actions" }, el("button", { type: "submit", class: "button", text: "Send feedback" }))));

  async function refresh() {
    try {
      const doc = await api(`/api/models/${encodeURIComponent(name)}/feedback`);
      summary.replaceChildren(doc.count
        ? el("span", {}, el("span", { class: "stars-shown", "aria-hidden": "true", text: stars(Math.round(doc.average)) }),
          ` ${doc.average.toFixed(2)} / 5 from ${doc.count} rating(s)`)
        : el("span", { class: "muted", text: "No feedback yet: be the first." }),
        doc.unreachable?.length ? el("span", { class: "muted small", text: ` · ${doc.unreachable.length} node(s) unreachable` }) : "");
      list.replaceChildren(...doc.items.map((item) => el("li", { class: "feedback-item" },
        el("div", { class: "feedback-head" },
          el("span", { class: "stars-shown", role: "img", "aria-label": `${item.rating} of 5 stars`, text: stars(item.rating) }),
          el("b", { text: item.author || "anonymous" }),
          el("span", { class: "muted small", text: `${fmtTime(item.created_at)} · via ${item.node?.name || "?"}` })),
        item.comment ? el("p", { class: "feedback-comment", text: item.comment }) : null)));
    } catch (err) {
      list.replaceChildren();
      showError(error, err.message);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const rating = Number(new FormData(form).get(ratingName));
    if (!rating) {
      showError(error, "Choose a rating from 1 to 5 stars.");
      return;
    }
    const doc = { rating, comment: form.elements.comment.value, author: form.elements.author.value };
    const button = form.querySelector("button[type=submit]");
    if (button.disabled) return; // a double click sends the feedback once
    button.disabled = true;
    button.textContent = "Sending…";
    try {
      await postJson(`/api/models/${encodeURIComponent(name)}/feedback`, doc);
      showError(error, null);
      form.reset();
      await refresh();
    } catch (err) {
      showError(error, err.message);
    } finally {
      button.disabled = false;
      button.textContent = "Send feedback";
    }
  });
  refresh();
  return el("section", { class: "feedback", "aria-label": `Feedback on ${name}` }, el("h4", { text: "Feedback" }), summary, form, error, list);
}

// ---------------------------------------------------------------- deploy (POST /api/models, multipart)

function wireDeploy() {
  const form = $("deploy-form");
  $("deploy-token").value = getToken();
  $("deploy-token").addEventListener("change", (e) => {
    setToken(e.target.value.trim());
    restartCluster();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("deploy-status");
    const manifest = $("deploy-manifest").files[0];
    const artifact = $("deploy-artifact").files[0];
    const labels = $("deploy-labels").files[0];
    if (!manifest || !artifact) {
      showError($("deploy-error"), "Choose a manifest (YAML) and an artifact file.");
      return;
    }
    setToken($("deploy-token").value.trim());
    const body = new FormData();
    body.append("manifest", await manifest.text());
    body.append(`artifact.${$("deploy-framework").value}`, artifact, artifact.name);
    if (labels) body.append("labels", await labels.text());
    status.textContent = "Uploading…";
    try {
      const published = await api(`/api/models${$("deploy-replace").checked ? "?replace=true" : ""}`,
        { method: "POST", body, headers: authHeaders() });
      status.textContent = `Published ${published.name} ${published.version}${published.unchanged ? " (unchanged)" : ""}.`;
      showError($("deploy-error"), null);
      form.reset();
      $("deploy-token").value = getToken();
      await loadModels();
    } catch (err) {
      status.textContent = "";
      showError($("deploy-error"), err.status === 401 ? `${err.message} — enter this node's API token.` : err.message);
    }
  });
}

export function initModels() {
  wireDeploy();
  $("model-filter").addEventListener("input", (e) => {
    models.filter = e.target.value.trim();
    renderCatalogue();
  });
  onCluster(() => renderCatalogue());
  onReconnect(loadModels);
  loadModels();
}
