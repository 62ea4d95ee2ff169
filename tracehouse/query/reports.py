"""Top-N application report (``GET /api/v1/reports/top``): the services, operations, SQL
statements or failing operations that rank highest by latency, traffic, errors or time spent.

Reads the rollups only, never raw spans (whole hours from the hourly tier): ``otel_red_1m``/
``_1h`` for operations and errors, ``otel_red_1m`` and ``otel_services_1h`` for services,
``otel_db_1m``/``_1h`` for SQL fingerprints, ``otel_edges_1m``/``_1h`` for service-graph
edges. The statement for each (entity, ranking) pair is built once when the module loads from fixed
text; request values only ever reach ClickHouse as bound parameters.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from tracehouse.query._rollups import (
    DB_IN_WINDOW,
    EDGES_IN_WINDOW,
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
from tracehouse.query.params import TimeRange, invalid, time_range

Entity = Literal["service", "operation", "sql", "edge", "error"]
By = Literal["p99", "calls", "errors", "error_rate", "total_time"]
Format = Literal["json", "csv"]
MAX_N = 100

# The span kinds each RED entity counts unless ``kind`` says otherwise: a service's calls are
# its entry spans, as on /services; operations (and failing ones) of every kind, as on
# /services/{service}/operations.
DEFAULT_KIND: dict[str, str] = {"service": "entry", "operation": "all", "error": "all"}
DEFAULT_BY: dict[str, By] = {
    "service": "total_time",
    "operation": "total_time",
    "sql": "total_time",
    "edge": "total_time",
    "error": "errors",
}
# Failing operations are ranked by how much they fail, nothing else.
ALLOWED_BY: dict[str, tuple[str, ...]] = {
    "service": ("p99", "calls", "errors", "error_rate", "total_time"),
    "operation": ("p99", "calls", "errors", "error_rate", "total_time"),
    "sql": ("p99", "calls", "errors", "error_rate", "total_time"),
    "edge": ("p99", "calls", "errors", "error_rate", "total_time"),
    "error": ("errors", "error_rate"),
}

# What each ranking orders by (descending; rows have calls > 0, so the division is defined).
_ORDER_BY: dict[str, str] = {
    "p99": "quantiles[3]",
    "calls": "calls",
    "errors": "errors",
    "error_rate": "errors / calls",
    "total_time": "total_ns",
}

# The identifying columns of a row of each entity, in output order.
ID_COLUMNS: dict[str, tuple[str, ...]] = {
    "service": ("service",),
    "operation": ("service", "operation", "kind"),
    "error": ("service", "operation", "kind"),
    "sql": ("fingerprint", "statement", "db_system"),
    "edge": ("source", "target", "type"),
}
METRIC_COLUMNS = (
    "calls",
    "errors",
    "error_rate",
    "rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "avg_ms",
    "total_ms",
)

_AGGREGATES = """
    sum(Calls) AS calls,
    sum(Errors) AS errors,
    sum(DurationSum) AS total_ns,
    quantilesTDigestMerge(0.5, 0.95, 0.99)(DurationQuantiles) AS quantiles"""

_SERVICE_SQL = f"""
SELECT
    ServiceName AS service,{_AGGREGATES}
FROM {SERVICES_IN_WINDOW}
WHERE has({{kinds:Array(String)}}, Kind)
GROUP BY ServiceName
HAVING calls > 0
ORDER BY __ORDER_BY__ DESC, calls DESC, service
LIMIT {{n:UInt32}}
"""

_OPERATION_SQL = f"""
SELECT
    ServiceName AS service,
    SpanName AS operation,
    Kind AS kind,{_AGGREGATES}
FROM {RED_IN_WINDOW}
WHERE has({{kinds:Array(String)}}, Kind)
GROUP BY ServiceName, SpanName, Kind
HAVING __HAVING__
ORDER BY __ORDER_BY__ DESC, calls DESC, service, operation, kind
LIMIT {{n:UInt32}}
"""

_SQL_SQL = f"""
SELECT
    Fingerprint AS fingerprint,
    DbSystem AS db_system,
    any(NormalizedStatement) AS statement,{_AGGREGATES}
FROM {DB_IN_WINDOW}
GROUP BY Fingerprint, DbSystem
HAVING calls > 0
ORDER BY __ORDER_BY__ DESC, calls DESC, fingerprint, db_system
LIMIT {{n:UInt32}}
"""

# Latency of an edge as its caller saw it (the client span); `user` edges have only the
# server side (root spans), so theirs is the server's.
_EDGE_SQL = f"""
SELECT
    Source AS source,
    Target AS target,
    ConnectionType AS type,
    sum(Calls) AS calls,
    sum(Errors) AS errors,
    if(type = 'user', sum(ServerDurationSum), sum(ClientDurationSum)) AS total_ns,
    if(type = 'user',
        quantilesTDigestMerge(0.5, 0.95, 0.99)(ServerLatency),
        quantilesTDigestMerge(0.5, 0.95, 0.99)(ClientLatency)) AS quantiles
FROM ({EDGES_IN_WINDOW})
WHERE Version = LatestVersion
GROUP BY source, target, type
HAVING calls > 0
ORDER BY __ORDER_BY__ DESC, calls DESC, source, target, type
LIMIT {{n:UInt32}}
"""

_TEMPLATES: dict[str, str] = {
    "service": _SERVICE_SQL,
    "operation": _OPERATION_SQL.replace("__HAVING__", "calls > 0"),
    "error": _OPERATION_SQL.replace("__HAVING__", "calls > 0 AND errors > 0"),
    "sql": _SQL_SQL,
    "edge": _EDGE_SQL,
}

# Every statement the endpoint can run, by (entity, by).
TOP_SQL: dict[tuple[str, str], str] = {
    (entity, by): template.replace("__ORDER_BY__", _ORDER_BY[by])
    for entity, template in _TEMPLATES.items()
    for by in ALLOWED_BY[entity]
}


class TopReport(BaseModel):
    """A top-N report: the rows in rank order, each with the entity's identifying columns
    (``columns`` lists all of a row's keys in order) and its figures over the window."""

    entity: Entity
    by: By
    start: dt.datetime
    end: dt.datetime
    seconds: float
    kinds: list[str]
    columns: list[str]
    rows: list[dict[str, str | int | float | None]]


def _row(rank: int, entity: str, row: dict[str, Any], window: MinuteWindow) -> dict[str, Any]:
    calls = int(row["calls"])
    errors = int(row["errors"])
    total_ns = int(row["total_ns"])
    p50, p95, p99 = quantiles_ms(row["quantiles"])
    out: dict[str, Any] = {"rank": rank}
    for column in ID_COLUMNS[entity]:
        value = row[column]
        out[column] = f"{int(value):016x}" if column == "fingerprint" else str(value)
    out.update(
        calls=calls,
        errors=errors,
        error_rate=rate(errors, calls),
        rps=round(calls / window.seconds, 6),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        avg_ms=ms(total_ns / calls) if calls else None,
        total_ms=ms(total_ns),
    )
    return out


def to_csv(report: TopReport) -> str:
    """The report's rows as CSV with a header row (empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(report.columns)
    for row in report.rows:
        writer.writerow(["" if row[c] is None else row[c] for c in report.columns])
    return buffer.getvalue()


def router(client: Any) -> APIRouter:
    """``GET /reports/top`` bound to a ClickHouse client."""
    api = APIRouter(tags=["reports"])

    @api.get("/reports/top", response_model=TopReport)
    def top(
        span_range: Annotated[TimeRange, Depends(time_range)],
        entity: Annotated[
            Entity,
            Query(
                description="what is ranked: service, operation, sql (fingerprint), edge "
                "(caller → callee) or error"
            ),
        ] = "service",
        by: Annotated[
            By | None,
            Query(
                description="ranking, largest first: p99 latency, calls, errors, error_rate or "
                "total_time; default total_time (errors for entity=error, which allows only "
                "errors and error_rate)"
            ),
        ] = None,
        n: Annotated[int, Query(ge=1, le=MAX_N, description="rows returned, 1..100")] = 10,
        kind: Annotated[
            str | None,
            Query(
                description=KIND_DESCRIPTION
                + "; default entry for entity=service, all for operation and error; "
                "not accepted for sql and edge"
            ),
        ] = None,
        output: Annotated[
            Format, Query(alias="format", description="json (default) or csv with a header")
        ] = "json",
    ) -> Any:
        """Top-N report: the ``n`` services, operations, SQL fingerprints or failing
        operations ranking highest by ``by`` in the range.

        - ``service``: per service, its entry spans (server and consumer) by default, as
          ``/services`` counts them.
        - ``operation``: per service, span name and kind.
        - ``sql``: per SQL fingerprint and database system, with the normalized statement.
        - ``edge``: per service-graph edge (``source`` → ``target``, ``type`` service,
          database, messaging, external or user), latency as the caller saw it (the server's
          for ``user`` edges, root spans); from the worker's ``otel_edges_1m``.
        - ``error``: operations with at least one error, ranked by ``errors`` or
          ``error_rate``.

        Each row has ``rank``, the entity's identifying columns, ``calls``, ``errors``,
        ``error_rate``, ``rps`` and ``p50_ms``/``p95_ms``/``p99_ms``/``avg_ms``/``total_ms``.
        Ties are broken by more calls, then by the identifying columns. ``format=csv``
        returns the same rows as ``text/csv`` with a header row.

        Read from the rollups (``otel_red_1m``/``_1h``, ``otel_db_1m``/``_1h``,
        ``otel_edges_1m``/``_1h``): the range is widened to whole minutes (``start``/``end``
        in the answer).
        """
        ranking: By = by if by is not None else DEFAULT_BY[entity]
        if ranking not in ALLOWED_BY[entity]:
            raise invalid(
                "by",
                f"{ranking!r} does not rank entity={entity}: use "
                + " or ".join(ALLOWED_BY[entity]),
            )
        if entity in ("sql", "edge"):
            if kind is not None:
                raise invalid("kind", f"entity={entity} has no span kind")
            selected: list[str] = []
        else:
            selected = kinds("kind", kind, DEFAULT_KIND[entity])
        window = overview_window(span_range)
        parameters: dict[str, Any] = {**window.parameters(), "n": n}
        if selected:
            parameters["kinds"] = selected
        result = client.query(TOP_SQL[(entity, ranking)], parameters=parameters)
        rows = [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]
        report = TopReport(
            entity=entity,
            by=ranking,
            start=window.start,
            end=window.end,
            seconds=window.seconds,
            kinds=selected,
            columns=["rank", *ID_COLUMNS[entity], *METRIC_COLUMNS],
            rows=[_row(rank, entity, row, window) for rank, row in enumerate(rows, 1)],
        )
        if output == "csv":
            return Response(content=to_csv(report), media_type="text/csv")
        return report

    return api
