"""What the receivers check before accepting a request; ClickHouse does the decoding.

Items that cannot be stored — a span whose trace id is not 16 non-zero bytes, whose span id
is not 8 non-zero bytes, or whose parent span id is neither empty nor 8 bytes; a log record
whose trace id is neither empty nor 16 bytes or span id neither empty nor 8; a metric data
point of a metric without a name, or a histogram point whose bucket counts are neither absent
nor one more than its explicit bounds — are counted here for the partial-success answer and
skipped by the insert (storage/otlp_sql.py applies the same rule). Values longer than
``max_attribute_value_length`` are counted here and cut there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_MAX_REPORTED_ERRORS = 5


@dataclass
class Inspection:
    """How many items a request holds, which are rejected and why, how many values are cut."""

    accepted: int = 0
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


def _long_values(key_values: Any, limit: int) -> int:
    """Values whose stored text would pass ``limit`` characters (strings, bytes, containers)."""
    count = 0
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            count += len(value.string_value) > limit
        elif kind == "bytes_value":
            count += (len(value.bytes_value) + 2) // 3 * 4 > limit
        elif kind in ("array_value", "kvlist_value"):
            count += value.ByteSize() > limit
    return count


def inspect_traces(request: Any, limit: int) -> Inspection:
    result = Inspection()
    for rs in request.resource_spans:
        if rs.resource.ByteSize() > limit:
            result.truncated_values += _long_values(rs.resource.attributes, limit)
        for ss in rs.scope_spans:
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
                    result.reject(
                        f"span {span.name[:80]!r}: trace_id must be 16 non-zero bytes "
                        f"(got {len(trace_id)}), span_id 8 non-zero bytes (got {len(span_id)}), "
                        f"parent_span_id empty or 8 bytes (got {len(parent)})"
                    )
                    continue
                result.accepted += 1
                if span.ByteSize() > limit:
                    result.truncated_values += _long_values(span.attributes, limit)
                    for event in span.events:
                        result.truncated_values += _long_values(event.attributes, limit)
                    for link in span.links:
                        result.truncated_values += _long_values(link.attributes, limit)
    return result


def inspect_logs(request: Any, limit: int) -> Inspection:
    result = Inspection()
    for rl in request.resource_logs:
        if rl.resource.ByteSize() > limit:
            result.truncated_values += _long_values(rl.resource.attributes, limit)
        for sl in rl.scope_logs:
            for record in sl.log_records:
                trace_id = record.trace_id
                span_id = record.span_id
                if (trace_id and len(trace_id) != 16) or (span_id and len(span_id) != 8):
                    result.reject(
                        f"log record: trace_id must be empty or 16 bytes (got {len(trace_id)}), "
                        f"span_id empty or 8 bytes (got {len(span_id)})"
                    )
                    continue
                result.accepted += 1
                if record.ByteSize() > limit:
                    result.truncated_values += _long_values(record.attributes, limit)
                    body = record.body
                    kind = body.WhichOneof("value")
                    if kind == "string_value":
                        result.truncated_values += len(body.string_value) > limit
                    elif kind is not None and body.ByteSize() > limit:
                        result.truncated_values += 1
    return result


_POINT_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def inspect_metrics(request: Any, limit: int) -> Inspection:
    """Items are data points (of every type); see the module docstring for what is rejected."""
    result = Inspection()
    for rm in request.resource_metrics:
        if rm.resource.ByteSize() > limit:
            result.truncated_values += _long_values(rm.resource.attributes, limit)
        for sm in rm.scope_metrics:
            if sm.scope.ByteSize() > limit:
                result.truncated_values += _long_values(sm.scope.attributes, limit)
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue  # no points: nothing to store or reject
                points = getattr(metric, kind).data_points
                if not metric.name:
                    for _ in points:
                        result.reject(f"a {kind} metric has no name; a name is required")
                    continue
                for point in points:
                    if kind == "histogram" and point.bucket_counts:
                        buckets = len(point.bucket_counts)
                        bounds = len(point.explicit_bounds)
                        if buckets != bounds + 1:
                            result.reject(
                                f"histogram {metric.name[:80]!r}: {buckets} bucket counts for "
                                f"{bounds} explicit bounds (must be bounds + 1)"
                            )
                            continue
                    result.accepted += 1
                    if point.ByteSize() > limit:
                        result.truncated_values += _long_values(point.attributes, limit)
                        for exemplar in point.exemplars:
                            result.truncated_values += _long_values(
                                exemplar.filtered_attributes, limit
                            )
    return result
