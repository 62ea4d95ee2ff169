"""OTLP/gRPC receiver: ``TraceService``, ``LogsService`` and ``MetricsService/Export`` (4317).

Requests reach the handler as raw bytes (so the spool stores them as received). Status codes
follow the OTLP spec: INVALID_ARGUMENT for undecodable data, RESOURCE_EXHAUSTED past
``max_request_bytes`` (enforced by gRPC itself, without RetryInfo), UNAVAILABLE with a
``google.rpc.RetryInfo`` when overloaded or when data can be neither inserted nor spooled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tracehouse.ingest import metrics
from tracehouse.ingest.pipeline import Overloaded, Unavailable
from tracehouse.ingest.receiver import InvalidRequest, OtlpReceiver
from tracehouse.model import Signal

log = logging.getLogger(__name__)

_SERVICES = {
    Signal.TRACES: "opentelemetry.proto.collector.trace.v1.TraceService",
    Signal.LOGS: "opentelemetry.proto.collector.logs.v1.LogsService",
    Signal.METRICS: "opentelemetry.proto.collector.metrics.v1.MetricsService",
}


def create_server(
    receiver: OtlpReceiver,
    max_request_bytes: int,
    request_timeout_s: float,
    max_workers: int = 64,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> grpc.Server:
    """A gRPC server with the OTLP services registered; the caller binds a port and starts it.
    ``interceptors`` run before every call (the ingest token check)."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="otlp-grpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    handlers = []
    for signal, service in _SERVICES.items():
        method = grpc.unary_unary_rpc_method_handler(
            _export_handler(receiver, signal, request_timeout_s)
        )
        handlers.append(grpc.method_handlers_generic_handler(service, {"Export": method}))
    server.add_generic_rpc_handlers(handlers)
    return server


def _export_handler(
    receiver: OtlpReceiver, signal: Signal, timeout_s: float
) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def export(body: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            submission = receiver.submit(signal, body, "proto")
            submission.future.result(timeout=timeout_s)
        except InvalidRequest as exc:
            _abort(context, signal, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Overloaded as exc:
            _abort(context, signal, grpc.StatusCode.UNAVAILABLE, str(exc), exc.retry_after_s)
        except Unavailable as exc:
            _abort(context, signal, grpc.StatusCode.UNAVAILABLE, str(exc), 5)
        except FutureTimeout:
            message = f"not stored within {timeout_s:g}s; retry"
            _abort(context, signal, grpc.StatusCode.UNAVAILABLE, message, 5)
        metrics.REQUESTS.labels(signal.value, "grpc", "ok").inc()
        return bytes(submission.response.SerializeToString())

    return export


def _abort(
    context: grpc.ServicerContext,
    signal: Signal,
    code: grpc.StatusCode,
    message: str,
    retry_after_s: int | None = None,
) -> None:
    metrics.REQUESTS.labels(signal.value, "grpc", code.name.lower()).inc()
    if retry_after_s is not None:
        log.warning("OTLP/gRPC %s: %s", code.name, message)
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s))
        )
        status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(code, message)
