"""The Jaeger v1 query API under ``/jaeger/api``: what Grafana's Jaeger data source and the
Jaeger UI call (services, operations, traces, dependencies), in Jaeger's JSON shapes.

Every answer is Jaeger's envelope ``{"data", "total", "limit", "offset", "errors"}``; a bad
parameter is a 400 and an unknown trace a 404, both with ``errors`` naming the problem.
Jaeger's conventions hold: times in microseconds since the epoch, durations as Go durations
(``1.2s``, ``100ms``), search ``tags`` as a JSON object or logfmt. Attribute values are
emitted as ``string`` tags, since the stored text does not keep their type
(docs/attribute-encoding.md); only the tags made here (``error``) are typed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from tracehouse.query.params import MAX_RANGE
from tracehouse.query.traces import TRACES_IN_WINDOW, TRACES_WINDOW_CTE, find_trace_ids
from tracehouse.storage.conventions import SPAN_KIND, STATUS

DEFAULT_LOOKBACK_NS = 3600 * 1_000_000_000
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
# Services and operations are those seen in the rollup over this long (Jaeger has no range).
CATALOGUE_WINDOW_S = 24 * 3600
# Dependencies: default lookback (ms), as Jaeger's UI asks for.
DEFAULT_DEPENDENCIES_LOOKBACK_MS = 24 * 3600 * 1000
# At most this many spans are read for one search (about 100 spans per trace at the limit).
SEARCH_SPANS_LIMIT = 100_000
_MAX_RANGE_NS = int(MAX_RANGE.total_seconds()) * 1_000_000_000
_UINT64_MAX = 2**64 - 1
_KINDS = ("server", "client", "producer", "consumer", "internal")

SERVICES_SQL = """
SELECT DISTINCT ServiceName
FROM otel_red_1m
WHERE Minute >= fromUnixTimestamp({start:Int64})
ORDER BY ServiceName
"""

OPERATIONS_SQL = """
SELECT SpanName AS name, Kind AS kind
FROM otel_red_1m
WHERE ServiceName = {service:String}
  AND Minute >= fromUnixTimestamp({start:Int64})
  AND ({kind:String} = '' OR Kind = {kind:String})
GROUP BY SpanName, Kind
ORDER BY SpanName, Kind
"""

# The spans of some traces, read only in the window otel_traces_trace_id_ts records for them
# (whole seconds of span starts, hence the margins), as the /api/v1 trace lookup does.
TRACES_SPANS_SQL = f"""
{TRACES_WINDOW_CTE}SELECT TraceId AS trace_id,
       SpanId AS span_id,
       ParentSpanId AS parent_span_id,
       SpanName AS name,
       {SPAN_KIND} AS kind,
       ServiceName AS service,
       intDiv(toUnixTimestamp64Nano(Timestamp), 1000) AS start_us,
       intDiv(Duration, 1000) AS duration_us,
       {STATUS} AS status,
       StatusMessage AS status_message,
       SpanAttributes AS attributes,
       ResourceAttributes AS resource_attributes,
       ScopeName AS scope_name,
       ScopeVersion AS scope_version,
       arrayMap(t -> intDiv(toUnixTimestamp64Nano(t), 1000), Events.Timestamp) AS event_times,
       Events.Name AS event_names,
       Events.Attributes AS event_attributes,
       Links.TraceId AS link_trace_ids,
       Links.SpanId AS link_span_ids
FROM otel_traces
WHERE TraceId IN {{trace_ids:Array(String)}}
{TRACES_IN_WINDOW}
ORDER BY Timestamp, SpanId
LIMIT {SEARCH_SPANS_LIMIT}
"""

# Calls between services: a client (or producer) span of one service whose child is a server
# (or consumer) span of another, both starting in the window.
DEPENDENCIES_SQL = f"""
SELECT caller.ServiceName AS parent, callee.ServiceName AS child, count() AS callCount
FROM (
    SELECT TraceId, ParentSpanId, ServiceName
    FROM otel_traces
    WHERE Timestamp >= fromUnixTimestamp64Milli({{start_ms:Int64}})
      AND Timestamp < fromUnixTimestamp64Milli({{end_ms:Int64}})
      AND ParentSpanId != ''
      AND {SPAN_KIND} IN ('server', 'consumer')
) AS callee
INNER JOIN (
    SELECT TraceId, SpanId, ServiceName
    FROM otel_traces
    WHERE Timestamp >= fromUnixTimestamp64Milli({{start_ms:Int64}})
      AND Timestamp < fromUnixTimestamp64Milli({{end_ms:Int64}})
      AND {SPAN_KIND} IN ('client', 'producer')
) AS caller
ON callee.TraceId = caller.TraceId AND callee.ParentSpanId = caller.SpanId
WHERE caller.ServiceName != callee.ServiceName
GROUP BY parent, child
ORDER BY parent, child
"""


class JaegerError(ValueError):
    """A request Jaeger would refuse: answered with ``status`` and Jaeger's error envelope."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def envelope(data: Any, total: int | None = None) -> JSONResponse:
    """Jaeger's success envelope; ``total`` defaults to the number of items in ``data``."""
    count = total if total is not None else (len(data) if isinstance(data, list) else 0)
    return JSONResponse({"data": data, "total": count, "limit": 0, "offset": 0, "errors": None})


def error_response(error: JaegerError) -> JSONResponse:
    return JSONResponse(
        {
            "data": None,
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{"code": error.status, "msg": str(error)}],
        },
        status_code=error.status,
    )


# -- parameters ------------------------------------------------------------------------------

_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    # Go accepts both micro signs (U+00B5 and U+03BC).
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h|d)")


def parse_duration_ns(parameter: str, value: str, days: bool = False) -> int:
    """A Go duration (``1h2m``, ``1.5s``, ``100ms``, ``5us``, ``0``) in nanoseconds; ``days``
    also allows ``d`` (Jaeger UI lookbacks such as ``2d``). JaegerError when malformed."""
    text = value.strip()
    if text == "0":
        return 0
    position, total = 0, 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None or (match.group(2) == "d" and not days):
            raise JaegerError(
                f"unable to parse param '{parameter}': {value!r} is not a duration "
                "(examples: 1.2s, 100ms, 5us, 1h30m)"
            )
        unit = 86_400_000_000_000 if match.group(2) == "d" else _DURATION_UNITS_NS[match.group(2)]
        total += float(match.group(1)) * unit
        position = match.end()
    if position == 0:
        raise JaegerError(f"unable to parse param '{parameter}': empty duration")
    return round(total)


def parse_micros(parameter: str, value: str) -> int:
    """Microseconds since the epoch, in nanoseconds. JaegerError when not an integer."""
    try:
        micros = int(value.strip())
    except ValueError as exc:
        raise JaegerError(
            f"unable to parse param '{parameter}': {value!r} is not microseconds since the epoch"
        ) from exc
    if not 0 <= micros < 2**62 // 1000:
        raise JaegerError(f"unable to parse param '{parameter}': {value!r} is out of range")
    return micros * 1000


def parse_tags(value: str) -> dict[str, str]:
    """Search tags: a JSON object of strings (``{"error":"true"}``, what the Jaeger UI and
    Grafana send) or logfmt (``error=true http.status_code=500``, quotes allowed)."""
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JaegerError(f"malformed 'tags' parameter: {exc}") from exc
        if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
            raise JaegerError("malformed 'tags' parameter: values must be strings")
        return dict(parsed)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise JaegerError(f"malformed 'tags' parameter: {exc}") from exc
    tags: dict[str, str] = {}
    for word in words:
        key, sep, tag_value = word.partition("=")
        if not sep or not key:
            raise JaegerError(f"malformed 'tags' parameter: {word!r} is not key=value")
        tags[key] = tag_value
    return tags


def parse_kind(value: str | None) -> str:
    """A Jaeger span kind filter (``server`` … ``internal``, any case); '' for none."""
    text = (value or "").strip().lower()
    if text and text not in _KINDS:
        raise JaegerError(f"unsupported 'spanKind' {value!r}: use one of {', '.join(_KINDS)}")
    return text


@dataclass
class SearchQuery:
    """The parameters of ``FIND_TRACE_IDS_SQL`` (shared with ``/api/v1/traces``), from a
    Jaeger search request."""

    start_ns: int
    end_ns: int
    service: str = ""
    operation: str = ""
    min_duration_ns: int = 0
    max_duration_ns: int = _UINT64_MAX
    status: str = ""
    kind: str = ""
    limit: int = DEFAULT_LIMIT
    attributes: dict[str, str] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        return {
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "service": self.service,
            "operation": self.operation,
            "min_duration_ns": self.min_duration_ns,
            "max_duration_ns": self.max_duration_ns,
            "status": self.status,
            "kind": self.kind,
            "limit": self.limit,
            "attr_keys": list(self.attributes),
            "attr_values": list(self.attributes.values()),
        }


def search_query(
    *,
    service: str | None,
    operation: str | None,
    tags: str | None,
    min_duration: str | None,
    max_duration: str | None,
    start: str | None,
    end: str | None,
    limit: str | None,
    lookback: str | None,
    now_ns: int | None = None,
) -> SearchQuery:
    """Validate a search request. ``end`` defaults to now and ``start`` to ``end`` minus
    ``lookback`` (a duration; default 1h). The tags ``error``, ``span.kind`` and
    ``otel.status_code`` select the span status and kind; others are attribute equalities."""
    end_ns = parse_micros("end", end) if end else (now_ns or time.time_ns())
    if start:
        start_ns = parse_micros("start", start)
    else:
        back = DEFAULT_LOOKBACK_NS
        if lookback and lookback != "custom":
            back = parse_duration_ns("lookback", lookback, days=True)
        start_ns = end_ns - back
    if start_ns > end_ns:
        raise JaegerError("unable to parse param 'start': start is after end")
    if end_ns - start_ns > _MAX_RANGE_NS:
        raise JaegerError(f"unable to parse param 'start': at most {MAX_RANGE.days} days")
    # The end is inclusive of its whole microsecond (span starts keep nanoseconds).
    query = SearchQuery(start_ns=start_ns, end_ns=end_ns + 1000)
    query.service = service or ""
    query.operation = operation or ""
    if min_duration:
        query.min_duration_ns = parse_duration_ns("minDuration", min_duration)
    if max_duration:
        query.max_duration_ns = parse_duration_ns("maxDuration", max_duration)
    if query.min_duration_ns > query.max_duration_ns:
        raise JaegerError("'maxDuration' must be greater than or equal to 'minDuration'")
    if limit:
        try:
            query.limit = int(limit)
        except ValueError as exc:
            raise JaegerError(f"unable to parse param 'limit': {limit!r}") from exc
        if query.limit < 0:
            raise JaegerError(f"unable to parse param 'limit': {limit!r} is negative")
        query.limit = min(query.limit or DEFAULT_LIMIT, MAX_LIMIT)
    for key, value in parse_tags(tags or "").items():
        if key == "error" and value.lower() == "true":
            query.status = "error"
        elif key == "otel.status_code" and value.upper() in ("ERROR", "OK", "UNSET"):
            query.status = value.lower()
        elif key == "span.kind" and value.lower() in _KINDS:
            query.kind = value.lower()
        else:
            query.attributes[key] = value
    return query


def normalise_trace_id(value: str) -> str:
    """32 lower-case hex characters (Jaeger may drop leading zeros). JaegerError if not hex."""
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,32}", text):
        raise JaegerError(f"malformed parameter 'traceID': {value!r} is not a hex trace id")
    return text.rjust(32, "0")


# -- traces ----------------------------------------------------------------------------------


def _string_tags(attributes: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"key": key, "type": "string", "value": value} for key, value in attributes.items()]


def _span_tags(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    tags = _string_tags(row["attributes"])
    if row["kind"] != "unspecified":
        tags.append({"key": "span.kind", "type": "string", "value": row["kind"]})
    if row["status"] != "unset":
        tags.append({"key": "otel.status_code", "type": "string", "value": row["status"].upper()})
    if row["status_message"]:
        tags.append(
            {"key": "otel.status_description", "type": "string", "value": row["status_message"]}
        )
    if row["status"] == "error":
        tags.append({"key": "error", "type": "bool", "value": True})
    if row["scope_name"]:
        tags.append({"key": "otel.scope.name", "type": "string", "value": row["scope_name"]})
    if row["scope_version"]:
        tags.append({"key": "otel.scope.version", "type": "string", "value": row["scope_version"]})
    return tags


def _jaeger_span(row: Mapping[str, Any], process_id: str) -> dict[str, Any]:
    references = []
    if row["parent_span_id"]:
        references.append(
            {"refType": "CHILD_OF", "traceID": row["trace_id"], "spanID": row["parent_span_id"]}
        )
    references.extend(
        {"refType": "FOLLOWS_FROM", "traceID": trace_id, "spanID": span_id}
        for trace_id, span_id in zip(row["link_trace_ids"], row["link_span_ids"], strict=True)
    )
    logs = [
        {
            "timestamp": int(timestamp),
            "fields": [
                {"key": "event", "type": "string", "value": name},
                *_string_tags(attributes),
            ],
        }
        for timestamp, name, attributes in zip(
            row["event_times"], row["event_names"], row["event_attributes"], strict=True
        )
    ]
    return {
        "traceID": row["trace_id"],
        "spanID": row["span_id"],
        "operationName": row["name"],
        "references": references,
        "startTime": int(row["start_us"]),
        "duration": int(row["duration_us"]),
        "tags": _span_tags(row),
        "logs": logs,
        "processID": process_id,
        "warnings": None,
        "flags": 0,
    }


def jaeger_traces(rows: Iterable[Mapping[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Jaeger traces from span rows (in start order), in the order of ``order``'s ids; a
    process per distinct service and resource, numbered ``p1``, ``p2``… per trace."""
    traces: dict[str, dict[str, Any]] = {}
    process_ids: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], str]] = {}
    for row in rows:
        trace_id = row["trace_id"]
        trace = traces.setdefault(
            trace_id, {"traceID": trace_id, "spans": [], "processes": {}, "warnings": None}
        )
        resource = tuple(
            (key, value)
            for key, value in row["resource_attributes"].items()
            if key != "service.name"
        )
        known = process_ids.setdefault(trace_id, {})
        key = (row["service"], resource)
        if key not in known:
            known[key] = f"p{len(known) + 1}"
            trace["processes"][known[key]] = {
                "serviceName": row["service"],
                "tags": _string_tags(dict(resource)),
            }
        trace["spans"].append(_jaeger_span(row, known[key]))
    return [traces[trace_id] for trace_id in order if trace_id in traces]


class _JaegerReader:
    """The queries behind the endpoints, bound to one ClickHouse client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def services(self) -> list[str]:
        start = int(time.time()) - CATALOGUE_WINDOW_S
        rows = self._client.query(SERVICES_SQL, parameters={"start": start}).result_rows
        return [row[0] for row in rows]

    def operations(self, service: str, kind: str) -> list[tuple[str, str]]:
        parameters = {
            "service": service,
            "kind": kind,
            "start": int(time.time()) - CATALOGUE_WINDOW_S,
        }
        rows = self._client.query(OPERATIONS_SQL, parameters=parameters).result_rows
        return [(row[0], row[1]) for row in rows]

    def traces(self, trace_ids: list[str]) -> list[dict[str, Any]]:
        if not trace_ids:
            return []
        rows = self._client.query(
            TRACES_SPANS_SQL, parameters={"trace_ids": trace_ids}
        ).named_results()
        return jaeger_traces(rows, trace_ids)

    def search(self, query: SearchQuery) -> list[dict[str, Any]]:
        return self.traces(find_trace_ids(self._client, query.parameters()))

    def dependencies(self, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        parameters = {"start_ms": start_ms, "end_ms": end_ms}
        rows = self._client.query(DEPENDENCIES_SQL, parameters=parameters).named_results()
        return [
            {"parent": row["parent"], "child": row["child"], "callCount": int(row["callCount"])}
            for row in rows
        ]


def _int_ms(parameter: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError as exc:
        raise JaegerError(f"unable to parse param '{parameter}': {value!r} is not ms") from exc


def router(client: Any) -> APIRouter:
    """The Jaeger query API, bound to a ClickHouse client."""
    api = APIRouter(prefix="/jaeger/api", tags=["jaeger"])
    reader = _JaegerReader(client)

    @api.get("/services")
    def services() -> JSONResponse:
        """Service names seen in the last 24 hours, sorted (from the ``otel_red_1m`` rollup)."""
        return envelope(reader.services())

    @api.get("/services/{service}/operations")
    def service_operations(service: str) -> JSONResponse:
        """The distinct operation (span) names of a service in the last 24 hours."""
        names = sorted({name for name, _ in reader.operations(service, "")})
        return envelope(names)

    @api.get("/operations")
    def operations(
        service: Annotated[str, Query(description="service name")] = "",
        span_kind: Annotated[
            str | None, Query(alias="spanKind", description="server, client, producer, …")
        ] = None,
    ) -> JSONResponse:
        """A service's operations with their span kind (``""`` when unspecified)."""
        try:
            kind = parse_kind(span_kind)
        except JaegerError as error:
            return error_response(error)
        if not service:
            return error_response(JaegerError("parameter 'service' is required"))
        data = [
            {"name": name, "spanKind": "" if op_kind == "unspecified" else op_kind}
            for name, op_kind in reader.operations(service, kind)
        ]
        return envelope(data)

    @api.get("/traces/{trace_id}")
    def get_trace(trace_id: str) -> JSONResponse:
        """One trace by id (hex, leading zeros optional); 404 in Jaeger's envelope if unknown."""
        try:
            traces = reader.traces([normalise_trace_id(trace_id)])
            if not traces:
                raise JaegerError("trace not found", status=404)
        except JaegerError as error:
            return error_response(error)
        return envelope(traces)

    @api.get("/traces")
    def find_traces(
        service: str | None = None,
        operation: str | None = None,
        tags: Annotated[str | None, Query(description='JSON {"k":"v"} or logfmt k=v')] = None,
        min_duration: Annotated[str | None, Query(alias="minDuration")] = None,
        max_duration: Annotated[str | None, Query(alias="maxDuration")] = None,
        start: Annotated[str | None, Query(description="µs since the epoch")] = None,
        end: Annotated[str | None, Query(description="µs since the epoch")] = None,
        limit: str | None = None,
        lookback: Annotated[str | None, Query(description="duration, e.g. 1h, 2d")] = None,
    ) -> JSONResponse:
        """Traces with a span in the time range matching every filter (service, operation,
        duration bounds and tags on the same span, as in Jaeger), newest first, whole."""
        try:
            query = search_query(
                service=service,
                operation=operation,
                tags=tags,
                min_duration=min_duration,
                max_duration=max_duration,
                start=start,
                end=end,
                limit=limit,
                lookback=lookback,
            )
        except JaegerError as error:
            return error_response(error)
        return envelope(reader.search(query))

    @api.get("/dependencies")
    def dependencies(
        end_ts: Annotated[str | None, Query(alias="endTs", description="ms since epoch")] = None,
        lookback: Annotated[str | None, Query(description="ms; default 24 h")] = None,
    ) -> JSONResponse:
        """Calls between services (client span of one, server span of another as its child)
        that started within ``lookback`` ms before ``endTs``."""
        try:
            end_ms = _int_ms("endTs", end_ts) if end_ts else time.time_ns() // 1_000_000
            back = _int_ms("lookback", lookback) if lookback else DEFAULT_DEPENDENCIES_LOOKBACK_MS
            if not 0 < back <= MAX_RANGE // dt.timedelta(milliseconds=1):
                raise JaegerError(f"'lookback' must be within 1 ms and {MAX_RANGE.days} days")
        except JaegerError as error:
            return error_response(error)
        return envelope(reader.dependencies(end_ms - back, end_ms))

    return api
