"""The few types every package shares: the signals and the column layout of the raw tables.

Columns are listed in insert order (storage/otlp_sql.py produces them in this order).
"""

from __future__ import annotations

from enum import StrEnum


class Signal(StrEnum):
    TRACES = "traces"
    LOGS = "logs"

    @property
    def table(self) -> str:
        return "otel_traces" if self is Signal.TRACES else "otel_logs"


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
