"""SQL that turns OTLP export requests into rows inside ClickHouse: Python moves bytes only.

A batch of export requests (protobuf, as received) is sent in ClickHouse's length-delimited
``Protobuf`` input format with the schema ``otlp/otlp_flat.proto`` passed inline
(``format_schema_source='string'``), read as nested ``Array(Tuple(...))`` columns, flattened
with ``ARRAY JOIN`` and encoded into the Collector's columns by one ``INSERT … SELECT``. The
encoding of attribute values is the one in docs/attribute-encoding.md; ClickHouse applies it,
so rows written by the embedded engine and by a server are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from tracehouse.model import COLUMNS, METRIC_TABLES, Signal


@dataclass(frozen=True)
class ItemLimits:
    """What one item may hold; the insert cuts the rest (docs/decisions/0017-*.md): values to
    ``max_value_length`` characters, every attribute list (of a resource, scope, span, event,
    link, log record or data point) to its first ``max_attributes`` entries, a span's events
    and links to the first ``max_events`` and ``max_links``. Cut attributes, events and links
    are added to the row's Dropped*Count columns."""

    max_value_length: int = 128 * 1024
    max_attributes: int = 1_000
    max_events: int = 1_000
    max_links: int = 1_000

    def parameters(self) -> dict[str, int]:
        """The insert statements' query parameters."""
        return {
            "max_value_length": self.max_value_length,
            "max_attributes": self.max_attributes,
            "max_events": self.max_events,
            "max_links": self.max_links,
        }


PROTO_FILE = resources.files("tracehouse.storage").joinpath("otlp/otlp_flat.proto")
PROTO_TEXT = PROTO_FILE.read_text()
MESSAGE = {
    Signal.TRACES: "ExportTraceServiceRequest",
    Signal.LOGS: "ExportLogsServiceRequest",
    Signal.METRICS: "ExportMetricsServiceRequest",
}

# ---------------------------------------------------------------------------------------------
# Structure of the request as ClickHouse reads it (names are the .proto field names).

_ONEOF = (
    "Enum8('none' = 0, 'string_value' = 1, 'bool_value' = 2, 'int_value' = 3, "
    "'double_value' = 4, 'array_value' = 5, 'kvlist_value' = 6, 'bytes_value' = 7)"
)
_SCALARS = "string_value String, bool_value Bool, int_value Int64, double_value Float64"


def _any_value_type(depth: int) -> str:
    if depth == 3:
        nested = "array_value String, kvlist_value String"
    else:
        inner = _any_value_type(depth + 1)
        nested = (
            f"array_value Tuple(values Array({inner})), "
            f"kvlist_value Tuple(values Array(Tuple(key String, value {inner})))"
        )
    return f"Tuple(value {_ONEOF}, {_SCALARS}, {nested}, bytes_value String)"


_KEY_VALUES = f"Array(Tuple(key String, value {_any_value_type(1)}))"
_SCOPE = f"Tuple(name String, version String, attributes {_KEY_VALUES})"

_STRUCTURE = {
    Signal.TRACES: (
        f"resource_spans Array(Tuple(resource Tuple(attributes {_KEY_VALUES}), "
        f"scope_spans Array(Tuple(scope {_SCOPE}, spans Array(Tuple("
        "trace_id String, span_id String, trace_state String, parent_span_id String, "
        "name String, kind Int32, start_time_unix_nano UInt64, end_time_unix_nano UInt64, "
        f"attributes {_KEY_VALUES}, dropped_attributes_count UInt32, "
        f"events Array(Tuple(time_unix_nano UInt64, name String, attributes {_KEY_VALUES})), "
        "dropped_events_count UInt32, "
        "links Array(Tuple(trace_id String, span_id String, trace_state String, "
        f"attributes {_KEY_VALUES})), dropped_links_count UInt32, "
        "status Tuple(message String, code Int32)))))))"
    ),
    Signal.LOGS: (
        f"resource_logs Array(Tuple(resource Tuple(attributes {_KEY_VALUES}), schema_url String, "
        f"scope_logs Array(Tuple(scope {_SCOPE}, schema_url String, log_records Array(Tuple("
        "time_unix_nano UInt64, observed_time_unix_nano UInt64, severity_number Int32, "
        f"severity_text String, body {_any_value_type(1)}, attributes {_KEY_VALUES}, "
        "dropped_attributes_count UInt32, flags UInt32, trace_id String, span_id String, "
        "event_name String))))))"
    ),
}

# ---------------------------------------------------------------------------------------------
# Encoding of AnyValue into text (docs/attribute-encoding.md), as SQL expressions.


def _json_value(v: str, depth: int) -> str:
    """SQL for the JSON text of AnyValue ``v`` inside an array or kvlist."""
    if depth == 3:
        raw = (
            "concat('{\"otlp.protobuf.base64\":', "
            f"toJSONString(base64Encode({v}.array_value || {v}.kvlist_value)), '}}')"
        )
        array_json = kvlist_json = raw
    else:
        array_json, kvlist_json = _container_json(v, depth)
    return (
        f"multiIf({v}.value = 'string_value', toJSONString({v}.string_value), "
        f"{v}.value = 'int_value', toString({v}.int_value), "
        f"{v}.value = 'bool_value', if({v}.bool_value, 'true', 'false'), "
        f"{v}.value = 'double_value', if(isFinite({v}.double_value), "
        f"toString({v}.double_value), toJSONString(toString({v}.double_value))), "
        f"{v}.value = 'bytes_value', toJSONString(base64Encode({v}.bytes_value)), "
        f"{v}.value = 'array_value', {array_json}, "
        f"{v}.value = 'kvlist_value', {kvlist_json}, "
        "'null')"
    )


def _container_json(v: str, depth: int) -> tuple[str, str]:
    x = f"x{depth}"
    kv = f"kv{depth}"
    element = _json_value(x, depth + 1)
    member = _json_value(f"{kv}.value", depth + 1)
    array_json = (
        f"concat('[', arrayStringConcat(arrayMap({x} -> {element}, "
        f"{v}.array_value.values), ','), ']')"
    )
    kvlist_json = (
        f"concat('{{', arrayStringConcat(arrayMap({kv} -> concat(toJSONString({kv}.key), ':', "
        f"{member}), {v}.kvlist_value.values), ','), '}}')"
    )
    return array_json, kvlist_json


def _text(v: str) -> str:
    """SQL for the stored text of the top-level AnyValue ``v``, cut to the value limit."""
    array_json, kvlist_json = _container_json(v, 1)
    encoded = (
        f"multiIf({v}.value = 'string_value', {v}.string_value, "
        f"{v}.value = 'int_value', toString({v}.int_value), "
        f"{v}.value = 'bool_value', if({v}.bool_value, 'true', 'false'), "
        f"{v}.value = 'double_value', toString({v}.double_value), "
        f"{v}.value = 'bytes_value', base64Encode({v}.bytes_value), "
        f"{v}.value = 'array_value', {array_json}, "
        f"{v}.value = 'kvlist_value', {kvlist_json}, "
        "'')"
    )
    return f"leftUTF8({encoded}, {{max_value_length:UInt32}})"


def _first(items: str, limit: str) -> str:
    """SQL for the first ``{limit}`` elements of the array ``items``."""
    return f"arraySlice({items}, 1, {{{limit}:UInt32}})"


def _beyond(items: str, limit: str) -> str:
    """SQL for how many elements of ``items`` are past ``{limit}`` (cut by ``_first``)."""
    return f"toUInt32(greatest(length({items}), {{{limit}:UInt32}}) - {{{limit}:UInt32}})"


def _attributes(key_values: str) -> str:
    """SQL for a key-sorted Map(String, String) of an attribute list's first
    ``max_attributes`` entries."""
    first = _first(key_values, "max_attributes")
    return (
        f"mapSort(mapFromArrays(arrayMap(a -> a.key, {first}), "
        f"arrayMap(a -> {_text('a.value')}, {first})))"
    )


def _hex(value: str) -> str:
    return f"lower(hex({value}))"


def _ns(value: str) -> str:
    return f"fromUnixTimestamp64Nano(toInt64({value}))"


_VALID_SPAN = (
    "length(span_trace_id) = 16 AND span_trace_id != repeat('\\0', 16) "
    "AND length(span_span_id) = 8 AND span_span_id != repeat('\\0', 8) "
    "AND length(span_parent_span_id) IN (0, 8)"
)
_VALID_LOG = "length(rec_trace_id) IN (0, 16) AND length(rec_span_id) IN (0, 8)"
_ZERO_TRACE = "repeat('\\0', 16)"
_ZERO_SPAN = "repeat('\\0', 8)"

# Each column of the raw tables, as an expression over the flattened request.
_TRACE_EXPRESSIONS = {
    "Timestamp": _ns("span_start_time_unix_nano"),
    "TraceId": _hex("span_trace_id"),
    "SpanId": _hex("span_span_id"),
    "ParentSpanId": _hex("span_parent_span_id"),
    "TraceState": "span_trace_state",
    "SpanName": "span_name",
    "SpanKind": "if(span_kind BETWEEN 0 AND 5, ['Unspecified', 'Internal', 'Server', "
    "'Client', 'Producer', 'Consumer'][span_kind + 1], 'Unspecified')",
    "ServiceName": "ResourceAttributes['service.name']",
    "ResourceAttributes": _attributes("rs.resource.attributes"),
    "ScopeName": "ss.scope.name",
    "ScopeVersion": "ss.scope.version",
    "SpanAttributes": _attributes("span_attributes"),
    "Duration": "if(span_end_time_unix_nano > span_start_time_unix_nano, "
    "span_end_time_unix_nano - span_start_time_unix_nano, 0)",
    "StatusCode": "if(span_status.code BETWEEN 0 AND 2, "
    "['Unset', 'Ok', 'Error'][span_status.code + 1], 'Unset')",
    "StatusMessage": "span_status.message",
    "Events.Timestamp": (
        f"arrayMap(t -> {_ns('t')}, {_first('span_events.time_unix_nano', 'max_events')})"
    ),
    "Events.Name": _first("span_events.name", "max_events"),
    "Events.Attributes": (
        f"arrayMap(e -> {_attributes('e')}, {_first('span_events.attributes', 'max_events')})"
    ),
    "Links.TraceId": f"arrayMap(i -> {_hex('i')}, {_first('span_links.trace_id', 'max_links')})",
    "Links.SpanId": f"arrayMap(i -> {_hex('i')}, {_first('span_links.span_id', 'max_links')})",
    "Links.TraceState": _first("span_links.trace_state", "max_links"),
    "Links.Attributes": (
        f"arrayMap(l -> {_attributes('l')}, {_first('span_links.attributes', 'max_links')})"
    ),
    "ScopeAttributes": _attributes("ss.scope.attributes"),
    "DroppedAttributesCount": (
        f"span_dropped_attributes_count + {_beyond('span_attributes', 'max_attributes')}"
    ),
    "DroppedEventsCount": (
        f"span_dropped_events_count + {_beyond('span_events.name', 'max_events')}"
    ),
    "DroppedLinksCount": f"span_dropped_links_count + {_beyond('span_links.span_id', 'max_links')}",
}
_LOG_EXPRESSIONS = {
    "Timestamp": _ns("if(rec_time_unix_nano = 0, rec_observed_time_unix_nano, rec_time_unix_nano)"),
    "TraceId": f"if(rec_trace_id = {_ZERO_TRACE}, '', {_hex('rec_trace_id')})",
    "SpanId": f"if(rec_span_id = {_ZERO_SPAN}, '', {_hex('rec_span_id')})",
    "TraceFlags": "bitAnd(rec_flags, 255)",
    "SeverityText": "rec_severity_text",
    "SeverityNumber": "if(rec_severity_number BETWEEN 0 AND 255, rec_severity_number, 0)",
    "ServiceName": "ResourceAttributes['service.name']",
    "Body": _text("rec_body"),
    "ResourceSchemaUrl": "rl.schema_url",
    "ResourceAttributes": _attributes("rl.resource.attributes"),
    "ScopeSchemaUrl": "sl.schema_url",
    "ScopeName": "sl.scope.name",
    "ScopeVersion": "sl.scope.version",
    "ScopeAttributes": _attributes("sl.scope.attributes"),
    "LogAttributes": _attributes("rec_attributes"),
    "EventName": "rec_event_name",
    "DroppedAttributesCount": (
        f"rec_dropped_attributes_count + {_beyond('rec_attributes', 'max_attributes')}"
    ),
}
assert tuple(_TRACE_EXPRESSIONS) == COLUMNS[Signal.TRACES]
assert tuple(_LOG_EXPRESSIONS) == COLUMNS[Signal.LOGS]

# Fields of the innermost items, ARRAY JOINed side by side as plain columns (much cheaper in
# ClickHouse than joining the item tuple and taking its elements).
_SPAN_FIELDS = (
    "trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind",
    "start_time_unix_nano", "end_time_unix_nano", "attributes", "dropped_attributes_count",
    "events", "dropped_events_count", "links", "dropped_links_count", "status",
)  # fmt: skip
_RECORD_FIELDS = (
    "time_unix_nano", "observed_time_unix_nano", "severity_number", "severity_text", "body",
    "attributes", "dropped_attributes_count", "flags", "trace_id", "span_id", "event_name",
)  # fmt: skip

_FROM = {
    Signal.TRACES: (
        "ARRAY JOIN resource_spans AS rs\n"
        "ARRAY JOIN rs.scope_spans AS ss\n"
        "ARRAY JOIN " + ", ".join(f"ss.spans.{f} AS span_{f}" for f in _SPAN_FIELDS) + "\n"
        f"WHERE {_VALID_SPAN}"
    ),
    Signal.LOGS: (
        "ARRAY JOIN resource_logs AS rl\n"
        "ARRAY JOIN rl.scope_logs AS sl\n"
        "ARRAY JOIN " + ", ".join(f"sl.log_records.{f} AS rec_{f}" for f in _RECORD_FIELDS) + "\n"
        f"WHERE {_VALID_LOG}"
    ),
}
_EXPRESSIONS = {Signal.TRACES: _TRACE_EXPRESSIONS, Signal.LOGS: _LOG_EXPRESSIONS}


# ---------------------------------------------------------------------------------------------
# Metrics: one INSERT per point type (and table). Each reads only its own type's points (the
# structure names no other member of Metric's data oneof, so ClickHouse skips them).

_EXEMPLAR = (
    f"Tuple(filtered_attributes {_KEY_VALUES}, time_unix_nano UInt64, as_double Float64, "
    "as_int Int64, span_id String, trace_id String)"
)
_POINT_HEAD = f"attributes {_KEY_VALUES}, start_time_unix_nano UInt64, time_unix_nano UInt64"
_POINTS = {
    "gauge": (
        f"Tuple(data_points Array(Tuple({_POINT_HEAD}, as_double Float64, as_int Int64, "
        f"exemplars Array({_EXEMPLAR}), flags UInt32)))"
    ),
    "sum": (
        f"Tuple(data_points Array(Tuple({_POINT_HEAD}, as_double Float64, as_int Int64, "
        f"exemplars Array({_EXEMPLAR}), flags UInt32)), aggregation_temporality Int32, "
        "is_monotonic Bool)"
    ),
    "histogram": (
        f"Tuple(data_points Array(Tuple({_POINT_HEAD}, count UInt64, sum Float64, "
        "bucket_counts Array(UInt64), explicit_bounds Array(Float64), "
        f"exemplars Array({_EXEMPLAR}), flags UInt32, min Float64, max Float64)), "
        "aggregation_temporality Int32)"
    ),
    "exponential_histogram": (
        f"Tuple(data_points Array(Tuple({_POINT_HEAD}, count UInt64, sum Float64, scale Int32, "
        "zero_count UInt64, positive Tuple(offset Int32, bucket_counts Array(UInt64)), "
        "negative Tuple(offset Int32, bucket_counts Array(UInt64)), flags UInt32, "
        f"exemplars Array({_EXEMPLAR}), min Float64, max Float64)), "
        "aggregation_temporality Int32)"
    ),
    "summary": (
        f"Tuple(data_points Array(Tuple({_POINT_HEAD}, count UInt64, sum Float64, "
        "quantile_values Array(Tuple(quantile Float64, value Float64)), flags UInt32)))"
    ),
}
_POINT_FIELDS = {
    "gauge": ("as_double", "as_int", "exemplars", "flags"),
    "sum": ("as_double", "as_int", "exemplars", "flags"),
    "histogram": (
        "count", "sum", "bucket_counts", "explicit_bounds", "exemplars", "flags", "min", "max",
    ),
    "exponential_histogram": (
        "count", "sum", "scale", "zero_count", "positive", "negative", "flags", "exemplars",
        "min", "max",
    ),
    "summary": ("count", "sum", "quantile_values", "flags"),
}  # fmt: skip
_KINDS = tuple(_POINTS)
assert tuple(f"otel_metrics_{k}" for k in _KINDS) == METRIC_TABLES


def _metric_structure(kind: str) -> str:
    return (
        f"resource_metrics Array(Tuple(resource Tuple(attributes {_KEY_VALUES}), "
        "schema_url String, scope_metrics Array(Tuple(scope Tuple(name String, version String, "
        f"attributes {_KEY_VALUES}, dropped_attributes_count UInt32), schema_url String, "
        "metrics Array(Tuple(name String, description String, unit String, "
        f"{kind} {_POINTS[kind]}))))))"
    )


def _number(value: str) -> str:
    """A NumberDataPoint's or Exemplar's value: as_int when set (non-zero), else as_double."""
    return f"if({value}_as_int != 0, toFloat64({value}_as_int), {value}_as_double)"


_EXEMPLAR_EXPRESSIONS = {
    "Exemplars.FilteredAttributes": (
        f"arrayMap(e -> {_attributes('e')}, dp_exemplars.filtered_attributes)"
    ),
    "Exemplars.TimeUnix": f"arrayMap(t -> {_ns('t')}, dp_exemplars.time_unix_nano)",
    "Exemplars.Value": (
        "arrayMap((i, d) -> if(i != 0, toFloat64(i), d), dp_exemplars.as_int, "
        "dp_exemplars.as_double)"
    ),
    "Exemplars.SpanId": f"arrayMap(i -> {_hex('i')}, dp_exemplars.span_id)",
    "Exemplars.TraceId": f"arrayMap(i -> {_hex('i')}, dp_exemplars.trace_id)",
}
_METRIC_HEAD = {
    "ResourceAttributes": _attributes("rm.resource.attributes"),
    "ResourceSchemaUrl": "rm.schema_url",
    "ScopeName": "sm.scope.name",
    "ScopeVersion": "sm.scope.version",
    "ScopeAttributes": _attributes("sm.scope.attributes"),
    "ScopeDroppedAttrCount": "sm.scope.dropped_attributes_count",
    "ScopeSchemaUrl": "sm.schema_url",
    "ServiceName": "ResourceAttributes['service.name']",
    "MetricName": "m.name",
    "MetricDescription": "m.description",
    "MetricUnit": "m.unit",
    "Attributes": _attributes("dp_attributes"),
    "StartTimeUnix": _ns("dp_start_time_unix_nano"),
    "TimeUnix": _ns("dp_time_unix_nano"),
}
_HISTOGRAM_TAIL = {
    "Flags": "dp_flags",
    "Min": "dp_min",
    "Max": "dp_max",
}
# Each column of the metric tables (in the Collector's order), as an expression over the
# flattened request.
METRIC_EXPRESSIONS: dict[str, dict[str, str]] = {
    "gauge": {
        **_METRIC_HEAD,
        "Value": _number("dp"),
        "Flags": "dp_flags",
        **_EXEMPLAR_EXPRESSIONS,
    },
    "sum": {
        **_METRIC_HEAD,
        "Value": _number("dp"),
        "Flags": "dp_flags",
        **_EXEMPLAR_EXPRESSIONS,
        "AggregationTemporality": "m.sum.aggregation_temporality",
        "IsMonotonic": "m.sum.is_monotonic",
    },
    "histogram": {
        **_METRIC_HEAD,
        "Count": "dp_count",
        "Sum": "dp_sum",
        "BucketCounts": "dp_bucket_counts",
        "ExplicitBounds": "dp_explicit_bounds",
        **_EXEMPLAR_EXPRESSIONS,
        **_HISTOGRAM_TAIL,
        "AggregationTemporality": "m.histogram.aggregation_temporality",
    },
    "exponential_histogram": {
        **_METRIC_HEAD,
        "Count": "dp_count",
        "Sum": "dp_sum",
        "Scale": "dp_scale",
        "ZeroCount": "dp_zero_count",
        "PositiveOffset": "dp_positive.offset",
        "PositiveBucketCounts": "dp_positive.bucket_counts",
        "NegativeOffset": "dp_negative.offset",
        "NegativeBucketCounts": "dp_negative.bucket_counts",
        **_EXEMPLAR_EXPRESSIONS,
        **_HISTOGRAM_TAIL,
        "AggregationTemporality": "m.exponential_histogram.aggregation_temporality",
    },
    "summary": {
        **_METRIC_HEAD,
        "Count": "dp_count",
        "Sum": "dp_sum",
        "ValueAtQuantiles.Quantile": "dp_quantile_values.quantile",
        "ValueAtQuantiles.Value": "dp_quantile_values.value",
        "Flags": "dp_flags",
    },
}
# Points that cannot be stored, by the rule validate.inspect_metrics reports: a metric without
# a name; a histogram point whose bucket counts are neither absent nor one more than its bounds.
_VALID_POINT = {kind: "m.name != ''" for kind in _KINDS}
_VALID_POINT["histogram"] += (
    " AND (empty(dp_bucket_counts) OR length(dp_bucket_counts) = length(dp_explicit_bounds) + 1)"
)


def _metric_from(kind: str) -> str:
    fields = (*("attributes", "start_time_unix_nano", "time_unix_nano"), *_POINT_FIELDS[kind])
    return (
        "ARRAY JOIN resource_metrics AS rm\n"
        "ARRAY JOIN rm.scope_metrics AS sm\n"
        "ARRAY JOIN sm.metrics AS m\n"
        "ARRAY JOIN " + ", ".join(f"m.{kind}.data_points.{f} AS dp_{f}" for f in fields) + "\n"
        f"WHERE {_VALID_POINT[kind]}"
    )


def _select(expressions: dict[str, str], source: str, from_clause: str) -> str:
    columns = ",\n    ".join(f"{expr} AS `{name}`" for name, expr in expressions.items())
    return f"SELECT\n    {columns}\nFROM {source}\n{from_clause}"


def select_statement(signal: Signal, source: str) -> str:
    """``SELECT`` of the raw table's columns (aliased by name) from requests in ``source``."""
    return _select(_EXPRESSIONS[signal], source, _FROM[signal])


def insert_statement(signal: Signal, source: str) -> str:
    """The ``INSERT … SELECT`` for traces or logs, reading the requests from ``source``."""
    columns = ", ".join(f"`{c}`" for c in COLUMNS[signal])
    return f"INSERT INTO {signal.table} ({columns})\n{select_statement(signal, source)}"


def metric_insert_statement(table: str, source: str) -> str:
    """The ``INSERT … SELECT`` of one metric table's points from the requests in ``source``
    (read with ``structure(Signal.METRICS, table)``)."""
    kind = table.removeprefix("otel_metrics_")
    expressions = METRIC_EXPRESSIONS[kind]
    columns = ", ".join(f"`{c}`" for c in expressions)
    return f"INSERT INTO {table} ({columns})\n{_select(expressions, source, _metric_from(kind))}"


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def settings_clause(signal: Signal, schema_file: str | None, dedup_token: str | None) -> str:
    """SETTINGS of the insert: the inline schema (or ``schema_file`` on the embedded engine,
    which would otherwise cache inline schemas in its working directory) and the dedup token."""
    if schema_file:
        schema = {"format_schema": _sql_string(f"{schema_file}:{MESSAGE[signal]}")}
    else:
        schema = {
            "format_schema_source": _sql_string("string"),
            "format_schema": _sql_string(PROTO_TEXT),
            "format_schema_message_name": _sql_string(MESSAGE[signal]),
        }
    settings = {
        **schema,
        "input_format_protobuf_oneof_presence": "1",
        "output_format_json_escape_forward_slashes": "0",
        # JIT-compiling these large expressions costs a core for seconds and gains nothing:
        # each insert evaluates them once over a whole batch.
        "compile_expressions": "0",
        # Evaluate each branch of the attribute encoding's multiIf only for the values of its
        # type (by default ClickHouse does so only for functions it deems heavy): 8-15 % less
        # CPU for parsing and encoding a 50k-span insert (docs/performance.md).
        "short_circuit_function_evaluation": "'force_enable'",
    }
    if dedup_token:
        settings["insert_deduplicate"] = "1"
        settings["insert_deduplication_token"] = _sql_string(dedup_token)
    return "SETTINGS " + ", ".join(f"{k} = {v}" for k, v in settings.items())


def structure(signal: Signal, table: str | None = None) -> str:
    """The request's structure as a quoted SQL string, for ``input()`` and ``file()``; for
    metrics, the part one metric ``table`` reads."""
    if signal is Signal.METRICS:
        if table is None:
            raise ValueError("metrics are read per table: pass one of METRIC_TABLES")
        return _sql_string(_metric_structure(table.removeprefix("otel_metrics_")))
    return _sql_string(_STRUCTURE[signal])


def sql_string(text: str) -> str:
    return _sql_string(text)
