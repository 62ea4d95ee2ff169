"""The OTLP specification's own JSON examples, posted over OTLP/HTTP, land as the spec means."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import OTLP_EXAMPLES, query
from tracehouse.app import Tracehouse

JSON = {"Content-Type": "application/json"}


def _post(app: Tracehouse, path: str, example: str) -> httpx.Response:
    body = (OTLP_EXAMPLES / example).read_bytes()
    return httpx.post(f"http://127.0.0.1:{app.ports.http}{path}", content=body, headers=JSON)


def test_trace_example_lands(server: Tracehouse) -> None:
    response = _post(server, "/v1/traces", "trace.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    rows = query(
        server,
        "SELECT toUnixTimestamp64Nano(Timestamp), ParentSpanId, SpanName, SpanKind, ServiceName, "
        "ScopeName, ScopeVersion, ScopeAttributes, SpanAttributes, Duration, StatusCode "
        "FROM otel_traces WHERE TraceId = {t:String} AND SpanId = {s:String}",
        t="5b8efff798038103d269b633813fc60c",
        s="eee19b7ec3c1b174",
    )
    assert rows == [
        (
            1544712660000000000,
            "eee19b7ec3c1b173",
            "I'm a server span",
            "Server",
            "my.service",
            "my.library",
            "1.0.0",
            {"my.scope.attribute": "some scope attribute"},
            {"my.span.attr": "some value"},
            1_000_000_000,
            "Unset",
        )
    ]
    window = query(
        server,
        "SELECT Start, End FROM otel_traces_trace_id_ts WHERE TraceId = {t:String}",
        t="5b8efff798038103d269b633813fc60c",
    )
    assert len(window) >= 1


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        pytest.param(
            "logs.json",
            {
                "Body": "Example log record",
                "SeverityNumber": 10,
                "SeverityText": "Information",
                "TraceId": "5b8efff798038103d269b633813fc60c",
                "SpanId": "eee19b7ec3c1b174",
                "EventName": "",
            },
            id="log-record",
        ),
        pytest.param(
            "events.json",
            {"EventName": "browser.page_view", "SeverityNumber": 9},
            id="event",
        ),
    ],
)
def test_log_examples_land(server: Tracehouse, example: str, expected: dict[str, object]) -> None:
    response = _post(server, "/v1/logs", example)
    assert response.status_code == 200
    columns = ", ".join(expected)
    rows = query(
        server,
        f"SELECT {columns}, LogAttributes FROM otel_logs "
        "WHERE ServiceName = 'my.service' AND EventName = {e:String} "
        "AND toUnixTimestamp64Nano(Timestamp) = 1544712660300000000",
        e=str(expected.get("EventName", "")),
    )
    assert rows, "the example's record is not in otel_logs"
    assert rows[0][: len(expected)] == tuple(expected.values())


def test_log_example_attribute_types_are_encoded_losslessly(server: Tracehouse) -> None:
    assert _post(server, "/v1/logs", "logs.json").status_code == 200
    rows = query(
        server,
        "SELECT LogAttributes FROM otel_logs WHERE ServiceName = 'my.service' "
        "AND EventName = '' AND Body = 'Example log record' LIMIT 1",
    )
    attributes = rows[0][0]
    assert attributes["string.attribute"] == "some string"
    assert attributes["boolean.attribute"] == "true"
    assert attributes["int.attribute"] == "10"
    assert attributes["double.attribute"] == "637.704"
    assert attributes["array.attribute"] == '["many","values"]'
    assert attributes["map.attribute"] == '{"some.map.key":"some value"}'
    assert list(attributes) == sorted(attributes)


def test_metrics_example_is_accepted(server: Tracehouse) -> None:
    """Each of its points lands (columns checked in tests/ingest/test_metrics_ingest.py)."""
    response = _post(server, "/v1/metrics", "metrics.json")
    assert response.status_code == 200
    assert response.json() == {}  # no partial success: every point was accepted
