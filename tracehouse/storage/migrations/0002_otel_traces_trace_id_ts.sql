-- Trace id -> time window lookup, as the Collector's exporter creates it: trace lookups
-- read this small table first, then only the partitions of otel_traces that can hold the trace.
CREATE TABLE IF NOT EXISTS ${otel_traces_trace_id_ts} ${on_cluster} (
    TraceId String CODEC(ZSTD(1)),
    Start DateTime CODEC(Delta, ZSTD(1)),
    End DateTime CODEC(Delta, ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.01) GRANULARITY 1
) ENGINE = ${engine_otel_traces_trace_id_ts}
PARTITION BY toDate(Start)
ORDER BY (TraceId, Start)
${ttl_otel_traces_trace_id_ts}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_traces_trace_id_ts ${on_cluster} AS ${otel_traces_trace_id_ts}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_traces_trace_id_ts}, cityHash64(TraceId));

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_traces_trace_id_ts_mv ${on_cluster}
TO ${otel_traces_trace_id_ts}
AS SELECT
    TraceId,
    min(Timestamp) AS Start,
    max(Timestamp) AS End
FROM ${otel_traces}
WHERE TraceId != ''
GROUP BY TraceId;
