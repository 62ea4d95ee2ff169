"""Alerting state in ClickHouse (migration 0006): API rules, rule health, alert instances,
history, silences and the notification outbox.

Mutable rows are re-inserted with a higher ``Version`` and read with ``FINAL``, so the latest
row of a key wins; a restarted worker reads its alerts and what it last sent back from here.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tracehouse.alerting.delivery import DeliveryStatus
from tracehouse.alerting.dispatch import Outgoing, SentGroup
from tracehouse.alerting.evaluator import (
    AlertInstance,
    AlertState,
    Matcher,
    Silence,
    Transition,
)
from tracehouse.alerting.rules import Rule

RULES_SQL = """
SELECT Name, Spec FROM tracehouse_alert_rules FINAL WHERE Deleted = 0 ORDER BY Name
"""
HEALTH_SQL = """
SELECT Name, Health, LastError, LastEvaluation, DurationMs, Series
FROM tracehouse_alert_rule_health FINAL
"""
_STATE_COLUMNS = (
    "Rule",
    "Fingerprint",
    "Labels",
    "Annotations",
    "State",
    "Value",
    "ActiveAt",
    "FiredAt",
    "ResolvedAt",
    "LastBreachAt",
    "RecoveringSince",
    "Breaches",
    "Recoveries",
    "Episode",
    "Actions",
    "Exemplars",
    "LastEvaluation",
    "Version",
)
STATES_SQL = f"""
SELECT {", ".join(_STATE_COLUMNS[:-1])}
FROM tracehouse_alert_state FINAL
WHERE State != 'inactive'
ORDER BY Rule, Fingerprint
"""
HISTORY_SQL = """
SELECT At, Rule, Fingerprint, Labels, FromState, ToState, Value, Episode, Note
FROM tracehouse_alert_history
WHERE At >= {start:DateTime64(3)} AND At < {end:DateTime64(3)}
  AND ({rule:String} = '' OR Rule = {rule:String})
ORDER BY At DESC, Rule, Fingerprint
LIMIT {limit:UInt32}
"""
SILENCES_SQL = """
SELECT Id, Matchers, StartsAt, EndsAt, CreatedBy, Comment
FROM tracehouse_silences FINAL
ORDER BY StartsAt DESC, Id
"""
_OUTBOX_COLUMNS = (
    "Id",
    "Kind",
    "Receiver",
    "GroupKey",
    "Target",
    "Status",
    "Url",
    "Body",
    "Alerts",
    "CreatedAt",
    "Deadline",
    "NextAttemptAt",
    "Attempts",
    "LastStatusCode",
    "LastError",
    "DeliveredAt",
    "Version",
)
_OUTBOX_SELECT = ", ".join(_OUTBOX_COLUMNS[:-1])
OUTBOX_DUE_SQL = f"""
SELECT {_OUTBOX_SELECT} FROM tracehouse_alert_outbox FINAL
WHERE Status = 'pending' AND NextAttemptAt <= {{now:DateTime64(3)}}
ORDER BY NextAttemptAt, Id
LIMIT {{limit:UInt32}}
"""
OUTBOX_LIST_SQL = f"""
SELECT {_OUTBOX_SELECT} FROM tracehouse_alert_outbox FINAL
WHERE ({{status:String}} = '' OR Status = {{status:String}})
ORDER BY CreatedAt DESC, Id
LIMIT {{limit:UInt32}}
"""
OUTBOX_GET_SQL = f"""
SELECT {_OUTBOX_SELECT} FROM tracehouse_alert_outbox FINAL WHERE Id = {{id:String}}
"""
OUTBOX_IDS_SQL = """
SELECT Id FROM tracehouse_alert_outbox FINAL WHERE has({ids:Array(String)}, Id)
"""
# What each group was last sent (alert notifications).
LAST_SENT_SQL = """
SELECT GroupKey, max(CreatedAt) AS at, argMax(Alerts, CreatedAt) AS alerts
FROM tracehouse_alert_outbox FINAL
WHERE Kind = 'alerts'
GROUP BY GroupKey
"""
# When each scaling target was last scaled (cooldowns).
LAST_SCALED_SQL = """
SELECT Target, max(CreatedAt) FROM tracehouse_alert_outbox FINAL
WHERE Kind = 'scaling' GROUP BY Target
"""


def _version() -> int:
    return time.time_ns()


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _req_utc(value: Any) -> dt.datetime:
    moment = _utc(value)
    assert moment is not None
    return moment


@dataclass(frozen=True)
class RuleHealth:
    name: str
    health: str  # ok | err
    last_error: str
    last_evaluation: dt.datetime
    duration_ms: float
    series: int


@dataclass(frozen=True)
class HistoryEntry:
    at: dt.datetime
    rule: str
    fingerprint: str
    labels: dict[str, str]
    from_state: str
    to_state: str
    value: float | None
    episode: str
    note: str


@dataclass(frozen=True)
class OutboxEntry:
    """One notification in the outbox."""

    id: str
    kind: str
    receiver: str
    group_key: str
    target: str
    status: DeliveryStatus
    url: str
    body: str
    alerts: dict[str, str]
    created_at: dt.datetime
    deadline: dt.datetime
    next_attempt_at: dt.datetime
    attempts: int
    last_status_code: int
    last_error: str
    delivered_at: dt.datetime | None

    def row(self) -> list[Any]:
        return [
            self.id,
            self.kind,
            self.receiver,
            self.group_key,
            self.target,
            str(self.status),
            self.url,
            self.body,
            self.alerts,
            self.created_at,
            self.deadline,
            self.next_attempt_at,
            self.attempts,
            self.last_status_code,
            self.last_error,
            self.delivered_at,
            _version(),
        ]


def _outbox(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(
        id=row[0],
        kind=row[1],
        receiver=row[2],
        group_key=row[3],
        target=row[4],
        status=DeliveryStatus(row[5]),
        url=row[6],
        body=row[7],
        alerts=dict(row[8]),
        created_at=_req_utc(row[9]),
        deadline=_req_utc(row[10]),
        next_attempt_at=_req_utc(row[11]),
        attempts=int(row[12]),
        last_status_code=int(row[13]),
        last_error=row[14],
        delivered_at=_utc(row[15]),
    )


class AlertStore:
    """Reads and writes the alerting tables through one ClickHouse client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    # -- rules (created through the API) -------------------------------------------------

    def rules(self) -> list[Rule]:
        """The API's rules; a stored spec that no longer validates is skipped."""
        out = []
        for _, spec in self._client.query(RULES_SQL).result_rows:
            try:
                out.append(Rule.model_validate(json.loads(spec)))
            except ValueError:
                continue
        return out

    def put_rule(self, rule: Rule) -> None:
        self._client.insert(
            "tracehouse_alert_rules",
            [[rule.name, json.dumps(rule.spec()), 0, dt.datetime.now(dt.UTC), _version()]],
            column_names=["Name", "Spec", "Deleted", "UpdatedAt", "Version"],
        )

    def delete_rule(self, name: str) -> None:
        self._client.insert(
            "tracehouse_alert_rules",
            [[name, "", 1, dt.datetime.now(dt.UTC), _version()]],
            column_names=["Name", "Spec", "Deleted", "UpdatedAt", "Version"],
        )

    # -- health ----------------------------------------------------------------------------

    def put_health(self, entries: Iterable[RuleHealth]) -> None:
        rows = [
            [h.name, h.health, h.last_error, h.last_evaluation, h.duration_ms, h.series, _version()]
            for h in entries
        ]
        if rows:
            self._client.insert(
                "tracehouse_alert_rule_health",
                rows,
                column_names=[
                    "Name",
                    "Health",
                    "LastError",
                    "LastEvaluation",
                    "DurationMs",
                    "Series",
                    "Version",
                ],
            )

    def health(self) -> dict[str, RuleHealth]:
        return {
            r[0]: RuleHealth(r[0], r[1], r[2], _req_utc(r[3]), float(r[4]), int(r[5]))
            for r in self._client.query(HEALTH_SQL).result_rows
        }

    # -- alert instances -------------------------------------------------------------------

    def put_instances(self, instances: Iterable[AlertInstance]) -> None:
        rows = [
            [
                i.rule,
                i.fingerprint,
                dict(i.labels),
                dict(i.annotations),
                str(i.state),
                i.value,
                i.active_at,
                i.fired_at,
                i.resolved_at,
                i.last_breach_at,
                i.recovering_since,
                i.breaches,
                i.recoveries,
                i.episode,
                i.actions,
                list(i.exemplars),
                i.last_evaluation or dt.datetime.now(dt.UTC),
                _version(),
            ]
            for i in instances
        ]
        if rows:
            self._client.insert("tracehouse_alert_state", rows, column_names=list(_STATE_COLUMNS))

    def instances(self) -> list[AlertInstance]:
        """Every instance that is pending, firing or resolved."""
        return [
            AlertInstance(
                rule=r[0],
                fingerprint=r[1],
                labels=dict(r[2]),
                annotations=dict(r[3]),
                state=AlertState(r[4]),
                value=r[5],
                active_at=_utc(r[6]),
                fired_at=_utc(r[7]),
                resolved_at=_utc(r[8]),
                last_breach_at=_utc(r[9]),
                recovering_since=_utc(r[10]),
                breaches=int(r[11]),
                recoveries=int(r[12]),
                episode=r[13],
                actions=int(r[14]),
                exemplars=tuple(r[15]),
                last_evaluation=_utc(r[16]),
            )
            for r in self._client.query(STATES_SQL).result_rows
        ]

    def forget_rule(self, name: str, instances: Iterable[AlertInstance]) -> None:
        """Mark the instances of a removed rule inactive."""
        now = dt.datetime.now(dt.UTC)
        self.put_instances(
            replace(i, state=AlertState.INACTIVE, last_evaluation=now)
            for i in instances
            if i.rule == name
        )

    # -- history ---------------------------------------------------------------------------

    def add_history(self, transitions: Iterable[Transition]) -> None:
        rows = [
            [
                t.at,
                t.instance.rule,
                t.instance.fingerprint,
                dict(t.instance.labels),
                str(t.from_state),
                str(t.to_state),
                t.instance.value,
                t.instance.episode,
                t.note,
            ]
            for t in transitions
        ]
        if rows:
            self._client.insert(
                "tracehouse_alert_history",
                rows,
                column_names=[
                    "At",
                    "Rule",
                    "Fingerprint",
                    "Labels",
                    "FromState",
                    "ToState",
                    "Value",
                    "Episode",
                    "Note",
                ],
            )

    def history(
        self, start: dt.datetime, end: dt.datetime, rule: str = "", limit: int = 1000
    ) -> list[HistoryEntry]:
        rows = self._client.query(
            HISTORY_SQL,
            parameters={"start": start, "end": end, "rule": rule, "limit": limit},
        ).result_rows
        return [
            HistoryEntry(_req_utc(r[0]), r[1], r[2], dict(r[3]), r[4], r[5], r[6], r[7], r[8])
            for r in rows
        ]

    # -- silences --------------------------------------------------------------------------

    def silences(self) -> list[tuple[Silence, str, str]]:
        """Every silence (also expired ones) with who created it and why."""
        out = []
        for r in self._client.query(SILENCES_SQL).result_rows:
            matchers = tuple(Matcher(**m) for m in json.loads(r[1]))
            out.append((Silence(r[0], matchers, _req_utc(r[2]), _req_utc(r[3])), r[4], r[5]))
        return out

    def put_silence(self, silence: Silence, created_by: str, comment: str) -> None:
        matchers = [{"name": m.name, "value": m.value, "op": m.op} for m in silence.matchers]
        self._client.insert(
            "tracehouse_silences",
            [
                [
                    silence.id,
                    json.dumps(matchers),
                    silence.starts_at,
                    silence.ends_at,
                    created_by,
                    comment,
                    _version(),
                ]
            ],
            column_names=[
                "Id",
                "Matchers",
                "StartsAt",
                "EndsAt",
                "CreatedBy",
                "Comment",
                "Version",
            ],
        )

    # -- outbox ----------------------------------------------------------------------------

    def enqueue(self, outgoing: Sequence[Outgoing], now: dt.datetime) -> list[OutboxEntry]:
        """Put notifications in the outbox as pending (ids already there are skipped, so the
        same scaling call is never queued twice); returns the entries added."""
        if not outgoing:
            return []
        known = {
            r[0]
            for r in self._client.query(
                OUTBOX_IDS_SQL, parameters={"ids": [o.id for o in outgoing]}
            ).result_rows
        }
        entries = [
            OutboxEntry(
                id=o.id,
                kind=o.kind,
                receiver=o.receiver.name,
                group_key=o.group_key,
                target=o.target,
                status=DeliveryStatus.PENDING,
                url=o.receiver.url,
                body=o.body,
                alerts=dict(o.alerts),
                created_at=now,
                deadline=now + dt.timedelta(seconds=o.receiver.deadline),
                next_attempt_at=now,
                attempts=0,
                last_status_code=0,
                last_error="",
                delivered_at=None,
            )
            for o in outgoing
            if o.id not in known
        ]
        self.put_outbox(entries)
        return entries

    def put_outbox(self, entries: Iterable[OutboxEntry]) -> None:
        rows = [e.row() for e in entries]
        if rows:
            self._client.insert("tracehouse_alert_outbox", rows, column_names=list(_OUTBOX_COLUMNS))

    def due(self, now: dt.datetime, limit: int = 100) -> list[OutboxEntry]:
        rows = self._client.query(
            OUTBOX_DUE_SQL, parameters={"now": now, "limit": limit}
        ).result_rows
        return [_outbox(r) for r in rows]

    def deliveries(self, status: str = "", limit: int = 200) -> list[OutboxEntry]:
        rows = self._client.query(
            OUTBOX_LIST_SQL, parameters={"status": status, "limit": limit}
        ).result_rows
        return [_outbox(r) for r in rows]

    def delivery(self, entry_id: str) -> OutboxEntry | None:
        rows = self._client.query(OUTBOX_GET_SQL, parameters={"id": entry_id}).result_rows
        return _outbox(rows[0]) if rows else None

    def last_sent(self) -> dict[str, SentGroup]:
        return {
            r[0]: SentGroup(r[0], _req_utc(r[1]), dict(r[2]))
            for r in self._client.query(LAST_SENT_SQL).result_rows
        }

    def last_scaled(self) -> dict[str, dt.datetime]:
        return {r[0]: _req_utc(r[1]) for r in self._client.query(LAST_SCALED_SQL).result_rows}
