"""The worker's service-graph job: recompute ``otel_edges_1m`` from ``otel_traces``.

Each run recomputes every closed minute of a trailing window with one ``INSERT … SELECT``:

- **service** edges: a client/producer span (the parent) and its server/consumer child
  (``child.ParentSpanId = parent.SpanId`` in the same trace) in different services. Children
  are read from a wider time range than parents (``child_slack_s`` either side), so a child
  sent in another request, batch or minutes later still pairs once a later run sees it — that
  is why the window is recomputed rather than joined at insert time.
- **database / messaging / external** edges: a client/producer span without a server child,
  to a virtual peer named from its attributes (new semantic-convention keys first).
- **user** edges: root server spans (no parent), from the node ``user``.

Every row of a run carries the same ``Version``; readers keep each minute's latest version
(see migration 0005), so recomputing a minute replaces its edges instead of adding to them.
The run then recomputes the hours its minutes fall in into ``otel_edges_1h`` (migration 0014)
from their latest minute edges, under the same ``Version``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tracehouse.storage.conventions import IS_ERROR, SPAN_KIND

log = logging.getLogger(__name__)

_MINUTE = 60
_HOUR = 3600
_NS = 1_000_000_000

# The virtual peer of a client span: service.peer.name | peer.service, then
# server.address | net.peer.name (with :port from server.port | net.peer.port), then
# network.peer.address, db.namespace | db.name, db.system.name | db.system,
# messaging.destination.name; '' when none is set (no edge then).
_PEER_NAME = """multiIf(
            SpanAttributes['service.peer.name'] != '', SpanAttributes['service.peer.name'],
            SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'],
            PeerHost != '', concat(PeerHost, if(PeerPort != '', concat(':', PeerPort), '')),
            SpanAttributes['network.peer.address'] != '', SpanAttributes['network.peer.address'],
            SpanAttributes['db.namespace'] != '', SpanAttributes['db.namespace'],
            SpanAttributes['db.name'] != '', SpanAttributes['db.name'],
            SpanAttributes['db.system.name'] != '', SpanAttributes['db.system.name'],
            SpanAttributes['db.system'] != '', SpanAttributes['db.system'],
            SpanAttributes['messaging.destination.name'])"""
_PEER_TYPE = """multiIf(
            SpanAttributes['db.system.name'] != '' OR SpanAttributes['db.system'] != '',
                'database',
            SpanAttributes['messaging.system'] != '', 'messaging',
            'external')"""

# One run: parents (client/producer spans) whose Timestamp is in [start_ns, end_ns), joined
# to server/consumer children in [start_ns - slack, end_ns + slack]; plus root server spans
# in [start_ns, end_ns). A paired child of the same service gives no edge (Target '').
# distributed_product_mode = local: in cluster mode each shard joins its own spans, which is
# correct because every span of a trace is on the same shard (sharding by TraceId).
BUILD_EDGES_SQL = f"""
INSERT INTO otel_edges_1m
    (Minute, Source, Target, ConnectionType, Calls, Errors, ClientLatency, ServerLatency,
     ClientDurationSum, ServerDurationSum, Version)
SELECT
    Minute,
    Source,
    Target,
    ConnectionType,
    count() AS Calls,
    countIf(Failed) AS Errors,
    quantileTDigestStateIf(ClientDuration, HasClient) AS ClientLatency,
    quantileTDigestStateIf(ServerDuration, HasServer) AS ServerLatency,
    sumIf(ClientDuration, HasClient) AS ClientDurationSum,
    sumIf(ServerDuration, HasServer) AS ServerDurationSum,
    {{version:UInt64}} AS Version
FROM
(
    SELECT
        toStartOfMinute(toDateTime(p.Timestamp)) AS Minute,
        p.ServiceName AS Source,
        multiIf(c.SpanId = '', p.PeerName, c.ServiceName != p.ServiceName, c.ServiceName, '')
            AS Target,
        if(c.SpanId = '', p.PeerType, 'service') AS ConnectionType,
        p.Failed OR (c.SpanId != '' AND c.Failed) AS Failed,
        p.Duration AS ClientDuration,
        1 AS HasClient,
        c.Duration AS ServerDuration,
        c.SpanId != '' AS HasServer
    FROM
    (
        SELECT
            Timestamp,
            TraceId,
            SpanId,
            ServiceName,
            Duration,
            {IS_ERROR} AS Failed,
            if(SpanAttributes['server.address'] != '',
                SpanAttributes['server.address'], SpanAttributes['net.peer.name']) AS PeerHost,
            if(SpanAttributes['server.port'] != '',
                SpanAttributes['server.port'], SpanAttributes['net.peer.port']) AS PeerPort,
            {_PEER_NAME} AS PeerName,
            {_PEER_TYPE} AS PeerType
        FROM otel_traces
        WHERE Timestamp >= fromUnixTimestamp64Nano({{start_ns:Int64}})
          AND Timestamp < fromUnixTimestamp64Nano({{end_ns:Int64}})
          AND {SPAN_KIND} IN ('client', 'producer')
    ) AS p
    LEFT JOIN
    (
        SELECT TraceId, SpanId, ParentSpanId, ServiceName, Duration, {IS_ERROR} AS Failed
        FROM otel_traces
        WHERE Timestamp >= fromUnixTimestamp64Nano({{child_start_ns:Int64}})
          AND Timestamp < fromUnixTimestamp64Nano({{child_end_ns:Int64}})
          AND ParentSpanId != ''
          AND {SPAN_KIND} IN ('server', 'consumer')
    ) AS c
    ON c.TraceId = p.TraceId AND c.ParentSpanId = p.SpanId

    UNION ALL

    SELECT
        toStartOfMinute(toDateTime(Timestamp)) AS Minute,
        'user' AS Source,
        ServiceName AS Target,
        'user' AS ConnectionType,
        {IS_ERROR} AS Failed,
        toUInt64(0) AS ClientDuration,
        0 AS HasClient,
        Duration AS ServerDuration,
        1 AS HasServer
    FROM otel_traces
    WHERE Timestamp >= fromUnixTimestamp64Nano({{start_ns:Int64}})
      AND Timestamp < fromUnixTimestamp64Nano({{end_ns:Int64}})
      AND ParentSpanId = ''
      AND {SPAN_KIND} = 'server'
)
WHERE Target != ''
GROUP BY Minute, Source, Target, ConnectionType
SETTINGS join_use_nulls = 0, distributed_product_mode = 'local'
"""

# --- reading the edges back -------------------------------------------------------------

_IN_WINDOW = (
    "Minute >= fromUnixTimestamp({start:Int64}) AND Minute < fromUnixTimestamp({end:Int64})"
)


def latest_edges(minutes: str = _IN_WINDOW, table: str = "otel_edges_1m") -> str:
    """A subquery: each minute's edges as of its latest recomputation (FINAL: the newest row
    per key; the window function: drop keys a later run of that minute no longer produced),
    for the minutes the condition ``minutes`` selects. Readers keep ``Version =
    LatestVersion``. With ``table="otel_edges_1h"`` the same for hours (``Hour`` read as
    ``Minute``; the condition is on ``Hour``)."""
    period = "Hour" if table == "otel_edges_1h" else "Minute"
    return f"""
    SELECT {period} AS Minute, Source, Target, ConnectionType, Calls, Errors, ClientLatency,
           ServerLatency, ClientDurationSum, ServerDurationSum, Version,
           max(Version) OVER (PARTITION BY {period}) AS LatestVersion
    FROM {table} FINAL
    WHERE {minutes}
"""


def edges_in(*ranges: tuple[str, str]) -> str:
    """The latest edges of time ranges, each given as its conditions on ``Minute`` (the minutes
    read from the minute table) and on ``Hour`` (the whole hours read from the hourly table,
    migration 0014): ``query._rollups.whole_hours``. Readers keep ``Version = LatestVersion``
    as for minutes."""
    parts = []
    for minutes, hours in ranges:
        parts += [latest_edges(minutes), latest_edges(hours, "otel_edges_1h")]
    return "\n    UNION ALL\n".join(parts)


# After the minutes: the hours they fall in, from those hours' latest minute edges, under the
# run's Version (migration 0014); readers take whole hours from here.
BUILD_HOURS_SQL = f"""
INSERT INTO otel_edges_1h
    (Hour, Source, Target, ConnectionType, Calls, Errors, ClientLatency, ServerLatency,
     ClientDurationSum, ServerDurationSum, Version)
SELECT
    toStartOfHour(Minute) AS Hour,
    Source,
    Target,
    ConnectionType,
    sum(Calls),
    sum(Errors),
    quantileTDigestMergeState(ClientLatency),
    quantileTDigestMergeState(ServerLatency),
    sum(ClientDurationSum),
    sum(ServerDurationSum),
    {{version:UInt64}}  -- no alias: `AS Version` would shadow the column in the WHERE below
FROM
({
    latest_edges(
        "Minute >= fromUnixTimestamp({hours_start:Int64}) "
        "AND Minute < fromUnixTimestamp({hours_end:Int64})"
    )
})
WHERE Version = LatestVersion
GROUP BY Hour, Source, Target, ConnectionType
"""


@dataclass(frozen=True)
class RunWindow:
    """The closed minutes one run recomputes: ``[start, end)``, whole minutes."""

    start: dt.datetime
    end: dt.datetime


class EdgeBuilder:
    """Recomputes the service-graph edges of a trailing window of minutes.

    ``lag_s``: a minute is recomputed once it ended at least this long ago (spans of the
    last seconds are still arriving). ``window_min``: how many minutes back every run
    recomputes, so late children still pair. ``child_slack_s``: how far before and after
    the window children are looked for.
    """

    def __init__(
        self,
        client: Any,
        lag_s: float = 30.0,
        window_min: int = 15,
        child_slack_s: int = 300,
    ) -> None:
        if window_min < 1:
            raise ValueError("window_min must be at least 1")
        if lag_s < 0 or child_slack_s < 0:
            raise ValueError("lag_s and child_slack_s must not be negative")
        self._client = client
        self.lag_s = lag_s
        self.window_min = window_min
        self.child_slack_s = child_slack_s
        self._last_version = 0
        self.last_run: dt.datetime | None = None
        self.last_error: str | None = None
        self.runs = 0
        self.failures = 0

    def window(self, now: dt.datetime) -> RunWindow:
        """The closed minutes from ``now - window_min`` to ``now - lag_s``."""
        end_s = int((now.timestamp() - self.lag_s) // _MINUTE) * _MINUTE
        start_s = int((now.timestamp() - self.window_min * _MINUTE) // _MINUTE) * _MINUTE
        return RunWindow(
            start=dt.datetime.fromtimestamp(start_s, dt.UTC),
            end=dt.datetime.fromtimestamp(max(start_s, end_s), dt.UTC),
        )

    def run_once(self, now: dt.datetime | None = None) -> RunWindow:
        """Recompute the window's edges (one INSERT … SELECT). Raises what the query raises;
        ``last_run``/``last_error`` record the outcome either way."""
        at = now or dt.datetime.now(dt.UTC)
        window = self.window(at)
        # Strictly increasing, also for runs within one clock tick.
        version = max(time.time_ns(), self._last_version + 1)
        self._last_version = version
        start_ns = int(window.start.timestamp()) * _NS
        end_ns = int(window.end.timestamp()) * _NS
        slack_ns = self.child_slack_s * _NS
        start_s, end_s = int(window.start.timestamp()), int(window.end.timestamp())
        try:
            if end_ns > start_ns:
                self._client.command(
                    BUILD_EDGES_SQL,
                    parameters={
                        "version": version,
                        "start_ns": start_ns,
                        "end_ns": end_ns,
                        "child_start_ns": start_ns - slack_ns,
                        "child_end_ns": end_ns + slack_ns,
                    },
                )
                self._client.command(
                    BUILD_HOURS_SQL,
                    parameters={
                        "version": version,
                        "hours_start": start_s // _HOUR * _HOUR,
                        "hours_end": -(-end_s // _HOUR) * _HOUR,
                    },
                )
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.runs += 1
            self.last_run = dt.datetime.now(dt.UTC)
        self.last_error = None
        return window


class EdgeWorker:
    """Runs an :class:`EdgeBuilder` every ``interval_s`` in a daemon thread. A failing run is
    logged and counted (``builder.failures``, ``builder.last_error``), never fatal."""

    def __init__(self, builder: EdgeBuilder, interval_s: float = 15.0) -> None:
        self.builder = builder
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="topology-edges", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the loop to end and wait for a run in progress. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.builder.run_once()
            except Exception:
                log.exception("topology edge run failed (will retry in %.0f s)", self.interval_s)
            self._stop.wait(self.interval_s)
