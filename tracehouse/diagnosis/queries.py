"""The SQL a diagnosis runs: the rollup figures of the diagnosed entry spans, the bounded
sample of their traces, and the spans of those traces (read by trace id)."""

from __future__ import annotations

from tracehouse.query._rollups import ENTRY_KINDS, WINDOW_AND_BASELINE
from tracehouse.storage.conventions import IS_ERROR, SPAN_KIND
from tracehouse.topology.edges import latest_edges

# Calls and errors of the service's (or operation's) entry spans, window and baseline.
RED_SQL = f"""
WITH {WINDOW_AND_BASELINE}
SELECT
    sumIf(Calls, Current) AS calls,
    sumIf(Errors, Current) AS errors,
    sumIf(DurationSum, Current) AS total_ns,
    quantilesTDigestMergeIf(0.5, 0.95, 0.99)(DurationQuantiles, Current) AS quantiles,
    sumIf(Calls, Base) AS base_calls,
    sumIf(Errors, Base) AS base_errors,
    sumIf(DurationSum, Base) AS base_total_ns,
    quantilesTDigestMergeIf(0.5, 0.95, 0.99)(DurationQuantiles, Base) AS base_quantiles
FROM otel_red_1m
WHERE ServiceName = {{service:String}}
  AND ({{operation:String}} = '' OR SpanName = {{operation:String}})
  AND Kind IN {ENTRY_KINDS}
  AND (Current OR Base)
"""

# The bounded samples of the window and of the baseline (``side``), in one scan of the
# service's entry spans: the slowest n, n drawn at random (by a hash of the span id, so a
# window always gives the same sample) and n failed ones at random. ``reason`` is the first
# of slowest, random, failed that chose the span.
SAMPLE_SQL = f"""
SELECT trace_id, span_id, duration_ns, start_ns, failed, side,
       multiIf(by_duration <= {{n:UInt32}}, 'slowest',
               by_hash <= {{n:UInt32}}, 'random', 'failed') AS reason
FROM (
    SELECT
        TraceId AS trace_id,
        SpanId AS span_id,
        Duration AS duration_ns,
        toUnixTimestamp64Nano(Timestamp) AS start_ns,
        {IS_ERROR} AS failed,
        if(Timestamp >= fromUnixTimestamp({{start:Int64}})
           AND Timestamp < fromUnixTimestamp({{end:Int64}}), 'window', 'baseline') AS side,
        row_number() OVER (PARTITION BY side ORDER BY duration_ns DESC, span_id) AS by_duration,
        row_number() OVER (PARTITION BY side ORDER BY cityHash64(span_id), span_id) AS by_hash,
        row_number() OVER (PARTITION BY side, failed ORDER BY cityHash64(span_id), span_id)
            AS by_failure
    FROM otel_traces
    WHERE ServiceName = {{service:String}}
      AND ({{operation:String}} = '' OR SpanName = {{operation:String}})
      AND ((Timestamp >= fromUnixTimestamp({{start:Int64}})
            AND Timestamp < fromUnixTimestamp({{end:Int64}}))
        OR (Timestamp >= fromUnixTimestamp({{base_start:Int64}})
            AND Timestamp < fromUnixTimestamp({{base_end:Int64}})))
      AND SpanKind IN ('Server', 'SPAN_KIND_SERVER', 'Consumer', 'SPAN_KIND_CONSUMER')
      AND TraceId != ''
)
WHERE by_duration <= {{n:UInt32}} OR by_hash <= {{n:UInt32}}
   OR (failed AND by_failure <= {{n:UInt32}})
"""

# The statement's fingerprint as migrations 0004/0009 compute it for otel_db_1m (there a
# doubled dollar sign is the template's escape of one), so a SQL cause names the same
# fingerprint as /api/v1/sql and /api/v1/slow-services.
_QUERY_TEXT = (
    "if(SpanAttributes['db.query.text'] != '', SpanAttributes['db.query.text'], "
    "SpanAttributes['db.statement'])"
)
_NORMALIZED = f"""trimBoth(replaceRegexpAll(replaceRegexpAll(replaceRegexpAll(
        normalizeQueryKeepNames({_QUERY_TEXT}),
        '[$][0-9]+|%(?:[(][A-Za-z0-9_]+[)])?s', '?'),
        '[(][[:space:]]*[?](?:[.][.])?(?:[[:space:]]*,[[:space:]]*[?](?:[.][.])?)*[[:space:]]*[)]',
        '(?..)'),
        '[(][?][.][.][)](?:[[:space:]]*,[[:space:]]*[(][?][.][.][)])+', '(?..), ...'))"""

# The peer of a client span without a server child, in the edge builder's order
# (tracehouse/topology/edges.py): peer service, server address (and port), peer address,
# database namespace/system, messaging destination.
_HOST = (
    "if(SpanAttributes['server.address'] != '', SpanAttributes['server.address'], "
    "SpanAttributes['net.peer.name'])"
)
_PORT = (
    "if(SpanAttributes['server.port'] != '', SpanAttributes['server.port'], "
    "SpanAttributes['net.peer.port'])"
)
_PEER = f"""multiIf(
        SpanAttributes['service.peer.name'] != '', SpanAttributes['service.peer.name'],
        SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'],
        {_HOST} != '', concat({_HOST}, if({_PORT} != '', concat(':', {_PORT}), '')),
        SpanAttributes['network.peer.address'] != '', SpanAttributes['network.peer.address'],
        SpanAttributes['db.namespace'] != '', SpanAttributes['db.namespace'],
        SpanAttributes['db.name'] != '', SpanAttributes['db.name'],
        SpanAttributes['db.system.name'] != '', SpanAttributes['db.system.name'],
        SpanAttributes['db.system'] != '', SpanAttributes['db.system'],
        SpanAttributes['messaging.destination.name'])"""

# Every span of the sampled traces, within the two ranges the traces can lie in.
SPANS_SQL = f"""
SELECT
    TraceId AS trace_id,
    SpanId AS span_id,
    ParentSpanId AS parent_span_id,
    ServiceName AS service,
    SpanName AS name,
    {SPAN_KIND} AS kind,
    toUnixTimestamp64Nano(Timestamp) AS start_ns,
    Duration AS duration_ns,
    {IS_ERROR} AS failed,
    if(ResourceAttributes['service.instance.id'] != '',
       ResourceAttributes['service.instance.id'], ResourceAttributes['host.name']) AS instance,
    if(SpanAttributes['db.system.name'] != '',
       SpanAttributes['db.system.name'], SpanAttributes['db.system']) AS db_system,
    {_QUERY_TEXT} != '' AS has_statement,
    if(has_statement, cityHash64(lowerUTF8({_NORMALIZED})), 0) AS fingerprint,
    if(has_statement, substringUTF8({_NORMALIZED}, 1, 4096), '') AS statement,
    {_PEER} AS peer
FROM otel_traces
WHERE TraceId IN {{trace_ids:Array(String)}}
  AND ((Timestamp >= fromUnixTimestamp64Nano({{start_ns:Int64}})
        AND Timestamp < fromUnixTimestamp64Nano({{end_ns:Int64}}))
    OR (Timestamp >= fromUnixTimestamp64Nano({{base_start_ns:Int64}})
        AND Timestamp < fromUnixTimestamp64Nano({{base_end_ns:Int64}})))
"""

# The service graph around the sampled services (otel_edges_1m, latest recomputation of
# each minute), as /api/v1/topology reads it.
EDGES_SQL = f"""
SELECT DISTINCT Source AS source, Target AS target, ConnectionType AS type
FROM ({latest_edges()})
WHERE Version = LatestVersion
  AND ConnectionType != 'user'
  AND has({{services:Array(String)}}, Source)
"""
