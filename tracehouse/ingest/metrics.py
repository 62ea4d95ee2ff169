"""Prometheus metrics of the ingest path (exposed at ``/metrics`` on the API port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "tracehouse_ingest_requests_total",
    "OTLP export requests by signal, transport and outcome",
    ["signal", "transport", "outcome"],
)
ITEMS = Counter(
    "tracehouse_ingest_items_total",
    "Spans, log records or metric points by signal and outcome (accepted, rejected, duplicate)",
    ["signal", "outcome"],
)
TRUNCATED = Counter(
    "tracehouse_ingest_truncated_values_total",
    "Attribute values and log bodies cut to max_attribute_value_length",
    ["signal"],
)
DROPPED = Counter(
    "tracehouse_ingest_dropped_total",
    "Attributes, span events and span links past max_attributes, max_span_events and "
    "max_span_links: not stored, added to the rows' Dropped*Count columns",
    ["signal", "what"],
)
QUEUE_ROWS = Gauge(
    "tracehouse_ingest_queue_rows",
    "Items accepted and waiting for the spool write (in memory)",
    ["signal"],
)
SPOOL_WRITE_SECONDS = Histogram(
    "tracehouse_ingest_spool_write_seconds",
    "Time to write and fsync one spool file (what an acknowledgement waits for)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
SPOOL_BYTES = Gauge("tracehouse_ingest_spool_bytes", "Bytes in the write-ahead spool")
SPOOL_FILES = Gauge("tracehouse_ingest_spool_files", "Files in the write-ahead spool")
SPOOL_FAILED = Counter(
    "tracehouse_ingest_spool_refused_items_total",
    "Spooled items ClickHouse refused as data (kept as *.failed in the spool directory)",
    ["signal"],
)
BATCHES = Counter(
    "tracehouse_ingest_batches_total",
    "Inserts into ClickHouse by signal and outcome (inserted, failed, refused)",
    ["signal", "outcome"],
)
FLUSH_SECONDS = Histogram(
    "tracehouse_ingest_flush_seconds",
    "Time to insert one group of spool files into ClickHouse",
    ["signal"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEGRADED = Gauge("tracehouse_ingest_degraded", "1 while inserts into ClickHouse are failing")
