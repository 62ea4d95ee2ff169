"""OTLP/HTTP: every kind of bad input gets the spec's status, stores nothing wrong, and good
data sent around it still lands."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field

import httpx
import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import trace_request
from tracehouse.app import Tracehouse

LIMIT = 1024 * 1024
PROTO = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(PROTO))
    method: str = "POST"
    path: str = "/v1/traces"
    status: int = 400
    grpc_code: int | None = code_pb2.INVALID_ARGUMENT


def _good(service: str) -> bytes:
    return bytes(trace_request(service, spans=3).SerializeToString())


def _cases(bad_service: str) -> dict[str, Case]:
    good = _good(bad_service)
    return {
        "corrupt-protobuf": Case(b"\xff\xff\xff\xff garbage"),
        "truncated-protobuf": Case(good[: len(good) // 2]),
        "invalid-json": Case(b'{"resourceSpans": [', JSON),
        "json-not-an-object": Case(b"[1, 2, 3]", JSON),
        "json-wrong-field-type": Case(b'{"resourceSpans": 5}', JSON),
        "json-id-not-hex": Case(
            json.dumps(
                {
                    "resourceSpans": [
                        {"scopeSpans": [{"spans": [{"traceId": "zz" * 16, "spanId": "ab" * 8}]}]}
                    ]
                }
            ).encode(),
            JSON,
        ),
        "json-invalid-utf8": Case(b'{"resourceSpans": "\xff\xfe"}', JSON),
        "wrong-content-type": Case(good, {"Content-Type": "text/plain"}, status=415),
        "no-content-type": Case(good, {}, status=415),
        "get": Case(b"", method="GET", status=405, grpc_code=code_pb2.UNIMPLEMENTED),
        "put": Case(good, method="PUT", status=405, grpc_code=code_pb2.UNIMPLEMENTED),
        "bad-gzip": Case(b"\x1f\x8b\x08\x00 not gzip", {**PROTO, "Content-Encoding": "gzip"}),
        "truncated-gzip": Case(gzip.compress(good)[:-12], {**PROTO, "Content-Encoding": "gzip"}),
        "unsupported-encoding": Case(good, {**PROTO, "Content-Encoding": "br"}, status=415),
        "oversize-body": Case(
            os.urandom(LIMIT + 1), status=413, grpc_code=code_pb2.RESOURCE_EXHAUSTED
        ),
        "gzip-bomb": Case(
            gzip.compress(b"\0" * (200 * LIMIT)),
            {**PROTO, "Content-Encoding": "gzip"},
            status=413,
            grpc_code=code_pb2.RESOURCE_EXHAUSTED,
        ),
        "corrupt-metrics": Case(b"\xff\xff\xff\xff garbage", path="/v1/metrics"),
        "metrics-json-wrong-field-type": Case(b'{"resourceMetrics": 5}', JSON, path="/v1/metrics"),
        "metrics-get": Case(
            b"", method="GET", path="/v1/metrics", status=405, grpc_code=code_pb2.UNIMPLEMENTED
        ),
    }


CASE_IDS = list(_cases("x"))


@pytest.fixture
def limited(make_server: ServerFactory) -> Tracehouse:
    return make_server(max_request_bytes=LIMIT, max_attribute_value_length=1000)


def _count(app: Tracehouse, service: str) -> int:
    rows = query(app, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=service)
    return int(rows[0][0])


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_refused_and_good_data_around_it_lands(
    limited: Tracehouse, service_name: str, case_id: str
) -> None:
    bad_service = f"{service_name}-bad"
    case = _cases(bad_service)[case_id]
    base = f"http://127.0.0.1:{limited.ports.http}"
    with httpx.Client(base_url=base, timeout=30) as http:
        before = http.post("/v1/traces", content=_good(service_name), headers=PROTO)
        assert before.status_code == 200
        response = http.request(case.method, case.path, content=case.body, headers=case.headers)
        after = http.post("/v1/traces", content=_good(service_name), headers=PROTO)
        assert after.status_code == 200

    assert response.status_code == case.status, response.text
    if case.grpc_code is not None:
        status = _decode_status(response)
        assert status.code == case.grpc_code
        assert status.message  # says what was wrong
    if case.status == 405:
        assert response.headers["Allow"] == "POST"
    assert _count(limited, bad_service) == 0
    assert _count(limited, service_name) == 6


def _decode_status(response: httpx.Response) -> status_pb2.Status:
    if response.headers["content-type"].startswith("application/json"):
        body = response.json()
        return status_pb2.Status(code=body.get("code", 0), message=body.get("message", ""))
    return status_pb2.Status.FromString(response.content)


def test_span_with_wrong_id_length_is_rejected_alone(server: Tracehouse, service_name: str) -> None:
    request = trace_request(service_name, spans=3)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[1].trace_id = b"\x01" * 5
    spans[2].span_id = b"\x02" * 3
    response = httpx.post(
        f"http://127.0.0.1:{server.ports.http}/v1/traces",
        content=request.SerializeToString(),
        headers=PROTO,
    )
    assert response.status_code == 200
    result = ExportTraceServiceResponse.FromString(response.content)
    assert result.partial_success.rejected_spans == 2
    assert "trace_id must be 16" in result.partial_success.error_message
    assert query(
        server, "SELECT SpanName FROM otel_traces WHERE ServiceName = {s:String}", s=service_name
    ) == [("op-0",)]


def test_partial_success_in_json(server: Tracehouse, service_name: str) -> None:
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "ok"},
                            {"traceId": "ab" * 4, "spanId": "cd" * 8, "name": "short-id"},
                        ]
                    }
                ],
            }
        ]
    }
    response = httpx.post(
        f"http://127.0.0.1:{server.ports.http}/v1/traces", json=document, headers=JSON
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["partialSuccess"]["rejectedSpans"] == "1"
    names = query(
        server, "SELECT SpanName FROM otel_traces WHERE ServiceName = {s:String}", s=service_name
    )
    assert names == [("ok",)]


def test_huge_attribute_value_is_cut_to_the_limit_and_counted(
    limited: Tracehouse, service_name: str
) -> None:
    request = trace_request(service_name, spans=1, attrs={"big": "x" * 500_000, "small": "y"})
    metrics_url = f"http://127.0.0.1:{limited.ports.api}/metrics"
    before = _metric(httpx.get(metrics_url).text, "tracehouse_ingest_truncated_values_total")
    response = httpx.post(
        f"http://127.0.0.1:{limited.ports.http}/v1/traces",
        content=request.SerializeToString(),
        headers=PROTO,
    )
    assert response.status_code == 200
    rows = query(
        limited,
        "SELECT length(SpanAttributes['big']), SpanAttributes['small'] FROM otel_traces "
        "WHERE ServiceName = {s:String}",
        s=service_name,
    )
    assert rows == [(1000, "y")]
    after = _metric(httpx.get(metrics_url).text, "tracehouse_ingest_truncated_values_total")
    assert after - before == 1


def test_empty_request_succeeds_and_stores_nothing(server: Tracehouse) -> None:
    url = f"http://127.0.0.1:{server.ports.http}"
    assert httpx.post(f"{url}/v1/traces", content=b"", headers=PROTO).status_code == 200
    assert httpx.post(f"{url}/v1/logs", content=b"{}", headers=JSON).status_code == 200


def test_gzip_request_lands(server: Tracehouse, service_name: str) -> None:
    body = gzip.compress(_good(service_name))
    response = httpx.post(
        f"http://127.0.0.1:{server.ports.http}/v1/traces",
        content=body,
        headers={**PROTO, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert _count(server, service_name) == 3


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
