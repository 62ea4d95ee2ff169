"""The SQL a diagnosis runs: the rollup figures of the diagnosed entry spans, the bounded
sample of their traces, and the spans of those traces (read by trace id)."""

from __future__ import annotations

from tracehouse.storage.conventions import IS_ERROR, SPAN_KIND

# Calls and errors of the service's (or operation's) entry spans, window and baseline.
RED_SQL = """
WITH
    Minute >= fromUnixTimestamp({start:Int64}) AND Minute < fromUnixTimestamp({end:Int64})
    AS Current,
    Minute >= fromUnixTimestamp({base_start:Int64})
        AND Minute < fromUnixTimestamp({base_end:Int64}) AS Base
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
WHERE ServiceName = {service:String}
  AND ({operation:String} = '' OR SpanName = {operation:String})
  AND Kind IN ('server', 'consumer')
  AND (Current OR Base)
"""

_ENTRY_SPANS = """
    SELECT TraceId AS trace_id, SpanId AS span_id, Duration AS duration_ns,
           toUnixTimestamp64Nano(Timestamp) AS start_ns, {failed} AS failed
    FROM otel_traces
    WHERE ServiceName = {{service:String}}
      AND ({{operation:String}} = '' OR SpanName = {{operation:String}})
      AND Timestamp >= fromUnixTimestamp({{{start}:Int64}})
      AND Timestamp < fromUnixTimestamp({{{end}:Int64}})
      AND SpanKind IN ('Server', 'SPAN_KIND_SERVER', 'Consumer', 'SPAN_KIND_CONSUMER')
      AND TraceId != ''"""


def _samples(side: str, start: str, end: str) -> str:
    entries = _ENTRY_SPANS.format(failed=IS_ERROR, start=start, end=end)
    return f"""
SELECT * FROM (
    SELECT *, '{side}' AS side, 'slowest' AS reason FROM ({entries})
    ORDER BY duration_ns DESC LIMIT {{n:UInt32}}
)
UNION ALL
SELECT * FROM (
    SELECT *, '{side}' AS side, 'random' AS reason FROM ({entries})
    ORDER BY cityHash64(span_id) LIMIT {{n:UInt32}}
)
UNION ALL
SELECT * FROM (
    SELECT *, '{side}' AS side, 'failed' AS reason FROM ({entries} AND {IS_ERROR})
    ORDER BY cityHash64(span_id) LIMIT {{n:UInt32}}
)"""


# The bounded samples of the window and of the baseline (``side``): the slowest n entry
# spans, n drawn at random (by a hash of the span id, so a window always gives the same
# sample) and n failed ones at random.
SAMPLE_SQL = (
    _samples("window", "start", "end")
    + "\nUNION ALL"
    + _samples("baseline", "base_start", "base_end")
)

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
# (tracehouse/topology/edges.py): peer service, server address, database namespace/system,
# messaging destination.
_PEER = """multiIf(
        SpanAttributes['service.peer.name'] != '', SpanAttributes['service.peer.name'],
        SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'],
        SpanAttributes['server.address'] != '', SpanAttributes['server.address'],
        SpanAttributes['net.peer.name'] != '', SpanAttributes['net.peer.name'],
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
