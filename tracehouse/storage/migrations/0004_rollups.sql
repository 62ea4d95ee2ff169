-- Minute rollups of otel_traces, filled by materialized views on the raw table, so rows from
-- any writer (our ingest or a Collector inserting into otel_traces directly) are counted.
-- Readers always aggregate (sum / min / max of the simple columns, -Merge of the states):
-- rows of one minute are merged in the background, may sit on several shards, and the
-- Distributed tables of cluster mode combine the shards' partial states.
-- The kind and error expressions are those of tracehouse/storage/conventions.py, frozen here
-- with the migration (tests/storage/test_rollups.py checks they agree).

-- RED (rate, errors, duration) per minute, service, operation and lower-case span kind.
CREATE TABLE IF NOT EXISTS ${otel_red_1m} ${on_cluster} (
    Minute DateTime CODEC(Delta, ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    Kind LowCardinality(String) CODEC(ZSTD(1)),
    Calls SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    Errors SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationSum SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationMin SimpleAggregateFunction(min, UInt64) CODEC(ZSTD(1)),
    DurationMax SimpleAggregateFunction(max, UInt64) CODEC(ZSTD(1)),
    -- Level-free t-digest of Duration (ns): read any quantile with quantilesTDigestMerge(...).
    DurationQuantiles AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1))
) ENGINE = ${engine_otel_red_1m}
PARTITION BY toDate(Minute)
ORDER BY (ServiceName, Minute, SpanName, Kind)
${ttl_otel_red_1m}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1${dedup_setting};

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_red_1m ${on_cluster} AS ${otel_red_1m}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_red_1m}, rand());

CREATE MATERIALIZED VIEW IF NOT EXISTS otel_red_1m_mv ${on_cluster}
TO ${otel_red_1m}
AS SELECT
    toStartOfMinute(toDateTime(Timestamp)) AS Minute,
    ServiceName,
    SpanName,
    multiIf(
        SpanKind IN ('Server', 'SPAN_KIND_SERVER'), 'server',
        SpanKind IN ('Client', 'SPAN_KIND_CLIENT'), 'client',
        SpanKind IN ('Producer', 'SPAN_KIND_PRODUCER'), 'producer',
        SpanKind IN ('Consumer', 'SPAN_KIND_CONSUMER'), 'consumer',
        SpanKind IN ('Internal', 'SPAN_KIND_INTERNAL'), 'internal',
        'unspecified') AS Kind,
    count() AS Calls,
    countIf(StatusCode IN ('Error', 'STATUS_CODE_ERROR')) AS Errors,
    sum(Duration) AS DurationSum,
    min(Duration) AS DurationMin,
    max(Duration) AS DurationMax,
    quantileTDigestState(Duration) AS DurationQuantiles
FROM ${otel_traces}
GROUP BY Minute, ServiceName, SpanName, Kind;

-- Database calls per minute, calling service, database system, namespace and SQL fingerprint
-- (docs/decisions/0005-sql-fingerprint.md). Only spans carrying a statement are counted.
CREATE TABLE IF NOT EXISTS ${otel_db_1m} ${on_cluster} (
    Minute DateTime CODEC(Delta, ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    DbSystem LowCardinality(String) CODEC(ZSTD(1)),
    DbNamespace LowCardinality(String) CODEC(ZSTD(1)),
    -- cityHash64 of the lower-cased normalized statement (before truncation).
    Fingerprint UInt64 CODEC(ZSTD(1)),
    -- At most 4096 characters each; the sample keeps the literals of one call.
    NormalizedStatement SimpleAggregateFunction(any, String) CODEC(ZSTD(1)),
    SampleStatement SimpleAggregateFunction(any, String) CODEC(ZSTD(1)),
    Calls SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    Errors SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    -- Calls taking at least SlowThresholdMs (fixed per DbSystem in the view below).
    SlowCalls SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    SlowThresholdMs SimpleAggregateFunction(max, UInt32) CODEC(ZSTD(1)),
    DurationSum SimpleAggregateFunction(sum, UInt64) CODEC(ZSTD(1)),
    DurationMax SimpleAggregateFunction(max, UInt64) CODEC(ZSTD(1)),
    DurationQuantiles AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1)),
    ExemplarTraceIds AggregateFunction(groupUniqArray(5), String) CODEC(ZSTD(1)),
    SlowestTraceId AggregateFunction(argMax, String, UInt64) CODEC(ZSTD(1))
) ENGINE = ${engine_otel_db_1m}
PARTITION BY toDate(Minute)
ORDER BY (ServiceName, Minute, DbSystem, DbNamespace, Fingerprint)
${ttl_otel_db_1m}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1${dedup_setting};

-- cluster-only
CREATE TABLE IF NOT EXISTS otel_db_1m ${on_cluster} AS ${otel_db_1m}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_db_1m}, rand());

-- New semantic-convention keys first, the old ones as fallback. The fingerprint text is
-- ClickHouse's normalizeQueryKeepNames (literals -> ?, literal lists -> (?..), identifiers
-- kept), then: driver placeholders ($$1, %s, %(name)s) -> ?, any parenthesised list of
-- placeholders -> (?..), and a run of such tuples (multi-row VALUES) -> one "(?..), ...".
-- (Migrations are templates: a doubled dollar sign there is one dollar sign in SQL.)
CREATE MATERIALIZED VIEW IF NOT EXISTS otel_db_1m_mv ${on_cluster}
TO ${otel_db_1m}
AS WITH
    if(SpanAttributes['db.query.text'] != '',
        SpanAttributes['db.query.text'], SpanAttributes['db.statement']) AS QueryText,
    if(SpanAttributes['db.system.name'] != '',
        SpanAttributes['db.system.name'], SpanAttributes['db.system']) AS SystemName,
    if(SpanAttributes['db.namespace'] != '',
        SpanAttributes['db.namespace'], SpanAttributes['db.name']) AS NamespaceName,
    trimBoth(replaceRegexpAll(replaceRegexpAll(replaceRegexpAll(
        normalizeQueryKeepNames(QueryText),
        '[$$][0-9]+|%(?:[(][A-Za-z0-9_]+[)])?s', '?'),
        '[(][[:space:]]*[?](?:[.][.])?(?:[[:space:]]*,[[:space:]]*[?](?:[.][.])?)*[[:space:]]*[)]',
        '(?..)'),
        '[(][?][.][.][)](?:[[:space:]]*,[[:space:]]*[(][?][.][.][)])+', '(?..), ...')
    ) AS Normalized,
    -- Slow-call threshold in ms per database system; others 200 ms.
    transform(SystemName, ['redis', 'memcached'], [10, 10], 200) AS ThresholdMs
SELECT
    toStartOfMinute(toDateTime(Timestamp)) AS Minute,
    ServiceName,
    SystemName AS DbSystem,
    NamespaceName AS DbNamespace,
    cityHash64(lowerUTF8(Normalized)) AS Fingerprint,
    any(substringUTF8(Normalized, 1, 4096)) AS NormalizedStatement,
    any(substringUTF8(QueryText, 1, 4096)) AS SampleStatement,
    count() AS Calls,
    countIf(StatusCode IN ('Error', 'STATUS_CODE_ERROR')) AS Errors,
    countIf(Duration >= toUInt64(ThresholdMs) * 1000000) AS SlowCalls,
    max(toUInt32(ThresholdMs)) AS SlowThresholdMs,
    sum(Duration) AS DurationSum,
    max(Duration) AS DurationMax,
    quantileTDigestState(Duration) AS DurationQuantiles,
    groupUniqArrayState(5)(TraceId) AS ExemplarTraceIds,
    argMaxState(TraceId, Duration) AS SlowestTraceId
FROM ${otel_traces}
WHERE QueryText != ''
GROUP BY Minute, ServiceName, DbSystem, DbNamespace, Fingerprint;
