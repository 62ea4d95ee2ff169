"""Insight events: the detection rules (pure), the job over a simulated incident on the real
engine (stored with the diagnosis attached, served at ``GET /api/v1/insights``, not raised
twice within the cooldown), and its wiring into the worker role."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tracehouse.app import Tracehouse
from tracehouse.diagnosis import InsightSettings, InsightWorker, recent_insights, simulate
from tracehouse.diagnosis.insights import Figures, InsightDetector, detect

SETTINGS = InsightSettings(min_calls=20, factor=1.5, error_increase=0.05, min_delta_ms=20)


def figures(
    operation: str = "",
    calls: int = 100,
    errors: int = 0,
    avg_ms: float = 50,
    p95_ms: float = 80,
    base: tuple[int, int, float, float] = (100, 0, 50, 80),
    service: str = "shop",
) -> Figures:
    base_calls, base_errors, base_avg, base_p95 = base
    return Figures(
        service,
        operation,
        calls,
        errors,
        avg_ms,
        p95_ms,
        base_calls,
        base_errors,
        base_avg,
        base_p95,
    )


@pytest.mark.parametrize(
    ("row", "kinds"),
    [
        (figures(), []),
        (figures(avg_ms=80), ["latency"]),  # 1.6 x and 30 ms more
        (figures(p95_ms=130), ["latency"]),  # the tail alone
        (figures(avg_ms=2, base=(100, 0, 1, 80)), []),  # twice as slow, but 1 ms
        (figures(avg_ms=70), []),  # 1.4 x
        (figures(errors=10), ["error_rate"]),  # 0 -> 10 %
        (figures(errors=10, base=(100, 8, 50, 80)), []),  # 8 -> 10 %: not 1.5 x
        (figures(errors=4), []),  # 4 points
        (figures(calls=19, errors=19, avg_ms=500), []),  # too few calls now
        (figures(errors=50, base=(10, 0, 50, 80)), []),  # too few calls before
        (figures(errors=30, avg_ms=200), ["latency", "error_rate"]),
    ],
    ids=[
        "steady",
        "average-up",
        "p95-up",
        "tiny-rise",
        "below-factor",
        "errors-up",
        "errors-up-little",
        "errors-below-increase",
        "few-calls",
        "few-baseline-calls",
        "both",
    ],
)
def test_rules(row: Figures, kinds: list[str]) -> None:
    assert [d.kind for d in detect([row], SETTINGS)] == kinds


def test_only_the_five_busiest_endpoints_of_a_service_are_judged() -> None:
    rows = [figures(f"op{i}", calls=100 + i, avg_ms=200) for i in range(7)]
    rows.append(figures(avg_ms=200))  # the service as a whole
    found = [(d.figures.service, d.figures.operation) for d in detect(rows, SETTINGS)]
    assert found == [("shop", ""), *[("shop", f"op{i}") for i in (6, 5, 4, 3, 2)]]


# --- the job on the real engine ---------------------------------------------------------


@pytest.fixture(scope="module")
def incident(make_module_server: ServerFactory) -> Iterator[tuple[Tracehouse, simulate.Scenario]]:
    """``geo`` fails half of its calls; the windows lie hours back, away from other tests."""
    app = make_module_server(roles=["query"])
    (template,) = simulate.scenarios(1, seed=4242, traces=100)
    start = int(time.time()) // 60 * 60 - 4 * 3600 - random.randrange(60) * 60
    scenario = replace(
        template, fault=simulate.Fault("errors", "geo", size=0.5), window_start_s=start
    )
    simulate.write(app.client, scenario)
    simulate.build_edges(app.client, scenario)
    yield app, scenario


def _detector(app: Tracehouse) -> InsightDetector:
    return InsightDetector(app.client, InsightSettings(window_min=5, baseline_min=5, lag_s=0))


def _at(scenario: simulate.Scenario) -> dt.datetime:
    return dt.datetime.fromtimestamp(scenario.window_start_s + scenario.window_s, dt.UTC)


def test_the_incident_raises_insights_with_the_diagnosis_attached(
    incident: tuple[Tracehouse, simulate.Scenario],
) -> None:
    app, scenario = incident
    stored = [i for i in _detector(app).run_once(_at(scenario)) if scenario.suffix in i.service]
    by_key = {(i.kind, i.service, i.operation): i for i in stored}
    frontend = by_key[("error_rate", scenario.name("frontend"), None)]
    assert frontend.baseline_error_rate < 0.08 < 0.15 < frontend.error_rate
    assert frontend.value == pytest.approx(frontend.error_rate)
    assert frontend.calls == 100 and frontend.baseline_calls == 100
    assert frontend.window_start == dt.datetime.fromtimestamp(scenario.window_start_s, dt.UTC)
    assert frontend.diagnosis is not None and frontend.diagnosis_error is None
    assert simulate.is_cause(scenario, frontend.diagnosis.causes[0])
    # The endpoint through which the failures come, and the failing service itself.
    assert ("error_rate", scenario.name("frontend"), "POST /checkout") in by_key
    assert ("error_rate", scenario.name("geo"), None) in by_key
    # Nothing rose that did not fail: no latency insight.
    assert all(i.kind == "error_rate" for i in stored)
    # Within the cooldown, the same increase is not raised again.
    again = _detector(app).run_once(_at(scenario) + dt.timedelta(minutes=1))
    assert not [i for i in again if scenario.suffix in i.service]


def test_diagnoses_per_run_are_bounded(incident: tuple[Tracehouse, simulate.Scenario]) -> None:
    app, scenario = incident
    settings = InsightSettings(window_min=5, baseline_min=5, lag_s=0, max_diagnoses=0)
    # A minute later than the other tests' runs and past their cooldown: raised anew.
    at = _at(scenario) + dt.timedelta(minutes=1)
    detector = InsightDetector(app.client, replace(settings, cooldown_min=0))
    stored = [i for i in detector.run_once(at) if scenario.suffix in i.service]
    assert stored
    assert all(i.diagnosis is None for i in stored)
    assert all("over 0 diagnoses" in (i.diagnosis_error or "") for i in stored)


def test_insights_are_served_and_filtered(incident: tuple[Tracehouse, simulate.Scenario]) -> None:
    app, scenario = incident
    at = _at(scenario)
    _detector(app).run_once(at)  # stored once by whichever test ran first
    service = scenario.name("frontend")
    url = f"http://127.0.0.1:{app.ports.api}/api/v1/insights"
    # Up to 30 s after the run (test_diagnoses_per_run_are_bounded's runs a minute later).
    window = {"start": str(int(at.timestamp()) - 60), "end": str(int(at.timestamp()) + 30)}
    body = httpx.get(url, params={**window, "service": service}, timeout=30).json()
    items = body["insights"]
    assert {i["service"] for i in items} == {service}
    assert {(i["kind"], i["operation"]) for i in items} >= {
        ("error_rate", None),
        ("error_rate", "POST /checkout"),
    }
    assert len({i["id"] for i in items}) == len(items)  # stored once
    whole = next(i for i in items if i["operation"] is None)
    assert whole["diagnosis"]["causes"][0]["service"] == scenario.name("geo")
    assert len(whole["diagnosis"]["causes"]) <= 5
    latency = httpx.get(url, params={**window, "service": service, "kind": "latency"}).json()
    assert latency["insights"] == []
    # The query function the alerting package may call answers the same.
    found = recent_insights(
        app.client, at - dt.timedelta(minutes=1), at + dt.timedelta(seconds=30), service=service
    )
    assert {i.id for i in found} == {i["id"] for i in items}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"kind": "cpu"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"service": ""}, "service"),
        ({"start": "soon"}, "start"),
    ],
    ids=["unknown-kind", "limit-zero", "blank-service", "bad-start"],
)
def test_bad_parameters_are_422_naming_them(
    incident: tuple[Tracehouse, simulate.Scenario], params: dict[str, Any], parameter: str
) -> None:
    app, _ = incident
    response = httpx.get(f"http://127.0.0.1:{app.ports.api}/api/v1/insights", params=params)
    assert response.status_code == 422, response.text
    assert parameter in {d["loc"][-1] for d in response.json()["detail"]}


def test_the_worker_role_runs_the_insights_job(make_server: ServerFactory) -> None:
    app = make_server(
        roles=["worker"], insights_interval_s=3600, insights_window_min=3, insights_factor=3
    )
    job = app.insights
    assert isinstance(job, InsightWorker)
    assert job.detector.settings.window_min == 3 and job.detector.settings.factor == 3
    deadline = time.monotonic() + 60
    while job.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.runs == 1 and job.failures == 0, job.last_error
