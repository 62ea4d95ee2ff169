"""The metrics read API over real HTTP: ``GET /api/v1/metrics`` and ``/api/v1/metrics/query``.

Data comes two ways: the real OpenTelemetry SDK's metric exporters (gRPC and HTTP) sending a
gauge, a cumulative counter that restarts, and a histogram, checked against what was
recorded; and OTLP requests with fixed timestamps, where every expected value is worked out
by hand in the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    AGGREGATION_TEMPORALITY_DELTA,
    Metric,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import metrics_request
from tracehouse.app import Tracehouse
from tracehouse.query.metrics import bucket_quantile

PROTO = {"Content-Type": "application/x-protobuf"}
S = 1_000_000_000  # ns per second
# Fixed instants (whole minutes, so buckets of 10 s start on them): a day ago, well inside
# retention and the 31-day range limit.
T0 = (int(time.time()) // 3600 - 24) * 3600 * S


@pytest.fixture(scope="module")
def app(make_module_server: ServerFactory) -> Tracehouse:
    return make_module_server()


def _get(app: Tracehouse, path: str, **params: Any) -> httpx.Response:
    url = f"http://127.0.0.1:{app.ports.api}/api/v1{path}"
    return httpx.get(url, params=params, timeout=60)


def _series(app: Tracehouse, **params: Any) -> dict[str, Any]:
    if app.pipeline is not None:
        assert app.pipeline.wait_stored(30)
    response = _get(app, "/metrics/query", **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _values(body: dict[str, Any]) -> dict[tuple[str, ...], list[list[float]]]:
    """Series by their label values (in group_by order)."""
    return {tuple(s["labels"].values()): s["points"] for s in body["series"]}


def _send(app: Tracehouse, service: str, *metrics: Metric, **resource: str) -> None:
    body = metrics_request(service, *metrics, resource=resource).SerializeToString()
    url = f"http://127.0.0.1:{app.ports.http}/v1/metrics"
    response = httpx.post(url, content=body, headers=PROTO, timeout=30)
    assert response.status_code == 200, response.text


def _window(start_s: int, end_s: int) -> dict[str, int]:
    return {"start": T0 // S + start_s, "end": T0 // S + end_s}


# --- the real SDK ----------------------------------------------------------------------------

EXPORTERS: dict[str, Callable[[Tracehouse], MetricExporter]] = {
    "grpc": lambda app: GrpcMetricExporter(
        endpoint=f"127.0.0.1:{app.ports.grpc}", insecure=True, timeout=30
    ),
    "http": lambda app: HttpMetricExporter(
        endpoint=f"http://127.0.0.1:{app.ports.http}/v1/metrics", timeout=30
    ),
}


class _Process:
    """A MeterProvider like one run of an instrumented process; exports when flushed."""

    def __init__(self, app: Tracehouse, transport: str, service: str) -> None:
        reader = PeriodicExportingMetricReader(
            EXPORTERS[transport](app), export_interval_millis=3_600_000
        )
        # The same instance id in both runs: one series that restarts, as after a crash.
        resource = Resource.create(
            {"service.name": service, "host.name": "node-1", "service.instance.id": "i-1"}
        )
        self.provider = MeterProvider(resource=resource, metric_readers=[reader])
        self.meter = self.provider.get_meter("tests.metrics_api", "1.0")

    def flush(self) -> None:
        assert self.provider.force_flush(30_000)


def _stored(app: Tracehouse, table: str, service: str, name: str) -> list[tuple[int, int]]:
    """(StartTimeUnix, TimeUnix) in ns of a metric's stored points, oldest first."""
    rows = query(
        app,
        "SELECT toUnixTimestamp64Nano(StartTimeUnix), toUnixTimestamp64Nano(TimeUnix) "
        f"FROM {table} WHERE ServiceName = {{s:String}} AND MetricName = {{n:String}} "
        "ORDER BY TimeUnix",
        s=service,
        n=name,
    )
    return [(int(a), int(b)) for a, b in rows]


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_gauge_counter_with_reset_and_histogram_read_back(
    app: Tracehouse, service_name: str, transport: str
) -> None:
    started = time.time() - 1
    first = _Process(app, transport, service_name)
    cpu = first.meter.create_gauge("system.cpu.utilization", unit="1", description="CPU")
    requests = first.meter.create_counter("app.requests", unit="{request}")
    latency = first.meter.create_histogram("app.latency", unit="ms")
    cpu.set(0.5, {"cpu": "0"})
    cpu.set(0.1, {"cpu": "1"})
    requests.add(5, {"route": "/cart"})
    for value in range(1, 51):
        latency.record(value, {"route": "/cart"})
    first.flush()
    cpu.set(0.9, {"cpu": "0"})
    cpu.set(0.3, {"cpu": "1"})
    requests.add(7, {"route": "/cart"})
    for value in range(51, 101):
        latency.record(value, {"route": "/cart"})
    first.provider.shutdown()  # exports once more, as a process does when it exits
    # The process restarts: its counter starts again from 0 with a new start time.
    second = _Process(app, transport, service_name)
    restarted = second.meter.create_counter("app.requests", unit="{request}")
    restarted.add(3, {"route": "/cart"})
    second.flush()
    restarted.add(4, {"route": "/cart"})
    second.provider.shutdown()

    # One bucket spanning the whole run.
    window = {"start": started, "end": time.time() + 1, "step": 3600}
    service = f"service.name={service_name}"

    def one(name: str, agg: str, group_by: str = "") -> Any:
        body = _series(app, name=name, agg=agg, filter=service, group_by=group_by, **window)
        return {k: [v for _, v in points] for k, points in _values(body).items()}

    gauge = "system.cpu.utilization"
    assert one(gauge, "max") == {(): [0.9]}
    assert one(gauge, "min") == {(): [0.1]}
    assert one(gauge, "avg") == {(): [pytest.approx(0.45)]}  # of series averages 0.7, 0.2
    assert one(gauge, "sum") == {(): [pytest.approx(0.9)]}  # 0.7 + 0.2
    assert one(gauge, "avg", "cpu") == {("0",): [pytest.approx(0.7)], ("1",): [0.2]}
    assert one(gauge, "p99", "host.name") == {("node-1",): [0.9]}

    # 5, 12, then after the restart 3, 7: 5 + 7 + 3 + 4 = 19 requests from the first start
    # to the last point; a reset-blind rate would have counted 3 - 12 = -9.
    points = _stored(app, "otel_metrics_sum", service_name, "app.requests")
    assert len(points) == 4
    assert points[2][0] != points[0][0]  # the restart shows as a new start time
    seconds = (points[-1][1] - points[0][0]) / S
    assert one("app.requests", "rate") == {(): [pytest.approx(19 / seconds)]}
    assert one("app.requests", "rate", "route") == {("/cart",): [pytest.approx(19 / seconds)]}

    # 1..100 in the SDK's default buckets (… 50, 75, 100 …): p95 interpolates to 95 in
    # (75, 100], p99 to 99; the mean is 50.5.
    assert one("app.latency", "p95") == {(): [pytest.approx(95.0)]}
    assert one("app.latency", "p99") == {(): [pytest.approx(99.0)]}
    assert one("app.latency", "avg") == {(): [pytest.approx(50.5)]}
    assert one("app.latency", "max") == {(): [100.0]}
    assert one("app.latency", "min") == {(): [1.0]}
    hist = _stored(app, "otel_metrics_histogram", service_name, "app.latency")
    assert one("app.latency", "rate") == {
        (): [pytest.approx(100 / ((hist[-1][1] - hist[0][0]) / S))]
    }

    listed = _get(app, "/metrics", service=service_name, start=started, end=time.time() + 1)
    assert listed.status_code == 200, listed.text
    assert listed.json()["metrics"] == [
        {
            "name": "app.latency",
            "type": "histogram",
            "unit": "ms",
            "description": "",
            "attributeKeys": ["route"],
            "resourceAttributeKeys": [
                "host.name",
                "service.instance.id",
                "service.name",
                "telemetry.sdk.language",
                "telemetry.sdk.name",
                "telemetry.sdk.version",
            ],
            "services": [service_name],
            "monotonic": None,
            "temporality": "cumulative",
        },
        {
            "name": "app.requests",
            "type": "sum",
            "unit": "{request}",
            "description": "",
            "attributeKeys": ["route"],
            "resourceAttributeKeys": [
                "host.name",
                "service.instance.id",
                "service.name",
                "telemetry.sdk.language",
                "telemetry.sdk.name",
                "telemetry.sdk.version",
            ],
            "services": [service_name],
            "monotonic": True,
            "temporality": "cumulative",
        },
        {
            "name": "system.cpu.utilization",
            "type": "gauge",
            "unit": "1",
            "description": "CPU",
            "attributeKeys": ["cpu"],
            "resourceAttributeKeys": [
                "host.name",
                "service.instance.id",
                "service.name",
                "telemetry.sdk.language",
                "telemetry.sdk.name",
                "telemetry.sdk.version",
            ],
            "services": [service_name],
            "monotonic": None,
            "temporality": None,
        },
    ]


# --- fixed points ----------------------------------------------------------------------------


def _counter(name: str, temporality: int, points: list[tuple[int, int, float]]) -> Metric:
    """A monotonic sum; points are (start s, time s, value) after T0."""
    metric = Metric(name=name)
    metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.sum.is_monotonic = True
    for start, at, value in points:
        metric.sum.data_points.add(
            start_time_unix_nano=T0 + start * S, time_unix_nano=T0 + at * S, as_double=value
        )
    return metric


def test_cumulative_counter_rate_per_step_across_resets(app: Tracehouse, service_name: str):
    # Started at 0 s; 10 at 10 s, 20 at 20 s, then a reset without a new start time (the
    # value went down) to 5 at 30 s, 15 at 40 s; restarted at 45 s: 2 at 50 s.
    counter = _counter(
        "app.jobs",
        AGGREGATION_TEMPORALITY_CUMULATIVE,
        [(0, 10, 10), (0, 20, 20), (0, 30, 5), (0, 40, 15), (45, 50, 2)],
    )
    _send(app, service_name, counter)
    body = _series(
        app, name="app.jobs", filter=f"service.name={service_name}", step="10s", **_window(5, 55)
    )
    assert body["type"] == "sum" and body["agg"] == "rate"  # the default for a counter
    start = T0 // S + 5
    # Buckets [5, 15), [15, 25), …: +10 over 10 s, +10/10 s, +5/10 s, +10/10 s, +2/10 s.
    assert _values(body) == {
        (): [
            [start, 1.0],
            [start + 10, 1.0],
            [start + 20, 0.5],
            [start + 30, 1.0],
            [start + 40, 0.2],
        ]
    }


def test_delta_counters_of_two_instances_add_up_per_group(app: Tracehouse, service_name: str):
    for instance, per_10s in (("a", 30), ("b", 10)):
        counter = _counter(
            "app.events",
            AGGREGATION_TEMPORALITY_DELTA,
            [(at - 10, at, per_10s) for at in (10, 20, 30)],
        )
        _send(app, service_name, counter, **{"service.instance.id": instance})
    common = {"name": "app.events", "agg": "rate", "step": 30, **_window(0, 30)}
    one = _series(app, filter=f"service.name={service_name}", **common)
    assert _values(one) == {(): [[T0 // S, 4.0]]}  # 3/s + 1/s
    split = _series(
        app, filter=f"service.name={service_name}", group_by="service.instance.id", **common
    )
    assert _values(split) == {("a",): [[T0 // S, 3.0]], ("b",): [[T0 // S, 1.0]]}
    only_b = _series(
        app,
        filter=[f"service.name={service_name}", "service.instance.id=b"],
        **common,
    )
    assert _values(only_b) == {(): [[T0 // S, 1.0]]}


def test_histogram_quantiles_come_from_bucket_deltas(app: Tracehouse, service_name: str):
    histogram = Metric(name="app.wait", unit="ms")
    histogram.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE  # type: ignore[assignment]
    # Buckets (-inf,10] (10,20] (20,+inf). At 10 s: 10 in the first; at 20 s 10 more, all in
    # (10,20]: the second step sees only those (deltas), so its p95 is 19.5, not 15.
    for at, counts, total in ((10, [10, 0, 0], 50.0), (20, [10, 10, 0], 200.0)):
        histogram.histogram.data_points.add(
            start_time_unix_nano=T0,
            time_unix_nano=T0 + at * S,
            count=sum(counts),
            sum=total,
            bucket_counts=counts,
            explicit_bounds=[10.0, 20.0],
        )
    _send(app, service_name, histogram)
    common = {"name": "app.wait", "filter": f"service.name={service_name}", "step": 10}
    p95 = _series(app, **common, **_window(5, 25))
    assert p95["agg"] == "p95"
    start = T0 // S + 5
    # First step: 10 observations in [0, 10]: rank 9.5 → 9.5. Second: 10 in (10, 20] → 19.5.
    assert _values(p95) == {(): [[start, 9.5], [start + 10, 19.5]]}
    avg = _series(app, agg="avg", **common, **_window(5, 25))
    assert _values(avg) == {(): [[start, 5.0], [start + 10, 15.0]]}  # 50/10, 150/10


def test_exponential_histogram_and_summary_quantiles(app: Tracehouse, service_name: str):
    exponential = Metric(name="app.bytes")
    exponential.exponential_histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_DELTA  # type: ignore[assignment]
    point = exponential.exponential_histogram.data_points.add(
        start_time_unix_nano=T0, time_unix_nano=T0 + 10 * S, count=4, sum=20.0, scale=0
    )
    # scale 0: bucket i is (2^i, 2^(i+1)]; offset 2 → (4, 8] holds 3, (8, 16] holds 1.
    point.positive.offset = 2
    point.positive.bucket_counts.extend([3, 1])
    summary = Metric(name="app.pause")
    for at, count, total, p99 in ((10, 4, 2.0, 1.5), (20, 8, 6.0, 2.5)):
        quantiles = summary.summary.data_points.add(
            start_time_unix_nano=T0, time_unix_nano=T0 + at * S, count=count, sum=total
        )
        quantiles.quantile_values.add(quantile=0.99, value=p99)
    _send(app, service_name, exponential, summary)
    common = {"filter": f"service.name={service_name}", "step": 30, **_window(0, 30)}
    # rank 0.95·4 = 3.8: past the 3 in (4, 8], 0.8 of the way through (8, 16].
    p95 = _series(app, name="app.bytes", agg="p95", **common)
    assert _values(p95) == {(): [[T0 // S, pytest.approx(14.4)]]}
    assert _values(_series(app, name="app.bytes", agg="avg", **common)) == {(): [[T0 // S, 5.0]]}
    assert _values(_series(app, name="app.pause", agg="p99", **common)) == {(): [[T0 // S, 2.5]]}
    # Δsum / Δcount over the window: the first point counts from its start (2/4), then 4/4.
    assert _values(_series(app, name="app.pause", agg="avg", **common)) == {(): [[T0 // S, 0.75]]}


def test_unknown_metric_is_an_empty_result(app: Tracehouse) -> None:
    body = _series(app, name="no.such.metric")
    assert body["type"] is None and body["series"] == []


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        pytest.param({"agg": "median"}, "agg", id="unknown-agg"),
        pytest.param({"step": "ten"}, "step", id="step-not-a-number"),
        pytest.param({"step": "0"}, "step", id="step-zero"),
        pytest.param({"step": "1", "start": "0", "end": "86400"}, "step", id="too-many-points"),
        pytest.param({"filter": "cpu"}, "filter", id="filter-without-value"),
        pytest.param({"group_by": "cpu,cpu"}, "group_by", id="group-by-twice"),
        pytest.param({"start": "2026-13-01"}, "start", id="bad-start"),
        pytest.param({"name": ""}, "name", id="empty-name"),
    ],
)
def test_bad_query_is_a_422_naming_the_parameter(
    app: Tracehouse, params: dict[str, str], parameter: str
) -> None:
    response = _get(app, "/metrics/query", **{"name": "app.requests", **params})
    assert response.status_code == 422, response.text
    assert parameter in [e["loc"][-1] for e in response.json()["detail"]]


def test_rate_of_a_gauge_is_refused(app: Tracehouse, service_name: str) -> None:
    gauge = Metric(name="app.temperature")
    gauge.gauge.data_points.add(time_unix_nano=T0 + 5 * S, as_double=21.5)
    _send(app, service_name, gauge)
    assert app.pipeline is not None and app.pipeline.wait_stored(30)
    response = _get(app, "/metrics/query", name="app.temperature", agg="rate", **_window(0, 10))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "agg"]
    assert "gauge" in response.json()["detail"][0]["msg"]


def test_labels_are_json_escaped_and_in_group_by_order(app: Tracehouse, service_name: str):
    """ClickHouse writes the endpoint's JSON: quotes, backslashes and non-ASCII label values,
    keys in the order asked, a label absent from a series as an empty string."""
    for instance, value in (('a"b\\c', 1.5), ("é-1", 0.25)):
        gauge = Metric(name="app.queue.depth")
        gauge.gauge.data_points.add(time_unix_nano=T0 + 5 * S, as_double=value)
        _send(app, service_name, gauge, **{"service.instance.id": instance})
    body = _series(
        app,
        name="app.queue.depth",
        filter=f"service.name={service_name}",
        group_by="service.instance.id,host.name,service.name",
        step=10,
        **_window(0, 10),
    )
    assert [list(s["labels"]) for s in body["series"]] == [
        ["service.instance.id", "host.name", "service.name"]
    ] * 2
    assert _values(body) == {
        ('a"b\\c', "", service_name): [[T0 // S, 1.5]],
        ("é-1", "", service_name): [[T0 // S, 0.25]],
    }
    assert all(isinstance(t, int) for s in body["series"] for t, _ in s["points"])


@pytest.mark.parametrize(
    ("q", "bounds", "counts", "high", "expected"),
    [
        pytest.param(0.5, [10.0, 20.0], [10, 10, 0], None, 10.0, id="edge-of-first-bucket"),
        pytest.param(0.75, [10.0, 20.0], [10, 10, 0], None, 15.0, id="middle-bucket"),
        pytest.param(0.95, [10.0], [0, 10], 30.0, 29.0, id="overflow-up-to-max"),
        pytest.param(0.95, [10.0], [0, 10], None, 10.0, id="overflow-without-max"),
        pytest.param(0.5, [-10.0, 0.0], [4, 4, 0], None, -10.0, id="negative-bounds"),
        pytest.param(0.5, [1.0], [0, 0], None, None, id="empty"),
    ],
)
def test_bucket_quantile(
    q: float, bounds: list[float], counts: list[int], high: float | None, expected: float | None
) -> None:
    assert bucket_quantile(q, bounds, counts, high) == expected
