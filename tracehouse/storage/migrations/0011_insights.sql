-- Insight events (tracehouse/diagnosis/insights.py, docs/diagnosis.md): sudden increases of the
-- error rate or latency of a service's entry spans, or of one of its five busiest endpoints,
-- found by the worker's insights job, each with the diagnosis of the affected service (JSON,
-- as GET /api/v1/diagnose answers). A small table, not telemetry: in cluster mode one replica
-- set across every node (storage/schema.py _SHARED_TABLES), like the alerting state. An
-- insight is written once; Version only orders a rewrite of the same Id (a retried run).
CREATE TABLE IF NOT EXISTS tracehouse_insights ${on_cluster} (
    Id String,
    DetectedAt DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    WindowStart DateTime('UTC'),
    WindowEnd DateTime('UTC'),
    BaselineStart DateTime('UTC'),
    BaselineEnd DateTime('UTC'),
    -- latency | error_rate
    Kind LowCardinality(String),
    Service String,
    -- '' for the service's entry spans as a whole, else the endpoint (span name)
    Operation String,
    Value Float64,
    BaselineValue Float64,
    AvgMs Float64,
    BaselineAvgMs Float64,
    P95Ms Float64,
    BaselineP95Ms Float64,
    ErrorRate Float64,
    BaselineErrorRate Float64,
    Calls UInt64,
    BaselineCalls UInt64,
    Diagnosis String CODEC(ZSTD(3)),
    DiagnosisError String,
    Version UInt64
) ENGINE = ${engine_tracehouse_insights}
PARTITION BY toYYYYMM(DetectedAt)
ORDER BY (Service, Id);
