-- Hourly RED per service and span kind, without the operation: what /services, the
-- topology's service nodes and the top-N service report aggregate. A service's hour is one
-- row per kind here instead of one per operation in otel_red_1h (~900 operations: a day of
-- them is ~20,000 t-digest states to merge, of these ~1,000; decision 0022). Filled by a view
-- on otel_red_1m, like 0013's tables, so it counts exactly what the minute table does.

CREATE TABLE IF NOT EXISTS ${otel_services_1h} ${on_cluster} (
    Hour DateTime CODEC(Delta, ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Kind LowCardinality(String) CODEC(ZSTD(1)),
    Calls SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    Errors SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationSum SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationMin SimpleAggregateFunction(min, UInt64) CODEC(ZSTD(1)),
    DurationMax SimpleAggregateFunction(max, UInt64) CODEC(ZSTD(1)),
    DurationQuantiles AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1))
) ENGINE = ${engine_otel_services_1h}
PARTITION BY toYYYYMM(Hour)
ORDER BY (ServiceName, Hour, Kind)
${ttl_otel_services_1h}
SETTINGS index_granularity = 8192${dedup_setting};

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_services_1h ${on_cluster} AS ${otel_services_1h}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_services_1h}, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_services_1h_mv ${on_cluster}
TO ${otel_services_1h}
AS SELECT
    toStartOfHour(Minute) AS Hour,
    ServiceName,
    Kind,
    sum(Calls) AS Calls,
    sum(Errors) AS Errors,
    sum(DurationSum) AS DurationSum,
    min(DurationMin) AS DurationMin,
    max(DurationMax) AS DurationMax,
    quantileTDigestMergeState(DurationQuantiles) AS DurationQuantiles
FROM ${otel_red_1m}
GROUP BY Hour, ServiceName, Kind;

-- The hours already rolled up (the view counts what comes after), from the operation hours.
-- Run while ingest is stopped, as 0013's fills.
INSERT INTO otel_services_1h
SELECT
    Hour, ServiceName, Kind, sum(Calls), sum(Errors), sum(DurationSum), min(DurationMin),
    max(DurationMax), quantileTDigestMergeState(DurationQuantiles)
FROM otel_red_1h
GROUP BY Hour, ServiceName, Kind;
