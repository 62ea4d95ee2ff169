"""The receiver's count of metric points: accepted, rejected and what the insert will cut,
also when only some resources or metrics are large enough to be looked at point by point."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from tests.ingest.otlp_factory import metrics_request
from tracehouse.ingest.validate import inspect_metrics
from tracehouse.storage.otlp_sql import ItemLimits

LIMITS = ItemLimits(max_value_length=100, max_attributes=4)
T = 1_700_000_000_000_000_000


def _gauge(name: str, attributes: list[list[KeyValue]]) -> Metric:
    metric = Metric(name=name)
    for kvs in attributes:
        metric.gauge.data_points.add(as_double=1.0, time_unix_nano=T, attributes=kvs)
    return metric


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def test_small_points_are_counted_without_cuts() -> None:
    request = metrics_request("svc", _gauge("a", [[_kv("k", "v")]] * 3))
    result = inspect_metrics(request, LIMITS)
    assert (result.accepted, result.rejected, result.truncated_values) == (3, 0, 0)
    assert result.dropped_attributes == 0


def test_long_values_and_long_lists_of_one_point_among_small_ones_are_counted() -> None:
    long_value = [_kv("k", "x" * 101)]
    many = [_kv(f"k{i}", "v") for i in range(6)]
    request = metrics_request("svc", _gauge("a", [[_kv("k", "v")], long_value, many]))
    result = inspect_metrics(request, LIMITS)
    assert (result.accepted, result.truncated_values, result.dropped_attributes) == (3, 1, 2)


def test_a_long_list_in_a_small_message_is_counted() -> None:
    """Five empty attributes fit in a few bytes: the size shortcut must not skip them."""
    empty = [KeyValue(key="") for _ in range(5)]
    result = inspect_metrics(metrics_request("svc", _gauge("a", [empty])), LIMITS)
    assert (result.accepted, result.dropped_attributes) == (1, 1)


def test_histogram_points_with_bad_buckets_are_rejected_and_the_rest_accepted() -> None:
    metric = Metric(name="h")
    metric.histogram.data_points.add(bucket_counts=[1, 2], explicit_bounds=[1.0], time_unix_nano=T)
    metric.histogram.data_points.add(bucket_counts=[1, 2], explicit_bounds=[], time_unix_nano=T)
    metric.histogram.data_points.add(count=0, time_unix_nano=T)
    result = inspect_metrics(metrics_request("svc", metric), LIMITS)
    assert (result.accepted, result.rejected) == (2, 1)
    assert "2 bucket counts for 0 explicit bounds" in result.error_message


def test_points_of_a_metric_without_a_name_are_rejected() -> None:
    result = inspect_metrics(metrics_request("svc", _gauge("", [[], []])), LIMITS)
    assert (result.accepted, result.rejected) == (0, 2)
