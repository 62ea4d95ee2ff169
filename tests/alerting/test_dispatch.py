"""Grouping (group_by, group_wait, group_interval, repeat_interval, resolved notifications),
the Alertmanager v4 body, custom bodies, scaling payloads (ESS and generic), and the
delivery policy (backoff with jitter, Retry-After, final 4xx, deadline) — all pure."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import random
from dataclasses import replace
from typing import Any

import pytest

from tracehouse.alerting.delivery import (
    DeliveryStatus,
    SendResult,
    WebhookRequest,
    after_attempt,
    parse_retry_after,
    sign,
    signed_headers,
)
from tracehouse.alerting.dispatch import (
    SentGroup,
    alertmanager_body,
    plan_groups,
    scaling_body,
    scaling_outgoing,
)
from tracehouse.alerting.evaluator import AlertInstance, AlertState, ScalingRequest
from tracehouse.alerting.rules import Receiver, Rule

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
URL = "http://tracehouse.test:8080"


def receiver(**overrides: Any) -> Receiver:
    spec: dict[str, Any] = {
        "name": "ops",
        "url": "http://127.0.0.1:1/hook",
        "group_by": ["alertname"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
    }
    spec.update(overrides)
    return Receiver.model_validate(spec)


def alert(service: str, state: AlertState = AlertState.FIRING, **kw: Any) -> AlertInstance:
    labels = {"alertname": "p99", "severity": "critical", "service": service}
    return AlertInstance(
        rule="p99",
        fingerprint=f"fp-{service}",
        labels=labels,
        state=state,
        annotations={"summary": f"{service} slow"},
        value=900.0,
        fired_at=kw.pop("fired_at", T0),
        episode=kw.pop("episode", f"ep-{service}"),
        **kw,
    )


def test_a_new_group_waits_group_wait_then_sends_all_its_alerts_together() -> None:
    r = receiver()
    alerts = [alert("a"), alert("b", fired_at=T0 + dt.timedelta(seconds=10))]
    assert plan_groups(r, alerts, {}, T0 + dt.timedelta(seconds=29), URL) == []
    (out,) = plan_groups(r, alerts, {}, T0 + dt.timedelta(seconds=30), URL)
    body = json.loads(out.body)
    assert [a["labels"]["service"] for a in body["alerts"]] == ["a", "b"]
    assert out.alerts == {"fp-a": "firing:ep-a", "fp-b": "firing:ep-b"}
    assert body["groupLabels"] == {"alertname": "p99"}
    assert body["commonLabels"] == {"alertname": "p99", "severity": "critical"}
    assert body["commonAnnotations"] == {}


def test_group_by_splits_groups() -> None:
    out = plan_groups(
        receiver(group_by=["service"], group_wait="0s"), [alert("a"), alert("b")], {}, T0, URL
    )
    assert sorted(json.loads(o.body)["groupLabels"]["service"] for o in out) == ["a", "b"]


def test_changes_wait_for_group_interval_and_unchanged_groups_repeat() -> None:
    r = receiver()
    sent = {
        'ops:{alertname="p99"}': SentGroup('ops:{alertname="p99"}', T0, {"fp-a": "firing:ep-a"})
    }
    # Unchanged: nothing until repeat_interval.
    assert plan_groups(r, [alert("a")], sent, T0 + dt.timedelta(hours=3), URL) == []
    assert len(plan_groups(r, [alert("a")], sent, T0 + dt.timedelta(hours=4), URL)) == 1
    # A second alert joined: sent at group_interval, not before.
    both = [alert("a"), alert("b")]
    assert plan_groups(r, both, sent, T0 + dt.timedelta(minutes=4), URL) == []
    assert len(plan_groups(r, both, sent, T0 + dt.timedelta(minutes=5), URL)) == 1


def test_resolved_is_sent_once_for_what_was_announced_firing() -> None:
    r = receiver()
    key = 'ops:{alertname="p99"}'
    sent = {key: SentGroup(key, T0, {"fp-a": "firing:ep-a"})}
    resolved = alert("a", AlertState.RESOLVED, resolved_at=T0 + dt.timedelta(minutes=6))
    later = T0 + dt.timedelta(minutes=6)
    (out,) = plan_groups(r, [resolved], sent, later, URL)
    body = json.loads(out.body)
    assert body["status"] == "resolved"
    assert body["alerts"][0]["endsAt"] == "2026-11-23T12:06:00.000Z"
    # Once sent, the resolution is not news any more.
    sent = {key: SentGroup(key, later, dict(out.alerts))}
    assert plan_groups(r, [resolved], sent, later + dt.timedelta(hours=5), URL) == []
    # And without send_resolved it is not sent at all.
    assert (
        plan_groups(
            receiver(send_resolved=False),
            [resolved],
            {key: SentGroup(key, T0, {"fp-a": "firing:ep-a"})},
            later,
            URL,
        )
        == []
    )


def test_a_new_episode_of_the_same_alert_is_a_change() -> None:
    key = 'ops:{alertname="p99"}'
    sent = {key: SentGroup(key, T0, {"fp-a": "firing:ep-old"})}
    out = plan_groups(receiver(), [alert("a")], sent, T0 + dt.timedelta(minutes=5), URL)
    assert len(out) == 1


def test_silenced_and_pending_alerts_are_not_sent() -> None:
    alerts = [alert("a", silenced=True), alert("b", AlertState.PENDING)]
    assert plan_groups(receiver(group_wait="0s"), alerts, {}, T0, URL) == []


def test_alertmanager_v4_body_has_every_field() -> None:
    inst = replace(alert("a"), exemplars=("abc123",))
    body = alertmanager_body(receiver(), "k", {"alertname": "p99"}, [inst], URL)
    assert set(body) == {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    (a,) = body["alerts"]
    assert {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    } <= set(a)
    assert a["startsAt"] == "2026-11-23T12:00:00.000Z"
    assert a["generatorURL"] == f"{URL}/api/v1/alert-rules/p99"
    assert a["exemplarTraceIds"] == ["abc123"]
    assert a["exemplarLinks"] == [f"{URL}/api/v1/traces/abc123"]


def test_custom_body_template() -> None:
    r = receiver(
        group_wait="0s",
        body_template='{"text": "{{ status }}: {{ commonLabels.alertname }} '
        '{{ alerts.0.labels.service }}", "n": {{ truncatedAlerts }}}',
    )
    (out,) = plan_groups(r, [alert("a")], {}, T0, URL)
    assert json.loads(out.body) == {"text": "firing: p99 a", "n": 0}


def _request(fmt: str = "generic", seq: int = 1) -> ScalingRequest:
    action: dict[str, Any] = {
        "receiver": "ops",
        "target": "web",
        "direction": "out",
        "step": 3,
        "min": 2,
        "max": 10,
        "format": fmt,
    }
    if fmt == "ess":
        action.update(
            scaling_rule_ari="ari:acs:ess:cn-hangzhou:123:scalingrule/asr-1",
            region_id="cn-hangzhou",
        )
    rule = Rule.model_validate(
        {"name": "p99", "kind": "latency", "condition": {"threshold": 800}, "actions": [action]}
    )
    return ScalingRequest("p99", 0, rule.actions[0], alert("web"), "web", seq, 800.0)


def test_ess_execute_scaling_rule_payload() -> None:
    request = _request("ess")
    body = scaling_body(request, URL)
    assert body == {
        "Action": "ExecuteScalingRule",
        "ScalingRuleAri": "ari:acs:ess:cn-hangzhou:123:scalingrule/asr-1",
        "ClientToken": request.client_token,
        "BreachThreshold": 800.0,
        "MetricValue": 900.0,
        "RegionId": "cn-hangzhou",
    }
    # The outbox id follows the token: the same call is queued once.
    assert scaling_outgoing(request, receiver(), URL).id == f"msg_{request.client_token}"
    assert _request("ess", 2).client_token != request.client_token


def test_generic_scaling_payload() -> None:
    body = scaling_body(_request(), URL)
    assert {k: body[k] for k in ("type", "target", "direction", "step", "min", "max")} == {
        "type": "scale",
        "target": "web",
        "direction": "out",
        "step": 3,
        "min": 2,
        "max": 10,
    }
    assert body["value"] == 900.0 and body["alert"]["labels"]["service"] == "web"


SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_signature_matches_the_standard_webhooks_construction() -> None:
    body = '{"a":1}'
    expected = base64.b64encode(
        hmac.new(
            b"0123456789abcdef0123456789abcdef",
            b"msg_1.1700000000." + body.encode(),
            hashlib.sha256,
        ).digest()
    ).decode()
    assert sign(SECRET, "msg_1", 1700000000, body) == f"v1,{expected}"
    headers = signed_headers(
        WebhookRequest("msg_1", "http://x", body, {"X-A": "b"}, SECRET),
        dt.datetime.fromtimestamp(1700000000, dt.UTC),
    )
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert headers["x-a"] == "b"
    unsigned = signed_headers(WebhookRequest("m", "http://x", body), T0)
    assert "webhook-signature" not in unsigned


DEADLINE = T0 + dt.timedelta(minutes=10)


@pytest.mark.parametrize(
    ("result", "status"),
    [
        pytest.param(SendResult(200), DeliveryStatus.DELIVERED, id="200-delivered"),
        pytest.param(SendResult(204), DeliveryStatus.DELIVERED, id="204-delivered"),
        pytest.param(SendResult(400), DeliveryStatus.DEAD, id="400-final"),
        pytest.param(SendResult(404), DeliveryStatus.DEAD, id="404-final"),
        pytest.param(SendResult(429), DeliveryStatus.PENDING, id="429-retried"),
        pytest.param(SendResult(408), DeliveryStatus.PENDING, id="408-retried"),
        pytest.param(SendResult(503), DeliveryStatus.PENDING, id="503-retried"),
        pytest.param(SendResult(None, error="refused"), DeliveryStatus.PENDING, id="network"),
    ],
)
def test_outcome_of_an_attempt(result: SendResult, status: DeliveryStatus) -> None:
    assert after_attempt(result, 1, T0, DEADLINE, 1.0, 60.0).status is status


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    delays = []
    for attempt in range(1, 10):
        d = after_attempt(SendResult(503), attempt, T0, T0 + dt.timedelta(days=1), 1.0, 60.0, rng)
        assert d.next_attempt_at is not None
        delays.append((d.next_attempt_at - T0).total_seconds())
    for attempt, delay in enumerate(delays, start=1):
        backoff = min(60.0, 2.0 ** (attempt - 1))
        assert backoff / 2 <= delay <= backoff
    assert len(set(delays)) == len(delays)  # jittered


def test_retry_after_is_honoured_and_the_deadline_ends_retries() -> None:
    d = after_attempt(SendResult(429, retry_after_s=120), 1, T0, DEADLINE, 1.0, 60.0)
    assert d.next_attempt_at == T0 + dt.timedelta(seconds=120)
    late = after_attempt(SendResult(503, retry_after_s=3600), 1, T0, DEADLINE, 1.0, 60.0)
    assert late.status is DeliveryStatus.DEAD and "deadline" in late.error


def test_retry_after_forms() -> None:
    assert parse_retry_after("7", T0) == 7.0
    assert parse_retry_after("Mon, 23 Nov 2026 12:01:00 GMT", T0) == 60.0
    assert parse_retry_after("soon", T0) is None
