"""The few types every package shares: the signals and the column layout of the raw tables.

Columns are listed in insert order (storage/otlp_sql.py produces them in this order; it also
holds the columns of the metric tables).
"""

from __future__ import annotations

from enum import StrEnum


class Signal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"
    METRICS = "metrics"

    @property
    def table(self) -> str:
        """The raw table of spans or log records (metrics have one per point type: ``tables``)."""
        if self is Signal.METRICS:
            raise ValueError("metric points land in one table per point type; use .tables")
        return "otel_traces" if self is Signal.TRACES else "otel_logs"

    @property
    def tables(self) -> tuple[str, ...]:
        """The raw tables this signal's items land in."""
        return METRIC_TABLES if self is Signal.METRICS else (self.table,)


# The Collector's metric tables, one per OTLP point type (in the order of Metric's data oneof).
METRIC_TABLES: tuple[str, ...] = (
    "otel_metrics_gauge",
    "otel_metrics_sum",
    "otel_metrics_histogram",
    "otel_metrics_exponential_histogram",
    "otel_metrics_summary",
)


TRACE_COLUMNS: tuple[str, ...] = (
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "TraceState",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "ScopeName",
    "ScopeVersion",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
    "Events.Timestamp",
    "Events.Name",
    "Events.Attributes",
    "Links.TraceId",
    "Links.SpanId",
    "Links.TraceState",
    "Links.Attributes",
    "ScopeAttributes",
    "DroppedAttributesCount",
    "DroppedEventsCount",
    "DroppedLinksCount",
)

LOG_COLUMNS: tuple[str, ...] = (
    "Timestamp",
    "TraceId",
    "SpanId",
    "TraceFlags",
    "SeverityText",
    "SeverityNumber",
    "ServiceName",
    "Body",
    "ResourceSchemaUrl",
    "ResourceAttributes",
    "ScopeSchemaUrl",
    "ScopeName",
    "ScopeVersion",
    "ScopeAttributes",
    "LogAttributes",
    "EventName",
    "DroppedAttributesCount",
)

COLUMNS: dict[Signal, tuple[str, ...]] = {Signal.TRACES: TRACE_COLUMNS, Signal.LOGS: LOG_COLUMNS}
