-- Who changed what through the API (tracehouse/access): every request other than GET, HEAD
-- and OPTIONS under /api/, with the token's name and role and the answer's status — never the
-- token or the request body (which may hold webhook secrets). A small state table: in cluster
-- mode one replica set across every node (storage/schema.py _SHARED_TABLES).
CREATE TABLE IF NOT EXISTS tracehouse_audit_log ${on_cluster} (
    At DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    Principal LowCardinality(String),
    Role LowCardinality(String),
    Method LowCardinality(String),
    Path String CODEC(ZSTD(1)),
    Status UInt16
) ENGINE = ${engine_tracehouse_audit_log}
PARTITION BY toYYYYMM(At)
ORDER BY At;
