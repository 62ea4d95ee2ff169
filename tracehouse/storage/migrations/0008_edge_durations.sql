-- Total client- and server-observed time per edge and minute (ns), beside the t-digests of
-- migration 0005: averages and a caller's time spent per downstream edge are additive, which
-- quantiles are not (slow-service causes, query/slow_services.py). Rows computed before this
-- migration read 0 until the worker recomputes their minute.
ALTER TABLE ${otel_edges_1m} ${on_cluster}
    ADD COLUMN IF NOT EXISTS ClientDurationSum UInt64 CODEC(ZSTD(1)) AFTER ServerLatency,
    ADD COLUMN IF NOT EXISTS ServerDurationSum UInt64 CODEC(ZSTD(1)) AFTER ClientDurationSum;

-- cluster-only
-- The Distributed front: the same columns, as CREATE ... AS copied them in 0005.
ALTER TABLE otel_edges_1m ${on_cluster}
    ADD COLUMN IF NOT EXISTS ClientDurationSum UInt64 CODEC(ZSTD(1)) AFTER ServerLatency,
    ADD COLUMN IF NOT EXISTS ServerDurationSum UInt64 CODEC(ZSTD(1)) AFTER ClientDurationSum;
