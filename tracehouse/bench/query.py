"""``tracehouse bench query``: read-API latency over seeded spans, next to raw-span scans.

1. Starts tracehouse (the query role) in this process on the embedded engine, in a temporary
   directory or ``--data-dir``.
2. Seeds ``--spans`` realistic spans over the last ``--hours`` hours inside ClickHouse
   (:mod:`tracehouse.bench.seed`), ``--batch`` spans per statement, so the materialized views
   fill the rollups as real ingest does; then computes the service-graph edges of the whole
   range with the worker's :class:`~tracehouse.topology.EdgeBuilder`, an hour per run.
3. Times every read endpoint through the real HTTP API (loopback, one keep-alive connection
   per endpoint and window), over the last hour and the last 24 hours of the seeded range:
   median, p95 and fastest of ``--runs`` requests after one warm-up. Beside each, the same
   question answered by scanning raw spans (``otel_traces``) through the same engine,
   ``--raw-runs`` times.

Prints a table (``--markdown`` for docs/performance.md); exit 1 if an endpoint failed or
answered with nothing. Targets are shown, never enforced: this is a measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tracehouse.bench import seed
from tracehouse.storage.conventions import IS_ERROR, SPAN_KIND

_NS = 1_000_000_000
_HOUR = 3600
WINDOWS = {"1h": _HOUR, "24h": 24 * _HOUR}
# The service whose operations and traces are asked for (a busy mid-tier service).
SERVICE = "checkout"

# --- the same questions, answered from raw spans ------------------------------------------

_RAW_WINDOW = """Timestamp >= fromUnixTimestamp64Nano({start_ns:Int64})
  AND Timestamp < fromUnixTimestamp64Nano({end_ns:Int64})"""

# /services: RED of each service's entry spans.
RAW_SERVICES_SQL = f"""
SELECT ServiceName, count() AS calls, countIf({IS_ERROR}) AS errors, avg(Duration),
       min(Duration), max(Duration), quantilesTDigest(0.5, 0.95, 0.99)(Duration)
FROM otel_traces
WHERE {_RAW_WINDOW}
  AND {SPAN_KIND} IN ('server', 'consumer')
GROUP BY ServiceName
ORDER BY ServiceName
"""

# /services/{service}/operations: RED per span name and kind of one service.
RAW_OPERATIONS_SQL = f"""
SELECT SpanName, {SPAN_KIND} AS kind, count() AS calls, countIf({IS_ERROR}) AS errors,
       avg(Duration), min(Duration), max(Duration),
       quantilesTDigest(0.5, 0.95, 0.99)(Duration)
FROM otel_traces
WHERE ServiceName = {{service:String}}
  AND {_RAW_WINDOW}
GROUP BY SpanName, kind
ORDER BY calls DESC, SpanName, kind
"""

# /reports/top?entity=operation&by=p99&n=10.
RAW_TOP_OPERATIONS_SQL = f"""
SELECT ServiceName, SpanName, {SPAN_KIND} AS kind, count() AS calls,
       countIf({IS_ERROR}) AS errors, sum(Duration) AS total,
       quantilesTDigest(0.5, 0.95, 0.99)(Duration) AS q
FROM otel_traces
WHERE {_RAW_WINDOW}
GROUP BY ServiceName, SpanName, kind
ORDER BY q[3] DESC, calls DESC
LIMIT 10
"""

# /sql: statements by fingerprint, normalized as migration 0004's view does.
RAW_SQL_SQL = f"""
WITH
    if(SpanAttributes['db.query.text'] != '',
        SpanAttributes['db.query.text'], SpanAttributes['db.statement']) AS QueryText,
    trimBoth(replaceRegexpAll(replaceRegexpAll(replaceRegexpAll(
        normalizeQueryKeepNames(QueryText),
        '[$][0-9]+|%(?:[(][A-Za-z0-9_]+[)])?s', '?'),
        '[(][[:space:]]*[?](?:[.][.])?(?:[[:space:]]*,[[:space:]]*[?](?:[.][.])?)*[[:space:]]*[)]',
        '(?..)'),
        '[(][?][.][.][)](?:[[:space:]]*,[[:space:]]*[(][?][.][.][)])+', '(?..), ...')
    ) AS Normalized
SELECT cityHash64(lowerUTF8(Normalized)) AS fingerprint,
       if(SpanAttributes['db.system.name'] != '',
           SpanAttributes['db.system.name'], SpanAttributes['db.system']) AS system,
       if(SpanAttributes['db.namespace'] != '',
           SpanAttributes['db.namespace'], SpanAttributes['db.name']) AS namespace,
       any(Normalized), any(QueryText), count() AS calls, countIf({IS_ERROR}) AS errors,
       countIf(Duration >= if(system IN ('redis', 'memcached'), 10, 200) * 1000000) AS slow,
       sum(Duration) AS total, max(Duration),
       quantilesTDigest(0.5, 0.95, 0.99)(Duration),
       arraySort(groupUniqArray(ServiceName)), groupUniqArray(5)(TraceId),
       argMax(TraceId, Duration)
FROM otel_traces
WHERE {_RAW_WINDOW}
  AND QueryText != ''
GROUP BY fingerprint, system, namespace
ORDER BY total DESC
LIMIT 100
"""

# /topology: client/producer spans joined to their server/consumer children within the
# window (edges across services, virtual peers for unpaired calls), plus root server spans.
RAW_TOPOLOGY_SQL = f"""
SELECT Source, Target, Type, count() AS calls, countIf(Failed) AS errors,
       quantilesTDigestIf(0.5, 0.95, 0.99)(ClientDuration, HasClient),
       quantilesTDigestIf(0.5, 0.95, 0.99)(ServerDuration, HasServer)
FROM
(
    SELECT p.ServiceName AS Source,
           multiIf(c.SpanId = '', p.Peer, c.ServiceName != p.ServiceName, c.ServiceName, '')
               AS Target,
           if(c.SpanId = '', p.PeerType, 'service') AS Type,
           p.Failed OR (c.SpanId != '' AND c.Failed) AS Failed,
           p.Duration AS ClientDuration, 1 AS HasClient,
           c.Duration AS ServerDuration, c.SpanId != '' AS HasServer
    FROM
    (
        SELECT TraceId, SpanId, ServiceName, Duration, {IS_ERROR} AS Failed,
               multiIf(SpanAttributes['peer.service'] != '', SpanAttributes['peer.service'],
                       SpanAttributes['server.address'] != '',
                           concat(SpanAttributes['server.address'], ':',
                                  SpanAttributes['server.port']),
                       SpanAttributes['net.peer.name'] != '',
                           concat(SpanAttributes['net.peer.name'], ':',
                                  SpanAttributes['net.peer.port']),
                       SpanAttributes['messaging.destination.name']) AS Peer,
               multiIf(SpanAttributes['db.system.name'] != '' OR SpanAttributes['db.system'] != '',
                       'database', SpanAttributes['messaging.system'] != '', 'messaging',
                       'external') AS PeerType
        FROM otel_traces
        WHERE {_RAW_WINDOW}
          AND {SPAN_KIND} IN ('client', 'producer')
    ) AS p
    LEFT JOIN
    (
        SELECT TraceId, SpanId, ParentSpanId, ServiceName, Duration, {IS_ERROR} AS Failed
        FROM otel_traces
        WHERE {_RAW_WINDOW}
          AND ParentSpanId != ''
          AND {SPAN_KIND} IN ('server', 'consumer')
    ) AS c
    ON c.TraceId = p.TraceId AND c.ParentSpanId = p.SpanId

    UNION ALL

    SELECT 'user', ServiceName, 'user', {IS_ERROR}, toUInt64(0), 0, Duration, 1
    FROM otel_traces
    WHERE {_RAW_WINDOW}
      AND ParentSpanId = ''
      AND {SPAN_KIND} = 'server'
)
WHERE Target != ''
GROUP BY Source, Target, Type
ORDER BY Source, Target, Type
SETTINGS join_use_nulls = 0
"""

# /traces/{id} without the trace-id index: every part's TraceId bloom filter, then the spans.
RAW_TRACE_SQL = """
SELECT Timestamp, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, Duration,
       StatusCode, StatusMessage, SpanAttributes, ResourceAttributes, Events.Timestamp,
       Events.Name, Events.Attributes, Links.TraceId, Links.SpanId
FROM otel_traces
WHERE TraceId = {trace_id:String}
ORDER BY Timestamp
"""

# Trace ids to look up: spread over the data, a different one per run.
SAMPLE_TRACE_IDS_SQL = """
SELECT TraceId FROM otel_traces_trace_id_ts
WHERE cityHash64(TraceId) % 97 = 0
LIMIT {n:UInt32}
"""

DATA_END_SQL = "SELECT count(), toInt64(toUnixTimestamp(max(Timestamp))) FROM otel_traces"
PARTS_SQL = """
SELECT table, count() FROM system.parts
WHERE active AND database = currentDatabase()
  AND table IN ('otel_traces', 'otel_red_1m', 'otel_db_1m', 'otel_edges_1m')
GROUP BY table ORDER BY table
"""
MERGES_SQL = "SELECT count() FROM system.merges WHERE database = currentDatabase()"


# --- what is measured ---------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One time range asked about: ``label`` (1h, 24h) ending at the seeded data's end."""

    label: str
    start_s: int
    end_s: int

    def query(self, **extra: Any) -> str:
        return urllib.parse.urlencode({"start": self.start_s, "end": self.end_s, **extra})

    def raw(self) -> dict[str, Any]:
        return {"start_ns": self.start_s * _NS, "end_ns": self.end_s * _NS}


@dataclass(frozen=True)
class Probe:
    """One endpoint: its request, how many result rows its answer holds, and the raw-span
    query answering the same question (None when the endpoint reads raw spans itself)."""

    name: str
    target_ms: float | None
    path: Callable[[Window, int], str]
    count: Callable[[Any], int]
    raw_sql: str | None = None
    raw_params: Callable[[Window, int], dict[str, Any]] = lambda w, _: w.raw()
    windowed: bool = True


@dataclass
class Timing:
    """Latencies in ms of repeated runs, and the result rows of the last run."""

    ms: list[float] = field(default_factory=list)
    rows: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.ms) if self.ms else math.nan

    @property
    def fastest(self) -> float:
        """The least disturbed run: on a shared machine, the best guess of the cost alone."""
        return min(self.ms) if self.ms else math.nan

    @property
    def p95(self) -> float:
        """Nearest rank: with fewer than 20 runs, the slowest."""
        if not self.ms:
            return math.nan
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class Row:
    probe: Probe
    window: str
    api: Timing
    raw: Timing | None
    error: str | None = None

    @property
    def met(self) -> bool | None:
        if self.probe.target_ms is None or not self.api.ms:
            return None
        return self.api.median <= self.probe.target_ms


def probes(trace_ids: list[str], with_slow_services: bool) -> list[Probe]:
    """The endpoints timed, in table order (``/slow-services`` only where the server has it)."""

    def trace_id(run: int) -> str:
        return trace_ids[run % len(trace_ids)]

    listed = [
        Probe(
            "services",
            300,
            lambda w, _: f"/api/v1/services?{w.query()}",
            lambda a: len(a["services"]),
            RAW_SERVICES_SQL,
        ),
        Probe(
            f"operations of {SERVICE}",
            300,
            lambda w, _: f"/api/v1/services/{SERVICE}/operations?{w.query()}",
            lambda a: len(a["operations"]),
            RAW_OPERATIONS_SQL,
            lambda w, _: {**w.raw(), "service": SERVICE},
        ),
        Probe(
            "topology",
            300,
            lambda w, _: f"/api/v1/topology?{w.query()}",
            lambda a: len(a["edges"]),
            RAW_TOPOLOGY_SQL,
        ),
        Probe(
            "sql",
            300,
            lambda w, _: f"/api/v1/sql?{w.query()}",
            lambda a: len(a["statements"]),
            RAW_SQL_SQL,
        ),
        Probe(
            "top operations by p99",
            300,
            lambda w, _: f"/api/v1/reports/top?{w.query(entity='operation', by='p99', n=10)}",
            lambda a: len(a["rows"]),
            RAW_TOP_OPERATIONS_SQL,
        ),
    ]
    if with_slow_services:
        listed.append(
            Probe(
                "slow-services",
                None,
                # 300 ms instead of the configured 1 s: the seeded shop's p99s are below 1 s,
                # and only found items show the cost of explaining them.
                lambda w, _: f"/api/v1/slow-services?{w.query(threshold_ms=300)}",
                lambda a: len(a["items"]),
            )
        )
    listed += [
        Probe(
            "trace search (a span >= 300 ms)",
            None,
            lambda w, _: f"/api/v1/traces?{w.query(min_duration_ms=300, limit=20)}",
            lambda a: len(a["traces"]),
        ),
        Probe(
            "trace by id",
            100,
            lambda _, run: f"/api/v1/traces/{trace_id(run)}",
            lambda a: len(a["spans"]),
            RAW_TRACE_SQL,
            lambda _, run: {"trace_id": trace_id(run)},
            windowed=False,
        ),
    ]
    return listed


class _Api:
    """GET requests over one keep-alive connection to the API."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def get(self, path: str) -> tuple[float, int, bytes]:
        started = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        return (time.perf_counter() - started) * 1000, response.status, body

    def close(self) -> None:
        self.conn.close()


def _time_api(port: int, probe: Probe, window: Window, runs: int) -> Timing:
    # A fresh connection per row: the server closes idle keep-alive connections after 5 s,
    # and the raw scans of the row before can take longer than that.
    api = _Api(port)
    try:
        return _time_runs(api, probe, window, runs)
    finally:
        api.close()


def _time_runs(api: _Api, probe: Probe, window: Window, runs: int) -> Timing:
    timing = Timing()
    for run in range(-1, runs):  # run -1 warms up
        elapsed, status, body = api.get(probe.path(window, run))
        if status != 200:
            raise RuntimeError(f"{probe.path(window, run)} answered {status}: {body[:300]!r}")
        if run >= 0:
            timing.ms.append(elapsed)
            timing.rows = probe.count(json.loads(body))
    return timing


def _time_raw(client: Any, probe: Probe, window: Window, runs: int) -> Timing:
    assert probe.raw_sql is not None
    timing = Timing()
    for run in range(-1, runs):
        started = time.perf_counter()
        result = client.query(probe.raw_sql, parameters=probe.raw_params(window, run))
        elapsed = (time.perf_counter() - started) * 1000
        if run >= 0:
            timing.ms.append(elapsed)
            timing.rows = len(result.result_rows)
    return timing


# --- seeding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    spans: int
    seconds: float
    edge_seconds: float


def seed_spans(
    client: Any, spans: int, hours: int, batch: int, seed_value: int, end_s: int
) -> Seeded:
    """Insert ``spans`` spans (rounded down to whole traces) over ``hours`` hours ending at
    ``end_s`` (a whole minute), then compute their edges. Prints progress."""
    from tracehouse.topology import EdgeBuilder

    traces = max(1, spans // seed.SPANS_PER_TRACE)
    total = traces * seed.SPANS_PER_TRACE
    start_s = end_s - hours * _HOUR
    step_ns = hours * _HOUR * _NS // traces
    per_batch = max(1, batch // seed.SPANS_PER_TRACE)
    print(
        f"seeding {total:,} spans ({traces:,} traces of {seed.SPANS_PER_TRACE}) over "
        f"{hours} h ending {_iso(end_s)}, {per_batch * seed.SPANS_PER_TRACE:,} per insert …",
        flush=True,
    )
    started = time.perf_counter()
    for first in range(0, traces, per_batch):
        count = min(per_batch, traces - first)
        client.command(
            seed.SEED_SQL,
            parameters=seed.parameters(
                seed=seed_value,
                first=first,
                count=count,
                range_start_ns=start_s * _NS,
                step_ns=step_ns,
                regression_ns=(end_s - 2 * _HOUR) * _NS,
            ),
        )
        done = (first + count) * seed.SPANS_PER_TRACE
        elapsed = time.perf_counter() - started
        print(
            f"  {done:>12,} / {total:,} spans  {elapsed:7.1f} s  {done / elapsed:>9,.0f} spans/s",
            flush=True,
        )
    seconds = time.perf_counter() - started

    # The worker recomputes a trailing window; here every hour of the range, once.
    print(f"computing service-graph edges for {hours} h, an hour per run …", flush=True)
    edges_started = time.perf_counter()
    for hour in range(hours):
        builder = EdgeBuilder(client, lag_s=0, window_min=60)
        hour_end = start_s + (hour + 1) * _HOUR
        builder.run_once(dt.datetime.fromtimestamp(hour_end, dt.UTC))
        if (hour + 1) % 6 == 0 or hour + 1 == hours:
            print(
                f"  {hour + 1:>3} / {hours} h  {time.perf_counter() - edges_started:7.1f} s",
                flush=True,
            )
    return Seeded(total, seconds, time.perf_counter() - edges_started)


def _iso(epoch_s: int) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _settle(client: Any, timeout_s: float) -> float:
    """Wait for background merges to finish (at most ``timeout_s``); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if int(client.query(MERGES_SQL).result_rows[0][0]) == 0:
            break
        time.sleep(1)
    return time.monotonic() - started


# --- the command --------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.1f}"


HEADER = (
    "endpoint",
    "window",
    "api p50",
    "api p95",
    "api min",
    "raw p50",
    "raw p95",
    "raw min",
    "target",
    "rows api/raw",
    "",
)


def _cells(row: Row) -> list[str]:
    raw = row.raw
    met = {True: "ok", False: "MISSED", None: ""}[row.met]
    return [
        row.probe.name,
        row.window,
        _fmt(row.api.median),
        _fmt(row.api.p95),
        _fmt(row.api.fastest),
        _fmt(raw.median) if raw else "-",
        _fmt(raw.p95) if raw else "-",
        _fmt(raw.fastest) if raw else "-",
        f"<= {row.probe.target_ms:.0f}" if row.probe.target_ms else "-",
        f"{row.api.rows}/{raw.rows if raw else '-'}",
        row.error or met,
    ]


def format_table(rows: list[Row]) -> str:
    """Fixed-width table: one line per endpoint and window, times in ms."""
    cells = [list(HEADER), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = []
    for line in cells:
        parts = [
            v.ljust(widths[i]) if i in (0, 1, len(HEADER) - 1) else v.rjust(widths[i])
            for i, v in enumerate(line)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    """The same table in Markdown."""
    lines = [
        "| " + " | ".join(h or "result" for h in HEADER) + " |",
        "|---|---|" + "---:|" * (len(HEADER) - 3) + "---|",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def run_query_bench(args: argparse.Namespace) -> int:
    """``tracehouse bench query``: see the module docstring. Returns the exit status."""
    if args.spans < seed.SPANS_PER_TRACE:
        raise SystemExit(f"--spans must be at least {seed.SPANS_PER_TRACE}")
    if args.hours < 24:
        raise SystemExit("--hours must be at least 24 (the 24 h window is measured)")
    if args.batch < seed.SPANS_PER_TRACE:
        raise SystemExit(f"--batch must be at least {seed.SPANS_PER_TRACE} spans")
    if args.runs < 1 or args.raw_runs < 0:
        raise SystemExit("--runs must be at least 1 and --raw-runs at least 0")
    if args.data_dir:
        return _run(args, Path(args.data_dir))
    with tempfile.TemporaryDirectory(prefix="tracehouse-bench-query-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, data_dir: Path) -> int:
    from tracehouse.app import Tracehouse
    from tracehouse.config import Settings

    settings = Settings(
        data_dir=data_dir,
        roles=["query"],
        host="127.0.0.1",
        api_port=0,
        log_level="WARNING",
    )
    app = Tracehouse(settings)
    app.start()
    try:
        return _bench(args, app)
    finally:
        app.stop()


def _bench(args: argparse.Namespace, app: Any) -> int:
    client = app.client
    stored = int(client.query(DATA_END_SQL).result_rows[0][0])
    seeded: Seeded | None = None
    if stored and not args.reuse:
        raise SystemExit(
            f"{app.settings.data_dir} already holds {stored:,} spans: "
            "pass --reuse to measure them, or an empty --data-dir"
        )
    if not stored:
        end_s = int(time.time()) // 60 * 60
        seeded = seed_spans(client, args.spans, args.hours, args.batch, args.seed, end_s)
        print(
            f"seeded {seeded.spans:,} spans in {seeded.seconds:.1f} s "
            f"({seeded.spans / seeded.seconds:,.0f} spans/s); "
            f"edges in {seeded.edge_seconds:.1f} s",
            flush=True,
        )
    waited = _settle(client, args.settle)
    stored, last_s = (int(v) for v in client.query(DATA_END_SQL).result_rows[0])
    parts = ", ".join(f"{t} {n}" for t, n in client.query(PARTS_SQL).result_rows)
    print(f"{stored:,} spans stored; merges waited {waited:.0f} s; active parts: {parts}")
    end_s = (last_s // 60 + 1) * 60
    windows = [Window(label, end_s - seconds, end_s) for label, seconds in WINDOWS.items()]
    trace_ids = [r[0] for r in client.query(SAMPLE_TRACE_IDS_SQL, parameters={"n": 50}).result_rows]
    api = _Api(app.ports.api)
    paths = json.loads(api.get("/openapi.json")[2])["paths"]
    api.close()
    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    print(f"\ntiming {args.runs} API runs and {args.raw_runs} raw runs per row …", flush=True)
    for probe in probes(trace_ids, "/api/v1/slow-services" in paths):
        for window in windows if probe.windowed else windows[:1]:
            label = window.label if probe.windowed else "-"
            try:
                timing = _time_api(app.ports.api, probe, window, args.runs)
                raw = None
                if probe.raw_sql is not None and args.raw_runs:
                    raw = _time_raw(client, probe, window, args.raw_runs)
                row = Row(probe, label, timing, raw)
                if timing.rows == 0:
                    row.error = "EMPTY"
            except Exception as exc:  # report the failure in the table and go on
                row = Row(probe, label, Timing(), None, error=f"FAILED: {exc}"[:200])
            rows.append(row)
            print("  " + " | ".join(_cells(row)), flush=True)
    load_after = os.getloadavg()[0]

    print("\ntimes in ms; api = GET through the HTTP API (rollups), raw = the same question")
    print("answered by scanning otel_traces; min = the fastest run; rows = result rows\n")
    print(format_table(rows))
    if args.markdown:
        print("\n" + format_markdown(rows))
    print()
    if seeded is not None:
        print(
            f"seeding: {seeded.spans:,} spans in {seeded.seconds:.1f} s, "
            f"edges {seeded.edge_seconds:.1f} s"
        )
    memory = psutil.virtual_memory().total / 2**30
    print(
        f"machine: {os.cpu_count()} CPUs, {memory:.0f} GiB; load average (1 min) "
        f"{load_before:.1f} when timing started, {load_after:.1f} when it ended"
    )
    return 1 if any(row.error for row in rows) else 0
