"""Configurable limits: attributes per list, span events and links, value length — cut by the
insert, counted in /metrics and in the rows' Dropped*Count columns, never a crash."""

from __future__ import annotations

import httpx
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from prometheus_client import REGISTRY

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import log_request, metrics_request, trace_request
from tracehouse.app import Tracehouse

LIMITS = {
    "max_attributes": 3,
    "max_span_events": 2,
    "max_span_links": 1,
    "max_attribute_value_length": 20,  # service names here are 16 characters
}


def _kv(n: int, long_at: int | None = None) -> list[KeyValue]:
    return [
        KeyValue(key=f"a{i}", value=AnyValue(string_value="x" * 50 if i == long_at else f"v{i}"))
        for i in range(n)
    ]


def _counter(signal: str, what: str) -> float:
    labels = {"signal": signal, "what": what}
    return REGISTRY.get_sample_value("tracehouse_ingest_dropped_total", labels) or 0.0


def _truncated(signal: str) -> float:
    name = "tracehouse_ingest_truncated_values_total"
    return REGISTRY.get_sample_value(name, {"signal": signal}) or 0.0


def _post(app: Tracehouse, path: str, body: bytes) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}{path}",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_span_attributes_events_and_links_past_the_limits_are_cut_and_counted(
    make_server: ServerFactory, service_name: str
) -> None:
    app = make_server(**LIMITS)
    request = trace_request(service_name, spans=1)
    resource = request.resource_spans[0].resource.attributes
    resource.extend(_kv(4))  # service.name + 4 = 5: two past the limit
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.extend(_kv(5, long_at=1))  # a1 cut to 20 characters; a4's long twin dropped
    span.attributes[4].value.string_value = "y" * 50
    span.dropped_attributes_count = 7  # the sender's own drops are kept and added to
    for i in range(4):
        event = span.events.add(name=f"e{i}", time_unix_nano=span.start_time_unix_nano)
        event.attributes.extend(_kv(5))
    for _ in range(3):
        link = span.links.add(trace_id=span.trace_id, span_id=b"\x01" * 8)
        link.attributes.extend(_kv(5))
    before = {w: _counter("traces", w) for w in ("attributes", "events", "links")}
    truncated_before = _truncated("traces")

    _post(app, "/v1/traces", request.SerializeToString())

    rows = query(
        app,
        "SELECT SpanAttributes, length(ResourceAttributes), ResourceAttributes['service.name'], "
        "Events.Name, arrayMap(m -> length(m), Events.Attributes), length(Links.SpanId), "
        "arrayMap(m -> length(m), Links.Attributes), DroppedAttributesCount, "
        "DroppedEventsCount, DroppedLinksCount FROM otel_traces WHERE ServiceName = {s:String}",
        s=service_name,
    )
    assert rows == [
        (
            {"a0": "v0", "a1": "x" * 20, "a2": "v2"},
            3,
            service_name,
            ["e0", "e1"],
            [3, 3],
            1,
            [3],
            7 + 2,
            2,
            2,
        )
    ]
    # attributes: 2 of the span, 2 of the resource, 2 of each kept event and link.
    assert _counter("traces", "attributes") - before["attributes"] == 2 + 2 + 2 * 2 + 2
    assert _counter("traces", "events") - before["events"] == 2
    assert _counter("traces", "links") - before["links"] == 2
    assert _truncated("traces") - truncated_before == 1  # a1 only: a4 was dropped whole
    exposition = httpx.get(f"http://127.0.0.1:{app.ports.api}/metrics").text
    assert 'tracehouse_ingest_dropped_total{signal="traces",what="events"}' in exposition


def test_log_and_metric_attributes_past_the_limit_are_cut_and_counted(
    make_server: ServerFactory, service_name: str
) -> None:
    app = make_server(**LIMITS)
    logs = log_request(service_name, records=1)
    logs.resource_logs[0].scope_logs[0].log_records[0].attributes.extend(_kv(6))
    metric = Metric(name="limits.gauge")
    point = metric.gauge.data_points.add(as_double=1.0, time_unix_nano=1_700_000_000_000_000_000)
    point.attributes.extend(_kv(5))
    before = {s: _counter(s, "attributes") for s in ("logs", "metrics")}

    _post(app, "/v1/logs", logs.SerializeToString())
    _post(app, "/v1/metrics", metrics_request(service_name, metric).SerializeToString())

    assert query(
        app,
        "SELECT mapKeys(LogAttributes), DroppedAttributesCount FROM otel_logs "
        "WHERE ServiceName = {s:String}",
        s=service_name,
    ) == [(["a0", "a1", "a2"], 3)]
    assert query(
        app,
        "SELECT mapKeys(Attributes) FROM otel_metrics_gauge WHERE ServiceName = {s:String}",
        s=service_name,
    ) == [(["a0", "a1", "a2"],)]
    assert _counter("logs", "attributes") - before["logs"] == 3
    assert _counter("metrics", "attributes") - before["metrics"] == 2


def test_huge_attribute_counts_with_default_limits_are_stored_cut(
    make_server: ServerFactory, service_name: str
) -> None:
    app = make_server()
    request = trace_request(service_name, spans=1)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.extend(
        KeyValue(key=f"k{i}", value=AnyValue(int_value=i)) for i in range(50_000)
    )
    _post(app, "/v1/traces", request.SerializeToString())
    assert query(
        app,
        "SELECT length(SpanAttributes), DroppedAttributesCount FROM otel_traces "
        "WHERE ServiceName = {s:String}",
        s=service_name,
    ) == [(1_000, 49_000)]
