"""Slow services and operations, and why (``GET /api/v1/slow-services``).

A service (its entry spans: server and consumer) or one of its entry operations is *slow* in
a window when its p99 exceeds a threshold, or when its p99 rose by at least a factor over its
own baseline — the window just before (``baseline=previous``) or the same window a day earlier
(``baseline=day``). Rows with fewer than ``min_calls`` calls (in the window, and in the
baseline for the comparison) are not judged: a handful of calls makes no p99.

*Why* is a decomposition of the service's average entry-call time, all from rollups:

- each downstream edge (``otel_edges_1m``: client-observed time of its calls to another
  service, a queue or an external peer),
- each SQL fingerprint it runs (``otel_db_1m``),
- and its own time: the average minus the two above (database calls carrying no statement
  count here, as do calls into spans of its own service).

Each part is expressed as milliseconds per entry call. Against a baseline, the cause is the
part that grew most, with the share of the increase it explains; without one (a threshold
breach with no baseline traffic), the part that weighs most. The decomposition is per service:
an operation's row names the cause found for its service. Exemplar traces are the slowest
entry spans of the window (raw spans, filtered by the table's ``ServiceName`` key), or for a
SQL cause the statement's own exemplars.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tracehouse.query._rollups import (
    DB_IN_WINDOW_AND_BASELINE,
    EDGES_IN_WINDOW_AND_BASELINE,
    ENTRY_KINDS,
    WINDOW_AND_BASELINE,
    MinuteWindow,
    minute_window,
    ms,
    quantiles_ms,
    window_and_baseline,
)
from tracehouse.query.params import TimeRange, invalid, time_range

Baseline = Literal["previous", "day"]
CauseType = Literal["edge", "sql", "self"]
MAX_LIMIT = 200
_DAY = dt.timedelta(days=1)
_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class SlowServiceDefaults:
    """What makes a service slow unless the request says otherwise (``Settings``)."""

    threshold_ms: float = 1000.0
    factor: float = 2.0
    min_calls: int = 10


# Entry spans per service (operation '') and per service and operation, window and baseline
# (also read by the insights job, tracehouse/diagnosis/insights.py).
RED_SQL = f"""
WITH {WINDOW_AND_BASELINE}
SELECT
    ServiceName AS service,
    if(grouping(SpanName, Kind) = 0, SpanName, '') AS operation,
    if(grouping(SpanName, Kind) = 0, Kind, '') AS kind,
    sumIf(Calls, Current) AS calls,
    sumIf(Errors, Current) AS errors,
    sumIf(DurationSum, Current) AS total_ns,
    quantilesTDigestMergeIf(0.5, 0.95, 0.99)(DurationQuantiles, Current) AS quantiles,
    sumIf(Calls, Base) AS base_calls,
    sumIf(Errors, Base) AS base_errors,
    sumIf(DurationSum, Base) AS base_total_ns,
    quantilesTDigestMergeIf(0.5, 0.95, 0.99)(DurationQuantiles, Base) AS base_quantiles
FROM otel_red_1m
WHERE (Current OR Base) AND has({{kinds:Array(String)}}, Kind)
GROUP BY GROUPING SETS ((ServiceName), (ServiceName, SpanName, Kind))
HAVING calls > 0
SETTINGS group_by_use_nulls = 0
"""

# Time the services spend in calls to other services, queues and external peers, by edge.
EDGE_TIME_SQL = f"""
WITH {WINDOW_AND_BASELINE}
SELECT
    Source AS service,
    Target AS target,
    ConnectionType AS type,
    sumIf(Calls, Current) AS calls,
    sumIf(ClientDurationSum, Current) AS total_ns,
    sumIf(Calls, Base) AS base_calls,
    sumIf(ClientDurationSum, Base) AS base_total_ns
FROM ({EDGES_IN_WINDOW_AND_BASELINE})
WHERE Version = LatestVersion
  AND has({{services:Array(String)}}, Source)
  AND ConnectionType IN ('service', 'messaging', 'external')
GROUP BY service, target, type
"""

# Time the services spend in SQL, by fingerprint, with the statement and exemplar traces.
SQL_TIME_SQL = f"""
WITH {WINDOW_AND_BASELINE}
SELECT
    ServiceName AS service,
    Fingerprint AS fingerprint,
    DbSystem AS db_system,
    any(NormalizedStatement) AS statement,
    sumIf(Calls, Current) AS calls,
    sumIf(DurationSum, Current) AS total_ns,
    sumIf(Calls, Base) AS base_calls,
    sumIf(DurationSum, Base) AS base_total_ns,
    argMaxMergeIf(SlowestTraceId, Current) AS slowest_trace_id,
    groupUniqArrayMergeIf(5)(ExemplarTraceIds, Current) AS exemplar_trace_ids
FROM {DB_IN_WINDOW_AND_BASELINE}
WHERE has({{services:Array(String)}}, ServiceName) AND (Current OR Base)
GROUP BY service, fingerprint, db_system
"""

# The slowest entry spans of each slow service and operation in the window. Scanning the
# window's raw spans cost seconds over 24 hours; the minute rollup's DurationMax names, per
# service and operation, the three minutes with the slowest spans, and the primary key reads
# only those minutes. The three slowest spans always lie in them: a span outside them is beaten
# by the slowest span of each of three other minutes.
EXEMPLARS_SQL = """
SELECT ServiceName AS service, SpanName AS operation, TraceId AS trace_id
FROM otel_traces
WHERE (ServiceName, SpanName, toStartOfMinute(toDateTime(Timestamp))) IN (
        SELECT ServiceName, SpanName, Minute
        FROM otel_red_1m
        WHERE has({services:Array(String)}, ServiceName)
          AND has({kinds:Array(String)}, Kind)
          AND Minute >= fromUnixTimestamp({start:Int64})
          AND Minute < fromUnixTimestamp({end:Int64})
        GROUP BY ServiceName, SpanName, Minute
        ORDER BY max(DurationMax) DESC
        LIMIT 3 BY ServiceName, SpanName)
  AND has({services:Array(String)}, ServiceName)
  AND Timestamp >= fromUnixTimestamp({start:Int64})
  AND Timestamp < fromUnixTimestamp({end:Int64})
  AND SpanKind IN ('Server', 'SPAN_KIND_SERVER', 'Consumer', 'SPAN_KIND_CONSUMER')
ORDER BY Duration DESC, TraceId
LIMIT 3 BY ServiceName, SpanName
"""


class Cause(BaseModel):
    """One part of a service's entry-call time, in ms per entry call.

    ``type``: ``edge`` (calls to ``target``, a service, queue or external peer), ``sql``
    (``fingerprint`` on ``db_system``, ``statement`` normalized) or ``self`` (own time).
    ``delta_ms``/``share`` compare with the baseline (None without one); ``share`` is the
    part of the increase of the average it explains, or of the average without a baseline.
    """

    type: CauseType
    target: str
    edge_type: str | None = None
    fingerprint: str | None = None
    db_system: str | None = None
    statement: str | None = None
    calls: int
    ms_per_call: float
    baseline_ms_per_call: float | None
    delta_ms: float | None
    share: float | None
    exemplar_trace_ids: list[str]


class SlowItem(BaseModel):
    """A slow service (``operation`` None) or entry operation, with what makes it slow."""

    service: str
    operation: str | None
    kind: str | None
    calls: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    baseline_calls: int
    baseline_avg_ms: float | None
    baseline_p99_ms: float | None
    threshold_ms: float
    factor: float | None
    reasons: list[Literal["threshold", "baseline"]]
    cause: Cause | None
    contributions: list[Cause]
    exemplar_trace_ids: list[str]


class SlowServicesPage(BaseModel):
    start: dt.datetime
    end: dt.datetime
    baseline: Baseline
    baseline_start: dt.datetime
    baseline_end: dt.datetime
    threshold_ms: float
    factor: float
    min_calls: int
    items: list[SlowItem]


@dataclass(frozen=True)
class _Red:
    service: str
    operation: str
    kind: str
    calls: int
    total_ns: int
    quantiles: tuple[float | None, float | None, float | None]
    base_calls: int
    base_total_ns: int
    base_p99: float | None

    @staticmethod
    def of(row: dict[str, Any]) -> _Red:
        return _Red(
            service=row["service"],
            operation=row["operation"],
            kind=row["kind"],
            calls=int(row["calls"]),
            total_ns=int(row["total_ns"]),
            quantiles=quantiles_ms(row["quantiles"]),
            base_calls=int(row["base_calls"]),
            base_total_ns=int(row["base_total_ns"]),
            base_p99=quantiles_ms(row["base_quantiles"])[2],
        )


def _rows(client: Any, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def baseline_window(window: MinuteWindow, baseline: Baseline) -> tuple[dt.datetime, dt.datetime]:
    """The minutes compared with: the same length just before, or a day earlier."""
    if baseline == "day":
        return window.start - _DAY, window.end - _DAY
    return window.start - (window.end - window.start), window.start


def _judge(
    red: _Red, threshold_ms: float, factor: float, min_calls: int
) -> tuple[list[Literal["threshold", "baseline"]], float | None]:
    """Why ``red`` is slow (empty: it is not), and its p99 over the baseline's."""
    p99 = red.quantiles[2]
    if red.calls < min_calls or p99 is None:
        return [], None
    reasons: list[Literal["threshold", "baseline"]] = []
    if p99 > threshold_ms:
        reasons.append("threshold")
    ratio = None
    if red.base_calls >= min_calls and red.base_p99:
        ratio = round(p99 / red.base_p99, 3)
        if ratio >= factor:
            reasons.append("baseline")
    return reasons, ratio


def _per_call(total_ns: int, entry_calls: int) -> float:
    return total_ns / entry_calls / _NS_PER_MS if entry_calls else 0.0


def _causes(
    red: _Red,
    edges: list[dict[str, Any]],
    statements: list[dict[str, Any]],
    exemplars: list[str],
) -> list[Cause]:
    """The parts of ``red``'s (a service's) entry-call time, largest contributor first."""
    has_base = red.base_calls > 0
    parts: list[Cause] = []
    now_sum = base_sum = 0.0

    def part(
        kind: CauseType, target: str, calls: int, now: float, base: float, **extra: Any
    ) -> None:
        nonlocal now_sum, base_sum
        now_sum += now
        base_sum += base
        parts.append(
            Cause(
                type=kind,
                target=target,
                calls=calls,
                ms_per_call=round(now, 3),
                baseline_ms_per_call=round(base, 3) if has_base else None,
                delta_ms=round(now - base, 3) if has_base else None,
                share=None,
                **extra,
            )
        )

    for edge in edges:
        part(
            "edge",
            edge["target"],
            int(edge["calls"]),
            _per_call(int(edge["total_ns"]), red.calls),
            _per_call(int(edge["base_total_ns"]), red.base_calls),
            edge_type=edge["type"],
            exemplar_trace_ids=exemplars,
        )
    for statement in statements:
        slowest = str(statement["slowest_trace_id"])
        traces = [slowest] if slowest else []
        traces += sorted(t for t in statement["exemplar_trace_ids"] if t and t != slowest)
        part(
            "sql",
            str(statement["statement"]),
            int(statement["calls"]),
            _per_call(int(statement["total_ns"]), red.calls),
            _per_call(int(statement["base_total_ns"]), red.base_calls),
            fingerprint=f"{int(statement['fingerprint']):016x}",
            db_system=statement["db_system"],
            statement=statement["statement"],
            exemplar_trace_ids=traces[:6],
        )
    # Own time: what the parts do not explain (never below zero: calls made in parallel
    # can add up to more than the caller's own duration).
    own_now = max(_per_call(red.total_ns, red.calls) - now_sum, 0.0)
    own_base = max(_per_call(red.base_total_ns, red.base_calls) - base_sum, 0.0)
    part("self", red.service, red.calls, own_now, own_base, exemplar_trace_ids=exemplars)

    avg_now = _per_call(red.total_ns, red.calls)
    avg_base = _per_call(red.base_total_ns, red.base_calls)
    increase = avg_now - avg_base
    for cause in parts:
        if has_base and cause.delta_ms is not None:
            cause.share = round(cause.delta_ms / increase, 3) if increase > 0 else None
        else:
            cause.share = round(cause.ms_per_call / avg_now, 3) if avg_now > 0 else None
    if has_base:
        parts.sort(key=lambda c: (-(c.delta_ms or 0.0), -c.ms_per_call, c.type, c.target))
    else:
        parts.sort(key=lambda c: (-c.ms_per_call, c.type, c.target))
    return parts


def find_slow(
    client: Any,
    window: MinuteWindow,
    baseline: Baseline,
    threshold_ms: float,
    factor: float,
    min_calls: int,
    limit: int,
) -> SlowServicesPage:
    """The slow services and entry operations of ``window``, most severe first."""
    base_start, base_end = baseline_window(window, baseline)
    parameters: dict[str, Any] = window_and_baseline(window, base_start, base_end)
    reds = [
        _Red.of(row) for row in _rows(client, RED_SQL, {**parameters, "kinds": list(ENTRY_KINDS)})
    ]
    judged = [(red, *_judge(red, threshold_ms, factor, min_calls)) for red in reds]
    slow = [(red, reasons, ratio) for red, reasons, ratio in judged if reasons]

    def severity(item: tuple[_Red, list[Any], float | None]) -> tuple[float, str, str]:
        red, _, ratio = item
        over_threshold = (red.quantiles[2] or 0.0) / threshold_ms
        over_baseline = (ratio or 0.0) / factor
        return (-max(over_threshold, over_baseline), red.service, red.operation)

    slow.sort(key=severity)
    slow = slow[:limit]
    page = SlowServicesPage(
        start=window.start,
        end=window.end,
        baseline=baseline,
        baseline_start=base_start,
        baseline_end=base_end,
        threshold_ms=threshold_ms,
        factor=factor,
        min_calls=min_calls,
        items=[],
    )
    if not slow:
        return page

    services = sorted({red.service for red, _, _ in slow})
    scoped = {**parameters, "services": services}
    edges: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(client, EDGE_TIME_SQL, scoped):
        edges.setdefault(row["service"], []).append(row)
    statements: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(client, SQL_TIME_SQL, scoped):
        statements.setdefault(row["service"], []).append(row)
    exemplars: dict[tuple[str, str], list[str]] = {}
    exemplar_parameters = {**window.parameters(), "services": services, "kinds": list(ENTRY_KINDS)}
    for row in _rows(client, EXEMPLARS_SQL, exemplar_parameters):
        exemplars.setdefault((row["service"], row["operation"]), []).append(row["trace_id"])
    service_exemplars = {
        service: sorted({t for (s, _), ids in exemplars.items() if s == service for t in ids})
        for service in services
    }
    service_reds = {red.service: red for red in reds if red.operation == ""}
    causes = {
        service: _causes(
            service_reds[service],
            edges.get(service, []),
            statements.get(service, []),
            service_exemplars[service][:5],
        )
        for service in services
    }
    for red, reasons, ratio in slow:
        found = causes[red.service]
        own = (
            exemplars.get((red.service, red.operation), [])
            if red.operation
            else service_exemplars[red.service][:5]
        )
        page.items.append(
            SlowItem(
                service=red.service,
                operation=red.operation or None,
                kind=red.kind or None,
                calls=red.calls,
                avg_ms=ms(red.total_ns / red.calls) if red.calls else None,
                p50_ms=red.quantiles[0],
                p95_ms=red.quantiles[1],
                p99_ms=red.quantiles[2],
                baseline_calls=red.base_calls,
                baseline_avg_ms=ms(red.base_total_ns / red.base_calls) if red.base_calls else None,
                baseline_p99_ms=red.base_p99 if red.base_calls else None,
                threshold_ms=threshold_ms,
                factor=ratio,
                reasons=reasons,
                cause=found[0] if found else None,
                contributions=found[:5],
                exemplar_trace_ids=own,
            )
        )
    return page


def router(client: Any, defaults: SlowServiceDefaults) -> APIRouter:
    """``GET /slow-services`` bound to a ClickHouse client and the configured defaults."""
    api = APIRouter(tags=["services"])

    @api.get("/slow-services", response_model=SlowServicesPage)
    def slow_services(
        span_range: Annotated[TimeRange, Depends(time_range)],
        baseline: Annotated[
            Baseline,
            Query(description="compare with the window just before, or a day earlier"),
        ] = "previous",
        threshold_ms: Annotated[
            float | None,
            Query(gt=0, description="p99 above this is slow; default from the configuration"),
        ] = None,
        factor: Annotated[
            float | None,
            Query(
                gt=1,
                description="p99 this many times the baseline's is slow; default from "
                "the configuration",
            ),
        ] = None,
        min_calls: Annotated[
            int | None,
            Query(ge=1, description="calls needed (in the window and the baseline) to judge"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items returned")] = 50,
    ) -> SlowServicesPage:
        """Services (their entry spans) and entry operations that are slow in the range: p99
        above ``threshold_ms``, or at least ``factor`` times the baseline's p99 (``reasons``
        says which), most severe first.

        Each item has its latency figures now and in the baseline, and ``cause``: the part of
        the service's entry-call time — a downstream ``edge``, a ``sql`` fingerprint, or
        ``self`` (own code) — that grew most against the baseline (or weighs most without
        one), in ms per entry call with the share of the increase it explains;
        ``contributions`` lists the top five parts. Exemplar traces: the slowest entry spans,
        or the statement's exemplars for a SQL cause.

        Read from the minute rollups (range widened to whole minutes); ``baseline=day``
        accepts ranges up to one day.
        """
        window = minute_window(span_range)
        if baseline == "day" and window.end - window.start > _DAY:
            raise invalid("baseline", "baseline=day compares ranges of at most one day")
        return find_slow(
            client,
            window,
            baseline,
            threshold_ms if threshold_ms is not None else defaults.threshold_ms,
            factor if factor is not None else defaults.factor,
            min_calls if min_calls is not None else defaults.min_calls,
            limit,
        )

    return api
