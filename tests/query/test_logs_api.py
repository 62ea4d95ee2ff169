"""The log search API over real HTTP, on the shop's log records sent over OTLP/HTTP.

The shop's records (tests/data/query/logs.json; offsets in ms from the shop's base instant):
checkout 5 INFO "cart loaded for user 7" (trace A), 60 ERROR "payment failed: 502" (trace A),
500 WARN "Disk usage at 91%", 600 DEBUG "cache warm-up done"; payments 40 ERROR2 "Card
DECLINED for order 42" (trace A), 700 FATAL "out of memory in ÄÖÜ worker"; worker 320 INFO
"processing batch" (trace C).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.query.shop import Shop, running_shop
from tracehouse.query.logs import SEARCH_LOGS_SQL

CART = "cart loaded for user 7"
PAYMENT = "payment failed: 502"
DISK = "Disk usage at 91%"
CACHE = "cache warm-up done"
CARD = "Card DECLINED for order 42"
OOM = "out of memory in ÄÖÜ worker"
BATCH = "processing batch"


@pytest.fixture(scope="module")
def shop(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    with running_shop(engine_url, tmp_path_factory.mktemp("shop")) as shop:
        yield shop


def test_records_come_whole_and_newest_first(shop: Shop) -> None:
    response = shop.get("/logs", {"service": shop.service("payments")})
    assert response.status_code == 200, response.text
    resource = {"service.name": shop.service("payments")}
    assert response.json() == {
        "logs": [
            {
                "timeUnixNano": shop.ns(700),
                "service": shop.service("payments"),
                "severityText": "FATAL",
                "severityNumber": 21,
                "body": OOM,
                "traceId": "",
                "spanId": "",
                "attributes": {},
                "resourceAttributes": resource,
            },
            {
                "timeUnixNano": shop.ns(40),
                "service": shop.service("payments"),
                "severityText": "ERROR2",
                "severityNumber": 18,
                "body": CARD,
                "traceId": shop.trace_ids["A"],
                "spanId": "a000000000000003",
                "attributes": {"order.id": "42", "tenant": shop.service("acme")},
                "resourceAttributes": resource,
            },
        ]
    }


# (query parameters as for Shop.params, bodies expected newest first).
SEARCHES = [
    pytest.param({"service": "checkout-{run}"}, [CACHE, DISK, PAYMENT, CART], id="service"),
    pytest.param({"service": "worker-{run}"}, [BATCH], id="other-service"),
    pytest.param({"service": "checkout-{run}", "severity": "warn"}, [DISK, PAYMENT], id="warn"),
    pytest.param({"service": "checkout-{run}", "severity": "WARN"}, [DISK, PAYMENT], id="WARN"),
    pytest.param({"service": "checkout-{run}", "severity": 13}, [DISK, PAYMENT], id="13"),
    pytest.param({"service": "checkout-{run}", "severity": 14}, [PAYMENT], id="14"),
    pytest.param({"service": "checkout-{run}", "severity": "warn2"}, [PAYMENT], id="warn2"),
    pytest.param({"service": "checkout-{run}", "severity": "error"}, [PAYMENT], id="error"),
    pytest.param(
        {"service": "checkout-{run}", "severity": "info"}, [DISK, PAYMENT, CART], id="info"
    ),
    pytest.param(
        {"service": "checkout-{run}", "severity": "debug"},
        [CACHE, DISK, PAYMENT, CART],
        id="debug",
    ),
    pytest.param({"service": "payments-{run}", "severity": "error2"}, [OOM, CARD], id="error2"),
    pytest.param({"service": "payments-{run}", "severity": "error3"}, [OOM], id="error3"),
    pytest.param({"service": "payments-{run}", "severity": "fatal"}, [OOM], id="fatal"),
    pytest.param({"service": "payments-{run}", "severity": "24"}, [], id="24"),
    pytest.param({"service": "checkout-{run}", "text": "disk usage"}, [DISK], id="text"),
    pytest.param({"service": "checkout-{run}", "text": "DISK USAGE"}, [DISK], id="text-upper"),
    pytest.param({"service": "payments-{run}", "text": "äöü"}, [OOM], id="text-unicode-case"),
    pytest.param({"service": "checkout-{run}", "text": "%"}, [DISK], id="text-percent-literal"),
    pytest.param({"service": "checkout-{run}", "text": "_"}, [], id="text-underscore-literal"),
    pytest.param({"trace_id": "{trace:A}"}, [PAYMENT, CARD, CART], id="trace"),
    pytest.param({"trace_id": "{TRACE:A}"}, [PAYMENT, CARD, CART], id="trace-upper-case"),
    pytest.param({"trace_id": "{trace:C}"}, [BATCH], id="other-trace"),
    pytest.param({"attr": ["tenant=acme-{run}"]}, [CARD, CART], id="attr"),
    pytest.param({"attr": ["tenant=acme-{run}", "order.id=42"]}, [CARD], id="attrs-all-must-match"),
    pytest.param(
        {"service": "checkout-{run}", "attr": ["http.response.status_code=502"]},
        [PAYMENT],
        id="attr-int-as-text",
    ),
    pytest.param({"service": "worker-{run}", "attr": ["tenant=acme-{run}"]}, [], id="attr-none"),
    pytest.param({"service": "checkout-{run}", "limit": 2}, [CACHE, DISK], id="limit"),
    pytest.param({"service": "checkout-{run}", "start": "{ms:100}"}, [CACHE, DISK], id="start"),
    pytest.param({"service": "checkout-{run}", "end": "{ms:100}"}, [PAYMENT, CART], id="end"),
    pytest.param(
        {"service": "checkout-{run}", "start": "{ms:550}", "end": "{ms:650}"},
        [CACHE],
        id="range",
    ),
    pytest.param(
        {
            "service": "checkout-{run}",
            "severity": "error",
            "text": "PAYMENT",
            "trace_id": "{trace:A}",
            "attr": ["http.response.status_code=502"],
        },
        [PAYMENT],
        id="combined",
    ),
]


@pytest.mark.parametrize(("params", "expected"), SEARCHES)
def test_search_filters(shop: Shop, params: dict[str, Any], expected: list[str]) -> None:
    response = shop.get("/logs", shop.params(params))
    assert response.status_code == 200, response.text
    assert [record["body"] for record in response.json()["logs"]] == expected


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        pytest.param({"limit": 0}, "limit", id="limit-0"),
        pytest.param({"limit": 1001}, "limit", id="limit-1001"),
        pytest.param({"severity": 0}, "severity", id="severity-0"),
        pytest.param({"severity": 25}, "severity", id="severity-25"),
        pytest.param({"severity": "loud"}, "severity", id="severity-name"),
        pytest.param({"severity": "warn5"}, "severity", id="severity-step"),
        pytest.param({"severity": "²"}, "severity", id="severity-superscript-digit"),
        pytest.param({"severity": "٣"}, "severity", id="severity-arabic-digit"),
        pytest.param({"trace_id": "xyz"}, "trace_id", id="trace-id-short"),
        pytest.param({"trace_id": "g" * 32}, "trace_id", id="trace-id-not-hex"),
        pytest.param({"attr": "tenant"}, "attr", id="attr-without-value"),
        pytest.param({"attr": "=acme"}, "attr", id="attr-without-key"),
        pytest.param({"start": "1795428000", "end": "1795427999"}, "start", id="start-after-end"),
    ],
)
def test_search_rejects_bad_parameters(shop: Shop, params: dict[str, Any], parameter: str) -> None:
    response = shop.get("/logs", params)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", parameter]]


INJECTIONS = [
    "checkout-{run}' OR '1'='1",
    "checkout-{run}'; DROP TABLE otel_logs; --",
    "' OR 1=1 --",
    "{service:String}",
    "checkout-{run}\\",
]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("name", ["service", "text", "attr-key", "attr-value"])
def test_search_binds_values(shop: Shop, name: str, value: str) -> None:
    """Values reach ClickHouse as parameters: hostile ones answer normally and match nothing."""
    value = value.replace("{run}", shop.run)
    params = {
        "service": {"service": value},
        "text": {"service": shop.service("checkout"), "text": value},
        "attr-key": {"attr": f"{value}=acme-{shop.run}"},
        "attr-value": {"attr": f"tenant={value}"},
    }[name]
    response = shop.get("/logs", params)
    assert response.status_code == 200, response.text
    assert response.json() == {"logs": []}
    assert len(shop.get("/logs", {"service": shop.service("checkout")}).json()["logs"]) == 4


@pytest.mark.parametrize("service", [pytest.param("", id="any"), pytest.param("x", id="one")])
def test_search_reads_the_primary_key(shop: Shop, service: str) -> None:
    """TimestampTime (and the service, when given) narrow the read through the primary key."""
    plan = shop.app.client.query(
        "EXPLAIN indexes = 1 " + SEARCH_LOGS_SQL,
        parameters={
            "start_s": shop.base_ns // 10**9,
            "end_s": shop.base_ns // 10**9 + 1,
            "start_ns": shop.base_ns,
            "end_ns": shop.base_ns + 10**9,
            "service": service,
            "min_severity": 0,
            "text": "",
            "trace_id": "",
            "attr_keys": [],
            "attr_values": [],
            "limit": 100,
        },
    ).result_rows
    text = "\n".join(row[0] for row in plan)
    condition = text.split("PrimaryKey", 1)[1].split("Condition:", 1)[1].splitlines()[0]
    assert "TimestampTime in" in condition, text
    assert ("ServiceName in" in condition) == bool(service), text
