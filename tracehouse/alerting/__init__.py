"""alerting: rules evaluated on the rollups, alert state in ClickHouse, and notifications —
Alertmanager-compatible, signed (Standard Webhooks), retried through a persistent outbox —
that drive autoscalers and remediation (DESIGN.md §3, docs/alerting.md).

- :mod:`~tracehouse.alerting.evaluator` — the pure evaluator (states, transitions, scaling).
- :mod:`~tracehouse.alerting.dispatch` — grouping and webhook bodies (pure).
- :mod:`~tracehouse.alerting.delivery` — the notifier contract, signing, retry policy.
- :class:`AlertWorker` — the worker role's job; :func:`router` — the query role's API.
"""

from tracehouse.alerting.api import router
from tracehouse.alerting.delivery import Notifier, WebhookNotifier
from tracehouse.alerting.egress import EgressPolicy, EgressRefused
from tracehouse.alerting.evaluator import AlertState, evaluate
from tracehouse.alerting.rules import Receiver, Rule, RuleError, parse_rules_file
from tracehouse.alerting.worker import AlertWorker

__all__ = [
    "AlertState",
    "AlertWorker",
    "EgressPolicy",
    "EgressRefused",
    "Notifier",
    "Receiver",
    "Rule",
    "RuleError",
    "WebhookNotifier",
    "evaluate",
    "parse_rules_file",
    "router",
]
