"""End to end: real spans (OpenTelemetry SDK, OTLP/HTTP) into a running tracehouse, a latency
rule over the rollups fires, and a real HTTP receiver on loopback gets the signed
Alertmanager webhook — answering 503 twice, then 200 — while the server is restarted in the
middle. Exactly one notification is recorded as delivered, every attempt carried the same
``webhook-id``, and the restart neither lost nor duplicated it.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from tests.alerting.receiver import Receiver
from tests.conftest import ServerFactory, query
from tracehouse.app import Tracehouse

MS = 1_000_000


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def receiver(secret: str) -> Iterator[Receiver]:
    r = Receiver(secret, script=[503, 503]).start()
    yield r
    r.stop()


def _rules_file(tmp_path: Path, receiver: Receiver, secret: str, service: str) -> Path:
    path = tmp_path / "alert-rules.yaml"
    spec = {
        "receivers": [
            {
                "name": f"hook-{service}",
                "url": receiver.url,
                "secret": secret,
                "group_by": ["alertname", "service"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
                "backoff_initial": "1s",
                "backoff_max": "2s",
                "deadline": "2m",
            }
        ],
        "rules": [
            {
                "name": f"p99-{service}",
                "kind": "latency",
                "filters": {"service": service},
                "group_by": ["service"],
                "interval": "5s",
                "for": 2,
                "condition": {"op": ">", "threshold": 500, "recovery_threshold": 200},
                "severity": "critical",
                "annotations": {"summary": "p99 of {{ $labels.service }} is {{ $value }} ms"},
                "receivers": [f"hook-{service}"],
            }
        ],
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _send_slow_spans(app: Tracehouse, service: str, count: int = 20) -> set[str]:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), shutdown_on_exit=False
    )
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.alerting")
    trace_ids = set()
    now = time.time_ns()
    for i in range(count):
        start = now - (count - i) * 100 * MS
        span = tracer.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=start)
        span.end(end_time=start + 900 * MS)  # 900 ms: above the 500 ms threshold
        trace_ids.add(format(span.get_span_context().trace_id, "032x"))
    provider.shutdown()
    return trace_ids


def _api(app: Tracehouse, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"http://127.0.0.1:{app.ports.api}/api/v1{path}", params=params, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_signed_webhook_survives_503s_and_a_restart_exactly_once(
    make_server: ServerFactory, tmp_path: Path, receiver: Receiver, secret: str
) -> None:
    service = f"checkout-{uuid.uuid4().hex[:8]}"
    rules = _rules_file(tmp_path, receiver, secret, service)
    first = make_server(alert_rules_file=rules)
    trace_ids = _send_slow_spans(first, service)
    assert query(
        first, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=service
    ) == [(20,)]

    # Two evaluations 5 s apart (for: 2), then the first attempt, answered 503.
    (attempt,) = receiver.wait_for(1, timeout_s=90)
    assert attempt.status == 503
    first.stop()  # restart in the middle: the notification is pending in the outbox

    second = make_server(alert_rules_file=rules)
    received = receiver.wait_for(3, timeout_s=90)
    assert [r.status for r in received] == [503, 503, 200]
    assert all(r.signature_ok for r in received), [r.headers for r in received]
    assert len({r.id for r in received}) == 1  # the same webhook-id on every attempt
    assert len({r.body for r in received}) == 1
    body = received[-1].json()
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == f"hook-{service}"
    assert body["groupLabels"] == {"alertname": f"p99-{service}", "service": service}
    assert body["commonLabels"]["severity"] == "critical"
    assert {"groupKey", "truncatedAlerts", "commonAnnotations", "externalURL"} <= set(body)
    (alert,) = body["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"]["service"] == service
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert len(alert["fingerprint"]) == 16
    assert 500 < alert["value"] < 2000
    assert alert["annotations"]["summary"].startswith(f"p99 of {service} is ")
    assert alert["exemplarTraceIds"] and set(alert["exemplarTraceIds"]) <= trace_ids

    # Exactly one delivery, delivered on the third attempt, and nothing more is sent over
    # the next evaluations (the restarted worker knows the group was notified).
    time.sleep(12)
    assert len(receiver.received) == 3
    mine = [
        d
        for d in _api(second, "/alert-deliveries")["deliveries"]
        if d["receiver"] == f"hook-{service}"
    ]
    assert [(d["id"], d["status"], d["attempts"]) for d in mine] == [
        (received[0].id, "delivered", 3)
    ]
    dead = _api(second, "/alert-deliveries", status="dead")["deliveries"]
    assert [d for d in dead if d["receiver"] == f"hook-{service}"] == []
    (active,) = [a for a in _api(second, "/alerts")["alerts"] if a["rule"] == f"p99-{service}"]
    assert active["state"] == "firing"
    history = _api(second, "/alerts/history", rule=f"p99-{service}")["history"]
    assert [(h["from"], h["to"]) for h in reversed(history)] == [
        ("inactive", "pending"),
        ("pending", "firing"),
    ]
    (rule,) = [r for r in _api(second, "/alert-rules")["rules"] if r["name"] == f"p99-{service}"]
    assert rule["health"] == "ok" and rule["source"] == "file"
