// DOM building, formatting and the small widgets every page uses (tables, sparklines, charts,
// empty and error states). Text always goes in through textContent, never innerHTML: span
// names, log bodies and SQL come from the applications being watched.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "text") el.textContent = value;
    else if (key === "style" && typeof value === "object") {
      for (const [name, v] of Object.entries(value)) {
        if (name.startsWith("--")) el.style.setProperty(name, String(v));
        else el.style[name] = v;
      }
    }
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("a", {href, class}, "text", otherNode, [more]). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as h(). */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

// -- formatting -------------------------------------------------------------------------------

export function fmtMs(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value >= 60000) return `${(value / 60000).toFixed(1)} min`;
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  if (value >= 100) return `${value.toFixed(0)} ms`;
  if (value >= 10) return `${value.toFixed(1)} ms`;
  if (value >= 1) return `${value.toFixed(2)} ms`;
  if (value > 0) return `${(value * 1000).toFixed(0)} µs`;
  return "0 ms";
}

export function fmtNs(ns) {
  return fmtMs(Number(ns) / 1e6);
}

export function fmtPct(rate) {
  if (rate === null || rate === undefined) return "–";
  if (rate === 0) return "0%";
  const pct = rate * 100;
  return pct < 0.1 ? "<0.1%" : pct < 10 ? `${pct.toFixed(1)}%` : `${pct.toFixed(0)}%`;
}

export function fmtNum(value) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (Math.abs(value) >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 1);
}

export function fmtRps(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "0/s";
  if (value < 0.01) return `${(value * 60).toFixed(2)}/min`;
  return `${fmtNum(value)}/s`;
}

/**
 * A wall-clock time (local) from epoch nanoseconds (string) or milliseconds (number); the date
 * is added when asked, or when it is not today.
 */
export function fmtTime(value, withDate = false) {
  const ms = typeof value === "string" ? Number(BigInt(value) / 1000000n) : value;
  const d = new Date(ms);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return withDate || d.toDateString() !== new Date().toDateString() ? `${date} ${time}` : time;
}

export function truncate(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

// -- states -----------------------------------------------------------------------------------

/** What a page or section shows when there is nothing: what happened and what to do. */
export function emptyState(title, ...hints) {
  return h("div", { class: "empty", "data-state": "empty" }, h("strong", { text: title }), hints.map((t) => h("p", {}, t)));
}

/** An API error, shown where the data would have been. */
export function errorState(error) {
  const status = error && error.status ? `HTTP ${error.status}` : "request failed";
  return h(
    "div",
    { class: "error-box", role: "alert", "data-state": "error" },
    h("strong", { text: `${status}${error && error.path ? ` — ${error.path}` : ""}` }),
    h("p", { text: (error && error.message) || String(error) }),
  );
}

export function loading(what = "Loading…") {
  return h("div", { class: "loading", text: what });
}

/** A titled section whose body is filled by `load()`: loading, then content, or the error. */
export function section(title, load, { actions = null, cls = "" } = {}) {
  const body = h("div", { class: "section-body" }, loading());
  const el = h("section", { class: ["card", cls] }, h("header", {}, h("h2", { text: title }), actions), body);
  const done = Promise.resolve()
    .then(load)
    .then((content) => body.replaceChildren(...[content].flat().filter(Boolean)))
    .catch((error) => body.replaceChildren(errorState(error)));
  return { el, done };
}

export function badge(text, kind, title) {
  return h("span", { class: ["badge", kind], title, text });
}

export function statusBadges(stats, slow) {
  const out = [];
  if (stats && stats.error_rate >= FAILING_ERROR_RATE) out.push(badge("failing", "bad", `error rate ${fmtPct(stats.error_rate)}`));
  else if (stats && stats.errors > 0) out.push(badge("errors", "warn", `${stats.errors} errors`));
  if (slow) out.push(badge("slow", "slow", slowTitle(slow)));
  return out;
}

/** One line on why a service is slow (an item of /api/v1/slow-services). */
export function slowTitle(item, withCause = true) {
  const parts = [`p99 ${fmtMs(item.p99_ms)}`];
  if (item.threshold_ms !== undefined && item.threshold_ms !== null) parts.push(`threshold ${fmtMs(item.threshold_ms)}`);
  if (item.baseline_p99_ms !== undefined && item.baseline_p99_ms !== null) parts.push(`baseline p99 ${fmtMs(item.baseline_p99_ms)}`);
  if (withCause && item.cause && item.cause.type) parts.push(`cause: ${causeText(item.cause)}`);
  return parts.join(" · ");
}

/** The likely cause of a slow service, in words. */
export function causeText(cause) {
  const share = cause.share !== undefined && cause.share !== null ? ` (${fmtPct(cause.share)} of its time)` : "";
  if (cause.type === "sql") return `SQL ${truncate(cause.statement || cause.fingerprint || String(cause.target || ""), 80)}${share}`;
  if (cause.type === "edge") return `its calls to ${cause.target}${share}`;
  if (cause.type === "self") return "its own work (no slow call below it)";
  return String(cause.type);
}

// A service (or edge) with at least this share of failed calls is marked failing.
export const FAILING_ERROR_RATE = 0.05;

// -- tables -----------------------------------------------------------------------------------

/**
 * A table. columns: [{key, label, num, render(row) -> node|text, value(row) -> sortable, title}].
 * sort: {key, dir} and onSort(key, dir) make headers clickable (the page keeps sort in the URL).
 * onRow(row, event) makes rows clickable; rowClass(row) adds classes.
 */
export function table({ columns, rows, sort = null, onSort = null, onRow = null, rowClass = null, rowAttrs = null, cls = "" }) {
  let sorted = rows;
  if (sort && sort.key) {
    const col = columns.find((c) => c.key === sort.key);
    if (col) {
      const value = col.value || ((r) => r[col.key]);
      const dir = sort.dir === "asc" ? 1 : -1;
      sorted = [...rows].sort((a, b) => compare(value(a), value(b)) * dir);
    }
  }
  const head = h(
    "tr",
    {},
    columns.map((c) => {
      const active = sort && sort.key === c.key;
      const arrow = active ? (sort.dir === "asc" ? " ▲" : " ▼") : "";
      const th = h("th", { class: [c.num && "num", onSort && c.sortable !== false && "sortable", active && "active"], title: c.title, scope: "col" }, `${c.label}${arrow}`);
      if (onSort && c.sortable !== false) {
        th.addEventListener("click", () => onSort(c.key, active && sort.dir === "desc" ? "asc" : active ? "desc" : c.num ? "desc" : "asc"));
      }
      return th;
    }),
  );
  const body = sorted.map((row) => {
    const tr = h(
      "tr",
      { class: [onRow && "clickable", rowClass && rowClass(row)], ...(rowAttrs ? rowAttrs(row) : {}) },
      columns.map((c) => h("td", { class: [c.num && "num", c.cls] }, c.render ? c.render(row) : fmtCell(row[c.key]))),
    );
    if (onRow) tr.addEventListener("click", (event) => {
      if (event.target.closest("a,button")) return;
      onRow(row, event);
    });
    return tr;
  });
  return h("div", { class: "table-wrap" }, h("table", { class: ["grid", cls] }, h("thead", {}, head), h("tbody", {}, body)));
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return -1;
  if (b === null || b === undefined) return 1;
  if (typeof a === "string" && typeof b === "string") return a.localeCompare(b);
  return a < b ? -1 : 1;
}

function fmtCell(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return fmtNum(value);
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

/** key/value pairs as a two-column table (attributes). */
export function kvTable(obj, empty = "none") {
  const entries = Object.entries(obj || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h("p", { class: "muted", text: empty });
  return h("table", { class: "kv" }, h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", { text: k }), h("td", {}, h("code", { text: v }))))));
}

// -- charts -----------------------------------------------------------------------------------

/** A tiny line of values (null gaps allowed), for a table cell. */
export function sparkline(values, { width = 110, height = 24, cls = "spark", title = "" } = {}) {
  const present = values.filter((v) => v !== null && v !== undefined);
  const max = Math.max(...present, 0) || 1;
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const x = (i) => Math.min(width - 2, Math.max(2, i * step));
  const y = (v) => height - 2 - (v / max) * (height - 4);
  const d = linePath(values, x, y);
  const has = (i) => i >= 0 && i < values.length && values[i] !== null && values[i] !== undefined;
  const dots = values.map((v, i) => (has(i) && !has(i - 1) && !has(i + 1) ? s("circle", { cx: x(i), cy: y(v), r: 2 }) : null));
  return s("svg", { class: cls, width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title }, s("title", { text: title }), s("path", { d: d || `M0,${height - 2}L${width},${height - 2}` }), dots);
}

/**
 * A small time-series chart: series [{label, values, cls}] over bucket start times (ms).
 * unit formats the axis (fmtMs, fmtRps, fmtPct …).
 */
export function lineChart({ title, times, series, unit = fmtNum, height = 150 }) {
  const width = 520;
  const pad = { l: 62, r: 10, t: 10, b: 22 };
  const all = series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
  const max = niceMax(Math.max(...all, 0));
  const w = width - pad.l - pad.r;
  const hgt = height - pad.t - pad.b;
  const x = (i) => pad.l + (times.length > 1 ? (i / (times.length - 1)) * w : w / 2);
  const y = (v) => pad.t + hgt - (max ? (v / max) * hgt : 0);
  const grid = [0, 0.5, 1].map((f) =>
    s("g", {}, s("line", { class: "gridline", x1: pad.l, x2: width - pad.r, y1: y(max * f), y2: y(max * f) }), s("text", { class: "axis", x: pad.l - 6, y: y(max * f) + 4, "text-anchor": "end", text: unit(max * f) })),
  );
  const ticks = times.length ? [0, Math.floor((times.length - 1) / 2), times.length - 1] : [];
  const xAxis = [...new Set(ticks)].map((i) => s("text", { class: "axis", x: x(i), y: height - 6, "text-anchor": i === 0 ? "start" : i === times.length - 1 ? "end" : "middle", text: fmtClock(times[i]) }));
  const present = (values, i) => i >= 0 && i < values.length && values[i] !== null && values[i] !== undefined;
  const lines = series.map((ser) =>
    s(
      "g",
      {},
      s("path", { class: ["series", ser.cls], d: linePath(ser.values, x, y) }),
      // A value with no neighbour would be a dot too small to see: mark it.
      ser.values.map((v, i) => (present(ser.values, i) && !present(ser.values, i - 1) && !present(ser.values, i + 1) ? s("circle", { class: ["point", ser.cls], cx: x(i), cy: y(v), r: 3.5 }) : null)),
    ),
  );
  const legend = h("div", { class: "legend" }, series.map((ser) => h("span", { class: ["key", ser.cls] }, ser.label)));
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, h("span", { text: title }), legend),
    s("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", class: "chart-svg", role: "img", "aria-label": title }, grid, xAxis, lines),
  );
}

/** An SVG path through the present values; a value alone between gaps becomes a dot. */
function linePath(values, x, y) {
  const present = (i) => i >= 0 && i < values.length && values[i] !== null && values[i] !== undefined;
  let d = "";
  values.forEach((v, i) => {
    if (!present(i)) return;
    d += `${present(i - 1) ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    if (!present(i - 1) && !present(i + 1)) d += "h0.01";
  });
  return d;
}

function niceMax(value) {
  if (!(value > 0)) return 0;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * exp) return m * exp;
  return 10 * exp;
}

function fmtClock(ms) {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/** A horizontal bar (share of a maximum), for ranked tables. */
export function bar(value, max, cls = "") {
  const pct = max > 0 && value ? Math.max(1, Math.round((value / max) * 100)) : 0;
  return h("span", { class: ["bar", cls] }, h("span", { style: { width: `${pct}%` } }));
}

/** A stable colour (hue) per service name, for waterfalls and chips. */
export function serviceHue(name) {
  let hash = 0x811c9dc5; // FNV-1a, then a multiply to spread names that differ in one letter
  for (const ch of name) hash = Math.imul(hash ^ ch.codePointAt(0), 0x01000193) >>> 0;
  return (Math.imul(hash, 2654435761) >>> 0) % 360;
}

// Well-separated hues for the services of one trace, in the order they are listed.
export const PALETTE = [215, 140, 30, 280, 0, 185, 55, 320, 100, 250];

export function serviceChip(name, href, hue = serviceHue(name)) {
  const attrs = { class: "chip", style: { "--hue": hue } };
  return href ? h("a", { ...attrs, href }, name) : h("span", attrs, name);
}
