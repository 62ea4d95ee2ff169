"""Traces: lookup by id (``GET /api/v1/traces/{trace_id}``) and search (``GET /api/v1/traces``).

A lookup reads the trace's time window from ``otel_traces_trace_id_ts`` first, so that only
the partitions of ``otel_traces`` and ``otel_logs`` that can hold the trace are read. A
search finds matching trace ids in one query and summarises those traces in a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel

from tracehouse.query.filters import TRACE_ID_PATTERN, AttributeFilter, attribute_filters
from tracehouse.query.logs import LOG_RECORD_FIELDS, LogRecord, log_records
from tracehouse.query.params import TimeRange, invalid, time_range
from tracehouse.storage.conventions import IS_ERROR, SPAN_KIND, STATUS

# Spans and logs are read this far around the trace's recorded window: the window table keeps
# whole seconds of span starts, and log records may come a little after the last span ends.
WINDOW_MARGIN_NS = 60 * 1_000_000_000
# At most this many log records are attached to one trace (the earliest ones).
TRACE_LOGS_LIMIT = 10_000
_UINT64_MAX = 2**64 - 1
# Bound of the duration parameters (about 31 years), so that they fit Duration's UInt64 ns.
MAX_DURATION_MS = 1e12

TRACE_WINDOW_SQL = """
SELECT count() AS windows,
       toInt64(toUnixTimestamp(min(Start))) AS first_start_s,
       toInt64(toUnixTimestamp(max(End))) AS last_start_s
FROM otel_traces_trace_id_ts
WHERE TraceId = {trace_id:String}
"""

TRACE_SPANS_SQL = f"""
SELECT SpanId AS span_id,
       ParentSpanId AS parent_span_id,
       SpanName AS name,
       {SPAN_KIND} AS kind,
       ServiceName AS service,
       toUnixTimestamp64Nano(Timestamp) AS start_ns,
       Duration AS duration_ns,
       {STATUS} AS status,
       StatusMessage AS status_message,
       SpanAttributes AS attributes,
       ResourceAttributes AS resource_attributes,
       ScopeName AS scope_name,
       ScopeVersion AS scope_version,
       arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp) AS event_times,
       Events.Name AS event_names,
       Events.Attributes AS event_attributes,
       Links.TraceId AS link_trace_ids,
       Links.SpanId AS link_span_ids,
       Links.TraceState AS link_trace_states,
       Links.Attributes AS link_attributes
FROM otel_traces
WHERE TraceId = {{trace_id:String}}
  AND Timestamp >= fromUnixTimestamp64Nano({{start_ns:Int64}})
  AND Timestamp <= fromUnixTimestamp64Nano({{end_ns:Int64}})
ORDER BY Timestamp, SpanId
"""

TRACE_LOGS_SQL = f"""
SELECT {LOG_RECORD_FIELDS}
FROM otel_logs
WHERE TraceId = {{trace_id:String}}
  AND TimestampTime >= toDateTime({{start_s:Int64}})
  AND TimestampTime <= toDateTime({{end_s:Int64}})
ORDER BY Timestamp, SpanId
LIMIT {TRACE_LOGS_LIMIT}
"""

# Every condition applies to one span (as in Jaeger): a trace matches when one of its spans in
# the time range matches them all. An empty string parameter switches its filter off;
# ClickHouse folds the constant, so the primary key still serves service and operation.
# Newest first: by the start of the trace's newest matching span (``find_trace_ids``).
FIND_TRACE_IDS_SQL = f"""
SELECT TraceId, max(toUnixTimestamp64Nano(Timestamp)) AS newest_ns
FROM otel_traces
WHERE Timestamp >= fromUnixTimestamp64Nano({{start_ns:Int64}})
  AND Timestamp < fromUnixTimestamp64Nano({{end_ns:Int64}})
  AND TraceId != ''
  AND ({{service:String}} = '' OR ServiceName = {{service:String}})
  AND ({{operation:String}} = '' OR SpanName = {{operation:String}})
  AND Duration >= {{min_duration_ns:UInt64}}
  AND Duration <= {{max_duration_ns:UInt64}}
  AND ({{status:String}} = '' OR {STATUS} = {{status:String}})
  AND ({{kind:String}} = '' OR {SPAN_KIND} = {{kind:String}})
  AND arrayAll((k, v) -> mapContains(SpanAttributes, k) AND SpanAttributes[k] = v,
               {{attr_keys:Array(String)}}, {{attr_values:Array(String)}})
GROUP BY TraceId
ORDER BY newest_ns DESC, TraceId
LIMIT {{limit:UInt32}}
"""
# A search reads the newest quarter hour of its range first, then four times as much of the
# range before it each time, until it has ``limit`` traces or the range is read: the traces
# most searches ask for are recent, and a day's spans took seconds to read and group.
SEARCH_FIRST_STEP_NS = 15 * 60 * 1_000_000_000
SEARCH_STEP_GROWTH = 4


def find_trace_ids(client: Any, parameters: dict[str, Any]) -> list[str]:
    """The ids of the ``limit`` traces whose newest span matching the filters of
    ``FIND_TRACE_IDS_SQL`` in ``[start_ns, end_ns)`` is newest, newest first.

    The same answer as one query over the whole range: a trace's newest matching span is the
    same in any part of the range that holds it, so once the parts read from the end hold
    ``limit`` traces, no trace of an older part can rank above them. A trace found in two
    parts keeps the key of the newer one, and each part returns ``limit`` traces, enough
    beside those already found."""
    limit, start = parameters["limit"], parameters["start_ns"]
    newest: dict[str, int] = {}
    upper, step = parameters["end_ns"], SEARCH_FIRST_STEP_NS
    while upper > start and len(newest) < limit:
        lower = max(start, upper - step)
        part = {**parameters, "start_ns": lower, "end_ns": upper}
        for trace_id, newest_ns in client.query(FIND_TRACE_IDS_SQL, parameters=part).result_rows:
            newest.setdefault(trace_id, newest_ns)
        upper, step = lower, step * SEARCH_STEP_GROWTH
    ranked = sorted(newest, key=lambda trace_id: (-newest[trace_id], trace_id))
    return ranked[:limit]


# The time window of some traces from the trace-id index (whole seconds of span starts,
# hence the margins of TRACES_IN_WINDOW), so that span reads touch only those partitions.
TRACES_WINDOW_CTE = """
WITH (SELECT min(Start) FROM otel_traces_trace_id_ts
      WHERE TraceId IN {trace_ids:Array(String)}) AS first_start,
     (SELECT max(End) FROM otel_traces_trace_id_ts
      WHERE TraceId IN {trace_ids:Array(String)}) AS last_start
"""
TRACES_IN_WINDOW = """
  AND Timestamp >= first_start - INTERVAL 1 MINUTE
  AND Timestamp < last_start + INTERVAL 61 SECOND"""

# The root is the earliest span without a parent, else the earliest span: false sorts first.
SUMMARISE_TRACES_SQL = f"""
{TRACES_WINDOW_CTE}SELECT TraceId AS traceId,
       argMin(ServiceName, (ParentSpanId != '', Timestamp)) AS rootService,
       argMin(SpanName, (ParentSpanId != '', Timestamp)) AS rootName,
       min(toUnixTimestamp64Nano(Timestamp)) AS start_ns,
       toString(start_ns) AS startTimeUnixNano,
       toString(max(toUnixTimestamp64Nano(Timestamp) + Duration) - start_ns) AS durationNano,
       count() AS spanCount,
       countIf({IS_ERROR}) AS errorCount,
       arraySort(groupUniqArray(ServiceName)) AS services
FROM otel_traces
WHERE TraceId IN {{trace_ids:Array(String)}}
{TRACES_IN_WINDOW}
GROUP BY TraceId
ORDER BY start_ns DESC, traceId
"""

SpanKindName = Literal["server", "client", "producer", "consumer", "internal", "unspecified"]
StatusName = Literal["ok", "error", "unset"]


class Scope(BaseModel):
    name: str
    version: str


class SpanEvent(BaseModel):
    timeUnixNano: str
    name: str
    attributes: dict[str, str]


class SpanLink(BaseModel):
    traceId: str
    spanId: str
    traceState: str
    attributes: dict[str, str]


class Span(BaseModel):
    """One span. ``depth`` is its distance from a root (a span without a parent, or whose
    parent is not in the trace), for drawing the waterfall; nanoseconds are strings."""

    spanId: str
    parentSpanId: str
    depth: int
    name: str
    kind: str
    service: str
    startTimeUnixNano: str
    durationNano: str
    status: str
    statusMessage: str
    attributes: dict[str, str]
    resourceAttributes: dict[str, str]
    scope: Scope
    events: list[SpanEvent]
    links: list[SpanLink]


class TraceSummary(BaseModel):
    """A trace at a glance: the root span's service and name (the earliest span's when the
    root is missing), start, duration (first start to last end), counts and services."""

    traceId: str
    rootService: str
    rootName: str
    startTimeUnixNano: str
    durationNano: str
    spanCount: int
    errorCount: int
    services: list[str]


class Trace(TraceSummary):
    spans: list[Span]
    logs: list[LogRecord]


class TraceSearchResult(BaseModel):
    traces: list[TraceSummary]


@dataclass(frozen=True)
class _Window:
    start_ns: int
    end_ns: int

    def parameters(self) -> dict[str, int]:
        return {
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "start_s": self.start_ns // 1_000_000_000,
            "end_s": self.end_ns // 1_000_000_000,
        }


def span_depths(parents: Mapping[str, str]) -> dict[str, int]:
    """Depth of each span id, given each span's parent id: 0 for a root, that is a span
    without a parent or whose parent is not in the trace. A cycle (bad data) is cut where
    the walk up meets a span a second time."""
    depths: dict[str, int] = {}
    for span_id in parents:
        chain: list[str] = []
        current = span_id
        while current not in depths:
            parent = parents[current]
            if not parent or parent not in parents or current in chain:
                depths[current] = 0
                if current in chain:
                    chain.remove(current)
                break
            chain.append(current)
            current = parent
        for offset, child in enumerate(reversed(chain), start=1):
            depths[child] = depths[current] + offset
    return depths


def _span(row: Mapping[str, Any], depth: int) -> Span:
    return Span(
        spanId=row["span_id"],
        parentSpanId=row["parent_span_id"],
        depth=depth,
        name=row["name"],
        kind=row["kind"],
        service=row["service"],
        startTimeUnixNano=str(row["start_ns"]),
        durationNano=str(row["duration_ns"]),
        status=row["status"],
        statusMessage=row["status_message"],
        attributes=row["attributes"],
        resourceAttributes=row["resource_attributes"],
        scope=Scope(name=row["scope_name"], version=row["scope_version"]),
        events=[
            SpanEvent(timeUnixNano=str(time), name=name, attributes=attributes)
            for time, name, attributes in zip(
                row["event_times"], row["event_names"], row["event_attributes"], strict=True
            )
        ],
        links=[
            SpanLink(traceId=trace_id, spanId=span_id, traceState=state, attributes=attributes)
            for trace_id, span_id, state, attributes in zip(
                row["link_trace_ids"],
                row["link_span_ids"],
                row["link_trace_states"],
                row["link_attributes"],
                strict=True,
            )
        ],
    )


def _spans(rows: Iterable[Mapping[str, Any]]) -> list[Span]:
    """Spans in start order; a parent before its children when they start together."""
    rows = list(rows)
    depths = span_depths({row["span_id"]: row["parent_span_id"] for row in rows})
    spans = [_span(row, depths[row["span_id"]]) for row in rows]
    spans.sort(key=lambda span: (int(span.startTimeUnixNano), span.depth))
    return spans


def _summary(trace_id: str, spans: list[Span]) -> TraceSummary:
    root = min(spans, key=lambda span: (span.parentSpanId != "", int(span.startTimeUnixNano)))
    start = min(int(span.startTimeUnixNano) for span in spans)
    end = max(int(span.startTimeUnixNano) + int(span.durationNano) for span in spans)
    return TraceSummary(
        traceId=trace_id,
        rootService=root.service,
        rootName=root.name,
        startTimeUnixNano=str(start),
        durationNano=str(end - start),
        spanCount=len(spans),
        errorCount=sum(span.status == "error" for span in spans),
        services=sorted({span.service for span in spans}),
    )


def _duration_bounds_ns(min_ms: float | None, max_ms: float | None) -> tuple[int, int]:
    low = round(min_ms * 1_000_000) if min_ms is not None else 0
    high = round(max_ms * 1_000_000) if max_ms is not None else _UINT64_MAX
    if low > high:
        raise invalid(
            "max_duration_ms", f"max_duration_ms ({max_ms}) is below min_duration_ms ({min_ms})"
        )
    return low, high


class _TraceReader:
    """The queries behind the endpoints, bound to one ClickHouse client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def window(self, trace_id: str) -> _Window | None:
        """The span starts recorded for the trace, widened by the margin; None if unknown."""
        row = self._client.query(TRACE_WINDOW_SQL, parameters={"trace_id": trace_id}).first_row
        windows, first_start_s, last_start_s = row
        if not windows:
            return None
        return _Window(
            first_start_s * 1_000_000_000 - WINDOW_MARGIN_NS,
            (last_start_s + 1) * 1_000_000_000 + WINDOW_MARGIN_NS,
        )

    def trace(self, trace_id: str) -> Trace | None:
        window = self.window(trace_id)
        if window is None:
            return None
        parameters = {"trace_id": trace_id, **window.parameters()}
        spans = _spans(self._client.query(TRACE_SPANS_SQL, parameters=parameters).named_results())
        if not spans:
            return None
        summary = _summary(trace_id, spans)
        # Logs are kept until the last span ends, which can be long after it starts.
        start = int(summary.startTimeUnixNano)
        end = start + int(summary.durationNano)
        logs_window = _Window(start - WINDOW_MARGIN_NS, end + WINDOW_MARGIN_NS)
        parameters = {"trace_id": trace_id, **logs_window.parameters()}
        logs = log_records(
            self._client.query(TRACE_LOGS_SQL, parameters=parameters).named_results()
        )
        return Trace(**summary.model_dump(), spans=spans, logs=logs)

    def search(self, parameters: dict[str, Any]) -> list[TraceSummary]:
        ids = find_trace_ids(self._client, parameters)
        if not ids:
            return []
        rows = self._client.query(
            SUMMARISE_TRACES_SQL, parameters={"trace_ids": ids}
        ).named_results()
        return [TraceSummary(**row) for row in rows]


def router(client: Any) -> APIRouter:
    api = APIRouter(tags=["traces"])
    reader = _TraceReader(client)

    @api.get("/traces/{trace_id}", responses={404: {"description": "no such trace"}})
    def get_trace(
        trace_id: Annotated[str, Path(pattern=TRACE_ID_PATTERN, description="32 hex characters")],
    ) -> Trace:
        """One trace: its spans in start order, each with its ``depth`` below a root, the log
        records that carry its id, and a summary. 404 when no span of it is stored."""
        trace = reader.trace(trace_id.lower())
        if trace is None:
            raise HTTPException(status_code=404, detail=f"trace {trace_id.lower()} not found")
        return trace

    @api.get("/traces")
    def search_traces(
        window: Annotated[TimeRange, Depends(time_range)],
        attributes: Annotated[AttributeFilter, Depends(attribute_filters)],
        service: Annotated[str | None, Query(description="service.name, exact")] = None,
        operation: Annotated[str | None, Query(description="span name, exact")] = None,
        min_duration_ms: Annotated[
            float | None, Query(ge=0, le=MAX_DURATION_MS, description="span duration at least, ms")
        ] = None,
        max_duration_ms: Annotated[
            float | None, Query(ge=0, le=MAX_DURATION_MS, description="span duration at most, ms")
        ] = None,
        status: Annotated[StatusName | None, Query(description="span status")] = None,
        kind: Annotated[SpanKindName | None, Query(description="span kind")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="most traces returned")] = 20,
    ) -> TraceSearchResult:
        """Traces with a span in the time range that matches every filter given (service,
        operation, duration bounds, status, kind and ``attr`` equalities all on the same
        span, as in Jaeger), newest first, each summarised over all its spans."""
        low, high = _duration_bounds_ns(min_duration_ms, max_duration_ms)
        parameters = {
            "start_ns": window.start_ns,
            "end_ns": window.end_ns,
            "service": service or "",
            "operation": operation or "",
            "min_duration_ns": low,
            "max_duration_ns": high,
            "status": status or "",
            "kind": kind or "",
            "limit": limit,
            **attributes.parameters(),
        }
        return TraceSearchResult(traces=reader.search(parameters))

    return api
