"""``GET /api/v1/diagnose`` on a real server: a simulated shop whose ``ledger`` statement got
slow (written straight into ``otel_traces``, edges built by the worker's builder), asked over
HTTP; bad parameters are 422s naming them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tracehouse.app import Tracehouse
from tracehouse.diagnosis import simulate


@pytest.fixture(scope="module")
def shop(make_module_server: ServerFactory) -> Iterator[tuple[Tracehouse, simulate.Scenario]]:
    app = make_module_server(roles=["query"])
    (template,) = simulate.scenarios(1, seed=777, traces=120)
    scenario = replace(template, fault=simulate.Fault("sql", "ledger", "ledger", 120.0))
    simulate.write(app.client, scenario)
    simulate.build_edges(app.client, scenario)
    yield app, scenario


def _get(app: Tracehouse, **params: Any) -> httpx.Response:
    url = f"http://127.0.0.1:{app.ports.api}/api/v1/diagnose"
    return httpx.get(url, params=params, timeout=60)


def _window(scenario: simulate.Scenario) -> dict[str, str]:
    return {"start": str(scenario.window_start_s), "end": str(scenario.window_start_s + 300)}


def test_the_slow_statement_is_the_first_cause(
    shop: tuple[Tracehouse, simulate.Scenario],
) -> None:
    app, scenario = shop
    response = _get(app, service=scenario.name("frontend"), **_window(scenario))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["now"]["calls"] == 120 and body["before"]["calls"] == 120
    assert body["now"]["avg_ms"] > body["before"]["avg_ms"]
    assert body["sampled_traces"] > 50 and body["baseline_sampled_traces"] > 50
    first = body["causes"][0]
    assert simulate.is_cause(scenario, first), body["causes"][:3]
    assert first["type"] == "sql" and first["db_system"] == "postgresql"
    assert first["statement"] == "INSERT INTO ledger (id, amount) VALUES (?..)"
    assert len(first["target"]) == 16  # the fingerprint, as /api/v1/sql spells it
    assert first["latency"]["delta_ms"] > 60
    assert 0.5 < first["latency"]["share"] <= 1.2
    assert first["latency"]["baseline_ms_per_trace"] < first["latency"]["ms_per_trace"]
    assert [c["rank"] for c in body["causes"]] == list(range(1, len(body["causes"]) + 1))
    # The services that merely wait for the database rank below it, if at all.
    assert all(c["score"] <= first["score"] for c in body["causes"])
    # Exemplars of both windows are real traces, holding the statement.
    for key in ("exemplar_trace_ids", "baseline_exemplar_trace_ids"):
        assert first[key]
        trace = httpx.get(
            f"http://127.0.0.1:{app.ports.api}/api/v1/traces/{first[key][0]}", timeout=30
        )
        assert trace.status_code == 200
        assert any("ledger" in s["name"] for s in trace.json()["spans"])


def test_the_fingerprint_is_the_one_the_sql_view_names(
    shop: tuple[Tracehouse, simulate.Scenario],
) -> None:
    app, scenario = shop
    cause = _get(app, service=scenario.name("frontend"), **_window(scenario)).json()["causes"][0]
    rows = app.client.query(
        "SELECT DISTINCT Fingerprint FROM otel_db_1m WHERE ServiceName = {s:String}",
        parameters={"s": scenario.name("ledger")},
    ).result_rows
    assert [f"{int(r[0]):016x}" for r in rows] == [cause["target"]]


def test_an_operation_narrows_the_diagnosis(shop: tuple[Tracehouse, simulate.Scenario]) -> None:
    app, scenario = shop
    service = scenario.name("frontend")
    everything = _get(app, service=service, **_window(scenario)).json()
    product = _get(app, service=service, operation="GET /product", **_window(scenario)).json()
    assert product["operation"] == "GET /product"
    assert 0 < product["now"]["calls"] < everything["now"]["calls"]
    # GET /product never reaches the ledger: nothing of it is blamed there.
    assert not any(simulate.is_cause(scenario, c) for c in product["causes"])


def test_a_service_without_traffic_has_no_causes(
    shop: tuple[Tracehouse, simulate.Scenario],
) -> None:
    app, scenario = shop
    body = _get(app, service="nobody-" + scenario.suffix, **_window(scenario)).json()
    assert body["causes"] == [] and body["now"]["calls"] == 0 and body["sampled_traces"] == 0


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({}, "service"),
        ({"service": " "}, "service"),
        ({"service": "x", "operation": ""}, "operation"),
        ({"service": "x", "baseline": "week"}, "baseline"),
        ({"service": "x", "start": "yesterday"}, "start"),
        ({"service": "x", "start": "1795428000", "end": "1795420000"}, "start"),
        ({"service": "x", "sample": "0"}, "sample"),
        ({"service": "x", "limit": "1000"}, "limit"),
        (
            {"service": "x", "baseline": "day", "start": "1795000000", "end": "1795428000"},
            "baseline",
        ),
    ],
    ids=[
        "missing-service",
        "blank-service",
        "blank-operation",
        "unknown-baseline",
        "bad-start",
        "start-after-end",
        "sample-zero",
        "limit-too-large",
        "day-baseline-over-a-day",
    ],
)
def test_bad_parameters_are_422_naming_them(
    shop: tuple[Tracehouse, simulate.Scenario], params: dict[str, str], parameter: str
) -> None:
    app, _ = shop
    response = _get(app, **params)
    assert response.status_code == 422, response.text
    assert parameter in {d["loc"][-1] for d in response.json()["detail"]}
