"""What the receivers check before accepting a request; ClickHouse does the decoding.

Items that cannot be stored — a span whose trace id is not 16 non-zero bytes, whose span id
is not 8 non-zero bytes, or whose parent span id is neither empty nor 8 bytes; a log record
whose trace id is neither empty nor 16 bytes or span id neither empty nor 8; a metric data
point of a metric without a name, or a histogram point whose bucket counts are neither absent
nor one more than its explicit bounds — are counted here for the partial-success answer and
skipped by the insert (storage/otlp_sql.py applies the same rule). Values longer than
``max_attribute_value_length``, attributes past ``max_attributes`` in a list, and span events
and links past ``max_span_events`` / ``max_span_links`` (``ItemLimits``) are counted here and
cut there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracehouse.storage.otlp_sql import ItemLimits

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
    dropped_attributes: int = 0
    dropped_events: int = 0
    dropped_links: int = 0

    def count_attributes(self, key_values: Any, limits: ItemLimits) -> None:
        """Count what the insert will cut from one attribute list."""
        if len(key_values) > limits.max_attributes:
            self.dropped_attributes += len(key_values) - limits.max_attributes
            key_values = key_values[: limits.max_attributes]
        self.truncated_values += _long_values(key_values, limits.max_value_length)

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


def inspect_traces(request: Any, limits: ItemLimits) -> Inspection:
    result = Inspection()
    limit = limits.max_value_length
    for rs in request.resource_spans:
        _count_list(result, rs.resource, limits)
        for ss in rs.scope_spans:
            _count_list(result, ss.scope, limits)
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
                big = span.ByteSize() > limit
                if big or len(span.attributes) > limits.max_attributes:
                    result.count_attributes(span.attributes, limits)
                events, links = span.events, span.links
                if events or links:
                    result.dropped_events += max(0, len(events) - limits.max_events)
                    result.dropped_links += max(0, len(links) - limits.max_links)
                    for held in (*events[: limits.max_events], *links[: limits.max_links]):
                        if big or len(held.attributes) > limits.max_attributes:
                            result.count_attributes(held.attributes, limits)
    return result


def _count_list(result: Inspection, holder: Any, limits: ItemLimits) -> None:
    """Count the cuts of a resource's or scope's attributes (cheap checks first)."""
    attributes = holder.attributes
    if len(attributes) > limits.max_attributes or holder.ByteSize() > limits.max_value_length:
        result.count_attributes(attributes, limits)


def inspect_logs(request: Any, limits: ItemLimits) -> Inspection:
    result = Inspection()
    limit = limits.max_value_length
    for rl in request.resource_logs:
        _count_list(result, rl.resource, limits)
        for sl in rl.scope_logs:
            _count_list(result, sl.scope, limits)
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
                big = record.ByteSize() > limit
                if big or len(record.attributes) > limits.max_attributes:
                    result.count_attributes(record.attributes, limits)
                if big:
                    body = record.body
                    kind = body.WhichOneof("value")
                    if kind == "string_value":
                        result.truncated_values += len(body.string_value) > limit
                    elif kind is not None and body.ByteSize() > limit:
                        result.truncated_values += 1
    return result


_POINT_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


def inspect_metrics(request: Any, limits: ItemLimits) -> Inspection:
    """Items are data points (of every type); see the module docstring for what is rejected.

    Points are looked at one by one only where needed (a loop over every point cost 0.56
    CPU-s per 100k points, a fifth of the whole ingest): histograms for their bucket layout,
    and the points of a resource or metric large enough to hold a value over the limit or a
    list of more than ``max_attributes`` entries (each entry takes at least 2 bytes)."""
    result = Inspection()
    limit = limits.max_value_length

    def may_be_cut(message: Any) -> bool:
        size: int = message.ByteSize()
        return size > limit or size >= 2 * limits.max_attributes

    for rm in request.resource_metrics:
        check = may_be_cut(rm)
        if check:
            _count_list(result, rm.resource, limits)
        for sm in rm.scope_metrics:
            if check:
                _count_list(result, sm.scope, limits)
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue  # no points: nothing to store or reject
                points = getattr(metric, kind).data_points
                if not metric.name:
                    for _ in points:
                        result.reject(f"a {kind} metric has no name; a name is required")
                    continue
                if kind == "histogram":
                    points = [p for p in points if _buckets_fit(result, metric.name, p)]
                result.accepted += len(points)
                if not check or not may_be_cut(metric):
                    continue  # no value and no attribute list of these points can be cut
                for point in points:
                    if point.ByteSize() > limit or len(point.attributes) > limits.max_attributes:
                        result.count_attributes(point.attributes, limits)
                        for exemplar in point.exemplars:
                            result.count_attributes(exemplar.filtered_attributes, limits)
    return result


def _buckets_fit(result: Inspection, name: str, point: Any) -> bool:
    """A histogram point's bucket counts are absent or one more than its bounds; a point whose
    are not is rejected."""
    if not point.bucket_counts:
        return True
    buckets, bounds = len(point.bucket_counts), len(point.explicit_bounds)
    if buckets == bounds + 1:
        return True
    result.reject(
        f"histogram {name[:80]!r}: {buckets} bucket counts for {bounds} explicit bounds "
        "(must be bounds + 1)"
    )
    return False
