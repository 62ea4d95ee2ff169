"""Services and their operations: rate, errors and latency (``GET /api/v1/services``,
``GET /api/v1/services/{service}/operations``).

Both read the rollups only (``otel_red_1m``, migration 0004, and for whole hours
``otel_services_1h``, 0015, or ``otel_red_1h``, 0013), never raw spans, so their cost depends
on the number of services, operations and hours, not on traffic. Through the
``Distributed`` table of cluster mode the shards' partial states are merged the same way.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from tracehouse.query._rollups import (
    KIND_DESCRIPTION,
    RED_IN_WINDOW,
    SERVICES_IN_WINDOW,
    MinuteWindow,
    kinds,
    ms,
    overview_window,
    quantiles_ms,
    rate,
)
from tracehouse.query.params import TimeRange, time_range

# Every service seen in the window, with the rate, errors and latency of its spans of the
# selected kinds (a service whose spans are all of other kinds is listed with 0 calls).
SERVICES_SQL = f"""
SELECT
    ServiceName AS service,
    sumIf(Calls, has({{kinds:Array(String)}}, Kind)) AS calls,
    sumIf(Errors, has({{kinds:Array(String)}}, Kind)) AS errors,
    sumIf(DurationSum, has({{kinds:Array(String)}}, Kind)) AS duration_sum,
    minIf(DurationMin, has({{kinds:Array(String)}}, Kind)) AS duration_min,
    maxIf(DurationMax, has({{kinds:Array(String)}}, Kind)) AS duration_max,
    quantilesTDigestMergeIf(0.5, 0.95, 0.99)(DurationQuantiles, has({{kinds:Array(String)}}, Kind))
        AS quantiles
FROM {SERVICES_IN_WINDOW}
GROUP BY ServiceName
ORDER BY ServiceName
"""

# One service's operations (span name and kind), busiest first.
OPERATIONS_SQL = f"""
SELECT
    SpanName AS operation,
    Kind AS kind,
    sum(Calls) AS calls,
    sum(Errors) AS errors,
    sum(DurationSum) AS duration_sum,
    min(DurationMin) AS duration_min,
    max(DurationMax) AS duration_max,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(DurationQuantiles) AS quantiles
FROM {RED_IN_WINDOW}
WHERE ServiceName = {{service:String}}
  AND has({{kinds:Array(String)}}, Kind)
GROUP BY SpanName, Kind
ORDER BY calls DESC, operation, kind
"""


class Red(BaseModel):
    """Rate, errors and duration of a set of spans over the window."""

    calls: int
    rps: float
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None
    min_ms: float | None
    max_ms: float | None


class ServiceStats(Red):
    service: str


class OperationStats(Red):
    operation: str
    kind: str


class Window(BaseModel):
    """The whole minutes read (``start`` rounded down, ``end`` up) and the seconds the rates
    are per (the current minute counts up to now)."""

    start: dt.datetime
    end: dt.datetime
    seconds: float


class ServicesPage(Window):
    kinds: list[str]
    services: list[ServiceStats]


class OperationsPage(Window):
    service: str
    kinds: list[str]
    operations: list[OperationStats]


def _red(row: dict[str, Any], window: MinuteWindow) -> dict[str, Any]:
    calls = int(row["calls"])
    errors = int(row["errors"])
    p50, p95, p99 = quantiles_ms(row["quantiles"])
    return {
        "calls": calls,
        "rps": round(calls / window.seconds, 6),
        "errors": errors,
        "error_rate": rate(errors, calls),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "avg_ms": ms(int(row["duration_sum"]) / calls) if calls else None,
        "min_ms": ms(row["duration_min"]) if calls else None,
        "max_ms": ms(row["duration_max"]) if calls else None,
    }


def _rows(client: Any, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=parameters)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def router(client: Any) -> APIRouter:
    api = APIRouter(tags=["services"])

    @api.get("/services", response_model=ServicesPage)
    def list_services(
        span_range: Annotated[TimeRange, Depends(time_range)],
        kind: Annotated[str | None, Query(description=KIND_DESCRIPTION + "; default entry")] = None,
    ) -> ServicesPage:
        """Every service with spans in the range, with its calls, calls per second, errors,
        error rate and latency (p50/p95/p99, average, min, max in ms).

        Calls are the service's spans of the selected kinds — by default its entry spans
        (server and consumer), the requests it handles. Read from the minute rollup: the
        range is widened to whole minutes, as ``start``/``end`` in the answer say.
        """
        selected = kinds("kind", kind, "entry")
        window = overview_window(span_range)
        rows = _rows(client, SERVICES_SQL, {**window.parameters(), "kinds": selected})
        return ServicesPage(
            start=window.start,
            end=window.end,
            seconds=window.seconds,
            kinds=selected,
            services=[ServiceStats(service=row["service"], **_red(row, window)) for row in rows],
        )

    @api.get("/services/{service}/operations", response_model=OperationsPage)
    def list_operations(
        service: Annotated[str, Path(description="service.name")],
        span_range: Annotated[TimeRange, Depends(time_range)],
        kind: Annotated[str | None, Query(description=KIND_DESCRIPTION + "; default all")] = None,
    ) -> OperationsPage:
        """The service's operations (span name and kind) in the range, busiest first, with the
        same figures as ``/services``. An unknown service has no operations (an empty list)."""
        selected = kinds("kind", kind, "all")
        window = overview_window(span_range)
        parameters = {**window.parameters(), "kinds": selected, "service": service}
        rows = _rows(client, OPERATIONS_SQL, parameters)
        return OperationsPage(
            start=window.start,
            end=window.end,
            seconds=window.seconds,
            service=service,
            kinds=selected,
            operations=[
                OperationStats(operation=row["operation"], kind=row["kind"], **_red(row, window))
                for row in rows
            ],
        )

    return api
