"""The worker role's alerting job: evaluate due rules, keep state, fill and drain the outbox.

:class:`AlertWorker` has ``start()``/``stop(grace_s)`` like the other worker jobs (it runs
only while this process leads). Two daemon threads:

- **evaluation**: every ``tick_s``, each rule whose interval has passed is queried and
  evaluated (:func:`tracehouse.alerting.evaluator.evaluate`); the scaling calls it asks for
  go into the outbox first, then the new states, history and rule health are stored; then
  each receiver's groups are planned (:func:`tracehouse.alerting.dispatch.plan_groups`)
  and what is due goes into the outbox. A failing rule is recorded (health ``err``, last
  error) and the others go on. A firing alert of an ``insight`` rule gets the diagnosis of
  its insight (:class:`~tracehouse.alerting.diagnoses.InsightDiagnoses`, computed off this
  thread when the insight has none) and is notified once that is there or timed out.
- **delivery**: pending outbox entries whose time has come are sent through the
  :class:`~tracehouse.alerting.delivery.Notifier` and updated (delivered, dead, or the next
  attempt).

Everything the next run depends on is read back from ClickHouse at start, so a restart
neither forgets a firing alert nor sends it again as new.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from tracehouse.alerting import queries
from tracehouse.alerting.delivery import (
    DeliveryStatus,
    Notifier,
    WebhookNotifier,
    WebhookRequest,
    after_attempt,
)
from tracehouse.alerting.diagnoses import DIAGNOSIS_KEYS, InsightDiagnoses, top_exemplars
from tracehouse.alerting.dispatch import SentGroup, plan_groups, scaling_outgoing
from tracehouse.alerting.egress import EgressPolicy
from tracehouse.alerting.evaluator import (
    AlertInstance,
    AlertState,
    Evaluation,
    QueryResult,
    Transition,
    evaluate,
)
from tracehouse.alerting.rules import Receiver, Rule, RulesFileWatcher
from tracehouse.alerting.store import AlertStore, OutboxEntry, RuleHealth

log = logging.getLogger(__name__)

EVALUATIONS = Counter("tracehouse_alert_rule_evaluations_total", "Rule evaluations", ["health"])
EVALUATION_SECONDS = Histogram(
    "tracehouse_alert_rule_evaluation_seconds", "Time to query and evaluate one rule"
)
DELIVERIES = Counter(
    "tracehouse_alert_delivery_attempts_total", "Webhook delivery attempts", ["outcome"]
)

Clock = Callable[[], dt.datetime]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RuleBook:
    """The rules in force: the rules file's and the API's (a file rule wins a name clash),
    and the receivers (from the file)."""

    def __init__(self, store: AlertStore, rules_file: Path | None) -> None:
        self.store = store
        self.file = RulesFileWatcher(rules_file)

    def receivers(self) -> dict[str, Receiver]:
        return {r.name: r for r in self.file.current().receivers}

    def file_rules(self) -> dict[str, Rule]:
        return {r.name: r for r in self.file.current().rules}

    def rules(self) -> dict[str, Rule]:
        found = {r.name: r for r in self.store.rules()}
        found.update(self.file_rules())
        return found


class AlertWorker:
    """Evaluates the rules and delivers their notifications (see module docstring)."""

    def __init__(
        self,
        client: Any,
        rules_file: Path | None,
        external_url: str,
        notifier: Notifier | None = None,
        tick_s: float = 1.0,
        clock: Clock = _now,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.store = AlertStore(client)
        self.book = RuleBook(self.store, rules_file)
        self.external_url = external_url
        self._owned_notifier = notifier is None
        self.notifier: Notifier = notifier or WebhookNotifier(egress=egress)
        self.tick_s = tick_s
        self.clock = clock
        self.diagnoses = InsightDiagnoses(client, external_url)
        self._instances: dict[str, dict[str, AlertInstance]] = {}
        self._last_eval: dict[str, dt.datetime] = {}
        self._sent: dict[str, SentGroup] = {}
        self._last_scaled: dict[str, dt.datetime] = {}
        self._loaded = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(
                target=self._loop, args=(self.evaluate_once,), name="alert-eval", daemon=True
            ),
            threading.Thread(
                target=self._loop, args=(self.deliver_once,), name="alert-deliver", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Finish the run in progress (at most ``grace_s``) and stop. Idempotent."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(grace_s)
        self._threads = []
        self.diagnoses.close()
        if self._owned_notifier and isinstance(self.notifier, WebhookNotifier):
            self.notifier.close()

    def _loop(self, step: Callable[[dt.datetime], Any]) -> None:
        while not self._stop.is_set():
            try:
                step(self.clock())
            except Exception:
                log.exception("alerting %s failed; retrying", step.__name__)
            if step == self.deliver_once:
                self._wake.wait(self.tick_s / 2)
                self._wake.clear()
            else:
                self._stop.wait(self.tick_s)

    # -- evaluation --------------------------------------------------------------------------

    def _load(self) -> None:
        """What the previous run left: alert instances, rule evaluations, sent groups."""
        self._instances = {}
        for inst in self.store.instances():
            self._instances.setdefault(inst.rule, {})[inst.fingerprint] = inst
        self._last_eval = {name: h.last_evaluation for name, h in self.store.health().items()}
        self._sent = self.store.last_sent()
        self._last_scaled = self.store.last_scaled()
        self._loaded = True

    def evaluate_once(self, now: dt.datetime) -> None:
        """Evaluate every due rule, store the results and queue what is due to be sent."""
        if not self._loaded:
            self._load()
        rules = self.book.rules()
        receivers = self.book.receivers()
        for gone in set(self._instances) - set(rules):
            self.store.forget_rule(gone, self._instances.pop(gone).values())
        silences = [s for s, _, _ in self.store.silences() if s.ends_at > now]
        changed: list[AlertInstance] = []
        transitions: list[Transition] = []
        health: list[RuleHealth] = []
        scaling = []
        due = [
            rule
            for name, rule in sorted(rules.items())
            if (last := self._last_eval.get(name)) is None
            or (now - last).total_seconds() >= rule.interval - 0.05
        ]
        started = time.perf_counter()
        results = queries.run_many(self.store_client, due, now)
        # Rules sharing a query share its time; each rule's health shows its share.
        share = (time.perf_counter() - started) / len(due) if due else 0.0
        for rule in due:
            name = rule.name
            evaluation, entry = self._evaluate_rule(rule, results[name], share, now, silences)
            health.append(entry)
            self._last_eval[name] = now
            transitions.extend(evaluation.transitions)
            for request in evaluation.scaling:
                receiver = receivers.get(request.action.receiver)
                if receiver is not None:
                    scaling.append(scaling_outgoing(request, receiver, self.external_url))
            self._last_scaled.update(evaluation.scaled)
            changed.extend(evaluation.instances.values())
            self._instances[name] = {
                fp: i
                for fp, i in evaluation.instances.items()
                if i.state is not AlertState.INACTIVE
            }
        changed.extend(self._attach_diagnoses(rules, now))
        # Scaling calls first: if the process dies before the states are stored, the calls
        # are re-derived with the same ClientToken (outbox id) and not queued twice.
        self.store.enqueue(scaling, now)
        self.store.put_instances({(i.rule, i.fingerprint): i for i in changed}.values())
        self.store.add_history(transitions)
        self.store.put_health(health)
        queued = len(scaling) + self._dispatch(rules, receivers, now)
        if queued:
            self._wake.set()

    def _evaluate_rule(
        self,
        rule: Rule,
        result: QueryResult,
        query_s: float,
        now: dt.datetime,
        silences: list[Any],
    ) -> tuple[Evaluation, RuleHealth]:
        started = time.perf_counter()
        previous = self._instances.get(rule.name, {})
        evaluation = evaluate(rule, result, previous, now, silences, self._last_scaled)
        if rule.kind == "insight":
            _keep_diagnoses(evaluation, previous)
        for t in evaluation.transitions:
            if t.to_state is AlertState.FIRING and not t.instance.exemplars:
                try:
                    found = queries.exemplars(self.store_client, rule, dict(t.instance.labels), now)
                except Exception:
                    log.exception("exemplars of rule %s", rule.name)
                    found = []
                inst = evaluation.instances[t.instance.fingerprint]
                evaluation.instances[t.instance.fingerprint] = replace(inst, exemplars=tuple(found))
        seconds = time.perf_counter() - started + query_s
        EVALUATION_SECONDS.observe(seconds)
        ok = result.error is None
        EVALUATIONS.labels("ok" if ok else "err").inc()
        if not ok:
            log.warning("alert rule %s failed: %s", rule.name, result.error)
        return evaluation, RuleHealth(
            rule.name,
            "ok" if ok else "err",
            result.error or "",
            now,
            round(seconds * 1000, 3),
            len(result.samples),
        )

    def _attach_diagnoses(self, rules: dict[str, Rule], now: dt.datetime) -> list[AlertInstance]:
        """Firing alerts of ``insight`` rules without a diagnosis yet: start it (once per
        episode) or add it once it is there (or has failed or timed out)."""
        updated = []
        for name, rule in rules.items():
            if rule.kind != "insight":
                continue
            instances = self._instances.get(name, {})
            for fp, inst in list(instances.items()):
                if not _awaits_diagnosis(rule, inst):
                    continue
                lookup = functools.partial(
                    queries.insight_for, self.store_client, rule, dict(inst.labels), now
                )
                found = self.diagnoses.annotations_for(
                    (name, fp, inst.episode), rule.diagnosis_timeout, lookup
                )
                if found is not None:
                    instances[fp] = replace(
                        inst,
                        annotations={**inst.annotations, **found},
                        # the traces of the first cause, for remediation
                        exemplars=inst.exemplars or top_exemplars(found),
                    )
                    updated.append(instances[fp])
        return updated

    @property
    def store_client(self) -> Any:
        return self.store._client

    def _dispatch(
        self, rules: dict[str, Rule], receivers: dict[str, Receiver], now: dt.datetime
    ) -> int:
        queued = 0
        for receiver in receivers.values():
            members = [
                inst
                for name, rule in rules.items()
                if receiver.name in rule.receivers
                for inst in self._instances.get(name, {}).values()
                if not _awaits_diagnosis(rule, inst)  # sent once it is there or timed out
            ]
            if not members and not self._sent:
                continue
            outgoing = plan_groups(receiver, members, self._sent, now, self.external_url)
            added = self.store.enqueue(outgoing, now)
            for o in outgoing:
                self._sent[o.group_key] = SentGroup(o.group_key, now, dict(o.alerts))
            queued += len(added)
        return queued

    # -- delivery ----------------------------------------------------------------------------

    def deliver_once(self, now: dt.datetime) -> int:
        """Attempt every pending notification that is due; returns how many were tried."""
        entries = self.store.due(now)
        receivers = self.book.receivers()
        for entry in entries:
            if self._stop.is_set():
                break
            self.store.put_outbox([self._attempt(entry, receivers.get(entry.receiver))])
        return len(entries)

    def _attempt(self, entry: OutboxEntry, receiver: Receiver | None) -> OutboxEntry:
        now = self.clock()
        if receiver is None:
            DELIVERIES.labels("dead").inc()
            return replace(
                entry,
                status=DeliveryStatus.DEAD,
                last_error=f"receiver {entry.receiver!r} is no longer configured",
            )
        if now > entry.deadline:
            DELIVERIES.labels("dead").inc()
            return replace(
                entry,
                status=DeliveryStatus.DEAD,
                last_error=f"deadline {entry.deadline.isoformat()} passed",
            )
        result = self.notifier.send(
            WebhookRequest(
                entry.id, entry.url, entry.body, receiver.headers, receiver.secret, receiver.timeout
            )
        )
        attempts = entry.attempts + 1
        after = self.clock()
        decision = after_attempt(
            result,
            attempts,
            after,
            entry.deadline,
            receiver.backoff_initial,
            receiver.backoff_max,
        )
        DELIVERIES.labels(str(decision.status)).inc()
        return replace(
            entry,
            status=decision.status,
            attempts=attempts,
            next_attempt_at=decision.next_attempt_at or after,
            last_status_code=result.status_code or 0,
            last_error=decision.error,
            delivered_at=after if decision.status is DeliveryStatus.DELIVERED else None,
        )


def _awaits_diagnosis(rule: Rule, inst: AlertInstance) -> bool:
    return (
        rule.kind == "insight"
        and inst.state is AlertState.FIRING
        and "diagnosis" not in inst.annotations
    )


def _keep_diagnoses(evaluation: Evaluation, previous: Mapping[str, AlertInstance]) -> None:
    """The evaluator renders annotations afresh; an episode keeps its diagnosis."""
    for fp, inst in evaluation.instances.items():
        old = previous.get(fp)
        if old is None or not inst.episode or old.episode != inst.episode:
            continue
        kept = {k: v for k, v in old.annotations.items() if k in DIAGNOSIS_KEYS}
        if kept:
            evaluation.instances[fp] = replace(inst, annotations={**inst.annotations, **kept})
