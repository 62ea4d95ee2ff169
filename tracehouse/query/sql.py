"""Slow SQL: database statements grouped by fingerprint (``GET /api/v1/sql``).

Reads the rollups ``otel_db_1m`` (migration 0004) and, for whole hours, ``otel_db_1h``
(0013) only: database calls per calling service, database system, namespace and SQL
fingerprint, computed inside ClickHouse from ``db.query.text``|``db.statement``
(docs/decisions/0005-sql-fingerprint.md).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tracehouse.query._rollups import DB_IN_WINDOW, ms, overview_window, quantiles_ms, rate
from tracehouse.query.params import TimeRange, time_range

Sort = Literal["total", "p99", "calls", "slow", "errors"]
MAX_LIMIT = 500

# What each `sort` orders by (descending); the SQL per sort is fixed when the module loads.
_ORDER_BY: dict[str, str] = {
    "total": "total_ns",
    "p99": "quantiles[3]",
    "calls": "calls",
    "slow": "slow_calls",
    "errors": "errors",
}

# One row per (fingerprint, system, namespace). An empty filter parameter switches it off.
_STATEMENTS_SQL = """
SELECT
    Fingerprint AS fingerprint,
    DbSystem AS db_system,
    DbNamespace AS db_namespace,
    any(NormalizedStatement) AS statement,
    any(SampleStatement) AS sample_statement,
    sum(Calls) AS calls,
    sum(Errors) AS errors,
    sum(SlowCalls) AS slow_calls,
    max(SlowThresholdMs) AS slow_threshold_ms,
    sum(DurationSum) AS total_ns,
    max(DurationMax) AS max_ns,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(DurationQuantiles) AS quantiles,
    arraySort(groupUniqArray(ServiceName)) AS services,
    arraySort(groupUniqArrayMerge(5)(ExemplarTraceIds)) AS exemplar_trace_ids,
    argMaxMerge(SlowestTraceId) AS slowest_trace_id
FROM __DB_IN_WINDOW__
WHERE ({service:String} = '' OR ServiceName = {service:String})
  AND ({db:String} = '' OR DbSystem = {db:String})
  AND ({namespace:String} = '' OR DbNamespace = {namespace:String})
GROUP BY Fingerprint, DbSystem, DbNamespace
ORDER BY __ORDER_BY__ DESC, calls DESC, fingerprint, db_system, db_namespace
LIMIT {limit:UInt32}
"""

STATEMENTS_SQL: dict[str, str] = {
    sort: _STATEMENTS_SQL.replace("__ORDER_BY__", column).replace("__DB_IN_WINDOW__", DB_IN_WINDOW)
    for sort, column in _ORDER_BY.items()
}


class Statement(BaseModel):
    fingerprint: str
    statement: str
    sample_statement: str
    db_system: str
    db_namespace: str
    calls: int
    errors: int
    error_rate: float
    slow_calls: int
    slow_threshold_ms: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    avg_ms: float | None
    max_ms: float | None
    total_ms: float | None
    services: list[str]
    slowest_trace_id: str
    exemplar_trace_ids: list[str]


class StatementsPage(BaseModel):
    start: dt.datetime
    end: dt.datetime
    sort: Sort
    statements: list[Statement]


def _statement(row: dict[str, Any]) -> Statement:
    calls = int(row["calls"])
    errors = int(row["errors"])
    p50, p95, p99 = quantiles_ms(row["quantiles"])
    slowest = str(row["slowest_trace_id"])
    exemplars = [slowest] if slowest else []
    exemplars += [t for t in row["exemplar_trace_ids"] if t and t != slowest]
    return Statement(
        fingerprint=f"{int(row['fingerprint']):016x}",
        statement=row["statement"],
        sample_statement=row["sample_statement"],
        db_system=row["db_system"],
        db_namespace=row["db_namespace"],
        calls=calls,
        errors=errors,
        error_rate=rate(errors, calls),
        slow_calls=int(row["slow_calls"]),
        slow_threshold_ms=int(row["slow_threshold_ms"]),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        avg_ms=ms(int(row["total_ns"]) / calls) if calls else None,
        max_ms=ms(row["max_ns"]),
        total_ms=ms(row["total_ns"]),
        services=list(row["services"]),
        slowest_trace_id=slowest,
        exemplar_trace_ids=exemplars,
    )


def router(client: Any) -> APIRouter:
    api = APIRouter(tags=["sql"])

    @api.get("/sql", response_model=StatementsPage)
    def list_statements(
        span_range: Annotated[TimeRange, Depends(time_range)],
        service: Annotated[str, Query(description="only calls made by this service")] = "",
        db: Annotated[str, Query(description="only this db.system, e.g. postgresql")] = "",
        namespace: Annotated[str, Query(description="only this db.namespace (database)")] = "",
        sort: Annotated[
            Sort,
            Query(
                description="order, largest first: total time, p99 latency, calls, "
                "slow calls or errors"
            ),
        ] = "total",
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows returned")] = 100,
    ) -> StatementsPage:
        """Database statements by SQL fingerprint: one row per (fingerprint, db system,
        namespace) with the normalized statement, a sample with its literals, calls, errors,
        slow calls (at or above ``slow_threshold_ms``: the configured ``slow_sql_thresholds``
        for the db system, by default 10 ms for redis and memcached and 200 ms otherwise),
        latency p50/p95/p99/avg/max and total time in ms, the calling services and up to six
        exemplar trace ids (the slowest call's first).

        Read from the minute rollup: the range is widened to whole minutes (``start``/``end``
        in the answer). ``limit`` 1 to 500; a bad ``sort`` or ``limit`` is a 422 naming it.
        """
        window = overview_window(span_range)
        parameters = {
            **window.parameters(),
            "service": service,
            "db": db,
            "namespace": namespace,
            "limit": limit,
        }
        result = client.query(STATEMENTS_SQL[sort], parameters=parameters)
        rows = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
        return StatementsPage(
            start=window.start,
            end=window.end,
            sort=sort,
            statements=[_statement(row) for row in rows],
        )

    return api
