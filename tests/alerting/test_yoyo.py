"""The yo-yo scenario: load oscillating around the scale-out threshold for 30 minutes of
simulated time, evaluated every 15 s by a scale-out and a scale-in rule sharing one target.

Utilisation is demand / replicas: a scale-out lowers it, a scale-in raises it. With the
classic 70 % / 60 % misconfiguration the two rules keep undoing each other; the cooldown
per target bounds that to at most one scale-out and one scale-in per cooldown. With 75 % /
30 % (scale out fast, scale in slowly and far below) one scale-out settles it. A control run
without cooldown shows the scenario really does oscillate.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from typing import Any

import pytest

from tracehouse.alerting.evaluator import AlertInstance, QueryResult, Sample, evaluate
from tracehouse.alerting.rules import Rule

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
INTERVAL_S = 15
DURATION_S = 30 * 60
COOLDOWN_S = 300


def _rule(name: str, op: str, threshold: float, direction: str, hold: int, cooldown: str) -> Rule:
    spec: dict[str, Any] = {
        "name": name,
        "kind": "latency",  # the evaluator only sees the values the test feeds it
        "interval": f"{INTERVAL_S}s",
        "condition": {"op": op, "threshold": threshold},
        "for": hold,
        "actions": [
            {
                "receiver": "asg",
                "target": "web",
                "direction": direction,
                "step": 1,
                "min": 2,
                "max": 10,
                "cooldown": cooldown,
            }
        ],
    }
    return Rule.model_validate(spec)


def _demand(t: float) -> float:
    """Load in "replica-percent": 290 ± 30 over a 4-minute cycle, plus a slower swell."""
    return 290 + 30 * math.sin(2 * math.pi * t / 240) + 10 * math.sin(2 * math.pi * t / 900)


def simulate(out_at: float, in_at: float, cooldown: str) -> list[tuple[float, str]]:
    """(seconds, direction) of every scaling call over the 30 minutes."""
    scale_out = _rule("web-out", ">", out_at, "out", 2, cooldown)
    scale_in = _rule("web-in", "<", in_at, "in", 4, cooldown)
    replicas = 4
    states: dict[str, dict[str, AlertInstance]] = {"web-out": {}, "web-in": {}}
    last_scaled: dict[str, dt.datetime] = {}
    calls: list[tuple[float, str]] = []
    for step in range(DURATION_S // INTERVAL_S + 1):
        t = step * INTERVAL_S
        now = T0 + dt.timedelta(seconds=t)
        for rule in (scale_out, scale_in):
            utilisation = _demand(t) / replicas
            result = QueryResult((Sample({"service": "web"}, utilisation),))
            ev = evaluate(rule, result, states[rule.name], now, (), last_scaled)
            states[rule.name] = ev.instances
            last_scaled.update(ev.scaled)
            for request in ev.scaling:
                action = request.action
                delta = action.step if action.direction == "out" else -action.step
                replicas = max(action.min or 1, min(action.max or 100, replicas + delta))
                calls.append((float(t), action.direction))
    return calls


def _most_in_one_cooldown(calls: list[tuple[float, str]], direction: str) -> int:
    times = [t for t, d in calls if d == direction]
    return max((sum(1 for u in times if t <= u < t + COOLDOWN_S) for t in times), default=0)


@pytest.mark.parametrize(
    ("out_at", "in_at"),
    [pytest.param(70, 60, id="70-60-misconfigured"), pytest.param(75, 30, id="75-30")],
)
def test_at_most_one_scale_out_and_one_scale_in_per_cooldown(out_at: float, in_at: float) -> None:
    calls = simulate(out_at, in_at, f"{COOLDOWN_S}s")
    assert calls, "the load must trigger at least one scale-out"
    assert _most_in_one_cooldown(calls, "out") <= 1, calls
    assert _most_in_one_cooldown(calls, "in") <= 1, calls
    # Any two calls on the target are a cooldown apart, whatever their direction.
    times = [t for t, _ in calls]
    assert all(b - a >= COOLDOWN_S for a, b in itertools.pairwise(times)), calls


def test_well_separated_thresholds_settle_after_one_scale_out() -> None:
    assert simulate(75, 30, f"{COOLDOWN_S}s") == [(30.0, "out")]


def test_without_cooldown_the_misconfiguration_yo_yos() -> None:
    """The control: the same load and the 70/60 rules, no cooldown."""
    calls = simulate(70, 60, "0s")
    directions = [d for _, d in calls]
    flips = sum(1 for a, b in itertools.pairwise(directions) if a != b)
    assert flips >= 6, calls
    assert _most_in_one_cooldown(calls, "out") > 1
