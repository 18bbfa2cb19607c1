// Hand-made SVG charts: lines (latency CDF, throughput vs batch size) and grouped bars (percentiles).
// Each returns a <figure> with an accessible title and a legend; colours come from the palette in lib.js.
//
// A chart is drawn at the pixel width it is shown at (a ResizeObserver redraws it when that changes), so its
// axis text stays 11-12 px on a phone and on a wide screen instead of being scaled with the picture.

import { el, svg, PALETTE_COLOURS } from "./lib.js";

const DEFAULT_W = 640;
const M = { top: 18, right: 16, bottom: 46, left: 58 };
const heightFor = (w) => Math.round(Math.min(320, Math.max(220, w * 0.55)));

/** "Nice" ticks covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

export const fmtTick = (v) => (Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(v % 1000 ? 1 : 0)}k` : `${Number(v.toPrecision(4))}`);

function frame(title, size, xLabel, yLabel, xs, ys) {
  const { W, H } = size;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "chart", role: "img", "aria-label": title });
  root.append(svg("title", { text: title }));
  const grid = svg("g", { class: "grid" });
  for (const y of ys.ticks) {
    const py = ys.scale(y);
    grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: py, y2: py }));
    grid.append(svg("text", { x: M.left - 8, y: py + 4, "text-anchor": "end", text: fmtTick(y) }));
  }
  // x labels that would overlap are thinned out, keeping the first and the last
  const minGap = 34;
  let lastX = -Infinity;
  xs.ticks.forEach((x, i) => {
    const px = xs.scale(x);
    grid.append(svg("line", { x1: px, x2: px, y1: H - M.bottom, y2: H - M.bottom + 5 }));
    const isLast = i === xs.ticks.length - 1;
    if (px - lastX < minGap && !isLast) return;
    lastX = px;
    grid.append(svg("text", { x: px, y: H - M.bottom + 18, "text-anchor": "middle", text: xs.label ? xs.label(x) : fmtTick(x) }));
  });
  grid.append(svg("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
  grid.append(svg("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }));
  grid.append(svg("text", { class: "axis-label", x: (M.left + W - M.right) / 2, y: H - 8, "text-anchor": "middle", text: xLabel }));
  grid.append(svg("text", { class: "axis-label", transform: `translate(15 ${(M.top + H - M.bottom) / 2}) rotate(-90)`, "text-anchor": "middle", text: yLabel }));
  root.append(grid);
  return root;
}

function linear(lo, hi, from, to, count) {
  const t = ticks(lo, hi, count);
  const a = Math.min(lo, t[0]);
  const b = Math.max(hi, t[t.length - 1]);
  return { ticks: t, scale: (v) => from + ((v - a) / (b - a || 1)) * (to - from) };
}

/** log2 axis with ticks at the given values (batch sizes 1, 2, 4, 8 ... spaced evenly). */
function log2Axis(values, from, to) {
  const vs = [...new Set(values)].filter((v) => v > 0).sort((a, b) => a - b);
  const lo = Math.log2(vs[0]);
  const hi = Math.log2(vs[vs.length - 1]);
  const pad = hi > lo ? 0 : 1;
  return { ticks: vs, scale: (v) => from + ((Math.log2(v) - lo + pad / 2) / (hi - lo + pad)) * (to - from) };
}

function legend(names) {
  return el("ul", { class: "chart-legend" }, names.map((name, i) =>
    el("li", {}, el("span", { class: "swatch", "aria-hidden": "true", style: `background:${PALETTE_COLOURS[i % PALETTE_COLOURS.length]}` }), name)));
}

/** A figure whose SVG is drawn by draw({W, H}) now and again whenever its width changes. */
function responsive(title, draw, names) {
  let drawnAt = 0;
  const holder = el("div", { class: "chart-holder" });
  const paint = (w) => {
    const W = Math.max(260, Math.round(w));
    if (Math.abs(W - drawnAt) < 4) return;
    drawnAt = W;
    holder.replaceChildren(draw({ W, H: heightFor(W) }));
  };
  paint(DEFAULT_W);
  const figure = el("figure", { class: "chart-figure" }, el("figcaption", { text: title }), holder, legend(names));
  if (typeof ResizeObserver !== "undefined") {
    // observes only while the figure is in the page: a removed chart takes its observer with it
    new ResizeObserver((entries) => {
      const w = entries[0]?.contentRect.width;
      if (w > 0) paint(w);
    }).observe(holder);
  }
  return figure;
}

/**
 * Lines: series = [{name, points: [[x, y], ...]}]; opts: {title, xLabel, yLabel, markers, step, yMin, xMin, xLog2,
 * yFormat}. step draws a staircase (a CDF); xLog2 spaces x values (batch sizes) by their log and ticks at each.
 */
export function lineChart(series, opts = {}) {
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const title = opts.title || "chart";
  if (!all.length) return el("p", { class: "muted", text: `${title}: no data yet.` });
  const xsRaw = all.map((p) => p[0]);
  const ysRaw = all.map((p) => p[1]);
  const draw = ({ W, H }) => {
    const xs = opts.xLog2 ? log2Axis(xsRaw, M.left, W - M.right)
      : linear(opts.xMin ?? Math.min(...xsRaw), Math.max(...xsRaw), M.left, W - M.right, Math.max(3, Math.floor(W / 90)));
    const ys = linear(opts.yMin ?? Math.min(0, ...ysRaw), Math.max(...ysRaw), H - M.bottom, M.top, 5);
    const root = frame(title, { W, H }, opts.xLabel || "", opts.yLabel || "", xs, ys);
    series.forEach((s, i) => {
      const colour = PALETTE_COLOURS[i % PALETTE_COLOURS.length];
      const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
      if (!pts.length) return;
      let d = "";
      pts.forEach(([x, y], j) => {
        const px = xs.scale(x).toFixed(1);
        const py = ys.scale(y).toFixed(1);
        if (j === 0) d += `M${px},${opts.step ? ys.scale(0).toFixed(1) : py}${opts.step ? ` L${px},${py}` : ""}`;
        else if (opts.step) d += ` H${px} V${py}`;
        else d += ` L${px},${py}`;
      });
      const g = svg("g", { class: "series" });
      g.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-linejoin": "round" }, svg("title", { text: s.name })));
      if (opts.markers) {
        for (const [x, y] of pts) {
          g.append(svg("circle", { cx: xs.scale(x), cy: ys.scale(y), r: 4, fill: colour },
            svg("title", { text: `${s.name}: ${opts.xLabel || "x"} ${fmtTick(x)} → ${Number(y.toPrecision(4))} ${opts.yUnit || ""}`.trim() })));
        }
      }
      root.append(g);
    });
    return root;
  };
  return responsive(title, draw, series.map((s) => s.name));
}

/** Grouped bars: groups = ["p50", ...]; series = [{name, values: [..per group]}]; opts: {title, xLabel, yLabel, unit}. */
export function barChart(groups, series, opts = {}) {
  const values = series.flatMap((s) => s.values).filter(Number.isFinite);
  const title = opts.title || "chart";
  if (!values.length) return el("p", { class: "muted", text: `${title}: no data yet.` });
  const draw = ({ W, H }) => {
    const ys = linear(0, Math.max(...values), H - M.bottom, M.top, 5);
    const band = (W - M.left - M.right) / groups.length;
    const root = frame(title, { W, H }, opts.xLabel || "", opts.yLabel || "", { ticks: [], scale: () => 0 }, ys);
    const inner = band * 0.8;
    const barW = inner / Math.max(1, series.length);
    groups.forEach((g, gi) => {
      const x0 = M.left + gi * band + (band - inner) / 2;
      root.append(svg("text", { class: "tick", x: M.left + gi * band + band / 2, y: H - M.bottom + 18, "text-anchor": "middle", text: g }));
      series.forEach((s, si) => {
        const v = s.values[gi];
        if (!Number.isFinite(v)) return;
        const y = ys.scale(v);
        const x = x0 + si * barW;
        root.append(svg("rect", { x, y, width: Math.max(1, barW - 2), height: Math.max(0, H - M.bottom - y),
          fill: PALETTE_COLOURS[si % PALETTE_COLOURS.length], rx: 2 }, svg("title", { text: `${s.name} · ${g}: ${Number(v.toPrecision(4))} ${opts.unit || ""}`.trim() })));
        if (barW >= 30) root.append(svg("text", { class: "bar-value", x: x + (barW - 2) / 2, y: y - 4, "text-anchor": "middle", text: fmtTick(Number(v.toPrecision(3))) }));
      });
    });
    return root;
  };
  return responsive(title, draw, series.map((s) => s.name));
}
