"""Builders of OTLP export requests for tests (protobuf messages of the real OTLP schema)."""

from __future__ import annotations

import os
import time

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric


def trace_request(
    service: str,
    spans: int = 3,
    trace_id: bytes | None = None,
    attrs: dict[str, str] | None = None,
) -> ExportTraceServiceRequest:
    """One resource, one scope, ``spans`` server spans of one trace."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "tests"
    tid = trace_id or os.urandom(16)
    now = time.time_ns()
    for i in range(spans):
        span = ss.spans.add()
        span.trace_id = tid
        span.span_id = os.urandom(8)
        span.name = f"op-{i}"
        span.kind = 2
        span.start_time_unix_nano = now + i
        span.end_time_unix_nano = now + i + 1_000_000
        for key, value in (attrs or {}).items():
            span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    return request


def log_request(service: str, records: int = 2) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    sl = rl.scope_logs.add()
    now = time.time_ns()
    for i in range(records):
        record = sl.log_records.add()
        record.time_unix_nano = now + i
        record.severity_number = 9
        record.severity_text = "INFO"
        record.body.string_value = f"record {i}"
    return request


def metrics_request(
    service: str, *metrics: Metric, resource: dict[str, str] | None = None
) -> ExportMetricsServiceRequest:
    """One resource (``service.name`` = ``service`` plus ``resource``), one scope, ``metrics``."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    for key, value in {"service.name": service, **(resource or {})}.items():
        rm.resource.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    sm = rm.scope_metrics.add()
    sm.scope.name = "tests"
    sm.metrics.extend(metrics)
    return request


def string_attributes(values: dict[str, str]) -> list[KeyValue]:
    return [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in values.items()]
