"""Log search: ``GET /api/v1/logs`` over ``otel_logs``, newest first."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tracehouse.query.filters import TRACE_ID_PATTERN, AttributeFilter, attribute_filters
from tracehouse.query.params import TimeRange, invalid, time_range

# The columns of a LogRecord, named as its fields; also read by the trace lookup.
LOG_RECORD_FIELDS = """
    toString(toUnixTimestamp64Nano(Timestamp)) AS timeUnixNano,
    ServiceName AS service,
    SeverityText AS severityText,
    SeverityNumber AS severityNumber,
    Body AS body,
    TraceId AS traceId,
    SpanId AS spanId,
    LogAttributes AS attributes,
    ResourceAttributes AS resourceAttributes"""

# TimestampTime (whole seconds) is in the primary key; Timestamp makes the range exact.
# An empty string parameter switches its filter off (ClickHouse folds the constant, so the
# primary key still serves the service filter).
SEARCH_LOGS_SQL = f"""
SELECT {LOG_RECORD_FIELDS}
FROM otel_logs
WHERE TimestampTime >= toDateTime({{start_s:Int64}})
  AND TimestampTime <= toDateTime({{end_s:Int64}})
  AND Timestamp >= fromUnixTimestamp64Nano({{start_ns:Int64}})
  AND Timestamp < fromUnixTimestamp64Nano({{end_ns:Int64}})
  AND ({{service:String}} = '' OR ServiceName = {{service:String}})
  AND SeverityNumber >= {{min_severity:UInt8}}
  AND ({{text:String}} = '' OR positionCaseInsensitiveUTF8(Body, {{text:String}}) > 0)
  AND ({{trace_id:String}} = '' OR TraceId = {{trace_id:String}})
  AND arrayAll((k, v) -> mapContains(LogAttributes, k) AND LogAttributes[k] = v,
               {{attr_keys:Array(String)}}, {{attr_values:Array(String)}})
ORDER BY Timestamp DESC
LIMIT {{limit:UInt32}}
"""

# The lowest severity number of each OpenTelemetry severity range (TRACE is 1-4, DEBUG 5-8, …).
_SEVERITY_RANGES = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warn": 13,
    "warning": 13,
    "error": 17,
    "fatal": 21,
}
_SEVERITY_NUMBER = re.compile(r"[0-9]{1,2}")  # ASCII only: str.isdigit() also takes "²"
_SEVERITY_NAME = re.compile(r"(?P<name>[a-z]+)(?P<step>[1-4])?")


class LogRecord(BaseModel):
    """One log record; ``timeUnixNano`` is a string so that no JSON reader rounds it."""

    timeUnixNano: str
    service: str
    severityText: str
    severityNumber: int
    body: str
    traceId: str
    spanId: str
    attributes: dict[str, str]
    resourceAttributes: dict[str, str]


class LogSearchResult(BaseModel):
    logs: list[LogRecord]


def min_severity(value: str | None) -> int:
    """The severity number a ``severity`` parameter stands for: 1..24, or a name such as
    ``warn`` (13) or ``error2`` (18), as in the OpenTelemetry log data model; 0 when absent."""
    if value is None:
        return 0
    text = value.strip().lower()
    if _SEVERITY_NUMBER.fullmatch(text) and 1 <= int(text) <= 24:
        return int(text)
    match = _SEVERITY_NAME.fullmatch(text)
    if match and match["name"] in _SEVERITY_RANGES:
        return _SEVERITY_RANGES[match["name"]] + int(match["step"] or 1) - 1
    raise invalid(
        "severity",
        f"{value!r} is neither a severity number 1..24 nor one of "
        "trace, debug, info, warn, error, fatal (optionally followed by 1-4, as in warn2)",
    )


def log_records(rows: Any) -> list[LogRecord]:
    """LogRecords from the named results of a query selecting LOG_RECORD_FIELDS."""
    return [LogRecord(**row) for row in rows]


def router(client: Any) -> APIRouter:
    api = APIRouter(tags=["logs"])

    @api.get("/logs")
    def search_logs(
        window: Annotated[TimeRange, Depends(time_range)],
        attributes: Annotated[AttributeFilter, Depends(attribute_filters)],
        service: Annotated[str | None, Query(description="service.name, exact")] = None,
        severity: Annotated[
            str | None,
            Query(
                description="minimum severity: a number 1..24 or a name "
                "(trace, debug, info, warn, error, fatal)",
                examples=["warn"],
            ),
        ] = None,
        text: Annotated[
            str | None, Query(description="case-insensitive substring of the body")
        ] = None,
        trace_id: Annotated[
            str | None, Query(pattern=TRACE_ID_PATTERN, description="32 hex characters")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="most records returned")] = 100,
    ) -> LogSearchResult:
        """Log records in the time range that match every filter given, newest first.

        ``attr`` filters compare log attributes (``LogAttributes``) for equality with the
        stored text of the value (docs/attribute-encoding.md: the int 200 matches ``200``).
        """
        parameters = {
            "start_s": int(window.start.timestamp()),
            "end_s": int(window.end.timestamp()),
            "start_ns": window.start_ns,
            "end_ns": window.end_ns,
            "service": service or "",
            "min_severity": min_severity(severity),
            "text": text or "",
            "trace_id": (trace_id or "").lower(),
            "limit": limit,
            **attributes.parameters(),
        }
        rows = client.query(SEARCH_LOGS_SQL, parameters=parameters).named_results()
        return LogSearchResult(logs=log_records(rows))

    return api
