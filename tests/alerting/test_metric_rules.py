"""Rules and the KEDA endpoint on OTLP metrics: CPU gauges of two instances of a service,
exported by the real OpenTelemetry SDK, read back as a rule's samples and as a scaling value."""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Iterator

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from pydantic import ValidationError

from tests.conftest import ServerFactory
from tests.ingest.otlp_factory import metrics_request
from tracehouse.alerting import queries
from tracehouse.alerting.evaluator import AlertInstance, AlertState, evaluate
from tracehouse.alerting.rules import Rule
from tracehouse.app import Tracehouse

CPU = "system.cpu.utilization"
INSTANCES = {"i-1": 0.9, "i-2": 0.5}


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def cpu(make_module_server: ServerFactory) -> Iterator[tuple[Tracehouse, str]]:
    app = make_module_server()
    service = f"checkout-{uuid.uuid4().hex[:8]}"
    for instance, value in INSTANCES.items():

        def observe(_: CallbackOptions, value: float = value) -> Iterable[Observation]:
            yield Observation(value, {"cpu.mode": "user"})

        exporter = OTLPMetricExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/metrics")
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        resource = Resource.create({"service.name": service, "service.instance.id": instance})
        provider = MeterProvider(resource=resource, metric_readers=[reader])
        provider.get_meter("tests").create_observable_gauge(CPU, callbacks=[observe], unit="1")
        assert provider.force_flush(30_000)
        provider.shutdown()
    assert app.pipeline is not None and app.pipeline.wait_stored(60)
    # Both instances' points readable before any test reads them (a full CI run once saw
    # only one instance in the first test while the later ones saw both).
    instances = (
        "SELECT uniqExact(ResourceAttributes['service.instance.id']) FROM otel_metrics_gauge "
        "WHERE ServiceName = {s:String} AND MetricName = {m:String}"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = app.client.query(instances, parameters={"s": service, "m": CPU}).first_row[0]
        if found == len(INSTANCES):
            break
        time.sleep(0.1)
    assert found == len(INSTANCES), f"points of {found} of {len(INSTANCES)} instances stored"
    yield app, service


def _rule(service: str, **fields: object) -> Rule:
    spec = {
        "name": "cpu-high",
        "kind": "metric",
        "metric": CPU,
        "filters": {"service.name": service},
        "window": "5m",
        "condition": {"op": ">", "threshold": 0.75},
        **fields,
    }
    return Rule.model_validate(spec)


def test_a_metric_rule_reads_the_group_value(cpu: tuple[Tracehouse, str]) -> None:
    app, service = cpu
    now = dt.datetime.now(dt.UTC)
    result = queries.run(app.client, _rule(service, agg="avg"), now)
    assert result.error is None
    assert [s.value for s in result.samples] == [pytest.approx(0.7)]
    per_instance = queries.run(
        app.client, _rule(service, agg="max", group_by=["service.instance.id"]), now
    )
    assert {s.labels["service.instance.id"]: s.value for s in per_instance.samples} == (
        pytest.approx(INSTANCES)
    )
    # Nothing in a window that ends before the points.
    earlier = queries.run(app.client, _rule(service), now - dt.timedelta(hours=2))
    assert earlier.samples == ()


def test_keda_reads_a_metric_of_the_service(cpu: tuple[Tracehouse, str]) -> None:
    app, service = cpu
    url = f"http://127.0.0.1:{app.ports.api}/api/v1/scaling/metrics"
    params = {"service": service, "metric_name": CPU, "window": "5m"}
    for agg, expected in (("max", 0.9), ("min", 0.5), ("avg", 0.7)):
        response = httpx.get(url, params={**params, "agg": agg}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["value"] == pytest.approx(expected)
    unknown = httpx.get(url, params={**params, "metric_name": "no.such.metric"}, timeout=30)
    assert unknown.json() == {"value": 0.0}
    both = httpx.get(url, params={**params, "metric": "p99"}, timeout=30)
    assert both.status_code == 422
    assert both.json()["detail"][0]["loc"] == ["query", "metric"]


def test_metric_rules_are_created_through_the_api(cpu: tuple[Tracehouse, str]) -> None:
    app, service = cpu
    base = f"http://127.0.0.1:{app.ports.api}/api/v1/alert-rules"
    spec = _rule(service, name=f"cpu-{uuid.uuid4().hex[:8]}").spec()
    assert httpx.post(base, json=spec, timeout=30).status_code == 201
    assert httpx.get(f"{base}/{spec['name']}", timeout=30).json()["spec"]["metric"] == CPU
    assert httpx.delete(f"{base}/{spec['name']}", timeout=30).status_code == 204


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"metric": None}, "metric .* is required"),
        ({"kind": "latency"}, "only for kind 'metric'"),
        ({"agg": "median"}, "agg"),
    ],
    ids=["no-metric", "metric-on-latency", "bad-agg"],
)
def test_bad_metric_rules_name_the_field(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _rule("svc", **fields)


def test_a_cpu_rule_fires_and_resolves_with_hysteresis(make_module_server: ServerFactory) -> None:
    app = make_module_server()
    service = f"cpu-hyst-{uuid.uuid4().hex[:8]}"
    t0 = (int(time.time()) // 3600 - 24) * 3600  # a whole hour a day ago
    values = [0.5, 0.8, 0.9, 0.6, 0.5, 0.4, 0.2, 0.1]
    metric = Metric(name=CPU)
    for k, value in enumerate(values):
        metric.gauge.data_points.add(time_unix_nano=(t0 + 60 * k) * 10**9, as_double=value)
    body = metrics_request(service, metric).SerializeToString()
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/metrics",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert app.pipeline is not None and app.pipeline.wait_stored(60)

    # Fire above 0.75 after two breaching evaluations; once firing, stay until below 0.3.
    rule = _rule(
        service,
        agg="avg",
        window="60s",
        condition={"op": ">", "threshold": 0.75, "recovery_threshold": 0.3},
        **{"for": 2},
    )
    states = []
    instances: dict[str, AlertInstance] = {}
    for k in range(len(values)):
        now = dt.datetime.fromtimestamp(t0 + 60 * k + 30, dt.UTC)  # the window holds point k
        result = queries.run(app.client, rule, now)
        assert result.error is None
        assert [s.value for s in result.samples] == [pytest.approx(values[k])]
        instances = evaluate(rule, result, instances, now).instances
        states.append(next(iter(instances.values())).state if instances else None)
    F, P, R = AlertState.FIRING, AlertState.PENDING, AlertState.RESOLVED
    assert states == [None, P, F, F, F, F, R, R]
