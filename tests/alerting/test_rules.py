"""Rules and receivers: the example rules file, validation errors that name the field, and
the file watcher (reload on change, keep the last valid rules on a bad edit)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import DATA
from tracehouse.alerting.rules import (
    RuleError,
    RulesFileWatcher,
    hold_evaluations,
    hold_seconds,
    parse_rules_file,
)

EXAMPLE = DATA / "alerting" / "rules.yaml"


def test_the_example_file_parses() -> None:
    book = parse_rules_file(EXAMPLE.read_text())
    assert [r.name for r in book.receivers] == ["autoscaler", "oncall"]
    rules = {r.name: r for r in book.rules}
    assert list(rules) == [
        "checkout-p99-high",
        "checkout-p99-low",
        "payment-errors",
        "slow-sql",
        "error-logs",
        "queue-depth",
    ]
    high = rules["checkout-p99-high"]
    assert (high.interval, high.evaluation_delay, high.window) == (15.0, 15.0, 60.0)
    assert hold_evaluations(high.for_) == 2
    assert hold_seconds(rules["checkout-p99-low"].for_) == 600.0
    assert high.actions[0].format == "ess" and high.actions[0].cooldown == 300.0
    assert rules["payment-errors"].keep_firing_for == 300.0
    assert book.receivers[0].group_wait == 10.0 and book.receivers[1].repeat_interval == 14400.0


def _with(path: str, value: Any) -> str:
    """The example with one field (``rules.0.interval``) replaced, or removed for None."""
    data = yaml.safe_load(EXAMPLE.read_text())
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is None:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return yaml.safe_dump(data)


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        pytest.param("rules.0.interval", "1s", "rules[0].interval", "at least 5s", id="interval"),
        pytest.param(
            "rules.0.interval", "soon", "rules[0].interval", "not a duration", id="bad-duration"
        ),
        pytest.param(
            "rules.0.condition", None, "rules[0].condition", "required", id="no-condition"
        ),
        pytest.param(
            "rules.0.condition",
            {"op": ">", "threshold": 1, "recovery_threshold": 5},
            "rules[0].condition",
            "ok side",
            id="recovery-on-the-wrong-side",
        ),
        pytest.param(
            "rules.0.condition",
            {"op": "==", "threshold": 1},
            "rules[0].condition.op",
            "",
            id="bad-op",
        ),
        pytest.param(
            "rules.0.group_by", ["pod"], "rules[0]", "group_by: 'pod'", id="unknown-group-label"
        ),
        pytest.param(
            "rules.0.filters",
            {"db_system": "x"},
            "rules[0]",
            "filters: 'db_system'",
            id="filter-of-another-kind",
        ),
        pytest.param("rules.0.for", -1, "rules[0].for", "negative", id="negative-for"),
        pytest.param("rules.0.quantile", 1.5, "rules[0].quantile", "", id="quantile"),
        pytest.param(
            "rules.0.receivers", ["pager"], "", "rules[0].receivers[0]", id="unknown-receiver"
        ),
        pytest.param(
            "rules.0.actions.0.scaling_rule_ari",
            None,
            "rules[0].actions[0]",
            "scaling_rule_ari",
            id="ess-without-ari",
        ),
        pytest.param("rules.0.actions.0.step", 0, "rules[0].actions[0].step", "", id="step-zero"),
        pytest.param("rules.5.query", None, "rules[5]", "query is required", id="sql-no-query"),
        pytest.param("rules.0.colour", "red", "rules[0].colour", "", id="unknown-field"),
        pytest.param(
            "receivers.0.secret", "hunter2", "receivers[0].secret", "whsec_", id="secret-format"
        ),
        pytest.param("receivers.0.url", "ftp://x", "receivers[0].url", "", id="url"),
        pytest.param("rules.1.name", "checkout-p99-high", "", "unique", id="duplicate-name"),
    ],
)
def test_invalid_rules_name_the_field(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules_file(_with(path, value))
    assert caught.value.field == field, str(caught.value)
    assert words in str(caught.value)


def test_not_yaml_or_not_a_mapping() -> None:
    with pytest.raises(RuleError, match="not valid YAML"):
        parse_rules_file("rules: [")
    with pytest.raises(RuleError, match="mapping"):
        parse_rules_file("- a\n- b\n")


def test_watcher_reloads_on_change_and_keeps_the_last_valid_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(EXAMPLE.read_text())
    watcher = RulesFileWatcher(path)
    assert len(watcher.current().rules) == 6 and watcher.error is None

    path.write_text(_with("rules", [yaml.safe_load(EXAMPLE.read_text())["rules"][2]]))
    os.utime(path, ns=(1, 1))  # a new modification time even within the clock's resolution
    assert [r.name for r in watcher.current().rules] == ["payment-errors"]

    path.write_text("rules: [")
    os.utime(path, ns=(2, 2))
    assert [r.name for r in watcher.current().rules] == ["payment-errors"]
    assert watcher.error is not None and "not valid YAML" in watcher.error

    path.unlink()
    assert [r.name for r in watcher.current().rules] == ["payment-errors"]
    assert watcher.error is not None and "cannot read" in watcher.error
