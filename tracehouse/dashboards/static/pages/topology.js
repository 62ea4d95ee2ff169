// Topology: the service map drawn in SVG from /api/v1/topology's layout coordinates. Services,
// databases, messaging, external peers and the user entry are distinct shapes; edges carry
// calls, error rate and p99; failing and slow nodes and edges are highlighted. Wheel zooms,
// dragging pans (kept in the URL as z=scale,x,y); a service opens its page, an edge or a peer
// shows its figures and links to its calls.
import { api, slowServices } from "../lib/api.js";
import { FAILING_ERROR_RATE, emptyState, fmtMs, fmtNum, fmtPct, h, s, slowTitle, truncate } from "../lib/dom.js";

// A database call path is slow from this p99 on (the slow-call threshold of /api/v1/sql).
const SLOW_DB_MS = 200;
const NODE_R = 26;
// Above this many edges only failing and slow edges carry a label unless labels=all.
const MAX_LABELLED_EDGES = 12;

export async function render(ctx, root) {
  const focus = ctx.get("service");
  const depth = ctx.get("depth", "1");
  const [graph, slow] = await Promise.all([
    api("/api/v1/topology", { ...ctx.window, service: focus || undefined, depth: focus ? depth : undefined }),
    slowServices(ctx.window).catch(() => null),
  ]);
  root.append(head(ctx, graph, focus, depth));
  if (!graph.nodes.length) {
    root.append(
      focus
        ? emptyState(`No calls to or from ${focus} in this range.`, "Check the name, widen the time range, or show the whole graph.")
        : emptyState(
            "No service graph for this time range yet.",
            `Send spans (OTLP to ${ctx.otlpHost}:4317 or :4318). The worker role builds the graph every 15 s from closed minutes, so new spans show up about a minute later.`,
            "Or pick a wider time range above.",
          ),
    );
    return;
  }
  root.append(drawGraph(ctx, graph, slow));
}

function head(ctx, graph, focus, depth) {
  const list = h("datalist", { id: "topology-services" }, graph.nodes.filter((n) => n.type === "service").map((n) => h("option", { value: n.id })));
  const input = h("input", { type: "search", name: "service", list: "topology-services", placeholder: "focus on a service", value: focus, "aria-label": "focus on a service" });
  const depthSelect = h("select", { name: "depth", "aria-label": "hops around the service" }, [1, 2, 3, 4, 5].map((d) => h("option", { value: d, selected: String(d) === depth, text: `${d} hop${d > 1 ? "s" : ""}` })));
  const all = ctx.get("labels") === "all";
  const labels =
    graph.edges.length > MAX_LABELLED_EDGES
      ? h("label", { class: "check", title: "a dense graph labels only its failing and slow edges" }, h("input", { type: "checkbox", name: "labels", checked: all, onchange: () => ctx.set({ labels: all ? null : "all" }, { render: true }) }), " label every edge")
      : null;
  const form = h("form", { class: "tools" }, labels, input, depthSelect, h("button", { type: "submit", text: "Focus" }), focus ? h("a", { href: ctx.link("topology"), text: "Show all" }) : null, list);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.set({ service: input.value.trim() || null, depth: input.value.trim() ? depthSelect.value : null, sel: null, z: null });
  });
  return h("div", { class: "page-head" }, h("h1", { text: focus ? `Topology around ${focus}` : "Topology" }), form);
}

function nodeState(node, slow) {
  if (node.error_rate >= FAILING_ERROR_RATE) return "bad";
  if (slow && slow.has(node.id)) return "slow";
  if (node.errors > 0) return "warn";
  return "ok";
}

function edgeState(edge, nodes, slow) {
  if (edge.error_rate >= FAILING_ERROR_RATE) return "bad";
  const cause = slow && slow.get(edge.source) && slow.get(edge.source).cause;
  if (cause && cause.type === "edge" && cause.target === edge.target) return "slow";
  if (slow && slow.has(edge.target) && nodes.get(edge.target).type === "service") return "slow";
  if (edge.type === "database" && (edge.client_p99_ms ?? 0) >= SLOW_DB_MS) return "slow";
  if (edge.errors > 0) return "warn";
  return "ok";
}

function drawGraph(ctx, graph, slow) {
  const nodes = new Map(graph.nodes.map((n) => [n.id, n]));
  const columns = new Map();
  for (const n of graph.nodes) columns.set(n.x, (columns.get(n.x) || 0) + 1);
  const width = Math.max(960, columns.size * 270);
  const height = Math.max(440, Math.max(...columns.values()) * 130);
  const pad = { x: 120, y: 70 };
  const rowY = untangle(graph);
  const pos = (n) => ({ x: pad.x + n.x * (width - 2 * pad.x), y: pad.y + rowY.get(n.id) * (height - 2 * pad.y) });
  // A dense graph labels only its failing and slow edges (all: labels=all); the others have
  // their figures in a tooltip and in the panel a click opens.
  const allLabels = ctx.get("labels") === "all" || graph.edges.length <= MAX_LABELLED_EDGES;

  const panel = h("aside", { class: "graph-panel", hidden: true });
  const container = h("div", { class: "graph-box" });
  const viewport = s("g", { class: "viewport" });
  const svg = s(
    "svg",
    { class: "graph", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "service map" },
    s(
      "defs",
      {},
      ["ok", "warn", "bad", "slow"].map((state) =>
        s("marker", { id: `arrow-${state}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse", class: `arrow ${state}` }, s("path", { d: "M0,0L10,5L0,10z" })),
      ),
    ),
    viewport,
  );

  const edgeLayer = s("g", { class: "edges" });
  const labelLayer = s("g", { class: "edge-labels" });
  const nodeLayer = s("g", { class: "nodes" });
  viewport.append(edgeLayer, nodeLayer, labelLayer);

  const select = (kind, id) => {
    ctx.set({ sel: kind ? `${kind}:${id}` : null }, { render: false });
    for (const el of svg.querySelectorAll(".selected")) el.classList.remove("selected");
    if (!kind) {
      panel.hidden = true;
      container.classList.remove("with-panel");
      return;
    }
    const el = svg.querySelector(kind === "edge" ? `[data-edge="${CSS.escape(id)}"]` : `[data-node="${CSS.escape(id)}"]`);
    if (el) el.classList.add("selected");
    panel.hidden = false;
    container.classList.add("with-panel");
    panel.replaceChildren(kind === "edge" ? edgePanel(ctx, graph.edges.find((e) => edgeKey(e) === id), nodes) : nodePanel(ctx, nodes.get(id), slow), h("button", { type: "button", class: "close", text: "Close", onclick: () => select(null) }));
  };

  for (const edge of graph.edges) {
    const a = pos(nodes.get(edge.source));
    const b = pos(nodes.get(edge.target));
    const state = edgeState(edge, nodes, slow);
    const key = edgeKey(edge);
    const label = `${fmtNum(edge.calls)} calls · ${fmtPct(edge.error_rate)} err · p99 ${fmtMs(edge.client_p99_ms ?? edge.server_p99_ms)}`;
    const geometry = curve(a, b, label.length);
    const group = s(
      "g",
      { class: ["edge", state], "data-edge": key, "data-source": edge.source, "data-target": edge.target, tabindex: 0 },
      s("title", { text: `${edge.source} → ${edge.target}: ${label}` }),
      s("path", { class: "edge-line", d: geometry.d, "stroke-width": (1.5 + Math.log10(edge.calls + 1)).toFixed(1), "marker-end": `url(#arrow-${state})` }),
      s("path", { class: "edge-hit", d: geometry.d }),
    );
    group.addEventListener("click", (event) => {
      event.stopPropagation();
      select("edge", key);
    });
    edgeLayer.append(group);
    if (allLabels || state === "bad" || state === "slow") labelLayer.append(s("text", { class: ["edge-label", state], x: geometry.label.x, y: geometry.label.y, "text-anchor": "middle", text: label }));
  }

  for (const node of graph.nodes) {
    const p = pos(node);
    const state = nodeState(node, slow);
    const stats = node.type === "user" ? `${fmtNum(node.calls)} requests` : `${fmtNum(node.calls)} calls · ${fmtPct(node.error_rate)} · p99 ${fmtMs(node.p99_ms)}`;
    const group = s(
      "g",
      { class: ["node", node.type, state], transform: `translate(${p.x},${p.y})`, "data-node": node.id, "data-type": node.type, tabindex: 0 },
      s("title", { text: `${node.type} ${node.id}\n${stats}${slow && slow.get(node.id) ? `\nslow: ${slowTitle(slow.get(node.id))}` : ""}` }),
      shape(node.type),
      s("text", { class: "node-name", y: NODE_R + 18, "text-anchor": "middle", text: truncate(node.id, 30) }),
      s("text", { class: "node-stats", y: NODE_R + 34, "text-anchor": "middle", text: stats }),
    );
    group.addEventListener("click", (event) => {
      event.stopPropagation();
      if (moved) return;
      if (node.type === "service") location.hash = ctx.link("service", { name: node.id });
      else select("node", node.id);
    });
    group.addEventListener("keydown", (event) => {
      if (event.key === "Enter") group.dispatchEvent(new MouseEvent("click"));
    });
    nodeLayer.append(group);
  }

  // -- zoom and pan ---------------------------------------------------------------------------
  let [k, tx, ty] = (ctx.get("z") || "1,0,0").split(",").map(Number);
  if (![k, tx, ty].every(Number.isFinite) || k <= 0) [k, tx, ty] = [1, 0, 0];
  let moved = false;
  let saveTimer = null;
  const apply = () => {
    viewport.setAttribute("transform", `translate(${tx.toFixed(1)},${ty.toFixed(1)}) scale(${k.toFixed(3)})`);
    clearTimeout(saveTimer);
    saveTimer = setTimeout(() => ctx.set({ z: k === 1 && tx === 0 && ty === 0 ? null : `${k.toFixed(3)},${tx.toFixed(0)},${ty.toFixed(0)}` }, { render: false }), 300);
  };
  const toSvg = (clientX, clientY) => {
    const pt = new DOMPoint(clientX, clientY).matrixTransform(svg.getScreenCTM().inverse());
    return { x: pt.x, y: pt.y };
  };
  const zoomAt = (factor, cx, cy) => {
    const next = Math.min(8, Math.max(0.2, k * factor));
    tx = cx - ((cx - tx) * next) / k;
    ty = cy - ((cy - ty) * next) / k;
    k = next;
    apply();
  };
  svg.addEventListener(
    "wheel",
    (event) => {
      event.preventDefault();
      const p = toSvg(event.clientX, event.clientY);
      zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, p.x, p.y);
    },
    { passive: false },
  );
  let drag = null;
  svg.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    drag = { start: toSvg(event.clientX, event.clientY), tx, ty };
    moved = false;
  });
  svg.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const p = toSvg(event.clientX, event.clientY);
    const dx = p.x - drag.start.x;
    const dy = p.y - drag.start.y;
    if (!moved && Math.hypot(dx, dy) < 4) return;
    if (!moved) svg.setPointerCapture(event.pointerId);
    moved = true;
    svg.classList.add("panning");
    tx = drag.tx + dx;
    ty = drag.ty + dy;
    apply();
  });
  const endDrag = () => {
    drag = null;
    svg.classList.remove("panning");
    setTimeout(() => (moved = false), 0);
  };
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  svg.addEventListener("click", () => {
    if (!moved) select(null);
  });
  viewport.setAttribute("transform", `translate(${tx},${ty}) scale(${k})`);

  const zoomButtons = h(
    "div",
    { class: "zoom" },
    h("button", { type: "button", title: "zoom in", "aria-label": "zoom in", text: "+", onclick: () => zoomAt(1.25, width / 2, height / 2) }),
    h("button", { type: "button", title: "zoom out", "aria-label": "zoom out", text: "−", onclick: () => zoomAt(1 / 1.25, width / 2, height / 2) }),
    h("button", {
      type: "button",
      title: "fit",
      text: "Fit",
      onclick: () => {
        [k, tx, ty] = [1, 0, 0];
        apply();
      },
    }),
  );

  container.append(svg, zoomButtons, legend(), panel);
  const sel = ctx.get("sel");
  if (sel) {
    const at = sel.indexOf(":");
    const kind = sel.slice(0, at);
    const id = sel.slice(at + 1);
    if ((kind === "edge" && graph.edges.some((e) => edgeKey(e) === id)) || (kind === "node" && nodes.has(id))) queueMicrotask(() => select(kind, id));
  }
  return container;
}

/**
 * Row positions that cross fewer edges. The API places each node in a column by hops from the
 * entry points (x) and orders a column by name (y); here each column keeps the API's x and its
 * set of y positions, but nodes are assigned to those positions by the barycentre of their
 * neighbours in the columns before, then after (a few sweeps, Sugiyama's heuristic), so that a
 * service's callees sit beside it. Deterministic: ties keep the API's order.
 */
function untangle(graph) {
  const y = new Map(graph.nodes.map((n) => [n.id, n.y]));
  const x = new Map(graph.nodes.map((n) => [n.id, n.x]));
  const columns = [...new Set(graph.nodes.map((n) => n.x))].sort((a, b) => a - b).map((cx) => graph.nodes.filter((n) => n.x === cx).map((n) => n.id));
  const slots = columns.map((ids) => ids.map((id) => y.get(id)).sort((a, b) => a - b));
  const neighbours = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) {
    if (e.source === e.target) continue;
    neighbours.get(e.source).push(e.target);
    neighbours.get(e.target).push(e.source);
  }
  const sweep = (order, before) => {
    for (const c of order) {
      const ids = columns[c];
      const centre = new Map(
        ids.map((id) => {
          const side = neighbours.get(id).filter((other) => (before ? x.get(other) < x.get(id) : x.get(other) > x.get(id)));
          return [id, side.length ? side.reduce((sum, other) => sum + y.get(other), 0) / side.length : y.get(id)];
        }),
      );
      const sorted = [...ids].sort((a, b) => centre.get(a) - centre.get(b) || y.get(a) - y.get(b));
      sorted.forEach((id, i) => y.set(id, slots[c][i]));
    }
  };
  const forward = columns.map((_, i) => i);
  for (let round = 0; round < 4; round++) {
    sweep(forward.slice(1), true);
    sweep([...forward].reverse().slice(1), false);
  }
  return y;
}

export function edgeKey(edge) {
  return `${edge.source}→${edge.target}`;
}

/**
 * A gently bent path from a to b (two opposite edges bend apart), stopping at the nodes, and
 * where its label of `chars` characters goes: beside the bend, pushed out along the normal
 * far enough that the horizontal text clears the line.
 */
function curve(a, b, chars) {
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len = Math.hypot(dx, dy) || 1;
  const ux = dx / len;
  const uy = dy / len;
  const start = { x: a.x + ux * (NODE_R + 4), y: a.y + uy * (NODE_R + 4) };
  const end = { x: b.x - ux * (NODE_R + 8), y: b.y - uy * (NODE_R + 8) };
  const bend = Math.min(40, len * 0.12);
  // Bend to the left of the direction of travel: a left-to-right edge arcs upwards, away
  // from the node names below the nodes, and an opposite edge arcs the other way.
  const c = { x: (start.x + end.x) / 2 + uy * bend, y: (start.y + end.y) / 2 - ux * bend };
  const mid = { x: 0.25 * start.x + 0.5 * c.x + 0.25 * end.x, y: 0.25 * start.y + 0.5 * c.y + 0.25 * end.y };
  // The label sits beside the curve, on the side it bends to, so the line never crosses it.
  const nx = uy;
  const ny = -ux;
  const away = 8 + Math.abs(nx) * chars * 3.2 + Math.abs(ny) * 7;
  const label = { x: mid.x + nx * away, y: mid.y + ny * away + 4 };
  return { d: `M${start.x.toFixed(1)},${start.y.toFixed(1)}Q${c.x.toFixed(1)},${c.y.toFixed(1)} ${end.x.toFixed(1)},${end.y.toFixed(1)}`, label };
}

/** The glyph of a node type, centred on 0,0. */
function shape(type) {
  const r = NODE_R;
  switch (type) {
    case "database":
      return s(
        "g",
        { class: "shape" },
        s("path", { d: `M${-r * 0.85},${-r * 0.65}v${r * 1.3}a${r * 0.85},${r * 0.3} 0 0 0 ${r * 1.7},0v${-r * 1.3}` }),
        s("ellipse", { cx: 0, cy: -r * 0.65, rx: r * 0.85, ry: r * 0.3 }),
      );
    case "messaging": {
      const pts = [0, 60, 120, 180, 240, 300].map((a) => `${(r * Math.cos((a * Math.PI) / 180)).toFixed(1)},${(r * Math.sin((a * Math.PI) / 180)).toFixed(1)}`);
      return s("polygon", { class: "shape", points: pts.join(" ") });
    }
    case "external":
      return s("rect", { class: "shape", x: -r, y: -r * 0.7, width: 2 * r, height: 1.4 * r, rx: 8 });
    case "user":
      return s("g", { class: "shape" }, s("circle", { cx: 0, cy: -r * 0.45, r: r * 0.38 }), s("path", { d: `M${-r * 0.8},${r * 0.75}a${r * 0.8},${r * 0.75} 0 0 1 ${r * 1.6},0z` }));
    default:
      return s("circle", { class: "shape", r });
  }
}

function legend() {
  const item = (type, text) => h("span", { class: "legend-item" }, s("svg", { width: 22, height: 22, viewBox: "-30 -30 60 60", class: `node ${type} ok` }, shape(type)), text);
  const swatch = (state, text) => h("span", { class: "legend-item" }, h("span", { class: ["swatch", state] }), text);
  return h(
    "div",
    { class: "legend-box" },
    item("service", "service"),
    item("database", "database"),
    item("messaging", "messaging"),
    item("external", "external"),
    item("user", "user"),
    swatch("bad", `failing (≥ ${fmtPct(FAILING_ERROR_RATE)} errors)`),
    swatch("slow", "slow"),
    swatch("warn", "some errors"),
  );
}

function tracesOf(ctx, edge, nodes) {
  // Search conditions hold on one span: the server side for a call between services, the
  // caller's client span for a virtual peer (which has no spans of its own).
  if (nodes.get(edge.target) && nodes.get(edge.target).type === "service") return ctx.link("traces", { service: edge.target, kind: "server" });
  return ctx.link("traces", { service: edge.source, kind: edge.type === "messaging" ? "producer" : "client" });
}

function edgePanel(ctx, edge, nodes) {
  if (!edge) return h("p", { text: "This edge is not in the graph any more." });
  const row = (label, client, server) => h("tr", {}, h("th", { text: label }), h("td", { class: "num", text: client }), h("td", { class: "num", text: server }));
  return h(
    "div",
    { "data-panel": "edge" },
    h("h3", {}, `${edge.source} → ${edge.target}`),
    h("p", { class: "muted", text: `${edge.type} call` }),
    h("dl", { class: "facts" }, h("dt", { text: "Calls" }), h("dd", { text: fmtNum(edge.calls) }), h("dt", { text: "Errors" }), h("dd", { text: `${fmtNum(edge.errors)} (${fmtPct(edge.error_rate)})` })),
    h(
      "table",
      { class: "kv latency" },
      h("thead", {}, h("tr", {}, h("th", { text: "latency" }), h("th", { class: "num", text: "client saw" }), h("th", { class: "num", text: "server saw" }))),
      h("tbody", {}, row("p50", fmtMs(edge.client_p50_ms), fmtMs(edge.server_p50_ms)), row("p95", fmtMs(edge.client_p95_ms), fmtMs(edge.server_p95_ms)), row("p99", fmtMs(edge.client_p99_ms), fmtMs(edge.server_p99_ms))),
    ),
    h(
      "p",
      { class: "links" },
      h("a", { href: tracesOf(ctx, edge, nodes), "data-link": "edge-traces", text: "Traces of these calls" }),
      edge.type === "database" ? h("a", { href: ctx.link("sql", { service: edge.source }), text: "SQL statements" }) : null,
      nodes.get(edge.source).type === "service" ? h("a", { href: ctx.link("service", { name: edge.source }), text: edge.source }) : null,
      nodes.get(edge.target).type === "service" ? h("a", { href: ctx.link("service", { name: edge.target }), text: edge.target }) : null,
    ),
  );
}

function nodePanel(ctx, node, slow) {
  if (!node) return h("p", { text: "This node is not in the graph any more." });
  const item = slow && slow.get(node.id);
  return h(
    "div",
    { "data-panel": "node" },
    h("h3", { text: node.id }),
    h("p", { class: "muted", text: node.type === "user" ? "requests from outside (root server spans)" : `${node.type} peer, as its callers saw it` }),
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: "Calls" }),
      h("dd", { text: fmtNum(node.calls) }),
      h("dt", { text: "Errors" }),
      h("dd", { text: `${fmtNum(node.errors)} (${fmtPct(node.error_rate)})` }),
      h("dt", { text: "p50 / p95 / p99" }),
      h("dd", { text: `${fmtMs(node.p50_ms)} / ${fmtMs(node.p95_ms)} / ${fmtMs(node.p99_ms)}` }),
    ),
    item ? h("p", { class: "slow-text", text: `slow: ${slowTitle(item)}` }) : null,
    h("p", { class: "links" }, node.type === "database" ? h("a", { href: ctx.link("sql", { namespace: node.id }), text: "SQL statements" }) : null, h("a", { href: ctx.link("topology", { service: node.id, depth: 1 }), text: "Focus on it" })),
  );
}
