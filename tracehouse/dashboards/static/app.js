// The single-page shell: hash routing (#/page?params), the global time range and auto-refresh.
// Every view's state lives in the URL, so a link reproduces what its sender saw.
import { setToken, token } from "./lib/api.js";
import { errorState, h } from "./lib/dom.js";
import * as alerts from "./pages/alerts.js";
import * as logs from "./pages/logs.js";
import * as reports from "./pages/reports.js";
import * as service from "./pages/service.js";
import * as services from "./pages/services.js";
import * as sql from "./pages/sql.js";
import * as topology from "./pages/topology.js";
import * as trace from "./pages/trace.js";
import * as traces from "./pages/traces.js";

const PAGES = {
  services: { title: "Services", module: services, nav: true },
  service: { title: "Service", module: service, navAs: "services" },
  topology: { title: "Topology", module: topology, nav: true },
  traces: { title: "Traces", module: traces, nav: true },
  trace: { title: "Trace", module: trace, navAs: "traces" },
  logs: { title: "Logs", module: logs, nav: true },
  sql: { title: "Slow SQL", module: sql, nav: true },
  reports: { title: "Top-N", module: reports, nav: true },
  alerts: { title: "Alerts", module: alerts, nav: true },
};

const MINUTE = 60000;
export const RANGES = [
  ["15m", 15 * MINUTE, "Last 15 minutes"],
  ["1h", 60 * MINUTE, "Last hour"],
  ["6h", 6 * 60 * MINUTE, "Last 6 hours"],
  ["24h", 24 * 60 * MINUTE, "Last 24 hours"],
  ["7d", 7 * 24 * 60 * MINUTE, "Last 7 days"],
];
const DEFAULT_RANGE = "1h";
const REFRESH = [
  ["off", 0, "Auto-refresh off"],
  ["10s", 10000, "Every 10 s"],
  ["30s", 30000, "Every 30 s"],
  ["1m", 60000, "Every minute"],
  ["5m", 300000, "Every 5 minutes"],
];
// Parameters that follow the user from page to page.
const GLOBAL = ["range", "from", "to", "refresh"];

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const at = raw.indexOf("?");
  const page = (at < 0 ? raw : raw.slice(0, at)) || "services";
  return { page, params: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1)) };
}

function hashFor(page, params) {
  const text = params.toString();
  return `#/${page}${text ? `?${text}` : ""}`;
}

/** The time window {start, end} (epoch ms) the URL asks for, as of now. */
function timeWindow(params) {
  const from = parseMoment(params.get("from"));
  const to = parseMoment(params.get("to"));
  if (from !== null) return { start: from, end: to !== null && to > from ? to : Date.now(), custom: true };
  const range = RANGES.find(([key]) => key === params.get("range")) || RANGES.find(([key]) => key === DEFAULT_RANGE);
  const end = Date.now();
  return { start: end - range[1], end, custom: false };
}

function parseMoment(text) {
  if (!text) return null;
  const value = /^\d+$/.test(text) ? Number(text) : Date.parse(text);
  return Number.isFinite(value) ? value : null;
}

/** What a page gets: its parameters, the time window, and ways to link and change the URL. */
function makeContext(page, params) {
  const window = timeWindow(params);
  const ctx = {
    page,
    params,
    // For the API: RFC 3339, which no reader can mistake (epoch numbers can be s or ms).
    window: { start: new Date(window.start).toISOString(), end: new Date(window.end).toISOString() },
    // For arithmetic: epoch milliseconds.
    range: { start: window.start, end: window.end },
    get: (key, fallback = "") => params.get(key) ?? fallback,
    getAll: (key) => params.getAll(key),
    /** A link to another page, keeping the time range and refresh. */
    link(target, values = {}) {
      const next = new URLSearchParams();
      for (const key of GLOBAL) for (const v of params.getAll(key)) next.append(key, v);
      setAll(next, values);
      return hashFor(target, next);
    },
    /** Change this page's parameters (null removes one); render: false only records them. */
    set(values, { render = true } = {}) {
      const next = new URLSearchParams(params);
      setAll(next, values);
      const hash = hashFor(page, next);
      if (render) location.hash = hash;
      else history.replaceState(null, "", hash);
      params = next;
      ctx.params = next;
    },
    otlpHost: location.hostname || "localhost",
  };
  return ctx;
}

function setAll(target, values) {
  for (const [key, value] of Object.entries(values)) {
    target.delete(key);
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== null && item !== undefined && item !== "") target.append(key, String(item));
    }
  }
}

// -- shell ------------------------------------------------------------------------------------

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const rangeSelect = document.getElementById("range");
const customBox = document.getElementById("custom");
const fromInput = document.getElementById("from");
const toInput = document.getElementById("to");
const refreshSelect = document.getElementById("refresh");
const updated = document.getElementById("updated");

for (const [key, , label] of RANGES) rangeSelect.append(h("option", { value: key, text: label }));
rangeSelect.append(h("option", { value: "custom", text: "Custom…" }));
for (const [key, , label] of REFRESH) refreshSelect.append(h("option", { value: key, text: label }));

function buildNav(active) {
  const { params } = parseHash();
  const keep = new URLSearchParams();
  for (const key of GLOBAL) for (const v of params.getAll(key)) keep.append(key, v);
  nav.replaceChildren(
    ...Object.entries(PAGES)
      .filter(([, def]) => def.nav)
      .map(([name, def]) => h("a", { href: hashFor(name, keep), class: name === active ? "active" : "", "aria-current": name === active ? "page" : null, "data-nav": name, text: def.title })),
  );
}

function syncControls(params) {
  const custom = params.get("from") !== null;
  rangeSelect.value = custom ? "custom" : RANGES.some(([k]) => k === params.get("range")) ? params.get("range") : DEFAULT_RANGE;
  customBox.hidden = !custom;
  if (custom) {
    const w = timeWindow(params);
    fromInput.value = toLocalInput(w.start);
    toInput.value = params.get("to") ? toLocalInput(w.end) : "";
  }
  refreshSelect.value = REFRESH.some(([k]) => k === params.get("refresh")) ? params.get("refresh") : "off";
}

function toLocalInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * MINUTE);
  return d.toISOString().slice(0, 16);
}

function setGlobal(values) {
  const { page, params } = parseHash();
  setAll(params, values);
  location.hash = hashFor(page, params);
}

rangeSelect.addEventListener("change", () => {
  if (rangeSelect.value === "custom") {
    const w = timeWindow(parseHash().params);
    customBox.hidden = false;
    fromInput.value = toLocalInput(w.start);
    toInput.value = toLocalInput(w.end);
    fromInput.focus();
    return;
  }
  setGlobal({ range: rangeSelect.value, from: null, to: null });
});
document.getElementById("custom-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const from = Date.parse(fromInput.value);
  const to = toInput.value ? Date.parse(toInput.value) : null;
  if (!Number.isFinite(from)) return fromInput.focus();
  setGlobal({ range: null, from: String(from), to: to !== null && Number.isFinite(to) ? String(to) : null });
});
refreshSelect.addEventListener("change", () => setGlobal({ refresh: refreshSelect.value === "off" ? null : refreshSelect.value }));
document.getElementById("reload").addEventListener("click", () => render({ quiet: true }));

// -- API token -------------------------------------------------------------------------------

const auth = document.getElementById("auth");
const forget = document.getElementById("forget");

/** The server answered 401: ask for a query token once, above the page. */
window.addEventListener("tracehouse:unauthorized", () => {
  if (auth.querySelector("form")) return;
  const input = h("input", { type: "password", name: "token", autocomplete: "off", placeholder: "query token", "aria-label": "API token", required: true });
  const form = h(
    "form",
    { class: "token-form", "data-form": "token" },
    h("strong", { text: token() ? "This token is not accepted." : "This tracehouse wants an API token." }),
    h("span", { class: "muted", text: "Enter a query token (one of the access file's); it is kept in this browser tab only and never put in links." }),
    input,
    h("button", { type: "submit", class: "primary", text: "Use token" }),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    auth.replaceChildren();
    render();
  });
  auth.replaceChildren(form);
  input.focus();
});

function syncToken() {
  forget.hidden = !token();
}
forget.addEventListener("click", () => {
  setToken("");
  render();
});

let renders = 0;
let timer = null;

/** Render the page the URL names; quiet: build off-screen and swap when loaded (refresh). */
async function render({ quiet = false } = {}) {
  const { page, params } = parseHash();
  const def = PAGES[page];
  const current = ++renders;
  syncControls(params);
  syncToken();
  buildNav(def ? def.navAs || page : null);
  scheduleRefresh(params);
  const root = h("div", { class: "page", "data-page": page });
  if (!quiet || !main.firstChild) main.replaceChildren(root);
  if (!def) {
    root.append(errorState({ message: `There is no page "${page}". Pick one from the menu.` }));
    root.dataset.ready = "true";
    return;
  }
  document.title = `${def.title} · tracehouse`;
  try {
    await def.module.render(makeContext(page, params), root);
  } catch (error) {
    for (const el of root.querySelectorAll(".loading")) el.remove();
    root.append(errorState(error));
  }
  if (current !== renders) return; // a newer render took over
  if (quiet && main.firstChild !== root) {
    const y = window.scrollY;
    main.replaceChildren(root);
    window.scrollTo(0, y);
  }
  root.dataset.ready = "true";
  updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function scheduleRefresh(params) {
  const every = (REFRESH.find(([k]) => k === params.get("refresh")) || REFRESH[0])[1];
  if (timer && timer.every === every) return;
  if (timer) clearInterval(timer.id);
  timer = every
    ? {
        every,
        id: setInterval(() => {
          // Do not rebuild a form under the user's fingers.
          if (document.activeElement && main.contains(document.activeElement) && document.activeElement.matches("input,textarea,select")) return;
          render({ quiet: true });
        }, every),
      }
    : null;
}

window.addEventListener("hashchange", () => render());
render();
