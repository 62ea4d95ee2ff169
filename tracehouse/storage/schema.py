"""Versioned schema migrations and retention, for one node or an ``ON CLUSTER`` cluster.

Migrations are the numbered ``migrations/NNNN_name.sql`` files, applied in order and recorded
in ``tracehouse_schema_migrations``. Every statement is ``IF NOT EXISTS``, so a migration cut
off half-way is simply applied again. A statement containing a ``-- cluster-only`` line exists
only in cluster mode (the ``Distributed`` tables over the ``*_local`` replicated tables).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from string import Template
from typing import Any

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "tracehouse_schema_migrations"
_CLUSTER_ONLY = "-- cluster-only"
# The tables migrations create (each gets ${name}, ${engine_name} and ${ttl_name}), with the
# expression their TTL is measured from; all but otel_logs follow the traces retention.
_TTL_COLUMNS = {
    "otel_traces": "toDateTime(Timestamp)",
    "otel_traces_trace_id_ts": "Start",
    "otel_logs": "TimestampTime",
    "otel_red_1m": "Minute",
    "otel_db_1m": "Minute",
    "otel_edges_1m": "Minute",
    "otel_red_1h": "Hour",
    "otel_db_1h": "Hour",
    "otel_edges_1h": "Hour",
    "otel_services_1h": "Hour",
    "otel_metrics_gauge": "toDateTime(TimeUnix)",
    "otel_metrics_sum": "toDateTime(TimeUnix)",
    "otel_metrics_histogram": "toDateTime(TimeUnix)",
    "otel_metrics_exponential_histogram": "toDateTime(TimeUnix)",
    "otel_metrics_summary": "toDateTime(TimeUnix)",
}
# Engine family of the tables that are not plain MergeTree (Replicated… in cluster mode).
_ENGINES = {
    "otel_red_1m": "AggregatingMergeTree",
    "otel_db_1m": "AggregatingMergeTree",
    "otel_red_1h": "AggregatingMergeTree",
    "otel_db_1h": "AggregatingMergeTree",
    "otel_services_1h": "AggregatingMergeTree",
    # Recomputed by the worker, newest Version wins (migration 0005).
    "otel_edges_1m": "ReplacingMergeTree",
    "otel_edges_1h": "ReplacingMergeTree",
}
# Engine parameters after the replication path and replica (the version column).
_ENGINE_ARGS = {"otel_edges_1m": "Version", "otel_edges_1h": "Version"}
# Small state tables, not telemetry (alerting 0006, insights 0011, audit log 0012):
# ${engine_<name>}, in cluster mode one replica set across every node (no {shard} in the path,
# like the lease table), so whichever node a URL reaches holds all of it. Engine family and
# its parameters.
_SHARED_TABLES = {
    "tracehouse_alert_rules": ("ReplacingMergeTree", "Version"),
    "tracehouse_alert_rule_health": ("ReplacingMergeTree", "Version"),
    "tracehouse_alert_state": ("ReplacingMergeTree", "Version"),
    "tracehouse_alert_history": ("MergeTree", ""),
    "tracehouse_silences": ("ReplacingMergeTree", "Version"),
    "tracehouse_alert_outbox": ("ReplacingMergeTree", "Version"),
    # API changes (tracehouse/access, migration 0012).
    "tracehouse_audit_log": ("MergeTree", ""),
    # Insight events (tracehouse/diagnosis/insights.py, migration 0011).
    "tracehouse_insights": ("ReplacingMergeTree", "Version"),
}
# The migration whose view query carries the slow SQL thresholds (re-run when they change).
_SLOW_SQL_MIGRATION = "db_slow_thresholds"
_TTL_DAYS = re.compile(r"TTL .*?toIntervalDay\((\d+)\)")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


DEFAULT_SLOW_SQL_THRESHOLDS = "default:200,redis:10,memcached:10"


def parse_slow_sql_thresholds(text: str) -> tuple[int, tuple[tuple[str, int], ...]]:
    """``default:200,redis:10`` (SkyWalking's form, ms per ``db.system``) as the default
    threshold and the per-system ones, sorted. ValueError names what is wrong."""
    default = 200
    systems: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition(":")
        name = name.strip().lower()
        if not sep or not name or not value.strip().isdigit():
            raise ValueError(
                f"slow SQL threshold {part.strip()!r} is not <db.system>:<ms> "
                f"(e.g. {DEFAULT_SLOW_SQL_THRESHOLDS})"
            )
        ms = int(value)
        if not 0 < ms < 2**32 // 1_000_000:
            raise ValueError(f"slow SQL threshold {part.strip()!r}: ms must be 1..4294")
        if name == "default":
            default = ms
        else:
            systems[name] = ms
    return default, tuple(sorted(systems.items()))


@dataclass(frozen=True)
class SchemaOptions:
    """What shapes the DDL: the cluster (None for one node), retention per signal, the
    trace-id projection of ``otel_traces``, and the slow-call thresholds of database calls
    (ms; per ``db.system``, and for all others)."""

    cluster: str | None = None
    traces_retention_days: int = 0
    logs_retention_days: int = 0
    trace_id_projection: bool = False
    slow_sql_default_ms: int = 200
    slow_sql_ms: tuple[tuple[str, int], ...] = (("memcached", 10), ("redis", 10))

    def slow_sql_expression(self) -> str:
        """The view's threshold of a call to database ``SystemName``, as ClickHouse prints it
        (so that a view already using it is recognised)."""
        names = ", ".join(quote_string(name) for name, _ in self.slow_sql_ms) or "''"
        values = ", ".join(str(ms) for _, ms in self.slow_sql_ms) or str(self.slow_sql_default_ms)
        return f"transform(SystemName, [{names}], [{values}], {self.slow_sql_default_ms})"

    def retention_days(self, table: str) -> int:
        return self.logs_retention_days if table == "otel_logs" else self.traces_retention_days

    def local_name(self, table: str) -> str:
        return f"{table}_local" if self.cluster else table

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER {quote_identifier(self.cluster)}" if self.cluster else ""

    def engine(self, table: str) -> str:
        family = _ENGINES.get(table, "MergeTree")
        extra = _ENGINE_ARGS.get(table)
        if not self.cluster:
            return f"{family}({extra})" if extra else family
        path = f"/clickhouse/tables/{{shard}}/{{database}}/{table}_local"
        tail = f", {extra}" if extra else ""
        return f"Replicated{family}('{path}', '{{replica}}'{tail})"

    def shared_engine(self, table: str) -> str:
        """The engine of a small state table (``_SHARED_TABLES``): replicated to every node."""
        family, extra = _SHARED_TABLES[table]
        if not self.cluster:
            return f"{family}({extra})" if extra else family
        path = f"/clickhouse/tracehouse/{{database}}/{table}"
        tail = f", {extra}" if extra else ""
        return f"Replicated{family}('{path}', '{{replica}}'{tail})"

    def ttl(self, table: str) -> str:
        days = self.retention_days(table)
        return f"TTL {_TTL_COLUMNS[table]} + toIntervalDay({days})" if days else ""


# The projection of otel_traces that keeps its spans ordered by trace id (decision 0023).
TRACE_ID_PROJECTION = "by_trace_id"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_migrations() -> list[Migration]:
    """The migrations shipped with this version, in order."""
    found = []
    for entry in resources.files("tracehouse.storage").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def render(migration: Migration, options: SchemaOptions) -> list[str]:
    """The statements of one migration for these options, ready to execute."""
    values: dict[str, str] = {
        "on_cluster": options.on_cluster,
        "cluster_name": quote_identifier(options.cluster) if options.cluster else "",
        # Lets a spool replay carry an insert_deduplication_token on a single node too;
        # replicated tables deduplicate through Keeper by default.
        "dedup_setting": "" if options.cluster else ", non_replicated_deduplication_window = 1000",
        "slow_sql_threshold_ms": options.slow_sql_expression(),
    }
    for table in _TTL_COLUMNS:
        values[table] = options.local_name(table)
        values[f"engine_{table}"] = options.engine(table)
        values[f"ttl_{table}"] = options.ttl(table)
    for table in _SHARED_TABLES:
        values[f"engine_{table}"] = options.shared_engine(table)
    statements = []
    for chunk in migration.sql.split(";\n"):
        body = chunk.strip()
        if not body:
            continue
        cluster_only = _CLUSTER_ONLY in body
        if cluster_only and not options.cluster:
            continue
        text = Template(body).substitute(values)
        lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
        statements.append("\n".join(lines).strip())
    return statements


def migrations_table_ddl(options: SchemaOptions) -> str:
    engine = (
        f"ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{{database}}/{MIGRATIONS_TABLE}', "
        "'{replica}')"
        if options.cluster
        else "MergeTree"
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} {options.on_cluster} ("
        "version UInt32, name String, checksum String, applied_at DateTime64(3) DEFAULT now64(3)"
        f") ENGINE = {engine} ORDER BY version"
    )


def all_statements(options: SchemaOptions) -> list[str]:
    """Every DDL statement ``migrate`` would run on an empty database (for review and tests)."""
    out = [migrations_table_ddl(options)]
    for migration in load_migrations():
        out.extend(render(migration, options))
    return out


class Migrator:
    """Applies pending migrations and reconciles retention; safe to run any number of times."""

    def __init__(self, client: Any, options: SchemaOptions) -> None:
        self._client = client
        self._options = options

    def applied_versions(self) -> set[int]:
        """Versions recorded as applied; warns when a shipped migration changed since."""
        rows = self._client.query(
            f"SELECT version, any(checksum) FROM {MIGRATIONS_TABLE} GROUP BY version"
        ).result_rows
        shipped = {m.version: m for m in load_migrations()}
        for version, checksum in rows:
            migration = shipped.get(int(version))
            if migration is not None and migration.checksum != checksum:
                log.warning(
                    "migration %04d_%s differs from the version applied to this database; "
                    "applied migrations are never re-run: add a new migration instead",
                    migration.version,
                    migration.name,
                )
        return {int(r[0]) for r in rows}

    def migrate(self) -> list[str]:
        """Apply what is missing; returns the names of the migrations applied now."""
        self._client.command(migrations_table_ddl(self._options))
        done = self.applied_versions()
        applied = []
        for migration in load_migrations():
            if migration.version in done:
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            for statement in render(migration, self._options):
                self._client.command(statement)
            self._client.insert(
                MIGRATIONS_TABLE,
                [[migration.version, migration.name, migration.checksum]],
                column_names=["version", "name", "checksum"],
            )
            applied.append(f"{migration.version:04d}_{migration.name}")
        self.reconcile_retention()
        self.reconcile_slow_sql_thresholds()
        self.reconcile_trace_id_projection()
        return applied

    def pending(self) -> list[Migration]:
        self._client.command(migrations_table_ddl(self._options))
        done = self.applied_versions()
        return [m for m in load_migrations() if m.version not in done]

    def _definition(self, table: str, column: str = "create_table_query") -> str | None:
        """``column`` of ``table`` in ``system.tables`` (current database); None if absent."""
        rows = self._client.query(
            f"SELECT {column} FROM system.tables "
            "WHERE database = currentDatabase() AND name = {t:String}",
            parameters={"t": table},
        ).result_rows
        return str(rows[0][0]) if rows else None

    def reconcile_slow_sql_thresholds(self) -> None:
        """Make the database-call view count slow calls with the configured thresholds: the
        view of migration 0009 is re-rendered when its thresholds differ. Minutes already
        rolled up keep the thresholds they were counted with (``SlowThresholdMs``)."""
        definition = self._definition("otel_db_1m_mv")
        wanted = self._options.slow_sql_expression()
        if definition is None or wanted in definition:
            return
        (view,) = [m for m in load_migrations() if m.name == _SLOW_SQL_MIGRATION]
        log.info("slow SQL thresholds of otel_db_1m_mv: %s", wanted)
        for statement in render(view, self._options):
            self._client.command(statement)

    def reconcile_trace_id_projection(self) -> None:
        """Add or drop ``otel_traces``' copy of its spans ordered by trace id, as configured
        (decision 0023). Parts written from now on carry it; older parts are read as before
        until ``ALTER TABLE otel_traces MATERIALIZE PROJECTION by_trace_id`` rewrites them."""
        local = self._options.local_name("otel_traces")
        definition = self._definition(local)
        if definition is None:
            return
        present = f"PROJECTION {TRACE_ID_PROJECTION}" in definition
        wanted = self._options.trace_id_projection
        if present == wanted:
            return
        if wanted:
            log.info(
                "adding projection %s to %s; existing parts get it with ALTER TABLE %s "
                "MATERIALIZE PROJECTION %s",
                TRACE_ID_PROJECTION,
                local,
                local,
                TRACE_ID_PROJECTION,
            )
            action = (
                f"ADD PROJECTION IF NOT EXISTS {TRACE_ID_PROJECTION} (SELECT * ORDER BY TraceId)"
            )
        else:
            log.info("dropping projection %s of %s", TRACE_ID_PROJECTION, local)
            action = f"DROP PROJECTION IF EXISTS {TRACE_ID_PROJECTION}"
        self._client.command(f"ALTER TABLE {local} {self._options.on_cluster} {action}")

    def reconcile_retention(self) -> None:
        """Make each table's TTL match the configured retention (changed settings apply here)."""
        for table in _TTL_COLUMNS:
            local = self._options.local_name(table)
            engine = self._definition(local, "engine_full")
            if engine is None:
                continue
            match = _TTL_DAYS.search(engine)
            current = int(match.group(1)) if match else 0
            wanted = self._options.retention_days(table)
            if current == wanted:
                continue
            action = f"MODIFY {self._options.ttl(table)}" if wanted else "REMOVE TTL"
            log.info("retention of %s: %s -> %s days", table, current or "forever", wanted)
            self._client.command(f"ALTER TABLE {local} {self._options.on_cluster} {action}")
