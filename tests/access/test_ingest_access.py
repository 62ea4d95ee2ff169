"""Ingest tokens: with ingest tokens in the access file, OTLP over HTTP and gRPC is refused
without a known token (HTTP 401 with a ``google.rpc.Status``, gRPC UNAUTHENTICATED) and
nothing of a refused request is stored; the real OpenTelemetry exporters, given the token as
a header, get through."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.rpc import code_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.conftest import ServerFactory, query
from tests.ingest.otlp_factory import trace_request
from tracehouse.app import Tracehouse

TOKEN = "ingest-token-0123456789abcdef"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def _server(make_server: ServerFactory, tmp_path: Path, **overrides: Any) -> Tracehouse:
    access = tmp_path / "access.yaml"
    access.write_text(
        yaml.safe_dump({"ingest": [{"name": "shop-prod", "token": TOKEN, "application": "shop"}]})
    )
    return make_server(roles=["ingest", "query"], access_file=access, **overrides)


def _stored(app: Tracehouse, service: str) -> int:
    (count,) = query(
        app, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=service
    )[0]
    return int(count)


def test_http_without_a_known_token_is_401_with_a_status(
    make_server: ServerFactory, tmp_path: Path
):
    app = _server(make_server, tmp_path)
    service = f"refused-{uuid.uuid4().hex[:8]}"
    body = trace_request(service).SerializeToString()
    url = f"http://127.0.0.1:{app.ports.http}/v1/traces"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        response = httpx.post(url, content=body, headers={**PROTOBUF, **headers}, timeout=30)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/x-protobuf"
        status = status_pb2.Status.FromString(response.content)
        assert status.code == code_pb2.UNAUTHENTICATED
        assert "ingest token" in status.message
    as_json = httpx.post(
        url, content="{}", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert as_json.status_code == 401
    assert json.loads(as_json.content)["code"] == code_pb2.UNAUTHENTICATED
    accepted = httpx.post(
        url, content=body, headers={**PROTOBUF, "Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert accepted.status_code == 200, accepted.text
    assert _stored(app, service) == 3  # the accepted request only


def test_grpc_without_a_known_token_is_unauthenticated(make_server: ServerFactory, tmp_path: Path):
    app = _server(make_server, tmp_path)
    service = f"refused-grpc-{uuid.uuid4().hex[:8]}"
    body = trace_request(service).SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{app.ports.grpc}") as channel:
        export = channel.unary_unary(TRACE_EXPORT)
        for metadata in ((), (("authorization", "Bearer wrong-token-0123456789"),)):
            with pytest.raises(grpc.RpcError) as refused:
                export(body, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        export(body, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
    assert _stored(app, service) == 3


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_the_sdk_exporters_with_the_token_get_through(
    make_server: ServerFactory, tmp_path: Path, transport: str
) -> None:
    app = _server(make_server, tmp_path)
    service = f"sdk-{transport}-{uuid.uuid4().hex[:8]}"
    headers = {"authorization": f"Bearer {TOKEN}"}
    exporter: Any = (
        HttpSpanExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/traces", headers=headers)
        if transport == "http"
        else GrpcSpanExporter(
            endpoint=f"127.0.0.1:{app.ports.grpc}", insecure=True, headers=headers
        )
    )
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("tests").start_as_current_span("op"):
        pass
    provider.shutdown()
    assert _stored(app, service) == 1


def test_a_configured_header_carries_a_bare_token(make_server: ServerFactory, tmp_path: Path):
    app = _server(make_server, tmp_path, ingest_token_header="X-Api-Key")
    service = f"header-{uuid.uuid4().hex[:8]}"
    body = trace_request(service).SerializeToString()
    url = f"http://127.0.0.1:{app.ports.http}/v1/traces"
    assert (
        httpx.post(
            url, content=body, headers={**PROTOBUF, "Authorization": f"Bearer {TOKEN}"}, timeout=30
        ).status_code
        == 401
    )
    ok = httpx.post(url, content=body, headers={**PROTOBUF, "x-api-key": TOKEN}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert _stored(app, service) == 3


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"query": [{"name": "x", "token": "short"}]}, "at least 16"),
        ({"query": [{"name": "x"}]}, "exactly one of token"),
        ({"query": [{"name": "x", "token": TOKEN, "role": "root"}]}, "role"),
        ({"ingest": [{"name": "x", "token": TOKEN}]}, "application"),
        ({"ingest": [{"name": "x", "token_sha256": "zz", "application": "a"}]}, "token_sha256"),
        ({"tokens": []}, "tokens"),
        (
            {"query": [{"name": "x", "token": TOKEN}, {"name": "y", "token": TOKEN}]},
            "listed twice",
        ),
    ],
    ids=["short", "no-secret", "role", "no-application", "bad-hash", "unknown-key", "twice"],
)
def test_a_bad_access_file_stops_the_start_naming_the_problem(
    make_server: ServerFactory, tmp_path: Path, document: dict[str, Any], problem: str
) -> None:
    access = tmp_path / "access.yaml"
    access.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match=problem):
        make_server(roles=["query"], access_file=access)
