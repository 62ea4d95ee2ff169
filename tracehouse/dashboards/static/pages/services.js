// Services: every service with calls/s, error rate, p50/p95/p99 and a trend; slow and failing
// services marked and, by default, listed first.
import { api, slowServices } from "../lib/api.js";
import { FAILING_ERROR_RATE, emptyState, errorState, fmtMs, fmtNum, fmtPct, fmtRps, h, loading, sparkline, statusBadges, table } from "../lib/dom.js";
import { serviceSeries } from "../lib/series.js";

export function noSpansHint(ctx) {
  return [
    `No spans yet in this time range — point your OpenTelemetry exporter at ${ctx.otlpHost}:4317 (OTLP/gRPC) or http://${ctx.otlpHost}:4318/v1/traces (OTLP/HTTP),`,
    "or pick a wider time range above.",
  ];
}

/** 2 failing, 1 slow, 0 fine: the default order puts problems first. */
function health(row) {
  return (row.error_rate >= FAILING_ERROR_RATE ? 2 : row.errors > 0 ? 0.5 : 0) + (row.slow ? 1 : 0);
}

export async function render(ctx, root) {
  const filter = ctx.get("q");
  const sort = { key: ctx.get("sort", "health"), dir: ctx.get("dir", "desc") };
  const input = h("input", { type: "search", placeholder: "filter services", value: filter, "aria-label": "filter services" });
  input.addEventListener("change", () => ctx.set({ q: input.value }));
  const body = h("div", {}, loading());
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Services" }), h("div", { class: "tools" }, input)), body);

  const [page, slow] = await Promise.all([api("/api/v1/services", ctx.window), slowServices(ctx.window).catch(() => null)]);
  const rows = page.services
    .filter((row) => row.calls > 0)
    .filter((row) => !filter || row.service.toLowerCase().includes(filter.toLowerCase()))
    .map((row) => ({ ...row, slow: slow ? slow.get(row.service) || null : null }));
  if (!rows.length) {
    body.replaceChildren(filter && page.services.length ? emptyState(`No service matches "${filter}".`, "Clear the filter to see all services.") : emptyState("No services.", ...noSpansHint(ctx)));
    return;
  }
  const trends = new Map();
  const columns = [
    {
      key: "service",
      label: "Service",
      render: (r) => h("span", { class: "name-cell" }, h("a", { href: ctx.link("service", { name: r.service }), "data-service": r.service, text: r.service }), statusBadges(r, r.slow)),
    },
    { key: "health", label: "Health", value: health, render: (r) => healthText(r), title: "failing, slow, errors or ok" },
    { key: "rps", label: "Calls/s", num: true, render: (r) => fmtRps(r.rps) },
    { key: "error_rate", label: "Errors", num: true, render: (r) => h("span", { class: r.error_rate >= FAILING_ERROR_RATE ? "bad-text" : "", text: fmtPct(r.error_rate) }) },
    { key: "p50_ms", label: "p50", num: true, render: (r) => fmtMs(r.p50_ms) },
    { key: "p95_ms", label: "p95", num: true, render: (r) => fmtMs(r.p95_ms) },
    { key: "p99_ms", label: "p99", num: true, render: (r) => h("span", { class: r.slow ? "slow-text" : "", text: fmtMs(r.p99_ms) }) },
    { key: "calls", label: "Calls", num: true, render: (r) => fmtNum(r.calls) },
    {
      key: "trend",
      label: "Calls/s · p99 trend",
      sortable: false,
      render: (r) => {
        const cell = h("span", { class: "trend", "data-trend": r.service });
        trends.set(r.service, cell);
        return cell;
      },
    },
  ];
  const note = slow === null ? h("p", { class: "muted small", text: "Slow-service detection is not available on this server; services are marked failing from their error rate." }) : null;
  body.replaceChildren(
    h("p", { class: "muted small", text: `${rows.length} services · entry spans (server and consumer) · failing: error rate ≥ ${fmtPct(FAILING_ERROR_RATE)}` }),
    tableWithSort(ctx, columns, rows, sort),
  );
  if (note) body.append(note);
  // Trends come after the table is usable: one small request per time bucket.
  try {
    const series = await serviceSeries(ctx.range);
    for (const [name, cell] of trends) {
      const points = series.byService.get(name) || [];
      const rps = points.map((p) => (p ? p.rps : 0));
      const p99 = points.map((p) => (p ? p.p99_ms : null));
      cell.replaceChildren(
        sparkline(rps, { cls: "spark rps", title: `calls/s per ${bucketLabel(series.times)}` }),
        sparkline(p99, { cls: "spark p99", title: `p99 per ${bucketLabel(series.times)}` }),
      );
    }
  } catch (error) {
    body.append(errorState(error));
  }
}

function tableWithSort(ctx, columns, rows, sort) {
  const tie = (a, b) => b.calls - a.calls;
  const ordered = [...rows].sort(tie);
  return table({
    columns,
    rows: ordered,
    sort,
    onSort: (key, dir) => ctx.set({ sort: key, dir }),
    onRow: (row) => (location.hash = ctx.link("service", { name: row.service })),
    rowClass: (r) => (r.error_rate >= FAILING_ERROR_RATE ? "row-bad" : r.slow ? "row-slow" : ""),
    rowAttrs: (r) => ({ "data-row": r.service }),
  });
}

function healthText(r) {
  if (r.error_rate >= FAILING_ERROR_RATE) return h("span", { class: "bad-text", text: r.slow ? "failing, slow" : "failing" });
  if (r.slow) return h("span", { class: "slow-text", text: "slow" });
  if (r.errors > 0) return h("span", { class: "warn-text", text: "some errors" });
  return h("span", { class: "ok-text", text: "ok" });
}

function bucketLabel(times) {
  if (times.length < 2) return "bucket";
  const minutes = Math.round((times[1] - times[0]) / 60000);
  return minutes >= 60 ? `${(minutes / 60).toFixed(minutes % 60 ? 1 : 0)} h` : `${minutes} min`;
}
