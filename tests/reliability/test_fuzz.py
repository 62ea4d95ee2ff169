"""Hostile input: hypothesis over the OTLP decoders and the OTLP/HTTP endpoints for traces,
logs and metrics — corrupt, truncated, deeply nested, oversized, invalid UTF-8, huge attribute
counts and values. No 500s, no crash, and the server still stores valid data afterwards.

A small derandomized sample runs here; ``tracehouse bench fuzz --cases 100000`` is the long
run (docs/reliability.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from prometheus_client import REGISTRY

from tests.conftest import DATA, ServerFactory, query
from tests.ingest.otlp_factory import log_request, trace_request
from tests.reliability.harness import stored_ids
from tracehouse.app import Tracehouse
from tracehouse.bench.fuzz import (
    ALLOWED_STATUSES,
    HTTP_KINDS,
    JSON,
    PATHS,
    PROTO,
    Decoder,
    _many_attributes_proto,
    make_case,
    route_of,
    run_fuzz_bench,
)
from tracehouse.ingest.otlp_json import JsonDecodeError, parse_json
from tracehouse.ingest.spool import REQUEST_TYPES
from tracehouse.model import Signal

LIMIT = 4 * 2**20
FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(scope="module")
def fuzz_server(make_module_server: ServerFactory) -> Tracehouse:
    return make_module_server(max_request_bytes=LIMIT, insert_retry_interval_s=0.2)


@pytest.fixture(scope="module")
def client(fuzz_server: Tracehouse) -> Any:
    with httpx.Client(base_url=f"http://127.0.0.1:{fuzz_server.ports.http}", timeout=60) as c:
        yield c


def _post(client: httpx.Client, path: str, body: bytes, headers: dict[str, str]) -> int:
    status = client.post(path, content=body, headers=headers).status_code
    assert status in ALLOWED_STATUSES, f"{path}: HTTP {status}"
    assert status != 503, "a hostile request must not make ingest unavailable"
    return status


@FUZZ
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_hostile_requests_from_the_bench_generator_get_no_500(
    client: httpx.Client, seed: int
) -> None:
    case = make_case(random.Random(seed), LIMIT)
    _post(client, case.path, case.body, case.headers())


@FUZZ
@given(
    path=st.sampled_from(PATHS),
    content_type=st.sampled_from([PROTO, JSON]),
    body=st.binary(max_size=4096),
)
def test_arbitrary_bytes_get_no_500(
    client: httpx.Client, path: str, content_type: str, body: bytes
) -> None:
    _post(client, path, body, {"Content-Type": content_type})


_OTLP_FIELDS = [
    "resourceSpans",
    "resourceLogs",
    "resourceMetrics",
    "scopeSpans",
    "scopeLogs",
    "scopeMetrics",
    "spans",
    "logRecords",
    "metrics",
    "traceId",
    "spanId",
    "resource",
    "attributes",
    "key",
    "value",
    "stringValue",
    "kvlistValue",
    "arrayValue",
    "values",
    "gauge",
    "sum",
    "histogram",
    "dataPoints",
    "exemplars",
    "body",
    "startTimeUnixNano",
    "kind",
    "status",
    "name",
]
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(_OTLP_FIELDS) | st.text(max_size=10), children, max_size=5
        )
    ),
    max_leaves=40,
)


@FUZZ
@given(signal=st.sampled_from(list(Signal)), document=_JSON_VALUES)
def test_json_decoder_raises_only_its_own_error(signal: Signal, document: Any) -> None:
    """Structured JSON of the OTLP field names with arbitrary shapes and values: decoded, or
    refused with JsonDecodeError (the receivers' 400) — never another exception."""
    body = json.dumps(document).encode()
    with contextlib.suppress(JsonDecodeError):
        parse_json(body, REQUEST_TYPES[signal](), signal.value)


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_a_400(client: httpx.Client, depth: int, opener: str) -> None:
    """Found by the fuzzer: a deeply nested JSON body raised RecursionError (HTTP 500)."""
    closer = "]" if opener == "[" else "}"
    body = '{"resourceSpans":' + opener * depth + "1" + closer * depth + "}"
    response = client.post("/v1/traces", content=body, headers={"Content-Type": JSON})
    assert response.status_code == 400
    assert "nested too deeply" in response.json()["message"]


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1e30"])
@pytest.mark.parametrize("field", ["startTimeUnixNano", "kind", "droppedAttributesCount"])
def test_out_of_range_json_numbers_are_a_400(client: httpx.Client, field: str, value: str) -> None:
    """Found by the fuzzer: 1e400 (infinity) for an integer field raised OverflowError (500)."""
    body = (
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10",'
        f'"spanId":"0102030405060708","{field}":{value}}}]}}]}}]}}'
    )
    response = client.post("/v1/traces", content=body, headers={"Content-Type": JSON})
    assert response.status_code == 400, response.text
    assert "OTLP/JSON" in response.json()["message"]


def test_server_still_stores_valid_data_after_hostile_input(
    client: httpx.Client, fuzz_server: Tracehouse, service_name: str
) -> None:
    rng = random.Random(7)
    for _ in range(50):
        case = make_case(rng, LIMIT)
        _post(client, case.path, case.body, case.headers())
    request = trace_request(service_name, spans=5)
    assert _post(client, "/v1/traces", request.SerializeToString(), {"Content-Type": PROTO}) == 200
    assert sum(stored_ids(fuzz_server, service_name).values()) == 5


def test_request_clickhouse_cannot_parse_is_stored_from_its_re_encoding(
    make_server: ServerFactory, service_name: str
) -> None:
    """Found by ``bench fuzz``: a mutated logs request that the protobuf runtime accepts (a
    repeated message, trailing fields) but ClickHouse refuses as corrupted (code 444) was
    retried every few seconds forever, holding an inserter of its signal; then it was set
    aside. Acknowledged means stored: it is re-encoded as the runtime read it (without the
    fields it did not know) and stored; later requests are stored too."""
    app = make_server(insert_retry_interval_s=0.2)
    body = (DATA / "reliability" / "logs-clickhouse-cannot-parse.binpb").read_bytes()
    refused = "tracehouse_ingest_spool_refused_items_total"
    before = REGISTRY.get_sample_value(refused, {"signal": "logs"}) or 0.0
    marked = "SELECT count() FROM otel_logs WHERE SpanId = '27e3e37585afdce0'"
    (stored_before,) = query(app, marked)
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/logs",
        content=body,
        headers={"Content-Type": PROTO},
        timeout=30,
    )
    assert response.status_code == 200  # partial success: one record has a 10-byte span id
    assert app.pipeline is not None and app.pipeline.wait_stored(60), "the spool is stuck"
    assert not list(app.settings.resolved_spool_dir.glob("*.failed"))
    assert (REGISTRY.get_sample_value(refused, {"signal": "logs"}) or 0.0) == before
    assert query(app, marked) == [(stored_before[0] + 1,)]  # one of its two storable records

    valid = log_request(service_name, records=3).SerializeToString()
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/logs",
        content=valid,
        headers={"Content-Type": PROTO},
        timeout=30,
    )
    assert response.status_code == 200
    rows = query(
        app, "SELECT count() FROM otel_logs WHERE ServiceName = {s:String}", s=service_name
    )
    assert rows == [(3,)]


# -- the bench's own machinery (tracehouse bench fuzz) --------------------------------------


def test_hand_encoded_many_attributes_request_is_what_the_protobuf_runtime_builds() -> None:
    trace_id, span_id = bytes(range(16)), bytes(range(8))
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        KeyValue(key=f"a{i}", value=AnyValue(int_value=i)) for i in range(1000)
    )
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id = trace_id, span_id
    span.attributes.extend(rs.resource.attributes[:500])
    assert _many_attributes_proto(1000, trace_id, span_id) == request.SerializeToString()


@settings(FUZZ, max_examples=80)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_in_process_decoder_answers_as_the_http_endpoint(client: httpx.Client, seed: int) -> None:
    """The bench sends most cases through ``Decoder`` instead of HTTP: it must give the
    status the endpoint gives, and accept exactly what the endpoint accepts."""
    case = make_case(random.Random(seed), LIMIT)
    if case.kind in HTTP_KINDS:  # never routed to the decoder
        assert route_of(case, 0.99, 0.1, 0.05) == "http"
        return
    status, payload = Decoder().decode(case)
    assert status == str(_post(client, case.path, case.body, case.headers()))
    assert (payload is not None) == (status == "200")


def test_routes_keep_transport_kinds_on_http_and_grpc_to_protobuf() -> None:
    rng = random.Random(5)
    routes = {"http": 0, "grpc": 0, "decoder": 0}
    for _ in range(400):
        case = make_case(rng, LIMIT)
        route = route_of(case, rng.random(), 0.1, 0.05)
        routes[route] += 1
        if case.kind in HTTP_KINDS:
            assert route == "http"
        if route == "grpc":
            assert case.content_type == PROTO
    assert min(routes.values()) > 0, routes


def test_bench_fuzz_in_small_finds_nothing_and_stores_the_check_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``tracehouse bench fuzz`` end to end against a child ``tracehouse serve``: every route
    is used, no finding, the valid requests sent after the cases are stored."""
    code = run_fuzz_bench(argparse.Namespace(cases=300, seed=3, progress=100))
    out = capsys.readouterr().out
    print(out)  # pytest -s
    assert code == 0, out
    assert "cases: 300 in" in out
    for route in ("decoder 400", "http 413", "grpc INVALID_ARGUMENT"):
        assert route in out, route
    assert "FINDING" not in out
    assert "lost=0, duplicated=0, unknown=0" in out
