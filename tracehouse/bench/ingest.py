"""``tracehouse bench ingest``: end-to-end OTLP ingest throughput, CPU and peak RSS.

Starts ``tracehouse serve`` as a child process on the embedded engine in a temporary
directory, sends pre-built export requests (``--batch`` spans of ``--attributes`` attributes
each, every span with its own ids) from ``--concurrency`` client threads, then stops the
server with SIGTERM and counts the stored rows, so the figure is of data durably in ClickHouse.
The requests are serialised before the clock starts, so the client costs little CPU.

Before that, ``engine_profile`` measures in a child process what the engine alone costs for
the same requests written as spool files, stage by stage (docs/performance.md): the fixed
cost of one insert statement, parsing and flattening into a ``Null`` table, storing in a copy
of the raw table without its views, the insert the pipeline runs, and the raw columnar insert
of the already flattened rows.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_ERROR, SEVERITY_NUMBER_INFO
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass(frozen=True)
class _Target:
    """Where one signal goes: gRPC method, HTTP path, table."""

    grpc_method: str
    http_path: str
    table: str


_TARGETS = {
    "traces": _Target(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export", "/v1/traces", "otel_traces"
    ),
    "logs": _Target(
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export", "/v1/logs", "otel_logs"
    ),
}


@dataclass
class BenchResult:
    transport: str
    spans: int
    seconds: float
    acked_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    stored: int

    @property
    def spans_per_s(self) -> float:
        return self.spans / self.seconds if self.seconds else 0.0


def build_requests(total: int, batch: int, attributes: int, seed: int = 7) -> list[bytes]:
    """Serialised export requests of ``batch`` spans, as an instrumented HTTP service sends."""
    rng = random.Random(seed)
    requests = []
    sent = 0
    services = [f"bench-svc-{i}" for i in range(8)]
    while sent < total:
        n = min(batch, total - sent)
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(
            [
                KeyValue(key="service.name", value=AnyValue(string_value=rng.choice(services))),
                KeyValue(key="host.name", value=AnyValue(string_value="bench-host")),
            ]
        )
        ss = rs.scope_spans.add()
        ss.scope.name = "bench"
        now = time.time_ns()
        for i in range(n):
            span = ss.spans.add()
            span.trace_id = rng.randbytes(16)
            span.span_id = rng.randbytes(8)
            if i % 4:
                span.parent_span_id = rng.randbytes(8)
            span.name = f"GET /api/item/{i % 20}"
            span.kind = Span.SPAN_KIND_SERVER if i % 4 == 0 else Span.SPAN_KIND_CLIENT
            span.start_time_unix_nano = now + i * 1000
            span.end_time_unix_nano = now + i * 1000 + rng.randint(100_000, 50_000_000)
            for a in range(attributes):
                if a % 3 == 0:
                    value = AnyValue(int_value=rng.randint(0, 10_000))
                else:
                    value = AnyValue(string_value=f"value-{rng.randint(0, 1000)}")
                span.attributes.append(KeyValue(key=f"bench.attr.{a}", value=value))
        requests.append(request.SerializeToString())
        sent += n
    return requests


def build_log_requests(total: int, batch: int, attributes: int, seed: int = 7) -> list[bytes]:
    """Serialised log export requests of ``batch`` records, most inside a trace."""
    rng = random.Random(seed)
    requests = []
    sent = 0
    while sent < total:
        n = min(batch, total - sent)
        request = ExportLogsServiceRequest()
        rl = request.resource_logs.add()
        rl.resource.attributes.append(
            KeyValue(key="service.name", value=AnyValue(string_value=f"bench-svc-{sent % 8}"))
        )
        sl = rl.scope_logs.add()
        sl.scope.name = "bench"
        now = time.time_ns()
        for i in range(n):
            record = sl.log_records.add()
            record.time_unix_nano = now + i * 1000
            record.severity_number = SEVERITY_NUMBER_INFO if i % 10 else SEVERITY_NUMBER_ERROR
            record.severity_text = "INFO" if i % 10 else "ERROR"
            record.body.string_value = f"request {rng.randint(0, 10**9)} handled in {i % 97} ms"
            if i % 5:
                record.trace_id = rng.randbytes(16)
                record.span_id = rng.randbytes(8)
            for a in range(attributes):
                value = AnyValue(string_value=f"value-{rng.randint(0, 1000)}")
                record.attributes.append(KeyValue(key=f"bench.attr.{a}", value=value))
        requests.append(request.SerializeToString())
        sent += n
    return requests


@dataclass(frozen=True)
class EngineStage:
    """One stage of ``engine_profile``: median CPU and wall seconds of ``runs`` inserts of
    ``items`` items each."""

    name: str
    items: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_per_100k(self) -> float:
        return self.cpu_seconds / self.items * 100_000 if self.items else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_seconds if self.wall_seconds else 0.0


# Copies of the raw table the profile inserts into besides the real one (its views fire).
_NULL_COPY = "CREATE TABLE {copy} ENGINE = Null EMPTY AS SELECT * FROM {table}"
_PLAIN_COPY = "CREATE TABLE {copy} AS {table}"
_STAGED_COPY = "CREATE TABLE {copy} ENGINE = Memory EMPTY AS SELECT * FROM {table}"
_RAW_INSERT = "INSERT INTO {table} SELECT * FROM {staged}"


def engine_profile(
    signal: str, requests: list[bytes], batch_rows: int, runs: int = 3
) -> list[EngineStage]:
    """What the embedded engine alone spends on ``batch_rows`` items of ``requests`` in one
    insert, per stage; in a child process (chDB opens one engine directory per process)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        stages: list[EngineStage] = pool.apply(
            _engine_profile, (signal, requests, batch_rows, runs)
        )
    return stages


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _engine_profile(
    signal_name: str, requests: list[bytes], batch_rows: int, runs: int
) -> list[EngineStage]:
    from tracehouse.ingest.spool import frame
    from tracehouse.model import Signal
    from tracehouse.storage import otlp_sql
    from tracehouse.storage.client import connect
    from tracehouse.storage.schema import Migrator, SchemaOptions
    from tracehouse.storage.writer import _glob

    signal = Signal(signal_name)
    table = signal.table
    with tempfile.TemporaryDirectory(prefix="tracehouse-engine-") as tmp:
        client = connect(f"chdb://{Path(tmp) / 'clickhouse'}")
        Migrator(client, SchemaOptions()).migrate()
        spool = Path(tmp) / "spool"
        spool.mkdir()
        per_request = max(1, _items_in(signal_name, requests[0]))
        count = max(1, batch_rows // per_request)
        files = []
        for i in range(0, min(count, len(requests)), 16):
            path = spool / f"{i:08d}.spool"
            path.write_bytes(frame(requests[i : min(i + 16, count)]))
            files.append(path)
        items = min(count, len(requests)) * per_request
        one = spool / "one.spool"
        one.write_bytes(frame(requests[:1]))
        structure = otlp_sql.structure(signal)
        settings = otlp_sql.settings_clause(signal, str(otlp_sql.PROTO_FILE), None)
        params = otlp_sql.ItemLimits().parameters()

        def statement(target: str, paths: list[Path]) -> str:
            source = f"file({otlp_sql.sql_string(_glob(paths))}, 'Protobuf', {structure})"
            sql = otlp_sql.insert_statement(signal, source)
            return sql.replace(f"INSERT INTO {table} ", f"INSERT INTO {target} ", 1)

        for template, copy in ((_NULL_COPY, "profile_null"), (_PLAIN_COPY, "profile_plain")):
            client.command(template.format(copy=copy, table=table))
        client.command(_STAGED_COPY.format(copy="profile_staged", table=table))
        client.command(f"{statement('profile_staged', files)}\n{settings}", parameters=params)
        plan: list[tuple[str, int, str, str]] = [
            (
                "one statement (512-item request)",
                per_request,
                statement("profile_null", [one]),
                settings,
            ),
            ("parse + flatten (Null table)", items, statement("profile_null", files), settings),
            ("+ store, no views", items, statement("profile_plain", files), settings),
            ("+ views: the pipeline's insert", items, statement(table, files), settings),
            (
                "raw columnar insert (+ views)",
                items,
                _RAW_INSERT.format(table=table, staged="profile_staged"),
                "",
            ),
        ]
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in plan}
        for run in range(runs):
            for name, _, sql, sql_settings in plan if run % 2 == 0 else plan[::-1]:
                cpu, wall = _cpu(), time.perf_counter()
                client.command(f"{sql}\n{sql_settings}", parameters=params)
                samples[name].append((_cpu() - cpu, time.perf_counter() - wall))
        client.close()
    return [
        EngineStage(
            name,
            n,
            statistics.median(c for c, _ in samples[name]),
            statistics.median(w for _, w in samples[name]),
        )
        for name, n, _, _ in plan
    ]


def _items_in(signal: str, request: bytes) -> int:
    """How many spans or log records a serialised export request holds."""
    if signal == "traces":
        traces = ExportTraceServiceRequest.FromString(request)
        return sum(len(ss.spans) for rs in traces.resource_spans for ss in rs.scope_spans)
    logs = ExportLogsServiceRequest.FromString(request)
    return sum(len(sl.log_records) for rl in logs.resource_logs for sl in rl.scope_logs)


def _print_engine(stages: list[EngineStage], unit: str) -> None:
    """The engine profile as a table: median of the runs, CPU of the whole engine process
    (insert threads and background merges alike)."""
    print(f"\n{'engine stage':<36}{unit + '/s':>12}{'CPU s':>8}{'CPU s/100k':>12}")
    for stage in stages:
        print(
            f"{stage.name:<36}{stage.items_per_s:>12,.0f}{stage.cpu_seconds:>8.2f}"
            f"{stage.cpu_per_100k:>12.2f}"
        )
    print()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """``tracehouse serve`` in a child process, with its CPU and peak RSS."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.grpc_port, self.http_port, self.api_port = _free_port(), _free_port(), _free_port()
        command = [
            sys.executable,
            "-m",
            "tracehouse.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(self.http_port),
            "--api-port",
            str(self.api_port),
        ]
        env = {**os.environ, "TRACEHOUSE_LOG_LEVEL": "WARNING"}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        self.ps = psutil.Process(self.process.pid)
        self._peak = 0
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        self._wait_ready()

    def _watch(self) -> None:
        while self._watching:
            try:
                self._peak = max(self._peak, self.ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("tracehouse serve exited during start")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=1)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("tracehouse serve did not become ready in 120 s")

    def wait_inserted(self, timeout_s: float = 600) -> None:
        """Until the server's spool is empty: everything acknowledged is in ClickHouse."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            values = {
                line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(
                    ("tracehouse_ingest_spool_files", "tracehouse_ingest_queue_rows")
                )
            }
            if values and not any(values.values()):
                return
            time.sleep(0.05)
        raise RuntimeError("the server did not insert what it acknowledged in time")

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> int:
        """SIGTERM (flushes everything accepted); returns the peak RSS in bytes."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=300)
        self._watching = False
        return self._peak


def _send_grpc(port: int, requests: list[bytes], concurrency: int, method: str) -> None:
    import grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    export = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    _run_clients(requests, concurrency, lambda body: export(body, timeout=120))
    channel.close()


def _send_http(port: int, requests: list[bytes], concurrency: int, path: str) -> None:
    local = threading.local()

    def post(body: bytes) -> None:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        local.conn.request("POST", path, body, {"Content-Type": "application/x-protobuf"})
        response = local.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")

    _run_clients(requests, concurrency, post)


def _run_clients(requests: list[bytes], concurrency: int, send: Callable[[bytes], object]) -> None:
    """Send every request once, ``concurrency`` at a time; retry refused ones after a pause."""
    index = iter(range(len(requests)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(index, None)
            if i is None:
                return
            for attempt in range(50):
                try:
                    send(requests[i])
                    break
                except Exception as exc:  # retryable refusal under overload: back off
                    if attempt == 49:
                        errors.append(exc)
                    time.sleep(0.05 * (attempt + 1))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed; first: {errors[0]}")


def _count_stored(data_dir: Path, table: str) -> int:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{(data_dir / 'clickhouse').resolve()}")
    count = int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])
    client.close()
    return count


def bench_transport(
    transport: str, requests: list[bytes], spans: int, concurrency: int, signal: str = "traces"
) -> BenchResult:
    """Run one end-to-end measurement against a fresh server; run in a child process."""
    with tempfile.TemporaryDirectory(prefix="tracehouse-bench-") as tmp:
        server = _Server(Path(tmp))
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        target = _TARGETS[signal]
        if transport == "grpc":
            _send_grpc(server.grpc_port, requests, concurrency, target.grpc_method)
        else:
            _send_http(server.http_port, requests, concurrency, target.http_path)
        acked = time.perf_counter() - started
        server.wait_inserted()
        elapsed = time.perf_counter() - started
        cpu = server.cpu_seconds() - cpu_before
        peak = server.stop()
        stored = _count_stored(Path(tmp), target.table)
    return BenchResult(transport, spans, elapsed, acked, cpu, peak, stored)


def run_ingest_bench(args: argparse.Namespace) -> int:
    if getattr(args, "engine_batch", 1) <= 0:
        print(f"--engine-batch must be a positive number of items, got {args.engine_batch}")
        return 2
    transports = ["grpc", "http"] if args.transport == "both" else [args.transport]
    unit = "spans" if args.signal == "traces" else "log records"
    print(
        f"building {args.spans:,} {unit} in requests of {args.batch}, "
        f"{args.attributes} attributes each …",
        flush=True,
    )
    build = build_requests if args.signal == "traces" else build_log_requests
    requests = build(args.spans, args.batch, args.attributes)
    size = sum(len(r) for r in requests)
    print(f"{len(requests):,} requests, {size / 1e6:,.1f} MB of protobuf", flush=True)
    engine: list[EngineStage] = []
    if getattr(args, "engine", True):
        batch_rows = getattr(args, "engine_batch", 50_000)
        print(f"engine alone: inserts of {batch_rows:,} {unit} from spool files …", flush=True)
        engine = engine_profile(args.signal, requests, batch_rows)
        _print_engine(engine, unit)
    results = []
    if getattr(args, "engine_only", False):
        return 0
    for transport in transports:
        print(f"sending over {transport} with {args.concurrency} requests in flight …", flush=True)
        results.append(
            bench_transport(transport, requests, args.spans, args.concurrency, args.signal)
        )
    print()
    print(f"items/s: {unit} sent, acknowledged and inserted into ClickHouse, over the whole run")
    print("acked/s: rate of acknowledgements (data on disk in the write-ahead spool)\n")
    header = ("transport", "items/s", "acked/s", "seconds", "CPU s/100k", "peak RSS", "stored")
    print("{:<10}{:>10}{:>10}{:>9}{:>12}{:>11}{:>11}".format(*header))
    ok = True
    for r in results:
        cpu_per_100k = r.cpu_seconds / r.spans * 100_000 if r.spans else 0.0
        acked_rate = r.spans / r.acked_seconds if r.acked_seconds else 0.0
        print(
            f"{r.transport:<10}{r.spans_per_s:>10,.0f}{acked_rate:>10,.0f}{r.seconds:>9.2f}"
            f"{cpu_per_100k:>12.2f}{r.peak_rss_bytes / 2**20:>7.0f} MiB{r.stored:>11,}"
        )
        if r.stored != r.spans:
            ok = False
            print(f"  LOST DATA: sent {r.spans:,} {unit}, stored {r.stored:,}")
    raw = next((s for s in engine if s.name.startswith("raw columnar")), None)
    if raw and raw.items_per_s:
        for r in results:
            print(
                f"end to end / raw columnar insert, {r.transport}: "
                f"{r.spans_per_s / raw.items_per_s:.2f}"
            )
    print(f"\nmachine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    return 0 if ok else 1
