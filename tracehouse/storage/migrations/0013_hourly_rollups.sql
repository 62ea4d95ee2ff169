-- Hourly rollups beside the minute ones, for ranges of hours and days: at ~900 operations a
-- day of otel_red_1m is 1.3M rows of t-digest states, and merging them is what a 24-hour
-- overview costs (docs/performance.md). Readers take whole hours from these tables and the
-- minutes at the ends of a range from the minute tables (tracehouse/query/_rollups.py).
-- Each is filled by a view on its minute table (a chained view: the minute view's insert
-- triggers it), so it counts exactly what the minute table does, from any writer.

CREATE TABLE IF NOT EXISTS ${otel_red_1h} ${on_cluster} (
    Hour DateTime CODEC(Delta, ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    Kind LowCardinality(String) CODEC(ZSTD(1)),
    Calls SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    Errors SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationSum SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationMin SimpleAggregateFunction(min, UInt64) CODEC(ZSTD(1)),
    DurationMax SimpleAggregateFunction(max, UInt64) CODEC(ZSTD(1)),
    DurationQuantiles AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1))
) ENGINE = ${engine_otel_red_1h}
PARTITION BY toYYYYMM(Hour)
ORDER BY (ServiceName, Hour, SpanName, Kind)
${ttl_otel_red_1h}
SETTINGS index_granularity = 8192${dedup_setting};

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_red_1h ${on_cluster} AS ${otel_red_1h}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_red_1h}, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_red_1h_mv ${on_cluster}
TO ${otel_red_1h}
AS SELECT
    toStartOfHour(Minute) AS Hour,
    ServiceName,
    SpanName,
    Kind,
    sum(Calls) AS Calls,
    sum(Errors) AS Errors,
    sum(DurationSum) AS DurationSum,
    min(DurationMin) AS DurationMin,
    max(DurationMax) AS DurationMax,
    quantileTDigestMergeState(DurationQuantiles) AS DurationQuantiles
FROM ${otel_red_1m}
GROUP BY Hour, ServiceName, SpanName, Kind;

CREATE TABLE IF NOT EXISTS ${otel_db_1h} ${on_cluster} (
    Hour DateTime CODEC(Delta, ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    DbSystem LowCardinality(String) CODEC(ZSTD(1)),
    DbNamespace LowCardinality(String) CODEC(ZSTD(1)),
    Fingerprint UInt64 CODEC(ZSTD(1)),
    NormalizedStatement SimpleAggregateFunction(any, String) CODEC(ZSTD(1)),
    SampleStatement SimpleAggregateFunction(any, String) CODEC(ZSTD(1)),
    Calls SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    Errors SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    SlowCalls SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    SlowThresholdMs SimpleAggregateFunction(max, UInt32) CODEC(ZSTD(1)),
    DurationSum SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationMax SimpleAggregateFunction(max, UInt64) CODEC(ZSTD(1)),
    DurationQuantiles AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1)),
    ExemplarTraceIds AggregateFunction(groupUniqArray(5), String) CODEC(ZSTD(1)),
    SlowestTraceId AggregateFunction(argMax, String, UInt64) CODEC(ZSTD(1))
) ENGINE = ${engine_otel_db_1h}
PARTITION BY toYYYYMM(Hour)
ORDER BY (ServiceName, Hour, DbSystem, DbNamespace, Fingerprint)
${ttl_otel_db_1h}
SETTINGS index_granularity = 8192${dedup_setting};

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_db_1h ${on_cluster} AS ${otel_db_1h}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_db_1h}, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_db_1h_mv ${on_cluster}
TO ${otel_db_1h}
AS SELECT
    toStartOfHour(Minute) AS Hour,
    ServiceName,
    DbSystem,
    DbNamespace,
    Fingerprint,
    any(NormalizedStatement) AS NormalizedStatement,
    any(SampleStatement) AS SampleStatement,
    sum(Calls) AS Calls,
    sum(Errors) AS Errors,
    sum(SlowCalls) AS SlowCalls,
    max(SlowThresholdMs) AS SlowThresholdMs,
    sum(DurationSum) AS DurationSum,
    max(DurationMax) AS DurationMax,
    quantileTDigestMergeState(DurationQuantiles) AS DurationQuantiles,
    groupUniqArrayMergeState(5)(ExemplarTraceIds) AS ExemplarTraceIds,
    argMaxMergeState(SlowestTraceId) AS SlowestTraceId
FROM ${otel_db_1m}
GROUP BY Hour, ServiceName, DbSystem, DbNamespace, Fingerprint;

-- What the minute tables held before this migration (the views above count what comes
-- after). Through the Distributed tables in cluster mode, so every shard's minutes are read
-- and the hours spread like any rollup rows. Run while ingest is stopped: rows inserted
-- between the view's creation and this statement would be counted twice.
INSERT INTO otel_red_1h
SELECT
    toStartOfHour(Minute) AS Hour, ServiceName, SpanName, Kind,
    sum(Calls), sum(Errors), sum(DurationSum), min(DurationMin), max(DurationMax),
    quantileTDigestMergeState(DurationQuantiles)
FROM otel_red_1m
GROUP BY Hour, ServiceName, SpanName, Kind;

INSERT INTO otel_db_1h
SELECT
    toStartOfHour(Minute) AS Hour, ServiceName, DbSystem, DbNamespace, Fingerprint,
    any(NormalizedStatement), any(SampleStatement), sum(Calls), sum(Errors), sum(SlowCalls),
    max(SlowThresholdMs), sum(DurationSum), max(DurationMax),
    quantileTDigestMergeState(DurationQuantiles),
    groupUniqArrayMergeState(5)(ExemplarTraceIds), argMaxMergeState(SlowestTraceId)
FROM otel_db_1m
GROUP BY Hour, ServiceName, DbSystem, DbNamespace, Fingerprint;
