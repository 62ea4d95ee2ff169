"""``GET /api/v1/diagnose``: where the cause of a service's slowdown or failures lies.

:func:`diagnose` reads the rollup figures of the service's (or operation's) entry spans, a
bounded sample of their traces in the window and in the baseline (the slowest, a random and a
failed ``sample`` each, read by trace id), and the service graph (``otel_edges_1m``); the
ranking itself is :func:`tracehouse.diagnosis.analysis.rank`. Method: docs/diagnosis.md.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from typing import Annotated, Any

import networkx as nx
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tracehouse.diagnosis import queries
from tracehouse.diagnosis.analysis import (
    Candidate,
    EntityType,
    SpanRow,
    TraceAnalysis,
    WindowStats,
    analyse_trace,
    rank,
)
from tracehouse.query._rollups import MinuteWindow, minute_window, ms, quantiles_ms
from tracehouse.query.params import TimeRange, invalid, time_range
from tracehouse.query.slow_services import Baseline, baseline_window

# Traces per sample kind and window: 20 and 50 both ranked every simulated cause first over
# 50 scenarios (docs/diagnosis.md); the cost grows with it.
DEFAULT_SAMPLE = 30
MAX_SAMPLE = 500
MAX_LIMIT = 50
_DAY = dt.timedelta(days=1)
_MARGIN_NS = 60 * 1_000_000_000


class LatencyEvidence(BaseModel):
    """Critical-path time of the cause, ms per sampled trace, now and in the baseline;
    ``share``: the part of the change of the mean duration it explains (None if no rise)."""

    ms_per_trace: float
    baseline_ms_per_trace: float
    delta_ms: float
    share: float | None


class ErrorEvidence(BaseModel):
    """Error rate of the diagnosed calls that started at the cause, now and then; ``share``:
    the part of the rise of the error rate it explains (None if no rise); failed sampled
    traces whose error started there."""

    error_rate: float
    baseline_error_rate: float
    share: float | None
    sampled: int
    baseline_sampled: int


class Cause(BaseModel):
    """A ranked candidate cause.

    ``type``: ``sql`` (``target`` = fingerprint, as ``/api/v1/sql`` names it, run by
    ``service`` on ``db_system``), ``edge`` (calls from ``service`` to ``target``: time the
    callee did not see), ``instance`` (``target`` = ``service.instance.id`` or ``host.name``
    of one instance of ``service``), ``own_code`` (the service's own time) or ``service``
    (errors that start in the service's own spans).
    """

    rank: int
    type: EntityType
    service: str
    target: str | None
    label: str
    db_system: str | None = None
    statement: str | None = None
    score: float
    pagerank: float
    latency: LatencyEvidence
    errors: ErrorEvidence
    exemplar_trace_ids: list[str]
    baseline_exemplar_trace_ids: list[str]


class Figures(BaseModel):
    """The diagnosed entry spans in one window, from ``otel_red_1m``."""

    calls: int
    errors: int
    error_rate: float
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class Diagnosis(BaseModel):
    service: str
    operation: str | None
    start: dt.datetime
    end: dt.datetime
    baseline: Baseline
    baseline_start: dt.datetime
    baseline_end: dt.datetime
    now: Figures
    before: Figures
    sampled_traces: int
    baseline_sampled_traces: int
    sample_mean_ms: float
    baseline_sample_mean_ms: float
    latency_severity: float
    error_severity: float
    graph_nodes: int
    graph_edges: int
    elapsed_ms: float
    causes: list[Cause]


def _rows(client: Any, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _figures(calls: int, errors: int, total_ns: int, quantiles: Any) -> Figures:
    p50, p95, p99 = quantiles_ms(quantiles)
    return Figures(
        calls=calls,
        errors=errors,
        error_rate=round(errors / calls, 6) if calls else 0.0,
        avg_ms=ms(total_ns / calls) if calls else None,
        p50_ms=p50 if calls else None,
        p95_ms=p95 if calls else None,
        p99_ms=p99 if calls else None,
    )


def _sample(
    client: Any,
    service: str,
    operation: str,
    window: tuple[dt.datetime, dt.datetime],
    baseline: tuple[dt.datetime, dt.datetime],
    n: int,
) -> tuple[list[TraceAnalysis], list[TraceAnalysis], dict[str, tuple[str, str]]]:
    """The analysed sample traces of the window and of the baseline, and the db system and
    statement of each fingerprint met. Two queries: the entry spans, then their traces."""
    entries = _rows(
        client,
        queries.SAMPLE_SQL,
        {
            "service": service,
            "operation": operation,
            "start": int(window[0].timestamp()),
            "end": int(window[1].timestamp()),
            "base_start": int(baseline[0].timestamp()),
            "base_end": int(baseline[1].timestamp()),
            "n": n,
        },
    )
    # Every sampled entry span once (a span chosen by two rules counts once).
    chosen: dict[str, tuple[str, str]] = {}  # entry span id -> trace id, side
    for_latency: set[str] = set()
    for row in entries:
        chosen.setdefault(row["span_id"], (row["trace_id"], row["side"]))
        if row["reason"] != "failed":
            for_latency.add(row["span_id"])
    if not chosen:
        return [], [], {}
    ranges = {}
    for side in ("window", "baseline"):
        rows = [row for row in entries if row["side"] == side]
        if not rows:
            ranges[side] = (0, 0)
            continue
        longest = max(int(row["duration_ns"]) for row in rows)
        first = min(int(row["start_ns"]) for row in rows)
        last = max(int(row["start_ns"]) for row in rows)
        ranges[side] = (first - _MARGIN_NS, last + longest + _MARGIN_NS)
    spans: dict[str, list[SpanRow]] = defaultdict(list)
    statements: dict[str, tuple[str, str]] = {}
    result = client.query(
        queries.SPANS_SQL,
        parameters={
            "trace_ids": sorted({trace_id for trace_id, _ in chosen.values()}),
            "start_ns": ranges["window"][0],
            "end_ns": ranges["window"][1],
            "base_start_ns": ranges["baseline"][0],
            "base_end_ns": ranges["baseline"][1],
        },
    )
    for (
        trace_id,
        span_id,
        parent_span_id,
        span_service,
        name,
        kind,
        start_ns,
        duration_ns,
        failed,
        instance,
        db_system,
        has_statement,
        fingerprint_hash,
        statement,
        peer,
    ) in result.result_rows:
        fingerprint = f"{int(fingerprint_hash):016x}" if has_statement else ""
        if fingerprint:
            statements[fingerprint] = (db_system, statement)
        spans[trace_id].append(
            SpanRow(
                trace_id,
                span_id,
                parent_span_id,
                span_service,
                name,
                kind,
                int(start_ns),
                int(duration_ns),
                bool(failed),
                instance,
                db_system,
                fingerprint,
                statement,
                peer,
            )
        )
    analyses: dict[str, list[TraceAnalysis]] = {"window": [], "baseline": []}
    # Each sampled entry span on its own: a trace may hold several (a retried call).
    for span_id, (trace_id, side) in sorted(chosen.items()):
        analysis = analyse_trace(spans.get(trace_id, []), span_id)
        if analysis is not None:
            analysis.for_latency = span_id in for_latency
            analyses[side].append(analysis)
    return analyses["window"], analyses["baseline"], statements


def _downstream_edges(
    client: Any,
    service: str,
    services: set[str],
    start: dt.datetime,
    end: dt.datetime,
) -> list[tuple[str, str, str]]:
    """Edges of the service graph (``otel_edges_1m``) from ``services`` (those of the sampled
    traces) that are reachable from ``service``."""
    rows = _rows(
        client,
        queries.EDGES_SQL,
        {
            "start": int(start.timestamp()),
            "end": int(end.timestamp()),
            "services": sorted(services),
        },
    )
    graph = nx.DiGraph()
    for row in rows:
        graph.add_edge(row["source"], row["target"], type=row["type"])
    if service not in graph:
        return []
    keep = nx.descendants(graph, service) | {service}
    edges = graph.edges(data=True)
    return [(u, v, str(data["type"])) for u, v, data in edges if u in keep and v in keep]


def _cause(position: int, c: Candidate, statements: dict[str, tuple[str, str]]) -> Cause:
    entity = c.entity
    db_system, statement = statements.get(entity.target, (None, None))
    return Cause(
        rank=position,
        type=entity.type,
        service=entity.service,
        target=entity.target or None,
        label=entity.label,
        db_system=db_system if entity.type == "sql" else None,
        statement=statement if entity.type == "sql" else None,
        score=round(c.score, 6),
        pagerank=round(c.rank_weight, 6),
        latency=LatencyEvidence(
            ms_per_trace=round(c.ms_per_trace, 3),
            baseline_ms_per_trace=round(c.baseline_ms_per_trace, 3),
            delta_ms=round(c.delta_ms, 3),
            share=round(c.latency_share, 3) if c.latency_share is not None else None,
        ),
        errors=ErrorEvidence(
            error_rate=round(c.error_rate, 6),
            baseline_error_rate=round(c.baseline_error_rate, 6),
            share=round(c.error_share, 3) if c.error_share is not None else None,
            sampled=c.errors_sampled,
            baseline_sampled=c.baseline_errors_sampled,
        ),
        exemplar_trace_ids=c.exemplars,
        baseline_exemplar_trace_ids=c.baseline_exemplars,
    )


def diagnose(
    client: Any,
    service: str,
    operation: str | None,
    window: MinuteWindow,
    baseline: Baseline = "previous",
    sample: int = DEFAULT_SAMPLE,
    limit: int = 10,
) -> Diagnosis:
    """Rank the candidate causes of the change of ``service``'s entry spans (``operation``'s
    only, if given) from the baseline to ``window``. Reads the rollups, at most
    ``3 * sample`` traces per window and the service graph; the rest is in memory."""
    began = time.perf_counter()
    base_start, base_end = baseline_window(window, baseline)
    op = operation or ""
    (red,) = _rows(
        client,
        queries.RED_SQL,
        {
            "service": service,
            "operation": op,
            **window.parameters(),
            "base_start": int(base_start.timestamp()),
            "base_end": int(base_end.timestamp()),
        },
    )
    now = _figures(int(red["calls"]), int(red["errors"]), int(red["total_ns"]), red["quantiles"])
    before = _figures(
        int(red["base_calls"]),
        int(red["base_errors"]),
        int(red["base_total_ns"]),
        red["base_quantiles"],
    )
    analyses, base_analyses, statements = _sample(
        client, service, op, (window.start, window.end), (base_start, base_end), sample
    )
    seen = {s for a in (*analyses, *base_analyses) for call in a.calls for s in call}
    edges = _downstream_edges(
        client, service, seen | {service}, min(base_start, window.start), window.end
    )
    ranking = rank(
        analyses,
        base_analyses,
        WindowStats(now.calls, now.errors),
        WindowStats(before.calls, before.errors),
        edges,
        limit=limit,
    )
    return Diagnosis(
        service=service,
        operation=operation,
        start=window.start,
        end=window.end,
        baseline=baseline,
        baseline_start=base_start,
        baseline_end=base_end,
        now=now,
        before=before,
        sampled_traces=ranking.traces,
        baseline_sampled_traces=ranking.baseline_traces,
        sample_mean_ms=round(ranking.mean_ms, 3),
        baseline_sample_mean_ms=round(ranking.baseline_mean_ms, 3),
        latency_severity=round(ranking.latency_severity, 6),
        error_severity=round(ranking.error_severity, 6),
        graph_nodes=ranking.graph_nodes,
        graph_edges=ranking.graph_edges,
        elapsed_ms=round((time.perf_counter() - began) * 1000, 1),
        causes=[_cause(i, c, statements) for i, c in enumerate(ranking.candidates, start=1)],
    )


def router(client: Any) -> APIRouter:
    """``GET /diagnose`` (paths relative to ``/api/v1``) bound to a ClickHouse client."""
    api = APIRouter(tags=["diagnosis"])

    @api.get("/diagnose", response_model=Diagnosis)
    def diagnose_endpoint(
        span_range: Annotated[TimeRange, Depends(time_range)],
        service: Annotated[str, Query(description="the service whose entry spans changed")],
        operation: Annotated[
            str | None, Query(description="only this entry operation (span name)")
        ] = None,
        baseline: Annotated[
            Baseline, Query(description="compare with the window just before, or a day earlier")
        ] = "previous",
        sample: Annotated[
            int,
            Query(
                ge=1,
                le=MAX_SAMPLE,
                description="traces per sample: the slowest, random and failed this many each",
            ),
        ] = DEFAULT_SAMPLE,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="causes returned")] = 10,
    ) -> Diagnosis:
        """Where the cause of a change of ``service``'s (or ``operation``'s) entry spans
        between the baseline and ``start``..``end`` lies, best candidate first.

        Candidates: a ``sql`` fingerprint, an ``edge`` (time between a client span and the
        server it called), an ``instance`` of a service, a service's ``own_code``, or a
        ``service`` where errors start. Each comes with its critical-path ms per trace now and
        before and the share of the latency change it explains, the error rate it originates
        now and before and the share of the error-rate rise, and exemplar traces from both
        windows. From sampled traces (critical paths), the rollups and the service graph,
        ranked by a personalised PageRank over that graph (docs/diagnosis.md).
        """
        if not service.strip():
            raise invalid("service", "must not be empty")
        if operation is not None and not operation.strip():
            raise invalid("operation", "must not be empty (leave it out for every operation)")
        window = minute_window(span_range)
        if baseline == "day" and window.end - window.start > _DAY:
            raise invalid("baseline", "baseline=day compares ranges of at most one day")
        return diagnose(client, service, operation, window, baseline, sample, limit)

    return api
