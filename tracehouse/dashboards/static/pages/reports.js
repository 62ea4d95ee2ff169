// Top-N reports (/api/v1/reports/top): a choice of entity and ranking, as a table and CSV.
import { api, apiUrl } from "../lib/api.js";
import { bar, emptyState, fmtMs, fmtNum, fmtPct, fmtRps, h, serviceChip, truncate } from "../lib/dom.js";

const ENTITIES = [
  ["service", "services"],
  ["operation", "operations"],
  ["sql", "SQL statements"],
  ["edge", "service-graph edges"],
  ["error", "failing operations"],
];
const BY = {
  service: ["total_time", "p99", "calls", "errors", "error_rate"],
  operation: ["total_time", "p99", "calls", "errors", "error_rate"],
  sql: ["total_time", "p99", "calls", "errors", "error_rate"],
  edge: ["total_time", "p99", "calls", "errors", "error_rate"],
  error: ["errors", "error_rate"],
};
const BY_LABEL = { total_time: "total time", p99: "p99 latency", calls: "calls", errors: "errors", error_rate: "error rate" };
const BY_COLUMN = { total_time: "total_ms", p99: "p99_ms", calls: "calls", errors: "errors", error_rate: "error_rate" };
const FORMAT = { error_rate: fmtPct, rps: fmtRps, p50_ms: fmtMs, p95_ms: fmtMs, p99_ms: fmtMs, avg_ms: fmtMs, total_ms: fmtMs, calls: fmtNum, errors: fmtNum };

export async function render(ctx, root) {
  const entity = ENTITIES.some(([k]) => k === ctx.get("entity")) ? ctx.get("entity") : "service";
  const by = BY[entity].includes(ctx.get("by")) ? ctx.get("by") : BY[entity][0];
  const n = ctx.get("n", "10");
  const params = { ...ctx.window, entity, by, n };
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Top-N report" }), controls(ctx, entity, by, n, params)));
  const report = await api("/api/v1/reports/top", params);
  if (!report.rows.length) {
    root.append(emptyState(`No ${ENTITIES.find(([k]) => k === entity)[1]} in this time range.`, entity === "error" ? "Nothing failed — or widen the time range." : "Send spans, or widen the time range."));
    return;
  }
  const metric = BY_COLUMN[by];
  const top = Math.max(...report.rows.map((r) => r[metric] || 0));
  const cell = (column, row) => {
    const value = row[column];
    if (column === "service") return serviceChip(value, ctx.link("service", { name: value }));
    if (column === "operation") return h("a", { href: ctx.link("traces", { service: row.service, operation: value }), text: value });
    if (column === "statement") return h("code", { title: value, text: truncate(value, 110) });
    if ((column === "source" || column === "target") && value !== "user" && row.type !== undefined && (column === "source" || row.type === "service")) return serviceChip(value, ctx.link("service", { name: value }));
    if (column === "fingerprint") return h("a", { class: "mono", href: ctx.link("sql", { fp: value }), text: value });
    if (column === metric) return h("span", { class: "dur" }, bar(value, top, by.startsWith("error") ? "bad" : ""), (FORMAT[column] || String)(value));
    return FORMAT[column] ? FORMAT[column](value) : value === null ? "–" : String(value);
  };
  const numeric = new Set(["rank", ...Object.keys(FORMAT)]);
  root.append(
    h("p", { class: "muted small", text: `Top ${report.rows.length} ${ENTITIES.find(([k]) => k === entity)[1]} by ${BY_LABEL[by]}${report.kinds.length ? ` · span kinds: ${report.kinds.join(", ")}` : ""}` }),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "grid report" },
        h("thead", {}, h("tr", {}, report.columns.map((c) => h("th", { class: [numeric.has(c) && "num", c === metric && "active"], text: c.replace(/_ms$/, "").replace(/_/g, " ") })))),
        h("tbody", {}, report.rows.map((row) => h("tr", { "data-rank": row.rank }, report.columns.map((c) => h("td", { class: numeric.has(c) ? "num" : "" }, cell(c, row)))))),
      ),
    ),
  );
}

function controls(ctx, entity, by, n, params) {
  const entitySelect = h("select", { name: "entity", "aria-label": "entity" }, ENTITIES.map(([k, label]) => h("option", { value: k, selected: k === entity, text: label })));
  const bySelect = h("select", { name: "by", "aria-label": "rank by" }, BY[entity].map((k) => h("option", { value: k, selected: k === by, text: `by ${BY_LABEL[k]}` })));
  const nSelect = h("select", { name: "n", "aria-label": "rows" }, ["5", "10", "20", "50", "100"].map((v) => h("option", { value: v, selected: v === n, text: `top ${v}` })));
  entitySelect.addEventListener("change", () => ctx.set({ entity: entitySelect.value, by: null }));
  bySelect.addEventListener("change", () => ctx.set({ by: bySelect.value }));
  nSelect.addEventListener("change", () => ctx.set({ n: nSelect.value }));
  return h("div", { class: "tools" }, entitySelect, bySelect, nSelect, h("a", { href: apiUrl("/api/v1/reports/top", { ...params, format: "csv" }), download: `top-${entity}-by-${by}.csv`, text: "CSV" }));
}
