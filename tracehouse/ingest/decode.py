"""OTLP export requests → rows of ``otel_traces`` / ``otel_logs``.

Attribute values are stored in the string maps of the Collector's schema with this encoding
(docs/attribute-encoding.md): strings as they are; ints in decimal; bools ``true``/``false``;
doubles as the shortest text that reads back as the same float (``nan``, ``inf``, ``-inf``);
bytes as standard base64; arrays and kvlists as compact JSON of the same encoding (bytes as
base64 strings, ints as JSON integers of any size). Values longer than the configured limit
are cut and counted. Maps are sorted by key.

Items that cannot be stored (a trace id that is not 16 bytes, a span id that is not 8) are
rejected one by one and reported through partial success; the rest of the request lands.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracehouse.model import RowBatch, Signal

SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")
STATUS_CODES = ("Unset", "Ok", "Error")
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_MAX_REPORTED_ERRORS = 5


@dataclass
class DecodeResult:
    """Rows to store, how many items were rejected and why, and what was truncated."""

    batch: RowBatch
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    truncated_values: int = 0

    def reject(self, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < _MAX_REPORTED_ERRORS:
            self.errors.append(message)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected - len(self.errors)
        tail = f"; and {more} more" if more > 0 else ""
        return f"rejected {self.rejected} item(s): " + "; ".join(self.errors) + tail


class _Encoder:
    """AnyValue → string, with the value length limit and a truncation count."""

    __slots__ = ("limit", "truncated")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.truncated = 0

    def attrs(self, kvs: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        limit = self.limit
        for kv in kvs:
            value = kv.value
            kind = value.WhichOneof("value")
            text = value.string_value if kind == "string_value" else _scalar_or_json(value, kind)
            if len(text) > limit:
                text = text[:limit]
                self.truncated += 1
            out[kv.key] = text
        if len(out) > 1:
            return dict(sorted(out.items()))
        return out

    def value(self, value: Any) -> str:
        kind = value.WhichOneof("value")
        text = value.string_value if kind == "string_value" else _scalar_or_json(value, kind)
        if len(text) > self.limit:
            self.truncated += 1
            return text[: self.limit]
        return text


def format_double(number: float) -> str:
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return repr(number)


def _scalar_or_json(value: Any, kind: str | None) -> str:
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return format_double(value.double_value)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind in ("array_value", "kvlist_value"):
        return json.dumps(_to_json(value), ensure_ascii=False, separators=(",", ":"))
    return ""


def _to_json(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else format_double(number)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind == "array_value":
        return [_to_json(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _to_json(kv.value) for kv in value.kvlist_value.values}
    return None


def _bad_span_ids(span: Any) -> str:
    return (
        f"span {span.name[:80]!r}: trace_id must be 16 non-zero bytes (got {len(span.trace_id)}), "
        f"span_id 8 non-zero bytes (got {len(span.span_id)}), "
        f"parent_span_id empty or 8 bytes (got {len(span.parent_span_id)})"
    )


def decode_traces(request: ExportTraceServiceRequest, max_value_length: int) -> DecodeResult:
    """Flatten an export request into span rows (see ``model.TRACE_COLUMNS``)."""
    enc = _Encoder(max_value_length)
    result = DecodeResult(RowBatch(Signal.TRACES))
    rows = result.batch.rows
    append = rows.append
    attrs = enc.attrs
    kinds = SPAN_KINDS
    statuses = STATUS_CODES
    for rs in request.resource_spans:
        resource_attrs = attrs(rs.resource.attributes)
        service = resource_attrs.get("service.name", "")
        for ss in rs.scope_spans:
            scope = ss.scope
            scope_name = scope.name
            scope_version = scope.version
            scope_attrs = attrs(scope.attributes)
            for span in ss.spans:
                trace_id = span.trace_id
                span_id = span.span_id
                parent = span.parent_span_id
                if (
                    len(trace_id) != 16
                    or len(span_id) != 8
                    or (parent and len(parent) != 8)
                    or trace_id == _ZERO_TRACE
                    or span_id == _ZERO_SPAN
                ):
                    result.reject(_bad_span_ids(span))
                    continue
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                ev_ts: list[int] = []
                ev_names: list[str] = []
                ev_attrs: list[dict[str, str]] = []
                for event in span.events:
                    ev_ts.append(event.time_unix_nano)
                    ev_names.append(event.name)
                    ev_attrs.append(attrs(event.attributes))
                link_trace: list[str] = []
                link_span: list[str] = []
                link_state: list[str] = []
                link_attrs: list[dict[str, str]] = []
                for link in span.links:
                    link_trace.append(link.trace_id.hex())
                    link_span.append(link.span_id.hex())
                    link_state.append(link.trace_state)
                    link_attrs.append(attrs(link.attributes))
                kind = span.kind
                status = span.status
                code = status.code
                append(
                    (
                        start,
                        trace_id.hex(),
                        span_id.hex(),
                        parent.hex(),
                        span.trace_state,
                        span.name,
                        kinds[kind] if 0 <= kind < 6 else "Unspecified",
                        service,
                        resource_attrs,
                        scope_name,
                        scope_version,
                        attrs(span.attributes),
                        end - start if end > start else 0,
                        statuses[code] if 0 <= code < 3 else "Unset",
                        status.message,
                        ev_ts,
                        ev_names,
                        ev_attrs,
                        link_trace,
                        link_span,
                        link_state,
                        link_attrs,
                        scope_attrs,
                        span.dropped_attributes_count,
                        span.dropped_events_count,
                        span.dropped_links_count,
                    )
                )
    result.truncated_values = enc.truncated
    return result


def decode_logs(request: ExportLogsServiceRequest, max_value_length: int) -> DecodeResult:
    """Flatten an export request into log rows (see ``model.LOG_COLUMNS``)."""
    enc = _Encoder(max_value_length)
    result = DecodeResult(RowBatch(Signal.LOGS))
    append = result.batch.rows.append
    attrs = enc.attrs
    for rl in request.resource_logs:
        resource_attrs = attrs(rl.resource.attributes)
        service = resource_attrs.get("service.name", "")
        resource_schema = rl.schema_url
        for sl in rl.scope_logs:
            scope = sl.scope
            scope_attrs = attrs(scope.attributes)
            scope_schema = sl.schema_url
            for record in sl.log_records:
                trace_id = record.trace_id
                span_id = record.span_id
                if trace_id and len(trace_id) != 16:
                    result.reject(
                        f"log record: trace_id must be empty or 16 bytes, got {len(trace_id)}"
                    )
                    continue
                if span_id and len(span_id) != 8:
                    result.reject(
                        f"log record: span_id must be empty or 8 bytes, got {len(span_id)}"
                    )
                    continue
                timestamp = record.time_unix_nano or record.observed_time_unix_nano
                append(
                    (
                        timestamp,
                        trace_id.hex() if trace_id != _ZERO_TRACE else "",
                        span_id.hex() if span_id != _ZERO_SPAN else "",
                        record.flags & 0xFF,
                        record.severity_text,
                        record.severity_number if 0 <= record.severity_number <= 255 else 0,
                        service,
                        enc.value(record.body),
                        resource_schema,
                        resource_attrs,
                        scope_schema,
                        scope.name,
                        scope.version,
                        scope_attrs,
                        attrs(record.attributes),
                        record.event_name,
                        record.dropped_attributes_count,
                    )
                )
    result.truncated_values = enc.truncated
    return result
