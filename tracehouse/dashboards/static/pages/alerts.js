// Alerts: firing and pending alerts, rules with their state, health and last error, history,
// silences, and webhook deliveries with the dead letters and their replay — from the alerting
// API (docs/alerting.md) when this server has it.
import { api, hasPath } from "../lib/api.js";
import { emptyState, errorState, fmtNum, fmtTime, h, section, table } from "../lib/dom.js";

const STATE_CLASS = {
  firing: "bad",
  pending: "warn",
  resolved: "ok",
  inactive: "",
  ok: "ok",
  err: "bad",
  unknown: "",
  dead: "bad",
  delivered: "ok",
  active: "warn",
  expired: "",
};

export async function render(ctx, root) {
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Alerts" })));
  // Every alert (for the rules' states); a 404 also means this server has no alerting.
  const everyAlert = (await hasPath("/api/v1/alerts")) ? await api("/api/v1/alerts", { state: "all" }).catch((error) => (error.status === 404 ? null : Promise.reject(error))) : null;
  if (everyAlert === null) {
    root.append(
      emptyState(
        "Alerting API not available on this server.",
        "This tracehouse has no /api/v1/alerts, /api/v1/alert-rules or /api/v1/alert-deliveries endpoints, so there are no rules, alerts or deliveries to show.",
        "Run a tracehouse version with alerting, then define rules in the alert rules YAML file or through the API.",
      ),
    );
    return;
  }
  const parts = [
    section("Firing and pending alerts", () => activeAlerts(ctx), { cls: "sec-active" }),
    section("Rules", () => rules(ctx, everyAlert.alerts), { cls: "sec-rules" }),
    section("History", () => history(ctx), { cls: "sec-history" }),
    section("Dead letters", () => deliveries(ctx, "dead"), { cls: "sec-dead" }),
    section("Deliveries", () => deliveries(ctx, null), { cls: "sec-deliveries" }),
    section("Silences", () => silences(), { cls: "sec-silences" }),
  ];
  root.append(h("div", { class: "sections single" }, parts.map((p) => p.el)));
  await Promise.all(parts.map((p) => p.done));
}

const badge = (value) => h("span", { class: ["badge", STATE_CLASS[String(value).toLowerCase()] ?? ""], "data-status": value, text: String(value) });
const when = (iso) => (iso ? fmtTime(Date.parse(iso)) : "–");
const labelChips = (labels) => h("span", { class: "chips" }, Object.entries(labels || {}).map(([k, v]) => h("code", { class: "label", text: `${k}=${v}` })));

async function activeAlerts(ctx) {
  const { alerts } = await api("/api/v1/alerts", { state: "active" });
  if (!alerts.length) return emptyState("No alert is firing or pending.");
  return table({
    columns: [
      { key: "state", label: "State", render: (a) => [badge(a.state), a.silenced ? [" ", badge("silenced")] : null] },
      { key: "rule", label: "Rule", render: (a) => h("strong", { text: a.rule }) },
      { key: "labels", label: "Labels", render: (a) => labelChips(a.labels) },
      { key: "value", label: "Value", num: true, render: (a) => (a.value === null || a.value === undefined ? "–" : fmtNum(a.value)) },
      { key: "since", label: "Since", render: (a) => when(a.fired_at || a.active_at) },
      { key: "summary", label: "Summary", render: (a) => (a.annotations && (a.annotations.summary || a.annotations.description)) || "–" },
      { key: "traces", label: "Traces", render: (a) => (a.exemplar_trace_ids || []).slice(0, 3).map((id) => [h("a", { class: "mono", href: ctx.link("trace", { id }), text: id.slice(0, 8) }), " "]) },
    ],
    rows: alerts,
    rowClass: (a) => (a.state === "firing" ? "row-bad" : ""),
    rowAttrs: (a) => ({ "data-alert": a.rule }),
  });
}

async function rules(ctx, alerts) {
  const body = await api("/api/v1/alert-rules");
  const out = [];
  if (body.rules_file_error) out.push(errorState({ message: `The rules file is not loaded: ${body.rules_file_error}` }));
  if (!body.rules.length) {
    out.push(emptyState("No alert rules.", "Add rules to the alert rules YAML file (setting alert_rules_file) or create them with POST /api/v1/alert-rules; docs/alerting.md has examples."));
    return out;
  }
  // A rule's state: its worst alert (firing > pending > inactive).
  const order = { firing: 3, pending: 2, resolved: 1, inactive: 0 };
  const state = new Map();
  for (const a of alerts) if ((order[a.state] ?? 0) > (order[state.get(a.rule)] ?? -1)) state.set(a.rule, a.state);
  out.push(
    table({
      columns: [
        { key: "name", label: "Rule", render: (r) => h("span", {}, h("strong", { text: r.name }), h("details", { class: "spec" }, h("summary", { text: "spec" }), h("pre", { class: "sql-text", text: JSON.stringify(r.spec, null, 2) }))) },
        { key: "state", label: "State", value: (r) => state.get(r.name) || "inactive", render: (r) => badge(state.get(r.name) || "inactive") },
        { key: "health", label: "Health", render: (r) => badge(r.health) },
        { key: "last_error", label: "Last error", render: (r) => (r.last_error ? h("span", { class: "bad-text", text: r.last_error }) : "–") },
        { key: "kind", label: "Kind" },
        { key: "source", label: "Source" },
        { key: "last_evaluation", label: "Evaluated", render: (r) => when(r.last_evaluation) },
        { key: "series", label: "Series", num: true, render: (r) => (r.series === null || r.series === undefined ? "–" : String(r.series)) },
      ],
      rows: body.rules,
      rowClass: (r) => (r.health === "err" ? "row-bad" : ""),
      rowAttrs: (r) => ({ "data-rule": r.name }),
    }),
  );
  return out;
}

async function history(ctx) {
  const body = await api("/api/v1/alerts/history", { ...ctx.window, limit: 200 });
  if (!body.history.length) return emptyState("No alert changed state in this time range.");
  return table({
    columns: [
      { key: "at", label: "At", render: (e) => when(e.at) },
      { key: "rule", label: "Rule" },
      { key: "change", label: "Change", render: (e) => [badge(e.from), " → ", badge(e.to)] },
      { key: "value", label: "Value", num: true, render: (e) => (e.value === null || e.value === undefined ? "–" : fmtNum(e.value)) },
      { key: "labels", label: "Labels", render: (e) => labelChips(e.labels) },
      { key: "note", label: "Note", render: (e) => e.note || "–" },
    ],
    rows: body.history,
    rowAttrs: (e) => ({ "data-history": e.rule }),
  });
}

async function deliveries(ctx, status) {
  const body = await api("/api/v1/alert-deliveries", { status, limit: 100 });
  if (!body.deliveries.length) {
    return emptyState(status === "dead" ? "No dead letters: every notification was delivered or is still being retried." : "No notifications or scaling calls sent yet.");
  }
  const note = h("p", { class: "muted small", "aria-live": "polite" });
  return [
    note,
    table({
      columns: [
        { key: "created_at", label: "Created", render: (d) => when(d.created_at) },
        { key: "status", label: "Status", render: (d) => badge(d.status) },
        { key: "kind", label: "Kind" },
        { key: "receiver", label: "Receiver" },
        { key: "target", label: "Target", render: (d) => d.target || "–" },
        { key: "attempts", label: "Attempts", num: true },
        { key: "last_status_code", label: "Last HTTP", num: true, render: (d) => (d.last_status_code ? String(d.last_status_code) : "–") },
        { key: "last_error", label: "Last error", render: (d) => (d.last_error ? h("span", { class: d.status === "dead" ? "bad-text" : "", text: d.last_error }) : "–") },
        { key: "replay", label: "", sortable: false, render: (d) => (d.status === "dead" ? replayButton(d, note) : d.delivered_at ? when(d.delivered_at) : "") },
      ],
      rows: body.deliveries,
      rowAttrs: (d) => ({ "data-delivery": d.id }),
    }),
  ];
}

function replayButton(delivery, note) {
  const button = h("button", { type: "button", text: "Replay", title: "queue this dead letter again (same webhook-id and body)" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const again = await api(`/api/v1/alert-deliveries/${encodeURIComponent(delivery.id)}/replay`, {}, { method: "POST" });
      note.replaceChildren(`Delivery ${delivery.id} is queued again (${again.status}).`);
      button.replaceWith(badge(again.status));
    } catch (error) {
      note.replaceChildren(errorState(error));
      button.disabled = false;
    }
  });
  return button;
}

async function silences() {
  if (!(await hasPath("/api/v1/silences"))) return h("p", { class: "muted", text: "This server has no silences API." });
  const body = await api("/api/v1/silences");
  if (!body.silences.length) return emptyState("No silences.", "Create one with POST /api/v1/silences to mute matching alerts for a while.");
  return table({
    columns: [
      { key: "status", label: "Status", render: (s) => badge(s.status) },
      { key: "matchers", label: "Matchers", render: (s) => h("span", { class: "chips" }, s.matchers.map((m) => h("code", { class: "label", text: `${m.name}${m.op}${m.value}` }))) },
      { key: "starts_at", label: "From", render: (s) => when(s.starts_at) },
      { key: "ends_at", label: "Until", render: (s) => when(s.ends_at) },
      { key: "created_by", label: "By", render: (s) => s.created_by || "–" },
      { key: "comment", label: "Comment", render: (s) => s.comment || "–" },
    ],
    rows: body.silences,
  });
}
