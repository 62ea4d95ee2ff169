"""Alert rules and receivers: their validated shape, the YAML rules file, and templating.

A rules file (setting ``alert_rules_file``) holds ``receivers:`` (webhooks) and ``rules:``;
rules can also be created through ``/api/v1/alert-rules`` (same shape, one rule per request).
docs/alerting.md is the reference with examples. Validation errors name the field
(``rules[2].condition.threshold``), in the API as a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
MIN_INTERVAL_S = 5.0
DEFAULT_INTERVAL_S = 15.0


def parse_duration(value: Any) -> float:
    """Seconds from ``15s``, ``2m``, ``1h``, ``500ms``, ``1d`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 15s, 2m, 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration: use seconds or text like 15s, 2m, 1h")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r}: a duration must be finite and not negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _parse_hold(value: Any) -> int | str:
    """``for`` / ``recover_for``: an int is a number of consecutive evaluations, a duration
    text is a time (kept as ``<seconds>s``)."""
    if isinstance(value, bool):
        raise ValueError("use a number of evaluations (2) or a duration (30s)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a number of evaluations cannot be negative")
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return f"{parse_duration(value):g}s"


Hold = Annotated[int | str, BeforeValidator(_parse_hold)]


def hold_evaluations(hold: int | str) -> int | None:
    return hold if isinstance(hold, int) else None


def hold_seconds(hold: int | str) -> float | None:
    return parse_duration(hold) if isinstance(hold, str) else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


Op = Literal[">", ">=", "<", "<="]


def compare(value: float, op: str, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    return value <= threshold


class Condition(_Strict):
    """``value <op> threshold`` breaches. While firing, the alert stays firing as long as
    ``value <op> recovery_threshold`` (hysteresis); without one, the threshold itself."""

    op: Op = ">"
    threshold: float
    recovery_threshold: float | None = None

    @model_validator(mode="after")
    def _recovery_on_the_ok_side(self) -> Condition:
        r = self.recovery_threshold
        if r is None:
            return self
        if (self.op in (">", ">=") and r > self.threshold) or (
            self.op in ("<", "<=") and r < self.threshold
        ):
            raise ValueError(
                f"recovery_threshold ({r:g}) must be on the ok side of threshold "
                f"({self.threshold:g}) for op {self.op!r}"
            )
        return self


class ScaleAction(_Strict):
    """A scaling call made when the alert fires (and again after each cooldown while it keeps
    firing, unless ``repeat`` is false), sent through ``receiver``."""

    type: Literal["scale"] = "scale"
    receiver: str
    target: str = Field(description="what is scaled; templated, e.g. {{ $labels.service }}")
    direction: Literal["out", "in"]
    step: int = Field(ge=1)
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)
    cooldown: Duration = 300.0
    repeat: bool = True
    format: Literal["generic", "ess"] = "generic"
    scaling_rule_ari: str | None = None
    region_id: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ScaleAction:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if self.format == "ess" and not self.scaling_rule_ari:
            raise ValueError("scaling_rule_ari is required for format 'ess'")
        return self


Kind = Literal[
    "latency",
    "error_rate",
    "call_rate",
    "sql_latency",
    "sql_slow_calls",
    "log_count",
    "metric",
    "sql",
    "insight",
]
MetricAggregation = Literal["avg", "max", "min", "sum", "rate", "p95", "p99"]
# Labels each kind can filter and group by (filters: exact match; `body_contains` substring).
KIND_LABELS: dict[str, tuple[str, ...]] = {
    "service": ("service", "span_kind"),
    "operation": ("service", "operation", "span_kind"),
    "edge": ("source", "target", "type"),
    "sql": ("service", "db_system", "db_namespace", "fingerprint"),
    "log": ("service", "severity"),
    "insight": ("service", "operation", "insight_kind"),
}
LOG_FILTERS = ("service", "severity", "min_severity_number", "body_contains")
INSIGHT_FILTERS = ("service", "operation", "insight_kind", "min_ratio")
INSIGHT_KINDS = ("latency", "error_rate")
# Kind insight: the window covers the insights job's cooldown (15 min: an increase that lasts
# is raised again after it) with margin, so a lasting problem keeps its alert firing.
INSIGHT_WINDOW_S = 1200.0
DEFAULT_DIAGNOSIS_TIMEOUT_S = 30.0
# Annotations kind insight sets itself (the diagnosis); a rule cannot define them.
INSIGHT_ANNOTATIONS = ("insight", "diagnosis", "diagnosis_url")
# Fields that mean nothing for kind insight (it counts insight events, not spans): they must
# keep their defaults (spec() writes every field, so "given" cannot be told from "default").
_NOT_FOR_INSIGHT = {"scope": "service", "quantile": 0.99, "span_kind": "entry", "min_calls": 0}


def _insight_defaults(data: Any) -> Any:
    """Kind insight: the defaults that differ (group by service, fire on any insight, a window
    as long as the insights' cooldown)."""
    if not isinstance(data, dict) or data.get("kind") != "insight":
        return data
    out = dict(data)
    out.setdefault("group_by", ["service"])
    out.setdefault("condition", {"op": ">", "threshold": 0})
    out.setdefault("window", INSIGHT_WINDOW_S)
    filters = out.get("filters")
    if isinstance(filters, dict) and isinstance(filters.get("min_ratio"), int | float):
        # a number in YAML (min_ratio: 2); filters are text
        out["filters"] = {**filters, "min_ratio": str(filters["min_ratio"])}
    return out


class Rule(_Strict):
    """One alert rule (see docs/alerting.md)."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: Kind
    scope: Literal["service", "operation", "edge"] = "service"
    quantile: float = Field(default=0.99, gt=0, lt=1)
    span_kind: Literal["entry", "server", "client", "producer", "consumer", "internal", "all"] = (
        "entry"
    )
    filters: dict[str, str] = Field(default_factory=dict)
    group_by: list[str] = Field(default_factory=list)
    query: str | None = None
    # kind metric: an OTLP metric's name and how its points are reduced over the window
    # (default as /api/v1/metrics/query: rate for counters, p95 for histograms, else avg);
    # filters and group_by name point or resource attributes (service.name: the service).
    metric: str | None = Field(default=None, min_length=1)
    agg: MetricAggregation | None = None
    window: Duration = 60.0
    interval: Duration = DEFAULT_INTERVAL_S
    evaluation_delay: Duration = 0.0
    condition: Condition
    for_: Hold = Field(default=0, alias="for")
    recover_for: Hold = 1
    keep_firing_for: Duration = 0.0
    no_data: Literal["ok", "alert", "keep"] = "ok"
    min_calls: int = Field(default=0, ge=0)
    # kind insight: how long the diagnosis attached to a firing alert may take
    diagnosis_timeout: Duration = DEFAULT_DIAGNOSIS_TIMEOUT_S
    severity: str = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    receivers: list[str] = Field(default_factory=list)
    actions: list[ScaleAction] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_kind(cls, data: Any) -> Any:
        return _insight_defaults(data)

    @field_validator("diagnosis_timeout")
    @classmethod
    def _diagnosis_timeout(cls, value: float) -> float:
        if value <= 0 or value > 600:
            raise ValueError("diagnosis_timeout must be more than 0 and at most 10m")
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < MIN_INTERVAL_S:
            raise ValueError(f"interval must be at least {MIN_INTERVAL_S:g}s, got {value:g}s")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: float) -> float:
        if value <= 0 or value > 86400:
            raise ValueError("window must be more than 0 and at most 1d")
        return value

    @property
    def label_space(self) -> tuple[str, ...]:
        """The labels this rule's query can filter and group by."""
        if self.kind in ("sql_latency", "sql_slow_calls"):
            return KIND_LABELS["sql"]
        if self.kind == "log_count":
            return KIND_LABELS["log"]
        if self.kind == "insight":
            return KIND_LABELS["insight"]
        return KIND_LABELS[self.scope]

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.kind == "sql":
            if not self.query or not self.query.strip():
                raise ValueError("query is required for kind 'sql'")
            if self.filters or self.group_by:
                raise ValueError("kind 'sql' takes no filters or group_by: the query has them")
            return self
        if self.query is not None:
            raise ValueError(f"query is only for kind 'sql', not {self.kind!r}")
        if self.kind == "metric":
            if self.metric is None:
                raise ValueError("metric (the metric's name) is required for kind 'metric'")
            for key in [*self.filters, *self.group_by]:
                if not key.strip():
                    raise ValueError("filters and group_by of kind 'metric' name attributes")
            return self
        if self.metric is not None or self.agg is not None:
            raise ValueError(f"metric and agg are only for kind 'metric', not {self.kind!r}")
        if self.kind == "insight":
            self._check_insight()
        elif self.diagnosis_timeout != DEFAULT_DIAGNOSIS_TIMEOUT_S:
            raise ValueError(f"diagnosis_timeout is only for kind 'insight', not {self.kind!r}")
        if self.kind == "log_count":
            allowed: tuple[str, ...] = LOG_FILTERS
        elif self.kind == "insight":
            allowed = INSIGHT_FILTERS
        else:
            allowed = self.label_space
        for key in self.filters:
            if key not in allowed:
                raise ValueError(
                    f"filters: {key!r} is not a filter of {self._kind_text}: "
                    f"use {', '.join(allowed)}"
                )
        for label in self.group_by:
            if label not in self.label_space:
                raise ValueError(
                    f"group_by: {label!r} is not a label of {self._kind_text}: "
                    f"use {', '.join(self.label_space)}"
                )
        if self.kind.startswith("sql_") and self.scope != "service":
            raise ValueError(f"scope: kind {self.kind!r} reads database calls, scope service")
        return self

    @property
    def _kind_text(self) -> str:
        if self.kind == "insight":
            return "kind 'insight'"
        return f"kind {self.kind!r} (scope {self.scope!r})"

    def _check_insight(self) -> None:
        for name, default in _NOT_FOR_INSIGHT.items():
            if getattr(self, name) != default:
                raise ValueError(
                    f"{name}: kind 'insight' counts insight events, it takes no {name} "
                    "(filters: service, operation, insight_kind, min_ratio)"
                )
        if self.no_data != "ok":
            raise ValueError(
                "no_data: kind 'insight' fires while insights exist; a window without any is "
                "ok (use no_data: ok)"
            )
        for name in self.annotations:
            if name in INSIGHT_ANNOTATIONS or name.startswith("__"):
                raise ValueError(
                    f"annotations: {name!r} is set by kind 'insight' (the diagnosis) or "
                    "reserved (__): use another name"
                )
        kind = self.filters.get("insight_kind")
        if kind is not None and kind not in INSIGHT_KINDS:
            raise ValueError(
                f"filters: insight_kind {kind!r} is not an insight kind: use "
                f"{', '.join(INSIGHT_KINDS)}"
            )
        ratio = self.filters.get("min_ratio")
        if ratio is not None:
            try:
                number = float(ratio)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number <= 0:
                raise ValueError(
                    f"filters: min_ratio {ratio!r} must be a number above 0 (2: the value at "
                    "least doubled)"
                )

    def spec(self) -> dict[str, Any]:
        """The rule as JSON-compatible data, as it is stored and read back."""
        return self.model_dump(mode="json", by_alias=True)


def _check_secret(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("whsec_"):
        raise ValueError("secret must be whsec_ followed by base64 (Standard Webhooks)")
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("secret: the part after whsec_ is not valid base64") from exc
    if not 24 <= len(key) <= 64:
        raise ValueError(f"secret: the key is {len(key)} bytes, Standard Webhooks wants 24..64")
    return value


class Receiver(_Strict):
    """A webhook: where notifications of the rules naming it go, how they are grouped, signed,
    and retried."""

    name: str = Field(pattern=NAME_PATTERN)
    url: str = Field(pattern=r"^https?://\S+$")
    secret: Annotated[str | None, BeforeValidator(_check_secret)] = None
    headers: dict[str, str] = Field(default_factory=dict)
    body_template: str | None = None
    send_resolved: bool = True
    group_by: list[str] = Field(default_factory=lambda: ["alertname"])
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 4 * 3600.0
    timeout: Duration = 10.0
    deadline: Duration = 600.0
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0

    @model_validator(mode="after")
    def _check(self) -> Receiver:
        if self.timeout <= 0:
            raise ValueError("timeout must be more than 0")
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_initial must be > 0 and at most backoff_max")
        return self


class RulesFile(_Strict):
    receivers: list[Receiver] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> RulesFile:
        names = [r.name for r in self.receivers]
        if len(set(names)) != len(names):
            raise ValueError("receivers: names must be unique")
        rule_names = [r.name for r in self.rules]
        if len(set(rule_names)) != len(rule_names):
            raise ValueError("rules: names must be unique")
        for index, rule in enumerate(self.rules):
            check_references(rule, set(names), f"rules[{index}].")
        return self


class RuleError(ValueError):
    """A rule or rules file is invalid; ``field`` names where (``rules[0].condition``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def check_references(rule: Rule, receivers: set[str], prefix: str = "") -> None:
    """RuleError when the rule names a receiver that is not defined."""
    for i, name in enumerate(rule.receivers):
        if name not in receivers:
            raise RuleError(f"{prefix}receivers[{i}]", f"no receiver named {name!r}")
    for i, action in enumerate(rule.actions):
        if action.receiver not in receivers:
            raise RuleError(
                f"{prefix}actions[{i}].receiver", f"no receiver named {action.receiver!r}"
            )


def error_field(error: ValidationError) -> tuple[str, str]:
    """The first error of a validation as (``a[0].b``, message)."""
    first = error.errors()[0]
    path = ""
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path, str(first["msg"]).removeprefix("Value error, ")


def parse_rules_file(text: str) -> RulesFile:
    """The receivers and rules of a rules file's YAML text; RuleError names the field."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RuleError("", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RuleError("", "the rules file must be a mapping with receivers: and rules:")
    try:
        return RulesFile.model_validate(data)
    except ValidationError as exc:
        raise RuleError(*error_field(exc)) from exc
    except RuleError:
        raise


class RulesFileWatcher:
    """The rules file, read again when its modification time or size changes. An invalid new
    version is reported (``error``) and the last valid one kept."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.error: str | None = None
        self._stamp: tuple[int, int] | None = None
        self._current = RulesFile()

    def current(self) -> RulesFile:
        if self.path is None:
            return self._current
        try:
            stat = self.path.stat()
        except OSError as exc:
            self.error = f"cannot read alert rules file {self.path}: {exc}"
            return self._current
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._current = parse_rules_file(self.path.read_text())
                self.error = None
            except (OSError, RuleError) as exc:
                self.error = f"alert rules file {self.path}: {exc} (the previous rules stay)"
        return self._current


_TEMPLATE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")


def render_template(text: str, labels: Mapping[str, str], value: float | None) -> str:
    """``{{ $labels.name }}``, ``{{ $value }}`` (and Prometheus' ``$labels.name`` spelling
    without braces is not supported) replaced; unknown names become empty."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "$value":
            return "" if value is None else f"{value:g}"
        if name.startswith("$labels."):
            return labels.get(name.removeprefix("$labels."), "")
        return match.group(0)

    return _TEMPLATE.sub(one, text)


def render_body(template: str, context: Mapping[str, Any]) -> str:
    """A receiver's custom body: ``{{ path.to.field }}`` from the Alertmanager payload
    (``{{ status }}``, ``{{ commonLabels.service }}``, ``{{ alerts.0.labels.alertname }}``);
    strings are inserted as they are, everything else as JSON; unknown paths become empty."""

    def lookup(path: str) -> Any:
        node: Any = context
        for part in path.split("."):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, Sequence) and not isinstance(node, str) and part.isdigit():
                index = int(part)
                node = node[index] if index < len(node) else None
            else:
                return None
        return node

    def one(match: re.Match[str]) -> str:
        found = lookup(match.group(1))
        if found is None:
            return ""
        return found if isinstance(found, str) else json.dumps(found, separators=(",", ":"))

    return _TEMPLATE.sub(one, template)
