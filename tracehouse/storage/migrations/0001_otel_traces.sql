-- Spans, in the column names and types of the OpenTelemetry Collector contrib
-- clickhouseexporter, so Grafana's ClickHouse data source and an existing Collector work
-- unchanged. Extension columns (ScopeAttributes, Dropped*Count) have defaults, so a
-- Collector's INSERT, which names its columns, still succeeds.
CREATE TABLE IF NOT EXISTS ${otel_traces} ${on_cluster} (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) DEFAULT map() CODEC(ZSTD(1)),
    DroppedAttributesCount UInt32 DEFAULT 0,
    DroppedEventsCount UInt32 DEFAULT 0,
    DroppedLinksCount UInt32 DEFAULT 0,
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = ${engine_otel_traces}
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp))
${ttl_otel_traces}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1${dedup_setting};

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_traces ${on_cluster} AS ${otel_traces}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_traces}, cityHash64(TraceId));
