"""The service graph: ``GET /api/v1/topology``.

Reads only the edge tables ``otel_edges_1m``/``_1h`` (written by the worker's
:class:`~tracehouse.topology.edges.EdgeBuilder`; whole hours from the hourly one) and the RED
rollups ``otel_red_1m`` and ``otel_services_1h``
(the services' own rate, errors and latency); never raw spans. Of each minute it keeps the
rows of the latest recomputation (``Version``), as migration 0005 describes. The graph, the
``service``/``depth`` neighbourhood and the layout are computed with networkx.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import networkx as nx
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tracehouse.query._rollups import (
    EDGES_IN_WINDOW,
    ENTRY_KINDS,
    SERVICES_IN_WINDOW,
    MinuteWindow,
    ms,
    overview_window,
    quantiles_ms,
    rate,
)
from tracehouse.query.params import TimeRange, invalid, time_range

USER_NODE = "user"
NodeType = Literal["service", "database", "messaging", "external", "user"]
_VIRTUAL_TYPES = ("database", "messaging", "external")
MAX_DEPTH = 10
# Positions come from networkx's multipartite layout (one column per hop from the entry
# points), rescaled into [0, 1]; the same graph always gets the same coordinates.


# Edges, and in the same pass (a second grouping set) each target per connection type: for
# virtual peers (no RED rows of their own) that is their latency as their callers saw it.
# ``per_target`` is 1 on those rows (their ``source`` is empty).
EDGES_SQL = f"""
SELECT
    Source AS source,
    Target AS target,
    ConnectionType AS type,
    grouping(Source) AS per_target,
    sum(Calls) AS calls,
    sum(Errors) AS errors,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(ClientLatency) AS client_quantiles,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(ServerLatency) AS server_quantiles,
    sum(ClientDurationSum) AS client_total_ns,
    sum(ServerDurationSum) AS server_total_ns
FROM ({EDGES_IN_WINDOW})
WHERE Version = LatestVersion
GROUP BY GROUPING SETS ((Source, Target, ConnectionType), (Target, ConnectionType))
ORDER BY per_target, source, target, type
"""

# The services' entry spans (server and consumer), as /api/v1/services counts them.
SERVICES_RED_SQL = f"""
SELECT
    ServiceName AS node,
    sum(Calls) AS calls,
    sum(Errors) AS errors,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(DurationQuantiles) AS quantiles
FROM {SERVICES_IN_WINDOW}
WHERE has({{services:Array(String)}}, ServiceName)
  AND has({{kinds:Array(String)}}, Kind)
GROUP BY node
ORDER BY node
"""


class Node(BaseModel):
    """A service, a virtual peer (database, messaging, external) or the ``user`` entry."""

    id: str
    type: NodeType
    calls: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    x: float
    y: float


class Edge(BaseModel):
    """Calls from ``source`` to ``target``; latency as the client and as the server saw it."""

    source: str
    target: str
    type: str
    calls: int
    errors: int
    error_rate: float
    client_p50_ms: float | None
    client_p95_ms: float | None
    client_p99_ms: float | None
    server_p50_ms: float | None
    server_p95_ms: float | None
    server_p99_ms: float | None
    client_avg_ms: float | None
    server_avg_ms: float | None


class Topology(BaseModel):
    start: dt.datetime
    end: dt.datetime
    service: str | None
    depth: int
    nodes: list[Node]
    edges: list[Edge]


def _rows(client: Any, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _edge(row: dict[str, Any]) -> Edge:
    calls, errors = int(row["calls"]), int(row["errors"])
    c50, c95, c99 = quantiles_ms(row["client_quantiles"])
    s50, s95, s99 = quantiles_ms(row["server_quantiles"])
    return Edge(
        source=row["source"],
        target=row["target"],
        type=row["type"],
        calls=calls,
        errors=errors,
        error_rate=rate(errors, calls),
        client_p50_ms=c50,
        client_p95_ms=c95,
        client_p99_ms=c99,
        server_p50_ms=s50,
        server_p95_ms=s95,
        server_p99_ms=s99,
        client_avg_ms=_average_ms(row["client_total_ns"], calls, c50),
        server_avg_ms=_average_ms(row["server_total_ns"], calls, s50),
    )


def _average_ms(total_ns: Any, calls: int, median: float | None) -> float | None:
    """Average of one side's durations; None where that side has no spans (its median is
    None then: virtual peers have no server span, ``user`` edges no client span)."""
    return ms(int(total_ns) / calls) if calls and median is not None else None


def _node_types(edges: Iterable[Edge]) -> dict[str, NodeType]:
    """A name is a service if any span of it was seen (a source, a paired or user target);
    otherwise the type of the virtual peer; ``user`` is the source of user edges."""
    types: dict[str, NodeType] = {}
    virtual: dict[str, NodeType] = {}
    for edge in edges:
        if edge.type == "user":
            types[USER_NODE] = "user"
        else:
            types[edge.source] = "service"
        if edge.type in _VIRTUAL_TYPES:
            virtual.setdefault(edge.target, edge.type)  # type: ignore[arg-type]
        else:
            types[edge.target] = "service"
    return {**virtual, **types}


def neighbourhood(graph: nx.DiGraph, service: str, depth: int) -> nx.DiGraph:
    """The edges on paths of at most ``depth`` hops into and out of ``service``."""
    keep = nx.DiGraph()
    if service not in graph:
        return keep
    keep.add_node(service)
    for view in (graph, graph.reverse(copy=False)):
        reached = nx.single_source_shortest_path_length(view, service, cutoff=depth)
        for u, v in view.edges(reached):
            if reached[u] < depth and v in reached:
                keep.add_edge(*((u, v) if view is graph else (v, u)))
    return keep


def layout(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Columns by hops from the entry points (nodes nobody calls; else the first by name),
    rows within a column by name; coordinates rescaled into [0, 1]."""
    if graph.number_of_nodes() == 0:
        return {}
    names = sorted(graph.nodes)
    entries = [n for n in names if graph.in_degree(n) == 0] or names[:1]
    hops = nx.multi_source_dijkstra_path_length(graph, entries)
    deepest = max(hops.values(), default=0)
    ordered = nx.DiGraph()
    for name in names:  # unreachable nodes (a cycle apart) go one column past the deepest
        ordered.add_node(name, layer=hops.get(name, deepest + 1))
    positions = nx.multipartite_layout(ordered, subset_key="layer")
    xs = [float(p[0]) for p in positions.values()]
    ys = [float(p[1]) for p in positions.values()]

    def scale(value: float, low: float, high: float) -> float:
        return round((value - low) / (high - low), 6) if high > low else 0.5

    return {
        name: (
            scale(float(positions[name][0]), min(xs), max(xs)),
            scale(float(positions[name][1]), min(ys), max(ys)),
        )
        for name in names
    }


def build(
    client: Any, window: MinuteWindow, service: str | None, depth: int
) -> tuple[list[Node], list[Edge]]:
    """Nodes and edges of the window, restricted to ``service``'s neighbourhood if given."""
    parameters = window.parameters()
    rows = _rows(client, EDGES_SQL, parameters)
    edges = [_edge(row) for row in rows if not row["per_target"]]
    into = {(row["target"], row["type"]): row for row in rows if row["per_target"]}
    graph = nx.DiGraph()
    graph.add_edges_from((e.source, e.target) for e in edges)
    if service is not None:
        graph = neighbourhood(graph, service, depth)
        edges = [e for e in edges if graph.has_edge(e.source, e.target)]
    types = _node_types(edges)
    if service is not None and service not in types and service in graph:
        types[service] = "service"
    stats: dict[str, dict[str, Any]] = {}
    services = sorted(n for n, t in types.items() if t == "service")
    if services:
        red = {**parameters, "services": services, "kinds": list(ENTRY_KINDS)}
        stats.update({r["node"]: r for r in _rows(client, SERVICES_RED_SQL, red)})
    for name, node_type in types.items():
        if node_type in _VIRTUAL_TYPES and (name, node_type) in into:
            row = into[(name, node_type)]
            stats[name] = {**row, "quantiles": row["client_quantiles"]}
    user_edges = [e for e in edges if e.type == "user"]
    if user_edges:
        stats[USER_NODE] = {
            "calls": sum(e.calls for e in user_edges),
            "errors": sum(e.errors for e in user_edges),
            "quantiles": (float("nan"),) * 3,
        }
    positions = layout(graph)
    nodes = []
    for name in sorted(types):
        row = stats.get(name, {"calls": 0, "errors": 0, "quantiles": (float("nan"),) * 3})
        calls, errors = int(row["calls"]), int(row["errors"])
        p50, p95, p99 = quantiles_ms(row["quantiles"])
        x, y = positions.get(name, (0.5, 0.5))
        nodes.append(
            Node(
                id=name,
                type=types[name],
                calls=calls,
                errors=errors,
                error_rate=rate(errors, calls),
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                x=x,
                y=y,
            )
        )
    return nodes, edges


def router(client: Any) -> APIRouter:
    api = APIRouter(tags=["topology"])

    @api.get("/topology", response_model=Topology)
    def topology(
        span_range: Annotated[TimeRange, Depends(time_range)],
        service: Annotated[
            str | None, Query(description="only this service's upstream and downstream")
        ] = None,
        depth: Annotated[
            int, Query(ge=1, le=MAX_DEPTH, description="hops from `service` (with `service`)")
        ] = 1,
    ) -> Topology:
        """The service graph over ``start``..``end`` (widened to whole minutes; to whole hours
        from 6 hours on).

        Nodes: services (calls, errors and p50/p95/p99 of their entry spans, from
        ``otel_red_1m`` and ``otel_services_1h``), virtual peers — ``database``, ``messaging``,
        ``external`` (calls and latency as their callers saw them) — and ``user`` (root server
        spans), each with layout coordinates ``x``, ``y`` in [0, 1]. Edges: calls, errors and
        latency as the client and as the server saw it. ``service`` keeps the edges within
        ``depth`` hops upstream and downstream of it (an unknown service: an empty graph).
        """
        if service is not None and not service.strip():
            raise invalid("service", "must not be empty")
        window = overview_window(span_range)
        nodes, edges = build(client, window, service, depth)
        return Topology(
            start=window.start,
            end=window.end,
            service=service,
            depth=depth,
            nodes=nodes,
            edges=edges,
        )

    return api
