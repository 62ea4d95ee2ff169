"""The pure part of a diagnosis: critical paths of sampled traces, attribution of their time
and errors to entities, and the ranking over the service graph. No I/O: rows in, ranking out
(``diagnose`` in :mod:`tracehouse.diagnosis.api` reads the rows).

Method (docs/diagnosis.md):

1. **Critical path** of each sampled trace below the diagnosed entry span: walking back from
   its end, the child that finished last is on the path, then the one that finished last
   before that child started, and so on; the gaps are the span's own time. Every nanosecond
   of the entry span is attributed to exactly one span, so the parts add up to its duration.
2. **Attribution** of each span's critical-path time to an entity: a server, consumer or
   internal span to its service's *own code* (split by *instance*, ``service.instance.id``
   or ``host.name``), a client span with a server child in another service to the *edge*
   between them (the network and queueing the server did not see), a database client span to
   its *SQL fingerprint*, another client span to the edge towards its peer. A failed trace's
   error is attributed to where it started: the failed span none of whose children failed.
3. **Change**: per entity, the mean critical-path ms per trace in the window minus the
   baseline's (its share of the change of the mean duration), and the error rate it
   originates now minus then.
4. **Ranking**: a personalised PageRank over the service graph (services, databases and peers,
   and edges as nodes of their own) whose personalisation and transition weights are the
   anomaly of each node — a walker moves towards anomalous dependencies and stays where the
   anomaly is larger than in everything it calls (self-loop), so that a slow database three
   hops down outranks the services that only wait for it. An entity's score is its own
   anomaly weighted by its node's rank.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import networkx as nx

EntityType = Literal["service", "own_code", "instance", "edge", "sql"]
_NS_PER_MS = 1_000_000
# An increase of the error rate by this many points weighs as much as a doubling of latency.
ERROR_WEIGHT = 10.0
# PageRank: how much a node's rank weighs in an entity's score, the weight of the edge back
# to a caller (lets the walker leave a dead end), and the damping factor.
RANK_WEIGHT = 0.5
BACKWARD = 0.1
DAMPING = 0.85
_EPSILON = 1e-6
_SERVER_SIDE = ("server", "consumer", "internal", "unspecified")
_CLIENT_SIDE = ("client", "producer")


@dataclass(slots=True)
class SpanRow:
    """One span of a sampled trace, as :data:`~tracehouse.diagnosis.queries.SPANS_SQL` reads it."""

    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    name: str
    kind: str
    start_ns: int
    duration_ns: int
    failed: bool
    instance: str = ""
    db_system: str = ""
    fingerprint: str = ""
    statement: str = ""
    peer: str = ""

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.duration_ns


class Entity(NamedTuple):
    """A candidate cause. ``service`` is the service it belongs to (the caller of an edge or
    a statement); ``target`` the callee of an edge, the instance, or the fingerprint."""

    type: EntityType
    service: str
    target: str = ""

    @property
    def node(self) -> str:
        """Its node in the ranking graph."""
        if self.type == "edge":
            return edge_node(self.service, self.target)
        return service_node(self.service)

    @property
    def label(self) -> str:
        if self.type == "edge":
            return f"{self.service} -> {self.target}"
        if self.type == "instance":
            return f"{self.service} @ {self.target}"
        if self.type == "sql":
            return f"{self.service}: sql {self.target}"
        return self.service


def service_node(name: str) -> str:
    return f"service:{name}"


def edge_node(source: str, target: str) -> str:
    return f"edge:{source}->{target}"


def peer_node(name: str) -> str:
    return f"peer:{name}"


@dataclass
class TraceAnalysis:
    """One sampled trace below the diagnosed entry span: critical-path ns per entity, own
    code ns per (service, instance), and the entity its error started at (if it failed)."""

    trace_id: str
    duration_ns: int
    failed: bool
    time_ns: dict[Entity, int] = field(default_factory=dict)
    instance_ns: dict[tuple[str, str], int] = field(default_factory=dict)
    error_origin: Entity | None = None
    sql_nodes: dict[Entity, str] = field(default_factory=dict)
    calls: set[tuple[str, str]] = field(default_factory=set)
    for_latency: bool = True


def critical_path(root: SpanRow, children: Mapping[str, Sequence[SpanRow]]) -> dict[str, int]:
    """Critical-path ns of every span below ``root`` (its own time on the path), adding up to
    ``root``'s duration. Children sticking out of their parent (clock skew) are clipped."""
    out: dict[str, int] = defaultdict(int)
    stack: list[tuple[SpanRow, int, int]] = [(root, root.start_ns, root.end_ns)]
    while stack:
        span, low, high = stack.pop()
        cursor = high
        kids = sorted(children.get(span.span_id, ()), key=lambda k: (k.end_ns, k.span_id))
        for kid in reversed(kids):
            if kid.start_ns >= cursor or cursor <= low:
                continue
            kid_end = min(kid.end_ns, cursor)
            kid_start = max(kid.start_ns, low)
            if kid_end <= kid_start:
                continue
            out[span.span_id] += cursor - kid_end
            stack.append((kid, kid_start, kid_end))
            cursor = kid_start
        out[span.span_id] += max(cursor - low, 0)
    return dict(out)


def _entity_of(span: SpanRow, server_child: SpanRow | None) -> Entity:
    if span.kind in _CLIENT_SIDE:
        if server_child is not None and server_child.service != span.service:
            return _entity("edge", span.service, server_child.service)
        if span.fingerprint:
            return _entity("sql", span.service, span.fingerprint)
        if span.peer:
            return _entity("edge", span.service, span.peer)
    return _entity("own_code", span.service, "")


@functools.lru_cache(maxsize=65_536)
def _entity(kind: EntityType, service: str, target: str) -> Entity:
    """One Entity object per value: spans of many traces map to few entities."""
    return Entity(kind, service, target)


def analyse_trace(spans: Sequence[SpanRow], entry_span_id: str) -> TraceAnalysis | None:
    """Critical path and error origin below the entry span; None if it is not among ``spans``."""
    by_id = {span.span_id: span for span in spans}
    root = by_id.get(entry_span_id)
    if root is None:
        return None
    children: dict[str, list[SpanRow]] = defaultdict(list)
    for span in spans:
        if span.parent_span_id and span.span_id != span.parent_span_id:
            children[span.parent_span_id].append(span)
    result = TraceAnalysis(root.trace_id, root.duration_ns, root.failed)
    path = critical_path(root, children)
    below: list[SpanRow] = []
    stack = [root]
    seen = {root.span_id}
    while stack:
        span = stack.pop()
        below.append(span)
        for kid in children.get(span.span_id, ()):
            if kid.span_id not in seen:
                seen.add(kid.span_id)
                stack.append(kid)
    entities: dict[str, Entity] = {}
    for span in below:
        server_child = next(
            (k for k in children.get(span.span_id, ()) if k.kind in ("server", "consumer")), None
        )
        entity = _entity_of(span, server_child)
        entities[span.span_id] = entity
        if entity.type == "sql" and span.peer:
            result.sql_nodes[entity] = peer_node(span.peer)
        if span.kind in _CLIENT_SIDE:
            callee = server_child.service if server_child is not None else span.peer
            if callee and callee != span.service:
                result.calls.add((span.service, callee))
        ns = path.get(span.span_id, 0)
        if ns <= 0:
            continue
        result.time_ns[entity] = result.time_ns.get(entity, 0) + ns
        if entity.type == "own_code":
            key = (span.service, span.instance)
            result.instance_ns[key] = result.instance_ns.get(key, 0) + ns
    if root.failed:
        origins = [
            span
            for span in below
            if span.failed and not any(k.failed for k in children.get(span.span_id, ()))
        ]
        if origins:
            # The deepest failed span where no child failed; the latest to end among equals.
            depth = _depths(root, children)
            origin = max(origins, key=lambda s: (depth.get(s.span_id, 0), s.end_ns, s.span_id))
            entity = entities[origin.span_id]
            result.error_origin = (
                Entity("service", entity.service) if entity.type == "own_code" else entity
            )
    return result


def _depths(root: SpanRow, children: Mapping[str, Sequence[SpanRow]]) -> dict[str, int]:
    depth = {root.span_id: 0}
    stack = [root]
    while stack:
        span = stack.pop()
        for kid in children.get(span.span_id, ()):
            if kid.span_id not in depth:
                depth[kid.span_id] = depth[span.span_id] + 1
                stack.append(kid)
    return depth


@dataclass(frozen=True)
class WindowStats:
    """What the rollups say about the diagnosed service/operation in one window."""

    calls: int
    errors: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass
class Candidate:
    """A ranked cause with its evidence (ms per trace on the critical path, error rates)."""

    entity: Entity
    node: str
    score: float = 0.0
    rank_weight: float = 0.0
    ms_per_trace: float = 0.0
    baseline_ms_per_trace: float = 0.0
    delta_ms: float = 0.0
    latency_share: float | None = None
    error_rate: float = 0.0
    baseline_error_rate: float = 0.0
    error_share: float | None = None
    errors_sampled: int = 0
    baseline_errors_sampled: int = 0
    exemplars: list[str] = field(default_factory=list)
    baseline_exemplars: list[str] = field(default_factory=list)
    anomaly: float = 0.0


@dataclass
class Ranking:
    """The outcome: figures of both samples, the severities and the candidates, best first."""

    traces: int
    baseline_traces: int
    mean_ms: float
    baseline_mean_ms: float
    latency_severity: float
    error_severity: float
    candidates: list[Candidate]
    graph_nodes: int = 0
    graph_edges: int = 0


def _mean_duration(analyses: Sequence[TraceAnalysis]) -> float:
    return sum(a.duration_ns for a in analyses) / len(analyses) if analyses else 0.0


def _mean_ns(analyses: Sequence[TraceAnalysis]) -> dict[Entity, float]:
    totals: dict[Entity, float] = defaultdict(float)
    for analysis in analyses:
        for entity, ns in analysis.time_ns.items():
            totals[entity] += ns
    return {e: v / len(analyses) for e, v in totals.items()} if analyses else {}


def _instance_means(analyses: Sequence[TraceAnalysis]) -> dict[tuple[str, str], float]:
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for analysis in analyses:
        for key, ns in analysis.instance_ns.items():
            totals[key] += ns
    return {k: v / len(analyses) for k, v in totals.items()} if analyses else {}


def _split_instances(
    deltas: dict[Entity, float],
    now: dict[tuple[str, str], float],
    base: dict[tuple[str, str], float],
) -> None:
    """Move the part of a service's own-time increase that one instance has over the others
    from ``own_code`` to an ``instance`` entity (in place)."""
    by_service: dict[str, dict[str, float]] = defaultdict(dict)
    for service, instance in set(now) | set(base):
        if instance:
            by_service[service][instance] = now.get((service, instance), 0.0) - base.get(
                (service, instance), 0.0
            )
    for service, changes in by_service.items():
        own = Entity("own_code", service)
        total = deltas.get(own, 0.0)
        if len(changes) < 2 or total <= 0:
            continue
        moved = 0.0
        for instance, change in changes.items():
            others = [c for i, c in changes.items() if i != instance]
            excess = change - sum(others) / len(others)
            if excess > 0:
                part = min(excess, total - moved)
                if part > 0:
                    deltas[Entity("instance", service, instance)] = part
                    moved += part
        deltas[own] = total - moved


def rank(
    window: Sequence[TraceAnalysis],
    baseline: Sequence[TraceAnalysis],
    stats: WindowStats,
    baseline_stats: WindowStats,
    topology_edges: Iterable[tuple[str, str, str]] = (),
    limit: int = 10,
) -> Ranking:
    """Rank the candidate causes of the change from ``baseline`` to ``window``.

    ``window``/``baseline``: analysed sample traces; ``stats``: calls and errors of the
    diagnosed entry spans from the rollups; ``topology_edges``: (source, target, type) of the
    service graph (type ``service`` or a virtual peer type), added to the calls seen in the
    sampled traces."""
    # Latency from the slowest and random samples; the failed sample serves error origins.
    latency = [a for a in window if a.for_latency]
    latency_base = [a for a in baseline if a.for_latency]
    now_ns, base_ns = _mean_ns(latency), _mean_ns(latency_base)
    mean_now = _mean_duration(latency)
    mean_base = _mean_duration(latency_base)
    deltas = {e: now_ns.get(e, 0.0) - base_ns.get(e, 0.0) for e in set(now_ns) | set(base_ns)}
    instances_now, instances_base = _instance_means(latency), _instance_means(latency_base)
    _split_instances(deltas, instances_now, instances_base)
    increase = mean_now - mean_base
    latency_severity = max(increase / mean_base, 0.0) if mean_base > 0 else (1.0 if mean_now else 0)

    # Errors: the share of failed sampled traces that started at each entity, times the rate.
    def origins(analyses: Sequence[TraceAnalysis]) -> tuple[dict[Entity, int], int]:
        counts: dict[Entity, int] = defaultdict(int)
        failed = 0
        for analysis in analyses:
            if analysis.failed:
                failed += 1
                if analysis.error_origin is not None:
                    counts[analysis.error_origin] += 1
        return counts, failed

    err_now, failed_now = origins(window)
    err_base, failed_base = origins(baseline)
    rate_now, rate_base = stats.error_rate, baseline_stats.error_rate
    error_change = {
        e: rate_now * err_now.get(e, 0) / max(failed_now, 1)
        - rate_base * err_base.get(e, 0) / max(failed_base, 1)
        for e in set(err_now) | set(err_base)
    }
    error_increase = rate_now - rate_base
    error_severity = max(error_increase, 0.0) * ERROR_WEIGHT

    candidates: dict[Entity, Candidate] = {}
    sql_nodes: dict[Entity, str] = {}
    for analysis in [*window, *baseline]:
        sql_nodes.update(analysis.sql_nodes)

    def candidate(entity: Entity) -> Candidate:
        found = candidates.get(entity)
        if found is None:
            node = sql_nodes.get(entity, entity.node)
            found = candidates[entity] = Candidate(entity=entity, node=node)
        return found

    for entity, delta in deltas.items():
        c = candidate(entity)
        if entity.type == "instance":
            c.ms_per_trace = instances_now.get((entity.service, entity.target), 0.0)
            c.baseline_ms_per_trace = instances_base.get((entity.service, entity.target), 0.0)
        else:
            c.ms_per_trace = now_ns.get(entity, 0.0)
            c.baseline_ms_per_trace = base_ns.get(entity, 0.0)
        c.ms_per_trace /= _NS_PER_MS
        c.baseline_ms_per_trace /= _NS_PER_MS
        c.delta_ms = delta / _NS_PER_MS
        c.latency_share = delta / increase if increase > 0 else None
    for entity, change in error_change.items():
        c = candidate(entity)
        c.error_rate = rate_now * err_now.get(entity, 0) / max(failed_now, 1)
        c.baseline_error_rate = rate_base * err_base.get(entity, 0) / max(failed_base, 1)
        c.errors_sampled = err_now.get(entity, 0)
        c.baseline_errors_sampled = err_base.get(entity, 0)
        c.error_share = change / error_increase if error_increase > 0 else None

    for c in candidates.values():
        latency_part = latency_severity * max(c.latency_share or 0.0, 0.0)
        error_part = error_severity * max(c.error_share or 0.0, 0.0)
        c.anomaly = latency_part + error_part

    graph = _graph(candidates.values(), [*window, *baseline], topology_edges)
    ranks = _pagerank(graph, candidates.values())
    top = max(ranks.values(), default=0.0)
    for c in candidates.values():
        c.rank_weight = ranks.get(c.node, 0.0) / top if top > 0 else 0.0
        c.score = c.anomaly * ((1 - RANK_WEIGHT) + RANK_WEIGHT * c.rank_weight)
    _exemplars(candidates, window, baseline)
    ranked = sorted(
        (c for c in candidates.values() if c.score > 0),
        key=lambda c: (-c.score, c.entity),
    )
    return Ranking(
        traces=len(latency),
        baseline_traces=len(latency_base),
        mean_ms=mean_now / _NS_PER_MS,
        baseline_mean_ms=mean_base / _NS_PER_MS,
        latency_severity=latency_severity,
        error_severity=error_severity,
        candidates=ranked[:limit],
        graph_nodes=graph.number_of_nodes(),
        graph_edges=graph.number_of_edges(),
    )


def _graph(
    candidates: Iterable[Candidate],
    analyses: Iterable[TraceAnalysis],
    topology_edges: Iterable[tuple[str, str, str]],
) -> nx.DiGraph:
    """Services, peers and service-to-service edges as nodes; calls as arcs."""
    graph = nx.DiGraph()
    calls: set[tuple[str, str, bool]] = set()
    for source, target, kind in topology_edges:
        if kind != "user":
            calls.add((source, target, kind == "service"))
    for analysis in analyses:
        for source, target in analysis.calls:
            calls.add((source, target, True))
    services = {s for s, _, _ in calls} | {t for _, t, is_service in calls if is_service}
    for source, target, is_service in calls:
        middle = edge_node(source, target)
        graph.add_edge(service_node(source), middle)
        callee = service_node(target) if target in services or is_service else peer_node(target)
        graph.add_edge(middle, callee)
    for c in candidates:
        graph.add_node(c.node)
        if c.entity.type == "sql" and c.node.startswith("peer:"):
            graph.add_edge(service_node(c.entity.service), c.node)
    return graph


def _pagerank(graph: nx.DiGraph, candidates: Iterable[Candidate]) -> dict[str, float]:
    """Personalised PageRank with anomaly-weighted arcs, back arcs and self-loops."""
    anomaly: dict[str, float] = defaultdict(float)
    for c in candidates:
        anomaly[c.node] += max(c.anomaly, 0.0)
    if graph.number_of_nodes() == 0 or not any(v > 0 for v in anomaly.values()):
        return {}
    walk = nx.DiGraph()
    walk.add_nodes_from(graph.nodes)
    for u, v in graph.edges:
        walk.add_edge(u, v, weight=anomaly[v] + _EPSILON)
        back = BACKWARD * (anomaly[u] + _EPSILON)
        if walk.has_edge(v, u):
            walk[v][u]["weight"] += back
        else:
            walk.add_edge(v, u, weight=back)
    for node in graph.nodes:
        below = max((anomaly[v] for v in graph.successors(node)), default=0.0)
        walk.add_edge(node, node, weight=max(anomaly[node] - below, 0.0) + _EPSILON)
    return _power_iteration(walk, {n: anomaly[n] + _EPSILON for n in walk.nodes})


def _power_iteration(
    walk: nx.DiGraph, personalization: dict[str, float], iterations: int = 200
) -> dict[str, float]:
    """PageRank by power iteration (what ``nx.pagerank`` computes, without needing scipy):
    every node has out-arcs here (the self-loops), so no mass dangles."""
    total = sum(personalization.values())
    restart = {n: v / total for n, v in personalization.items()}
    out = {
        u: [(v, w / s) for v, w in ((v, d["weight"]) for v, d in walk[u].items())]
        for u in walk.nodes
        for s in [sum(d["weight"] for d in walk[u].values())]
    }
    ranks = dict(restart)
    for _ in range(iterations):
        new = {n: (1 - DAMPING) * restart[n] for n in walk.nodes}
        for u, arcs in out.items():
            mass = DAMPING * ranks[u]
            for v, share in arcs:
                new[v] += mass * share
        change = sum(abs(new[n] - ranks[n]) for n in walk.nodes)
        ranks = new
        if change < 1e-10:
            break
    return ranks


def _exemplars(
    candidates: dict[Entity, Candidate],
    window: Sequence[TraceAnalysis],
    baseline: Sequence[TraceAnalysis],
) -> None:
    """Per candidate: the traces where it took longest on the critical path (or where its
    error started), three from the window and three from the baseline."""
    for analyses, attribute in ((window, "exemplars"), (baseline, "baseline_exemplars")):
        for entity, c in candidates.items():
            if entity.type == "instance":
                key = (entity.service, entity.target)
                weight = {a.trace_id: a.instance_ns.get(key, 0) for a in analyses}
            else:
                weight = {a.trace_id: a.time_ns.get(entity, 0) for a in analyses}
            failed = [a.trace_id for a in analyses if a.error_origin == entity]
            ordered = sorted((t for t, w in weight.items() if w > 0), key=lambda t: -weight[t])
            chosen = list(dict.fromkeys([*failed[:2], *ordered]))[:3]
            setattr(c, attribute, chosen)
