-- Service-graph edges per minute (DESIGN.md §3, topology/), filled by the worker's EdgeBuilder
-- (tracehouse/topology/edges.py), not by a materialized view: a client span and its server
-- child arrive in different requests, batches and even minutes, so an insert-time self-join
-- would miss pairs. The worker recomputes every minute of a trailing window instead, writing
-- all of a minute's edges with one Version (the time they were computed, ns since the epoch).
-- ReplacingMergeTree(Version) keeps the newest row per key once parts merge; readers use FINAL
-- and keep, per Minute, only the rows of that minute's latest Version, so an edge that a later
-- run no longer finds (a virtual peer that became a real server once the child arrived)
-- disappears at once. Minute is the client span's minute (the server span's for `user` edges).
CREATE TABLE IF NOT EXISTS ${otel_edges_1m} ${on_cluster} (
    Minute DateTime CODEC(Delta, ZSTD(1)),
    -- A service name, or `user` for root server spans (ConnectionType `user`).
    Source LowCardinality(String) CODEC(ZSTD(1)),
    -- A service name, or a virtual peer (database, messaging destination, external host).
    Target LowCardinality(String) CODEC(ZSTD(1)),
    -- service: client/producer -> server/consumer span pair across services,
    -- database | messaging | external: a client/producer span without a server child, to a
    -- virtual peer node of that type, user: a root server span.
    ConnectionType LowCardinality(String) CODEC(ZSTD(1)),
    Calls UInt64 CODEC(ZSTD(1)),
    -- Calls where the client or the server span has an error status.
    Errors UInt64 CODEC(ZSTD(1)),
    -- t-digests of Duration (ns): as the client saw it (client span), as the server saw it
    -- (server span). Empty states where there is no such span (virtual peers, user edges).
    ClientLatency AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1)),
    ServerLatency AggregateFunction(quantileTDigest, UInt64) CODEC(ZSTD(1)),
    Version UInt64 CODEC(ZSTD(1))
) ENGINE = ${engine_otel_edges_1m}
PARTITION BY toDate(Minute)
ORDER BY (Minute, Source, Target, ConnectionType)
${ttl_otel_edges_1m}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1;

-- cluster-only
-- The worker's INSERT ... SELECT joins spans shard by shard (distributed_product_mode = local):
-- that is correct because all spans of one trace share a shard (otel_traces is sharded by
-- cityHash64(TraceId)). Its result rows may land on any shard; readers merge them all.
CREATE TABLE IF NOT EXISTS otel_edges_1m ${on_cluster} AS ${otel_edges_1m}
ENGINE = Distributed(${cluster_name}, currentDatabase(), ${otel_edges_1m}, rand());
