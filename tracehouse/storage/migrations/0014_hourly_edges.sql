-- Hourly service-graph edges beside otel_edges_1m (as 0013 did for the RED and database
-- rollups): a 24-hour topology merges 24 rows per edge instead of 1,440. Written by the
-- worker's EdgeBuilder, not by a view: after recomputing its minutes, each run recomputes the
-- hours they fall in from those hours' latest minute edges, with the run's Version; readers
-- keep, per Hour, the rows of its latest Version, exactly as for minutes (migration 0005).
CREATE TABLE IF NOT EXISTS ${otel_edges_1h} ${on_cluster} (
    Hour DateTime CODEC(Delta, ZSTD(1)),
    Source LowCardinality(String) CODEC(ZSTD(1)),
    Target LowCardinality(String) CODEC(ZSTD(1)),
    ConnectionType LowCardinality(String) CODEC(ZSTD(1)),
    Calls UInt64 CODEC(ZSTD(1)),
    Errors UInt64 CODEC(ZSTD(1)),
    ClientLatency AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1)),
    ServerLatency AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1)),
    ClientDurationSum UInt64 CODEC(ZSTD(1)),
    ServerDurationSum UInt64 CODEC(ZSTD(1)),
    Version UInt64 CODEC(ZSTD(1))
) ENGINE = ${engine_otel_edges_1h}
PARTITION BY toYYYYMM(Hour)
ORDER BY (Hour, Source, Target, ConnectionType)
${ttl_otel_edges_1h}
SETTINGS index_granularity = 8192;

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_edges_1h ${on_cluster} AS ${otel_edges_1h}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_edges_1h}, rand());

-- The hours of the minutes already computed (later runs recompute the hours they touch).
INSERT INTO otel_edges_1h
SELECT
    toStartOfHour(Minute) AS Hour, Source, Target, ConnectionType,
    sum(Calls), sum(Errors),
    quantileTDigestMergeState(ClientLatency), quantileTDigestMergeState(ServerLatency),
    sum(ClientDurationSum), sum(ServerDurationSum),
    -- No alias: `AS Version` would shadow the column in the WHERE below.
    toUInt64(1)
FROM
(
    SELECT Minute, Source, Target, ConnectionType, Calls, Errors, ClientLatency,
           ServerLatency, ClientDurationSum, ServerDurationSum, Version,
           max(Version) OVER (PARTITION BY Minute) AS LatestVersion
    FROM otel_edges_1m FINAL
)
WHERE Version = LatestVersion
GROUP BY Hour, Source, Target, ConnectionType;
