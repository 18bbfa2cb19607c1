// Shared helpers: element building (text only, never innerHTML with server data), formatting, the API client,
// the error banner and the API token kept in this browser.

export const $ = (id) => document.getElementById(id);

/** Element with attributes ({class, text, title, on*: fn, ...}) and children (nodes or strings, as text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** SVG element; attributes are set verbatim, text goes through textContent. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
}

export const fmtPct = (p) => (p > 0 && p < 0.0001 ? "<0.01%" : `${(p * 100).toFixed(p >= 0.995 ? 1 : 2)}%`);
export const fmtMs = (ms) =>
  ms === null || ms === undefined || !Number.isFinite(ms) ? "—" : ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(ms >= 10 ? 1 : 2)} ms`;
export const fmtNum = (n, digits = 1) => (n === null || n === undefined || !Number.isFinite(n) ? "—" : n.toFixed(digits));
export const shortHash = (h) => (h ? h.slice(0, 12) : "—");

export function fmtBytes(n) {
  if (!Number.isFinite(n) || n <= 0) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i >= 3 ? 1 : 0)} ${units[i]}`;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** Only http(s) links from server data become hrefs. */
export function safeHref(url) {
  try {
    const u = new URL(url, location.href);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- the API token (for nodes with --api-token)

const TOKEN_KEY = "carml-api-token";
export const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders() {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** fetch + JSON; throws an Error whose message is safe to show (the server's {"error": ...} text). */
export async function api(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, { ...options, headers: { Accept: "application/json", ...authHeaders(), ...options.headers } });
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
    const error = new Error(`${message} (HTTP ${resp.status})`);
    error.status = resp.status;
    throw error;
  }
  if (body === null) throw new Error(`The node answered ${path} with something that is not JSON.`);
  return body;
}

export const postJson = (path, doc) =>
  api(path, { method: "POST", body: JSON.stringify(doc), headers: { "Content-Type": "application/json" } });

// ---------------------------------------------------------------- messages

/** An error box inside a section (null clears it). */
export function showError(box, message) {
  box.replaceChildren();
  if (message) box.append(el("div", { class: "error-box", role: "alert" }, el("strong", { text: "Error: " }), message));
}

/** The page-wide banner, for failures that belong to no one section. */
export function banner(message, kind = "error") {
  const box = $("banner");
  if (!message) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  box.className = `banner banner-${kind}`;
  box.replaceChildren(
    el("span", { text: message }),
    el("button", { type: "button", class: "icon-button", "aria-label": "Dismiss", text: "×", onclick: () => banner(null) }),
  );
}

export const smooth = () => (matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth");

/** A thumbnail that degrades to a placeholder when the browser cannot decode the file. */
export const thumb = (src, alt) =>
  el("img", {
    src,
    alt,
    loading: "lazy",
    onerror: (e) => e.target.replaceWith(el("span", { class: "thumb-missing", role: "img", "aria-label": alt || "no preview", text: "?" })),
  });

/** A stable colour per key (node id, process), from a small palette readable on light and dark. */
const PALETTE = ["#4c6ef5", "#12b886", "#f76707", "#ae3ec9", "#1098ad", "#e03131", "#74b816", "#f59f00", "#5c7cfa", "#d6336c"];
export function colour(key, known = new Map()) {
  if (!known.has(key)) known.set(key, PALETTE[known.size % PALETTE.length]);
  return known.get(key);
}
export const PALETTE_COLOURS = PALETTE;
