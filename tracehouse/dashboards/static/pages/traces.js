// Traces: search by service, operation, duration, status, kind and attributes over the time
// range; every result opens in the waterfall. Also: open a trace by id.
import { api } from "../lib/api.js";
import { bar, emptyState, fmtNs, fmtTime, h, serviceChip, table } from "../lib/dom.js";
import { noSpansHint } from "./services.js";

const FIELDS = ["service", "operation", "min_duration_ms", "max_duration_ms", "status", "kind", "attr", "limit"];

export async function render(ctx, root) {
  const q = Object.fromEntries(FIELDS.map((f) => [f, f === "attr" ? ctx.getAll("attr") : ctx.get(f)]));
  const servicesPage = await api("/api/v1/services", { ...ctx.window, kind: "all" });
  const names = servicesPage.services.map((s) => s.service);
  const operations = q.service ? await api(`/api/v1/services/${encodeURIComponent(q.service)}/operations`, ctx.window) : { operations: [] };

  const form = searchForm(ctx, q, names, operations.operations);
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Traces" }), openById(ctx)), form);

  const result = await api("/api/v1/traces", {
    ...ctx.window,
    service: q.service,
    operation: q.operation,
    min_duration_ms: q.min_duration_ms,
    max_duration_ms: q.max_duration_ms,
    status: q.status,
    kind: q.kind,
    attr: q.attr,
    limit: q.limit || 50,
  });
  if (!result.traces.length) {
    const filtered = FIELDS.some((f) => (Array.isArray(q[f]) ? q[f].length : q[f]) && f !== "limit");
    root.append(filtered || names.length ? emptyState("No trace matches.", "Remove a filter or widen the time range.") : emptyState("No traces.", ...noSpansHint(ctx)));
    return;
  }
  const longest = Math.max(...result.traces.map((t) => Number(t.durationNano)));
  root.append(
    h("p", { class: "muted small", text: `${result.traces.length} traces, newest first${result.traces.length >= Number(q.limit || 50) ? " (limit reached: narrow the search or raise the limit)" : ""}` }),
    table({
      columns: [
        { key: "startTimeUnixNano", label: "Start", render: (r) => h("span", { class: "nowrap", text: fmtTime(r.startTimeUnixNano) }) },
        { key: "rootName", label: "Root span", render: (r) => h("a", { href: ctx.link("trace", { id: r.traceId }), "data-trace": r.traceId }, h("strong", { text: r.rootService }), ": ", r.rootName) },
        { key: "durationNano", label: "Duration", num: true, render: (r) => h("span", { class: "dur" }, bar(Number(r.durationNano), longest, r.errorCount ? "bad" : ""), fmtNs(r.durationNano)) },
        { key: "spanCount", label: "Spans", num: true },
        { key: "errorCount", label: "Errors", num: true, render: (r) => h("span", { class: r.errorCount ? "bad-text" : "", text: String(r.errorCount) }) },
        { key: "services", label: "Services", render: (r) => h("span", { class: "chips" }, r.services.map((name) => serviceChip(name))) },
      ],
      rows: result.traces,
      onRow: (r) => (location.hash = ctx.link("trace", { id: r.traceId })),
      rowClass: (r) => (r.errorCount ? "row-bad" : ""),
    }),
  );
}

function searchForm(ctx, q, names, operations) {
  const field = (label, control) => h("label", { class: "field" }, h("span", { text: label }), control);
  const service = h("select", { name: "service" }, h("option", { value: "", text: "any service" }), names.map((n) => h("option", { value: n, selected: n === q.service, text: n })));
  if (q.service && !names.includes(q.service)) service.append(h("option", { value: q.service, selected: true, text: q.service }));
  const opList = h("datalist", { id: "trace-ops" }, operations.map((o) => h("option", { value: o.operation })));
  const operation = h("input", { name: "operation", list: "trace-ops", value: q.operation, placeholder: "any operation" });
  const min = h("input", { name: "min_duration_ms", type: "number", min: 0, step: "any", value: q.min_duration_ms, placeholder: "ms", class: "short" });
  const max = h("input", { name: "max_duration_ms", type: "number", min: 0, step: "any", value: q.max_duration_ms, placeholder: "ms", class: "short" });
  const status = h("select", { name: "status" }, ["", "error", "ok", "unset"].map((v) => h("option", { value: v, selected: v === q.status, text: v || "any status" })));
  const kind = h("select", { name: "kind" }, ["", "server", "client", "producer", "consumer", "internal"].map((v) => h("option", { value: v, selected: v === q.kind, text: v || "any kind" })));
  const attrs = h("input", { name: "attr", value: q.attr.join(" "), placeholder: "key=value key2=value2", title: "span attributes that must all match, separated by spaces", class: "wide-input" });
  const limit = h("select", { name: "limit" }, ["20", "50", "100", "500"].map((v) => h("option", { value: v, selected: v === (q.limit || "50"), text: `${v} traces` })));
  service.addEventListener("change", () => ctx.set({ service: service.value || null, operation: null }));
  const form = h(
    "form",
    { class: "search", "aria-label": "trace search" },
    field("Service", service),
    field("Operation", h("span", {}, operation, opList)),
    field("Duration ≥", min),
    field("≤", max),
    field("Status", status),
    field("Kind", kind),
    field("Attributes", attrs),
    field("Show", limit),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", text: "Search" }), h("a", { href: ctx.link("traces"), text: "Reset" })),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.set({
      service: service.value || null,
      operation: operation.value.trim() || null,
      min_duration_ms: min.value || null,
      max_duration_ms: max.value || null,
      status: status.value || null,
      kind: kind.value || null,
      attr: attrs.value.split(/\s+/).filter(Boolean),
      limit: limit.value === "50" ? null : limit.value,
    });
  });
  return form;
}

function openById(ctx) {
  const input = h("input", { name: "trace_id", placeholder: "trace id (32 hex)", pattern: "[0-9a-fA-F]{32}", title: "32 hex characters", class: "mono", "aria-label": "trace id" });
  const form = h("form", { class: "tools" }, input, h("button", { type: "submit", text: "Open" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.checkValidity()) location.hash = ctx.link("trace", { id: input.value.trim().toLowerCase() });
  });
  return form;
}
