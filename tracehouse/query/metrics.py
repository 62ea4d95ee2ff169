"""OTLP metrics on the read side: ``GET /api/v1/metrics`` (what exists) and
``GET /api/v1/metrics/query`` (time series), over the Collector's ``otel_metrics_*`` tables.

A *series* is one (service, resource attributes, point attributes) combination of a metric;
``group_by`` keys fold series into groups, and each group yields one time series of ``step``
buckets. Labels (for ``group_by`` and ``filter``) are looked up in the point attributes first,
then the resource attributes; ``service.name`` is the ``ServiceName`` column.

How each aggregation reads each point type:

- gauge, and non-rate aggregations of sums: ``avg``/``max``/``min`` reduce each series within
  a bucket, then the group (``avg`` of series averages, ``max`` of maxima, …); ``sum`` adds the
  series' averages; ``p95``/``p99`` are exact quantiles of the group's points in the bucket.
- ``rate`` of a sum: the per-second increase. A cumulative series' increase between two points
  is ``value - previous``, or ``value`` itself after a counter reset (value went down or the
  start time changed); it is divided by the time between the points. A delta point's value
  is its increase over ``time - start``. Each series' rate in a bucket is its increases over
  its seconds there; the group's rate is the sum over its series.
- histograms (and exponential histograms): cumulative points become deltas the same way
  (reset: count went down, start time or bucket layout changed); a bucket's deltas are added
  per group, ``p95``/``p99`` interpolate linearly inside the bucket holding the rank (as
  Prometheus' ``histogram_quantile``; the overflow bucket reaches up to the largest ``Max``
  seen), ``avg`` is Δsum / Δcount, ``rate`` Δcount per second, ``sum`` Δsum, ``max``/``min``
  the points' ``Max``/``Min``.
- summaries: ``p95``/``p99`` read the reported quantile (the largest of the group's series:
  quantiles cannot be merged), ``avg`` Δsum / Δcount, ``rate`` Δcount per second.

The first point of each series in the window has no predecessor; points from up to
``LOOKBACK`` before ``start`` are read to provide one. A cumulative series whose first point
started (``StartTimeUnix``) within what was read counts that point's whole value since its
start; one that started earlier contributes from its second point on. Buckets where a group
has no points are absent (a gap), not zero.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from tracehouse.query.params import TimeRange, invalid, time_range

MetricType = Literal["gauge", "sum", "histogram", "exponential_histogram", "summary"]
Aggregation = Literal["avg", "max", "min", "sum", "rate", "p95", "p99"]
TYPES: tuple[MetricType, ...] = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
AGGREGATIONS: tuple[Aggregation, ...] = ("avg", "max", "min", "sum", "rate", "p95", "p99")
QUANTILES = {"p95": 0.95, "p99": 0.99}
LOOKBACK = dt.timedelta(minutes=15)
MAX_POINTS_PER_SERIES = 11_000
DEFAULT_POINTS = 360
MIN_STEP_S = 1

# --- SQL ---------------------------------------------------------------------------------------
# Templates fill in ``$name`` fragments (table names come from TYPES, never from a request);
# every value is a query parameter.


def _sql(template: str, **fragments: str) -> str:
    return Template(template).substitute(fragments)


_LABEL = (
    "if($k = 'service.name', ServiceName, "
    "if(mapContains(Attributes, $k), Attributes[$k], ResourceAttributes[$k]))"
)
_LABELS = _sql("arrayMap(k -> $label, {group_by:Array(String)})", label=_sql(_LABEL, k="k"))
_SERIES = (
    "cityHash64(ServiceName, mapKeys(ResourceAttributes), mapValues(ResourceAttributes), "
    "mapKeys(Attributes), mapValues(Attributes))"
)
# Buckets are aligned to the query's start: [start + k·step, start + (k+1)·step).
_BUCKET = (
    "{start_s:Int64} + intDiv(toInt64(toUnixTimestamp($ts)) - {start_s:Int64}, {step:UInt32})"
    " * {step:UInt32}"
)
_WHERE = _sql(
    """MetricName = {name:String}
  AND TimeUnix >= fromUnixTimestamp64Nano({from_ns:Int64})
  AND TimeUnix < fromUnixTimestamp64Nano({end_ns:Int64})
  AND (empty({filter_keys:Array(String)})
       OR arrayAll((k, v) -> $label = v,
                   {filter_keys:Array(String)}, {filter_values:Array(String)}))""",
    label=_sql(_LABEL, k="k"),
)
_IN_RANGE = "ts >= fromUnixTimestamp64Nano({start_ns:Int64})"
_FRAGMENTS = {
    "labels": _LABELS,
    "series": _SERIES,
    "where": _WHERE,
    "in_range": _IN_RANGE,
    "bucket_time": _sql(_BUCKET, ts="TimeUnix"),
    "bucket_ts": _sql(_BUCKET, ts="ts"),
    "since_start": "(toUnixTimestamp64Nano(ts) - toUnixTimestamp64Nano(start)) / 1e9",
    "since_prev": "(toUnixTimestamp64Nano(ts) - toUnixTimestamp64Nano(prev_ts)) / 1e9",
    "delta_span": "temporality = 1 AND start > toDateTime64(0, 9) AND start < ts",
    # A series' first point whose start is in the window read: its value is all it counted.
    "first_known": "n = 1 AND start >= fromUnixTimestamp64Nano({from_ns:Int64}) AND start < ts",
}

# Names, types, units and attribute keys of the metrics with points in the window.
_CATALOGUE_PART = """
SELECT MetricName AS name, '$kind' AS type, any(MetricUnit) AS unit,
       any(MetricDescription) AS description,
       arraySort(groupUniqArrayArray(mapKeys(Attributes))) AS attribute_keys,
       arraySort(groupUniqArrayArray(mapKeys(ResourceAttributes))) AS resource_keys,
       arraySort(groupUniqArray(ServiceName)) AS services,
       $monotonic AS monotonic, $temporality AS temporality
FROM otel_metrics_$kind
WHERE TimeUnix >= fromUnixTimestamp64Nano({start_ns:Int64})
  AND TimeUnix < fromUnixTimestamp64Nano({end_ns:Int64})
  AND ({service:String} = '' OR ServiceName = {service:String})
  AND ({prefix:String} = '' OR startsWith(MetricName, {prefix:String}))
GROUP BY MetricName"""
CATALOGUE_SQL = (
    "SELECT * FROM (\n"
    + "\nUNION ALL\n".join(
        _sql(
            _CATALOGUE_PART,
            kind=kind,
            monotonic="toInt8(any(IsMonotonic))" if kind == "sum" else "toInt8(-1)",
            temporality=(
                "any(AggregationTemporality)"
                if kind in ("sum", "histogram", "exponential_histogram")
                else "toInt32(0)"
            ),
        )
        for kind in TYPES
    )
    + "\n)\nORDER BY name, type\nLIMIT {limit:UInt32}"
)

# How many points of the metric each table holds in the window (a name normally has one type),
# and whether a sum is monotonic.
TYPE_SQL = "\nUNION ALL\n".join(
    _sql(
        "SELECT '$kind' AS type, count() AS points, $monotonic AS monotonic "
        "FROM otel_metrics_$kind WHERE $where",
        kind=kind,
        where=_WHERE,
        monotonic="toUInt8(max(IsMonotonic))" if kind == "sum" else "toUInt8(0)",
    )
    for kind in TYPES
)

# Gauge-like aggregations: reduce each series in a bucket, then the group.
_LEVEL_SQL = """
SELECT labels, bucket AS t, $outer(v) AS value
FROM (
    SELECT $labels AS labels, $series AS series,
           $bucket_time AS bucket, $inner(Value) AS v
    FROM otel_metrics_$kind
    WHERE $where AND TimeUnix >= fromUnixTimestamp64Nano({start_ns:Int64})
    GROUP BY labels, series, bucket
)
GROUP BY labels, bucket
ORDER BY labels, t
LIMIT {max_rows:UInt64}"""
_QUANTILE_SQL = """
SELECT $labels AS labels, $bucket_time AS t,
       quantileExact($level)(Value) AS value
FROM otel_metrics_$kind
WHERE $where AND TimeUnix >= fromUnixTimestamp64Nano({start_ns:Int64})
GROUP BY labels, t
ORDER BY labels, t
LIMIT {max_rows:UInt64}"""
_LEVEL_AGGREGATES = {"avg": ("avg", "avg"), "sum": ("avg", "sum"), "max": ("max", "max")}
_LEVEL_AGGREGATES["min"] = ("min", "min")
LEVEL_SQL = {
    (kind, agg): _sql(_LEVEL_SQL, kind=kind, inner=inner, outer=outer, **_FRAGMENTS)
    for kind in ("gauge", "sum")
    for agg, (inner, outer) in _LEVEL_AGGREGATES.items()
}
LEVEL_SQL.update(
    {
        (kind, agg): _sql(_QUANTILE_SQL, kind=kind, level=str(level), **_FRAGMENTS)
        for kind in ("gauge", "sum")
        for agg, level in QUANTILES.items()
    }
)

# One row per group, its points sorted by time: far fewer rows to decode than one per point.
# Buckets without a value (nan: no observations, no seconds) are left out here. $columns are
# either the two arrays Python zips (_AS_ARRAYS) or, for the endpoint, the group's ``Series``
# as JSON (_AS_JSON): encoding a thousand series of 360 points in ClickHouse instead of
# decoding them into Python and encoding them again saves 0.2-0.4 s per answer
# (docs/performance.md, Metrics).
_PER_GROUP = """
SELECT $columns
FROM (
    SELECT labels, arraySort(p -> p.1, groupArray((t, value))) AS points
    FROM ($$points)
    WHERE isFinite(value)
    GROUP BY labels
)
ORDER BY labels
LIMIT {max_series:UInt32}"""
_AS_ARRAYS = _sql(
    _PER_GROUP,
    columns="labels, arrayMap(p -> p.1, points) AS times, arrayMap(p -> p.2, points) AS values",
)
_AS_JSON = _sql(
    _PER_GROUP,
    columns="""concat(
        '{"labels":', toJSONString(mapFromArrays({group_by:Array(String)}, labels)),
        ',"points":', toJSONString(arrayMap(p -> (toUInt32(p.1), p.2), points)), '}')""",
)

# Each point with its predecessor in the same series (window functions over the series).
_WITH_PREVIOUS = """
    SELECT $labels AS labels, $series AS series, TimeUnix AS ts, StartTimeUnix AS start,
           $columns,
           row_number() OVER w AS n,
           lagInFrame(TimeUnix) OVER w AS prev_ts,
           lagInFrame(StartTimeUnix) OVER w AS prev_start,
           $previous
    FROM otel_metrics_$kind
    WHERE $where
    WINDOW w AS (PARTITION BY series ORDER BY TimeUnix
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"""


def _with_previous(kind: str, columns: str, previous: str) -> str:
    return _sql(_WITH_PREVIOUS, kind=kind, columns=columns, previous=previous, **_FRAGMENTS)


# rate of a sum: per series, increase / seconds in each bucket; summed over the group.
_RATE = """
SELECT labels, bucket AS t, sum(series_increase / series_seconds) AS value
FROM (
    SELECT labels, series, $bucket_ts AS bucket,
           sum(increase) AS series_increase, sum(seconds) AS series_seconds
    FROM (
        SELECT labels, series, ts,
            multiIf(temporality = 1 OR n = 1, Value,
                    start != prev_start OR (monotonic AND Value < prev), Value,
                    Value - prev) AS increase,
            if(($delta_span) OR n = 1, $since_start, $since_prev) AS seconds
        FROM ($points)
        WHERE $in_range AND (n > 1 OR ($delta_span) OR ($first_known))
    )
    WHERE seconds > 0
    GROUP BY labels, series, bucket
)
GROUP BY labels, bucket
ORDER BY labels, t
LIMIT {max_rows:UInt64}"""
RATE_SQL = _sql(
    _RATE,
    points=_with_previous(
        "sum",
        "Value, AggregationTemporality AS temporality, IsMonotonic AS monotonic",
        "lagInFrame(Value) OVER w AS prev",
    ),
    **_FRAGMENTS,
)

# Histogram deltas per point, added per group and bucket (one row per bucket layout).
_LAYOUTS = """
SELECT labels, bucket AS t, bounds,
       sumForEach(d_buckets) AS group_buckets, sum(d_count) AS group_count,
       sum(d_sum) AS group_sum, sum(seconds) AS group_seconds, max(Max) AS group_max,
       min(Min) AS group_min
FROM (
    SELECT labels, $bucket_ts AS bucket, bounds, Max, Min,
        if(fresh, arrayMap(b -> toInt64(b), BucketCounts),
           arrayMap((a, b) -> toInt64(a) - toInt64(b), BucketCounts, prev_buckets)) AS d_buckets,
        if(fresh, toInt64(Count), toInt64(Count) - toInt64(prev_count)) AS d_count,
        if(fresh, Sum, Sum - prev_sum) AS d_sum,
        if(($delta_span) OR ($first_known), $since_start, if(n > 1, $since_prev, 0)) AS seconds
    FROM (
        SELECT *,
            temporality = 1 OR n = 1 OR start != prev_start OR Count < prev_count
                OR bounds != prev_bounds OR length(BucketCounts) != length(prev_buckets) AS fresh
        FROM ($points)
        WHERE $in_range AND (n > 1 OR temporality = 1 OR ($first_known))
    )
)
GROUP BY labels, bucket, bounds"""
_HISTOGRAM_LAYOUTS = _sql(
    _LAYOUTS,
    points=_with_previous(
        "histogram",
        "BucketCounts, ExplicitBounds AS bounds, Count, Sum, Min, Max, "
        "AggregationTemporality AS temporality",
        "lagInFrame(BucketCounts) OVER w AS prev_buckets, "
        "lagInFrame(ExplicitBounds) OVER w AS prev_bounds, "
        "lagInFrame(Count) OVER w AS prev_count, lagInFrame(Sum) OVER w AS prev_sum",
    ),
    **_FRAGMENTS,
)

# The {level} quantile of one layout's summed bucket counts, as ``bucket_quantile`` computes
# it (Prometheus' histogram_quantile): negative deltas count as 0; the rank falls in the first
# bucket whose cumulative count reaches it; linear interpolation between the bucket's bounds
# (the first bucket starts at 0, or at its bound when negative; the overflow bucket ends at
# the largest Max seen, or the quantile is the last bound when Max does not pass it).
_BUCKET_QUANTILE = """
    arrayMap(c -> greatest(c, 0), group_buckets) AS cc,
    arraySum(cc) AS total,
    {level:Float64} * total AS rank,
    arrayCumSum(cc) AS cum,
    arrayFirstIndex((c, x) -> x > 0 AND c >= rank, cum, cc) AS i,
    length(bounds) AS m,
    i = m + 1 AS overflow,
    if(overflow, bounds[m], if(i > 1, bounds[i - 1], least(0., bounds[i]))) AS lower,
    if(overflow, group_max, bounds[i]) AS upper,
    multiIf(total <= 0 OR length(group_buckets) != m + 1 OR i = 0, nan,
            overflow AND NOT (m > 0 AND group_max > bounds[m]), if(m > 0, bounds[m], group_max),
            lower + (upper - lower) * (rank - toFloat64(cum[i] - cc[i])) / cc[i]) AS q"""

# Each group and bucket from its layouts' rows: quantiles from the layout holding the most
# observations (several layouts in one group are rare), the other aggregations add up.
_HISTOGRAM_SQL = """
SELECT labels, t, $value AS value
FROM (
    SELECT labels, t, group_count, group_sum, group_seconds, group_max, group_min,
           $quantile
    FROM ($layouts)
)
GROUP BY labels, t
ORDER BY labels, t
LIMIT {max_rows:UInt64}"""
_HISTOGRAM_VALUES: dict[Aggregation, str] = {
    "p95": "argMax(q, group_count)",
    "p99": "argMax(q, group_count)",
    "avg": "if(sum(group_count) > 0, sum(group_sum) / sum(group_count), nan)",
    "rate": "if(sum(group_seconds) > 0, sum(group_count) / sum(group_seconds), nan)",
    "sum": "sum(group_sum)",
    "max": "max(group_max)",
    "min": "min(group_min)",
}
HISTOGRAM_SQL = {
    agg: _sql(
        _HISTOGRAM_SQL,
        value=value,
        quantile=_BUCKET_QUANTILE if agg in QUANTILES else "0 AS q",
        layouts=_HISTOGRAM_LAYOUTS,
    )
    for agg, value in _HISTOGRAM_VALUES.items()
}

# Per (type, aggregation) answered in SQL, the points of each group and bucket (``labels``,
# ``t``, ``value``); wrapped as arrays per group (SERIES_SQL) or as JSON (JSON_SQL).
_POINTS_SQL: dict[tuple[str, str], str] = {
    **LEVEL_SQL,
    ("sum", "rate"): RATE_SQL,
    **{("histogram", agg): sql for agg, sql in HISTOGRAM_SQL.items()},
}
SERIES_SQL = {key: _sql(_AS_ARRAYS, points=sql) for key, sql in _POINTS_SQL.items()}
JSON_SQL = {key: _sql(_AS_JSON, points=sql) for key, sql in _POINTS_SQL.items()}

# Exponential histogram points of the window (deltas and merging are done in Python: bucket
# indexes shift with the offset and the scale).
EXPONENTIAL_SQL = _sql(
    """
SELECT $labels AS labels, $series AS series,
       $bucket_time AS t,
       toUnixTimestamp64Nano(TimeUnix) AS ts, toUnixTimestamp64Nano(StartTimeUnix) AS start,
       AggregationTemporality AS temporality, Count, Sum, Scale, ZeroCount,
       PositiveOffset, PositiveBucketCounts, NegativeOffset, NegativeBucketCounts, Min, Max,
       TimeUnix >= fromUnixTimestamp64Nano({start_ns:Int64}) AS in_range
FROM otel_metrics_exponential_histogram
WHERE $where
ORDER BY series, TimeUnix
LIMIT {max_rows:UInt64}""",
    **_FRAGMENTS,
)

# Summaries: Δcount, Δsum and the reported quantile per point.
SUMMARY_SQL = _sql(
    """
SELECT labels, bucket AS t, sum(d_count) AS group_count, sum(d_sum) AS group_sum,
       sum(seconds) AS group_seconds, max(q) AS group_quantile
FROM (
    SELECT labels, series, $bucket_ts AS bucket,
        if(fresh, toInt64(Count), toInt64(Count) - toInt64(prev_count)) AS d_count,
        if(fresh, Sum, Sum - prev_sum) AS d_sum,
        if(n > 1, $since_prev, $since_start) AS seconds,
        if(has(quantiles, {level:Float64}),
           values[indexOf(quantiles, {level:Float64})], nan) AS q
    FROM (
        SELECT *, n = 1 OR start != prev_start OR Count < prev_count AS fresh
        FROM ($points)
        WHERE $in_range AND (n > 1 OR ($first_known))
    )
)
GROUP BY labels, bucket
ORDER BY labels, t
LIMIT {max_rows:UInt64}""",
    points=_with_previous(
        "summary",
        "Count, Sum, ValueAtQuantiles.Quantile AS quantiles, ValueAtQuantiles.Value AS values",
        "lagInFrame(Count) OVER w AS prev_count, lagInFrame(Sum) OVER w AS prev_sum",
    ),
    **_FRAGMENTS,
)

# --- models ------------------------------------------------------------------------------------


class MetricInfo(BaseModel):
    """A metric with points in the window."""

    name: str
    type: MetricType
    unit: str
    description: str
    attributeKeys: list[str]
    resourceAttributeKeys: list[str]
    services: list[str]
    monotonic: bool | None = None
    temporality: Literal["delta", "cumulative"] | None = None


class MetricList(BaseModel):
    metrics: list[MetricInfo]


class Series(BaseModel):
    """One group's time series: ``points`` are ``[unix seconds of the bucket start, value]``."""

    labels: dict[str, str]
    points: list[tuple[int, float]]


class SeriesResult(BaseModel):
    name: str
    type: MetricType | None
    agg: Aggregation
    step: int
    start: int
    end: int
    series: list[Series]


@dataclass(frozen=True)
class SeriesQuery:
    """What ``query_series`` computes (validated by the endpoint or by its caller)."""

    name: str
    agg: Aggregation | None
    window: TimeRange
    step_s: int
    group_by: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()
    max_series: int = 1000
    parameters: dict[str, Any] = field(default_factory=dict, compare=False)


class MetricQueryError(ValueError):
    """The query cannot be answered as asked; ``parameter`` names the culprit."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


# --- computation -------------------------------------------------------------------------------


def default_aggregation(kind: MetricType, monotonic: bool) -> Aggregation:
    if kind == "sum":
        return "rate" if monotonic else "avg"
    if kind in ("histogram", "exponential_histogram", "summary"):
        return "p95"
    return "avg"


def query_series(client: Any, request: SeriesQuery) -> dict[str, Any]:
    """The time series of one metric, grouped and aggregated as ``request`` says (see the
    module docstring), shaped as ``SeriesResult`` (a plain dict: a thousand series of hundreds
    of points would spend seconds in model validation). Raises MetricQueryError when the
    aggregation does not apply."""
    return _with_series(client, request, *_plan(client, request))


def query_series_json(client: Any, request: SeriesQuery) -> str:
    """``query_series`` encoded as JSON; gauges, sums and histograms are encoded by
    ClickHouse."""
    result, params = _plan(client, request)
    sql = JSON_SQL.get((result["type"], result["agg"]))
    if sql is None:
        answer = _with_series(client, request, result, params)
        return json.dumps(answer, separators=(",", ":"), allow_nan=False)
    head = {key: value for key, value in result.items() if key != "series"}
    encoded = json.dumps(head, separators=(",", ":"), allow_nan=False)
    series = ",".join(row[0] for row in _rows(client, sql, params))
    return f'{encoded[:-1]},"series":[{series}]}}'


def _with_series(
    client: Any, request: SeriesQuery, result: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """``result`` of ``_plan`` with its ``series``."""
    kind, agg = result["type"], result["agg"]
    if kind is None:
        return result
    if (kind, agg) in SERIES_SQL:
        grouped = {
            tuple(labels): list(zip(times, values, strict=True))
            for labels, times, values in _rows(client, SERIES_SQL[(kind, agg)], params)
        }
    elif kind == "exponential_histogram":
        rows = _rows(client, EXPONENTIAL_SQL, params)
        grouped = _group(_exponential_values(rows, agg, params["from_ns"]))
    else:
        grouped = _group(_summary_values(_rows(client, SUMMARY_SQL, params), agg))
    keys = request.group_by
    result["series"] = [
        {"labels": dict(zip(keys, labels, strict=True)), "points": points}
        for labels, points in list(grouped.items())[: request.max_series]
    ]
    return result


def _plan(client: Any, request: SeriesQuery) -> tuple[dict[str, Any], dict[str, Any]]:
    """The answer without its series (``type`` None when the metric has no points) and the
    query parameters. Raises MetricQueryError when the aggregation does not apply."""
    window = request.window
    base: dict[str, Any] = {
        "name": request.name,
        "group_by": list(request.group_by),
        "filter_keys": [k for k, _ in request.filters],
        "filter_values": [v for _, v in request.filters],
        "start_ns": window.start_ns,
        "end_ns": window.end_ns,
        "from_ns": window.start_ns - int(LOOKBACK.total_seconds() * 1e9),
        "step": request.step_s,
        "start_s": int(window.start.timestamp()),
        "max_series": request.max_series,
    }
    points_per_series = math.ceil((window.end - window.start).total_seconds() / request.step_s)
    base["max_rows"] = max(1, request.max_series) * (points_per_series + 1)
    kind, monotonic = _metric_type(client, base)
    agg = request.agg or default_aggregation(kind or "gauge", monotonic)
    result: dict[str, Any] = {
        "name": request.name,
        "type": kind,
        "agg": agg,
        "step": request.step_s,
        "start": int(window.start.timestamp()),
        "end": int(window.end.timestamp()),
        "series": [],
    }
    if kind == "gauge" and agg == "rate":
        raise MetricQueryError(
            "agg", f"{request.name!r} is a gauge: rate applies to sums and histograms"
        )
    if kind == "summary" and agg in ("max", "min", "sum"):
        raise MetricQueryError("agg", f"{request.name!r} is a summary: use avg, rate, p95 or p99")
    return result, {**base, "level": QUANTILES.get(agg, 0.5)}


def _metric_type(client: Any, params: dict[str, Any]) -> tuple[MetricType | None, bool]:
    rows = _rows(client, TYPE_SQL, params)
    counts = {row[0]: (int(row[1]), bool(row[2])) for row in rows}
    present = [kind for kind in TYPES if counts.get(kind, (0, False))[0]]
    if not present:
        return None, False
    kind = max(present, key=lambda k: counts[k][0])
    return kind, counts[kind][1]


def _rows(client: Any, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, parameters=params).result_rows]


def _group(
    values: Iterable[tuple[Sequence[str], int, float | None]],
) -> dict[tuple[str, ...], list[tuple[int, float]]]:
    grouped: dict[tuple[str, ...], list[tuple[int, float]]] = defaultdict(list)
    for labels, t, value in values:
        key = tuple(labels)
        if value is None or not math.isfinite(value):
            grouped.setdefault(key, [])
            continue
        grouped[key].append((int(t), float(value)))
    for points in grouped.values():
        points.sort()
    return {k: v for k, v in grouped.items() if v}


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def bucket_quantile(
    q: float, bounds: list[float], counts: list[int], high: float | None = None
) -> float | None:
    """The ``q`` quantile of observations in explicit-bound buckets (``len(counts) ==
    len(bounds) + 1``), interpolating linearly inside the bucket holding the rank. The first
    bucket starts at 0 (or at its bound when that is negative); the overflow bucket ends at
    ``high`` when it passes the last bound, else the quantile is the last bound.

    The reference for ``_BUCKET_QUANTILE``, which computes the same inside ClickHouse (the
    tests compare the two)."""
    total = sum(c for c in counts if c > 0)
    if total <= 0 or len(counts) != len(bounds) + 1:
        return None
    rank = q * total
    seen = 0.0
    for i, raw in enumerate(counts):
        count = max(raw, 0)
        if count and seen + count >= rank:
            if i == len(bounds):
                if high is not None and bounds and high > bounds[-1]:
                    lower, upper = bounds[-1], high
                else:
                    return bounds[-1] if bounds else high
            else:
                upper = bounds[i]
                lower = bounds[i - 1] if i > 0 else min(0.0, upper)
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return bounds[-1] if bounds else high


def _exponential_values(
    rows: list[tuple[Any, ...]], agg: Aggregation, from_ns: int
) -> Iterable[tuple[Sequence[str], int, float | None]]:
    groups: dict[tuple[tuple[str, ...], int], _ExpAccumulator] = {}
    previous: dict[int, tuple[Any, ...]] = {}
    for row in rows:
        (labels, series, t, ts, start, temporality, count, total, scale, zero, pos_offset,
         pos_counts, neg_offset, neg_counts, low, high, in_range) = row  # fmt: skip
        prior = previous.get(series)
        previous[series] = row
        positive = _indexed(pos_offset, pos_counts)
        negative = _indexed(neg_offset, neg_counts)
        if temporality == 1:
            seconds = (ts - start) / 1e9 if 0 < start < ts else 0.0
        elif prior is None:
            if not from_ns <= start < ts:
                continue  # the series' first point, started before the window: increase unknown
            seconds = (ts - start) / 1e9
        else:
            seconds = (ts - prior[3]) / 1e9
            fresh = start != prior[4] or count < prior[6] or scale != prior[8]
            if not fresh:
                count -= prior[6]
                total -= prior[7]
                zero -= prior[9]
                positive = _minus(positive, _indexed(prior[10], prior[11]))
                negative = _minus(negative, _indexed(prior[12], prior[13]))
        if not in_range:
            continue
        key = (tuple(labels), int(t))
        acc = groups.setdefault(key, _ExpAccumulator())
        acc.add(scale, zero, positive, negative, count, total, seconds, low, high)
    for (labels, t), acc in groups.items():
        if agg in QUANTILES:
            yield labels, t, acc.quantile(QUANTILES[agg])
        elif agg == "avg":
            yield labels, t, _ratio(acc.total, acc.count)
        elif agg == "rate":
            yield labels, t, _ratio(acc.count, acc.seconds)
        elif agg == "sum":
            yield labels, t, acc.total
        elif agg == "max":
            yield labels, t, acc.high
        else:
            yield labels, t, acc.low


def _indexed(offset: int, counts: Sequence[int]) -> dict[int, int]:
    return {offset + i: int(c) for i, c in enumerate(counts) if c}


def _minus(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    return {i: a.get(i, 0) - b.get(i, 0) for i in a.keys() | b.keys()}


@dataclass
class _ExpAccumulator:
    """Exponential buckets of a group in one step, kept at the coarsest scale seen."""

    scale: int | None = None
    zero: int = 0
    positive: dict[int, int] = field(default_factory=dict)
    negative: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    seconds: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(
        self,
        scale: int,
        zero: int,
        positive: dict[int, int],
        negative: dict[int, int],
        count: int,
        total: float,
        seconds: float,
        low: float,
        high: float,
    ) -> None:
        if self.scale is None:
            self.scale = scale
        elif scale < self.scale:
            self.positive = _downscale(self.positive, self.scale - scale)
            self.negative = _downscale(self.negative, self.scale - scale)
            self.scale = scale
        shift = scale - self.scale
        for source, target in ((positive, self.positive), (negative, self.negative)):
            for index, n in _downscale(source, shift).items():
                target[index] = target.get(index, 0) + n
        self.zero += zero
        self.count += count
        self.total += total
        self.seconds += seconds
        self.low = min(self.low, low)
        self.high = max(self.high, high)

    def quantile(self, q: float) -> float | None:
        if self.scale is None:
            return None
        base = 2.0 ** (2.0**-self.scale)
        # Ascending value order: negative buckets (largest magnitude first), zero, positive.
        ordered: list[tuple[float, float, int]] = [
            (-(base ** (i + 1)), -(base**i), n)
            for i, n in sorted(self.negative.items(), reverse=True)
        ]
        ordered.append((0.0, 0.0, self.zero))
        ordered += [(base**i, base ** (i + 1), n) for i, n in sorted(self.positive.items())]
        total = sum(max(n, 0) for _, _, n in ordered)
        if total <= 0:
            return None
        rank = q * total
        seen = 0.0
        for lower, upper, raw in ordered:
            n = max(raw, 0)
            if n and seen + n >= rank:
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
        return ordered[-1][1]


def _downscale(buckets: dict[int, int], by: int) -> dict[int, int]:
    if by <= 0:
        return dict(buckets)
    out: dict[int, int] = {}
    for index, n in buckets.items():
        out[index >> by] = out.get(index >> by, 0) + n
    return out


def _summary_values(
    rows: list[tuple[Any, ...]], agg: Aggregation
) -> Iterable[tuple[Sequence[str], int, float | None]]:
    for labels, t, count, total, seconds, quantile in rows:
        if agg in QUANTILES:
            yield labels, t, quantile
        elif agg == "avg":
            yield labels, t, _ratio(total, count)
        else:
            yield labels, t, _ratio(count, seconds)


# --- HTTP --------------------------------------------------------------------------------------


def _keys(parameter: str, text: str | None) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in (text or "").split(",") if k.strip())
    if len(set(keys)) != len(keys):
        raise invalid(parameter, f"{text!r} names a key twice")
    return keys


def _filters(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    out = []
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise invalid(
                "filter", f"{item!r} is not key=value (example: filter=service.name=checkout)"
            )
        out.append((key.strip(), value))
    return tuple(out)


def _step(window: TimeRange, step: str | None) -> int:
    seconds = (window.end - window.start).total_seconds()
    if step is None or not step.strip():
        return max(10, math.ceil(seconds / DEFAULT_POINTS))
    text = step.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    factor = units.get(text[-1], 0)
    number = text[:-1] if factor else text
    if not number.isascii() or not number.isdigit() or int(number) * (factor or 1) < MIN_STEP_S:
        raise invalid("step", f"{step!r} is not a whole number of seconds (10, 30s, 5m, 1h)")
    value = int(number) * (factor or 1)
    if seconds / value > MAX_POINTS_PER_SERIES:
        raise invalid(
            "step",
            f"step {value}s gives {math.ceil(seconds / value)} points per series; at most "
            f"{MAX_POINTS_PER_SERIES}: raise step or shorten the range",
        )
    return value


def router(client: Any) -> APIRouter:
    api = APIRouter(tags=["metrics"])

    @api.get("/metrics")
    def list_metrics(
        window: Annotated[TimeRange, Depends(time_range)],
        service: Annotated[str | None, Query(description="service.name, exact")] = None,
        prefix: Annotated[str | None, Query(description="metric names starting with this")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="most metrics listed")] = 1000,
    ) -> MetricList:
        """Metrics with points in the time range: name, point type (gauge, sum, histogram,
        exponential_histogram, summary), unit, description, the attribute keys of their points
        and resources, the services reporting them; for sums whether they are monotonic, and
        the temporality of sums and histograms."""
        rows = client.query(
            CATALOGUE_SQL,
            parameters={
                "start_ns": window.start_ns,
                "end_ns": window.end_ns,
                "service": service or "",
                "prefix": prefix or "",
                "limit": limit,
            },
        ).named_results()
        metrics = []
        for row in rows:
            temporality = {1: "delta", 2: "cumulative"}.get(int(row["temporality"]))
            metrics.append(
                MetricInfo(
                    name=row["name"],
                    type=row["type"],
                    unit=row["unit"],
                    description=row["description"],
                    attributeKeys=list(row["attribute_keys"]),
                    resourceAttributeKeys=list(row["resource_keys"]),
                    services=list(row["services"]),
                    monotonic=None if row["monotonic"] < 0 else bool(row["monotonic"]),
                    temporality=temporality,  # type: ignore[arg-type]
                )
            )
        return MetricList(metrics=metrics)

    @api.get("/metrics/query", response_model=SeriesResult)
    def query_metric(
        window: Annotated[TimeRange, Depends(time_range)],
        name: Annotated[str, Query(min_length=1, description="the metric name, exact")],
        agg: Annotated[
            Aggregation | None,
            Query(
                description="avg|max|min|sum|rate|p95|p99; default rate for monotonic sums, "
                "p95 for histograms and summaries, else avg"
            ),
        ] = None,
        group_by: Annotated[
            str | None,
            Query(
                description="comma-separated label keys (point attribute, else resource "
                "attribute; service.name is the service)",
                examples=["service.name,host.name"],
            ),
        ] = None,
        filter: Annotated[
            list[str] | None,
            Query(description="label equality `key=value`; repeat for more (all must match)"),
        ] = None,
        step: Annotated[
            str | None,
            Query(description="bucket width: seconds or 30s / 5m / 1h; default range/360, ≥10s"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000, description="most series returned")] = 1000,
    ) -> Response:
        """One time series per group of the metric's series (see ``tracehouse.query.metrics``
        for how each aggregation reads each point type). ``points`` are
        ``[bucket start in Unix seconds, value]``; buckets without points are left out."""
        request = SeriesQuery(
            name=name,
            agg=agg,
            window=window,
            step_s=_step(window, step),
            group_by=_keys("group_by", group_by),
            filters=_filters(filter),
            max_series=limit,
        )
        try:
            body = query_series_json(client, request)
        except MetricQueryError as exc:
            raise invalid(exc.parameter, str(exc)) from exc
        return Response(body, media_type="application/json")

    return api
