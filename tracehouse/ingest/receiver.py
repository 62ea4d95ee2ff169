"""What both OTLP transports share: parse, validate, submit, and build the export response."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from tracehouse.ingest import metrics
from tracehouse.ingest.journal import request_key
from tracehouse.ingest.otlp_json import JsonDecodeError, parse_json
from tracehouse.ingest.pipeline import IngestPipeline
from tracehouse.ingest.spool import REQUEST_TYPES
from tracehouse.ingest.validate import Inspection, inspect_logs, inspect_metrics, inspect_traces
from tracehouse.model import Signal
from tracehouse.storage.otlp_sql import ItemLimits

Encoding = Literal["proto", "json"]


class InvalidRequest(ValueError):
    """The request cannot be decoded (HTTP 400 / INVALID_ARGUMENT, not retryable)."""


@dataclass
class Submission:
    """A request on its way to storage: wait on ``future``, then send ``response``."""

    future: Future[None]
    response: Message
    accepted: int
    rejected: int


class OtlpReceiver:
    """Checks OTLP export request bodies and hands them to the pipeline."""

    def __init__(self, pipeline: IngestPipeline, limits: ItemLimits | int) -> None:
        """``limits``: what an item may hold (``ItemLimits``), or just the value length."""
        self.pipeline = pipeline
        self._limits = limits if isinstance(limits, ItemLimits) else ItemLimits(limits)

    def submit(self, signal: Signal, body: bytes, encoding: Encoding) -> Submission:
        """Validate ``body`` and queue it. Raises InvalidRequest, Overloaded, Unavailable."""
        request = REQUEST_TYPES[signal]()
        if encoding == "json":
            try:
                parse_json(body, request, signal.value)
            except JsonDecodeError as exc:
                raise InvalidRequest(str(exc)) from exc
            payload = request.SerializeToString()
        else:
            try:
                request.ParseFromString(body)
            except (DecodeError, RecursionError) as exc:
                raise InvalidRequest(
                    f"body is not a valid OTLP protobuf {signal.value} request: {exc}"
                ) from exc
            payload = body
        if signal is Signal.TRACES:
            inspection = inspect_traces(request, self._limits)
        elif signal is Signal.METRICS:
            inspection = inspect_metrics(request, self._limits)
        else:
            inspection = inspect_logs(request, self._limits)
        future = self.pipeline.submit(
            signal, payload, inspection.accepted, request_key(signal, payload)
        )
        if inspection.rejected:
            metrics.ITEMS.labels(signal.value, "rejected").inc(inspection.rejected)
        if inspection.truncated_values:
            metrics.TRUNCATED.labels(signal.value).inc(inspection.truncated_values)
        for what, dropped in (
            ("attributes", inspection.dropped_attributes),
            ("events", inspection.dropped_events),
            ("links", inspection.dropped_links),
        ):
            if dropped:
                metrics.DROPPED.labels(signal.value, what).inc(dropped)
        return Submission(
            future, _response(signal, inspection), inspection.accepted, inspection.rejected
        )


def _response(signal: Signal, inspection: Inspection) -> Message:
    if signal is Signal.TRACES:
        traces = ExportTraceServiceResponse()
        if inspection.rejected:
            traces.partial_success.rejected_spans = inspection.rejected
            traces.partial_success.error_message = inspection.error_message
        return traces
    if signal is Signal.METRICS:
        metrics_response = ExportMetricsServiceResponse()
        if inspection.rejected:
            metrics_response.partial_success.rejected_data_points = inspection.rejected
            metrics_response.partial_success.error_message = inspection.error_message
        return metrics_response
    logs = ExportLogsServiceResponse()
    if inspection.rejected:
        logs.partial_success.rejected_log_records = inspection.rejected
        logs.partial_success.error_message = inspection.error_message
    return logs
