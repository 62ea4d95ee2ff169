"""The alerting API and worker on a running tracehouse (real engine, real HTTP on loopback):
rule CRUD with 422s naming the field, rule health (one failing rule does not stop the
others), silences, dead letters and replay, ESS scaling calls with a ClientToken, the KEDA
metrics endpoint over real spans, and every example rule's query running on ClickHouse."""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.alerting.receiver import Receiver
from tests.conftest import DATA, ServerFactory, query
from tracehouse.alerting import queries
from tracehouse.alerting.rules import Rule, parse_rules_file
from tracehouse.app import Tracehouse
from tracehouse.storage.schema import SchemaOptions, load_migrations, render

MS = 1_000_000
RUN = uuid.uuid4().hex[:8]
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Env:
    app: Tracehouse
    hook: Receiver  # answers 400 until told otherwise
    scaler: Receiver

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.app.ports.api}/api/v1{path}"

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url(path), params=params, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def env(
    make_module_server: ServerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    hook = Receiver(SECRET, script=[400] * 1000).start()
    scaler = Receiver(SECRET).start()
    spec = {
        "receivers": [
            {
                "name": f"hook-{RUN}",
                "url": hook.url,
                "secret": SECRET,
                "group_wait": "0s",
                "backoff_initial": "0.2s",
                "backoff_max": "0.5s",
            },
            {"name": f"scaler-{RUN}", "url": scaler.url, "secret": SECRET},
        ],
        "rules": [
            {
                "name": f"always-{RUN}",
                "kind": "sql",
                "query": "SELECT 1 AS value",
                "interval": "5s",
                "condition": {"op": ">", "threshold": 0},
                "receivers": [f"hook-{RUN}"],
            },
            {
                "name": f"broken-{RUN}",
                "kind": "sql",
                "interval": "5s",
                "query": "SELECT no_such_column AS value FROM otel_traces",
                "condition": {"op": ">", "threshold": 0},
            },
            {
                "name": f"scale-{RUN}",
                "kind": "sql",
                "interval": "5s",
                "query": f"SELECT 'web-{RUN}' AS service, 97.5 AS value",
                "condition": {"op": ">", "threshold": 80},
                "actions": [
                    {
                        "receiver": f"scaler-{RUN}",
                        "target": "{{ $labels.service }}",
                        "direction": "out",
                        "step": 2,
                        "cooldown": "1h",
                        "format": "ess",
                        "scaling_rule_ari": "ari:acs:ess:cn-hangzhou:1:scalingrule/asr-1",
                    }
                ],
            },
        ],
    }
    rules = tmp_path_factory.mktemp("alert-rules") / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    app = make_module_server(alert_rules_file=rules)
    yield Env(app, hook, scaler)
    hook.stop()
    scaler.stop()


def _rule(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "kind": "error_rate",
        "filters": {"service": "x"},
        "condition": {"op": ">", "threshold": 0.5},
    }
    spec.update(overrides)
    return spec


def test_rule_crud(env: Env) -> None:
    name = f"api-rule-{RUN}"
    created = httpx.post(env.url("/alert-rules"), json=_rule(name), timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["source"] == "api"
    assert httpx.post(env.url("/alert-rules"), json=_rule(name), timeout=30).status_code == 409
    listed = {r["name"]: r for r in env.get("/alert-rules")["rules"]}
    assert listed[name]["source"] == "api" and listed[f"always-{RUN}"]["source"] == "file"

    changed = _rule(name, condition={"op": ">", "threshold": 0.9})
    response = httpx.put(env.url(f"/alert-rules/{name}"), json=changed, timeout=30)
    assert response.status_code == 200, response.text
    assert env.get(f"/alert-rules/{name}")["spec"]["condition"]["threshold"] == 0.9

    assert httpx.delete(env.url(f"/alert-rules/{name}"), timeout=30).status_code == 204
    assert httpx.get(env.url(f"/alert-rules/{name}"), timeout=30).status_code == 404
    assert httpx.delete(env.url(f"/alert-rules/{name}"), timeout=30).status_code == 404


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param(
            _rule("r", condition={"threshold": "high"}),
            ["body", "condition", "threshold"],
            id="threshold",
        ),
        pytest.param(_rule("r", interval="2s"), ["body", "interval"], id="interval-too-short"),
        pytest.param(
            _rule("r", receivers=["nobody"]), ["body", "receivers", "0"], id="unknown-receiver"
        ),
        pytest.param(_rule("bad name!"), ["body", "name"], id="name"),
        pytest.param({"name": "r", "kind": "latency"}, ["body", "condition"], id="missing"),
    ],
)
def test_invalid_rules_are_422_naming_the_field(
    env: Env, body: dict[str, Any], loc: list[str]
) -> None:
    response = httpx.post(env.url("/alert-rules"), json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert [str(p) for p in response.json()["detail"][0]["loc"]] == loc


def test_file_rules_cannot_be_changed_through_the_api(env: Env) -> None:
    name = f"always-{RUN}"
    body = _rule(name)
    assert httpx.put(env.url(f"/alert-rules/{name}"), json=body, timeout=30).status_code == 409
    assert httpx.delete(env.url(f"/alert-rules/{name}"), timeout=30).status_code == 409
    mismatch = httpx.put(env.url("/alert-rules/other"), json=body, timeout=30)
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"][0]["loc"] == ["body", "name"]


def test_a_failing_rule_is_reported_and_the_others_go_on(env: Env) -> None:
    def healths() -> dict[str, Any] | None:
        rules = {r["name"]: r for r in env.get("/alert-rules")["rules"]}
        got = {n: rules[n] for n in (f"broken-{RUN}", f"always-{RUN}")}
        return got if all(r["health"] != "unknown" for r in got.values()) else None

    got = wait_until("both rules evaluated", healths)
    assert got[f"broken-{RUN}"]["health"] == "err"
    assert "no_such_column" in got[f"broken-{RUN}"]["last_error"]
    assert got[f"always-{RUN}"]["health"] == "ok"
    assert got[f"always-{RUN}"]["last_error"] == ""


def test_dead_letter_is_listed_and_replayed_with_the_same_id(env: Env) -> None:
    def dead() -> list[dict[str, Any]]:
        return [
            d
            for d in env.get("/alert-deliveries", status="dead")["deliveries"]
            if d["receiver"] == f"hook-{RUN}"
        ]

    (letter,) = wait_until("a dead letter", dead)
    assert letter["last_status_code"] == 400 and letter["attempts"] == 1  # 400 is final
    detail = env.get(f"/alert-deliveries/{letter['id']}")
    assert detail["url"] == env.hook.url and '"version":"4"' in detail["body"]
    not_dead = httpx.post(env.url("/alert-deliveries/nope/replay"), timeout=30)
    assert not_dead.status_code == 404

    with env.hook.lock:
        env.hook.script.clear()  # the receiver is fixed: 200 from now on
    replayed = httpx.post(env.url(f"/alert-deliveries/{letter['id']}/replay"), timeout=30)
    assert replayed.status_code == 202, replayed.text

    def delivered() -> dict[str, Any] | None:
        d = env.get(f"/alert-deliveries/{letter['id']}")
        return d if d["status"] == "delivered" else None

    wait_until("the replay delivered", delivered)
    ok = [r for r in env.hook.received if r.status == 200]
    assert [r.id for r in ok] == [letter["id"]]
    assert all(r.signature_ok for r in env.hook.received)
    again = httpx.post(env.url(f"/alert-deliveries/{letter['id']}/replay"), timeout=30)
    assert again.status_code == 409  # only dead letters are replayed


def test_ess_scaling_call_carries_a_client_token(env: Env) -> None:
    (call,) = env.scaler.wait_for(1, timeout_s=60)
    body = call.json()
    assert body["Action"] == "ExecuteScalingRule"
    assert body["ScalingRuleAri"] == "ari:acs:ess:cn-hangzhou:1:scalingrule/asr-1"
    assert body["ClientToken"].startswith("th-") and len(body["ClientToken"]) <= 64
    assert (body["MetricValue"], body["BreachThreshold"]) == (97.5, 80.0)
    assert call.signature_ok
    (delivery,) = [
        d for d in env.get("/alert-deliveries")["deliveries"] if d["receiver"] == f"scaler-{RUN}"
    ]
    assert (delivery["kind"], delivery["target"], delivery["status"]) == (
        "scaling",
        f"web-{RUN}",
        "delivered",
    )
    # The alert keeps firing, but the target is in its cooldown (1 h): no second call.
    time.sleep(11)
    assert len(env.scaler.received) == 1
    (alert,) = [a for a in env.get("/alerts")["alerts"] if a["rule"] == f"scale-{RUN}"]
    assert alert["state"] == "firing" and alert["value"] == 97.5


def test_silences_crud_and_matching(env: Env) -> None:
    ends = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    body = {
        "matchers": [{"name": "alertname", "value": f"always-{RUN}"}],
        "ends_at": ends,
        "created_by": "test",
        "comment": "maintenance",
    }
    created = httpx.post(env.url("/silences"), json=body, timeout=30)
    assert created.status_code == 201, created.text
    silence = created.json()
    assert silence["status"] == "active"
    assert env.get(f"/silences/{silence['id']}")["comment"] == "maintenance"

    def silenced() -> bool:
        alerts = [a for a in env.get("/alerts")["alerts"] if a["rule"] == f"always-{RUN}"]
        return bool(alerts) and alerts[0]["silenced"]

    wait_until("the alert silenced", silenced)
    updated = httpx.put(
        env.url(f"/silences/{silence['id']}"), json={**body, "comment": "longer"}, timeout=30
    )
    assert updated.status_code == 200 and updated.json()["comment"] == "longer"
    expired = httpx.delete(env.url(f"/silences/{silence['id']}"), timeout=30)
    assert expired.status_code == 200 and expired.json()["status"] == "expired"
    listed = {s["id"]: s for s in env.get("/silences")["silences"]}
    assert listed[silence["id"]]["status"] == "expired"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param(
            {"matchers": [{"name": "a", "value": "("}], "op": "=~"},
            ["body", "matchers", 0, "value"],
            id="bad-regex",
        ),
        pytest.param(
            {"matchers": [], "ends_at": "2030-01-01T00:00:00Z"},
            ["body", "matchers"],
            id="no-matchers",
        ),
        pytest.param(
            {
                "matchers": [{"name": "a", "value": "b"}],
                "starts_at": "2030-01-02T00:00:00Z",
                "ends_at": "2030-01-01T00:00:00Z",
            },
            ["body", "ends_at"],
            id="ends-before-start",
        ),
    ],
)
def test_invalid_silences_are_422(env: Env, body: dict[str, Any], loc: list[Any]) -> None:
    if "op" in body:
        body = {
            "matchers": [{**body["matchers"][0], "op": body["op"]}],
            "ends_at": "2030-01-01T00:00:00Z",
        }
    response = httpx.post(env.url("/silences"), json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_keda_metrics_endpoint_over_real_spans(env: Env) -> None:
    service = f"keda-{RUN}"
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), shutdown_on_exit=False
    )
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{env.app.ports.http}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.alerting")
    now = time.time_ns()
    for i in range(10):
        start = now - (i + 1) * 200 * MS
        span = tracer.start_span("GET /", kind=SpanKind.SERVER, start_time=start)
        if i < 2:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=start + (1000 if i == 0 else 100) * MS)
    provider.shutdown()
    assert query(
        env.app, "SELECT count() FROM otel_red_1m WHERE ServiceName = {s:String}", s=service
    )
    values = {
        m: env.get("/scaling/metrics", service=service, metric=m, window="2m")["value"]
        for m in ("p99", "rps", "error_rate")
    }
    assert values["error_rate"] == 0.2
    assert 100 < values["p99"] <= 1000.5
    assert values["rps"] > 0
    unknown = env.get("/scaling/metrics", service=f"none-{RUN}", metric="rps")
    assert unknown == {"value": 0.0}
    bad = httpx.get(
        env.url("/scaling/metrics"), params={"service": service, "metric": "p50"}, timeout=30
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "metric"]


def test_every_example_rule_query_runs_on_clickhouse(env: Env) -> None:
    now = dt.datetime.now(dt.UTC)
    for rule in parse_rules_file((DATA / "alerting" / "rules.yaml").read_text()).rules:
        result = queries.run(env.app.client, rule, now)
        assert result.error is None, (rule.name, result.error)


def test_cluster_ddl_of_the_alerting_tables_parses_and_replicates_to_every_node(
    env: Env,
) -> None:
    (migration,) = [m for m in load_migrations() if m.name == "alerting"]
    for statement in render(migration, SchemaOptions(cluster="tracehouse")):
        formatted = str(
            env.app.client.query(
                "SELECT formatQuery({q:String})", parameters={"q": statement}
            ).first_row[0]
        )
        assert "ON CLUSTER tracehouse" in formatted
        assert "ENGINE = Replicated" in formatted and "{shard}" not in formatted


def test_history_range_is_validated(env: Env) -> None:
    bad = httpx.get(env.url("/alerts/history"), params={"start": "yesterday"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "start"]
    history = env.get("/alerts/history", rule=f"always-{RUN}")["history"]
    assert history and history[-1]["to"] == "firing"


def test_rules_sharing_a_query_get_what_their_own_query_gives(env: Env) -> None:
    """run_many batches rollup rules of one shape into one query; compare with one query per
    rule over spans of a few services (two operations, one failing now and then)."""
    services = [f"batch-{RUN}-{i}" for i in range(3)]
    for n, service in enumerate(services):
        provider = TracerProvider(
            resource=Resource.create({"service.name": service}), shutdown_on_exit=False
        )
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{env.app.ports.http}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("tests.alerting")
        now = time.time_ns()
        for i in range(6 + n):
            start = now - (i + 1) * 100 * MS
            name = "GET /a" if i % 2 else "POST /b"
            span = tracer.start_span(name, kind=SpanKind.SERVER, start_time=start)
            if i % 3 == 0:
                span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=start + (50 + 40 * i + 100 * n) * MS)
        provider.shutdown()
    assert query(
        env.app, "SELECT count() FROM otel_red_1m WHERE ServiceName = {s:String}", s=services[-1]
    )
    shapes: list[dict[str, Any]] = [
        {"kind": "latency"},
        {"kind": "error_rate", "group_by": ["operation"], "scope": "operation"},
        {"kind": "call_rate", "filters": {"span_kind": "server"}, "group_by": ["span_kind"]},
    ]
    rules = [
        Rule.model_validate(
            {
                "name": f"b{i}-{j}",
                "window": "2m",
                "condition": {"threshold": 1},
                **shape,
                "filters": {**shape.get("filters", {}), "service": service},
            }
        )
        for i, shape in enumerate(shapes)
        for j, service in enumerate(services)
    ]
    now = dt.datetime.now(dt.UTC)
    batched = queries.run_many(env.app.client, rules, now)
    for rule in rules:
        alone = queries.run(env.app.client, rule, now)
        assert alone.error is None and alone.samples, rule.name
        assert batched[rule.name].error is None
        assert _by_labels(batched[rule.name].samples) == _by_labels(alone.samples), rule.name


def _by_labels(samples: Any) -> list[tuple[list[tuple[str, str]], float | None]]:
    return sorted((sorted(s.labels.items()), s.value) for s in samples)


def test_log_count_rule_counts_matching_records(env: Env) -> None:
    """Log records sent as OTLP/JSON over HTTP; the rule counts errors mentioning timeout."""
    services = [f"logs-{RUN}-a", f"logs-{RUN}-b"]
    now = time.time_ns()
    records = {
        services[0]: [
            (17, "ERROR", "db timeout after 5s"),
            (17, "ERROR", "Timeout on cart"),
            (9, "INFO", "timeout retried"),
            (17, "ERROR", "payment declined"),
        ],
        services[1]: [(21, "FATAL", "upstream TIMEOUT")],
    }
    body = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": str(now - i * MS),
                                "severityNumber": number,
                                "severityText": text,
                                "body": {"stringValue": message},
                            }
                            for i, (number, text, message) in enumerate(rows)
                        ]
                    }
                ],
            }
            for service, rows in records.items()
        ]
    }
    sent = httpx.post(f"http://127.0.0.1:{env.app.ports.http}/v1/logs", json=body, timeout=30)
    assert sent.status_code == 200, sent.text
    assert query(
        env.app, "SELECT count() FROM otel_logs WHERE ServiceName = {s:String}", s=services[0]
    ) == [(4,)]
    rule = Rule.model_validate(
        {
            "name": f"logs-{RUN}",
            "kind": "log_count",
            "window": "5m",
            "group_by": ["service"],
            "filters": {"min_severity_number": "17", "body_contains": "timeout"},
            "condition": {"op": ">", "threshold": 1},
        }
    )
    result = queries.run(env.app.client, rule, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert result.error is None
    counts = {
        s.labels["service"]: s.value for s in result.samples if s.labels["service"] in services
    }
    assert counts == {services[0]: 2.0, services[1]: 1.0}


def test_deleting_an_api_rule_retires_its_alerts(env: Env) -> None:
    name = f"doomed-{RUN}"
    rule = {
        "name": name,
        "kind": "sql",
        "query": "SELECT 2 AS value",
        "interval": "5s",
        "condition": {"op": ">", "threshold": 1},
    }
    assert httpx.post(env.url("/alert-rules"), json=rule, timeout=30).status_code == 201

    def firing() -> bool:
        return any(
            a["rule"] == name and a["state"] == "firing" for a in env.get("/alerts")["alerts"]
        )

    wait_until("the API rule firing", firing)
    assert httpx.delete(env.url(f"/alert-rules/{name}"), timeout=30).status_code == 204
    wait_until(
        "its alert gone",
        lambda: not any(a["rule"] == name for a in env.get("/alerts", state="all")["alerts"]),
    )


def test_edge_rules_read_what_the_topology_api_shows(env: Env) -> None:
    """Client→server calls between two services (3 of 8 failing), edges computed by the
    topology job; an edge rule's call count and error rate match /api/v1/topology."""
    from opentelemetry import trace

    from tracehouse.topology import EdgeBuilder

    front, back = f"edge-front-{RUN}", f"edge-back-{RUN}"
    providers = {}
    for service in (front, back):
        provider = TracerProvider(
            resource=Resource.create({"service.name": service}), shutdown_on_exit=False
        )
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{env.app.ports.http}/v1/traces")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        providers[service] = provider
    start_s = (int(time.time()) // 60 - 1) * 60  # the previous, closed minute
    for i in range(8):
        at = (start_s + 5 + i) * 10**9
        client = (
            providers[front]
            .get_tracer("t")
            .start_span("GET /stock", kind=SpanKind.CLIENT, start_time=at)
        )
        server = (
            providers[back]
            .get_tracer("t")
            .start_span(
                "GET /stock",
                kind=SpanKind.SERVER,
                start_time=at + MS,
                context=trace.set_span_in_context(client),
            )
        )
        if i < 3:
            server.set_status(Status(StatusCode.ERROR))
        server.end(end_time=at + 40 * MS)
        client.end(end_time=at + 50 * MS)
    for provider in providers.values():
        provider.shutdown()
    assert query(
        env.app, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=back
    ) == [(8,)]
    EdgeBuilder(env.app.client, lag_s=0, window_min=3).run_once(
        dt.datetime.fromtimestamp(start_s + 120, dt.UTC)
    )
    topology = env.get("/topology", start=str(start_s), end=str(start_s + 60))
    (edge,) = [e for e in topology["edges"] if e["source"] == front and e["target"] == back]
    now = dt.datetime.fromtimestamp(start_s + 60, dt.UTC)
    values = {}
    for kind in ("error_rate", "call_rate", "latency"):
        rule = Rule.model_validate(
            {
                "name": f"edge-{kind}",
                "kind": kind,
                "scope": "edge",
                "window": "1m",
                "filters": {"source": front},
                "group_by": ["target"],
                "condition": {"threshold": 1},
            }
        )
        result = queries.run(env.app.client, rule, now)
        assert result.error is None, result.error
        (sample,) = [s for s in result.samples if s.labels == {"target": back}]
        values[kind] = sample.value
    assert edge["calls"] == 8 and values["error_rate"] == edge["error_rate"] == 0.375
    assert values["call_rate"] == pytest.approx(8 / 60)
    assert values["latency"] == pytest.approx(edge["client_p99_ms"], rel=0.01)
