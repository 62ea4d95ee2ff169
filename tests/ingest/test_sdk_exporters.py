"""The real OpenTelemetry Python SDK, exporting over OTLP/gRPC and OTLP/HTTP, lands exactly.

Each test builds its own tracer/logger provider (never the global one) with the SDK's own OTLP
exporters pointed at a tracehouse server, flushes, and reads the rows back from ClickHouse,
comparing every column to what the SDK was given (attribute encoding: docs/attribute-encoding.md).
"""

from __future__ import annotations

import os
import random
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as HttpLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.version import __version__ as SDK_VERSION
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from tests.conftest import query
from tracehouse.app import Tracehouse

TRANSPORTS = [pytest.param("grpc", id="grpc"), pytest.param("http", id="http")]

SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
SCOPE_NAME = "tests.sdk_exporters"
SCOPE_VERSION = "2.7.1"
SCOPE_ATTRIBUTES = {"scope.level": 3, "scope.kind": "test"}
EXPECTED_SCOPE_ATTRIBUTES = {"scope.kind": "test", "scope.level": "3"}

# Inserted out of key order on purpose: the stored maps must come back sorted.
SERVER_ATTRIBUTES: dict[str, Any] = {
    "z.last": "sorts last",
    "http.request.method": "GET",
    "app.ok": True,
    "app.disabled": False,
    "app.count": 42,
    "app.negative": -7,
    "app.big": 2**62 + 12_345,
    "app.ratio": 0.1,
    "app.whole": 2.0,
    "app.huge": 1e100,
    "app.precise": 0.1 + 0.2,
    "app.ninf": float("-inf"),
    "app.text": 'héllo ✓ "quoted"',
    "app.tags": ["a", "b", "c"],
    "app.texts": ["é", 'q"uote'],
    "app.flags": [True, False],
    "app.ids": [1, -2, 2**62],
    "app.weights": [0.5, 1.25],
    "app.empty": [],
}
EXPECTED_SERVER_ATTRIBUTES = {
    "app.big": "4611686018427400249",
    "app.count": "42",
    "app.disabled": "false",
    "app.empty": "[]",
    "app.flags": "[true,false]",
    "app.huge": "1e100",
    "app.ids": "[1,-2,4611686018427387904]",
    "app.negative": "-7",
    "app.ninf": "-inf",
    "app.ok": "true",
    "app.precise": "0.30000000000000004",
    "app.ratio": "0.1",
    "app.tags": '["a","b","c"]',
    "app.text": 'héllo ✓ "quoted"',
    "app.texts": '["é","q\\"uote"]',
    "app.weights": "[0.5,1.25]",
    "app.whole": "2",
    "http.request.method": "GET",
    "z.last": "sorts last",
}

# SQL expression of each column read back; timestamps as integer nanoseconds, so exact.
SPAN_FIELDS = {
    "Timestamp": "toUnixTimestamp64Nano(Timestamp)",
    "TraceId": "TraceId",
    "SpanId": "SpanId",
    "ParentSpanId": "ParentSpanId",
    "TraceState": "TraceState",
    "SpanName": "SpanName",
    "SpanKind": "SpanKind",
    "ServiceName": "ServiceName",
    "ResourceAttributes": "ResourceAttributes",
    "ScopeName": "ScopeName",
    "ScopeVersion": "ScopeVersion",
    "ScopeAttributes": "ScopeAttributes",
    "SpanAttributes": "SpanAttributes",
    "Duration": "Duration",
    "StatusCode": "StatusCode",
    "StatusMessage": "StatusMessage",
    "Events.Timestamp": "arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp)",
    "Events.Name": "Events.Name",
    "Events.Attributes": "Events.Attributes",
    "Links.TraceId": "Links.TraceId",
    "Links.SpanId": "Links.SpanId",
    "Links.TraceState": "Links.TraceState",
    "Links.Attributes": "Links.Attributes",
    "DroppedAttributesCount": "DroppedAttributesCount",
    "DroppedEventsCount": "DroppedEventsCount",
    "DroppedLinksCount": "DroppedLinksCount",
}

LOG_FIELDS = {
    "Timestamp": "toUnixTimestamp64Nano(Timestamp)",
    "TraceId": "TraceId",
    "SpanId": "SpanId",
    "TraceFlags": "TraceFlags",
    "SeverityText": "SeverityText",
    "SeverityNumber": "SeverityNumber",
    "ServiceName": "ServiceName",
    "Body": "Body",
    "ResourceSchemaUrl": "ResourceSchemaUrl",
    "ResourceAttributes": "ResourceAttributes",
    "ScopeSchemaUrl": "ScopeSchemaUrl",
    "ScopeName": "ScopeName",
    "ScopeVersion": "ScopeVersion",
    "ScopeAttributes": "ScopeAttributes",
    "LogAttributes": "LogAttributes",
    "EventName": "EventName",
    "DroppedAttributesCount": "DroppedAttributesCount",
}


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_* variables of the environment would change the resource or the exporters."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def _resource(service_name: str) -> Resource:
    return Resource.create(
        {
            "service.name": service_name,
            "service.version": "1.2.3",
            "service.instance.id": "instance-7",
            "deployment.environment.name": "ci",
            "host.cpu.count": 8,
            "app.debug": True,
        },
        schema_url=SCHEMA_URL,
    )


def _expected_resource(service_name: str) -> dict[str, str]:
    return {
        "app.debug": "true",
        "deployment.environment.name": "ci",
        "host.cpu.count": "8",
        "service.instance.id": "instance-7",
        "service.name": service_name,
        "service.version": "1.2.3",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": SDK_VERSION,
    }


def _span_exporter(transport: str, app: Tracehouse) -> SpanExporter:
    if transport == "grpc":
        return GrpcSpanExporter(endpoint=f"127.0.0.1:{app.ports.grpc}", insecure=True, timeout=10)
    return HttpSpanExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/traces", timeout=10)


def _log_exporter(transport: str, app: Tracehouse) -> LogRecordExporter:
    if transport == "grpc":
        return GrpcLogExporter(endpoint=f"127.0.0.1:{app.ports.grpc}", insecure=True, timeout=10)
    return HttpLogExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/logs", timeout=10)


@pytest.fixture
def base_ns() -> int:
    """A recent instant with an odd nanosecond part, so truncation to µs or ms would show."""
    return (time.time_ns() // 10**9 - 60) * 10**9 + 123_456_789


def _hex_ids(ctx: SpanContext) -> tuple[str, str]:
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _rows(app: Tracehouse, table: str, fields: dict[str, str], service: str) -> list[dict]:
    columns = ", ".join(fields.values())
    rows = query(
        app,
        f"SELECT {columns} FROM {table} WHERE ServiceName = {{s:String}} ORDER BY Timestamp",
        s=service,
    )
    return [dict(zip(fields, row, strict=True)) for row in rows]


def _assert_maps_sorted(row: dict[str, Any], map_columns: list[str]) -> None:
    for column in map_columns:
        value = row[column]
        maps = value if isinstance(value, list) else [value]
        for mapping in maps:
            assert list(mapping) == sorted(mapping), (column, list(mapping))


@pytest.fixture
def tracer_provider(service_name: str) -> Iterator[TracerProvider]:
    provider = TracerProvider(
        resource=_resource(service_name),
        shutdown_on_exit=False,
        span_limits=SpanLimits(max_events=2),
    )
    yield provider
    provider.shutdown()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdk_spans_land_exactly(
    server: Tracehouse,
    service_name: str,
    base_ns: int,
    transport: str,
    tracer_provider: TracerProvider,
) -> None:
    tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(transport, server)))
    tracer = tracer_provider.get_tracer(
        SCOPE_NAME, SCOPE_VERSION, schema_url=SCHEMA_URL, attributes=SCOPE_ATTRIBUTES
    )
    remote = SpanContext(
        trace_id=random.getrandbits(128) | 1,
        span_id=random.getrandbits(64) | 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor1", "abc"), ("rojo", "00f067aa0ba902b7")]),
    )
    other = SpanContext(
        trace_id=random.getrandbits(128) | 1, span_id=random.getrandbits(64) | 1, is_remote=True
    )
    links = [Link(remote, {"link.reason": "follows", "link.n": 1}), Link(other)]
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        error = exc
    b = base_ns
    with tracer.start_as_current_span(
        "GET /checkout",
        kind=SpanKind.SERVER,
        attributes=SERVER_ATTRIBUTES,
        links=links,
        start_time=b,
        end_on_exit=False,
    ) as server_span:
        server_span.add_event(
            "cache.miss",
            {"cache.key": "user:42", "cache.hit": False, "cache.size": 3},
            timestamp=b + 1_000_001,
        )
        server_span.record_exception(error, timestamp=b + 2_000_002)
        server_span.set_status(Status(StatusCode.ERROR, "boom"))
        with tracer.start_as_current_span(
            "SELECT orders",
            kind=SpanKind.CLIENT,
            attributes={"server.port": 5432, "db.system.name": "postgresql"},
            start_time=b + 10_000_007,
            end_on_exit=False,
        ) as client_span:
            client_span.set_status(Status(StatusCode.OK))
            client_span.end(end_time=b + 90_000_011)
        with tracer.start_as_current_span(
            "render", start_time=b + 100_000_013, end_on_exit=False
        ) as internal_span:
            for i in range(3):  # one more than SpanLimits(max_events=2) keeps
                internal_span.add_event(f"step-{i}", {"i": i}, timestamp=b + 100_000_013 + i)
            internal_span.end(end_time=b + 100_000_014)
        with tracer.start_as_current_span(
            "publish", kind=SpanKind.PRODUCER, start_time=b + 200_000_017, end_on_exit=False
        ) as producer_span:
            producer_span.end(end_time=b + 240_000_019)
        server_span.end(end_time=b + 250_000_321)
    # A span continuing a remote trace: parent and trace state come from the caller.
    with tracer.start_as_current_span(
        "consume",
        context=trace.set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.CONSUMER,
        start_time=b + 300_000_023,
        end_on_exit=False,
    ) as consumer_span:
        consumer_span.end(end_time=b + 310_000_029)
    assert tracer_provider.force_flush(timeout_millis=20_000)
    assert internal_span.dropped_events == 1  # the SDK did drop one, and says so on the wire

    trace_id, server_id = _hex_ids(server_span.get_span_context())
    _, client_id = _hex_ids(client_span.get_span_context())
    _, internal_id = _hex_ids(internal_span.get_span_context())
    _, producer_id = _hex_ids(producer_span.get_span_context())
    remote_trace, remote_span = _hex_ids(remote)
    other_trace, other_span = _hex_ids(other)
    consumer_trace, consumer_id = _hex_ids(consumer_span.get_span_context())
    assert consumer_trace == remote_trace

    common = {
        "ServiceName": service_name,
        "ResourceAttributes": _expected_resource(service_name),
        "ScopeName": SCOPE_NAME,
        "ScopeVersion": SCOPE_VERSION,
        "ScopeAttributes": EXPECTED_SCOPE_ATTRIBUTES,
        "TraceState": "",
        "StatusMessage": "",
        "Events.Timestamp": [],
        "Events.Name": [],
        "Events.Attributes": [],
        "Links.TraceId": [],
        "Links.SpanId": [],
        "Links.TraceState": [],
        "Links.Attributes": [],
        "DroppedAttributesCount": 0,
        "DroppedEventsCount": 0,
        "DroppedLinksCount": 0,
    }
    expected = [
        {
            **common,
            "Timestamp": b,
            "TraceId": trace_id,
            "SpanId": server_id,
            "ParentSpanId": "",
            "SpanName": "GET /checkout",
            "SpanKind": "Server",
            "SpanAttributes": EXPECTED_SERVER_ATTRIBUTES,
            "Duration": 250_000_321,
            "StatusCode": "Error",
            "StatusMessage": "boom",
            "Events.Timestamp": [b + 1_000_001, b + 2_000_002],
            "Events.Name": ["cache.miss", "exception"],
            "Events.Attributes": [
                {"cache.hit": "false", "cache.key": "user:42", "cache.size": "3"},
                {
                    "exception.escaped": "False",
                    "exception.message": "bad input",
                    "exception.stacktrace": "".join(traceback.format_exception(error)),
                    "exception.type": "ValueError",
                },
            ],
            # The SDK's exporters do not send a link's trace state.
            "Links.TraceId": [remote_trace, other_trace],
            "Links.SpanId": [remote_span, other_span],
            "Links.TraceState": ["", ""],
            "Links.Attributes": [{"link.n": "1", "link.reason": "follows"}, {}],
        },
        {
            **common,
            "Timestamp": b + 10_000_007,
            "TraceId": trace_id,
            "SpanId": client_id,
            "ParentSpanId": server_id,
            "SpanName": "SELECT orders",
            "SpanKind": "Client",
            "SpanAttributes": {"db.system.name": "postgresql", "server.port": "5432"},
            "Duration": 80_000_004,
            "StatusCode": "Ok",
        },
        {
            **common,
            "Timestamp": b + 100_000_013,
            "TraceId": trace_id,
            "SpanId": internal_id,
            "ParentSpanId": server_id,
            "SpanName": "render",
            "SpanKind": "Internal",
            "SpanAttributes": {},
            "Duration": 1,
            "StatusCode": "Unset",
            # SpanLimits(max_events=2) keeps the newest two.
            "Events.Timestamp": [b + 100_000_014, b + 100_000_015],
            "Events.Name": ["step-1", "step-2"],
            "Events.Attributes": [{"i": "1"}, {"i": "2"}],
            "DroppedEventsCount": 1,
        },
        {
            **common,
            "Timestamp": b + 200_000_017,
            "TraceId": trace_id,
            "SpanId": producer_id,
            "ParentSpanId": server_id,
            "SpanName": "publish",
            "SpanKind": "Producer",
            "SpanAttributes": {},
            "Duration": 40_000_002,
            "StatusCode": "Unset",
        },
        {
            **common,
            "Timestamp": b + 300_000_023,
            "TraceId": remote_trace,
            "SpanId": consumer_id,
            "ParentSpanId": remote_span,
            "TraceState": "vendor1=abc,rojo=00f067aa0ba902b7",
            "SpanName": "consume",
            "SpanKind": "Consumer",
            "SpanAttributes": {},
            "Duration": 10_000_006,
            "StatusCode": "Unset",
        },
    ]

    rows = _rows(server, "otel_traces", SPAN_FIELDS, service_name)
    assert len(rows) == len(expected), [row["SpanName"] for row in rows]
    for row, want in zip(rows, expected, strict=True):
        assert row == want, want["SpanName"]
        _assert_maps_sorted(
            row,
            [
                "ResourceAttributes",
                "ScopeAttributes",
                "SpanAttributes",
                "Events.Attributes",
                "Links.Attributes",
            ],
        )

    # The materialized view recorded the trace's time window (whole seconds).
    window = query(
        server,
        "SELECT toUnixTimestamp(min(Start)), toUnixTimestamp(max(End)) "
        "FROM otel_traces_trace_id_ts WHERE TraceId = {t:String}",
        t=trace_id,
    )
    assert window == [(b // 10**9, (b + 200_000_017) // 10**9)]
    window = query(
        server,
        "SELECT count() FROM otel_traces_trace_id_ts WHERE TraceId = {t:String}",
        t=remote_trace,
    )
    assert window[0][0] >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdk_logs_land_exactly(
    server: Tracehouse,
    service_name: str,
    base_ns: int,
    transport: str,
    tracer_provider: TracerProvider,
) -> None:
    provider = LoggerProvider(resource=_resource(service_name), shutdown_on_exit=False)
    try:
        provider.add_log_record_processor(
            SimpleLogRecordProcessor(_log_exporter(transport, server))
        )
        logger = provider.get_logger(
            SCOPE_NAME, SCOPE_VERSION, schema_url=SCHEMA_URL, attributes=SCOPE_ATTRIBUTES
        )
        tracer = tracer_provider.get_tracer(SCOPE_NAME)
        b = base_ns
        with tracer.start_as_current_span("handle") as span:
            logger.emit(
                timestamp=b + 1,
                observed_timestamp=b + 5,
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                body="disk almost full",
                attributes={
                    "z.last": "x",
                    "http.response.status_code": 507,
                    "retry": True,
                    "load": 0.75,
                    "paths": ["/a", "/b"],
                    "codes": [500, 503],
                    "ratios": [0.5, 2.0],
                    "checks": [False, True],
                    "big": 2**62 + 1,
                },
            )
            logger.emit(
                timestamp=b + 1_000_002,
                observed_timestamp=b + 1_000_003,
                severity_number=SeverityNumber.ERROR,
                severity_text="ERROR",
                body={"user": {"id": 42, "name": "ann"}, "items": [1, 2.5, True], "ok": False},
                attributes={"kind": "structured"},
                event_name="app.order",
            )
        # No timestamp: the observed time stands in. No active span: no trace context.
        logger.emit(
            observed_timestamp=b + 2_000_004,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body="outside any span",
        )
        # A trace context that was not sampled: ids kept, flags 0.
        unsampled = SpanContext(
            trace_id=random.getrandbits(128) | 1,
            span_id=random.getrandbits(64) | 1,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
        logger.emit(
            timestamp=b + 3_000_006,
            context=trace.set_span_in_context(NonRecordingSpan(unsampled)),
            severity_number=SeverityNumber.DEBUG,
            severity_text="DEBUG",
            body="not sampled",
        )
        logger.emit(
            timestamp=b + 4_000_008,
            severity_number=SeverityNumber.FATAL,
            severity_text="FATAL",
            body=b"\x00\x01\x02\xff",
            attributes={"encoding": "binary"},
        )
        assert provider.force_flush(timeout_millis=20_000)
    finally:
        provider.shutdown()

    span_trace, span_id = _hex_ids(span.get_span_context())
    # Sampled (0x01); SDK 1.45 also sets W3C level 2's random-trace-id flag (0x02).
    span_flags = int(span.get_span_context().trace_flags)
    assert span_flags & TraceFlags.SAMPLED
    unsampled_trace, unsampled_span = _hex_ids(unsampled)
    common = {
        "ServiceName": service_name,
        "ResourceSchemaUrl": SCHEMA_URL,
        "ResourceAttributes": _expected_resource(service_name),
        "ScopeSchemaUrl": SCHEMA_URL,
        "ScopeName": SCOPE_NAME,
        "ScopeVersion": SCOPE_VERSION,
        "ScopeAttributes": EXPECTED_SCOPE_ATTRIBUTES,
        "LogAttributes": {},
        "EventName": "",
        "DroppedAttributesCount": 0,
    }
    expected = [
        {
            **common,
            "Timestamp": b + 1,
            "TraceId": span_trace,
            "SpanId": span_id,
            "TraceFlags": span_flags,
            "SeverityText": "WARN",
            "SeverityNumber": 13,
            "Body": "disk almost full",
            "LogAttributes": {
                "big": "4611686018427387905",
                "checks": "[false,true]",
                "codes": "[500,503]",
                "http.response.status_code": "507",
                "load": "0.75",
                "paths": '["/a","/b"]',
                "ratios": "[0.5,2]",
                "retry": "true",
                "z.last": "x",
            },
        },
        {
            **common,
            "Timestamp": b + 1_000_002,
            "TraceId": span_trace,
            "SpanId": span_id,
            "TraceFlags": span_flags,
            "SeverityText": "ERROR",
            "SeverityNumber": 17,
            "Body": '{"user":{"id":42,"name":"ann"},"items":[1,2.5,true],"ok":false}',
            "LogAttributes": {"kind": "structured"},
            "EventName": "app.order",
        },
        {
            **common,
            "Timestamp": b + 2_000_004,
            "TraceId": "",
            "SpanId": "",
            "TraceFlags": 0,
            "SeverityText": "INFO",
            "SeverityNumber": 9,
            "Body": "outside any span",
        },
        {
            **common,
            "Timestamp": b + 3_000_006,
            "TraceId": unsampled_trace,
            "SpanId": unsampled_span,
            "TraceFlags": 0,
            "SeverityText": "DEBUG",
            "SeverityNumber": 5,
            "Body": "not sampled",
        },
        {
            **common,
            "Timestamp": b + 4_000_008,
            "TraceId": "",
            "SpanId": "",
            "TraceFlags": 0,
            "SeverityText": "FATAL",
            "SeverityNumber": 21,
            "Body": "AAEC/w==",  # bytes: standard base64
            "LogAttributes": {"encoding": "binary"},
        },
    ]

    rows = _rows(server, "otel_logs", LOG_FIELDS, service_name)
    assert len(rows) == len(expected), [row["Body"] for row in rows]
    for row, want in zip(rows, expected, strict=True):
        assert row == want, want["Body"]
        _assert_maps_sorted(row, ["ResourceAttributes", "ScopeAttributes", "LogAttributes"])
