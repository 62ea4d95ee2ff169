"""The pure evaluator on synthetic series: pending/firing/resolved, ``for`` (evaluations and
duration), ``keep_firing_for``, hysteresis, no-data modes, silences, templated annotations,
and scaling requests with cooldowns. No database, no network."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pytest

from tracehouse.alerting.evaluator import (
    AlertInstance,
    AlertState,
    Evaluation,
    Matcher,
    QueryResult,
    Sample,
    Silence,
    evaluate,
)
from tracehouse.alerting.rules import Rule

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
STEP = dt.timedelta(seconds=15)
F, P, R, N = AlertState.FIRING, AlertState.PENDING, AlertState.RESOLVED, AlertState.INACTIVE


def rule(**overrides: Any) -> Rule:
    spec: dict[str, Any] = {
        "name": "checkout-p99",
        "kind": "latency",
        "filters": {"service": "checkout"},
        "group_by": ["service"],
        "condition": {"op": ">", "threshold": 800},
    }
    spec.update(overrides)
    return Rule.model_validate(spec)


def one(value: float | None) -> QueryResult:
    """A result with one series (service=checkout), or none for None."""
    if value is None:
        return QueryResult(())
    return QueryResult((Sample({"service": "checkout"}, value),))


def run(
    r: Rule,
    values: Sequence[float | None],
    silences: Sequence[Silence] = (),
    step: dt.timedelta = STEP,
) -> list[AlertState]:
    """The state of the single alert after each evaluation (INACTIVE when there is none)."""
    state: dict[str, AlertInstance] = {}
    out = []
    for i, value in enumerate(values):
        ev = evaluate(r, one(value), state, T0 + i * step, silences)
        state = ev.instances
        out.append(next(iter(state.values())).state if state else N)
    return out


@pytest.mark.parametrize(
    ("for_", "values", "expected"),
    [
        pytest.param(0, [900, 100], [F, R], id="for-0-fires-at-once"),
        pytest.param(2, [900, 900, 900], [P, F, F], id="for-2-evaluations"),
        pytest.param(3, [900, 900, 100, 900], [P, P, N, P], id="pending-reset-by-one-good-value"),
        pytest.param("30s", [900, 900, 900], [P, P, F], id="for-30s-duration"),
        pytest.param(2, [100, 100], [N, N], id="never-breached"),
    ],
)
def test_pending_then_firing_per_for(
    for_: int | str, values: list[float], expected: list[AlertState]
) -> None:
    assert run(rule(**{"for": for_}), values) == expected


def test_firing_resolves_and_can_fire_again_as_a_new_episode() -> None:
    r = rule()
    state: dict[str, AlertInstance] = {}
    episodes = []
    for i, value in enumerate([900, 100, 900]):
        ev = evaluate(r, one(value), state, T0 + i * STEP)
        state = ev.instances
        (inst,) = state.values()
        episodes.append((inst.state, inst.episode))
    assert [s for s, _ in episodes] == [F, R, F]
    assert episodes[0][1] != episodes[2][1]
    (inst,) = state.values()
    assert inst.labels == {
        "alertname": "checkout-p99",
        "severity": "warning",
        "service": "checkout",
    }


def test_transitions_name_both_states() -> None:
    r = rule(**{"for": 2})
    first = evaluate(r, one(900), {}, T0)
    second = evaluate(r, one(900), first.instances, T0 + STEP)
    assert [(t.from_state, t.to_state) for t in first.transitions] == [(N, P)]
    assert [(t.from_state, t.to_state) for t in second.transitions] == [(P, F)]


def test_hysteresis_keeps_firing_until_the_recovery_threshold() -> None:
    r = rule(condition={"op": ">", "threshold": 800, "recovery_threshold": 300})
    assert run(r, [900, 700, 400, 301, 300]) == [F, F, F, F, R]
    # Without a recovery threshold the same series resolves at 700.
    assert run(rule(), [900, 700]) == [F, R]


def test_recover_for_needs_consecutive_good_evaluations() -> None:
    r = rule(recover_for=3)
    assert run(r, [900, 100, 100, 900, 100, 100, 100]) == [F, F, F, F, F, F, R]


def test_keep_firing_for_holds_after_the_last_breach() -> None:
    r = rule(keep_firing_for="40s")
    # Breach at 0 s; good values at 15, 30 (< 40 s after), resolved at 45 s.
    assert run(r, [900, 100, 100, 100]) == [F, F, F, R]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param("ok", [F, R], id="no-data-ok-resolves"),
        pytest.param("alert", [F, F], id="no-data-alert-keeps-breaching"),
        pytest.param("keep", [F, F], id="no-data-keep-holds-state"),
    ],
)
def test_no_data_modes_for_a_firing_alert(mode: str, expected: list[AlertState]) -> None:
    assert run(rule(no_data=mode), [900, None]) == expected


def test_no_data_alert_fires_without_any_series() -> None:
    r = rule(no_data="alert", group_by=[], **{"for": 2})
    assert run(r, [None, None]) == [P, F]
    assert run(rule(no_data="ok", group_by=[]), [None, None]) == [N, N]


def test_no_data_keep_does_not_count_towards_for() -> None:
    assert run(rule(no_data="keep", **{"for": 2}), [900, None, None, 900]) == [P, P, P, F]


def test_silence_marks_the_alert_silenced_while_active_but_the_state_moves_on() -> None:
    silence = Silence("s1", (Matcher("service", "checkout"),), T0, T0 + dt.timedelta(seconds=20))
    r = rule()
    state: dict[str, AlertInstance] = {}
    flags = []
    for i, value in enumerate([900, 900, 900]):
        ev = evaluate(r, one(value), state, T0 + i * STEP, [silence])
        state = ev.instances
        (inst,) = state.values()
        flags.append((inst.state, inst.silenced))
    assert flags == [(F, True), (F, True), (F, False)]


@pytest.mark.parametrize(
    ("matcher", "silenced"),
    [
        pytest.param(Matcher("service", "checkout"), True, id="equal"),
        pytest.param(Matcher("service", "cart"), False, id="equal-other"),
        pytest.param(Matcher("service", "check.*", "=~"), True, id="regex"),
        pytest.param(Matcher("service", "check", "=~"), False, id="regex-is-anchored"),
        pytest.param(Matcher("service", "cart", "!="), True, id="not-equal"),
        pytest.param(Matcher("alertname", "checkout-.*", "!~"), False, id="not-regex"),
    ],
)
def test_silence_matchers(matcher: Matcher, silenced: bool) -> None:
    silence = Silence("s", (matcher,), T0, T0 + dt.timedelta(hours=1))
    ev = evaluate(rule(), one(900), {}, T0, [silence])
    assert next(iter(ev.instances.values())).silenced is silenced


def test_annotations_are_templated_with_labels_and_value() -> None:
    r = rule(annotations={"summary": "p99 of {{ $labels.service }} is {{ $value }} ms"})
    ev = evaluate(r, one(912.5), {}, T0)
    assert next(iter(ev.instances.values())).annotations == {
        "summary": "p99 of checkout is 912.5 ms"
    }


def test_one_alert_per_label_set() -> None:
    r = rule(filters={})
    result = QueryResult(
        (
            Sample({"service": "a"}, 900.0),
            Sample({"service": "b"}, 100.0),
            Sample({"service": "c"}, 1000.0),
        )
    )
    ev = evaluate(r, result, {}, T0)
    assert sorted(i.labels["service"] for i in ev.instances.values() if i.state is F) == ["a", "c"]


def test_a_failed_query_changes_nothing() -> None:
    r = rule()
    first = evaluate(r, one(900), {}, T0)
    failed = evaluate(r, QueryResult(error="boom"), first.instances, T0 + STEP)
    assert failed.instances == first.instances
    assert failed.transitions == []


def _scale_rule(**overrides: Any) -> Rule:
    action = {
        "receiver": "asg",
        "target": "{{ $labels.service }}",
        "direction": "out",
        "step": 3,
        "cooldown": "5m",
    }
    action.update(overrides.pop("action", {}))
    return rule(actions=[action], **overrides)


def test_scaling_request_when_firing_with_a_stable_client_token() -> None:
    r = _scale_rule()
    ev = evaluate(r, one(900), {}, T0)
    (request,) = ev.scaling
    assert (request.target, request.action.direction, request.action.step) == ("checkout", "out", 3)
    assert ev.scaled == {"checkout": T0}
    # The same alert, episode and repeat give the same token; it fits ESS (<= 64 ASCII).
    again = evaluate(r, one(900), {}, T0)
    assert again.scaling[0].client_token == request.client_token
    assert len(request.client_token) <= 64 and request.client_token.isascii()


def test_scaling_repeats_only_after_the_cooldown_while_firing() -> None:
    r = _scale_rule()
    state: dict[str, AlertInstance] = {}
    last: dict[str, dt.datetime] = {}
    calls = []
    for i in range(41):  # 10 minutes of 15 s evaluations, always breaching
        now = T0 + i * STEP
        ev: Evaluation = evaluate(r, one(900), state, now, (), last)
        state = ev.instances
        last.update(ev.scaled)
        calls += [(now - T0).total_seconds() for _ in ev.scaling]
    assert calls == [0.0, 300.0, 600.0]
    tokens = set()
    # ... and each repeat has its own token (same episode, next sequence).
    for seq in (1, 2, 3):
        inst = next(iter(state.values()))
        from tracehouse.alerting.evaluator import ScalingRequest

        tokens.add(ScalingRequest(r.name, 0, r.actions[0], inst, "checkout", seq, 800).client_token)
    assert len(tokens) == 3


def test_no_scaling_for_a_silenced_alert() -> None:
    silence = Silence("s", (Matcher("service", "checkout"),), T0, T0 + dt.timedelta(hours=1))
    ev = evaluate(_scale_rule(), one(900), {}, T0, [silence])
    assert ev.scaling == []
    assert ev.notes == ["checkout: silenced, not scaled"]


def test_a_target_scaled_by_another_rule_is_in_cooldown() -> None:
    ev = evaluate(_scale_rule(), one(900), {}, T0, (), {"checkout": T0 - dt.timedelta(minutes=1)})
    assert ev.scaling == []
    assert ev.notes and ev.notes[0].startswith("checkout: in cooldown until")
