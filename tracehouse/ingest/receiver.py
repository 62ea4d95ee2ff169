"""What both OTLP transports share: parse, decode, submit, and build the export response."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tracehouse.ingest import metrics
from tracehouse.ingest.decode import DecodeResult, decode_logs, decode_traces
from tracehouse.ingest.otlp_json import JsonDecodeError, parse_json
from tracehouse.ingest.pipeline import IngestPipeline
from tracehouse.model import RowBatch, Signal

Encoding = Literal["proto", "json"]

_REQUESTS: dict[Signal, Callable[[], Message]] = {
    Signal.TRACES: ExportTraceServiceRequest,
    Signal.LOGS: ExportLogsServiceRequest,
}


class InvalidRequest(ValueError):
    """The request cannot be decoded (HTTP 400 / INVALID_ARGUMENT, not retryable)."""


@dataclass
class Submission:
    """A decoded request on its way to storage: wait on ``future``, then send ``response``."""

    future: Future[None]
    response: Message
    accepted: int
    rejected: int


class OtlpReceiver:
    """Turns OTLP export request bodies into rows and hands them to the pipeline."""

    def __init__(self, pipeline: IngestPipeline, max_value_length: int) -> None:
        self.pipeline = pipeline
        self._max_value_length = max_value_length

    def submit(self, signal: Signal, body: bytes, encoding: Encoding) -> Submission:
        """Decode ``body`` and queue its rows. Raises InvalidRequest, Overloaded, Unavailable."""
        request = _REQUESTS[signal]()
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
        result = _decode(signal, request, self._max_value_length)
        key = hashlib.blake2b(payload, digest_size=16, person=signal.value.encode()).digest()
        future = self.pipeline.submit(result.batch, payload, key)
        if result.rejected:
            metrics.ITEMS.labels(signal.value, "rejected").inc(result.rejected)
        if result.truncated_values:
            metrics.TRUNCATED.labels(signal.value).inc(result.truncated_values)
        return Submission(future, _response(signal, result), len(result.batch), result.rejected)


def redecode(signal: Signal, payloads: list[bytes], max_value_length: int) -> RowBatch:
    """Rows of spooled payloads, decoded as on arrival (the pipeline's replay hook)."""
    batch = RowBatch(signal)
    for payload in payloads:
        request = _REQUESTS[signal]()
        request.ParseFromString(payload)
        batch.rows.extend(_decode(signal, request, max_value_length).batch.rows)
    return batch


def _decode(signal: Signal, request: Message, max_value_length: int) -> DecodeResult:
    if signal is Signal.TRACES:
        return decode_traces(request, max_value_length)  # type: ignore[arg-type]
    return decode_logs(request, max_value_length)  # type: ignore[arg-type]


def _response(signal: Signal, result: DecodeResult) -> Message:
    if signal is Signal.TRACES:
        traces = ExportTraceServiceResponse()
        if result.rejected:
            traces.partial_success.rejected_spans = result.rejected
            traces.partial_success.error_message = result.error_message
        return traces
    logs = ExportLogsServiceResponse()
    if result.rejected:
        logs.partial_success.rejected_log_records = result.rejected
        logs.partial_success.error_message = result.error_message
    return logs
