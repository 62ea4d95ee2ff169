"""Histogram quantiles computed inside ClickHouse, checked against values worked out by hand
(cumulative points with a counter reset, the overflow bucket with and without ``Max``) and
against the Python reference ``bucket_quantile`` on random bucket counts of two series."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    AGGREGATION_TEMPORALITY_DELTA,
    Metric,
)

from tests.conftest import ServerFactory
from tests.query.test_metrics_api import T0, S, _send, _series, _values, _window
from tracehouse.app import Tracehouse
from tracehouse.query.metrics import bucket_quantile


@pytest.fixture(scope="module")
def app(make_module_server: ServerFactory) -> Tracehouse:
    return make_module_server()


def _histogram(name: str, temporality: int) -> Metric:
    metric = Metric(name=name, unit="ms")
    metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
    return metric


def _add(
    metric: Metric,
    start_s: int,
    at_s: int,
    counts: list[int],
    total: float,
    high: float | None,
    bounds: tuple[float, ...] = (10.0, 20.0),
) -> None:
    """A point from ``start_s`` to ``at_s`` after T0; ``high`` None leaves Min and Max unset."""
    point = metric.histogram.data_points.add(
        start_time_unix_nano=T0 + start_s * S,
        time_unix_nano=T0 + at_s * S,
        count=sum(counts),
        sum=total,
        bucket_counts=counts,
        explicit_bounds=bounds,
    )
    if high is not None:
        point.max = high
        point.min = 1.0


def test_cumulative_histogram_with_a_reset_and_the_overflow_bucket(
    app: Tracehouse, service_name: str
) -> None:
    # Buckets (-inf,10] (10,20] (20,+inf), cumulative from T0, one point per 10 s step.
    metric = _histogram("app.queue_wait", AGGREGATION_TEMPORALITY_CUMULATIVE)
    _add(metric, 0, 10, [2, 2, 0], 40.0, 18.0)
    _add(metric, 0, 20, [2, 4, 4], 200.0, 40.0)  # Δ [0, 2, 4]: p95 in the overflow, up to Max
    _add(metric, 0, 30, [1, 0, 0], 5.0, 40.0)  # count went down: a reset, Δ is the point itself
    _add(metric, 0, 40, [1, 3, 0], 50.0, 40.0)  # Δ [0, 3, 0]
    _add(metric, 0, 50, [1, 3, 2], 110.0, None)  # Δ [0, 0, 2], no Max: the last bound
    _send(app, service_name, metric)
    common = {"name": "app.queue_wait", "filter": f"service.name={service_name}", "step": 10}
    start = T0 // S + 5
    p95 = _series(app, agg="p95", **common, **_window(5, 55))
    # Step 1, Δ [2, 2, 0] (first point, started inside what was read): rank 3.8 of 4 in
    #   (10, 20]: 10 + 10 · (3.8 - 2) / 2 = 19.
    # Step 2, Δ [0, 2, 4]: rank 5.7 in the overflow (20, Max = 40]: 20 + 20 · 3.7 / 4 = 38.5.
    # Step 3, after the reset, [1, 0, 0]: rank 0.95 in [0, 10]: 9.5.
    # Step 4, Δ [0, 3, 0]: rank 2.85 in (10, 20]: 10 + 10 · 2.85 / 3 = 19.5.
    # Step 5, Δ [0, 0, 2] and no Max (stored as 0): the last bound, 20.
    assert _values(p95) == {
        (): [
            [start, pytest.approx(19.0)],
            [start + 10, pytest.approx(38.5)],
            [start + 20, pytest.approx(9.5)],
            [start + 30, pytest.approx(19.5)],
            [start + 40, pytest.approx(20.0)],
        ]
    }
    p99 = _series(app, agg="p99", **common, **_window(15, 25))
    assert _values(p99) == {(): [[start + 10, pytest.approx(20 + 20 * (5.94 - 2) / 4)]]}
    avg = _series(app, agg="avg", **common, **_window(5, 55))
    # Δsum / Δcount: 40/4, 160/6, 5/1 (reset), 45/3, 60/2.
    assert _values(avg) == {
        (): [
            [start, pytest.approx(10.0)],
            [start + 10, pytest.approx(160 / 6)],
            [start + 20, pytest.approx(5.0)],
            [start + 30, pytest.approx(15.0)],
            [start + 40, pytest.approx(30.0)],
        ]
    }
    rate = _series(app, agg="rate", **common, **_window(5, 55))
    # Δcount per second: 4 over the 10 s since the start, then 6/10, 1/10 (reset), 3/10, 2/10.
    assert _values(rate) == {
        (): [
            [start, pytest.approx(0.4)],
            [start + 10, pytest.approx(0.6)],
            [start + 20, pytest.approx(0.1)],
            [start + 30, pytest.approx(0.3)],
            [start + 40, pytest.approx(0.2)],
        ]
    }
    high = _series(app, agg="max", **common, **_window(5, 55))
    assert [v for _, v in _values(high)[()]] == [18.0, 40.0, 40.0, 40.0, 0.0]


def test_only_an_overflow_bucket(app: Tracehouse, service_name: str) -> None:
    # No bounds: one bucket (-inf, +inf); the quantile reaches up to Max.
    metric = _histogram("app.only_inf", AGGREGATION_TEMPORALITY_DELTA)
    _add(metric, 0, 10, [5], 50.0, 30.0, bounds=())
    _send(app, service_name, metric)
    body = _series(
        app, name="app.only_inf", filter=f"service.name={service_name}", step=10, **_window(5, 15)
    )
    assert _values(body) == {(): [[T0 // S + 5, 30.0]]}


def test_random_buckets_of_two_series_match_the_reference(
    app: Tracehouse, service_name: str
) -> None:
    rng = random.Random(20261123)
    bounds = [1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0]
    steps = 40
    expected: dict[str, dict[int, float | None]] = {"p95": {}, "p99": {}}
    summed: dict[int, tuple[list[int], float]] = {}
    for instance in ("a", "b"):
        metric = Metric(name="app.random_latency", unit="ms")
        metric.histogram.aggregation_temporality = AGGREGATION_TEMPORALITY_DELTA
        for step in range(steps):
            counts = [rng.choice([0, 0, 1, 3, 7, 20]) for _ in range(len(bounds) + 1)]
            high = rng.choice([0.0, 80.0, 150.0, 400.0])
            at = 10 * (step + 1)
            metric.histogram.data_points.add(
                start_time_unix_nano=T0 + (at - 10) * S,
                time_unix_nano=T0 + at * S,
                count=sum(counts),
                sum=float(sum(counts)),
                bucket_counts=counts,
                explicit_bounds=bounds,
                max=high,
            )
            previous, previous_high = summed.get(step, ([0] * len(counts), 0.0))
            summed[step] = (
                [x + y for x, y in zip(previous, counts, strict=True)],
                max(previous_high, high),
            )
        _send(app, service_name, metric, **{"service.instance.id": instance})
    start = T0 // S + 5
    for agg, q in (("p95", 0.95), ("p99", 0.99)):
        for step, (counts, high) in summed.items():
            expected[agg][start + 10 * step] = bucket_quantile(q, bounds, counts, high)
        body = _series(
            app,
            name="app.random_latency",
            agg=agg,
            filter=f"service.name={service_name}",
            step=10,
            **_window(5, 5 + 10 * steps),
        )
        got = {int(t): v for t, v in _values(body)[()]}
        want = {t: v for t, v in expected[agg].items() if v is not None}
        assert len(want) >= steps - 2  # nearly every step has observations
        assert got == pytest.approx(want, rel=1e-12)
