"""From alert states to notifications (pure): grouping per receiver, the Alertmanager v4 body,
and the bodies of scaling calls.

Grouping follows Alertmanager: alerts of the rules naming a receiver are grouped by the
receiver's ``group_by`` labels. A new group is sent ``group_wait`` after its first alert
fired; a group whose alerts changed (one more firing, one resolved, a new episode) is sent
again no sooner than ``group_interval`` after its last notification; an unchanged firing
group is repeated every ``repeat_interval``. What was last sent per group (:class:`SentGroup`)
comes from the outbox, so a restarted worker carries on where it stopped: it neither
forgets a firing alert nor sends it again as new.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tracehouse.alerting.diagnoses import structured, visible
from tracehouse.alerting.evaluator import AlertInstance, AlertState, ScalingRequest
from tracehouse.alerting.rules import Receiver, render_body

# Alertmanager's endsAt of an alert still firing.
_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class SentGroup:
    """The last notification of a group: when, and each alert's ``status:episode``."""

    key: str
    at: dt.datetime
    alerts: Mapping[str, str]


@dataclass(frozen=True)
class Outgoing:
    """A notification to put in the outbox."""

    id: str
    kind: str  # alerts | scaling
    receiver: Receiver
    group_key: str
    target: str
    body: str
    alerts: Mapping[str, str]


def iso(moment: dt.datetime | None) -> str:
    if moment is None:
        return _ZERO_TIME
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _group_key(receiver: Receiver, labels: Mapping[str, str]) -> str:
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"{receiver.name}:{{{inner}}}"


def _status_key(inst: AlertInstance) -> str:
    status = "firing" if inst.state is AlertState.FIRING else "resolved"
    return f"{status}:{inst.episode}"


def plan_groups(
    receiver: Receiver,
    instances: Iterable[AlertInstance],
    sent: Mapping[str, SentGroup],
    now: dt.datetime,
    external_url: str,
) -> list[Outgoing]:
    """The notifications ``receiver`` is due at ``now``. ``instances``: the alerts of the
    rules naming it (any state; silenced ones are left out here)."""
    groups: dict[str, tuple[dict[str, str], list[AlertInstance]]] = {}
    for inst in instances:
        if inst.silenced or inst.state not in (AlertState.FIRING, AlertState.RESOLVED):
            continue
        group_labels = {k: inst.labels[k] for k in receiver.group_by if k in inst.labels}
        key = _group_key(receiver, group_labels)
        last = sent.get(key)
        if inst.state is AlertState.RESOLVED:
            # Only a resolution of what this group last announced as firing is news.
            if last is None or last.alerts.get(inst.fingerprint) != f"firing:{inst.episode}":
                continue
            if not receiver.send_resolved:
                continue
        groups.setdefault(key, (group_labels, []))[1].append(inst)
    out = []
    for key, (group_labels, members) in sorted(groups.items()):
        current = {m.fingerprint: _status_key(m) for m in members}
        firing = [m for m in members if m.state is AlertState.FIRING]
        last = sent.get(key)
        if last is None or not any(v.startswith("firing:") for v in last.alerts.values()):
            # A new group (or one whose alerts all resolved): wait for more to join it.
            if not firing:
                continue
            first = min(m.fired_at or now for m in firing)
            due = (now - first).total_seconds() >= receiver.group_wait
        elif current != {fp: s for fp, s in last.alerts.items() if s.startswith("firing:")}:
            due = (now - last.at).total_seconds() >= receiver.group_interval
        else:
            due = bool(firing) and (now - last.at).total_seconds() >= receiver.repeat_interval
        if not due:
            continue
        body = alertmanager_body(receiver, key, group_labels, members, external_url)
        text = (
            render_body(receiver.body_template, body)
            if receiver.body_template
            else json.dumps(body, separators=(",", ":"))
        )
        out.append(Outgoing(f"msg_{uuid.uuid4().hex}", "alerts", receiver, key, "", text, current))
    return out


def alertmanager_body(
    receiver: Receiver,
    group_key: str,
    group_labels: Mapping[str, str],
    members: Sequence[AlertInstance],
    external_url: str,
) -> dict[str, Any]:
    """The Alertmanager webhook (version 4) body of one group. Each alert also carries the
    evaluated ``value`` and exemplar trace ids and links (for remediation)."""
    ordered = sorted(members, key=lambda m: (m.state is not AlertState.FIRING, m.fingerprint))
    alerts = [_alert(m, external_url) for m in ordered]
    common_labels = _common([m.labels for m in ordered])
    common_annotations = _common([visible(m.annotations) for m in ordered])
    firing = any(m.state is AlertState.FIRING for m in ordered)
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver.name,
        "groupLabels": dict(group_labels),
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": external_url,
        "alerts": alerts,
    }


def _alert(inst: AlertInstance, external_url: str) -> dict[str, Any]:
    base = external_url.rstrip("/")
    out = _alert_fields(inst, base)
    if (diagnosis := structured(inst.annotations)) is not None:
        # insight alerts: the diagnosis' top causes as data (body templates can reach them)
        out["diagnosis"] = diagnosis
    return out


def _alert_fields(inst: AlertInstance, base: str) -> dict[str, Any]:
    return {
        "status": "firing" if inst.state is AlertState.FIRING else "resolved",
        "labels": dict(inst.labels),
        "annotations": visible(inst.annotations),
        "startsAt": iso(inst.fired_at or inst.active_at),
        "endsAt": iso(inst.resolved_at) if inst.state is AlertState.RESOLVED else _ZERO_TIME,
        "generatorURL": f"{base}/api/v1/alert-rules/{inst.rule}",
        "fingerprint": inst.fingerprint,
        "value": inst.value,
        "exemplarTraceIds": list(inst.exemplars),
        "exemplarLinks": [f"{base}/api/v1/traces/{t}" for t in inst.exemplars],
    }


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = dict(maps[0])
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def scaling_body(request: ScalingRequest, external_url: str) -> dict[str, Any]:
    """The body of a scaling call: Alibaba Cloud ESS ``ExecuteScalingRule`` parameters, or the
    generic JSON scaling call."""
    action = request.action
    inst = request.instance
    if action.format == "ess":
        body: dict[str, Any] = {
            "Action": "ExecuteScalingRule",
            "ScalingRuleAri": action.scaling_rule_ari,
            "ClientToken": request.client_token,
            "BreachThreshold": request.threshold,
            "MetricValue": inst.value,
        }
        if action.region_id:
            body["RegionId"] = action.region_id
        return body
    return {
        "type": "scale",
        "target": request.target,
        "direction": action.direction,
        "step": action.step,
        "min": action.min,
        "max": action.max,
        "idempotencyKey": request.client_token,
        "value": inst.value,
        "threshold": request.threshold,
        "alert": _alert(inst, external_url),
    }


def scaling_outgoing(request: ScalingRequest, receiver: Receiver, external_url: str) -> Outgoing:
    """The outbox entry of a scaling call; its id follows the ClientToken, so the same call
    is never queued twice."""
    body = scaling_body(request, external_url)
    return Outgoing(
        id=f"msg_{request.client_token}",
        kind="scaling",
        receiver=receiver,
        group_key=f"{receiver.name}:scale:{request.target}",
        target=request.target,
        body=json.dumps(body, separators=(",", ":")),
        alerts={request.instance.fingerprint: f"firing:{request.instance.episode}"},
    )
