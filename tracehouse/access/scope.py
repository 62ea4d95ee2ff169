"""Service scopes, enforced by ClickHouse itself.

A query token scoped to services sees only their rows. Rather than trusting every endpoint to
add a condition, the query role's ClickHouse client is a :class:`ScopedClient`: while a scoped
request runs, each of its statements carries the setting ``additional_table_filters``, which
makes ClickHouse filter every read of the listed tables — in subqueries, joins and ``FINAL``
reads too — so a new endpoint cannot forget it. Tables holding no service's data are in
``UNSCOPED_TABLES``; every other table of the schema must be in ``TABLE_FILTERS``
(tests/access/test_query_access.py checks the migrated schema for this).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tracehouse.access.tokens import Principal
from tracehouse.storage.schema import quote_string

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "tracehouse_principal", default=None
)

# Per table, the condition its rows must meet for a scope; {services} is the scope's list.
TABLE_FILTERS: dict[str, str] = {
    "otel_traces": "ServiceName IN {services}",
    "otel_logs": "ServiceName IN {services}",
    "otel_red_1m": "ServiceName IN {services}",
    "otel_db_1m": "ServiceName IN {services}",
    "otel_red_1h": "ServiceName IN {services}",
    "otel_db_1h": "ServiceName IN {services}",
    "otel_services_1h": "ServiceName IN {services}",
    # An edge is visible when it touches a service of the scope (its caller or callee).
    "otel_edges_1m": "Source IN {services} OR Target IN {services}",
    "otel_edges_1h": "Source IN {services} OR Target IN {services}",
    "otel_metrics_gauge": "ServiceName IN {services}",
    "otel_metrics_sum": "ServiceName IN {services}",
    "otel_metrics_histogram": "ServiceName IN {services}",
    "otel_metrics_exponential_histogram": "ServiceName IN {services}",
    "otel_metrics_summary": "ServiceName IN {services}",
    # Alerts are a service's when their `service` label names it; notifications (whose
    # bodies may describe any service) are for unscoped tokens only.
    "tracehouse_alert_state": "Labels['service'] IN {services}",
    "tracehouse_alert_history": "Labels['service'] IN {services}",
    "tracehouse_alert_outbox": "0",
    # Insight events are the affected service's (tracehouse/diagnosis/insights.py).
    "tracehouse_insights": "Service IN {services}",
}
# Tables that hold no service's data (configuration, bookkeeping, indexes): not filtered.
UNSCOPED_TABLES = frozenset(
    {
        "otel_traces_trace_id_ts",  # trace id -> time window only
        "tracehouse_schema_migrations",
        "tracehouse_alert_rules",
        "tracehouse_alert_rule_health",
        "tracehouse_silences",
        "tracehouse_audit_log",  # admin tokens only
        "tracehouse_leases",
        "tracehouse_leases_keeper",
    }
)


def current_principal() -> Principal | None:
    """The principal of the request being served (None: no access control, or no request)."""
    return _principal.get()


@contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Run the block as ``principal`` (its scope applies to every statement it sends)."""
    token = _principal.set(principal)
    try:
        yield
    finally:
        _principal.reset(token)


def table_filters(services: frozenset[str]) -> str:
    """The ``additional_table_filters`` value restricting every listed table to ``services``
    (an empty scope matches no row)."""
    names = "(" + ", ".join(quote_string(s) for s in sorted(services)) + ")"
    entries = (
        f"{quote_string(table)}: "
        + quote_string(condition.format(services=names) if services else "0")
        for table, condition in TABLE_FILTERS.items()
    )
    return "{" + ", ".join(entries) + "}"


class ScopedClient:
    """A ClickHouse client whose reads obey the current request's service scope."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def _settings(self, settings: dict[str, Any] | None) -> dict[str, Any] | None:
        principal = _principal.get()
        if principal is None or principal.services is None:
            return settings
        return {**(settings or {}), "additional_table_filters": table_filters(principal.services)}

    def query(self, *args: Any, settings: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._client.query(*args, settings=self._settings(settings), **kwargs)

    def command(self, *args: Any, settings: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._client.command(*args, settings=self._settings(settings), **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Writes (insert) and the rest go to the client as they are.
        return getattr(self._client, name)
