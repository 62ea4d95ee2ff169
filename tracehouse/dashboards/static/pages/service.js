// Service detail: latency percentiles, throughput and errors over time; operations; database
// calls; upstream and downstream services; recent errors and logs.
import { api, hasPath, slowServices } from "../lib/api.js";
import {
  FAILING_ERROR_RATE,
  causeText,
  emptyState,
  fmtMs,
  fmtNs,
  fmtNum,
  fmtPct,
  fmtRps,
  fmtTime,
  h,
  lineChart,
  section,
  serviceChip,
  slowTitle,
  statusBadges,
  table,
  truncate,
} from "../lib/dom.js";
import { serviceSeries } from "../lib/series.js";
import { severityClass } from "./logs.js";

export async function render(ctx, root) {
  const name = ctx.get("name");
  if (!name) {
    root.append(emptyState("No service chosen.", "Open one from the Services page or the Topology."));
    return;
  }
  const [page, slow] = await Promise.all([api("/api/v1/services", ctx.window), slowServices(ctx.window).catch(() => null)]);
  const stats = page.services.find((s) => s.service === name) || null;
  const slowItem = slow ? slow.get(name) || null : null;
  root.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, h("span", { class: "muted", text: "Service " }), h("span", { "data-title": "service", text: name }), statusBadges(stats, slowItem)),
      h(
        "div",
        { class: "tools links" },
        h("a", { href: ctx.link("traces", { service: name }), text: "Traces" }),
        h("a", { href: ctx.link("traces", { service: name, status: "error" }), text: "Failed traces" }),
        h("a", { href: ctx.link("logs", { service: name }), text: "Logs" }),
        h("a", { href: ctx.link("topology", { service: name, depth: 2 }), text: "Topology around" }),
        h("a", { href: ctx.link("sql", { service: name }), text: "SQL" }),
      ),
    ),
  );
  if (!stats || !stats.calls) {
    root.append(emptyState(`${name} handled no requests (server or consumer spans) in this time range.`, "Widen the time range, or check the service.name your exporter sends."));
  } else {
    root.append(statCards(stats));
  }
  if (slowItem) root.append(slowBox(ctx, slowItem));

  // Marked slow or failing: where the cause is (GET /api/v1/diagnose, when the server has it).
  const failing = Boolean(stats && stats.error_rate >= FAILING_ERROR_RATE);
  const diagnosed = slowItem || failing ? [section("Diagnosis", () => diagnosis(ctx, name), { cls: "wide" })] : [];
  const parts = [
    ...diagnosed,
    section("Over time", () => charts(ctx, name), { cls: "wide" }),
    section("Resources (CPU, memory)", () => resources(ctx, name), { cls: "wide resources" }),
    section("Operations", () => operations(ctx, name), { cls: "wide" }),
    section("Upstream and downstream", () => neighbours(ctx, name)),
    section("Database calls (top SQL by total time)", () => databaseCalls(ctx, name)),
    section("Recent errors", () => recentErrors(ctx, name)),
    section("Recent logs", () => recentLogs(ctx, name)),
  ];
  root.append(h("div", { class: "sections" }, parts.map((p) => p.el)));
  await Promise.all(parts.map((p) => p.done));
  // Shown only when the service sends CPU or memory metrics (OTLP metrics of its instances).
  for (const p of parts) if (p.el.classList.contains("resources") && p.el.querySelector(".empty-resources")) p.el.remove();
}

// OTLP metric names, in order of preference, matched by service.name.
const CPU_METRICS = ["process.cpu.utilization", "system.cpu.utilization", "container.cpu.utilization", "process.runtime.cpython.cpu_utilization", "jvm.cpu.recent_utilization"];
const MEMORY_METRICS = ["process.memory.usage", "container.memory.usage", "process.runtime.cpython.memory", "jvm.memory.used", "system.memory.utilization"];

async function resources(ctx, name) {
  if (!(await hasPath("/api/v1/metrics/query"))) return h("span", { class: "empty-resources" });
  const listed = await api("/api/v1/metrics", { ...ctx.window, service: name });
  const names = new Set(listed.metrics.map((m) => m.name));
  const cpu = CPU_METRICS.find((m) => names.has(m));
  const memory = MEMORY_METRICS.find((m) => names.has(m));
  if (!cpu && !memory) return h("span", { class: "empty-resources" });
  const chart = async (metric, title, unit) => {
    const body = await api("/api/v1/metrics/query", { ...ctx.window, name: metric, agg: "avg", filter: `service.name=${name}`, group_by: "service.instance.id" });
    const times = [...new Set(body.series.flatMap((x) => x.points.map((p) => p[0])))].sort((a, b) => a - b);
    const series = body.series.slice(0, 3).map((x, i) => {
      const byTime = new Map(x.points.map((p) => [p[0], p[1]]));
      return { label: x.labels["service.instance.id"] || "all instances", values: times.map((t) => (byTime.has(t) ? byTime.get(t) : null)), cls: `s${i + 1}` };
    });
    return lineChart({ title: `${title} (${metric})`, times: times.map((t) => t * 1000), unit, series });
  };
  const isRatio = (metric) => metric.endsWith("utilization");
  const charts = [];
  if (cpu) charts.push(await chart(cpu, "CPU", isRatio(cpu) ? fmtPct : fmtNum));
  if (memory) charts.push(await chart(memory, "Memory", isRatio(memory) ? fmtPct : fmtBytes));
  return h("div", { class: "charts" }, charts);
}

function fmtBytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = value;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

function statCards(s) {
  const card = (label, value, cls = "") => h("div", { class: ["stat", cls] }, h("span", { class: "label", text: label }), h("span", { class: "value", text: value }));
  return h(
    "div",
    { class: "stats" },
    card("Calls/s", fmtRps(s.rps)),
    card("Calls", fmtNum(s.calls)),
    card("Error rate", fmtPct(s.error_rate), s.error_rate >= FAILING_ERROR_RATE ? "bad" : ""),
    card("p50", fmtMs(s.p50_ms)),
    card("p95", fmtMs(s.p95_ms)),
    card("p99", fmtMs(s.p99_ms)),
    card("max", fmtMs(s.max_ms)),
  );
}

function slowBox(ctx, item) {
  const cause = item.cause || {};
  const exemplars = [...(cause.exemplar_trace_ids || []), ...(item.exemplar_trace_ids || [])].filter((id, i, all) => all.indexOf(id) === i);
  let where = null;
  if (cause.type === "sql" && cause.fingerprint) where = h("a", { href: ctx.link("sql", { service: item.service, fp: cause.fingerprint }), text: "the statement" });
  if (cause.type === "edge" && cause.edge_type === "service") where = h("a", { href: ctx.link("service", { name: cause.target }), text: cause.target });
  return h(
    "div",
    { class: "callout slow", "data-state": "slow" },
    h("strong", { text: `Slow${item.operation ? ` (${item.operation})` : ""}: ${slowTitle(item, false)}` }),
    cause.type ? h("p", {}, `Likely cause: ${causeText(cause)}`, where ? [" — open ", where] : null) : null,
    cause.type === "sql" && cause.statement ? h("code", { class: "block", text: cause.statement }) : null,
    exemplars.length ? h("p", {}, "Example traces: ", exemplars.slice(0, 5).map((id) => [h("a", { class: "mono", href: ctx.link("trace", { id }), text: `${id.slice(0, 12)}…` }), " "])) : null,
  );
}

const CAUSE_KIND = { sql: "SQL statement", edge: "calls", instance: "instance", own_code: "own code", service: "errors start in" };

/** The top causes of the change against the window before (GET /api/v1/diagnose). */
async function diagnosis(ctx, name) {
  if (!(await hasPath("/api/v1/diagnose"))) return emptyState("Diagnosis is not available on this server.");
  const body = await api("/api/v1/diagnose", { ...ctx.window, service: name, limit: 3 });
  if (!body.causes.length) return emptyState("Nothing changed against the window before that would explain it.", "A service slow or failing all along has no change to explain; widen the time range.");
  const since = new Date(body.baseline_start).getTime();
  return h(
    "div",
    { "data-state": "diagnosis" },
    h("p", { class: "muted small", text: `Compared with ${fmtTime(since)} onwards · ${body.sampled_traces} and ${body.baseline_sampled_traces} traces sampled · ranked along the service graph` }),
    h("ol", { class: "causes" }, body.causes.map((c) => h("li", { "data-cause": c.type }, causeItem(ctx, c)))),
  );
}

function causeItem(ctx, c) {
  const evidence = [];
  if (c.latency.share !== null) evidence.push(`${fmtMs(c.latency.baseline_ms_per_trace)} → ${fmtMs(c.latency.ms_per_trace)} per trace, ${fmtPct(c.latency.share)} of the slowdown`);
  if (c.errors.share !== null) evidence.push(`error rate ${fmtPct(c.errors.baseline_error_rate)} → ${fmtPct(c.errors.error_rate)}, ${fmtPct(c.errors.share)} of the rise`);
  const traces = c.exemplar_trace_ids.slice(0, 2);
  return [
    h("strong", { text: `${CAUSE_KIND[c.type] || c.type}: ${c.label}` }),
    evidence.length ? h("span", { class: "muted", text: ` — ${evidence.join("; ")}` }) : null,
    c.type === "sql" && c.statement ? h("code", { class: "block", text: c.statement }) : null,
    traces.length ? h("p", { class: "small" }, "Traces: ", traces.map((id) => [h("a", { class: "mono", href: ctx.link("trace", { id }), text: `${id.slice(0, 12)}…` }), " "])) : null,
  ];
}

async function charts(ctx, name) {
  const series = await serviceSeries(ctx.range);
  const points = series.byService.get(name) || series.times.map(() => null);
  const pick = (key) => points.map((p) => (p ? p[key] : null));
  return h(
    "div",
    { class: "charts" },
    lineChart({
      title: "Latency",
      times: series.times,
      unit: fmtMs,
      series: [
        { label: "p50", values: pick("p50_ms"), cls: "s1" },
        { label: "p95", values: pick("p95_ms"), cls: "s2" },
        { label: "p99", values: pick("p99_ms"), cls: "s3" },
      ],
    }),
    lineChart({ title: "Throughput", times: series.times, unit: fmtRps, series: [{ label: "calls/s", values: points.map((p) => (p ? p.rps : 0)), cls: "s1" }] }),
    lineChart({ title: "Errors", times: series.times, unit: fmtPct, series: [{ label: "error rate", values: points.map((p) => (p ? p.error_rate : 0)), cls: "s3" }] }),
  );
}

async function operations(ctx, name) {
  const page = await api(`/api/v1/services/${encodeURIComponent(name)}/operations`, ctx.window);
  if (!page.operations.length) return emptyState("No operations in this time range.");
  return table({
    columns: [
      { key: "operation", label: "Operation", render: (r) => h("a", { href: ctx.link("traces", { service: name, operation: r.operation }), text: r.operation }) },
      { key: "kind", label: "Kind" },
      { key: "rps", label: "Calls/s", num: true, render: (r) => fmtRps(r.rps) },
      { key: "calls", label: "Calls", num: true },
      { key: "error_rate", label: "Errors", num: true, render: (r) => h("span", { class: r.error_rate >= FAILING_ERROR_RATE ? "bad-text" : "", text: fmtPct(r.error_rate) }) },
      { key: "p50_ms", label: "p50", num: true, render: (r) => fmtMs(r.p50_ms) },
      { key: "p95_ms", label: "p95", num: true, render: (r) => fmtMs(r.p95_ms) },
      { key: "p99_ms", label: "p99", num: true, render: (r) => fmtMs(r.p99_ms) },
    ],
    rows: page.operations,
  });
}

async function neighbours(ctx, name) {
  const graph = await api("/api/v1/topology", { ...ctx.window, service: name, depth: 1 });
  const types = new Map(graph.nodes.map((n) => [n.id, n.type]));
  const up = graph.edges.filter((e) => e.target === name);
  const down = graph.edges.filter((e) => e.source === name && e.target !== name);
  if (!up.length && !down.length) return emptyState("No calls to or from other services or peers in this range.", "The worker role builds the service graph from closed minutes every 15 s.");
  const peer = (id) => (types.get(id) === "service" ? serviceChip(id, ctx.link("service", { name: id })) : h("span", {}, h("span", { class: ["node-type", types.get(id)], text: types.get(id) || "" }), " ", id));
  const rows = (edges, side) =>
    edges.map((e) => ({
      peer: e[side],
      type: types.get(e[side]) || e.type,
      calls: e.calls,
      error_rate: e.error_rate,
      p99: e.client_p99_ms ?? e.server_p99_ms,
    }));
  const cols = (title) => [
    { key: "peer", label: title, render: (r) => peer(r.peer) },
    { key: "calls", label: "Calls", num: true },
    { key: "error_rate", label: "Errors", num: true, render: (r) => h("span", { class: r.error_rate >= FAILING_ERROR_RATE ? "bad-text" : "", text: fmtPct(r.error_rate) }) },
    { key: "p99", label: "p99", num: true, render: (r) => fmtMs(r.p99) },
  ];
  return [
    up.length ? table({ columns: cols("Called by"), rows: rows(up, "source") }) : h("p", { class: "muted", text: "Nobody calls it in this range." }),
    down.length ? table({ columns: cols("Calls"), rows: rows(down, "target") }) : h("p", { class: "muted", text: "It calls nothing in this range." }),
  ];
}

async function databaseCalls(ctx, name) {
  const page = await api("/api/v1/sql", { ...ctx.window, service: name, limit: 10 });
  if (!page.statements.length) return emptyState("No database calls from this service.", "Database spans need db.system.name (or db.system) and db.query.text (or db.statement).");
  return table({
    columns: [
      { key: "statement", label: "Statement", render: (r) => h("a", { class: "mono", href: ctx.link("sql", { service: name, fp: r.fingerprint }), title: r.statement, text: truncate(r.statement, 90) }) },
      { key: "db_system", label: "DB" },
      { key: "calls", label: "Calls", num: true },
      { key: "p99_ms", label: "p99", num: true, render: (r) => fmtMs(r.p99_ms) },
      { key: "total_ms", label: "Total", num: true, render: (r) => fmtMs(r.total_ms) },
    ],
    rows: page.statements,
  });
}

async function recentErrors(ctx, name) {
  const page = await api("/api/v1/traces", { ...ctx.window, service: name, status: "error", limit: 10 });
  if (!page.traces.length) return emptyState("No failed spans in this range.");
  return table({
    columns: [
      { key: "startTimeUnixNano", label: "Time", render: (r) => fmtTime(r.startTimeUnixNano) },
      { key: "rootName", label: "Root", render: (r) => h("a", { href: ctx.link("trace", { id: r.traceId }), text: `${r.rootService}: ${r.rootName}` }) },
      { key: "durationNano", label: "Duration", num: true, render: (r) => fmtNs(r.durationNano) },
      { key: "errorCount", label: "Errors", num: true },
    ],
    rows: page.traces,
    onRow: (r) => (location.hash = ctx.link("trace", { id: r.traceId })),
  });
}

async function recentLogs(ctx, name) {
  const page = await api("/api/v1/logs", { ...ctx.window, service: name, limit: 15 });
  if (!page.logs.length) return emptyState("No log records from this service in this range.", "Send logs over OTLP (/v1/logs) with the same service.name.");
  return table({
    columns: [
      { key: "timeUnixNano", label: "Time", render: (r) => fmtTime(r.timeUnixNano) },
      { key: "severityText", label: "Severity", render: (r) => h("span", { class: ["sev", severityClass(r.severityNumber)], text: r.severityText || String(r.severityNumber) }) },
      { key: "body", label: "Body", render: (r) => h("span", { class: "body-text", title: r.body, text: truncate(r.body, 160) }) },
      { key: "traceId", label: "Trace", render: (r) => (r.traceId ? h("a", { class: "mono", href: ctx.link("trace", { id: r.traceId, span: r.spanId }), text: r.traceId.slice(0, 8) }) : "–") },
    ],
    rows: page.logs,
  });
}
