"""The pure rule evaluator: rule + query result + previous state + now in, new state out.

No I/O: the worker runs the query, calls :func:`evaluate`, stores what it returns and hands
the scaling requests to the outbox. Each alert instance (one per label set of the result)
moves through :class:`AlertState`:

    inactive --breach--> pending --(for)--> firing --(recovered, recover_for and
    keep_firing_for elapsed)--> resolved --breach--> pending ...

``for: 0`` goes from inactive straight to firing. While firing, the recovery threshold (if
any) decides whether the value is still bad (hysteresis).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from tracehouse.alerting.rules import (
    Rule,
    ScaleAction,
    compare,
    hold_evaluations,
    hold_seconds,
    render_template,
)

# A resolved instance no longer in the query result is forgotten after this long (its resolved
# notification has gone out by then, unless a receiver's group_interval is longer).
FORGET_RESOLVED_AFTER = dt.timedelta(hours=1)


class AlertState(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Sample:
    """One value of a query result and the labels it is for (None: the series has no value)."""

    labels: Mapping[str, str]
    value: float | None
    exemplars: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueryResult:
    """What a rule's query returned, or the error that stopped it."""

    samples: tuple[Sample, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Matcher:
    """A silence's label matcher: ``=``, ``!=``, ``=~`` (full-match regex) or ``!~``."""

    name: str
    value: str
    op: str = "="

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = re.fullmatch(self.value, got) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: dt.datetime
    ends_at: dt.datetime

    def active(self, now: dt.datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def silences(self, labels: Mapping[str, str], now: dt.datetime) -> bool:
        return self.active(now) and all(m.matches(labels) for m in self.matchers)


@dataclass(frozen=True)
class AlertInstance:
    """One alert (rule + label set) and what the evaluator carries between evaluations."""

    rule: str
    fingerprint: str
    labels: Mapping[str, str]
    state: AlertState = AlertState.INACTIVE
    annotations: Mapping[str, str] = field(default_factory=dict)
    value: float | None = None
    active_at: dt.datetime | None = None  # first breach of the current pending/firing spell
    fired_at: dt.datetime | None = None
    resolved_at: dt.datetime | None = None
    last_breach_at: dt.datetime | None = None
    recovering_since: dt.datetime | None = None
    breaches: int = 0  # consecutive breaching evaluations
    recoveries: int = 0  # consecutive recovered evaluations while firing
    episode: str = ""  # identifies one firing spell (pending -> firing -> resolved)
    actions: int = 0  # scaling requests made in this episode
    exemplars: tuple[str, ...] = ()
    last_evaluation: dt.datetime | None = None
    silenced: bool = False

    @property
    def active(self) -> bool:
        return self.state in (AlertState.PENDING, AlertState.FIRING)


@dataclass(frozen=True)
class Transition:
    """A state change, for the history."""

    instance: AlertInstance
    from_state: AlertState
    to_state: AlertState
    at: dt.datetime
    note: str = ""


@dataclass(frozen=True)
class ScalingRequest:
    """A scaling call to make: the action of a firing alert, out of its target's cooldown."""

    rule: str
    action_index: int
    action: ScaleAction
    instance: AlertInstance
    target: str
    sequence: int  # 1 for the call when the alert fired, then one more per repeat
    threshold: float

    @property
    def client_token(self) -> str:
        """Idempotency key of this call (Alibaba ESS ClientToken, at most 64 ASCII
        characters): the same alert, firing episode, action and repeat give the same token,
        so a retried or replayed delivery never scales twice."""
        key = json.dumps(
            [
                self.rule,
                self.instance.fingerprint,
                self.instance.episode,
                self.action_index,
                self.sequence,
            ]
        )
        return "th-" + hashlib.sha256(key.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation of a rule produced."""

    instances: dict[str, AlertInstance]
    transitions: list[Transition]
    scaling: list[ScalingRequest]
    scaled: dict[str, dt.datetime]  # targets scaled now (start of their cooldown)
    notes: list[str]  # why a scaling call was not made (cooldown, silence)


def fingerprint(labels: Mapping[str, str]) -> str:
    """16 hex digits identifying a label set (like Alertmanager's fingerprint)."""
    text = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def alert_labels(rule: Rule, sample_labels: Mapping[str, str]) -> dict[str, str]:
    return {
        "alertname": rule.name,
        "severity": rule.severity,
        **rule.labels,
        **{k: str(v) for k, v in sample_labels.items()},
    }


def _hold_met(hold: int | str, count: int, since: dt.datetime | None, now: dt.datetime) -> bool:
    evaluations = hold_evaluations(hold)
    if evaluations is not None:
        return count >= max(evaluations, 1)
    seconds = hold_seconds(hold) or 0.0
    return since is not None and (now - since).total_seconds() >= seconds


def _episode(fp: str, active_at: dt.datetime) -> str:
    return hashlib.sha256(f"{fp}|{active_at.isoformat()}".encode()).hexdigest()[:16]


def _step(
    rule: Rule, inst: AlertInstance, value: float | None, has_data: bool, now: dt.datetime
) -> AlertInstance:
    """One evaluation of one instance (the state machine)."""
    cond = rule.condition
    if not has_data:
        if rule.no_data == "keep":
            return replace(inst, last_evaluation=now)
        bad = still_bad = rule.no_data == "alert"
    else:
        assert value is not None
        bad = compare(value, cond.op, cond.threshold)
        recovery = cond.recovery_threshold if cond.recovery_threshold is not None else None
        still_bad = compare(value, cond.op, recovery) if recovery is not None else bad
    inst = replace(inst, value=value, last_evaluation=now)
    state = inst.state
    if state in (AlertState.INACTIVE, AlertState.RESOLVED):
        if not bad:
            return inst
        inst = replace(
            inst,
            breaches=1,
            active_at=now,
            last_breach_at=now,
            recoveries=0,
            recovering_since=None,
            actions=0,
            episode=_episode(inst.fingerprint, now),
        )
        if _hold_met(rule.for_, 1, now, now):
            return replace(inst, state=AlertState.FIRING, fired_at=now, resolved_at=None)
        return replace(inst, state=AlertState.PENDING, fired_at=None, resolved_at=None)
    if state is AlertState.PENDING:
        if not bad:
            return replace(inst, state=AlertState.INACTIVE, breaches=0, active_at=None)
        inst = replace(inst, breaches=inst.breaches + 1, last_breach_at=now)
        if _hold_met(rule.for_, inst.breaches, inst.active_at, now):
            return replace(inst, state=AlertState.FIRING, fired_at=now)
        return inst
    # firing
    if still_bad:
        return replace(
            inst,
            last_breach_at=now,
            recoveries=0,
            recovering_since=None,
            breaches=inst.breaches + (1 if bad else 0),
        )
    inst = replace(
        inst, recoveries=inst.recoveries + 1, recovering_since=inst.recovering_since or now
    )
    kept = inst.last_breach_at is not None and (
        (now - inst.last_breach_at).total_seconds() < rule.keep_firing_for
    )
    if not kept and _hold_met(rule.recover_for, inst.recoveries, inst.recovering_since, now):
        return replace(inst, state=AlertState.RESOLVED, resolved_at=now, breaches=0)
    return inst


def evaluate(
    rule: Rule,
    result: QueryResult,
    previous: Mapping[str, AlertInstance],
    now: dt.datetime,
    silences: Sequence[Silence] = (),
    last_scaled: Mapping[str, dt.datetime] | None = None,
) -> Evaluation:
    """Evaluate ``rule`` on ``result`` at ``now``.

    ``previous``: the rule's instances by fingerprint, as the last evaluation left them.
    ``last_scaled``: when each scaling target was last scaled (any rule, any direction).
    A failed query (``result.error``) changes nothing: every instance keeps its state.
    """
    if result.error is not None:
        return Evaluation(dict(previous), [], [], {}, [])
    samples: dict[str, tuple[dict[str, str], Sample]] = {}
    for sample in result.samples:
        labels = alert_labels(rule, sample.labels)
        samples[fingerprint(labels)] = (labels, sample)
    if not result.samples and rule.no_data == "alert" and not previous:
        labels = alert_labels(rule, {})
        samples_missing = {fingerprint(labels): labels}
    else:
        samples_missing = {}

    instances: dict[str, AlertInstance] = {}
    transitions: list[Transition] = []
    for fp in {*previous, *samples, *samples_missing}:
        old = previous.get(fp)
        if fp in samples:
            labels, sample = samples[fp]
            inst = old or AlertInstance(rule=rule.name, fingerprint=fp, labels=labels)
            new = _step(
                rule, replace(inst, labels=labels), sample.value, sample.value is not None, now
            )
            if sample.exemplars:
                new = replace(new, exemplars=sample.exemplars)
        else:
            inst = old or AlertInstance(rule=rule.name, fingerprint=fp, labels=samples_missing[fp])
            new = _step(rule, inst, None, False, now)
        new = replace(
            new,
            annotations={
                k: render_template(v, new.labels, new.value) for k, v in rule.annotations.items()
            },
            silenced=any(s.silences(new.labels, now) for s in silences),
        )
        before = old.state if old is not None else AlertState.INACTIVE
        if new.state is not before:
            transitions.append(Transition(new, before, new.state, now))
        if new.state is AlertState.INACTIVE and old is None:
            continue  # never breached: nothing to remember
        if (
            new.state is AlertState.RESOLVED
            and fp not in samples
            and new.resolved_at is not None
            and now - new.resolved_at > FORGET_RESOLVED_AFTER
        ):
            continue  # long resolved and gone from the data
        instances[fp] = new

    scaling, scaled, notes = _scaling(rule, instances, transitions, now, last_scaled or {})
    return Evaluation(instances, transitions, scaling, scaled, notes)


def _scaling(
    rule: Rule,
    instances: dict[str, AlertInstance],
    transitions: list[Transition],
    now: dt.datetime,
    last_scaled: Mapping[str, dt.datetime],
) -> tuple[list[ScalingRequest], dict[str, dt.datetime], list[str]]:
    """Scaling calls of firing instances whose target is out of its cooldown. A target is
    scaled at most once per cooldown, whichever rule or direction asks."""
    if not rule.actions:
        return [], {}, []
    fired_now = {t.instance.fingerprint for t in transitions if t.to_state is AlertState.FIRING}
    requests: list[ScalingRequest] = []
    scaled: dict[str, dt.datetime] = {}
    notes: list[str] = []
    for fp in sorted(instances):
        inst = instances[fp]
        if inst.state is not AlertState.FIRING:
            continue
        for index, action in enumerate(rule.actions):
            if fp not in fired_now and not action.repeat:
                continue
            target = render_template(action.target, inst.labels, inst.value)
            last = scaled.get(target) or last_scaled.get(target)
            if last is not None and (now - last).total_seconds() < action.cooldown:
                if fp in fired_now:
                    notes.append(
                        f"{target}: in cooldown until "
                        f"{(last + dt.timedelta(seconds=action.cooldown)).isoformat()}"
                    )
                continue
            if inst.silenced:
                if fp in fired_now:
                    notes.append(f"{target}: silenced, not scaled")
                continue
            inst = replace(inst, actions=inst.actions + 1)
            requests.append(
                ScalingRequest(
                    rule.name, index, action, inst, target, inst.actions, rule.condition.threshold
                )
            )
            scaled[target] = now
        instances[fp] = inst
    return requests, scaled, notes
