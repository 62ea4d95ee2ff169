"""``tracehouse bench soak``: sustained load at a fraction of the measured maximum, with the
server's RSS curve, errors, and a sent == stored check (the OpenTelemetry Collector testbed's
method: every span carries a unique TraceId+SpanId, and what was acknowledged must be stored
exactly once).

1. Starts ``tracehouse serve`` as a child process on the embedded engine (a temporary
   directory), like ``bench ingest``.
2. Calibrates: ``--calibrate`` seconds of load as fast as ``--concurrency`` OTLP/HTTP clients
   can send; the acknowledged spans per second are the maximum.
3. Soaks: ``--minutes`` of load paced at ``--fraction`` (0.8) of that maximum, sampling the
   server's RSS every ``--sample`` seconds.
4. Stops the server with SIGTERM (which inserts everything acknowledged) and reads back every
   stored TraceId+SpanId of the run.

Prints the RSS curve, requests by outcome, and spans sent / acknowledged / stored / lost /
duplicated. Exit 1 on any loss, duplicate or error (a refusal with a retryable status that the
client then retried is not an error; it is counted). Timing is reported, never asserted.

:class:`LoadGenerator` is the load generator of the reliability tests (tests/reliability/).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

SpanKey = tuple[str, str]  # (TraceId, SpanId) as ClickHouse stores them: lower-case hex
_RETRYABLE = {429, 502, 503, 504}


def build_request(service: str, spans: int, attributes: int = 5) -> tuple[bytes, list[SpanKey]]:
    """An export request of ``spans`` spans of one new trace, each with a unique id; returns
    the serialised request and the (TraceId, SpanId) of every span in it."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "tracehouse-loadgen"
    trace_id = os.urandom(16)
    now = time.time_ns()
    keys = []
    for i in range(spans):
        span = ss.spans.add()
        span.trace_id = trace_id
        span.span_id = os.urandom(8)
        span.name = f"GET /load/{i % 10}"
        span.kind = Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = now + i
        span.end_time_unix_nano = now + i + 1_000_000
        for a in range(attributes):
            span.attributes.append(
                KeyValue(key=f"load.attr.{a}", value=AnyValue(string_value=f"v{i}-{a}"))
            )
        keys.append((trace_id.hex(), span.span_id.hex()))
    return request.SerializeToString(), keys


@dataclass
class LoadStats:
    """What a load generator sent and what the server acknowledged."""

    sent: set[SpanKey] = field(default_factory=set)
    acked: set[SpanKey] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        """HTTP answers that are neither an acknowledgement nor a retryable refusal."""
        return sum(
            n
            for outcome, n in self.outcomes.items()
            if outcome not in _OK_OUTCOMES and not outcome.startswith("connection:")
        )

    @property
    def connection_failures(self) -> int:
        """Requests that got no answer (refused, reset, timed out)."""
        return sum(n for outcome, n in self.outcomes.items() if outcome.startswith("connection:"))


_OK_OUTCOMES = {"200", *(str(s) for s in _RETRYABLE)}


class LoadGenerator:
    """OTLP/HTTP clients sending traces of unique spans to ``127.0.0.1:port``.

    Each client thread sends a request, and on a retryable answer (429/502/503/504) or a lost
    connection resends the same bytes after ``retry_pause_s``, as an OTLP exporter does, for
    at most ``max_attempts`` attempts; then it moves on (the spans stay unacknowledged).
    ``rate`` paces the total to that many spans per second (None: as fast as answered).
    Every span ever sent is in ``stats.sent``; those of 200 answers in ``stats.acked``.
    """

    def __init__(
        self,
        port: int,
        service: str,
        *,
        batch: int = 50,
        concurrency: int = 4,
        rate: float | None = None,
        attributes: int = 5,
        max_attempts: int = 20,
        retry_pause_s: float = 0.2,
        timeout_s: float = 30.0,
    ) -> None:
        self.port = port
        self.service = service
        self.batch = batch
        self.concurrency = concurrency
        self.rate = rate
        self.attributes = attributes
        self.max_attempts = max_attempts
        self.retry_pause_s = retry_pause_s
        self.timeout_s = timeout_s
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._client, name=f"loadgen-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> LoadStats:
        """Stop sending (requests in flight finish, with their retries) and return the stats."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.stats

    def run_for(self, seconds: float) -> LoadStats:
        self.start()
        self._stop.wait(seconds)
        return self.stop()

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        interval = self.batch * self.concurrency / self.rate if self.rate else 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    if self._stop.wait(delay):
                        return
                else:
                    next_at = time.monotonic()  # behind: do not burst to catch up
            body, keys = build_request(self.service, self.batch, self.attributes)
            with self._lock:
                self.stats.sent.update(keys)
            for attempt in range(self.max_attempts):
                outcome, conn = self._post(conn, body)
                with self._lock:
                    self.stats.outcomes[outcome] += 1
                    if outcome == "200":
                        self.stats.acked.update(keys)
                    if attempt:
                        self.stats.retries += 1
                if outcome == "200" or not _retryable(outcome):
                    break
                time.sleep(self.retry_pause_s)
        if conn is not None:
            conn.close()

    def _post(
        self, conn: http.client.HTTPConnection | None, body: bytes
    ) -> tuple[str, http.client.HTTPConnection | None]:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            response = conn.getresponse()
            text = response.read()
            if response.status not in (200, *_RETRYABLE):
                with self._lock:
                    if len(self.stats.errors) < 10:
                        self.stats.errors.append(f"HTTP {response.status}: {text[:200]!r}")
            return str(response.status), conn
        except OSError as exc:  # refused, reset, timed out: the server is down or restarting
            if conn is not None:
                conn.close()
            return f"connection:{type(exc).__name__}", None
        except http.client.HTTPException as exc:
            if conn is not None:
                conn.close()
            return f"connection:{type(exc).__name__}", None


def _retryable(outcome: str) -> bool:
    return outcome.startswith("connection:") or outcome in {str(s) for s in _RETRYABLE}


@dataclass
class Verdict:
    """sent == stored, the testbed's check: every acknowledged span stored exactly once."""

    sent: int
    acked: int
    stored: int
    lost: int  # acknowledged, not stored
    duplicated: int  # stored more than once
    unknown: int  # stored but never sent (must be 0)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unknown)


def verdict(stats: LoadStats, stored: Counter[SpanKey]) -> Verdict:
    """Compare what was acknowledged with the (TraceId, SpanId) counts read back."""
    return Verdict(
        sent=len(stats.sent),
        acked=len(stats.acked),
        stored=len(stored),
        lost=len(stats.acked - stored.keys()),
        duplicated=sum(1 for n in stored.values() if n > 1),
        unknown=len(stored.keys() - stats.sent),
    )


STORED_IDS_SQL = (
    "SELECT TraceId, SpanId, count() FROM otel_traces WHERE ServiceName = {service:String} "
    "GROUP BY TraceId, SpanId"
)


def stored_ids_from_engine(data_dir: Path, service: str) -> Counter[SpanKey]:
    """(TraceId, SpanId) counts of ``service`` in a stopped server's embedded engine, read in
    a child process (one chDB engine directory per process)."""
    script = (
        "import sys, clickhouse_connect\n"
        "c = clickhouse_connect.get_client(dsn=sys.argv[1])\n"
        "rows = c.query(sys.argv[2], parameters={'service': sys.argv[3]}).result_rows\n"
        "print('\\n'.join(f'{t} {s} {n}' for t, s, n in rows))\n"
    )
    dsn = f"chdb://{(data_dir / 'clickhouse').resolve()}"
    out = subprocess.run(
        [sys.executable, "-c", script, dsn, STORED_IDS_SQL, service],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: Counter[SpanKey] = Counter()
    for line in out.splitlines():
        if line.strip():
            trace_id, span_id, n = line.split()
            counts[(trace_id, span_id)] = int(n)
    return counts


# -- the bench -------------------------------------------------------------------------------


@dataclass
class SoakResult:
    max_spans_per_s: float
    target_spans_per_s: float
    seconds: float
    rss_curve: list[tuple[float, int]]  # (seconds since the soak started, RSS bytes)
    stats: LoadStats
    verdict: Verdict

    @property
    def ok(self) -> bool:
        return (
            self.verdict.ok and self.stats.error_count == 0 and self.stats.connection_failures == 0
        )


def _rss_sampler(
    process: psutil.Process, every_s: float, curve: list[tuple[float, int]], stop: threading.Event
) -> Callable[[], None]:
    started = time.monotonic()

    def sample() -> None:
        while True:
            try:
                curve.append((time.monotonic() - started, int(process.memory_info().rss)))
            except psutil.Error:
                return
            if stop.wait(every_s):
                return

    return sample


def soak(
    seconds: float,
    *,
    fraction: float = 0.8,
    calibrate_s: float = 15.0,
    concurrency: int = 8,
    batch: int = 100,
    sample_s: float = 5.0,
    progress: Callable[[str], None] = lambda _: None,
) -> SoakResult:
    """Run the soak against a fresh ``tracehouse serve`` (see the module docstring)."""
    from tracehouse.bench.ingest import _Server  # the same child server as bench ingest

    service = f"soak-{os.urandom(4).hex()}"
    with tempfile.TemporaryDirectory(prefix="tracehouse-soak-") as tmp:
        server = _Server(Path(tmp))
        try:
            progress(f"calibrating for {calibrate_s:g} s with {concurrency} clients …")
            calibration = LoadGenerator(
                server.http_port, service, batch=batch, concurrency=concurrency
            )
            started = time.monotonic()
            calibration.run_for(calibrate_s)
            maximum = len(calibration.stats.acked) / (time.monotonic() - started)
            target = max(maximum * fraction, float(batch))
            progress(f"maximum {maximum:,.0f} spans/s; soaking at {target:,.0f} spans/s …")
            curve: list[tuple[float, int]] = []
            done = threading.Event()
            sampler = threading.Thread(
                target=_rss_sampler(server.ps, sample_s, curve, done), daemon=True
            )
            load = LoadGenerator(
                server.http_port, service, batch=batch, concurrency=concurrency, rate=target
            )
            load.stats = calibration.stats  # one run, one check: calibration spans count too
            sampler.start()
            started = time.monotonic()
            load.run_for(seconds)
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            server.wait_inserted()
        finally:
            server.stop()
        stored = stored_ids_from_engine(Path(tmp), service)
    return SoakResult(maximum, target, elapsed, curve, load.stats, verdict(load.stats, stored))


def run_soak_bench(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    result = soak(
        args.minutes * 60,
        fraction=args.fraction,
        calibrate_s=args.calibrate,
        concurrency=args.concurrency,
        batch=args.batch,
        sample_s=args.sample,
        progress=say,
    )
    say("\nRSS of the server (seconds into the soak, MiB):")
    for at, sample in result.rss_curve:
        say(f"  {at:8.0f} s {sample / 2**20:8.1f}")
    rss = [r for _, r in result.rss_curve]
    if rss:
        half = rss[len(rss) // 2 :]
        say(
            f"RSS min {min(rss) / 2**20:.0f} MiB, max {max(rss) / 2**20:.0f} MiB, "
            f"median of the second half {statistics.median(half) / 2**20:.0f} MiB"
        )
    v = result.verdict
    say(f"\nmax {result.max_spans_per_s:,.0f} spans/s, soak at {result.target_spans_per_s:,.0f}")
    say(f"requests by outcome: {dict(sorted(result.stats.outcomes.items()))}")
    say(
        f"retries: {result.stats.retries}, errors: {result.stats.error_count}, "
        f"connection failures: {result.stats.connection_failures}"
    )
    for error in result.stats.errors:
        say(f"  {error}")
    say(
        f"spans sent {v.sent:,}, acknowledged {v.acked:,}, stored {v.stored:,}, "
        f"lost {v.lost}, duplicated {v.duplicated}, unknown {v.unknown}"
    )
    say("OK" if result.ok else "FAILED")
    return 0 if result.ok else 1
