"""``tracehouse bench metrics``: OTLP metric ingest throughput, and metric query latency.

**Ingest.** Starts ``tracehouse serve`` as a child process on the embedded engine in a
temporary directory (the harness of ``bench ingest``), sends pre-built
``ExportMetricsServiceRequest``\\ s over OTLP/gRPC and/or OTLP/HTTP protobuf from
``--concurrency`` client threads, waits until the spool is empty, stops the server with SIGTERM
and counts the stored points. The requests look like what an OpenTelemetry Collector's batch
processor forwards: ``--series`` instances (a resource each: ``service.name``,
``service.instance.id``, ``host.name``), each reporting every 10 s a gauge
(``system.cpu.utilization``), a cumulative monotonic sum (``http.server.requests``) and a
cumulative histogram of 12 buckets (``http.server.duration``), each with two point
attributes; ``--batch`` points per request (instances are not split across requests). A point
is one data point, whatever its type (a histogram point with its buckets is one point).

**Query.** Starts tracehouse (the query role) in this process on a fresh engine, seeds
``--query-series`` series of each type (one instance each) at a 10 s interval over the last
hour and the 15 minutes before it (the look-back a rate needs) inside ClickHouse
(``INSERT … SELECT … FROM numbers()``; a tenth of the counters and histograms restart half-way),
then times ``GET /api/v1/metrics/query`` over the last hour at a 10 s step through the HTTP API:
gauge ``avg``, counter ``rate`` and histogram ``p95``, each grouped by instance (one series per
group) and over all series (one group): median, p95 (nearest rank) and fastest of ``--runs``
after a warm-up.

Prints tables (``--markdown`` too for docs/performance.md). Targets are shown, not enforced.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

from tracehouse.bench.ingest import _send_grpc, _send_http, _Server
from tracehouse.bench.query import Timing

_NS = 1_000_000_000
GRPC_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
HTTP_PATH = "/v1/metrics"
TABLES = ("otel_metrics_gauge", "otel_metrics_sum", "otel_metrics_histogram")
# Per instance and scrape: this many points of each of the three types.
POINTS_PER_TYPE = 2
POINTS_PER_INSTANCE = 3 * POINTS_PER_TYPE
INTERVAL_S = 10
BOUNDS = (5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0)
QUERY_TARGET_MS = 1000.0
INGEST_TARGET = 100_000

# --- ingest -----------------------------------------------------------------------------------


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def build_metric_requests(points: int, series: int, batch: int) -> list[bytes]:
    """Serialised metric export requests holding ``points`` points (rounded up to whole
    scrapes of an instance): ``series`` instances scraped every 10 s, ``batch`` points (whole
    instances) per request."""
    per_request = max(1, batch // POINTS_PER_INSTANCE)
    scrapes = math.ceil(points / POINTS_PER_INSTANCE)
    start_ns = (time.time_ns() // _NS - (scrapes // max(series, 1) + 1) * INTERVAL_S) * _NS
    requests = []
    request = ExportMetricsServiceRequest()
    in_request = 0
    for n in range(scrapes):
        instance, round_ = n % series, n // series
        _add_instance(request, instance, round_, start_ns)
        in_request += 1
        if in_request == per_request:
            requests.append(request.SerializeToString())
            request, in_request = ExportMetricsServiceRequest(), 0
    if in_request:
        requests.append(request.SerializeToString())
    return requests


def _add_instance(
    request: ExportMetricsServiceRequest, instance: int, round_: int, start_ns: int
) -> None:
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend(
        [
            _kv("service.name", f"bench-svc-{instance % 20}"),
            _kv("service.instance.id", f"i-{instance}"),
            _kv("host.name", f"host-{instance}"),
        ]
    )
    sm = rm.scope_metrics.add()
    sm.scope.name = "bench"
    now_ns = start_ns + round_ * INTERVAL_S * _NS
    gauge = sm.metrics.add(name="system.cpu.utilization", unit="1")
    counter = sm.metrics.add(name="http.server.requests", unit="{request}")
    counter.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    counter.sum.is_monotonic = True
    histogram = sm.metrics.add(name="http.server.duration", unit="ms")
    histogram.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    for k in range(POINTS_PER_TYPE):
        attributes = [_kv("cpu" if k % 2 == 0 else "route", str(k)), _kv("state", "user")]
        gauge.gauge.data_points.add(
            time_unix_nano=now_ns,
            as_double=((instance * 7 + round_ * 13 + k) % 100) / 100,
            attributes=attributes,
        )
        counter.sum.data_points.add(
            start_time_unix_nano=start_ns - INTERVAL_S * _NS,
            time_unix_nano=now_ns,
            as_int=(round_ + 1) * (k + 5),
            attributes=attributes,
        )
        counts = [(round_ + 1) * ((instance + b + k) % 4) for b in range(len(BOUNDS) + 1)]
        histogram.histogram.data_points.add(
            start_time_unix_nano=start_ns - INTERVAL_S * _NS,
            time_unix_nano=now_ns,
            count=sum(counts),
            sum=float(sum(c * b for c, b in zip(counts, (*BOUNDS, 5000.0), strict=True))),
            bucket_counts=counts,
            explicit_bounds=BOUNDS,
            min=1.0,
            max=4000.0,
            attributes=attributes,
        )


@dataclass
class IngestResult:
    transport: str
    points: int
    seconds: float
    acked_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    stored: int

    @property
    def points_per_s(self) -> float:
        return self.points / self.seconds if self.seconds else 0.0

    @property
    def acked_per_s(self) -> float:
        return self.points / self.acked_seconds if self.acked_seconds else 0.0

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu_seconds / self.points * 100_000 if self.points else 0.0


def _count_points(data_dir: Path) -> int:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{(data_dir / 'clickhouse').resolve()}")
    total = sum(
        int(client.query(f"SELECT count() FROM {table}").result_rows[0][0]) for table in TABLES
    )
    client.close()
    return total


def bench_ingest(
    transport: str, requests: list[bytes], points: int, concurrency: int
) -> IngestResult:
    """One end-to-end measurement against a fresh ``tracehouse serve``."""
    with tempfile.TemporaryDirectory(prefix="tracehouse-bench-metrics-") as tmp:
        server = _Server(Path(tmp))
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        if transport == "grpc":
            _send_grpc(server.grpc_port, requests, concurrency, GRPC_METHOD)
        else:
            _send_http(server.http_port, requests, concurrency, HTTP_PATH)
        acked = time.perf_counter() - started
        server.wait_inserted()
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu_before
        peak = server.stop()
        stored = _count_points(Path(tmp))
    return IngestResult(transport, points, elapsed, acked, cpu, peak, stored)


# --- query ------------------------------------------------------------------------------------

# Seeded series: ``s`` in [0, series), point ``i`` in [0, points) at ``first_s + 10·i``.
# Series whose number ends in 0 restart at point ``reset`` (new start time, counts from 0).
_SEED_COMMON = """
WITH intDiv(number, {points:UInt32}) AS s, number % {points:UInt32} AS i,
     s % 10 = 0 AND i >= {reset:UInt32} AS restarted,
     if(restarted, i - {reset:UInt32}, i) + 1 AS n,
     fromUnixTimestamp64Nano(toInt64(({first_s:Int64} + 10 * i) * 1000000000)) AS at,
     fromUnixTimestamp64Nano(toInt64(({first_s:Int64}
        + if(restarted, 10 * {reset:UInt32} - 5, -5)) * 1000000000)) AS started
SELECT map('service.name', concat('bench-svc-', toString(s % 20)),
           'service.instance.id', concat('i-', toString(s)),
           'host.name', concat('host-', toString(s))) AS ResourceAttributes,
       'bench' AS ScopeName,
       concat('bench-svc-', toString(s % 20)) AS ServiceName,
       {name:String} AS MetricName,
       map('state', 'user') AS Attributes,
       started AS StartTimeUnix, at AS TimeUnix"""
SEED_GAUGE_SQL = (
    """
INSERT INTO otel_metrics_gauge (ResourceAttributes, ScopeName, ServiceName, MetricName,
    Attributes, StartTimeUnix, TimeUnix, Value)"""
    + _SEED_COMMON
    + """,
       ((s * 7 + i * 13) % 100) / 100 AS Value
FROM numbers({series:UInt32} * {points:UInt32})"""
)
SEED_SUM_SQL = (
    """
INSERT INTO otel_metrics_sum (ResourceAttributes, ScopeName, ServiceName, MetricName,
    Attributes, StartTimeUnix, TimeUnix, Value, AggregationTemporality, IsMonotonic)"""
    + _SEED_COMMON
    + """,
       toFloat64(n * (s % 7 + 1)) AS Value, 2 AS AggregationTemporality, true AS IsMonotonic
FROM numbers({series:UInt32} * {points:UInt32})"""
)
SEED_HISTOGRAM_SQL = (
    """
INSERT INTO otel_metrics_histogram (ResourceAttributes, ScopeName, ServiceName, MetricName,
    Attributes, StartTimeUnix, TimeUnix, BucketCounts, Count, Sum, ExplicitBounds, Min, Max,
    AggregationTemporality)"""
    + _SEED_COMMON
    + """,
       arrayMap(b -> toUInt64(n * ((s + b) % 4)), range({buckets:UInt32})) AS BucketCounts,
       arraySum(BucketCounts) AS Count,
       toFloat64(Count) * 100 AS Sum,
       {bounds:Array(Float64)} AS ExplicitBounds,
       1.0 AS Min, 4000.0 AS Max, 2 AS AggregationTemporality
FROM numbers({series:UInt32} * {points:UInt32})"""
)
SEEDS = (
    ("system.cpu.utilization", SEED_GAUGE_SQL),
    ("http.server.requests", SEED_SUM_SQL),
    ("http.server.duration", SEED_HISTOGRAM_SQL),
)
# (label, metric, agg, group_by)
QUERIES = (
    ("gauge avg by instance", "system.cpu.utilization", "avg", "service.instance.id"),
    ("gauge avg, one group", "system.cpu.utilization", "avg", ""),
    ("sum rate by instance", "http.server.requests", "rate", "service.instance.id"),
    ("sum rate, one group", "http.server.requests", "rate", ""),
    ("histogram p95 by instance", "http.server.duration", "p95", "service.instance.id"),
    ("histogram p95, one group", "http.server.duration", "p95", ""),
)
LOOKBACK_POINTS = 90  # the 15 minutes before the hour


@dataclass
class QueryTiming(Timing):
    """The latencies of one query (median, p95, fastest as ``bench query`` computes them)."""

    label: str = ""
    path: str = ""
    series: int = 0
    points: int = 0
    error: str = ""


def seed_metrics(client: Any, series: int, end_s: int) -> tuple[int, float]:
    """Seed ``series`` series of each type over the hour before ``end_s`` (and the look-back
    before it); returns (points inserted, seconds)."""
    points = 360 + LOOKBACK_POINTS
    first_s = end_s - 10 * points
    started = time.perf_counter()
    for name, sql in SEEDS:
        client.command(
            sql,
            parameters={
                "name": name,
                "series": series,
                "points": points,
                "reset": points // 2,
                "first_s": first_s,
                "buckets": len(BOUNDS) + 1,
                "bounds": list(BOUNDS),
            },
        )
    return 3 * series * points, time.perf_counter() - started


def time_queries(port: int, end_s: int, runs: int) -> list[QueryTiming]:
    """Time each of QUERIES over [end_s - 1 h, end_s) at a 10 s step through the API."""
    timings = []
    for label, name, agg, group_by in QUERIES:
        params = {"name": name, "agg": agg, "step": "10s", "start": end_s - 3600, "end": end_s}
        if group_by:
            params["group_by"] = group_by
        path = "/api/v1/metrics/query?" + urllib.parse.urlencode(params)
        timing = QueryTiming(label=label, path=path)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            for run in range(-1, runs):  # run -1 warms up
                began = time.perf_counter()
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                elapsed = (time.perf_counter() - began) * 1000
                if response.status != 200:
                    raise RuntimeError(f"answered {response.status}: {body[:300]!r}")
                if run >= 0:
                    timing.ms.append(elapsed)
                    answer = json.loads(body)
                    timing.series = len(answer["series"])
                    timing.points = sum(len(s["points"]) for s in answer["series"])
        except Exception as exc:  # report it in the table and go on
            timing.error = f"FAILED: {exc}"[:200]
        finally:
            conn.close()
        if not timing.error and not timing.points:
            timing.error = "EMPTY"
        timings.append(timing)
    return timings


def _query_bench(series: int, runs: int) -> tuple[list[QueryTiming], int, float]:
    from tracehouse.app import Tracehouse
    from tracehouse.config import Settings

    with tempfile.TemporaryDirectory(prefix="tracehouse-bench-metrics-query-") as tmp:
        settings = Settings(
            data_dir=Path(tmp), roles=["query"], host="127.0.0.1", api_port=0, log_level="WARNING"
        )
        app = Tracehouse(settings)
        app.start()
        try:
            end_s = int(time.time()) // 60 * 60
            inserted, seconds = seed_metrics(app.client, series, end_s)
            return time_queries(app.ports.api, end_s, runs), inserted, seconds
        finally:
            app.stop()


# --- output -----------------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


INGEST_HEADER = (
    "transport",
    "points/s",
    "acked/s",
    "seconds",
    "CPU s/100k",
    "peak RSS MiB",
    "stored",
    "",
)
QUERY_HEADER = ("query (1 h, 10 s step)", "p50 ms", "p95 ms", "min ms", "series", "points", "")


def ingest_cells(r: IngestResult) -> list[str]:
    lost = "" if r.stored == r.points else f"LOST DATA: stored {r.stored:,} of {r.points:,}"
    return [
        r.transport,
        _fmt(r.points_per_s, 0),
        _fmt(r.acked_per_s, 0),
        _fmt(r.seconds, 2),
        _fmt(r.cpu_per_100k, 2),
        _fmt(r.peak_rss_bytes / 2**20, 0),
        f"{r.stored:,}",
        lost or ("ok" if r.points_per_s >= INGEST_TARGET else "below target"),
    ]


def query_cells(t: QueryTiming) -> list[str]:
    verdict = t.error or ("ok" if t.median <= QUERY_TARGET_MS else "MISSED")
    return [
        t.label,
        _fmt(t.median),
        _fmt(t.p95),
        _fmt(t.fastest),
        f"{t.series:,}",
        f"{t.points:,}",
        verdict,
    ]


def format_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """Fixed-width: the first column left-aligned, the last (the verdict) too."""
    cells = [list(header), *rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = []
    for line in cells:
        parts = [
            v.ljust(widths[i]) if i in (0, len(header) - 1) else v.rjust(widths[i])
            for i, v in enumerate(line)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def format_markdown(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(h or "result" for h in header) + " |",
        "|---|" + "---:|" * (len(header) - 2) + "---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------


def run_metrics_bench(args: argparse.Namespace) -> int:
    """``tracehouse bench metrics``: see the module docstring. Returns the exit status."""
    if args.points < POINTS_PER_INSTANCE or args.series < 1 or args.query_series < 0:
        raise SystemExit(
            f"--points must be at least {POINTS_PER_INSTANCE}, --series at least 1 and "
            "--query-series at least 0"
        )
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    ok = True
    load = [os.getloadavg()[0]]
    ingest: list[IngestResult] = []
    if args.transport != "none":
        transports = ["grpc", "http"] if args.transport == "both" else [args.transport]
        requests = build_metric_requests(args.points, args.series, args.batch)
        points = math.ceil(args.points / POINTS_PER_INSTANCE) * POINTS_PER_INSTANCE
        size = sum(len(r) for r in requests)
        print(
            f"built {points:,} points of {args.series:,} instances ({POINTS_PER_TYPE} gauge, "
            f"{POINTS_PER_TYPE} sum, {POINTS_PER_TYPE} histogram points each per 10 s) in "
            f"{len(requests):,} requests, {size / 1e6:,.1f} MB of protobuf",
            flush=True,
        )
        for transport in transports:
            print(f"sending over {transport}, {args.concurrency} requests in flight …", flush=True)
            result = bench_ingest(transport, requests, points, args.concurrency)
            ingest.append(result)
            ok = ok and result.stored == result.points
            print("  " + " | ".join(ingest_cells(result)), flush=True)
        load.append(os.getloadavg()[0])
    timings: list[QueryTiming] = []
    if args.query_series:
        print(f"seeding {args.query_series:,} series of each type (1 h 15 min at 10 s) …")
        timings, inserted, seconds = _query_bench(args.query_series, args.runs)
        print(f"  {inserted:,} points in {seconds:.1f} s; timing {args.runs} runs per query")
        ok = ok and not any(t.error for t in timings)
        load.append(os.getloadavg()[0])

    print()
    if ingest:
        print("points/s: sent, acknowledged and inserted into ClickHouse, over the whole run")
        print("acked/s: rate of acknowledgements (data on disk in the write-ahead spool)\n")
        rows = [ingest_cells(r) for r in ingest]
        print(format_table(INGEST_HEADER, rows))
        if args.markdown:
            print("\n" + format_markdown(INGEST_HEADER, rows))
        print()
    if timings:
        rows = [query_cells(t) for t in timings]
        print(format_table(QUERY_HEADER, rows))
        if args.markdown:
            print("\n" + format_markdown(QUERY_HEADER, rows))
        print()
    memory = psutil.virtual_memory().total / 2**30
    print(
        f"machine: {os.cpu_count()} CPUs, {memory:.0f} GiB; load average (1 min) "
        + " → ".join(f"{v:.1f}" for v in load)
    )
    return 0 if ok else 1
