"""OTLP/gRPC: bad input gets the spec's status code, and good data around it still lands."""

from __future__ import annotations

import os

import grpc
import pytest

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import trace_request
from tracehouse.app import Tracehouse

LIMIT = 256 * 1024
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _export(app: Tracehouse, body: bytes, method: str = TRACES, **kwargs: object) -> None:
    with grpc.insecure_channel(
        f"127.0.0.1:{app.ports.grpc}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        call(body, timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("body", "method", "code"),
    [
        pytest.param(
            b"\xff\xff\xff\xff garbage", TRACES, grpc.StatusCode.INVALID_ARGUMENT, id="corrupt"
        ),
        pytest.param(
            os.urandom(LIMIT + 1), TRACES, grpc.StatusCode.RESOURCE_EXHAUSTED, id="oversize"
        ),
        pytest.param(
            b"\xff\xff\xff\xff garbage",
            METRICS,
            grpc.StatusCode.INVALID_ARGUMENT,
            id="corrupt-metrics",
        ),
    ],
)
def test_bad_request_gets_the_spec_status(
    make_server: ServerFactory, service_name: str, body: bytes, method: str, code: grpc.StatusCode
) -> None:
    app = make_server(max_request_bytes=LIMIT)
    with pytest.raises(grpc.RpcError) as refused:
        _export(app, body, method)
    assert refused.value.code() == code
    assert refused.value.details()
    _export(app, trace_request(service_name, spans=3).SerializeToString())
    rows = query(
        app, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=service_name
    )
    assert rows == [(3,)]


def test_gzip_compressed_request_lands(server: Tracehouse, service_name: str) -> None:
    body = trace_request(service_name, spans=4).SerializeToString()
    _export(server, body, compression=grpc.Compression.Gzip)
    rows = query(
        server, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=service_name
    )
    assert rows == [(4,)]
