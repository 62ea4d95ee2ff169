-- The slow-call thresholds of database calls come from the configuration
-- (slow_sql_thresholds, SkyWalking's form `default:200,redis:10`) instead of being fixed:
-- the view of 0004 gets the same query with the configured thresholds. Whenever they change,
-- `migrate` (and the start in embedded mode) renders this statement again
-- (Migrator.reconcile_slow_sql_thresholds). Minutes already rolled up keep the thresholds
-- they were counted with (SlowThresholdMs).
ALTER TABLE otel_db_1m_mv ${on_cluster}
MODIFY QUERY WITH
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
    -- Slow-call threshold in ms per database system (setting slow_sql_thresholds).
    ${slow_sql_threshold_ms} AS ThresholdMs
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
