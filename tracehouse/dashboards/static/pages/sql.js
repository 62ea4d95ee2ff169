// Slow SQL: statements by fingerprint, ranked by total time, p99, calls, slow calls or errors;
// a row opens its detail: the statement, a sample, its callers and exemplar traces.
import { api } from "../lib/api.js";
import { bar, emptyState, fmtMs, fmtNum, fmtPct, h, serviceChip, truncate } from "../lib/dom.js";

const SORTS = [
  ["total", "total time"],
  ["p99", "p99 latency"],
  ["calls", "calls"],
  ["slow", "slow calls"],
  ["errors", "errors"],
];
const METRIC = { total: "total_ms", p99: "p99_ms", calls: "calls", slow: "slow_calls", errors: "errors" };

export async function render(ctx, root) {
  const q = { sort: ctx.get("sort", "total"), service: ctx.get("service"), db: ctx.get("db"), namespace: ctx.get("namespace") };
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Slow SQL" }), filters(ctx, q)));
  const page = await api("/api/v1/sql", { ...ctx.window, ...q, limit: 100 });
  if (!page.statements.length) {
    root.append(
      q.service || q.db || q.namespace
        ? emptyState("No statement matches these filters.", "Remove a filter or widen the time range.")
        : emptyState("No database calls in this time range.", "Database client spans need db.system.name (or db.system) and db.query.text (or db.statement); the OpenTelemetry database instrumentations set them."),
    );
    return;
  }
  const key = METRIC[q.sort] || "total_ms";
  const top = Math.max(...page.statements.map((st) => st[key] || 0));
  const chosen = ctx.get("fp");
  const rows = page.statements.map((st, i) => {
    const detail = h("tr", { class: "sql-detail", hidden: st.fingerprint !== chosen }, h("td", { colspan: 10 }, statementDetail(ctx, st)));
    const row = h(
      "tr",
      { class: ["clickable", st.slow_calls > 0 && "row-slow", st.fingerprint === chosen && "selected"], "data-fingerprint": st.fingerprint, "data-rank": i + 1 },
      h("td", { class: "num", text: String(i + 1) }),
      h("td", { class: "stmt" }, h("code", { title: st.statement, text: truncate(st.statement, 140) })),
      h("td", {}, st.db_system, st.db_namespace ? h("span", { class: "muted", text: ` / ${st.db_namespace}` }) : null),
      h("td", { class: "num" }, h("span", { class: "dur" }, bar(st[key], top, "slow"), key === "total_ms" || key === "p99_ms" ? fmtMs(st[key]) : fmtNum(st[key]))),
      h("td", { class: "num", text: fmtNum(st.calls) }),
      h("td", { class: ["num", st.slow_calls > 0 && "slow-text"], title: `calls ≥ ${st.slow_threshold_ms} ms`, text: fmtNum(st.slow_calls) }),
      h("td", { class: ["num", st.errors > 0 && "bad-text"], text: fmtNum(st.errors) }),
      h("td", { class: "num", text: fmtMs(st.p50_ms) }),
      h("td", { class: "num", text: fmtMs(st.p99_ms) }),
      h("td", { class: "num", text: fmtMs(st.total_ms) }),
    );
    row.addEventListener("click", () => {
      const open = detail.hidden;
      for (const el of root.querySelectorAll("tr.sql-detail")) el.hidden = true;
      for (const el of root.querySelectorAll("tr.selected")) el.classList.remove("selected");
      detail.hidden = !open;
      row.classList.toggle("selected", open);
      ctx.set({ fp: open ? st.fingerprint : null }, { render: false });
    });
    return [row, detail];
  });
  const label = SORTS.find(([k]) => k === q.sort);
  root.append(
    h("p", { class: "muted small", text: `${page.statements.length} statements by fingerprint, ranked by ${label ? label[1] : q.sort} · click one for callers and example traces` }),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "grid sql" },
        h("thead", {}, h("tr", {}, ["#", "Statement", "DB", label ? label[1] : "", "Calls", "Slow", "Errors", "p50", "p99", "Total"].map((t, i) => h("th", { class: i >= 3 || i === 0 ? "num" : "", text: t })))),
        h("tbody", {}, rows.flat()),
      ),
    ),
  );
}

function filters(ctx, q) {
  const sort = h("select", { name: "sort", "aria-label": "rank by" }, SORTS.map(([k, label]) => h("option", { value: k, selected: k === q.sort, text: `by ${label}` })));
  const service = h("input", { name: "service", type: "search", value: q.service, placeholder: "calling service" });
  const db = h("input", { name: "db", type: "search", value: q.db, placeholder: "db system", class: "short" });
  const form = h("form", { class: "tools" }, sort, service, db, h("button", { type: "submit", text: "Apply" }));
  sort.addEventListener("change", () => ctx.set({ sort: sort.value === "total" ? null : sort.value, fp: null }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.set({ sort: sort.value === "total" ? null : sort.value, service: service.value.trim() || null, db: db.value.trim() || null, fp: null });
  });
  return form;
}

function statementDetail(ctx, st) {
  return h(
    "div",
    { class: "two-col", "data-panel": "sql" },
    h(
      "div",
      {},
      h("h4", { text: "Normalized statement" }),
      h("pre", { class: "sql-text", text: st.statement }),
      h("h4", { text: "Sample (with its literals)" }),
      h("pre", { class: "sql-text", text: st.sample_statement }),
    ),
    h(
      "div",
      {},
      h(
        "dl",
        { class: "facts" },
        h("dt", { text: "Fingerprint" }),
        h("dd", {}, h("code", { text: st.fingerprint })),
        h("dt", { text: "Latency" }),
        h("dd", { text: `p50 ${fmtMs(st.p50_ms)} · p95 ${fmtMs(st.p95_ms)} · p99 ${fmtMs(st.p99_ms)} · max ${fmtMs(st.max_ms)}` }),
        h("dt", { text: "Slow calls" }),
        h("dd", { text: `${fmtNum(st.slow_calls)} of ${fmtNum(st.calls)} (≥ ${st.slow_threshold_ms} ms)` }),
        h("dt", { text: "Errors" }),
        h("dd", { text: `${fmtNum(st.errors)} (${fmtPct(st.error_rate)})` }),
      ),
      h("h4", { text: "Called by" }),
      h("p", { class: "chips" }, st.services.map((name) => serviceChip(name, ctx.link("service", { name })))),
      h("h4", { text: "Example traces" }),
      st.exemplar_trace_ids.length
        ? h(
            "ul",
            { class: "plain" },
            st.exemplar_trace_ids.map((id) => h("li", {}, h("a", { class: "mono", href: ctx.link("trace", { id }), "data-trace": id, text: id }), id === st.slowest_trace_id ? h("span", { class: "badge slow", text: "slowest" }) : null)),
          )
        : h("p", { class: "muted", text: "none recorded" }),
    ),
  );
}
