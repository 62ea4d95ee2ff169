"""``tracehouse bench fuzz``: hostile OTLP/HTTP requests against a real ``tracehouse serve``.

Each case is one request to ``/v1/traces``, ``/v1/logs`` or ``/v1/metrics``, built from a seed
by :func:`make_case`: random bytes; valid requests (protobuf or JSON) truncated, bit-flipped,
spliced or re-encoded with the wrong content type; deeply nested JSON and AnyValues; invalid
UTF-8; huge attribute counts and values; wrong JSON types and out-of-range numbers; oversized
and gzip bodies. The server must answer every case with 200 (maybe with a partial success),
400, 413 or 415, or a retryable 503 — never 500 — and stay up with bounded memory.

Prints the cases run, the outcomes by status, the server's peak RSS, how many acknowledged
items ClickHouse refused (``tracehouse_ingest_spool_refused_items_total``), and whether a
valid request sent after the run is stored. Exit 1 on any 5xx other than 503, a dead
server, or a lost check request. The tests (tests/reliability/test_fuzz.py) run a small,
derandomized sample of the same cases through hypothesis.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import http.client
import json
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PATHS = ("/v1/traces", "/v1/logs", "/v1/metrics")
PROTO = "application/x-protobuf"
JSON = "application/json"
# Answers a hostile request may get (OTLP/HTTP spec); anything else is a finding.
ALLOWED_STATUSES = frozenset({200, 400, 413, 415, 503})


@dataclass(frozen=True)
class Case:
    """One hostile request."""

    kind: str
    path: str
    content_type: str
    body: bytes
    content_encoding: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.content_encoding:
            headers["Content-Encoding"] = self.content_encoding
        return headers


def _any_value(rng: random.Random, depth: int = 0) -> AnyValue:
    choice = rng.randrange(8 if depth < 4 else 5)
    if choice == 0:
        return AnyValue(string_value=_text(rng, rng.choice((0, 5, 50, 2000))))
    if choice == 1:
        return AnyValue(int_value=rng.choice((0, -1, 2**63 - 1, -(2**63), rng.randrange(1000))))
    if choice == 2:
        return AnyValue(double_value=rng.choice((0.0, -0.0, 1e308, float("nan"), float("inf"))))
    if choice == 3:
        return AnyValue(bool_value=rng.random() < 0.5)
    if choice == 4:
        return AnyValue(bytes_value=rng.randbytes(rng.randrange(64)))
    value = AnyValue()
    if choice in (5, 6):
        for _ in range(rng.randrange(4)):
            value.array_value.values.append(_any_value(rng, depth + 1))
    else:
        for i in range(rng.randrange(4)):
            value.kvlist_value.values.append(
                KeyValue(key=f"k{i}", value=_any_value(rng, depth + 1))
            )
    return value


def _text(rng: random.Random, length: int) -> str:
    alphabet = "aZ09 _-./\"'\\{}[]\n\t\u00e9\u4e2d\U0001f600\u0000"
    return "".join(rng.choices(alphabet, k=length))


def _attributes(rng: random.Random, count: int) -> list[KeyValue]:
    return [KeyValue(key=f"attr.{i}", value=_any_value(rng)) for i in range(count)]


def _id(rng: random.Random, size: int) -> bytes:
    return rng.choice((rng.randbytes(size), bytes(size), rng.randbytes(rng.randrange(20))))


def _valid_request(rng: random.Random, path: str) -> Message:
    """A request of the right type with a few items, some of them odd but well-formed."""
    attrs = rng.choice((0, 1, 3, 10))
    if path == "/v1/traces":
        request: Any = ExportTraceServiceRequest()  # Any: enum fields get out-of-range ints
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(_attributes(rng, attrs))
        rs.resource.attributes.append(
            KeyValue(key="service.name", value=AnyValue(string_value="fuzz"))
        )
        ss = rs.scope_spans.add()
        for _ in range(rng.randrange(1, 4)):
            span = ss.spans.add()
            span.trace_id = _id(rng, 16)
            span.span_id = _id(rng, 8)
            span.name = _text(rng, rng.randrange(20))
            span.kind = rng.choice((0, 2, 5, 77, -3))
            span.start_time_unix_nano = rng.choice((0, time.time_ns(), 2**64 - 1))
            span.end_time_unix_nano = rng.choice((0, time.time_ns(), 2**64 - 1))
            span.attributes.extend(_attributes(rng, attrs))
            span.status.code = rng.choice((0, 1, 2, 9))
            for _ in range(rng.randrange(3)):
                event = span.events.add()
                event.name = _text(rng, 8)
                event.attributes.extend(_attributes(rng, 2))
            for _ in range(rng.randrange(3)):
                link = span.links.add()
                link.trace_id = _id(rng, 16)
                link.span_id = _id(rng, 8)
        return cast(Message, request)
    if path == "/v1/logs":
        logs: Any = ExportLogsServiceRequest()
        rl = logs.resource_logs.add()
        rl.resource.attributes.extend(_attributes(rng, attrs))
        sl = rl.scope_logs.add()
        for _ in range(rng.randrange(1, 4)):
            record = sl.log_records.add()
            record.time_unix_nano = rng.choice((0, time.time_ns(), 2**64 - 1))
            record.severity_number = rng.choice((0, 9, 24, 99))
            record.body.CopyFrom(_any_value(rng))
            record.attributes.extend(_attributes(rng, attrs))
            record.trace_id = rng.choice((b"", _id(rng, 16)))
            record.span_id = rng.choice((b"", _id(rng, 8)))
        return cast(Message, logs)
    metrics: Any = ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    rm.resource.attributes.extend(_attributes(rng, attrs))
    sm = rm.scope_metrics.add()
    for _ in range(rng.randrange(1, 4)):
        metric = sm.metrics.add()
        metric.name = rng.choice(("", "fuzz.metric", _text(rng, 10)))
        kind = rng.choice(("gauge", "sum", "histogram", "exponential_histogram", "summary"))
        point = getattr(metric, kind).data_points.add()
        point.time_unix_nano = rng.choice((0, time.time_ns(), 2**64 - 1))
        point.attributes.extend(_attributes(rng, attrs))
        if kind in ("gauge", "sum"):
            point.as_double = rng.choice((1.5, float("nan"), float("-inf")))
        elif kind == "histogram":
            point.bucket_counts.extend(rng.randrange(10) for _ in range(rng.randrange(5)))
            point.explicit_bounds.extend(rng.random() for _ in range(rng.randrange(5)))
        elif kind == "exponential_histogram":
            point.scale = rng.choice((0, 20, -10, 2**31 - 1))
            point.positive.bucket_counts.extend(range(rng.randrange(5)))
        else:
            q = point.quantile_values.add()
            q.quantile = rng.choice((0.5, -1.0, 2.0, float("nan")))
    return cast(Message, metrics)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _nested_any_value_proto(depth: int) -> bytes:
    """A traces request whose one attribute is an AnyValue nested ``depth`` arrays deep,
    encoded by hand (the protobuf runtime refuses to build messages past its depth limit)."""
    value = _field(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(5, _field(1, value))  # AnyValue.array_value → ArrayValue.values
    key_value = _field(1, b"deep") + _field(2, value)  # KeyValue
    resource = _field(1, key_value)  # Resource.attributes
    return _field(1, _field(1, resource))  # request.resource_spans → ResourceSpans.resource


@functools.lru_cache(maxsize=8)
def _int_attributes(count: int, number: int) -> bytes:
    """``count`` KeyValues ``a<i>`` = int ``i``, each as repeated field ``number``, encoded."""
    out = []
    for i in range(count):
        value = _varint(3 << 3) + _varint(i)  # AnyValue.int_value
        out.append(_field(number, _field(1, f"a{i}".encode()) + _field(2, value)))
    return b"".join(out)


def _many_attributes_proto(count: int, trace_id: bytes, span_id: bytes) -> bytes:
    """A traces request whose resource has ``count`` attributes and whose one span has the
    first half of them, encoded by hand: the same bytes ``SerializeToString`` gives (tested),
    without building ``count`` messages in Python for every case."""
    resource = _int_attributes(count, 1)  # Resource.attributes
    span = _field(1, trace_id) + _field(2, span_id) + _int_attributes(count // 2, 9)
    scope_spans = _field(2, span)  # ScopeSpans.spans
    resource_spans = _field(1, resource) + _field(2, scope_spans)
    return _field(1, resource_spans)  # request.resource_spans


@functools.lru_cache(maxsize=4)
def _gzip_bomb(limit: int) -> bytes:
    """Gzip of ``limit + 1`` zero bytes (small on the wire, past the limit once inflated)."""
    return gzip.compress(b"\0" * (limit + 1))


def _mutate(rng: random.Random, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(rng.randrange(1, 6)):
        if not data:
            break
        op = rng.randrange(5)
        i = rng.randrange(len(data))
        if op == 0:
            del data[i:]  # truncate
        elif op == 1:
            data[i] ^= 1 << rng.randrange(8)  # flip a bit
        elif op == 2:
            data[i:i] = rng.randbytes(rng.randrange(1, 16))  # insert junk
        elif op == 3:
            j = rng.randrange(i, len(data) + 1)
            data[i:i] = data[i:j]  # duplicate a slice
        else:
            data[i] = rng.choice((0x00, 0x7F, 0x80, 0xFF))  # boundary bytes
    return bytes(data)


def _json_of(message: Message) -> bytes:
    return json.dumps(json_format.MessageToDict(message)).encode()


def make_case(rng: random.Random, max_request_bytes: int = 4 * 2**20) -> Case:
    """A hostile request drawn from ``rng`` (see the module docstring for the kinds)."""
    path = rng.choice(PATHS)
    kind = rng.choice(
        (
            "random-bytes",
            "mutated-proto",
            "mutated-json",
            "truncated-proto",
            "nested-json",
            "nested-anyvalue",
            "invalid-utf8",
            "many-attributes",
            "huge-values",
            "wrong-json-types",
            "wrong-content-type",
            "gzip",
            "oversized",
        )
    )
    if kind == "random-bytes":
        body = rng.randbytes(rng.choice((0, 1, 16, 300, 5000)))
        return Case(kind, path, rng.choice((PROTO, JSON)), body)
    if kind == "mutated-proto":
        return Case(kind, path, PROTO, _mutate(rng, _valid_request(rng, path).SerializeToString()))
    if kind == "mutated-json":
        return Case(kind, path, JSON, _mutate(rng, _json_of(_valid_request(rng, path))))
    if kind == "truncated-proto":
        body = _valid_request(rng, path).SerializeToString()
        return Case(kind, path, PROTO, body[: rng.randrange(len(body) + 1)])
    if kind == "nested-json":
        depth = rng.choice((50, 500, 5_000, 200_000))
        opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
        inner = opener * depth + b"1" + closer * depth
        key = rng.choice((b"resourceSpans", b"resourceLogs", b"resourceMetrics", b"x"))
        return Case(kind, path, JSON, b'{"' + key + b'":' + inner + b"}")
    if kind == "nested-anyvalue":
        return Case(kind, "/v1/traces", PROTO, _nested_any_value_proto(rng.choice((5, 90, 150))))
    if kind == "invalid-utf8":
        good = _valid_request(rng, path)
        body = good.SerializeToString() if rng.random() < 0.5 else _json_of(good)
        bad = rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"))
        # Replace the text of a string field (here: an 'attr.' key or 'fuzz') with bad bytes.
        for needle in (b"attr.", b"fuzz", b"k0"):
            if needle in body:
                body = body.replace(needle, bad + needle[len(bad) :], 1)
                break
        return Case(kind, path, PROTO if body[:1] != b"{" else JSON, body)
    if kind == "many-attributes":
        count = rng.choice((1_000, 20_000, 100_000))
        body = _many_attributes_proto(count, rng.randbytes(16), rng.randbytes(8))
        return Case(kind, "/v1/traces", PROTO, body)
    if kind == "huge-values":
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        span = rs.scope_spans.add().spans.add()
        span.trace_id, span.span_id = rng.randbytes(16), rng.randbytes(8)
        size = rng.choice((200_000, 1_000_000, 3_000_000))
        span.name = "n" * (size // 4)
        span.attributes.append(KeyValue(key="big", value=AnyValue(string_value="v" * size)))
        span.attributes.append(KeyValue(key="k" * 100_000, value=AnyValue(int_value=1)))
        return Case(kind, "/v1/traces", PROTO, request.SerializeToString())
    if kind == "wrong-json-types":
        value = rng.choice(
            (
                '"99999999999999999999999999"',
                "1e400",
                "-1",
                "[]",
                "{}",
                "null",
                "true",
                '"zz"',
                '"0x10"',
                "NaN",
                '"' + "a" * 40 + '"',
            )
        )
        field = rng.choice(
            ("traceId", "spanId", "startTimeUnixNano", "kind", "attributes", "status", "name")
        )
        text = (
            '{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"spans":[{'
            '"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",'
            f'"{field}":{value}}}]}}]}}]}}'
        )
        return Case(kind, "/v1/traces", JSON, text.encode())
    if kind == "wrong-content-type":
        body = _valid_request(rng, path).SerializeToString()
        content_type = rng.choice((JSON, "text/plain", "", "application/x-protobuf; charset=x"))
        return Case(kind, path, content_type, body)
    if kind == "gzip":
        body = _valid_request(rng, path).SerializeToString()
        choice = rng.randrange(3)
        if choice == 0:
            payload = gzip.compress(body)
        elif choice == 1:
            payload = gzip.compress(body)[: rng.randrange(5, 30)]  # truncated stream
        else:
            payload = _gzip_bomb(max_request_bytes)  # a bomb past the limit
        return Case(kind, path, PROTO, payload, "gzip")
    body = b"\0" * (max_request_bytes + 1)
    return Case("oversized", path, PROTO, body)


@dataclass
class FuzzResult:
    cases: int
    outcomes: Counter[str]
    by_kind: Counter[tuple[str, str]]
    findings: list[str]

    def add(self, n: int, case: Case, route: str, status: str) -> None:
        """Count one answer (``route``: http, grpc or decoder); a bad one is a finding."""
        self.cases += 1
        self.outcomes[f"{route} {status}"] += 1
        self.by_kind[(case.kind, f"{route} {status}")] += 1
        if not _allowed(route, status) and len(self.findings) < 20:
            self.findings.append(f"case {n} ({case.kind} {case.path} via {route}): {status}")


def _allowed(route: str, status: str) -> bool:
    if route == "grpc":
        return status in ALLOWED_GRPC_CODES
    return status.isdigit() and int(status) in ALLOWED_STATUSES


def run_cases(
    send: Callable[[Case], int], cases: int, seed: int, max_request_bytes: int
) -> FuzzResult:
    """Send ``cases`` cases drawn from ``seed``; ``send`` returns the HTTP status."""
    rng = random.Random(seed)
    result = FuzzResult(0, Counter(), Counter(), [])
    for n in range(cases):
        case = make_case(rng, max_request_bytes)
        try:
            status = str(send(case))
        except (OSError, http.client.HTTPException) as exc:
            status = f"no answer ({type(exc).__name__})"
        result.add(n, case, "http", status)
    return result


# -- the bench: most cases through the decoders in this process, a share over the wire --------

# gRPC status codes a hostile export may get (OTLP spec); INTERNAL or UNKNOWN is a finding.
ALLOWED_GRPC_CODES = frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})
# Kinds about the HTTP layer (body limit, content types, gzip): always sent over HTTP.
HTTP_KINDS = frozenset({"gzip", "oversized", "wrong-content-type"})
# Kinds whose accepted requests differ only in random ids and sizes (so ClickHouse parses the
# same structure every time) and cost the server most to store: their decoder cases are not
# forwarded; their HTTP and gRPC share is stored as any accepted request is.
SAME_SHAPE_KINDS = frozenset({"many-attributes", "huge-values"})
_SIGNALS = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}
_GRPC_METHODS = {
    "/v1/traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "/v1/logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "/v1/metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}


def route_of(case: Case, draw: float, http_share: float, grpc_share: float) -> str:
    """Where a case goes: ``http``, ``grpc`` or ``decoder`` (``draw`` uniform in [0, 1))."""
    if case.kind in HTTP_KINDS:
        return "http"
    if draw < http_share:
        return "http"
    if draw < http_share + grpc_share and case.content_type == PROTO:
        return "grpc"
    return "decoder"


class _Collector:
    """Stands in for the ingest pipeline behind an in-process ``OtlpReceiver``: keeps what the
    receiver accepted, to be forwarded to the server in batches."""

    def __init__(self) -> None:
        self.pending: dict[str, list[bytes]] = {}
        self.last: tuple[str, bytes] | None = None

    def submit(self, signal: Any, payload: bytes, items: int, key: bytes | None = None) -> Any:
        from concurrent.futures import Future

        self.last = (str(signal.value), payload)
        done: Future[None] = Future()
        done.set_result(None)
        return done


class Decoder:
    """The server's request handling up to the pipeline (``OtlpReceiver.submit``: decode,
    validate, count, key), in this process. ``decode`` returns "200" or "400" like the HTTP
    endpoint, or ``crash <Exception>`` for anything the endpoint would answer with a 500."""

    def __init__(self, limits: Any = None) -> None:
        from tracehouse.ingest.pipeline import IngestPipeline
        from tracehouse.ingest.receiver import OtlpReceiver
        from tracehouse.storage.otlp_sql import ItemLimits

        self.collector = _Collector()
        self.receiver = OtlpReceiver(
            cast(IngestPipeline, self.collector), limits or ItemLimits(131_072)
        )

    def decode(self, case: Case) -> tuple[str, bytes | None]:
        """The status and, when accepted, the protobuf payload the pipeline would store."""
        from tracehouse.ingest.receiver import InvalidRequest
        from tracehouse.model import Signal

        encoding: Literal["proto", "json"] = "json" if case.content_type == JSON else "proto"
        self.collector.last = None
        try:
            self.receiver.submit(Signal(_SIGNALS[case.path]), case.body, encoding)
        except InvalidRequest:
            return "400", None
        except Exception as exc:  # any other exception is the finding
            return f"crash {type(exc).__name__}: {str(exc)[:200]}", None
        return "200", self.collector.last[1] if self.collector.last else None


class _Wire:
    """HTTP and gRPC clients to the server, one connection per sending thread."""

    def __init__(self, http_port: int, grpc_port: int) -> None:
        import grpc

        self.http_port = http_port
        self._local = threading.local()
        self._channel = grpc.insecure_channel(
            f"127.0.0.1:{grpc_port}",
            options=[("grpc.max_send_message_length", 64 * 2**20)],
        )
        self._grpc_error = grpc.RpcError

    def http(self, path: str, body: bytes, headers: dict[str, str]) -> str:
        # A keep-alive connection the server closed while idle: send once more on a new one.
        for attempt in range(2):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=120)
                self._local.conn = conn
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    self._local.conn = None
                return str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if fresh or attempt:
                    return f"no answer ({type(exc).__name__})"
        raise AssertionError("unreachable")

    def grpc(self, path: str, body: bytes) -> str:
        call = self._channel.unary_unary(
            _GRPC_METHODS[path], request_serializer=None, response_deserializer=None
        )
        try:
            call(body, timeout=120)
        except self._grpc_error as exc:
            return str(exc.code().name)
        return "OK"

    def close(self) -> None:
        self._channel.close()


def _rss(pid: int | None = None) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def run_fuzz_bench(args: argparse.Namespace) -> int:
    import os

    from tracehouse.bench.ingest import _Server

    # A smaller body limit than the default 64 MiB, so oversized cases stay cheap to send.
    limit = 4 * 2**20
    os.environ["TRACEHOUSE_MAX_REQUEST_BYTES"] = str(limit)
    with tempfile.TemporaryDirectory(prefix="tracehouse-fuzz-") as tmp:
        server = _Server(Path(tmp))
        try:
            return _fuzz_server(args, server, limit, Path(tmp))
        finally:
            if server.process.poll() is None:
                server.stop()


def _fuzz_server(args: argparse.Namespace, server: Any, limit: int, tmp: Path) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tracehouse.bench.soak import LoadGenerator, stored_ids_from_engine, verdict

    http_share = float(getattr(args, "http_share", 0.1))
    grpc_share = float(getattr(args, "grpc_share", 0.05))
    concurrency = int(getattr(args, "concurrency", 4))
    started = time.perf_counter()
    server_rss_start, bench_rss_start = _rss(server.process.pid), _rss()
    bench_peak = bench_rss_start
    result = FuzzResult(0, Counter(), Counter(), [])
    lock = threading.Lock()
    wire = _Wire(server.http_port, server.grpc_port)
    decoder = Decoder()
    pending: dict[str, list[bytes]] = {path: [] for path in PATHS}
    forwarded = Counter[str]()
    not_forwarded = 0
    slots = threading.BoundedSemaphore(2 * concurrency)  # cases in flight: memory stays bounded
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="fuzz-send")

    def send(n: int, case: Case, route: str) -> None:
        try:
            if route == "grpc":
                status = wire.grpc(case.path, case.body)
            else:
                status = wire.http(case.path, case.body, case.headers())
            with lock:
                result.add(n, case, route, status)
        finally:
            slots.release()

    def forward(path: str, payloads: list[bytes]) -> None:
        # Concatenated protobuf messages parse as one with every repeated field joined.
        body = b"".join(payloads)
        status = wire.http(path, body, {"Content-Type": PROTO})
        with lock:
            forwarded[status] += len(payloads)
            if status != "200" and len(result.findings) < 20:
                result.findings.append(f"forwarded batch of {len(payloads)} to {path}: {status}")

    def flush(path: str) -> None:
        payloads, pending[path] = pending[path], []
        if payloads:
            slots.acquire()
            pool.submit(lambda: _release_after(slots, forward, path, payloads))

    rng = random.Random(args.seed)
    routes = random.Random(args.seed ^ 0x5EED)
    for n in range(args.cases):
        case = make_case(rng, limit)
        route = route_of(case, routes.random(), http_share, grpc_share)
        if route == "decoder":
            status, payload = decoder.decode(case)
            with lock:
                result.add(n, case, route, status)
            if payload is not None and (case.kind in SAME_SHAPE_KINDS or len(payload) > limit):
                not_forwarded += 1
            elif payload is not None:
                # Flush first when this one would take the batch past the server's limit.
                if sum(map(len, pending[case.path])) + len(payload) > limit:
                    flush(case.path)
                pending[case.path].append(payload)
        else:
            slots.acquire()
            pool.submit(send, n, case, route)
        if (n + 1) % args.progress == 0 or n + 1 == args.cases:
            bench_peak = max(bench_peak, _rss())
            alive = server.process.poll() is None
            print(
                f"{n + 1:>8,} cases, {time.perf_counter() - started:7.0f} s, server RSS "
                f"{_rss(server.process.pid) / 2**20 if alive else 0:.0f} MiB "
                f"(peak {server._peak / 2**20:.0f}), bench RSS {_rss() / 2**20:.0f} MiB, "
                f"server {'up' if alive else 'DEAD'}; {_bad_answers(result)}",
                flush=True,
            )
            if not alive:
                break
    for path in PATHS:
        flush(path)
    pool.shutdown(wait=True)
    wire.close()
    elapsed = time.perf_counter() - started
    check = LoadGenerator(server.http_port, "fuzz-check", batch=10, concurrency=1)
    check.run_for(1.0)
    server.wait_inserted()
    conn_api = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=10)
    conn_api.request("GET", "/metrics")
    metrics_text = conn_api.getresponse().read().decode()
    refused = _metric(metrics_text, "tracehouse_ingest_spool_refused_items_total")
    server_rss_end = _rss(server.process.pid)
    peak = server.stop()
    check_verdict = verdict(check.stats, stored_ids_from_engine(tmp, "fuzz-check"))
    print(
        f"\ncases: {result.cases:,} in {elapsed:.0f} s "
        f"({elapsed / max(result.cases, 1) * 1000:.1f} ms each)"
    )
    by_status = ", ".join(f"{k}: {v:,}" for k, v in sorted(result.outcomes.items()))
    print(f"outcomes by route and status: {by_status}")
    print("by kind:")
    for (kind, status), n in sorted(result.by_kind.items()):
        print(f"  {kind:<20} {status:>24} {n:>8,}")
    print(
        f"accepted decoder cases forwarded to the server, by status: {dict(forwarded)}; "
        f"not forwarded ({', '.join(sorted(SAME_SHAPE_KINDS))}): {not_forwarded:,}"
    )
    print(
        f"server RSS: start {server_rss_start / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, "
        f"end {server_rss_end / 2**20:.0f} MiB"
    )
    print(
        f"bench (decoder) RSS: start {bench_rss_start / 2**20:.0f} MiB, "
        f"peak {bench_peak / 2**20:.0f} MiB, end {_rss() / 2**20:.0f} MiB"
    )
    print(f"acknowledged items ClickHouse refused (set aside): {refused:.0f}")
    print(f"valid requests after the run: {check_verdict}")
    for finding in result.findings:
        print(f"FINDING {finding}")
    ok = not result.findings and check_verdict.ok and check_verdict.acked > 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def _bad_answers(result: FuzzResult) -> str:
    """The answers so far that are findings (5xx, no answer, a crash), for progress lines."""
    bad = sum(n for key, n in result.outcomes.items() if not _allowed(*key.split(" ", 1)))
    fivexx = sum(n for key, n in result.outcomes.items() if key.split(" ", 1)[1][:1] == "5")
    return f"5xx {fivexx} (503 allowed), findings {bad}"


def _release_after(
    slots: threading.BoundedSemaphore, work: Callable[..., None], *args: Any
) -> None:
    try:
        work(*args)
    finally:
        slots.release()


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )
