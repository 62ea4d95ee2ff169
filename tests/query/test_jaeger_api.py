"""The Jaeger v1 query API over real HTTP, on the shop's telemetry sent over real OTLP/HTTP.

The shop (tests/query/shop.py) holds a multi-service trace A: checkout ``GET /cart`` (server)
→ checkout ``POST /pay`` (client, error) → payments ``POST /pay`` (server, error, with an
exception event) → payments ``SELECT cards`` (client); trace B: checkout → inventory; trace C:
worker only. Times are asserted to the microsecond, as Jaeger writes them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.query.shop import MS, Shop, running_shop
from tracehouse.query.jaeger import JaegerError, normalise_trace_id, parse_duration_ns, parse_tags


@pytest.fixture(scope="module")
def shop(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    with running_shop(engine_url, tmp_path_factory.mktemp("jaeger-shop")) as shop:
        yield shop


def _get(shop: Shop, path: str, **params: Any) -> httpx.Response:
    url = f"http://127.0.0.1:{shop.app.ports.api}/jaeger/api{path}"
    return httpx.get(url, params=params, timeout=30)


def _data(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["errors"] is None
    assert body["limit"] == 0 and body["offset"] == 0
    assert body["total"] == len(body["data"])
    return body["data"]


def _us(shop: Shop, offset_ms: float) -> int:
    """The base instant plus an offset, in microseconds since the epoch."""
    return (shop.base_ns + round(offset_ms * MS)) // 1000


def _window(shop: Shop, from_ms: float, to_ms: float) -> dict[str, str]:
    return {"start": str(_us(shop, from_ms)), "end": str(_us(shop, to_ms))}


def _ids(shop: Shop, traces: list[dict[str, Any]]) -> list[str]:
    """Names (A, B, C) of the shop's traces in a search result, in its order."""
    names = {trace_id: name for name, trace_id in shop.trace_ids.items()}
    return [names[trace["traceID"]] for trace in traces]


def _bad_request(response: httpx.Response, parameter: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["data"] is None and body["total"] == 0
    assert len(body["errors"]) == 1
    assert body["errors"][0]["code"] == 400
    assert parameter in body["errors"][0]["msg"]


def _tag(key: str, value: Any, kind: str = "string") -> dict[str, Any]:
    return {"key": key, "type": kind, "value": value}


# -- services and operations -------------------------------------------------------------------


def test_services_are_sorted_and_include_every_service_that_sent_spans(shop: Shop) -> None:
    services = _data(_get(shop, "/services"))
    assert services == sorted(services)
    ours = [service for service in services if service.endswith(shop.run)]
    assert ours == [shop.service(name) for name in ("checkout", "inventory", "payments", "worker")]


def test_service_operations_are_the_distinct_span_names(shop: Shop) -> None:
    data = _data(_get(shop, f"/services/{shop.service('checkout')}/operations"))
    assert data == ["GET /cart", "GET /inventory", "POST /pay", "render"]
    assert _data(_get(shop, f"/services/{shop.service('payments')}/operations")) == [
        "POST /pay",
        "SELECT cards",
    ]
    assert _data(_get(shop, "/services/no-such-service/operations")) == []


def test_operations_carry_jaeger_span_kinds_and_filter_by_kind(shop: Shop) -> None:
    checkout = shop.service("checkout")
    assert _data(_get(shop, "/operations", service=checkout)) == [
        {"name": "GET /cart", "spanKind": "server"},
        {"name": "GET /inventory", "spanKind": "client"},
        {"name": "POST /pay", "spanKind": "client"},
        {"name": "render", "spanKind": "internal"},
    ]
    assert _data(_get(shop, "/operations", service=checkout, spanKind="client")) == [
        {"name": "GET /inventory", "spanKind": "client"},
        {"name": "POST /pay", "spanKind": "client"},
    ]
    assert _data(_get(shop, "/operations", service=shop.service("worker"))) == [
        {"name": "consume orders", "spanKind": "consumer"},
        {"name": "process", "spanKind": "internal"},
    ]
    _bad_request(_get(shop, "/operations", service=checkout, spanKind="sideways"), "spanKind")
    _bad_request(_get(shop, "/operations"), "service")


def test_an_unspecified_span_kind_is_an_empty_string(shop: Shop) -> None:
    service = f"legacy-{os.urandom(6).hex()}"
    start = time.time_ns() - 5 * 10**9
    request = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": os.urandom(16).hex(),
                                "spanId": os.urandom(8).hex(),
                                "name": "old job",
                                "kind": 0,
                                "startTimeUnixNano": str(start),
                                "endTimeUnixNano": str(start + MS),
                            }
                        ]
                    }
                ],
            }
        ]
    }
    response = httpx.post(
        f"http://127.0.0.1:{shop.app.ports.http}/v1/traces",
        content=json.dumps(request),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert shop.app.pipeline is not None and shop.app.pipeline.wait_stored(30)
    assert _data(_get(shop, "/operations", service=service)) == [
        {"name": "old job", "spanKind": ""}
    ]


# -- trace by id -------------------------------------------------------------------------------


def _expected_trace_a(shop: Shop) -> dict[str, Any]:
    a, b = shop.trace_ids["A"], shop.trace_ids["B"]

    def span(span_id: str, name: str, start_ms: int, duration_ms: int, **rest: Any) -> Any:
        parent = rest.pop("parent", None)
        references = [{"refType": "CHILD_OF", "traceID": a, "spanID": parent}] if parent else []
        return {
            "traceID": a,
            "spanID": span_id,
            "operationName": name,
            "references": references + rest.pop("links", []),
            "startTime": _us(shop, start_ms),
            "duration": duration_ms * 1000,
            "tags": rest.pop("tags"),
            "logs": rest.pop("logs", []),
            "processID": rest.pop("process"),
            "warnings": None,
            "flags": 0,
        }

    shop_scope = [_tag("otel.scope.name", "shop"), _tag("otel.scope.version", "1.0.0")]
    pay_scope = [_tag("otel.scope.name", "pay"), _tag("otel.scope.version", "2.1.0")]
    return {
        "traceID": a,
        "spans": [
            span(
                "a000000000000001",
                "GET /cart",
                0,
                120,
                process="p1",
                tags=[
                    _tag("http.request.method", "GET"),
                    _tag("tenant", shop.service("acme")),
                    _tag("span.kind", "server"),
                    *shop_scope,
                ],
            ),
            span(
                "a000000000000002",
                "POST /pay",
                10,
                60,
                parent="a000000000000001",
                links=[{"refType": "FOLLOWS_FROM", "traceID": b, "spanID": "b000000000000001"}],
                process="p1",
                tags=[
                    _tag("http.response.status_code", "502"),
                    _tag("span.kind", "client"),
                    _tag("otel.status_code", "ERROR"),
                    _tag("otel.status_description", "payment failed"),
                    _tag("error", True, "bool"),
                    *shop_scope,
                ],
            ),
            span(
                "a000000000000003",
                "POST /pay",
                15,
                50,
                parent="a000000000000002",
                process="p2",
                tags=[
                    _tag("tenant", shop.service("acme")),
                    _tag("span.kind", "server"),
                    _tag("otel.status_code", "ERROR"),
                    _tag("otel.status_description", "card declined"),
                    _tag("error", True, "bool"),
                    *pay_scope,
                ],
                logs=[
                    {
                        "timestamp": _us(shop, 40),
                        "fields": [
                            _tag("event", "exception"),
                            _tag("exception.message", "card declined"),
                            _tag("exception.type", "CardDeclined"),
                        ],
                    }
                ],
            ),
            span(
                "a000000000000004",
                "SELECT cards",
                20,
                30,
                parent="a000000000000003",
                process="p2",
                tags=[
                    _tag("db.system.name", "postgresql"),
                    _tag("span.kind", "client"),
                    _tag("otel.status_code", "OK"),
                    *pay_scope,
                ],
            ),
            span(
                "a000000000000005",
                "render",
                80,
                30,
                parent="a000000000000001",
                process="p1",
                tags=[_tag("span.kind", "internal"), *shop_scope],
            ),
        ],
        "processes": {
            "p1": {
                "serviceName": shop.service("checkout"),
                "tags": [_tag("deployment.environment.name", "test")],
            },
            "p2": {
                "serviceName": shop.service("payments"),
                "tags": [_tag("deployment.environment.name", "test")],
            },
        },
        "warnings": None,
    }


def test_trace_by_id_has_jaeger_spans_references_tags_logs_and_processes(shop: Shop) -> None:
    assert _data(_get(shop, f"/traces/{shop.trace_ids['A']}")) == [_expected_trace_a(shop)]


def test_trace_by_id_accepts_upper_case(shop: Shop) -> None:
    data = _data(_get(shop, f"/traces/{shop.trace_ids['B'].upper()}"))
    assert [trace["traceID"] for trace in data] == [shop.trace_ids["B"]]
    spans = data[0]["spans"]
    # Clock skew: the inventory server span starts first, still a child of the client span.
    assert [span["spanID"] for span in spans] == [
        "b000000000000003",
        "b000000000000001",
        "b000000000000002",
    ]
    assert spans[0]["references"] == [
        {"refType": "CHILD_OF", "traceID": shop.trace_ids["B"], "spanID": "b000000000000002"}
    ]
    assert {p["serviceName"] for p in data[0]["processes"].values()} == {
        shop.service("inventory"),
        shop.service("checkout"),
    }
    assert spans[1]["tags"][-3] == _tag("otel.status_code", "OK")


def test_unknown_trace_is_a_404_in_jaeger_envelope(shop: Shop) -> None:
    response = _get(shop, f"/traces/{os.urandom(16).hex()}")
    assert response.status_code == 404
    assert response.json() == {
        "data": None,
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": [{"code": 404, "msg": "trace not found"}],
    }
    _bad_request(_get(shop, "/traces/not-a-trace-id"), "traceID")


# -- search ------------------------------------------------------------------------------------


def _search(shop: Shop, **params: Any) -> list[str]:
    params.setdefault("start", str(_us(shop, -1000)))
    params.setdefault("end", str(_us(shop, 1000)))
    return _ids(shop, _data(_get(shop, "/traces", **params)))


def test_search_returns_whole_traces_newest_first(shop: Shop) -> None:
    checkout = shop.service("checkout")
    data = _data(_get(shop, "/traces", service=checkout, **_window(shop, -1000, 1000)))
    assert _ids(shop, data) == ["B", "A"]
    assert data[1] == _expected_trace_a(shop)
    assert _search(shop, service=shop.service("payments")) == ["A"]
    assert _search(shop, service=shop.service("worker")) == ["C"]
    assert _search(shop, service=checkout, limit="1") == ["B"]


def test_search_narrows_by_operation(shop: Shop) -> None:
    checkout = shop.service("checkout")
    assert _search(shop, service=checkout, operation="GET /cart") == ["B", "A"]
    assert _search(shop, service=checkout, operation="render") == ["A"]
    assert _search(shop, service=checkout, operation="GET /inventory") == ["B"]
    assert _search(shop, service=checkout, operation="SELECT cards") == []


def test_search_narrows_by_tags_in_json_and_logfmt(shop: Shop) -> None:
    checkout = shop.service("checkout")
    globex = json.dumps({"tenant": shop.service("globex")})
    assert _search(shop, service=checkout, tags=globex) == ["B"]
    assert _search(shop, service=checkout, tags=f"tenant={shop.service('acme')}") == ["A"]
    assert _search(shop, service=checkout, tags='{"http.response.status_code":"502"}') == ["A"]
    assert _search(shop, service=checkout, tags='{"error":"true"}') == ["A"]
    assert _search(shop, service=checkout, tags="error=true") == ["A"]
    assert _search(shop, service=shop.service("inventory"), tags="error=true") == []
    # All tags hold on one span: the error span with the acme tenant is the payments server.
    assert _search(shop, tags=f'error=true tenant="{shop.service("acme")}"') == ["A"]
    assert _search(shop, service=checkout, tags=f"error=true tenant={shop.service('acme')}") == []
    assert _search(shop, service=checkout, tags="span.kind=internal") == ["A"]


def test_search_narrows_by_duration(shop: Shop) -> None:
    checkout = shop.service("checkout")
    assert _search(shop, service=checkout, minDuration="100ms") == ["A"]
    assert _search(shop, service=checkout, minDuration="0.1s", maxDuration="119ms") == []
    assert _search(shop, service=checkout, maxDuration="10ms") == ["B"]
    assert _search(shop, service=checkout, maxDuration="5000us") == ["B"]
    assert _search(shop, service=checkout, maxDuration="4999us") == []
    assert _search(shop, service=checkout, minDuration="1.2s") == []


def test_search_narrows_by_time_range_in_microseconds(shop: Shop) -> None:
    checkout = shop.service("checkout")
    assert _search(shop, service=checkout, **_window(shop, 150, 250)) == ["B"]
    assert _search(shop, service=checkout, **_window(shop, 0, 150)) == ["A"]
    # The end is inclusive, to the microsecond.
    assert _search(shop, service=checkout, **_window(shop, 81, 200)) == ["B"]
    assert _search(shop, service=checkout, **_window(shop, 81, 199.999)) == []
    assert _search(shop, service=checkout, **_window(shop, 2000, 3000)) == []


def test_search_without_start_looks_back(shop: Shop) -> None:
    checkout = shop.service("checkout")
    end = str(_us(shop, 1000))
    data = _data(_get(shop, "/traces", service=checkout, end=end, lookback="2s"))
    assert _ids(shop, data) == ["B", "A"]
    data = _data(_get(shop, "/traces", service=checkout, end=end, lookback="850ms"))
    assert _ids(shop, data) == ["B"]
    data = _data(_get(shop, "/traces", service=checkout, lookback="2d"))
    assert _ids(shop, data) == ["B", "A"]


def test_search_rejects_bad_parameters_with_400(shop: Shop) -> None:
    checkout = shop.service("checkout")
    _bad_request(_get(shop, "/traces", service=checkout, minDuration="abc"), "minDuration")
    _bad_request(_get(shop, "/traces", service=checkout, maxDuration="10"), "maxDuration")
    _bad_request(_get(shop, "/traces", service=checkout, tags="{bad"), "tags")
    _bad_request(_get(shop, "/traces", service=checkout, tags='{"a":1}'), "tags")
    _bad_request(_get(shop, "/traces", service=checkout, tags="novalue"), "tags")
    _bad_request(_get(shop, "/traces", service=checkout, start="yesterday"), "start")
    _bad_request(_get(shop, "/traces", service=checkout, end="1.5"), "end")
    _bad_request(_get(shop, "/traces", service=checkout, limit="many"), "limit")
    _bad_request(_get(shop, "/traces", service=checkout, lookback="forever"), "lookback")
    _bad_request(
        _get(shop, "/traces", service=checkout, start=str(_us(shop, 10)), end=str(_us(shop, 0))),
        "start",
    )
    _bad_request(
        _get(shop, "/traces", service=checkout, minDuration="2s", maxDuration="1s"),
        "maxDuration",
    )


# -- dependencies ------------------------------------------------------------------------------


def test_dependencies_count_client_server_calls_across_services(shop: Shop) -> None:
    end_ms = time.time_ns() // MS
    data = _data(_get(shop, "/dependencies", endTs=str(end_ms), lookback="3600000"))
    ours = [link for link in data if link["parent"].endswith(shop.run)]
    assert ours == [
        {"parent": shop.service("checkout"), "child": shop.service("inventory"), "callCount": 1},
        {"parent": shop.service("checkout"), "child": shop.service("payments"), "callCount": 1},
    ]
    # A window before the shop's spans holds none of its calls.
    before = str(shop.base_ns // MS - 1)
    data = _data(_get(shop, "/dependencies", endTs=before, lookback="60000"))
    assert not [link for link in data if link["parent"].endswith(shop.run)]
    # The default window (the last 24 hours) holds them.
    data = _data(_get(shop, "/dependencies"))
    assert [link for link in data if link["parent"].endswith(shop.run)] == ours
    _bad_request(_get(shop, "/dependencies", endTs="soon"), "endTs")
    _bad_request(_get(shop, "/dependencies", lookback="-5"), "lookback")


# -- parsing and wiring ------------------------------------------------------------------------


def test_go_durations_tags_and_trace_ids_parse_as_jaeger_does() -> None:
    assert parse_duration_ns("d", "1.2s") == 1_200_000_000
    assert parse_duration_ns("d", "1h30m") == 5400 * 10**9
    assert parse_duration_ns("d", "5us") == parse_duration_ns("d", "5µs") == 5000
    assert parse_duration_ns("d", "0") == 0
    assert parse_duration_ns("d", "2d", days=True) == 2 * 86400 * 10**9
    for bad in ("2d", "1.2", "s", "1s2", "-1s", ""):
        with pytest.raises(JaegerError):
            parse_duration_ns("d", bad)
    assert parse_tags('a=1 b="two words" c=') == {"a": "1", "b": "two words", "c": ""}
    assert parse_tags('{"x.y": "z"}') == {"x.y": "z"}
    assert normalise_trace_id("ABC") == "0" * 29 + "abc"
    with pytest.raises(JaegerError):
        normalise_trace_id("0" * 33)


def test_the_jaeger_api_is_served_by_the_query_role_only(make_server: ServerFactory) -> None:
    query_only = make_server(roles=["query"])
    ingest_only = make_server(roles=["ingest"])
    spec = httpx.get(f"http://127.0.0.1:{query_only.ports.api}/openapi.json").text
    assert "/jaeger/api/traces" in spec
    response = httpx.get(f"http://127.0.0.1:{ingest_only.ports.api}/jaeger/api/services")
    assert response.status_code == 404
