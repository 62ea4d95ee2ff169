"""OTLP metrics over gRPC and HTTP (protobuf and JSON): every point type lands in the
Collector's metric tables with its resource, scope and point attributes and exemplars; bad
points are reported as partial success; bad requests get the spec's status; nothing
acknowledged is lost and a retried request is stored once."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    AGGREGATION_TEMPORALITY_DELTA,
    Metric,
)

from tests.conftest import OTLP_EXAMPLES, ServerFactory, query
from tests.ingest.otlp_factory import metrics_request, string_attributes
from tests.ingest.test_durability import FlakySink, _wait_for
from tracehouse.app import Tracehouse

PROTO = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
TRACE_ID = bytes(range(1, 17))
SPAN_ID = bytes(range(1, 9))
T0 = 1_795_000_000_000_000_000  # ns; a fixed time keeps the expected rows exact
TABLES = (
    "otel_metrics_gauge",
    "otel_metrics_sum",
    "otel_metrics_histogram",
    "otel_metrics_exponential_histogram",
    "otel_metrics_summary",
)


def _every_type() -> list[Metric]:
    """One metric of each point type, each with attributes; numbers chosen to be exact."""
    gauge = Metric(name="app.cpu.utilization", unit="1", description="CPU share")
    point = gauge.gauge.data_points.add(time_unix_nano=T0, as_double=0.625, flags=1)
    point.attributes.extend(string_attributes({"cpu": "0", "state": "user"}))
    exemplar = point.exemplars.add(
        time_unix_nano=T0 - 5, as_double=0.75, trace_id=TRACE_ID, span_id=SPAN_ID
    )
    exemplar.filtered_attributes.extend(string_attributes({"thread": "main"}))
    gauge.gauge.data_points.add(time_unix_nano=T0 + 1, as_int=-3)

    counter = Metric(name="app.requests", unit="{request}")
    counter.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    counter.sum.is_monotonic = True
    point = counter.sum.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_int=42)
    point.attributes.extend(string_attributes({"route": "/cart"}))
    point.exemplars.add(time_unix_nano=T0 - 1, as_int=7, trace_id=TRACE_ID, span_id=SPAN_ID)

    updown = Metric(name="app.queue.length")
    updown.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_DELTA
    updown.sum.is_monotonic = False
    updown.sum.data_points.add(start_time_unix_nano=T0 - 10, time_unix_nano=T0, as_double=-2.5)

    histogram = Metric(name="app.latency", unit="ms")
    histogram.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    bucketed = histogram.histogram.data_points.add(
        start_time_unix_nano=T0 - 10,
        time_unix_nano=T0,
        count=6,
        sum=123.5,
        bucket_counts=[1, 2, 3],
        explicit_bounds=[10.0, 100.0],
        min=1.5,
        max=250.0,
    )
    bucketed.attributes.extend(string_attributes({"route": "/cart"}))
    bucketed.exemplars.add(
        time_unix_nano=T0 - 2, as_double=250.0, trace_id=TRACE_ID, span_id=SPAN_ID
    )

    exponential = Metric(name="app.size", unit="By")
    exponential.exponential_histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_DELTA
    scaled = exponential.exponential_histogram.data_points.add(
        start_time_unix_nano=T0 - 10,
        time_unix_nano=T0,
        count=7,
        sum=-3.0,
        scale=3,
        zero_count=1,
        min=-8.0,
        max=4.0,
    )
    scaled.positive.offset = 2
    scaled.positive.bucket_counts.extend([1, 2])
    scaled.negative.offset = -1
    scaled.negative.bucket_counts.extend([3])

    summary = Metric(name="app.gc.pause", unit="s")
    quantiles = summary.summary.data_points.add(
        start_time_unix_nano=T0 - 10, time_unix_nano=T0, count=4, sum=2.0
    )
    quantiles.quantile_values.add(quantile=0.5, value=0.25)
    quantiles.quantile_values.add(quantile=0.99, value=1.5)
    return [gauge, counter, updown, histogram, exponential, summary]


def _request(service: str) -> ExportMetricsServiceRequest:
    request = metrics_request(service, *_every_type(), resource={"host.name": "node-1"})
    rm = request.resource_metrics[0]
    rm.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    sm = rm.scope_metrics[0]
    sm.schema_url = "https://opentelemetry.io/schemas/1.25.0"
    sm.scope.version = "1.2.3"
    sm.scope.attributes.extend(string_attributes({"scope.kind": "test"}))
    sm.scope.dropped_attributes_count = 2
    return request


def _send(app: Tracehouse, transport: str, request: ExportMetricsServiceRequest) -> Any:
    """Export over one transport; the decoded ExportMetricsServiceResponse."""
    response = ExportMetricsServiceResponse()
    if transport == "grpc":
        with grpc.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
            call = channel.unary_unary(
                METRICS_METHOD, request_serializer=None, response_deserializer=None
            )
            response.ParseFromString(call(request.SerializeToString(), timeout=30))
        return response
    url = f"http://127.0.0.1:{app.ports.http}/v1/metrics"
    if transport == "http-json":
        body = json.dumps(_otlp_json(request)).encode()
        answer = httpx.post(url, content=body, headers=JSON, timeout=30)
        assert answer.status_code == 200, answer.text
        return json_format.ParseDict(answer.json(), response)
    answer = httpx.post(url, content=request.SerializeToString(), headers=PROTO, timeout=30)
    assert answer.status_code == 200, answer.text
    response.ParseFromString(answer.content)
    return response


def _otlp_json(request: ExportMetricsServiceRequest) -> dict[str, Any]:
    """OTLP/JSON: proto3 JSON with trace and span ids as hex (the spec's one difference)."""
    document = json_format.MessageToDict(request)
    for rm in document["resourceMetrics"]:
        for sm in rm["scopeMetrics"]:
            for metric in sm["metrics"]:
                for kind in ("gauge", "sum", "histogram", "exponentialHistogram", "summary"):
                    for point in metric.get(kind, {}).get("dataPoints", []):
                        for exemplar in point.get("exemplars", []):
                            exemplar["traceId"] = TRACE_ID.hex()
                            exemplar["spanId"] = SPAN_ID.hex()
    return document


def _rows(app: Tracehouse, table: str, service: str, columns: str) -> list[tuple[Any, ...]]:
    return query(
        app,
        f"SELECT {columns} FROM {table} WHERE ServiceName = {{s:String}} "
        "ORDER BY MetricName, TimeUnix",
        s=service,
    )


def _count(app: Tracehouse, table: str, service: str) -> int:
    sql = f"SELECT count() FROM {table} WHERE ServiceName = {{s:String}}"
    return int(query(app, sql, s=service)[0][0])


TRANSPORTS = ["grpc", "http-proto", "http-json"]
COMMON = (
    "MetricName, MetricUnit, MetricDescription, Attributes, "
    "toUnixTimestamp64Nano(StartTimeUnix), toUnixTimestamp64Nano(TimeUnix)"
)
EXEMPLARS = (
    "Exemplars.FilteredAttributes, arrayMap(t -> toUnixTimestamp64Nano(t), Exemplars.TimeUnix), "
    "Exemplars.Value, Exemplars.TraceId, Exemplars.SpanId"
)
HEX_TRACE = TRACE_ID.hex()
HEX_SPAN = SPAN_ID.hex()


@pytest.fixture(scope="module")
def shared(make_module_server: ServerFactory) -> Tracehouse:
    return make_module_server()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_point_type_lands_with_its_attributes_and_exemplars(
    shared: Tracehouse, service_name: str, transport: str
) -> None:
    app = shared
    response = _send(app, transport, _request(service_name))
    assert not response.HasField("partial_success")

    gauge = _rows(app, "otel_metrics_gauge", service_name, f"{COMMON}, Value, Flags, {EXEMPLARS}")
    assert gauge == [
        (
            "app.cpu.utilization", "1", "CPU share", {"cpu": "0", "state": "user"}, 0, T0,
            0.625, 1, [{"thread": "main"}], [T0 - 5], [0.75], [HEX_TRACE], [HEX_SPAN],
        ),
        ("app.cpu.utilization", "1", "CPU share", {}, 0, T0 + 1, -3.0, 0, [], [], [], [], []),
    ]  # fmt: skip
    sums = _rows(
        app,
        "otel_metrics_sum",
        service_name,
        f"{COMMON}, Value, AggregationTemporality, IsMonotonic, {EXEMPLARS}",
    )
    assert sums == [
        ("app.queue.length", "", "", {}, T0 - 10, T0, -2.5, 1, False, [], [], [], [], []),
        (
            "app.requests", "{request}", "", {"route": "/cart"}, T0 - 10, T0, 42.0, 2, True,
            [{}], [T0 - 1], [7.0], [HEX_TRACE], [HEX_SPAN],
        ),
    ]  # fmt: skip
    histogram = _rows(
        app,
        "otel_metrics_histogram",
        service_name,
        f"{COMMON}, Count, Sum, BucketCounts, ExplicitBounds, Min, Max, AggregationTemporality, "
        f"{EXEMPLARS}",
    )
    assert histogram == [
        (
            "app.latency", "ms", "", {"route": "/cart"}, T0 - 10, T0, 6, 123.5, [1, 2, 3],
            [10.0, 100.0], 1.5, 250.0, 2, [{}], [T0 - 2], [250.0], [HEX_TRACE], [HEX_SPAN],
        )
    ]  # fmt: skip
    exponential = _rows(
        app,
        "otel_metrics_exponential_histogram",
        service_name,
        f"{COMMON}, Count, Sum, Scale, ZeroCount, PositiveOffset, PositiveBucketCounts, "
        "NegativeOffset, NegativeBucketCounts, Min, Max, AggregationTemporality",
    )
    assert exponential == [
        ("app.size", "By", "", {}, T0 - 10, T0, 7, -3.0, 3, 1, 2, [1, 2], -1, [3], -8.0, 4.0, 1)
    ]
    summary = _rows(
        app,
        "otel_metrics_summary",
        service_name,
        f"{COMMON}, Count, Sum, ValueAtQuantiles.Quantile, ValueAtQuantiles.Value",
    )
    assert summary == [
        ("app.gc.pause", "s", "", {}, T0 - 10, T0, 4, 2.0, [0.5, 0.99], [0.25, 1.5]),
    ]
    # Resource and scope columns are the same on every table.
    for table in TABLES:
        assert _rows(
            app,
            table,
            service_name,
            "DISTINCT ResourceAttributes, ResourceSchemaUrl, ScopeName, ScopeVersion, "
            "ScopeAttributes, ScopeDroppedAttrCount, ScopeSchemaUrl",
        ) == [
            (
                {"host.name": "node-1", "service.name": service_name},
                "https://opentelemetry.io/schemas/1.26.0",
                "tests",
                "1.2.3",
                {"scope.kind": "test"},
                2,
                "https://opentelemetry.io/schemas/1.25.0",
            )
        ], table


def test_spec_example_lands_in_each_table(server: Tracehouse) -> None:
    body = (OTLP_EXAMPLES / "metrics.json").read_bytes()
    answer = httpx.post(
        f"http://127.0.0.1:{server.ports.http}/v1/metrics", content=body, headers=JSON
    )
    assert answer.status_code == 200, answer.text
    example = f"{COMMON}, ScopeName, ScopeVersion, ScopeAttributes"
    scope = ("my.library", "1.0.0", {"my.scope.attribute": "some scope attribute"})
    t = 1544712660300000000

    def rows(table: str, extra: str) -> list[tuple[Any, ...]]:
        return query(
            server,
            f"SELECT DISTINCT {example}, {extra} FROM {table} "
            "WHERE ServiceName = 'my.service' AND startsWith(MetricName, 'my.')",
        )

    assert rows("otel_metrics_sum", "Value, AggregationTemporality, IsMonotonic") == [
        ("my.counter", "1", "I am a Counter", {"my.counter.attr": "some value"}, t, t, *scope,
         5.0, 1, True),
    ]  # fmt: skip
    assert rows("otel_metrics_gauge", "Value") == [
        ("my.gauge", "1", "I am a Gauge", {"my.gauge.attr": "some value"}, 0, t, *scope, 10.0),
    ]
    assert rows("otel_metrics_histogram", "Count, Sum, BucketCounts, ExplicitBounds, Min, Max") == [
        ("my.histogram", "1", "I am a Histogram", {"my.histogram.attr": "some value"}, t, t,
         *scope, 2, 2.0, [1, 1], [1.0], 0.0, 2.0),
    ]  # fmt: skip
    assert rows(
        "otel_metrics_exponential_histogram",
        "Count, Sum, Scale, ZeroCount, PositiveOffset, PositiveBucketCounts, Min, Max",
    ) == [
        ("my.exponential.histogram", "1", "I am an Exponential Histogram",
         {"my.exponential.histogram.attr": "some value"}, t, t, *scope,
         3, 10.0, 0, 1, 1, [0, 2], 0.0, 5.0),
    ]  # fmt: skip


@pytest.mark.parametrize("transport", ["grpc", "http-proto"])
def test_points_that_cannot_be_stored_are_reported_as_partial_success(
    server: Tracehouse, service_name: str, transport: str
) -> None:
    good = Metric(name="app.ok")
    good.gauge.data_points.add(time_unix_nano=T0, as_double=1.0)
    nameless = Metric(name="")
    nameless.gauge.data_points.add(time_unix_nano=T0, as_double=2.0)
    nameless.gauge.data_points.add(time_unix_nano=T0 + 1, as_double=3.0)
    bad_buckets = Metric(name="app.bad.histogram")
    bad_buckets.histogram.data_points.add(
        time_unix_nano=T0, count=3, bucket_counts=[1, 2], explicit_bounds=[1.0, 2.0]
    )
    empty = Metric(name="app.no.points")  # no data at all: nothing to store or reject
    request = metrics_request(service_name, good, nameless, bad_buckets, empty)

    response = _send(server, transport, request)

    assert response.partial_success.rejected_data_points == 3
    message = response.partial_success.error_message
    assert "has no name" in message
    assert "'app.bad.histogram': 2 bucket counts for 2 explicit bounds" in message
    assert _rows(server, "otel_metrics_gauge", service_name, "MetricName, Value") == [
        ("app.ok", 1.0)
    ]
    assert _count(server, "otel_metrics_histogram", service_name) == 0


def test_outage_spools_metrics_and_recovery_stores_them_once(
    make_server: ServerFactory, engine_url: str, service_name: str
) -> None:
    sink = FlakySink(engine_url)
    app = make_server(sink=sink)
    sink.failing.set()
    _send(app, "http-proto", _request(service_name))
    _send(app, "grpc", _request(f"{service_name}-2"))
    assert list(app.settings.resolved_spool_dir.glob("*-metrics-*.spool"))

    def stored(service: str) -> int:
        sql = (
            "SELECT (SELECT count() FROM otel_metrics_gauge WHERE ServiceName = {s:String}) + "
            "(SELECT count() FROM otel_metrics_summary WHERE ServiceName = {s:String})"
        )
        return int(app.client.query(sql, parameters={"s": service}).result_rows[0][0])

    assert stored(service_name) == 0
    assert _wait_for(lambda: sink.attempts > 0)
    sink.failing.clear()
    # Generous: on a loaded machine each of the five inserts may take seconds.
    assert app.pipeline is not None and app.pipeline.wait_stored(300)
    assert stored(service_name) == 3 and stored(f"{service_name}-2") == 3
    assert _count(app, "otel_metrics_sum", service_name) == 2


def test_retried_request_is_stored_once(server: Tracehouse, service_name: str) -> None:
    request = _request(service_name)
    _send(server, "http-proto", request)
    _send(server, "grpc", request)  # same bytes again, over the other transport
    for table, points in zip(TABLES, (2, 2, 1, 1, 1), strict=True):
        assert _count(server, table, service_name) == points, table
