"""The trace API over real HTTP: lookup by id and search, on data sent over real OTLP.

The shop's data (tests/query/shop.py) gives exact control; a trace made with the OpenTelemetry
SDK and sent by its own exporters shows that what real instrumentation sends reads back whole.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.query.shop import MS, Shop, running_shop
from tests.topology.spans import Span, new_id, send
from tracehouse.query.traces import FIND_TRACE_IDS_SQL, find_trace_ids, span_depths


@pytest.fixture(scope="module")
def shop(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    with running_shop(engine_url, tmp_path_factory.mktemp("shop")) as shop:
        yield shop


def _resource(shop: Shop, service: str) -> dict[str, str]:
    return {"deployment.environment.name": "test", "service.name": shop.service(service)}


def _span(shop: Shop, service: str, scope: tuple[str, str], **fields: Any) -> dict[str, Any]:
    start_ms, duration_ms = fields.pop("start_ms"), fields.pop("duration_ms")
    return {
        "parentSpanId": "",
        "kind": "internal",
        "service": shop.service(service),
        "startTimeUnixNano": shop.ns(start_ms),
        "durationNano": str(duration_ms * MS),
        "status": "unset",
        "statusMessage": "",
        "attributes": {},
        "resourceAttributes": _resource(shop, service),
        "scope": {"name": scope[0], "version": scope[1]},
        "events": [],
        "links": [],
        **fields,
    }


SHOP = ("shop", "1.0.0")
PAY = ("pay", "2.1.0")


def _summary(shop: Shop, key: str) -> dict[str, Any]:
    """What the shop's trace ``key`` sums up to (see tests/query/shop.py)."""
    summaries: dict[str, dict[str, Any]] = {
        "A": {
            "rootService": shop.service("checkout"),
            "rootName": "GET /cart",
            "startTimeUnixNano": shop.ns(0),
            "durationNano": str(120 * MS),
            "spanCount": 5,
            "errorCount": 2,
            "services": [shop.service("checkout"), shop.service("payments")],
        },
        # The root, not the earlier span of the skewed clock; start is still the earliest.
        "B": {
            "rootService": shop.service("checkout"),
            "rootName": "GET /cart",
            "startTimeUnixNano": shop.ns(199),
            "durationNano": str(9 * MS),
            "spanCount": 3,
            "errorCount": 0,
            "services": [shop.service("checkout"), shop.service("inventory")],
        },
        # No span without a parent: the earliest span stands in.
        "C": {
            "rootService": shop.service("worker"),
            "rootName": "consume orders",
            "startTimeUnixNano": shop.ns(300),
            "durationNano": str(40 * MS),
            "spanCount": 2,
            "errorCount": 0,
            "services": [shop.service("worker")],
        },
    }
    return {"traceId": shop.trace_ids[key], **summaries[key]}


# -- lookup ----------------------------------------------------------------------------------


def test_lookup_returns_spans_in_order_with_depth_and_the_trace_logs(shop: Shop) -> None:
    a, b = shop.trace_ids["A"], shop.trace_ids["B"]
    response = shop.get(f"/traces/{a}")
    assert response.status_code == 200, response.text
    spans = [
        _span(
            shop,
            "checkout",
            SHOP,
            spanId="a000000000000001",
            depth=0,
            name="GET /cart",
            kind="server",
            start_ms=0,
            duration_ms=120,
            attributes={"http.request.method": "GET", "tenant": shop.service("acme")},
        ),
        _span(
            shop,
            "checkout",
            SHOP,
            spanId="a000000000000002",
            parentSpanId="a000000000000001",
            depth=1,
            name="POST /pay",
            kind="client",
            start_ms=10,
            duration_ms=60,
            status="error",
            statusMessage="payment failed",
            attributes={"http.response.status_code": "502"},
            links=[
                {
                    "traceId": b,
                    "spanId": "b000000000000001",
                    "traceState": "vendor=1",
                    "attributes": {"link.reason": "retry of"},
                }
            ],
        ),
        _span(
            shop,
            "payments",
            PAY,
            spanId="a000000000000003",
            parentSpanId="a000000000000002",
            depth=2,
            name="POST /pay",
            kind="server",
            start_ms=15,
            duration_ms=50,
            status="error",
            statusMessage="card declined",
            attributes={"tenant": shop.service("acme")},
            events=[
                {
                    "timeUnixNano": shop.ns(40),
                    "name": "exception",
                    "attributes": {
                        "exception.message": "card declined",
                        "exception.type": "CardDeclined",
                    },
                }
            ],
        ),
        _span(
            shop,
            "payments",
            PAY,
            spanId="a000000000000004",
            parentSpanId="a000000000000003",
            depth=3,
            name="SELECT cards",
            kind="client",
            start_ms=20,
            duration_ms=30,
            status="ok",
            attributes={"db.system.name": "postgresql"},
        ),
        _span(
            shop,
            "checkout",
            SHOP,
            spanId="a000000000000005",
            parentSpanId="a000000000000001",
            depth=1,
            name="render",
            start_ms=80,
            duration_ms=30,
        ),
    ]
    log = {"traceId": a}
    logs = [
        {
            **log,
            "timeUnixNano": shop.ns(5),
            "service": shop.service("checkout"),
            "severityText": "INFO",
            "severityNumber": 9,
            "body": "cart loaded for user 7",
            "spanId": "a000000000000001",
            "attributes": {"tenant": shop.service("acme")},
            "resourceAttributes": {"service.name": shop.service("checkout")},
        },
        {
            **log,
            "timeUnixNano": shop.ns(40),
            "service": shop.service("payments"),
            "severityText": "ERROR2",
            "severityNumber": 18,
            "body": "Card DECLINED for order 42",
            "spanId": "a000000000000003",
            "attributes": {"order.id": "42", "tenant": shop.service("acme")},
            "resourceAttributes": {"service.name": shop.service("payments")},
        },
        {
            **log,
            "timeUnixNano": shop.ns(60),
            "service": shop.service("checkout"),
            "severityText": "ERROR",
            "severityNumber": 17,
            "body": "payment failed: 502",
            "spanId": "a000000000000002",
            "attributes": {"http.response.status_code": "502"},
            "resourceAttributes": {"service.name": shop.service("checkout")},
        },
    ]
    assert response.json() == {**_summary(shop, "A"), "spans": spans, "logs": logs}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(
            "B",
            [("b000000000000003", 2), ("b000000000000001", 0), ("b000000000000002", 1)],
            id="clock-skew-keeps-depth",
        ),
        pytest.param(
            "C",
            [("c000000000000001", 0), ("c000000000000002", 1)],
            id="missing-parent-is-a-root",
        ),
    ],
)
def test_lookup_depth_and_summary(shop: Shop, key: str, expected: list[tuple[str, int]]) -> None:
    body = shop.get(f"/traces/{shop.trace_ids[key]}").json()
    assert [(span["spanId"], span["depth"]) for span in body["spans"]] == expected
    summary = {field: body[field] for field in _summary(shop, key)}
    assert summary == _summary(shop, key)


def test_lookup_accepts_upper_case_ids(shop: Shop) -> None:
    response = shop.get(f"/traces/{shop.trace_ids['C'].upper()}")
    assert response.status_code == 200
    assert response.json()["traceId"] == shop.trace_ids["C"]
    assert response.json()["logs"][0]["body"] == "processing batch"


def test_lookup_of_an_unknown_trace_is_404(shop: Shop) -> None:
    trace_id = os.urandom(16).hex()
    response = shop.get(f"/traces/{trace_id}")
    assert response.status_code == 404
    assert response.json() == {"detail": f"trace {trace_id} not found"}


@pytest.mark.parametrize(
    "trace_id",
    [
        pytest.param("abc", id="short"),
        pytest.param("a" * 33, id="long"),
        pytest.param("g" * 32, id="not-hex"),
        pytest.param("' OR 1=1 --" + "a" * 21, id="injection"),
    ],
)
def test_lookup_of_a_malformed_id_is_422(shop: Shop, trace_id: str) -> None:
    response = shop.get(f"/traces/{trace_id}")
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["path", "trace_id"]]


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        pytest.param("SPAN_KIND_CLIENT", "STATUS_CODE_ERROR", id="old-spelling"),
        pytest.param("Client", "Error", id="current-spelling"),
    ],
)
def test_lookup_and_search_read_both_collector_spellings(
    shop: Shop, service_name: str, kind: str, status: str
) -> None:
    """Rows an OpenTelemetry Collector wrote, in either enum spelling, read the same."""
    trace_id = os.urandom(16).hex()
    start_ns = shop.base_ns + 900 * MS
    shop.app.client.command(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, SpanName, SpanKind, ServiceName, "
        "Duration, StatusCode, StatusMessage) VALUES (fromUnixTimestamp64Nano({start:Int64}), "
        "{trace:String}, 'd000000000000001', 'GET /x', {kind:String}, {service:String}, "
        "1000, {status:String}, 'bad')",
        parameters={
            "start": start_ns,
            "trace": trace_id,
            "kind": kind,
            "service": service_name,
            "status": status,
        },
    )
    span = shop.get(f"/traces/{trace_id}").json()["spans"][0]
    assert (span["kind"], span["status"], span["durationNano"]) == ("client", "error", "1000")
    found = shop.get(
        "/traces", {"service": service_name, "kind": "client", "status": "error"}
    ).json()
    assert [(t["traceId"], t["errorCount"]) for t in found["traces"]] == [(trace_id, 1)]


def test_sdk_trace_reads_back_whole(shop: Shop, service_name: str) -> None:
    """A trace and its logs made with the OpenTelemetry SDK and sent by its own exporters
    (spans over OTLP/gRPC, logs over OTLP/HTTP)."""
    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"127.0.0.1:{shop.app.ports.grpc}", insecure=True)
        )
    )
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(
            OTLPLogExporter(endpoint=f"http://127.0.0.1:{shop.app.ports.http}/v1/logs")
        )
    )
    tracer = tracer_provider.get_tracer("orders", "4.2.0")
    logger = logger_provider.get_logger("orders")
    b = shop.base_ns + 1000 * MS
    try:
        raise TimeoutError("card service timed out")
    except TimeoutError as exc:
        error = exc
    try:
        with tracer.start_as_current_span(
            "GET /orders/{id}",
            kind=SpanKind.SERVER,
            attributes={"http.route": "/orders/{id}", "http.response.status_code": 500},
            start_time=b,
            end_on_exit=False,
        ) as server_span:
            logger.emit(
                timestamp=b + 1_000,
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                body="handling order 7",
            )
            with tracer.start_as_current_span(
                "SELECT orders",
                kind=SpanKind.CLIENT,
                attributes={"db.system.name": "postgresql"},
                start_time=b + 10 * MS,
                end_on_exit=False,
            ) as query_span:
                query_span.set_status(Status(StatusCode.OK))
                logger.emit(
                    timestamp=b + 20 * MS,
                    severity_number=SeverityNumber.DEBUG,
                    severity_text="DEBUG",
                    body="1 row",
                    attributes={"rows": 1},
                )
                query_span.end(end_time=b + 30 * MS)
            with tracer.start_as_current_span(
                "POST /charge", kind=SpanKind.CLIENT, start_time=b + 40 * MS, end_on_exit=False
            ) as charge_span:
                charge_span.record_exception(error, timestamp=b + 80 * MS)
                charge_span.set_status(Status(StatusCode.ERROR, "charge failed"))
                logger.emit(
                    timestamp=b + 85 * MS,
                    severity_number=SeverityNumber.ERROR,
                    severity_text="ERROR",
                    body="charge failed: card service timed out",
                )
                charge_span.end(end_time=b + 90 * MS)
            server_span.end(end_time=b + 100 * MS)
        assert tracer_provider.force_flush(timeout_millis=20_000)
        assert logger_provider.force_flush(timeout_millis=20_000)
    finally:
        tracer_provider.shutdown()
        logger_provider.shutdown()
    assert shop.app.pipeline is not None and shop.app.pipeline.wait_stored(30)

    trace_id = format(server_span.get_span_context().trace_id, "032x")
    server_id, query_id, charge_id = (
        format(span.get_span_context().span_id, "016x")
        for span in (server_span, query_span, charge_span)
    )
    resource_attributes = {key: str(value) for key, value in resource.attributes.items()}
    common = {
        "service": service_name,
        "statusMessage": "",
        "resourceAttributes": resource_attributes,
        "scope": {"name": "orders", "version": "4.2.0"},
        "events": [],
        "links": [],
    }
    exception_attributes = {
        "exception.escaped": "False",
        "exception.message": "card service timed out",
        "exception.stacktrace": "".join(traceback.format_exception(error)),
        "exception.type": "TimeoutError",
    }
    log = {
        "traceId": trace_id,
        "service": service_name,
        "attributes": {},
        "resourceAttributes": resource_attributes,
    }
    assert shop.get(f"/traces/{trace_id}").json() == {
        "traceId": trace_id,
        "rootService": service_name,
        "rootName": "GET /orders/{id}",
        "startTimeUnixNano": str(b),
        "durationNano": str(100 * MS),
        "spanCount": 3,
        "errorCount": 1,
        "services": [service_name],
        "spans": [
            {
                **common,
                "spanId": server_id,
                "parentSpanId": "",
                "depth": 0,
                "name": "GET /orders/{id}",
                "kind": "server",
                "startTimeUnixNano": str(b),
                "durationNano": str(100 * MS),
                "status": "unset",
                "attributes": {"http.response.status_code": "500", "http.route": "/orders/{id}"},
            },
            {
                **common,
                "spanId": query_id,
                "parentSpanId": server_id,
                "depth": 1,
                "name": "SELECT orders",
                "kind": "client",
                "startTimeUnixNano": str(b + 10 * MS),
                "durationNano": str(20 * MS),
                "status": "ok",
                "attributes": {"db.system.name": "postgresql"},
            },
            {
                **common,
                "spanId": charge_id,
                "parentSpanId": server_id,
                "depth": 1,
                "name": "POST /charge",
                "kind": "client",
                "startTimeUnixNano": str(b + 40 * MS),
                "durationNano": str(50 * MS),
                "status": "error",
                "statusMessage": "charge failed",
                "attributes": {},
                "events": [
                    {
                        "timeUnixNano": str(b + 80 * MS),
                        "name": "exception",
                        "attributes": exception_attributes,
                    }
                ],
            },
        ],
        "logs": [
            {
                **log,
                "timeUnixNano": str(b + 1_000),
                "severityText": "INFO",
                "severityNumber": 9,
                "body": "handling order 7",
                "spanId": server_id,
            },
            {
                **log,
                "timeUnixNano": str(b + 20 * MS),
                "severityText": "DEBUG",
                "severityNumber": 5,
                "body": "1 row",
                "spanId": query_id,
                "attributes": {"rows": "1"},
            },
            {
                **log,
                "timeUnixNano": str(b + 85 * MS),
                "severityText": "ERROR",
                "severityNumber": 17,
                "body": "charge failed: card service timed out",
                "spanId": charge_id,
            },
        ],
    }


@pytest.mark.parametrize(
    ("parents", "expected"),
    [
        pytest.param({"a": "", "b": "a", "c": "b"}, {"a": 0, "b": 1, "c": 2}, id="chain"),
        pytest.param({"c": "b", "b": "a", "a": ""}, {"a": 0, "b": 1, "c": 2}, id="leaf-first"),
        pytest.param({"a": "x", "b": "a"}, {"a": 0, "b": 1}, id="missing-parent"),
        pytest.param({"a": "a"}, {"a": 0}, id="own-parent"),
        pytest.param({"a": "b", "b": "a", "c": "a"}, {"a": 0, "b": 1, "c": 1}, id="cycle"),
    ],
)
def test_span_depths(parents: dict[str, str], expected: dict[str, int]) -> None:
    assert span_depths(parents) == expected


# -- search ----------------------------------------------------------------------------------

# (query parameters as for Shop.params, trace keys expected, newest first).
SEARCHES = [
    pytest.param({"service": "checkout-{run}"}, ["B", "A"], id="service"),
    pytest.param({"service": "payments-{run}"}, ["A"], id="service-in-the-middle"),
    pytest.param({"service": "inventory-{run}"}, ["B"], id="service-of-a-leaf"),
    pytest.param({"service": "nobody-{run}"}, [], id="service-unknown"),
    pytest.param(
        {"service": "checkout-{run}", "operation": "GET /cart"}, ["B", "A"], id="operation"
    ),
    pytest.param(
        {"service": "checkout-{run}", "operation": "POST /pay"}, ["A"], id="operation-narrows"
    ),
    pytest.param(
        {"service": "payments-{run}", "operation": "GET /cart"}, [], id="operation-of-other"
    ),
    pytest.param({"service": "checkout-{run}", "min_duration_ms": 100}, ["A"], id="min-duration"),
    pytest.param(
        {"service": "checkout-{run}", "min_duration_ms": 120.000001}, [], id="min-above-all"
    ),
    pytest.param({"service": "checkout-{run}", "max_duration_ms": 7}, ["B"], id="max-duration"),
    pytest.param(
        {"service": "checkout-{run}", "min_duration_ms": 30, "max_duration_ms": 30},
        ["A"],
        id="duration-bounds-inclusive",
    ),
    pytest.param(
        {"service": "checkout-{run}", "min_duration_ms": 31, "max_duration_ms": 59},
        [],
        id="duration-between-spans",
    ),
    pytest.param({"service": "checkout-{run}", "status": "error"}, ["A"], id="status-error"),
    pytest.param({"service": "checkout-{run}", "status": "ok"}, ["B"], id="status-ok"),
    pytest.param({"service": "worker-{run}", "status": "unset"}, ["C"], id="status-unset"),
    pytest.param({"service": "payments-{run}", "status": "unset"}, [], id="status-none"),
    pytest.param({"service": "checkout-{run}", "kind": "client"}, ["B", "A"], id="kind-client"),
    pytest.param({"service": "checkout-{run}", "kind": "internal"}, ["A"], id="kind-internal"),
    pytest.param({"service": "worker-{run}", "kind": "consumer"}, ["C"], id="kind-consumer"),
    pytest.param({"service": "worker-{run}", "kind": "server"}, [], id="kind-none"),
    pytest.param({"attr": ["tenant=acme-{run}"]}, ["A"], id="attr-alone"),
    pytest.param({"attr": ["tenant=globex-{run}"]}, ["B"], id="attr-other-value"),
    pytest.param(
        {"service": "checkout-{run}", "attr": ["http.response.status_code=502"]},
        ["A"],
        id="attr-int-as-text",
    ),
    pytest.param(
        {"service": "checkout-{run}", "attr": ["http.request.method=GET"]},
        ["B", "A"],
        id="attr-shared",
    ),
    pytest.param(
        {"attr": ["tenant=acme-{run}", "http.request.method=GET"]}, ["A"], id="attrs-one-span"
    ),
    pytest.param(
        {"attr": ["tenant=acme-{run}", "db.system.name=postgresql"]},
        [],
        id="attrs-on-different-spans",
    ),
    pytest.param(
        {"service": "checkout-{run}", "attr": ["http.request.method="]}, [], id="attr-empty-value"
    ),
    pytest.param(
        {"service": "checkout-{run}", "operation": "GET /cart", "status": "ok", "kind": "server"},
        ["B"],
        id="combined",
    ),
    pytest.param({"service": "checkout-{run}", "limit": 1}, ["B"], id="limit"),
    pytest.param(
        {"service": "checkout-{run}", "start": "{ms:150}"}, ["B"], id="start-excludes-older"
    ),
    pytest.param({"service": "checkout-{run}", "end": "{ms:150}"}, ["A"], id="end-excludes-newer"),
    pytest.param(
        {"service": "inventory-{run}", "start": "{ms:-60000}", "end": "{ms:200}"},
        ["B"],
        id="range-in-the-past",
    ),
]


@pytest.mark.parametrize(("params", "expected"), SEARCHES)
def test_search_filters(shop: Shop, params: dict[str, Any], expected: list[str]) -> None:
    response = shop.get("/traces", shop.params(params))
    assert response.status_code == 200, response.text
    names = {trace_id: key for key, trace_id in shop.trace_ids.items()}
    found = [names.get(trace["traceId"], trace["traceId"]) for trace in response.json()["traces"]]
    assert found == expected


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        pytest.param("checkout", ["B", "A"], id="whole-traces-not-matching-spans"),
        pytest.param("worker", ["C"], id="no-root-span"),
    ],
)
def test_search_summarises_whole_traces(shop: Shop, service: str, expected: list[str]) -> None:
    """Each matching trace once, summarised over all its spans, not only those that matched."""
    response = shop.get("/traces", {"service": shop.service(service)})
    assert response.json() == {"traces": [_summary(shop, key) for key in expected]}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        pytest.param({"limit": 0}, "limit", id="limit-0"),
        pytest.param({"limit": 1001}, "limit", id="limit-1001"),
        pytest.param({"limit": "ten"}, "limit", id="limit-text"),
        pytest.param({"attr": "tenant"}, "attr", id="attr-without-value"),
        pytest.param({"attr": "=acme"}, "attr", id="attr-without-key"),
        pytest.param({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01"}, "start", id="start"),
        pytest.param({"end": "yesterday"}, "end", id="end-unreadable"),
        pytest.param({"status": "failed"}, "status", id="status"),
        pytest.param({"kind": "SPAN_KIND_SERVER"}, "kind", id="kind"),
        pytest.param({"min_duration_ms": -1}, "min_duration_ms", id="min-negative"),
        pytest.param({"min_duration_ms": "nan"}, "min_duration_ms", id="min-nan"),
        pytest.param({"max_duration_ms": "inf"}, "max_duration_ms", id="max-inf"),
        pytest.param(
            {"min_duration_ms": 5, "max_duration_ms": 4}, "max_duration_ms", id="max-below-min"
        ),
    ],
)
def test_search_rejects_bad_parameters(shop: Shop, params: dict[str, Any], parameter: str) -> None:
    response = shop.get("/traces", params)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", parameter]]


INJECTIONS = [
    "checkout-{run}' OR '1'='1",
    "checkout-{run}'; DROP TABLE otel_traces; --",
    "' OR 1=1 --",
    "{service:String}",
    "checkout-{run}\\",
    "%",
]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("name", ["service", "operation", "attr-key", "attr-value"])
def test_search_binds_values(shop: Shop, name: str, value: str) -> None:
    """Values reach ClickHouse as parameters: hostile ones answer normally and match nothing."""
    value = value.replace("{run}", shop.run)
    params = {
        "service": {"service": value},
        "operation": {"service": shop.service("checkout"), "operation": value},
        "attr-key": {"attr": f"{value}=acme-{shop.run}"},
        "attr-value": {"attr": f"tenant={value}"},
    }[name]
    response = shop.get("/traces", params)
    assert response.status_code == 200, response.text
    assert response.json() == {"traces": []}
    assert len(shop.get("/traces", {"service": shop.service("checkout")}).json()["traces"]) == 2


def _search_parameters(start_ns: int, end_ns: int, service: str, limit: int = 20) -> dict[str, Any]:
    """The parameters of ``FIND_TRACE_IDS_SQL`` for one service's traces, no other filter."""
    return {
        "start_ns": start_ns,
        "end_ns": end_ns,
        "service": service,
        "operation": "",
        "min_duration_ns": 0,
        "max_duration_ns": 2**64 - 1,
        "status": "",
        "kind": "",
        "attr_keys": [],
        "attr_values": [],
        "limit": limit,
    }


def test_a_long_search_reads_from_the_end_and_ranks_like_one_query(shop: Shop) -> None:
    """Over two hours the search reads the last quarter hour first, then the hour before it,
    and so on. Its traces and their order are those of one query over the whole range."""
    service = shop.service("stepped")
    end_ns = shop.base_ns + 60 * 10**9
    minutes_ago = {  # trace -> its spans' starts, in minutes before the end
        "T1": (2, 50),  # in the first part and the second: ranked by its newest span
        "T2": (8,),
        "T3": (40,),
        "T4": (70,),
        "T5": (100,),
    }
    ids = {key: new_id(16) for key in minutes_ago}
    spans = [
        Span(service, "server", end_ns - m * 60 * 10**9, 5, trace_id=ids[key])
        for key, starts in minutes_ago.items()
        for m in starts
    ]
    send(shop.app, *spans)
    client = shop.app.client
    for limit, expected in ((3, ["T1", "T2", "T3"]), (10, ["T1", "T2", "T3", "T4", "T5"])):
        parameters = _search_parameters(end_ns - 120 * 60 * 10**9, end_ns, service, limit)
        found = find_trace_ids(client, parameters)
        assert found == [ids[key] for key in expected]
        whole = client.query(FIND_TRACE_IDS_SQL, parameters=parameters)
        assert found == [row[0] for row in whole.result_rows]


def test_search_reads_the_primary_key(shop: Shop) -> None:
    """The service filter's switch folds away, so the primary key narrows the read."""
    parameters = _search_parameters(shop.base_ns, shop.base_ns + 10**9, shop.service("checkout"))
    plan = shop.app.client.query(
        "EXPLAIN indexes = 1 " + FIND_TRACE_IDS_SQL, parameters=parameters
    ).result_rows
    text = "\n".join(row[0] for row in plan)
    primary_key = text.split("PrimaryKey", 1)[1]
    assert "ServiceName in" in primary_key.split("Condition:", 1)[1].splitlines()[0], text


def test_endpoints_are_documented(shop: Shop) -> None:
    spec = httpx.get(f"http://127.0.0.1:{shop.app.ports.api}/openapi.json").json()
    for path in ("/api/v1/traces/{trace_id}", "/api/v1/traces", "/api/v1/logs"):
        assert spec["paths"][path]["get"]["description"], path
