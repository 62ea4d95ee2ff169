"""Alert rules on insight events (kind ``insight``, docs/alerting.md#insight-rules).

End to end on the real engine: the simulator injects a slow database statement four hops
behind ``frontend``, the insights job detects the rise, the worker (controlled clock)
evaluates the documented example rule, and a real HTTP receiver on loopback gets the signed
Alertmanager webhook naming the service, whose diagnosis ranks the true cause first; with
the fault gone the alert resolves. An insight stored without a diagnosis is diagnosed for the
alert, and a diagnosis over its time bound still lets the alert out, saying why. Validation:
the rules file and ``/api/v1/alert-rules`` (422 naming the field).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from tests.alerting.receiver import Received, Receiver
from tests.conftest import ServerFactory
from tracehouse import storage
from tracehouse.alerting import queries
from tracehouse.alerting.diagnoses import InsightDiagnoses
from tracehouse.alerting.rules import INSIGHT_WINDOW_S, Rule, RuleError, parse_rules_file
from tracehouse.alerting.worker import AlertWorker
from tracehouse.diagnosis import simulate
from tracehouse.diagnosis.insights import Insight, InsightDetector, InsightSettings
from tracehouse.storage.schema import SchemaOptions

DOCS = Path(__file__).parents[2] / "docs" / "alerting.md"
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
EXTERNAL_URL = "http://tracehouse.test:8080"
# Judges the 5 minutes of the fault against the 5 minutes before (the simulator's windows).
DETECT = InsightSettings(window_min=5, baseline_min=5, lag_s=0)


def documented_example() -> dict[str, Any]:
    """The YAML block of the section "Insight rules" in docs/alerting.md."""
    section = DOCS.read_text().split("### Insight rules", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None, "docs/alerting.md: no YAML example under Insight rules"
    data = yaml.safe_load(match.group(1))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def client(engine_url: str) -> Iterator[Any]:
    c = storage.connect(engine_url)
    storage.Migrator(c, SchemaOptions()).migrate()
    yield c
    c.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET).start()
    yield r
    r.stop()


def slow_statement_scenario(client: Any, hours_back: int) -> simulate.Scenario:
    """risk-score's ``SELECT … FROM risk`` 150 ms slower; frontend reaches it through checkout,
    payment and fraud. Written hours back (a minute of its own), away from other tests."""
    (template,) = simulate.scenarios(1, seed=1807, traces=100)
    start = int(time.time()) // 60 * 60 - hours_back * 3600 - random.randrange(60) * 60
    scenario = replace(
        template, fault=simulate.Fault("sql", "risk-score", "risk", 150.0), window_start_s=start
    )
    simulate.write(client, scenario)
    simulate.build_edges(client, scenario)
    return scenario


def window_end(scenario: simulate.Scenario) -> dt.datetime:
    return dt.datetime.fromtimestamp(scenario.window_start_s + scenario.window_s, dt.UTC)


def rules_file(
    tmp_path: Path,
    receiver: Receiver,
    service: str,
    *overrides: dict[str, Any],
    body_template: str | None = None,
) -> Path:
    """The documented example, pointed at ``service`` and the loopback receiver, once per
    override (each a rule with its own name)."""
    spec = documented_example()
    (hook,) = spec["receivers"]
    if body_template is not None:
        hook["body_template"] = body_template
    hook.update(
        name=f"hook-{service}",
        url=receiver.url,
        secret=SECRET,
        group_by=["alertname", "service"],
        group_wait="0s",
        group_interval="1s",
    )
    (example,) = spec["rules"]
    example["filters"]["service"] = service
    example["receivers"] = [hook["name"]]
    spec["rules"] = [
        {**example, "name": f"{example['name']}-{service}-{i}", **o}
        for i, o in enumerate(overrides or ({},))
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def worker_at(
    client: Any, path: Path, start: dt.datetime
) -> tuple[AlertWorker, Callable[..., None]]:
    clock = {"now": start}
    worker = AlertWorker(client, path, EXTERNAL_URL, clock=lambda: clock["now"])

    def at(moment: dt.datetime) -> None:
        clock["now"] = moment
        worker.evaluate_once(moment)
        worker.deliver_once(moment)

    return worker, at


def only_alert(received: Received) -> dict[str, Any]:
    assert received.signature_ok
    body = received.json()
    assert body["version"] == "4"
    (alert,) = body["alerts"]
    assert isinstance(alert, dict)
    return alert


def test_the_documented_example_parses_with_the_kinds_defaults() -> None:
    book = parse_rules_file(yaml.safe_dump(documented_example()))
    (rule,) = book.rules
    assert rule.kind == "insight"
    assert rule.filters == {"service": "frontend", "insight_kind": "latency", "min_ratio": "1.5"}
    assert (rule.window, rule.diagnosis_timeout, rule.group_by) == (1200.0, 30.0, ["service"])
    assert (rule.condition.op, rule.condition.threshold) == (">", 0)
    bare = Rule.model_validate({"name": "any-insight", "kind": "insight"})
    assert bare.group_by == ["service"] and bare.window == INSIGHT_WINDOW_S
    assert Rule.model_validate(bare.spec()) == bare  # stored and read back unchanged


def test_a_slow_statement_behind_four_hops_fires_with_the_cause_first_then_resolves(
    client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    scenario = slow_statement_scenario(client, hours_back=7)
    frontend = scenario.name("frontend")
    detected_at = window_end(scenario)
    raised = [
        i for i in InsightDetector(client, DETECT).run_once(detected_at) if i.service == frontend
    ]
    assert {(i.kind, i.operation) for i in raised} >= {("latency", None)}

    # The rule's values: one per matching insight and label set.
    def counts(filters: dict[str, str], group_by: list[str]) -> dict[Any, float]:
        rule = Rule.model_validate(
            {
                "name": "count",
                "kind": "insight",
                "filters": {"service": frontend, **filters},
                "group_by": group_by,
            }
        )
        result = queries.run(client, rule, detected_at + dt.timedelta(seconds=5))
        assert result.error is None
        return {tuple(sorted(s.labels.items())): s.value for s in result.samples}

    whole = [i for i in raised if i.operation is None]
    assert counts({"operation": ""}, ["service"]) == {(("service", frontend),): len(whole)}
    assert counts({}, ["service", "operation", "insight_kind"]) == {
        tuple(
            sorted(
                {"service": frontend, "insight_kind": i.kind}.items()
                | ({("operation", i.operation)} if i.operation else set())
            )
        ): 1.0
        for i in raised
    }
    assert counts({"min_ratio": "1000"}, []) == {}

    path = rules_file(tmp_path, receiver, frontend)
    worker, at = worker_at(client, path, detected_at)
    try:
        at(detected_at + dt.timedelta(seconds=5))
        alert = only_alert(receiver.wait_for(1, 30)[0])
        assert alert["status"] == "firing"
        assert alert["labels"]["service"] == frontend
        assert alert["labels"]["severity"] == "critical"
        assert alert["value"] >= 1
        notes = alert["annotations"]
        assert notes["summary"].startswith(f"{frontend}: ")
        assert notes["insight"].startswith(f"latency (average) of {frontend}: ")
        # The true cause first: the statement, not the four services waiting for it.
        top = alert["diagnosis"]["causes"][0]
        assert simulate.is_cause(scenario, top), alert["diagnosis"]
        assert notes["diagnosis"].startswith(f"1. sql {scenario.name('risk-score')}: sql ")
        assert "FROM risk" in notes["diagnosis"].split("; 2.")[0]
        assert "% of the latency change" in notes["diagnosis"]
        assert len(alert["diagnosis"]["causes"]) == 3
        assert alert["exemplarTraceIds"] == top["exemplar_trace_ids"] != []
        assert "__diagnosis" not in notes  # served as the structured field only
        link = urlsplit(notes["diagnosis_url"])
        assert f"{link.scheme}://{link.netloc}{link.path}" == f"{EXTERNAL_URL}/api/v1/diagnose"
        query = {k: v[0] for k, v in parse_qs(link.query).items()}
        start = dt.datetime.fromtimestamp(scenario.window_start_s, dt.UTC)
        assert query == {
            "service": frontend,
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": detected_at.isoformat().replace("+00:00", "Z"),
            "baseline": "previous",
        }
        # The insight's stored diagnosis was used: nothing computed for the alert.
        assert worker.diagnoses.pending() == 0

        # A restart: the alert comes back from ClickHouse with its diagnosis, still firing
        # over the next evaluations, and is neither notified again nor diagnosed again.
        worker.stop()
        worker, at = worker_at(client, path, detected_at)
        for seconds in (20, 35, 600):
            at(detected_at + dt.timedelta(seconds=seconds))
        assert len(receiver.received) == 1
        (stored,) = [i for i in worker.store.instances() if i.labels.get("service") == frontend]
        assert stored.state == "firing"
        assert stored.annotations["diagnosis"] == notes["diagnosis"]
        assert worker.diagnoses.pending() == 0

        # The fault is gone: ten healthy minutes after it, in which the job finds nothing.
        healthy = replace(
            scenario,
            fault=simulate.Fault("sql", "risk-score", "risk", 0.0),
            seed=scenario.seed + 1,
            window_start_s=scenario.window_start_s + 2 * scenario.window_s,
        )
        simulate.write(client, healthy)
        later = window_end(healthy)
        assert not [
            i
            for i in InsightDetector(client, DETECT).run_once(later)
            if scenario.suffix in i.service
        ]
        # Once the insight has left the 20-minute window, the alert resolves.
        at(detected_at + dt.timedelta(minutes=20, seconds=10))
        resolved = only_alert(receiver.wait_for(2, 30)[1])
        assert resolved["status"] == "resolved"
        assert resolved["fingerprint"] == alert["fingerprint"]
        assert resolved["annotations"]["diagnosis"] == notes["diagnosis"]
        at(detected_at + dt.timedelta(minutes=21))
        assert len(receiver.received) == 2
    finally:
        worker.stop()


def test_an_insight_without_a_diagnosis_is_diagnosed_for_the_alert_within_its_bound(
    client: Any, receiver: Receiver, tmp_path: Path
) -> None:
    scenario = slow_statement_scenario(client, hours_back=9)
    frontend = scenario.name("frontend")
    detected_at = window_end(scenario)
    # A storm of insights: the job diagnoses none of them (its bound per run).
    raised = [
        i
        for i in InsightDetector(client, replace(DETECT, max_diagnoses=0)).run_once(detected_at)
        if i.service == frontend
    ]
    assert raised and all(i.diagnosis is None for i in raised)

    # A templated body: the structured diagnosis is in the template's context.
    template = (
        '{"version": "4", "alerts": {{ alerts }}, "top": "{{ alerts.0.diagnosis.causes.0.label }}"}'
    )
    path = rules_file(
        tmp_path,
        receiver,
        frontend,
        {"diagnosis_timeout": "2m"},
        {"diagnosis_timeout": "1ms"},
        body_template=template,
    )
    worker, at = worker_at(client, path, detected_at)
    try:
        moment = detected_at + dt.timedelta(seconds=5)
        at(moment)
        # The diagnoses run off the evaluation thread: evaluate on until both alerts are out
        # (the patient one once its diagnosis is done, the hurried one once its bound passed).
        deadline = time.monotonic() + 150
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            moment += dt.timedelta(seconds=1)
            at(moment)
        received = receiver.wait_for(2, 10)
        alerts = {a["labels"]["alertname"][-1]: a for a in map(only_alert, received)}
        patient, hurried = alerts["0"], alerts["1"]
        tops = {r.json()["alerts"][0]["labels"]["alertname"][-1]: r.json()["top"] for r in received}
        assert tops == {"0": patient["diagnosis"]["causes"][0]["label"], "1": ""}
        assert patient["status"] == hurried["status"] == "firing"
        assert patient["labels"]["service"] == hurried["labels"]["service"] == frontend

        assert patient["diagnosis"]["status"] == "ok"
        assert simulate.is_cause(scenario, patient["diagnosis"]["causes"][0])
        assert patient["annotations"]["diagnosis"].startswith("1. sql ")

        assert hurried["diagnosis"]["status"] == "unavailable"
        assert hurried["diagnosis"]["causes"] == []
        why = "unavailable: not finished within 0.001 s"
        assert hurried["annotations"]["diagnosis"] == why
        assert hurried["annotations"]["diagnosis_url"].startswith(EXTERNAL_URL)

        # Computed once per firing: later evaluations start nothing and send nothing.
        for _ in range(3):
            moment += dt.timedelta(seconds=15)
            at(moment)
        assert worker.diagnoses.pending() == 0
        assert len(receiver.received) == 2
    finally:
        worker.stop()


def test_a_failed_diagnosis_or_lookup_lets_the_alert_out_saying_why() -> None:
    start = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
    figures = dict.fromkeys(
        ("avg_ms", "baseline_avg_ms", "p95_ms", "baseline_p95_ms", "error_rate"), 0.0
    )
    insight = Insight(
        id="i-1",
        detected_at=start + dt.timedelta(minutes=5),
        window_start=start,
        window_end=start + dt.timedelta(minutes=5),
        baseline_start=start - dt.timedelta(minutes=30),
        baseline_end=start,
        kind="error_rate",
        service="geo",
        operation="GET /geo",
        value=0.25,
        baseline_value=0.01,
        baseline_error_rate=0.01,
        calls=100,
        baseline_calls=100,
        diagnosis=None,
        diagnosis_error="not diagnosed: over 20 diagnoses in this run",
        **figures,
    )
    # No database behind this one: every diagnosis it starts fails.
    diagnoses = InsightDiagnoses(None, EXTERNAL_URL)

    def unreadable() -> Insight | None:
        raise ConnectionError("ClickHouse is down")

    try:
        key = ("rule", "fingerprint", "episode")
        found = diagnoses.annotations_for(key, 60, lambda: insight)
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            time.sleep(0.05)
            found = diagnoses.annotations_for(key, 60, unreadable)  # looked up once only
        assert found is not None
        assert found["diagnosis"] == (
            "unavailable: failed: AttributeError: 'NoneType' object has no attribute 'query'"
        )
        assert found["insight"] == "error rate of geo (GET /geo): 25.0%, was 1.0% (25.0x)"
        assert "operation=GET+%2Fgeo" in found["diagnosis_url"]

        lost = diagnoses.annotations_for(("rule", "other", "episode"), 60, unreadable)
        assert lost is not None and lost["diagnosis"] == (
            "unavailable: the insight could not be read: ConnectionError: ClickHouse is down"
        )
        assert "diagnosis_url" not in lost
        gone = diagnoses.annotations_for(("rule", "third", "episode"), 60, lambda: None)
        assert gone is not None
        assert gone["diagnosis"] == "unavailable: no matching insight in the rule's window"
        assert diagnoses.pending() == 0
    finally:
        diagnoses.close()


INVALID = [
    pytest.param({"scope": "edge"}, "", "scope: kind 'insight'", id="scope"),
    pytest.param({"quantile": 0.5}, "", "quantile: kind 'insight'", id="quantile"),
    pytest.param({"min_calls": 10}, "", "min_calls: kind 'insight'", id="min-calls"),
    pytest.param({"no_data": "alert"}, "", "no_data: kind 'insight'", id="no-data"),
    pytest.param(
        {"filters": {"insight_kind": "cpu"}}, "", "insight_kind 'cpu'", id="unknown-insight-kind"
    ),
    pytest.param({"filters": {"min_ratio": "lots"}}, "", "min_ratio 'lots'", id="ratio-text"),
    pytest.param({"filters": {"min_ratio": 0}}, "", "min_ratio '0'", id="ratio-zero"),
    pytest.param({"filters": {"db_system": "mysql"}}, "", "filters: 'db_system'", id="filter"),
    pytest.param({"group_by": ["host"]}, "", "group_by: 'host'", id="group-label"),
    pytest.param(
        {"annotations": {"diagnosis": "see runbook"}}, "", "'diagnosis' is set", id="own-diagnosis"
    ),
    pytest.param({"annotations": {"__x": "y"}}, "", "'__x' is set", id="reserved-annotation"),
    pytest.param({"diagnosis_timeout": "0s"}, "diagnosis_timeout", "", id="timeout-zero"),
    pytest.param({"diagnosis_timeout": "1h"}, "diagnosis_timeout", "", id="timeout-long"),
    pytest.param({"diagnosis_timeout": "soon"}, "diagnosis_timeout", "", id="timeout-text"),
]


@pytest.mark.parametrize(("change", "field", "words"), INVALID)
def test_invalid_insight_rules_name_the_field(
    change: dict[str, Any], field: str, words: str
) -> None:
    spec = documented_example()
    spec["rules"][0].update(change)
    with pytest.raises(RuleError) as caught:
        parse_rules_file(yaml.safe_dump(spec))
    assert caught.value.field == f"rules[0]{'.' + field if field else ''}", str(caught.value)
    assert words in str(caught.value)


def test_diagnosis_timeout_is_only_for_insight_rules() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules_file(
            yaml.safe_dump(
                {
                    "rules": [
                        {
                            "name": "p99",
                            "kind": "latency",
                            "condition": {"threshold": 500},
                            "diagnosis_timeout": "10s",
                        }
                    ]
                }
            )
        )
    assert "diagnosis_timeout is only for kind 'insight'" in str(caught.value)


@pytest.fixture(scope="module")
def api(make_module_server: ServerFactory) -> str:
    app = make_module_server(roles=["query"])
    return f"http://127.0.0.1:{app.ports.api}/api/v1/alert-rules"


def _api_rule(**fields: Any) -> dict[str, Any]:
    (rule,) = documented_example()["rules"]
    rule.pop("receivers")  # receivers are the rules file's; this server has none
    return {**rule, "name": f"insight-{uuid.uuid4().hex[:8]}", **fields}


def test_the_api_creates_and_serves_an_insight_rule(api: str) -> None:
    body = _api_rule(group_by=["service", "operation"])
    created = httpx.post(api, json=body, timeout=30)
    assert created.status_code == 201, created.text
    served = httpx.get(f"{api}/{body['name']}", timeout=30).json()
    assert served["kind"] == "insight" and served["source"] == "api"
    assert served["spec"]["group_by"] == ["service", "operation"]
    assert served["spec"]["filters"]["min_ratio"] == "1.5"
    assert served["spec"]["diagnosis_timeout"] == 30.0
    assert httpx.delete(f"{api}/{body['name']}", timeout=30).status_code == 204


@pytest.mark.parametrize(
    ("fields", "loc", "words"),
    [
        ({"scope": "operation"}, ["body"], "scope: kind 'insight'"),
        ({"filters": {"insight_kind": "cpu"}}, ["body"], "filters: insight_kind 'cpu'"),
        ({"diagnosis_timeout": "0s"}, ["body", "diagnosis_timeout"], "more than 0"),
        ({"kind": "insights"}, ["body", "kind"], "'insight'"),
    ],
    ids=["scope", "insight-kind", "timeout", "misspelt-kind"],
)
def test_invalid_insight_rules_are_422_naming_the_field(
    api: str, fields: dict[str, Any], loc: list[str], words: str
) -> None:
    response = httpx.post(api, json=_api_rule(**fields), timeout=30)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["loc"] == loc and words in d["msg"] for d in details), details
