// Alerts: firing alerts, rules with their state, health and last error, history, and webhook
// deliveries with dead letters and replay — from the alerting API when this server has it.
import { api, hasPath } from "../lib/api.js";
import { emptyState, errorState, h, section } from "../lib/dom.js";

const ALERTING = "/api/v1/alerts";
const STATE_CLASS = { firing: "bad", pending: "warn", resolved: "ok", inactive: "muted", ok: "ok", err: "bad", error: "bad", dead: "bad", failed: "bad", delivered: "ok", pending_delivery: "warn" };

export async function render(ctx, root) {
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Alerts" })));
  if (!(await hasPath(ALERTING))) {
    root.append(
      emptyState(
        "Alerting API not available on this server.",
        "This tracehouse has no /api/v1/alerts, /api/v1/alert-rules or /api/v1/alert-deliveries endpoints yet, so there are no rules, alerts or deliveries to show.",
        "Upgrade tracehouse to a version with alerting, then define rules in YAML or through the API.",
      ),
    );
    return;
  }
  const parts = [
    section("Firing and pending alerts", () => listing(ctx, "/api/v1/alerts", {}, "No alert is firing.")),
    section("Rules", () => listing(ctx, "/api/v1/alert-rules", {}, "No alert rules. Add rules in the alert rules YAML file or with POST /api/v1/alert-rules.")),
    section("History", () => listing(ctx, "/api/v1/alerts/history", ctx.window, "No alert changed state in this time range.")),
    section("Dead letters", () => listing(ctx, "/api/v1/alert-deliveries", { status: "dead" }, "No dead letters: every notification was delivered or is still being retried.", true)),
    section("Deliveries", () => listing(ctx, "/api/v1/alert-deliveries", {}, "No notifications sent yet.", true)),
  ];
  root.append(h("div", { class: "sections single" }, parts.map((p) => p.el)));
  await Promise.all(parts.map((p) => p.done));
}

/** The list in an answer: the answer itself, or its first array-valued field. */
function itemsOf(body) {
  if (Array.isArray(body)) return body;
  if (body && typeof body === "object") {
    for (const key of ["items", "alerts", "rules", "history", "deliveries", "data"]) if (Array.isArray(body[key])) return body[key];
    const first = Object.values(body).find(Array.isArray);
    if (first) return first;
  }
  return [];
}

async function listing(ctx, path, params, emptyText, replayable = false) {
  if (!(await hasPath(path))) return h("p", { class: "muted", text: `${path} is not offered by this server.` });
  const items = itemsOf(await api(path, params));
  if (!items.length) return emptyState(emptyText);
  const columns = [];
  for (const item of items.slice(0, 50)) for (const key of Object.keys(item)) if (!columns.includes(key)) columns.push(key);
  const shown = columns.slice(0, 10);
  const status = h("p", { class: "muted small" });
  return [
    status,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "grid" },
        h("thead", {}, h("tr", {}, shown.map((c) => h("th", { text: c.replace(/_/g, " ") })), replayable ? h("th", {}) : null)),
        h(
          "tbody",
          {},
          items.map((item) =>
            h(
              "tr",
              { class: stateOf(item) === "firing" ? "row-bad" : "" },
              shown.map((c) => h("td", {}, cell(c, item[c]))),
              replayable ? h("td", {}, replayButton(item, status)) : null,
            ),
          ),
        ),
      ),
    ),
  ];
}

function stateOf(item) {
  return String(item.state || item.status || "").toLowerCase();
}

function cell(key, value) {
  if (value === null || value === undefined || value === "") return "–";
  if (["state", "status", "health"].includes(key)) return h("span", { class: ["badge", STATE_CLASS[String(value).toLowerCase()] || ""], text: String(value) });
  if (key.includes("error") && value) return h("span", { class: "bad-text", text: String(value) });
  if (typeof value === "object") return h("code", { class: "small", title: JSON.stringify(value, null, 2), text: compact(value) });
  return String(value);
}

function compact(value) {
  if (Array.isArray(value)) return value.map((v) => (typeof v === "object" ? compact(v) : String(v))).join(", ");
  return Object.entries(value)
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
}

function replayButton(item, status) {
  const id = item.id ?? item.delivery_id;
  if (id === undefined || stateOf(item) !== "dead") return null;
  const button = h("button", { type: "button", text: "Replay" });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(`/api/v1/alert-deliveries/${encodeURIComponent(id)}/replay`, {}, { method: "POST" });
      status.replaceChildren(`Delivery ${id} queued again.`);
    } catch (error) {
      status.replaceChildren(errorState(error));
      button.disabled = false;
    }
  });
  return button;
}
