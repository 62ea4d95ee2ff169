"""The alerting API under ``/api/v1`` (query role): rules, alerts, history, silences,
deliveries and dead letters, and the KEDA ``metrics-api`` pull endpoint.

Bad input is a 422 whose ``loc`` names the field; a rule of the rules file cannot be changed
through the API (409: edit the file).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import replace
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Body, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field, ValidationError

from tracehouse.access import Role, current_principal
from tracehouse.alerting import queries
from tracehouse.alerting.delivery import DeliveryStatus
from tracehouse.alerting.diagnoses import structured, visible
from tracehouse.alerting.dispatch import iso
from tracehouse.alerting.evaluator import AlertState, Matcher, Silence
from tracehouse.alerting.rules import (
    MetricAggregation,
    Rule,
    RuleError,
    check_references,
    parse_duration,
)
from tracehouse.alerting.store import AlertStore, OutboxEntry
from tracehouse.alerting.worker import RuleBook


def _invalid(loc: list[str | int], message: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": loc, "msg": message, "type": "value_error"}])


def _parse_time(parameter: str, value: str | None, default: dt.datetime) -> dt.datetime:
    if value is None:
        return default
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise _invalid(
                ["query", parameter], f"{value!r} is not RFC 3339 or epoch seconds"
            ) from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(number / 1000 if number >= 1e12 else number, dt.UTC)


class MatcherIn(BaseModel):
    name: str = Field(min_length=1)
    value: str
    op: Literal["=", "!=", "=~", "!~"] = "="


class SilenceIn(BaseModel):
    """A silence: alerts whose labels match every matcher are not notified (nor scaled)
    between ``starts_at`` (default now) and ``ends_at``."""

    matchers: list[MatcherIn] = Field(min_length=1)
    starts_at: dt.datetime | None = None
    ends_at: dt.datetime
    created_by: str = ""
    comment: str = ""


def _silence_out(s: Silence, created_by: str, comment: str, now: dt.datetime) -> dict[str, Any]:
    state = "active" if s.active(now) else ("pending" if now < s.starts_at else "expired")
    return {
        "id": s.id,
        "status": state,
        "matchers": [{"name": m.name, "value": m.value, "op": m.op} for m in s.matchers],
        "starts_at": iso(s.starts_at),
        "ends_at": iso(s.ends_at),
        "created_by": created_by,
        "comment": comment,
    }


def redact_url(url: str) -> str:
    """``url`` without the password of its userinfo (secrets are never echoed)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _delivery_out(e: OutboxEntry, with_body: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": e.id,
        "status": str(e.status),
        "kind": e.kind,
        "receiver": e.receiver,
        "group_key": e.group_key,
        "target": e.target,
        "attempts": e.attempts,
        "last_status_code": e.last_status_code or None,
        "last_error": e.last_error,
        "created_at": iso(e.created_at),
        "next_attempt_at": iso(e.next_attempt_at) if e.status is DeliveryStatus.PENDING else None,
        "delivered_at": iso(e.delivered_at) if e.delivered_at else None,
        "deadline": iso(e.deadline),
    }
    if with_body:
        out["url"] = redact_url(e.url)
        out["body"] = e.body
        out["alerts"] = e.alerts
    return out


def router(client: Any, rules_file: FilePath | None) -> APIRouter:
    """The alerting endpoints, bound to a ClickHouse client and the rules file."""
    store = AlertStore(client)
    book = RuleBook(store, rules_file)
    api = APIRouter(prefix="/api/v1", tags=["alerting"])

    def rule_out(rule: Rule, source: str, health: Any) -> dict[str, Any]:
        return {
            "name": rule.name,
            "source": source,
            "kind": rule.kind,
            "health": health.health if health else "unknown",
            "last_error": health.last_error if health else "",
            "last_evaluation": iso(health.last_evaluation) if health else None,
            "evaluation_ms": health.duration_ms if health else None,
            "series": health.series if health else None,
            "spec": rule.spec(),
        }

    def validated(rule_json: dict[str, Any]) -> Rule:
        try:
            rule = Rule.model_validate(rule_json)
        except ValidationError as exc:
            detail = [
                {
                    "loc": ["body", *e["loc"]],
                    "msg": str(e["msg"]).removeprefix("Value error, "),
                    "type": e["type"],
                }
                for e in exc.errors()
            ]
            raise HTTPException(422, detail=detail) from exc
        principal = current_principal()
        if rule.kind == "sql" and principal is not None and not principal.may(Role.ADMIN):
            # Expert SQL runs in the worker unscoped: it could read any service's data.
            raise HTTPException(
                403,
                detail=f"token {principal.name!r} may not create expert SQL rules "
                "(kind: sql reads every service's data): an admin token is needed",
            )
        try:
            check_references(rule, set(book.receivers()))
        except RuleError as exc:
            raise _invalid(
                ["body", *exc.field.replace("[", ".").replace("]", "").split(".")], exc.message
            ) from exc
        return rule

    @api.get("/alert-rules")
    def list_rules() -> dict[str, Any]:
        """Every rule (from the rules file and the API) with its health: ``ok``, ``err`` (the
        last evaluation failed, ``last_error`` says why) or ``unknown`` (not evaluated yet)."""
        health = store.health()
        file_rules = book.file_rules()
        api_rules = {r.name: r for r in store.rules()}
        out = [rule_out(r, "file", health.get(n)) for n, r in sorted(file_rules.items())]
        out += [
            rule_out(r, "api", health.get(n))
            for n, r in sorted(api_rules.items())
            if n not in file_rules
        ]
        return {"rules": out, "rules_file_error": book.file.error}

    @api.get("/alert-rules/{name}")
    def get_rule(name: Annotated[str, Path()]) -> dict[str, Any]:
        """One rule, its source and health."""
        health = store.health().get(name)
        if (rule := book.file_rules().get(name)) is not None:
            return rule_out(rule, "file", health)
        for rule in store.rules():
            if rule.name == name:
                return rule_out(rule, "api", health)
        raise HTTPException(404, f"no alert rule named {name!r}")

    @api.post("/alert-rules", status_code=201)
    def create_rule(rule_json: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        """Create a rule (the shape of a rule in the rules file). 409 when the name is taken."""
        rule = validated(rule_json)
        if rule.name in book.rules():
            raise HTTPException(409, f"an alert rule named {rule.name!r} exists: use PUT")
        store.put_rule(rule)
        return rule_out(rule, "api", None)

    @api.put("/alert-rules/{name}")
    def replace_rule(
        name: Annotated[str, Path()], rule_json: Annotated[dict[str, Any], Body()]
    ) -> dict[str, Any]:
        """Create or replace the rule ``name`` (the body's ``name`` must be the same)."""
        rule = validated(rule_json)
        if rule.name != name:
            raise _invalid(["body", "name"], f"{rule.name!r} differs from the path's {name!r}")
        if name in book.file_rules():
            raise HTTPException(409, f"{name!r} is defined in the rules file: edit the file")
        store.put_rule(rule)
        return rule_out(rule, "api", None)

    @api.delete("/alert-rules/{name}", status_code=204)
    def delete_rule(name: Annotated[str, Path()]) -> Response:
        """Delete an API rule; its alerts become inactive at the next evaluation."""
        if name in book.file_rules():
            raise HTTPException(409, f"{name!r} is defined in the rules file: edit the file")
        if name not in {r.name for r in store.rules()}:
            raise HTTPException(404, f"no alert rule named {name!r}")
        store.delete_rule(name)
        return Response(status_code=204)

    @api.get("/alerts")
    def list_alerts(
        state: Annotated[
            Literal["active", "firing", "pending", "resolved", "all"],
            Query(description="active = pending and firing"),
        ] = "active",
    ) -> dict[str, Any]:
        """Alerts by state, newest first, each with its labels, annotations, value, since
        when, exemplar trace ids and whether a silence covers it; alerts of ``insight``
        rules also with their structured ``diagnosis`` (null for the others)."""
        now = dt.datetime.now(dt.UTC)
        silences = [s for s, _, _ in store.silences() if s.active(now)]
        if state == "active":
            wanted = {AlertState.PENDING, AlertState.FIRING}
        elif state == "all":
            wanted = set(AlertState)
        else:
            wanted = {AlertState(state)}
        out: list[dict[str, Any]] = []
        for inst in store.instances():
            if inst.state not in wanted:
                continue
            out.append(
                {
                    "rule": inst.rule,
                    "state": str(inst.state),
                    "labels": dict(inst.labels),
                    "annotations": visible(inst.annotations),
                    "diagnosis": structured(inst.annotations),
                    "value": inst.value,
                    "active_at": iso(inst.active_at) if inst.active_at else None,
                    "fired_at": iso(inst.fired_at) if inst.fired_at else None,
                    "resolved_at": iso(inst.resolved_at) if inst.resolved_at else None,
                    "fingerprint": inst.fingerprint,
                    "exemplar_trace_ids": list(inst.exemplars),
                    "silenced": any(s.silences(inst.labels, now) for s in silences),
                }
            )
        out.sort(key=lambda a: str(a["fired_at"] or a["active_at"] or ""), reverse=True)
        return {"alerts": out}

    @api.get("/alerts/history")
    def history(
        start: Annotated[
            str | None, Query(description="RFC 3339 or epoch s; default end-1d")
        ] = None,
        end: Annotated[str | None, Query(description="RFC 3339 or epoch s; default now")] = None,
        rule: Annotated[str, Query(description="only this rule")] = "",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        """State changes of alerts in the range, newest first."""
        end_at = _parse_time("end", end, dt.datetime.now(dt.UTC))
        start_at = _parse_time("start", start, end_at - dt.timedelta(days=1))
        if start_at >= end_at:
            raise _invalid(["query", "start"], "start must be before end")
        entries = store.history(start_at, end_at, rule, limit)
        return {
            "history": [
                {
                    "at": iso(e.at),
                    "rule": e.rule,
                    "from": e.from_state,
                    "to": e.to_state,
                    "value": e.value,
                    "labels": e.labels,
                    "fingerprint": e.fingerprint,
                    "episode": e.episode,
                    "note": e.note,
                }
                for e in entries
            ]
        }

    # -- silences --------------------------------------------------------------------------

    def _save_silence(silence_id: str, body: SilenceIn) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        starts = body.starts_at or now
        starts = starts if starts.tzinfo else starts.replace(tzinfo=dt.UTC)
        ends = body.ends_at if body.ends_at.tzinfo else body.ends_at.replace(tzinfo=dt.UTC)
        if ends <= starts:
            raise _invalid(["body", "ends_at"], "ends_at must be after starts_at")
        for i, m in enumerate(body.matchers):
            if m.op in ("=~", "!~"):
                try:
                    re.compile(m.value)
                except re.error as exc:
                    raise _invalid(["body", "matchers", i, "value"], f"bad regex: {exc}") from exc
        silence = Silence(
            silence_id, tuple(Matcher(m.name, m.value, m.op) for m in body.matchers), starts, ends
        )
        store.put_silence(silence, body.created_by, body.comment)
        return _silence_out(silence, body.created_by, body.comment, now)

    def _find_silence(silence_id: str) -> tuple[Silence, str, str]:
        for found in store.silences():
            if found[0].id == silence_id:
                return found
        raise HTTPException(404, f"no silence {silence_id!r}")

    @api.get("/silences")
    def list_silences() -> dict[str, Any]:
        """Every silence with its status (pending, active, expired)."""
        now = dt.datetime.now(dt.UTC)
        return {"silences": [_silence_out(s, by, c, now) for s, by, c in store.silences()]}

    @api.post("/silences", status_code=201)
    def create_silence(body: SilenceIn) -> dict[str, Any]:
        """Create a silence; the answer carries its ``id``."""
        return _save_silence(uuid.uuid4().hex, body)

    @api.get("/silences/{silence_id}")
    def get_silence(silence_id: str) -> dict[str, Any]:
        s, by, comment = _find_silence(silence_id)
        return _silence_out(s, by, comment, dt.datetime.now(dt.UTC))

    @api.put("/silences/{silence_id}")
    def update_silence(silence_id: str, body: SilenceIn) -> dict[str, Any]:
        """Change a silence's matchers, times or comment."""
        _find_silence(silence_id)
        return _save_silence(silence_id, body)

    @api.delete("/silences/{silence_id}")
    def expire_silence(silence_id: str) -> dict[str, Any]:
        """Expire a silence now (it stays listed as expired)."""
        s, by, comment = _find_silence(silence_id)
        now = dt.datetime.now(dt.UTC)
        expired = replace(s, ends_at=max(now, s.starts_at + dt.timedelta(milliseconds=1)))
        store.put_silence(expired, by, comment)
        return _silence_out(expired, by, comment, now)

    # -- deliveries ------------------------------------------------------------------------

    @api.get("/alert-deliveries")
    def list_deliveries(
        status: Annotated[
            Literal["pending", "delivered", "dead"] | None,
            Query(description="only this status; dead = the dead letters"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
    ) -> dict[str, Any]:
        """Notifications and scaling calls in the outbox, newest first."""
        return {"deliveries": [_delivery_out(e) for e in store.deliveries(status or "", limit)]}

    @api.get("/alert-deliveries/{delivery_id}")
    def get_delivery(delivery_id: str) -> dict[str, Any]:
        """One delivery with its URL and body."""
        entry = store.delivery(delivery_id)
        if entry is None:
            raise HTTPException(404, f"no delivery {delivery_id!r}")
        return _delivery_out(entry, with_body=True)

    @api.post("/alert-deliveries/{delivery_id}/replay", status_code=202)
    def replay(delivery_id: str) -> dict[str, Any]:
        """Queue a dead letter again: same ``webhook-id`` and body, attempts from zero, a new
        deadline as long as the first one. 409 unless it is dead."""
        entry = store.delivery(delivery_id)
        if entry is None:
            raise HTTPException(404, f"no delivery {delivery_id!r}")
        if entry.status is not DeliveryStatus.DEAD:
            raise HTTPException(409, f"delivery {delivery_id!r} is {entry.status}, not dead")
        now = dt.datetime.now(dt.UTC)
        again = replace(
            entry,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            deadline=now + (entry.deadline - entry.created_at),
            last_error="replayed",
        )
        store.put_outbox([again])
        return _delivery_out(again)

    # -- scaling ---------------------------------------------------------------------------

    @api.get("/scaling/metrics")
    def scaling_metrics(
        service: Annotated[str, Query(min_length=1, description="service.name")],
        metric: Annotated[
            Literal["p99", "rps", "error_rate"] | None,
            Query(description="from the service's entry spans; or give metric_name"),
        ] = None,
        metric_name: Annotated[
            str | None,
            Query(
                min_length=1,
                description="an OTLP metric of the service instead, e.g. system.cpu.utilization",
            ),
        ] = None,
        agg: Annotated[
            MetricAggregation | None,
            Query(description="with metric_name: avg, max, min, sum, rate, p95, p99"),
        ] = None,
        window: Annotated[str, Query(description="e.g. 60s, 5m; default 60s")] = "60s",
    ) -> dict[str, Any]:
        """For KEDA's ``metrics-api`` scaler (``valueLocation: value``): the service's p99 in
        ms, requests per second or error rate (0..1) over the window, from its entry spans;
        or, with ``metric_name``, that OTLP metric of the service reduced over the window by
        ``agg`` (as ``/api/v1/metrics/query``; 0 without points)."""
        try:
            seconds = parse_duration(window)
        except ValueError as exc:
            raise _invalid(["query", "window"], str(exc)) from exc
        if not 1 <= seconds <= 86400:
            raise _invalid(["query", "window"], "window must be between 1s and 1d")
        if (metric is None) == (metric_name is None):
            raise _invalid(["query", "metric"], "give exactly one of metric or metric_name")
        now = dt.datetime.now(dt.UTC)
        if metric is not None:
            if agg is not None:
                raise _invalid(["query", "agg"], "agg goes with metric_name")
            return {"value": queries.scaling_metric(client, service, metric, seconds, now)}
        assert metric_name is not None
        rule = Rule.model_validate(
            {
                "name": "keda",
                "kind": "metric",
                "metric": metric_name,
                "agg": agg,
                "filters": {"service.name": service},
                "window": seconds,
                "condition": {"op": ">", "threshold": 0},
            }
        )
        result = queries.run(client, rule, now)
        if result.error is not None:
            raise _invalid(["query", "agg"], result.error)
        values = [s.value for s in result.samples if s.value is not None]
        return {"value": round(values[0], 6) if values else 0.0}

    return api
