// One trace: the waterfall of its span tree (the call stack across services), the selected
// span's details (attributes, events and exceptions, links), and the trace's logs inline.
import { api } from "../lib/api.js";
import { PALETTE, emptyState, fmtMs, fmtNs, fmtTime, h, kvTable, serviceChip } from "../lib/dom.js";
import { severityClass } from "./logs.js";

export async function render(ctx, root) {
  const id = ctx.get("id").toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(id)) {
    root.append(emptyState("No trace chosen.", "Open one from the Traces page, or paste a 32-hex-digit trace id there."));
    return;
  }
  let trace;
  try {
    trace = await api(`/api/v1/traces/${id}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    root.append(h("div", { class: "page-head" }, h("h1", {}, "Trace ", h("code", { text: id }))), emptyState(`Trace ${id} is not stored.`, "It may not have arrived yet (spans are stored within about a second), may be older than the retention, or the id is mistyped."));
    return;
  }
  const start = BigInt(trace.startTimeUnixNano);
  // Distinct colours for this trace's services (hashing names can make two look alike).
  const hues = new Map(trace.services.map((name, i) => [name, PALETTE[i % PALETTE.length]]));
  const chip = (name, href) => serviceChip(name, href, hues.get(name));
  const total = Number(trace.durationNano) || 1;
  const rows = treeOrder(trace.spans);
  const byId = new Map(trace.spans.map((sp) => [sp.spanId, sp]));
  const logsBySpan = new Map();
  for (const log of trace.logs) logsBySpan.set(log.spanId, (logsBySpan.get(log.spanId) || 0) + 1);

  root.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, h("span", { text: `${trace.rootService}: ${trace.rootName}` }), trace.errorCount ? h("span", { class: "badge bad", text: `${trace.errorCount} error${trace.errorCount > 1 ? "s" : ""}` }) : null),
      h("div", { class: "tools links" }, h("a", { href: ctx.link("logs", { trace_id: id }), text: "Logs of this trace" }), h("a", { href: `/jaeger/api/traces/${id}`, text: "Jaeger JSON" })),
    ),
    h(
      "div",
      { class: "trace-meta" },
      h("span", {}, h("span", { class: "muted", text: "trace " }), h("code", { "data-trace-id": id, text: id })),
      h("span", {}, h("span", { class: "muted", text: "started " }), fmtTime(trace.startTimeUnixNano, true)),
      h("span", {}, h("span", { class: "muted", text: "duration " }), h("strong", { text: fmtNs(trace.durationNano) })),
      h("span", {}, h("span", { class: "muted", text: "spans " }), String(trace.spanCount)),
      h("span", { class: "chips" }, trace.services.map((name) => chip(name, ctx.link("service", { name })))),
    ),
  );

  const details = h("aside", { class: "span-details card", hidden: true });
  const collapsed = new Set();
  const waterfall = h("div", { class: "waterfall", role: "tree", "aria-label": "span tree" });
  const layout = h("div", { class: "trace-layout" }, waterfall, details);
  root.append(layout);

  const select = (spanId) => {
    ctx.set({ span: spanId }, { render: false });
    for (const el of waterfall.querySelectorAll(".wf-row.selected")) el.classList.remove("selected");
    const span = trace.spans.find((sp) => sp.spanId === spanId);
    if (!span) {
      details.hidden = true;
      layout.classList.remove("with-details");
      return;
    }
    const row = waterfall.querySelector(`[data-span="${CSS.escape(spanId)}"]`);
    if (row) row.classList.add("selected");
    details.replaceChildren(spanDetails(ctx, span, start, trace, chip, () => select(null)));
    details.hidden = false;
    layout.classList.add("with-details");
  };

  const drawRows = () => {
    const hidden = new Set();
    const visible = rows.filter(({ span, ancestors }) => {
      if (ancestors.some((a) => collapsed.has(a) || hidden.has(a))) {
        hidden.add(span.spanId);
        return false;
      }
      return true;
    });
    waterfall.replaceChildren(
      axis(total),
      ...visible.map(({ span, depth, hasChildren }) => {
        const offset = Number(BigInt(span.startTimeUnixNano) - start);
        const left = (offset / total) * 100;
        const width = Math.max((Number(span.durationNano) / total) * 100, 0.2);
        const error = span.status === "error";
        const toggle = hasChildren
          ? h("button", {
              type: "button",
              class: "toggle",
              "aria-label": collapsed.has(span.spanId) ? "expand" : "collapse",
              text: collapsed.has(span.spanId) ? "▸" : "▾",
              onclick: (event) => {
                event.stopPropagation();
                if (collapsed.has(span.spanId)) collapsed.delete(span.spanId);
                else collapsed.add(span.spanId);
                drawRows();
              },
            })
          : h("span", { class: "toggle" });
        const events = span.events.map((ev) => {
          const at = Number(BigInt(ev.timeUnixNano) - start);
          const exception = ev.name === "exception";
          return h("span", { class: ["wf-event", exception && "exception"], style: { left: `${Math.min(100, Math.max(0, (at / total) * 100))}%` }, title: `${ev.name} at ${fmtMs(at / 1e6)}${exception ? `: ${ev.attributes["exception.type"] || ""} ${ev.attributes["exception.message"] || ""}` : ""}` });
        });
        const logCount = logsBySpan.get(span.spanId);
        const row = h(
          "div",
          { class: ["wf-row", error && "wf-error"], role: "treeitem", "aria-level": depth + 1, "data-span": span.spanId, "data-service": span.service, tabindex: 0, style: { "--hue": hues.get(span.service) } },
          h(
            "div",
            { class: "wf-name", style: { paddingLeft: `${depth * 14 + 4}px` }, title: `${span.service}: ${span.name}` },
            toggle,
            h("span", { class: "dot" }),
            // The service is named where it changes along the tree: the calls between services.
            !byId.has(span.parentSpanId) || byId.get(span.parentSpanId).service !== span.service ? h("span", { class: "svc", text: span.service }) : null,
            h("span", { class: "op", text: span.name }),
            logCount ? h("span", { class: "badge", title: `${logCount} log records`, text: `${logCount} log${logCount > 1 ? "s" : ""}` }) : null,
          ),
          h(
            "div",
            { class: "wf-track" },
            h("span", { class: "wf-bar", style: { left: `${left}%`, width: `${width}%` } }),
            events,
            durationLabel(left, width, span.durationNano),
          ),
        );
        row.addEventListener("click", () => select(span.spanId));
        row.addEventListener("keydown", (event) => event.key === "Enter" && select(span.spanId));
        return row;
      }),
    );
    const chosen = ctx.get("span");
    if (chosen) waterfall.querySelector(`[data-span="${CSS.escape(chosen)}"]`)?.classList.add("selected");
  };
  drawRows();
  if (ctx.get("span")) select(ctx.get("span"));

  root.append(logsSection(ctx, trace, start, select, chip));
}

/** The duration beside the bar: after it, inside a long bar near the end, else before it. */
function durationLabel(left, width, durationNano) {
  const text = fmtNs(durationNano);
  if (left + width <= 85) return h("span", { class: "wf-dur", style: { left: `calc(${left + width}% + 4px)` }, text });
  if (width >= 12) return h("span", { class: "wf-dur inside", style: { right: `${100 - left - width}%` }, text });
  return h("span", { class: "wf-dur before", style: { right: `calc(${100 - left}% + 4px)` }, text });
}

/** Spans depth-first (children in start order) with their depth and ancestors. */
function treeOrder(spans) {
  const ids = new Set(spans.map((sp) => sp.spanId));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    if (span.parentSpanId && ids.has(span.parentSpanId) && span.parentSpanId !== span.spanId) {
      if (!children.has(span.parentSpanId)) children.set(span.parentSpanId, []);
      children.get(span.parentSpanId).push(span);
    } else {
      roots.push(span);
    }
  }
  const out = [];
  const seen = new Set();
  const walk = (span, depth, ancestors) => {
    if (seen.has(span.spanId)) return; // a cycle in bad data
    seen.add(span.spanId);
    const kids = children.get(span.spanId) || [];
    out.push({ span, depth, ancestors, hasChildren: kids.length > 0 });
    for (const kid of kids) walk(kid, depth + 1, [...ancestors, span.spanId]);
  };
  for (const r of roots) walk(r, 0, []);
  for (const span of spans) if (!seen.has(span.spanId)) walk(span, 0, []); // cycles
  return out;
}

function axis(total) {
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return h(
    "div",
    { class: "wf-row wf-axis", "aria-hidden": "true" },
    h("div", { class: "wf-name muted", text: "service: span" }),
    h(
      "div",
      { class: "wf-track" },
      ticks.map((t) => h("span", { class: "tick", style: t === 1 ? { right: "0" } : { left: `${t * 100}%` }, text: fmtMs((total * t) / 1e6) })),
    ),
  );
}

function spanDetails(ctx, span, start, trace, chip, close) {
  const offset = Number(BigInt(span.startTimeUnixNano) - start);
  const parent = trace.spans.find((sp) => sp.spanId === span.parentSpanId);
  const logs = trace.logs.filter((l) => l.spanId === span.spanId);
  const fact = (label, value) => [h("dt", { text: label }), h("dd", {}, value)];
  return h(
    "div",
    { "data-panel": "span" },
    h("div", { class: "panel-head" }, h("h3", { text: span.name }), h("button", { type: "button", class: "close", text: "Close", onclick: close })),
    h(
      "dl",
      { class: "facts" },
      fact("Service", chip(span.service, ctx.link("service", { name: span.service }))),
      fact("Kind", span.kind),
      fact("Status", h("span", { class: span.status === "error" ? "bad-text" : "", text: `${span.status}${span.statusMessage ? `: ${span.statusMessage}` : ""}` })),
      fact("Duration", fmtNs(span.durationNano)),
      fact("Starts at", `+${fmtMs(offset / 1e6)} (${fmtTime(span.startTimeUnixNano)})`),
      fact("Span id", h("code", { text: span.spanId })),
      fact("Parent", parent ? `${parent.service}: ${parent.name}` : span.parentSpanId ? h("span", {}, h("code", { text: span.parentSpanId }), " (not in this trace)") : "none (root)"),
      fact("Scope", `${span.scope.name}${span.scope.version ? ` ${span.scope.version}` : ""}` || "–"),
    ),
    h("h4", { text: "Attributes" }),
    kvTable(span.attributes),
    span.events.length ? [h("h4", { text: `Events (${span.events.length})` }), span.events.map((ev) => eventView(ev, start))] : null,
    span.links.length ? [h("h4", { text: "Links" }), span.links.map((link) => h("p", {}, h("a", { class: "mono", href: ctx.link("trace", { id: link.traceId, span: link.spanId }), text: `${link.traceId.slice(0, 16)}… / ${link.spanId}` })))] : null,
    logs.length ? [h("h4", { text: `Logs (${logs.length})` }), logs.map((l) => h("p", { class: "log-line" }, h("span", { class: ["sev", severityClass(l.severityNumber)], text: l.severityText || String(l.severityNumber) }), " ", l.body))] : null,
    h("details", {}, h("summary", { text: "Resource attributes" }), kvTable(span.resourceAttributes)),
  );
}

function eventView(ev, start) {
  const at = fmtMs(Number(BigInt(ev.timeUnixNano) - start) / 1e6);
  if (ev.name === "exception") {
    const a = ev.attributes;
    const rest = Object.fromEntries(Object.entries(a).filter(([k]) => !["exception.type", "exception.message", "exception.stacktrace"].includes(k)));
    return h(
      "div",
      { class: "exception", "data-event": "exception" },
      h("strong", { text: `${a["exception.type"] || "exception"}` }),
      h("span", { class: "muted", text: ` at +${at}` }),
      a["exception.message"] ? h("p", { text: a["exception.message"] }) : null,
      a["exception.stacktrace"] ? h("pre", { class: "stack", text: a["exception.stacktrace"] }) : null,
      Object.keys(rest).length ? kvTable(rest) : null,
    );
  }
  return h("div", { class: "event" }, h("strong", { text: ev.name }), h("span", { class: "muted", text: ` at +${at}` }), Object.keys(ev.attributes).length ? kvTable(ev.attributes) : null);
}

function logsSection(ctx, trace, start, select, chip) {
  const body = trace.logs.length
    ? h(
        "table",
        { class: "grid logs-inline" },
        h("thead", {}, h("tr", {}, ["+time", "service", "severity", "body", "span"].map((t) => h("th", { text: t })))),
        h(
          "tbody",
          {},
          trace.logs.map((l) => {
            const span = trace.spans.find((sp) => sp.spanId === l.spanId);
            return h(
              "tr",
              {},
              h("td", { class: "num", text: `+${fmtMs(Number(BigInt(l.timeUnixNano) - start) / 1e6)}` }),
              h("td", {}, chip(l.service)),
              h("td", {}, h("span", { class: ["sev", severityClass(l.severityNumber)], text: l.severityText || String(l.severityNumber) })),
              h("td", { class: "body-text", text: l.body }),
              h("td", {}, span ? h("a", { href: "#", text: span.name, onclick: (e) => (e.preventDefault(), select(span.spanId), window.scrollTo(0, 0)) }) : l.spanId ? h("code", { text: l.spanId }) : "–"),
            );
          }),
        ),
      )
    : emptyState("No log records carry this trace id.", "Logs emitted inside a span by an OpenTelemetry logging bridge carry its trace and span ids.");
  return h("section", { class: "card", "data-section": "trace-logs" }, h("header", {}, h("h2", { text: `Logs (${trace.logs.length})` })), h("div", { class: "section-body" }, body));
}

