// Logs: search by service, minimum severity, body text, attributes and trace id; a record
// opens its trace (at its span) and shows its attributes.
import { api } from "../lib/api.js";
import { emptyState, fmtTime, h, kvTable, serviceChip } from "../lib/dom.js";

/** CSS class of an OpenTelemetry severity number (1-4 trace … 21-24 fatal). */
export function severityClass(number) {
  if (number >= 17) return "sev-error";
  if (number >= 13) return "sev-warn";
  if (number >= 9) return "sev-info";
  if (number >= 1) return "sev-debug";
  return "sev-unset";
}

export async function render(ctx, root) {
  const q = {
    service: ctx.get("service"),
    severity: ctx.get("severity"),
    text: ctx.get("text"),
    trace_id: ctx.get("trace_id"),
    attr: ctx.getAll("attr"),
    limit: ctx.get("limit", "100"),
  };
  const servicesPage = await api("/api/v1/services", { ...ctx.window, kind: "all" });
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Logs" })), searchForm(ctx, q, servicesPage.services.map((s) => s.service)));
  const page = await api("/api/v1/logs", { ...ctx.window, ...q });
  if (!page.logs.length) {
    const filtered = q.service || q.severity || q.text || q.trace_id || q.attr.length;
    root.append(
      filtered
        ? emptyState("No log record matches.", "Remove a filter or widen the time range.")
        : emptyState("No log records in this time range.", `Send logs over OTLP to ${ctx.otlpHost}:4317 (gRPC) or http://${ctx.otlpHost}:4318/v1/logs, e.g. with an OpenTelemetry logging handler.`),
    );
    return;
  }
  root.append(
    h("p", { class: "muted small", text: `${page.logs.length} records, newest first${page.logs.length >= Number(q.limit) ? " (limit reached)" : ""} · click a record for its attributes` }),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "grid logs" },
        h("thead", {}, h("tr", {}, ["Time", "Service", "Severity", "Body", "Trace"].map((t) => h("th", { text: t })))),
        h("tbody", {}, page.logs.flatMap((record) => logRows(ctx, record))),
      ),
    ),
  );
}

function logRows(ctx, r) {
  const detail = h("tr", { class: "log-detail", hidden: true }, h("td", { colspan: 5 }, h("div", { class: "two-col" }, h("div", {}, h("h4", { text: "Attributes" }), kvTable(r.attributes)), h("div", {}, h("h4", { text: "Resource" }), kvTable(r.resourceAttributes)))));
  const row = h(
    "tr",
    { class: "clickable", "data-log": r.timeUnixNano },
    h("td", { class: "nowrap", text: fmtTime(r.timeUnixNano, true) }),
    h("td", {}, serviceChip(r.service, ctx.link("service", { name: r.service }))),
    h("td", {}, h("span", { class: ["sev", severityClass(r.severityNumber)], text: r.severityText || String(r.severityNumber || "–") })),
    h("td", { class: "body-text", text: r.body }),
    h("td", {}, r.traceId ? h("a", { class: "mono", href: ctx.link("trace", { id: r.traceId, span: r.spanId || null }), "data-trace": r.traceId, text: `${r.traceId.slice(0, 8)}…` }) : "–"),
  );
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    detail.hidden = !detail.hidden;
  });
  return [row, detail];
}

function searchForm(ctx, q, names) {
  const field = (label, control) => h("label", { class: "field" }, h("span", { text: label }), control);
  const service = h("select", { name: "service" }, h("option", { value: "", text: "any service" }), names.map((n) => h("option", { value: n, selected: n === q.service, text: n })));
  if (q.service && !names.includes(q.service)) service.append(h("option", { value: q.service, selected: true, text: q.service }));
  const severity = h("select", { name: "severity" }, ["", "debug", "info", "warn", "error", "fatal"].map((v) => h("option", { value: v, selected: v === q.severity, text: v ? `${v} and above` : "any severity" })));
  const text = h("input", { name: "text", type: "search", value: q.text, placeholder: "text in the body", class: "wide-input" });
  const attrs = h("input", { name: "attr", value: q.attr.join(" "), placeholder: "key=value …", title: "log attributes that must all match, separated by spaces" });
  const trace = h("input", { name: "trace_id", value: q.trace_id, placeholder: "trace id", pattern: "[0-9a-fA-F]{32}", class: "mono" });
  const limit = h("select", { name: "limit" }, ["100", "500", "1000"].map((v) => h("option", { value: v, selected: v === q.limit, text: `${v} records` })));
  const form = h(
    "form",
    { class: "search", "aria-label": "log search" },
    field("Service", service),
    field("Severity", severity),
    field("Text", text),
    field("Attributes", attrs),
    field("Trace", trace),
    field("Show", limit),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary", text: "Search" }), h("a", { href: ctx.link("logs"), text: "Reset" })),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.set({
      service: service.value || null,
      severity: severity.value || null,
      text: text.value || null,
      attr: attrs.value.split(/\s+/).filter(Boolean),
      trace_id: trace.value.trim().toLowerCase() || null,
      limit: limit.value === "100" ? null : limit.value,
    });
  });
  return form;
}
