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
    "Spans or log records by signal and outcome (accepted, rejected, duplicate)",
    ["signal", "outcome"],
)
TRUNCATED = Counter(
    "tracehouse_ingest_truncated_values_total",
    "Attribute values and log bodies cut to max_attribute_value_length",
    ["signal"],
)
BATCHES = Counter(
    "tracehouse_ingest_batches_total",
    "Batches flushed, by signal and where they went (inserted, spooled, failed)",
    ["signal", "outcome"],
)
FLUSH_SECONDS = Histogram(
    "tracehouse_ingest_flush_seconds",
    "Time to insert one batch into ClickHouse",
    ["signal"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_ROWS = Gauge(
    "tracehouse_ingest_queue_rows", "Rows accepted and waiting for a flush", ["signal"]
)
SPOOL_BYTES = Gauge("tracehouse_ingest_spool_bytes", "Bytes in the local write-ahead spool")
SPOOL_FILES = Gauge("tracehouse_ingest_spool_files", "Batches in the local write-ahead spool")
REPLAYED = Counter(
    "tracehouse_ingest_spool_replayed_total", "Spooled batches inserted after recovery", ["signal"]
)
