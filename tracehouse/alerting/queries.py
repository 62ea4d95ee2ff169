"""A rule's query: the value per label set at one moment, read from the rollups.

- ``latency``, ``error_rate``, ``call_rate`` of services and operations: ``otel_red_1m``
  (t-digest states merged with ``quantileTDigestMerge``); of edges: ``otel_edges_1m``, each
  minute as of its latest recomputation (FINAL and the latest ``Version``, as the topology
  API reads it), latency as the caller saw it.
- ``sql_latency``, ``sql_slow_calls``: ``otel_db_1m`` per SQL fingerprint.
- ``log_count``: ``otel_logs`` rows in the window matching the filters.
- ``metric``: an OTLP metric's series (``otel_metrics_*``), grouped and reduced over the
  window as ``/api/v1/metrics/query`` does with one step as long as the window.
- ``sql``: the rule's own ClickHouse query (experts): one numeric ``value`` column, every
  other column a label; ``{start:DateTime64(3)}``, ``{end:DateTime64(3)}`` and
  ``{window_s:Float64}`` are bound.
- ``insight``: the number of insight events (``tracehouse_insights``, read through
  :func:`tracehouse.diagnosis.insights.insight_events`) detected in the window, per label set.

The window ends ``evaluation_delay`` before now (late data) and is ``window`` long. Rollups
are read by whole minutes: every minute the window overlaps.

Column expressions come from fixed tables below (the label a rule names selects one); every
value is a query parameter.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any, cast

from tracehouse.alerting.evaluator import QueryResult, Sample
from tracehouse.alerting.rules import Rule
from tracehouse.diagnosis.insights import (
    Insight,
    InsightEvent,
    InsightKind,
    get_insight,
    insight_events,
)
from tracehouse.query.metrics import SeriesQuery, query_series
from tracehouse.query.params import TimeRange

_MINUTE = 60

# label -> column expression, per source table.
_RED_LABELS = {"service": "ServiceName", "operation": "SpanName", "span_kind": "Kind"}
_EDGE_LABELS = {"source": "Source", "target": "Target", "type": "ConnectionType"}
_DB_LABELS = {
    "service": "ServiceName",
    "db_system": "DbSystem",
    "db_namespace": "DbNamespace",
    "fingerprint": "lower(hex(Fingerprint))",
}
_LOG_LABELS = {"service": "ServiceName", "severity": "SeverityText"}

_ENTRY_KINDS = ["server", "consumer"]
_ALL_KINDS = ["server", "client", "producer", "consumer", "internal", "unspecified"]

# Value expressions by kind (for red and edges; {q:Float64} is the rule's quantile).
_RED_VALUES = {
    "latency": "quantileTDigestMerge({q:Float64})(DurationQuantiles) / 1e6",
    "error_rate": "if(sum(Calls) > 0, sum(Errors) / sum(Calls), NULL)",
    "call_rate": "sum(Calls) / {seconds:Float64}",
}
_EDGE_VALUES = {
    "latency": "quantileTDigestMerge({q:Float64})(ClientLatency) / 1e6",
    "error_rate": "if(sum(Calls) > 0, sum(Errors) / sum(Calls), NULL)",
    "call_rate": "sum(Calls) / {seconds:Float64}",
}
_DB_VALUES = {
    "sql_latency": "quantileTDigestMerge({q:Float64})(DurationQuantiles) / 1e6",
    "sql_slow_calls": "toFloat64(sum(SlowCalls))",
}

RED_SQL = """
SELECT {labels} {value} AS value, toUInt64(sum(Calls)) AS calls, [] AS exemplars
FROM otel_red_1m
WHERE Minute >= fromUnixTimestamp({start:Int64}) AND Minute < fromUnixTimestamp({end:Int64})
  AND has({kinds:Array(String)}, Kind) {where}
{group}
HAVING calls >= {min_calls:UInt64}
"""

EDGES_SQL = """
SELECT {labels} {value} AS value, toUInt64(sum(Calls)) AS calls, [] AS exemplars
FROM (
    SELECT Minute, Source, Target, ConnectionType, Calls, Errors, ClientLatency, Version,
           max(Version) OVER (PARTITION BY Minute) AS LatestVersion
    FROM otel_edges_1m FINAL
    WHERE Minute >= fromUnixTimestamp({start:Int64}) AND Minute < fromUnixTimestamp({end:Int64})
)
WHERE Version = LatestVersion {where}
{group}
HAVING calls >= {min_calls:UInt64}
"""

DB_SQL = """
SELECT {labels} {value} AS value, toUInt64(sum(Calls)) AS calls,
       groupUniqArrayMerge(5)(ExemplarTraceIds) AS exemplars
FROM otel_db_1m
WHERE Minute >= fromUnixTimestamp({start:Int64}) AND Minute < fromUnixTimestamp({end:Int64})
  {where}
{group}
HAVING calls >= {min_calls:UInt64}
"""

LOGS_SQL = """
SELECT {labels} toFloat64(count()) AS value, count() AS calls,
       groupUniqArrayIf(3)(TraceId, TraceId != '') AS exemplars
FROM otel_logs
WHERE Timestamp >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND Timestamp < fromUnixTimestamp64Milli({end_ms:Int64}) {where}
{group}
"""

# The slowest traces of a service in the window: exemplars for a firing latency alert.
EXEMPLARS_SQL = """
SELECT TraceId
FROM otel_traces
WHERE ServiceName = {service:String}
  AND Timestamp >= fromUnixTimestamp64Milli({start_ms:Int64})
  AND Timestamp < fromUnixTimestamp64Milli({end_ms:Int64})
ORDER BY Duration DESC
LIMIT 3
"""

_EXPERT_START = re.compile(r"^\s*(SELECT|WITH)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    """The evaluated time range ``[start, end)`` of one evaluation."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def of(cls, rule: Rule, now: dt.datetime) -> Window:
        end = now - dt.timedelta(seconds=rule.evaluation_delay)
        return cls(end - dt.timedelta(seconds=rule.window), end)

    def minutes(self, now: dt.datetime) -> dict[str, Any]:
        """Whole minutes overlapped, and the seconds a rate is over (up to now)."""
        start = math.floor(self.start.timestamp() / _MINUTE) * _MINUTE
        end = math.ceil(self.end.timestamp() / _MINUTE) * _MINUTE
        if end == start:
            end += _MINUTE
        covered = min(end, now.timestamp()) - start
        return {"start": start, "end": end, "seconds": float(max(covered, 1.0))}


def _clauses(rule: Rule, columns: dict[str, str], params: dict[str, Any]) -> dict[str, str]:
    where = []
    for i, (label, value) in enumerate(sorted(rule.filters.items())):
        if label == "span_kind":
            continue  # selects kinds, below
        params[f"f{i}"] = value
        where.append(f"AND {columns[label]} = {{f{i}:String}}")
    labels = [f"{columns[label]} AS `{label}`," for label in rule.group_by]
    group = "GROUP BY " + ", ".join(f"`{label}`" for label in rule.group_by)
    return {
        "labels": " ".join(labels),
        "where": " ".join(where),
        "group": group if rule.group_by else "",
    }


def _kinds(rule: Rule) -> list[str]:
    chosen = rule.filters.get("span_kind", rule.span_kind)
    if chosen == "entry":
        return _ENTRY_KINDS
    if chosen == "all":
        return _ALL_KINDS
    return [chosen]


def build(rule: Rule, now: dt.datetime) -> tuple[str, dict[str, Any]]:
    """The SQL and parameters of ``rule`` evaluated at ``now``."""
    window = Window.of(rule, now)
    if rule.kind == "sql":
        assert rule.query is not None
        if not _EXPERT_START.match(rule.query) or ";" in rule.query.strip().rstrip(";"):
            raise ValueError("query: one SELECT (or WITH … SELECT) statement")
        return rule.query, {
            "start": window.start.replace(tzinfo=None),
            "end": window.end.replace(tzinfo=None),
            "window_s": rule.window,
        }
    # At least one call: a series without calls has no value (no data).
    params: dict[str, Any] = {"min_calls": max(rule.min_calls, 1), "q": rule.quantile}
    if rule.kind == "log_count":
        params.update(
            start_ms=int(window.start.timestamp() * 1000), end_ms=int(window.end.timestamp() * 1000)
        )
        clauses = _clauses(
            rule.model_copy(
                update={"filters": {k: v for k, v in rule.filters.items() if k in _LOG_LABELS}}
            ),
            _LOG_LABELS,
            params,
        )
        extra = []
        if "min_severity_number" in rule.filters:
            params["min_sev"] = int(rule.filters["min_severity_number"])
            extra.append("AND SeverityNumber >= {min_sev:UInt8}")
        if "body_contains" in rule.filters:
            params["body"] = rule.filters["body_contains"]
            extra.append("AND positionCaseInsensitiveUTF8(Body, {body:String}) > 0")
        clauses["where"] = " ".join([clauses["where"], *extra])
        return LOGS_SQL.replace("{labels}", clauses["labels"]).replace(
            "{where}", clauses["where"]
        ).replace("{group}", clauses["group"]), params
    params.update(window.minutes(now))
    if rule.kind in _DB_VALUES:
        template, columns, value = DB_SQL, _DB_LABELS, _DB_VALUES[rule.kind]
    elif rule.scope == "edge":
        template, columns, value = EDGES_SQL, _EDGE_LABELS, _EDGE_VALUES[rule.kind]
    else:
        template, columns, value = RED_SQL, _RED_LABELS, _RED_VALUES[rule.kind]
        params["kinds"] = _kinds(rule)
    clauses = _clauses(rule, columns, params)
    sql = (
        template.replace("{labels}", clauses["labels"])
        .replace("{value}", value)
        .replace("{where}", clauses["where"])
        .replace("{group}", clauses["group"])
    )
    return sql, params


def _run_metric(client: Any, rule: Rule, now: dt.datetime) -> QueryResult:
    """A ``metric`` rule: each group's value over the window (its last step)."""
    assert rule.metric is not None
    window = Window.of(rule, now)
    request = SeriesQuery(
        name=rule.metric,
        agg=rule.agg,
        window=TimeRange(window.start, window.end),
        step_s=max(1, math.ceil(rule.window)),
        group_by=tuple(rule.group_by),
        filters=tuple(sorted(rule.filters.items())),
    )
    try:
        result = query_series(client, request)
    except Exception as exc:  # one failing rule never stops the others
        return QueryResult(error=f"{type(exc).__name__}: {str(exc)[:500]}")
    samples = [
        Sample(dict(series["labels"]), float(series["points"][-1][1]), ())
        for series in result["series"]
        if series["points"]
    ]
    return QueryResult(tuple(samples))


def _insight_events(client: Any, rule: Rule, now: dt.datetime) -> list[InsightEvent]:
    """The insight events of the rule's window that pass its filters."""
    window = Window.of(rule, now)
    kind = cast(InsightKind | None, rule.filters.get("insight_kind"))
    found = insight_events(client, window.start, window.end, rule.filters.get("service"), kind)
    operation = rule.filters.get("operation")
    min_ratio = float(rule.filters.get("min_ratio", "0"))
    return [
        e for e in found if (operation is None or e.operation == operation) and e.ratio >= min_ratio
    ]


def insight_labels(rule: Rule, event: InsightEvent) -> dict[str, str]:
    """The labels of the alert an insight event counts for (an empty ``operation``, the
    service as a whole, is no label)."""
    values = {"service": event.service, "operation": event.operation, "insight_kind": event.kind}
    return {label: values[label] for label in rule.group_by if values[label]}


def _run_insight(client: Any, rule: Rule, now: dt.datetime) -> QueryResult:
    """An ``insight`` rule: per label set, the number of matching insights in the window."""
    try:
        events = _insight_events(client, rule, now)
    except Exception as exc:  # one failing rule never stops the others
        return QueryResult(error=f"{type(exc).__name__}: {str(exc)[:500]}")
    counts: dict[tuple[tuple[str, str], ...], int] = {}
    for event in events:
        key = tuple(sorted(insight_labels(rule, event).items()))
        counts[key] = counts.get(key, 0) + 1
    return QueryResult(tuple(Sample(dict(k), float(n)) for k, n in sorted(counts.items())))


def insight_for(
    client: Any, rule: Rule, labels: dict[str, str], now: dt.datetime
) -> Insight | None:
    """The insight an alert of an ``insight`` rule is about: among the window's matching
    events with the alert's labels, the newest; at equal times the service as a whole before
    an endpoint, a diagnosed one first, then the larger rise. None if there is none."""
    wanted = {k: labels.get(k, "") for k in rule.group_by}
    events = [
        e
        for e in _insight_events(client, rule, now)
        if {k: insight_labels(rule, e).get(k, "") for k in rule.group_by} == wanted
    ]
    if not events:
        return None
    best = max(events, key=lambda e: (e.detected_at, not e.operation, e.diagnosed, e.ratio))
    return get_insight(client, best.id)


def run(client: Any, rule: Rule, now: dt.datetime) -> QueryResult:
    """The rule's query result at ``now``; an error (bad SQL, ClickHouse down) is returned,
    not raised, so the other rules go on."""
    if rule.kind == "metric":
        return _run_metric(client, rule, now)
    if rule.kind == "insight":
        return _run_insight(client, rule, now)
    try:
        sql, params = build(rule, now)
        result = client.query(sql, parameters=params)
    except Exception as exc:  # one failing rule never stops the others
        return QueryResult(error=f"{type(exc).__name__}: {str(exc)[:500]}")
    names = list(result.column_names)
    samples = []
    for row in result.result_rows:
        record = dict(zip(names, row, strict=True))
        if "value" not in record:
            return QueryResult(error="query: the result has no column named value")
        raw = record.pop("value")
        record.pop("calls", None)
        exemplars = tuple(str(t) for t in record.pop("exemplars", None) or ())
        try:
            value = None if raw is None else float(raw)
        except (TypeError, ValueError):
            return QueryResult(error=f"query: value {raw!r} is not a number")
        if value is not None and (math.isnan(value) or math.isinf(value)):
            value = None
        labels = {k: str(v) for k, v in record.items()}
        samples.append(Sample(labels, value, exemplars))
    return QueryResult(tuple(samples))


def exemplars(client: Any, rule: Rule, labels: dict[str, str], now: dt.datetime) -> list[str]:
    """Trace ids of the slowest spans of the alert's service in the window (empty when the
    alert has no service label)."""
    service = labels.get("service") or rule.filters.get("service")
    if not service or rule.kind not in ("latency", "error_rate", "call_rate"):
        return []
    window = Window.of(rule, now)
    rows = client.query(
        EXEMPLARS_SQL,
        parameters={
            "service": service,
            "start_ms": int(window.start.timestamp() * 1000),
            "end_ms": int(window.end.timestamp() * 1000),
        },
    ).result_rows
    return [str(r[0]) for r in rows]


# The KEDA metrics-api pull endpoint: one service's entry spans over a window.
SCALING_METRIC_SQL = """
SELECT
    quantileTDigestMerge(0.99)(DurationQuantiles) / 1e6 AS p99,
    sum(Calls) AS calls,
    sum(Errors) AS errors
FROM otel_red_1m
WHERE ServiceName = {service:String}
  AND Minute >= fromUnixTimestamp({start:Int64}) AND Minute < fromUnixTimestamp({end:Int64})
  AND has({kinds:Array(String)}, Kind)
"""


def scaling_metric(
    client: Any, service: str, metric: str, window_s: float, now: dt.datetime
) -> float:
    """p99 (ms), rps or error_rate of a service's entry spans over the last ``window_s``
    (0 when there were no calls)."""
    window = Window(now - dt.timedelta(seconds=window_s), now)
    params: dict[str, Any] = {"service": service, "kinds": _ENTRY_KINDS, **window.minutes(now)}
    seconds = params.pop("seconds")
    p99, calls, errors = client.query(SCALING_METRIC_SQL, parameters=params).first_row
    calls = int(calls or 0)
    if metric == "p99":
        value = float(p99) if calls and p99 is not None else 0.0
        return 0.0 if math.isnan(value) else round(value, 3)
    if metric == "rps":
        return round(calls / float(seconds), 6)
    return round(int(errors or 0) / calls, 6) if calls else 0.0


_BATCHED_KINDS = ("latency", "error_rate", "call_rate", "sql_latency", "sql_slow_calls")


def _batch_key(rule: Rule) -> tuple[Any, ...] | None:
    """Rules with equal keys can share one query (None: the rule runs alone)."""
    if rule.kind not in _BATCHED_KINDS:
        return None
    labels = tuple(sorted({*rule.group_by, *(set(rule.filters) - {"span_kind"})}))
    return (
        rule.kind,
        rule.scope,
        rule.quantile,
        tuple(_kinds(rule)),
        rule.window,
        rule.evaluation_delay,
        rule.min_calls,
        labels,
    )


def run_many(client: Any, rules: list[Rule], now: dt.datetime) -> dict[str, QueryResult]:
    """The query results of many rules at ``now``, by rule name.

    Rollup rules of the same kind, window and quantile share one query grouped by every label
    they filter or group on; each rule then keeps the rows matching its filters, with its own
    labels. The values are the ones its own query would give (the same rows are aggregated),
    at one query per shape instead of one per rule."""
    out: dict[str, QueryResult] = {}
    batches: dict[tuple[Any, ...], list[Rule]] = {}
    for rule in rules:
        key = _batch_key(rule)
        if key is None:
            out[rule.name] = run(client, rule, now)
        else:
            batches.setdefault(key, []).append(rule)
    for key, members in batches.items():
        if len(members) == 1:
            out[members[0].name] = run(client, members[0], now)
            continue
        labels = list(key[-1])
        first = members[0]
        shared = first.model_copy(
            update={
                "filters": {"span_kind": k} if (k := first.filters.get("span_kind")) else {},
                "group_by": labels,
            }
        )
        result = run(client, shared, now)
        for rule in members:
            if result.error is not None:
                out[rule.name] = result
                continue
            wanted = {k: v for k, v in rule.filters.items() if k != "span_kind"}
            out[rule.name] = QueryResult(
                tuple(
                    Sample({k: s.labels[k] for k in rule.group_by}, s.value, s.exemplars)
                    for s in result.samples
                    if all(s.labels.get(k) == v for k, v in wanted.items())
                )
            )
    return out
