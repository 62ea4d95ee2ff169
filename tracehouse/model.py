"""The few types every package shares: the column layout of the raw tables and a row batch.

Columns are listed in insert order; the ingest decoder fills rows and storage writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class RowBatch:
    """Rows of one signal; each row is a tuple in the order of ``COLUMNS[signal]``."""

    signal: Signal
    rows: list[tuple[object, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)
