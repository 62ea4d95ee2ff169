"""Schema and migrations: the tables a Collector, Grafana and our readers expect, on one node
and ``ON CLUSTER``; idempotent migration; retention; unusable ClickHouse URLs.

Every test works in a database of its own inside the session's one chDB engine (chDB allows
one engine directory per process), so nothing here touches the ``default`` database the
server tests write to.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from tracehouse.query.traces import TRACE_SPANS_SQL
from tracehouse.storage import (
    Migrator,
    SchemaOptions,
    StorageConfigError,
    all_statements,
    connect,
    conventions,
)
from tracehouse.storage.schema import (
    MIGRATIONS_TABLE,
    TRACE_ID_PROJECTION,
    load_migrations,
    migrations_table_ddl,
    render,
)

DATA = Path(__file__).parent.parent / "data"
# The Collector contrib clickhouseexporter's tables, as ClickHouse describes them.
COLLECTOR = json.loads((DATA / "collector_schema.json").read_text())

# The tables the signals live in, and the expression each one's TTL is measured from.
TABLES = {
    "otel_traces": "toDateTime(Timestamp)",
    "otel_traces_trace_id_ts": "Start",
    "otel_logs": "TimestampTime",
}
MV = "otel_traces_trace_id_ts_mv"
# The minute rollups of otel_traces (migration 0004), each fed by its view; TTL from Minute.
ROLLUPS = {"otel_red_1m": "Minute", "otel_db_1m": "Minute"}
ROLLUP_VIEWS = {"otel_red_1m": "otel_red_1m_mv", "otel_db_1m": "otel_db_1m_mv"}
# Their hourly tier (migration 0013), each fed by a view on its minute table; TTL from Hour.
# The services' hours (0015) too.
HOURLY = {"otel_red_1h": "Hour", "otel_db_1h": "Hour", "otel_services_1h": "Hour"}
HOURLY_VIEWS = {
    "otel_red_1h": ("otel_red_1h_mv", "otel_red_1m"),
    "otel_db_1h": ("otel_db_1h_mv", "otel_db_1m"),
    "otel_services_1h": ("otel_services_1h_mv", "otel_red_1m"),
}
# Service-graph edges (migration 0005), recomputed by the worker (no view); TTL from Minute.
EDGES = {"otel_edges_1m": "Minute", "otel_edges_1h": "Hour"}
# Metric points, one table per point type (migration 0010); they follow the traces retention.
METRICS = {
    f"otel_metrics_{kind}": "toDateTime(TimeUnix)"
    for kind in ("gauge", "sum", "histogram", "exponential_histogram", "summary")
}
# Small state tables, one replica set across the cluster: alerting (migration 0006) and
# the audit log (AUDIT, 0012).
SHARED = {
    "tracehouse_alert_rules": "ReplacingMergeTree",
    "tracehouse_alert_rule_health": "ReplacingMergeTree",
    "tracehouse_alert_state": "ReplacingMergeTree",
    "tracehouse_alert_history": "MergeTree",
    "tracehouse_silences": "ReplacingMergeTree",
    "tracehouse_alert_outbox": "ReplacingMergeTree",
}
AUDIT = {"tracehouse_audit_log": "MergeTree"}
# Insight events (migration 0011), one replica set across the cluster too.
INSIGHTS = {"tracehouse_insights": "ReplacingMergeTree"}
MIGRATION_NAMES = [
    "0001_otel_traces",
    "0002_otel_traces_trace_id_ts",
    "0003_otel_logs",
    "0004_rollups",
    "0005_edges",
    "0006_alerting",
    "0008_edge_durations",
    "0009_db_slow_thresholds",
    "0010_otel_metrics",
    "0011_insights",
    "0012_audit_log",
    "0013_hourly_rollups",
    "0014_hourly_edges",
    "0015_service_hours",
]
CLUSTER = "tracehouse"

NewDatabase = Callable[[], Any]


# --- helpers -----------------------------------------------------------------------------


def _open_database(engine_url: str) -> tuple[Any, str]:
    """A client whose current database is a new, empty one."""
    name = f"schema_{uuid.uuid4().hex[:12]}"
    client = connect(engine_url)
    client.command(f"CREATE DATABASE {name}")
    client.database = name
    # Guard: if selecting the database silently failed, tests would write to `default`.
    assert client.query("SELECT currentDatabase()").result_rows == [(name,)]
    return client, name


def _drop_database(client: Any, name: str) -> None:
    client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
    client.close()


def _columns(client: Any, table: str) -> list[tuple[str, str, str, str, str]]:
    """(name, type, default_kind, default_expression, compression_codec), in table order."""
    rows = client.query(
        "SELECT name, type, default_kind, default_expression, compression_codec "
        "FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
        "ORDER BY position",
        parameters={"t": table},
    ).result_rows
    return [tuple(r) for r in rows]


def _tables(client: Any) -> dict[str, str]:
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
    ).result_rows
    return {name: engine for name, engine in rows}


def _snapshot(client: Any) -> dict[str, Any]:
    """Everything a migration could change: table definitions, columns, recorded migrations."""
    tables = client.query(
        "SELECT name, engine, engine_full, create_table_query FROM system.tables "
        "WHERE database = currentDatabase() ORDER BY name"
    ).result_rows
    return {
        "tables": tables,
        "columns": {name: _columns(client, name) for name, *_ in tables},
        "migrations": client.query(
            f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} ORDER BY version"
        ).result_rows,
    }


def _ttl(client: Any, table: str) -> tuple[str, int] | None:
    """(TTL expression, days) of a table, or None when its rows never expire."""
    (query,) = client.query(
        "SELECT create_table_query FROM system.tables "
        "WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).first_row
    match = re.search(r"\bTTL (.+?) \+ toIntervalDay\((\d+)\)", query)
    return (match.group(1), int(match.group(2))) if match else None


def _format(client: Any, sql: str) -> str:
    """ClickHouse's own formatting of ``sql``: parses it without executing it."""
    return str(client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).first_row[0])


def _created_name(sql: str) -> str:
    """The name a statement creates, ``ALTER <table>`` for a change to an existing table, or
    ``INSERT <table>`` for a one-off fill of a new table from an older one."""
    if altered := re.match(r"\s*(ALTER|INSERT) (?:TABLE |INTO )(\S+)", sql):
        return f"{altered.group(1)} {altered.group(2)}"
    match = re.search(r"CREATE (?:TABLE|MATERIALIZED VIEW) IF NOT EXISTS (\S+)", sql)
    assert match, f"not a CREATE ... IF NOT EXISTS statement: {sql[:80]!r}"
    return match.group(1)


def _creatable_without_a_cluster(sql: str, cluster: str) -> str:
    """A cluster statement made runnable in chDB (no Keeper, no clusters), columns untouched:
    no ON CLUSTER, (Aggregating)MergeTree for Replicated(Aggregating)MergeTree, Null for the
    Distributed engine."""
    out = sql.replace(f" ON CLUSTER `{cluster}`", "")
    out = re.sub(
        r"Replicated(\w*MergeTree)\('[^']*', '[^']*'(?:, (\w+))?\)",
        lambda m: f"{m.group(1)}({m.group(2)})" if m.group(2) else m.group(1),
        out,
    )
    out = re.sub(r"ENGINE = Distributed\(.*\Z", "ENGINE = Null", out, flags=re.S)
    assert "CLUSTER" not in out and "Replicated" not in out and "Distributed" not in out, out
    return out


def _collector_span(
    trace_id: str, kind: str = "SPAN_KIND_SERVER", status: str = "STATUS_CODE_ERROR"
) -> dict[str, Any]:
    """A span as the Collector's exporter fills its INSERT's columns."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return {
        "Timestamp": now,
        "TraceId": trace_id,
        "SpanId": uuid.uuid4().hex[:16],
        "ParentSpanId": "",
        "TraceState": "",
        "SpanName": "GET /checkout",
        "SpanKind": kind,
        "ServiceName": "collector-svc",
        "ResourceAttributes": {"service.name": "collector-svc"},
        "ScopeName": "io.opentelemetry.http",
        "ScopeVersion": "1.0",
        "SpanAttributes": {"http.request.method": "GET"},
        "Duration": 1_500_000,
        "StatusCode": status,
        "StatusMessage": "boom" if "rror" in status else "",
        "Events.Timestamp": [now],
        "Events.Name": ["exception"],
        "Events.Attributes": [{"exception.type": "ValueError"}],
        "Links.TraceId": [uuid.uuid4().hex],
        "Links.SpanId": [uuid.uuid4().hex[:16]],
        "Links.TraceState": [""],
        "Links.Attributes": [{"link.kind": "follows"}],
    }


def _collector_log(trace_id: str) -> dict[str, Any]:
    """A log record as the Collector's exporter fills its INSERT's columns."""
    return {
        "Timestamp": datetime.now(UTC).replace(tzinfo=None),
        "TraceId": trace_id,
        "SpanId": uuid.uuid4().hex[:16],
        "TraceFlags": 1,
        "SeverityText": "ERROR",
        "SeverityNumber": 17,
        "ServiceName": "collector-svc",
        "Body": "payment failed",
        "ResourceSchemaUrl": "",
        "ResourceAttributes": {"service.name": "collector-svc"},
        "ScopeSchemaUrl": "",
        "ScopeName": "logger",
        "ScopeVersion": "",
        "ScopeAttributes": {},
        "LogAttributes": {"order.id": "42"},
    }


def _insert_as_collector(client: Any, table: str, row: dict[str, Any]) -> None:
    """An INSERT naming exactly the Collector's columns, in the Collector's order."""
    names = COLLECTOR[table]["insert_columns"]
    assert sorted(names) == sorted(row), "test row must fill exactly the Collector's columns"
    client.insert(table, [[row[n] for n in names]], column_names=names)


def _count(client: Any, table: str, trace_id: str) -> int:
    return int(
        client.query(
            f"SELECT count() FROM {table} WHERE TraceId = {{t:String}}", parameters={"t": trace_id}
        ).first_row[0]
    )


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def new_db(engine_url: str) -> Iterator[NewDatabase]:
    """Make clients, each on a fresh empty database; all dropped at teardown."""
    opened: list[tuple[Any, str]] = []

    def make() -> Any:
        client, name = _open_database(engine_url)
        opened.append((client, name))
        return client

    yield make
    for client, name in opened:
        _drop_database(client, name)


@pytest.fixture
def db(new_db: NewDatabase) -> Any:
    return new_db()


@pytest.fixture
def migrated_db(db: Any) -> Any:
    assert Migrator(db, SchemaOptions()).migrate() == MIGRATION_NAMES
    return db


@pytest.fixture(scope="module")
def client(engine_url: str) -> Iterator[Any]:
    """A client for statements that only parse (formatQuery) and touch no database."""
    c = connect(engine_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def cluster_ddl(client: Any) -> dict[str, str]:
    """The cluster statements as ClickHouse formats them, by the name each one creates."""
    return {
        _created_name(sql): _format(client, sql)
        for sql in all_statements(SchemaOptions(cluster=CLUSTER))
    }


# --- 1. migrating --------------------------------------------------------------------------


def test_shipped_migrations_are_numbered_in_order() -> None:
    migrations = load_migrations()
    assert [f"{m.version:04d}_{m.name}" for m in migrations] == MIGRATION_NAMES
    # Versions are what the migrations table records: two files with one version would make
    # the second look applied once the first is.
    versions = [m.version for m in migrations]
    assert len(set(versions)) == len(versions)


def test_migrate_creates_the_schema_on_an_empty_database(db: Any) -> None:
    migrator = Migrator(db, SchemaOptions())
    assert [f"{m.version:04d}_{m.name}" for m in migrator.pending()] == MIGRATION_NAMES

    assert migrator.migrate() == MIGRATION_NAMES

    assert _tables(db) == {
        "otel_traces": "MergeTree",
        "otel_traces_trace_id_ts": "MergeTree",
        MV: "MaterializedView",
        "otel_logs": "MergeTree",
        "otel_red_1m": "AggregatingMergeTree",
        "otel_red_1m_mv": "MaterializedView",
        "otel_db_1m": "AggregatingMergeTree",
        "otel_db_1m_mv": "MaterializedView",
        "otel_edges_1m": "ReplacingMergeTree",
        "otel_edges_1h": "ReplacingMergeTree",
        **dict.fromkeys(HOURLY, "AggregatingMergeTree"),
        **{view: "MaterializedView" for view, _ in HOURLY_VIEWS.values()},
        **dict.fromkeys(METRICS, "MergeTree"),
        **SHARED,
        **INSIGHTS,
        **AUDIT,
        MIGRATIONS_TABLE: "MergeTree",
    }
    recorded = db.query(
        f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} ORDER BY version"
    ).result_rows
    assert [tuple(r) for r in recorded] == [
        (m.version, m.name, m.checksum) for m in load_migrations()
    ]
    assert migrator.pending() == []


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(SchemaOptions(), id="keep-forever"),
        pytest.param(SchemaOptions(traces_retention_days=7, logs_retention_days=2), id="retention"),
    ],
)
def test_migrating_again_applies_nothing_and_changes_nothing(db: Any, options: SchemaOptions):
    assert Migrator(db, options).migrate() == MIGRATION_NAMES
    before = _snapshot(db)

    assert Migrator(db, options).migrate() == []
    assert Migrator(db, options).pending() == []
    assert _snapshot(db) == before


def test_a_migration_cut_off_half_way_is_applied_again(db: Any) -> None:
    options = SchemaOptions()
    # Migration 0001's table was created, then the process died before it was recorded.
    db.command(migrations_table_ddl(options))
    db.command(render(load_migrations()[0], options)[0])
    assert [f"{m.version:04d}_{m.name}" for m in Migrator(db, options).pending()] == (
        MIGRATION_NAMES
    )

    assert Migrator(db, options).migrate() == MIGRATION_NAMES
    assert set(_tables(db)) == {
        *TABLES,
        MV,
        *ROLLUPS,
        *ROLLUP_VIEWS.values(),
        *HOURLY,
        *(view for view, _ in HOURLY_VIEWS.values()),
        *EDGES,
        *SHARED,
        *METRICS,
        *INSIGHTS,
        *AUDIT,
        MIGRATIONS_TABLE,
    }
    assert Migrator(db, options).pending() == []


# --- 2. the Collector's columns ----------------------------------------------------------


@pytest.mark.parametrize("table", [*TABLES, *METRICS])
def test_collector_columns_have_the_collectors_names_and_types(migrated_db: Any, table: str):
    expected = [
        (c["name"], c["type"], "DEFAULT" if "default" in c else "", c.get("default", ""))
        for c in COLLECTOR[table]["columns"]
    ]
    actual = [r[:4] for r in _columns(migrated_db, table)]

    # The Collector's columns come first, in its order, with its types and defaults ...
    assert actual[: len(expected)] == expected
    # ... and anything we add has a default, so the Collector's INSERT need not name it.
    extensions = actual[len(expected) :]
    assert [(name, kind) for name, _, kind, _ in extensions] == [
        (name, "DEFAULT") for name, *_ in extensions
    ]


# --- 3. rows written by a Collector ------------------------------------------------------


# Span kind and status as the Collector's exporter has spelled them: old (pdata enum names)
# and new (short names); what the reading conventions make of each.
KIND_SPELLINGS = {
    "server": ("SPAN_KIND_SERVER", "Server"),
    "client": ("SPAN_KIND_CLIENT", "Client"),
    "internal": ("SPAN_KIND_INTERNAL", "Internal"),
    "producer": ("SPAN_KIND_PRODUCER", "Producer"),
    "consumer": ("SPAN_KIND_CONSUMER", "Consumer"),
    "unspecified": ("SPAN_KIND_UNSPECIFIED", "Unspecified"),
}
STATUS_SPELLINGS = {
    "error": ("STATUS_CODE_ERROR", "Error", 1),
    "ok": ("STATUS_CODE_OK", "Ok", 0),
    "unset": ("STATUS_CODE_UNSET", "Unset", 0),
}
SPELLING_CASES = [
    pytest.param(
        KIND_SPELLINGS[kind][era],
        STATUS_SPELLINGS[status][era],
        kind,
        STATUS_SPELLINGS[status][2],
        status,
        id=f"{('old', 'new')[era]}-{kind}-{status}",
    )
    for kind, status in [
        ("server", "error"),
        ("client", "ok"),
        ("internal", "unset"),
        ("producer", "error"),
        ("consumer", "ok"),
        ("unspecified", "unset"),
    ]
    for era in (0, 1)
]


@pytest.mark.parametrize(
    ("kind", "status", "want_kind", "want_error", "want_status"), SPELLING_CASES
)
def test_collector_span_is_accepted_and_read_the_same_in_both_spellings(
    migrated_db: Any, kind: str, status: str, want_kind: str, want_error: int, want_status: str
) -> None:
    trace_id = uuid.uuid4().hex
    _insert_as_collector(migrated_db, "otel_traces", _collector_span(trace_id, kind, status))

    row = migrated_db.query(
        f"SELECT {conventions.SPAN_KIND}, {conventions.IS_ERROR}, {conventions.STATUS}, "
        "ScopeAttributes, DroppedAttributesCount, DroppedEventsCount, DroppedLinksCount, "
        "Events.Name, length(Links.TraceId) "
        "FROM otel_traces WHERE TraceId = {t:String}",
        parameters={"t": trace_id},
    ).result_rows
    assert [tuple(r) for r in row] == [
        (want_kind, want_error, want_status, {}, 0, 0, 0, ["exception"], 1)
    ]
    # The lookup view saw the Collector's insert too.
    assert _count(migrated_db, "otel_traces_trace_id_ts", trace_id) == 1


def test_collector_log_is_accepted_with_timestamptime_filled_in(migrated_db: Any) -> None:
    trace_id = uuid.uuid4().hex
    _insert_as_collector(migrated_db, "otel_logs", _collector_log(trace_id))

    rows = migrated_db.query(
        "SELECT TimestampTime = toDateTime(Timestamp), toYear(TimestampTime) > 2000, "
        "EventName, DroppedAttributesCount, SeverityText, Body, LogAttributes "
        "FROM otel_logs WHERE TraceId = {t:String}",
        parameters={"t": trace_id},
    ).result_rows
    assert [tuple(r) for r in rows] == [
        (1, 1, "", 0, "ERROR", "payment failed", {"order.id": "42"})
    ]


# --- 4. cluster DDL ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cluster", ["tracehouse", "ch-prod.eu_1"], ids=["plain-name", "quoted-name"]
)
def test_every_cluster_statement_parses_and_runs_on_the_cluster(client: Any, cluster: str) -> None:
    formatted = {
        _created_name(sql): _format(client, sql)
        for sql in all_statements(SchemaOptions(cluster=cluster))
    }
    assert list(formatted) == [
        MIGRATIONS_TABLE,
        "otel_traces_local",
        "otel_traces",
        "otel_traces_trace_id_ts_local",
        "otel_traces_trace_id_ts",
        MV,
        "otel_logs_local",
        "otel_logs",
        "otel_red_1m_local",
        "otel_red_1m",
        "otel_red_1m_mv",
        "otel_db_1m_local",
        "otel_db_1m",
        "otel_db_1m_mv",
        "otel_edges_1m_local",
        "otel_edges_1m",
        *SHARED,
        "ALTER otel_edges_1m_local",
        "ALTER otel_edges_1m",
        "ALTER otel_db_1m_mv",
        *[name for table in METRICS for name in (f"{table}_local", table)],
        *INSIGHTS,
        *AUDIT,
        "otel_red_1h_local",
        "otel_red_1h",
        "otel_red_1h_mv",
        "otel_db_1h_local",
        "otel_db_1h",
        "otel_db_1h_mv",
        "INSERT otel_red_1h",
        "INSERT otel_db_1h",
        "otel_edges_1h_local",
        "otel_edges_1h",
        "INSERT otel_edges_1h",
        "otel_services_1h_local",
        "otel_services_1h",
        "otel_services_1h_mv",
        "INSERT otel_services_1h",
    ]
    on_cluster = re.compile(rf"\bON CLUSTER `?{re.escape(cluster)}`?\s")
    ddl = {name: sql for name, sql in formatted.items() if not name.startswith("INSERT ")}
    assert [name for name, sql in ddl.items() if not on_cluster.search(sql)] == []
    # The fills read and write the Distributed tables: every shard's minutes, spread again.
    assert "FROM otel_red_1m\n" in formatted["INSERT otel_red_1h"] + "\n"
    # Distributed tables name the same cluster.
    for table in [*TABLES, *ROLLUPS, *HOURLY, *EDGES, *METRICS]:
        assert re.search(rf"ENGINE = Distributed\(`?{re.escape(cluster)}`?,", formatted[table])


@pytest.mark.parametrize("table", [*TABLES, *METRICS, MIGRATIONS_TABLE])
def test_cluster_tables_holding_rows_are_replicated(cluster_ddl: dict[str, str], table: str):
    local = table if table == MIGRATIONS_TABLE else f"{table}_local"
    assert re.search(
        rf"ENGINE = ReplicatedMergeTree\('/clickhouse/tables/[^']*\b{local}', '\{{replica\}}'\)",
        cluster_ddl[local],
    ), cluster_ddl[local]
    if table != MIGRATIONS_TABLE:
        # Each shard keeps its own replica set.
        assert "{shard}" in cluster_ddl[local]


@pytest.mark.parametrize("table", [*ROLLUPS, *HOURLY])
def test_cluster_rollups_are_replicated_aggregating_tables(cluster_ddl: dict[str, str], table):
    local = f"{table}_local"
    path = rf"'/clickhouse/tables/\{{shard\}}/[^']*\b{local}'"
    assert re.search(
        rf"ENGINE = ReplicatedAggregatingMergeTree\({path}, '\{{replica\}}'\)", cluster_ddl[local]
    ), cluster_ddl[local]


@pytest.mark.parametrize("table", list(EDGES))
def test_cluster_edges_are_a_replicated_replacing_table_versioned_by_version(
    cluster_ddl: dict[str, str], table: str
) -> None:
    """The worker recomputes minutes and hours: the newest Version of a key wins (no summing)."""
    local = f"{table}_local"
    path = rf"'/clickhouse/tables/\{{shard\}}/[^']*\b{local}'"
    assert re.search(
        rf"ENGINE = ReplicatedReplacingMergeTree\({path}, '\{{replica\}}', Version\)",
        cluster_ddl[local],
    ), cluster_ddl[local]


def test_single_node_edges_are_a_replacing_table_versioned_by_version(migrated_db: Any) -> None:
    (engine_full,) = migrated_db.query(
        "SELECT engine_full FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'otel_edges_1m'"
    ).first_row
    assert engine_full.startswith("ReplacingMergeTree(Version) PARTITION BY toDate(Minute)")
    assert "ORDER BY (Minute, Source, Target, ConnectionType)" in engine_full


@pytest.mark.parametrize(
    ("table", "sharding_key"),
    [
        ("otel_traces", "cityHash64(TraceId)"),
        ("otel_traces_trace_id_ts", "cityHash64(TraceId)"),
        ("otel_logs", "if(TraceId = '', rand(), cityHash64(TraceId))"),
        # Only the views write the rollups (into the local tables); any shard will do.
        ("otel_red_1m", "rand()"),
        ("otel_db_1m", "rand()"),
        ("otel_red_1h", "rand()"),
        ("otel_db_1h", "rand()"),
        ("otel_services_1h", "rand()"),
        # The worker inserts edges through the Distributed table; any shard will do.
        ("otel_edges_1m", "rand()"),
        ("otel_edges_1h", "rand()"),
    ],
)
def test_cluster_front_tables_are_distributed_over_the_local_tables(
    cluster_ddl: dict[str, str], table: str, sharding_key: str
) -> None:
    sql = cluster_ddl[table]
    assert f" AS {table}_local\n" in sql
    assert sql.endswith(
        f"ENGINE = Distributed({CLUSTER}, currentDatabase(), {table}_local, {sharding_key})"
    )


def test_cluster_spans_and_their_lookup_rows_land_on_the_same_shard(cluster_ddl: dict[str, str]):
    """The view runs on each shard over that shard's spans only, so a trace's spans and its
    lookup row must be sharded by the same key."""

    def key(table: str) -> str:
        match = re.search(r"ENGINE = Distributed\(.*?, .*?, \w+, (.+)\)$", cluster_ddl[table])
        assert match, cluster_ddl[table]
        return match.group(1)

    assert key("otel_traces") == key("otel_traces_trace_id_ts") == "cityHash64(TraceId)"


def test_cluster_view_reads_local_spans_into_the_local_lookup_table(cluster_ddl: dict[str, str]):
    sql = cluster_ddl[MV]
    assert re.search(r"\bTO otel_traces_trace_id_ts_local\b", sql), sql
    assert re.search(r"\bFROM otel_traces_local\b", sql), sql
    assert not re.search(r"\b(FROM otel_traces|TO otel_traces_trace_id_ts)\b(?!_local)", sql)


@pytest.mark.parametrize(("rollup", "view"), list(ROLLUP_VIEWS.items()))
def test_cluster_rollup_views_read_local_spans_into_the_local_rollups(
    cluster_ddl: dict[str, str], rollup: str, view: str
) -> None:
    """Each shard rolls up its own spans; readers merge the shards' states through the
    Distributed table."""
    sql = cluster_ddl[view]
    assert re.search(rf"\bTO {rollup}_local\b", sql), sql
    assert re.search(r"\bFROM otel_traces_local\b", sql), sql
    assert not re.search(rf"\b(FROM otel_traces|TO {rollup})\b(?!_local)", sql)


@pytest.mark.parametrize(("rollup", "view_and_source"), list(HOURLY_VIEWS.items()))
def test_cluster_hourly_views_read_the_local_minutes_into_the_local_hours(
    cluster_ddl: dict[str, str], rollup: str, view_and_source: tuple[str, str]
) -> None:
    view, source = view_and_source
    sql = cluster_ddl[view]
    assert re.search(rf"\bTO {rollup}_local\b", sql), sql
    assert re.search(rf"\bFROM {source}_local\b", sql), sql


def test_single_node_statements_parse_and_have_no_cluster_parts(client: Any) -> None:
    formatted = {_created_name(s): _format(client, s) for s in all_statements(SchemaOptions())}
    assert list(formatted) == [
        MIGRATIONS_TABLE,
        "otel_traces",
        "otel_traces_trace_id_ts",
        MV,
        "otel_logs",
        "otel_red_1m",
        "otel_red_1m_mv",
        "otel_db_1m",
        "otel_db_1m_mv",
        "otel_edges_1m",
        *SHARED,
        "ALTER otel_edges_1m",
        "ALTER otel_db_1m_mv",
        *METRICS,
        *INSIGHTS,
        *AUDIT,
        "otel_red_1h",
        "otel_red_1h_mv",
        "otel_db_1h",
        "otel_db_1h_mv",
        "INSERT otel_red_1h",
        "INSERT otel_db_1h",
        "otel_edges_1h",
        "INSERT otel_edges_1h",
        "otel_services_1h",
        "otel_services_1h_mv",
        "INSERT otel_services_1h",
    ]
    for name, sql in formatted.items():
        assert "ON CLUSTER" not in sql, name
        assert "Distributed" not in sql, name
        assert "Replicated" not in sql, name
        assert "_local" not in sql, name
    assert re.search(r"\bTO otel_traces_trace_id_ts\b", formatted[MV])
    assert re.search(r"\bFROM otel_traces\b", formatted[MV])


# --- 5. single node and cluster describe the same tables ---------------------------------


@pytest.fixture(scope="module")
def single_and_cluster(engine_url: str) -> Iterator[tuple[Any, Any]]:
    """One database migrated for one node, one built from the cluster DDL (made creatable)."""
    single, single_name = _open_database(engine_url)
    clustered, clustered_name = _open_database(engine_url)
    try:
        Migrator(single, SchemaOptions()).migrate()
        for sql in all_statements(SchemaOptions(cluster=CLUSTER)):
            if not sql.startswith("INSERT"):  # fills read the Distributed fronts, Null here
                clustered.command(_creatable_without_a_cluster(sql, CLUSTER))
        yield single, clustered
    finally:
        _drop_database(single, single_name)
        _drop_database(clustered, clustered_name)


@pytest.mark.parametrize("table", [*TABLES, *ROLLUPS, *HOURLY, *EDGES, *METRICS])
def test_single_node_and_cluster_tables_have_the_same_columns(
    single_and_cluster: tuple[Any, Any], table: str
) -> None:
    single, clustered = single_and_cluster
    expected = _columns(single, table)
    assert len(expected) >= 3
    assert _columns(clustered, f"{table}_local") == expected
    assert _columns(clustered, table) == expected


def test_cluster_view_fills_the_local_lookup_table(single_and_cluster: tuple[Any, Any]) -> None:
    _, clustered = single_and_cluster
    trace_id = uuid.uuid4().hex
    names = COLLECTOR["otel_traces"]["insert_columns"]
    span = _collector_span(trace_id)
    clustered.insert("otel_traces_local", [[span[n] for n in names]], column_names=names)
    assert _count(clustered, "otel_traces_trace_id_ts_local", trace_id) == 1


# --- 6. retention ------------------------------------------------------------------------


def _retention(traces: int, logs: int) -> SchemaOptions:
    return SchemaOptions(traces_retention_days=traces, logs_retention_days=logs)


EXPIRING = [*TABLES, *ROLLUPS, *HOURLY, *EDGES, *METRICS]


def _expected_ttl(traces: int, logs: int) -> dict[str, tuple[str, int] | None]:
    """Rollups and metrics follow the traces retention."""
    expiring = {**TABLES, **ROLLUPS, **HOURLY, **EDGES, **METRICS}
    days = {t: logs if t == "otel_logs" else traces for t in expiring}
    return {t: (expiring[t], days[t]) if days[t] else None for t in expiring}


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([(3, 5), (10, 0)], id="3d,5d-then-10d,forever"),
        pytest.param([(0, 0), (3, 5)], id="forever-then-3d,5d"),
        pytest.param([(3, 5), (3, 9), (0, 0)], id="3d,5d-then-logs-9d-then-forever"),
    ],
)
def test_retention_follows_the_settings_and_keeps_rows(db: Any, steps: list[tuple[int, int]]):
    first, *changes = steps
    assert Migrator(db, _retention(*first)).migrate() == MIGRATION_NAMES
    assert {t: _ttl(db, t) for t in EXPIRING} == _expected_ttl(*first)

    trace_id = uuid.uuid4().hex
    _insert_as_collector(db, "otel_traces", _collector_span(trace_id))
    _insert_as_collector(db, "otel_logs", _collector_log(trace_id))
    assert {t: _count(db, t, trace_id) for t in TABLES} == dict.fromkeys(TABLES, 1)

    for traces, logs in changes:
        assert Migrator(db, _retention(traces, logs)).migrate() == []
        assert {t: _ttl(db, t) for t in EXPIRING} == _expected_ttl(traces, logs)
        assert {t: _count(db, t, trace_id) for t in TABLES} == dict.fromkeys(TABLES, 1)


@pytest.mark.parametrize(
    ("initial", "final"),
    [
        pytest.param((3, 5), (10, 0), id="changed"),
        pytest.param((0, 0), (3, 5), id="added"),
        pytest.param((3, 5), (0, 0), id="removed"),
    ],
)
def test_changed_retention_matches_a_fresh_install_with_it(
    new_db: NewDatabase, initial: tuple[int, int], final: tuple[int, int]
) -> None:
    fresh, changed = new_db(), new_db()
    Migrator(fresh, _retention(*final)).migrate()
    Migrator(changed, _retention(*initial)).migrate()
    Migrator(changed, _retention(*final)).migrate()

    def definitions(client: Any) -> dict[str, str]:
        rows = client.query(
            "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()"
        ).result_rows
        return dict(rows)

    assert definitions(changed) == definitions(fresh)


def _projections(client: Any, table: str) -> list[str]:
    (query,) = client.query(
        "SELECT create_table_query FROM system.tables "
        "WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).first_row
    return re.findall(r"PROJECTION (\w+)", query)


def test_the_trace_id_projection_follows_the_setting_and_serves_trace_lookups(db: Any) -> None:
    """Decision 0023: off by default; when on, a trace's spans are read through the copy
    ordered by trace id, parts written before it included; off again drops it, rows stay."""
    assert Migrator(db, SchemaOptions()).migrate() == MIGRATION_NAMES
    assert _projections(db, "otel_traces") == []
    trace_id = uuid.uuid4().hex
    before = _collector_span(trace_id)
    _insert_as_collector(db, "otel_traces", before)

    assert Migrator(db, SchemaOptions(trace_id_projection=True)).migrate() == []
    assert _projections(db, "otel_traces") == [TRACE_ID_PROJECTION]
    after = {**_collector_span(trace_id), "SpanId": uuid.uuid4().hex[:16]}
    _insert_as_collector(db, "otel_traces", after)
    now_ns = int(datetime.now(UTC).timestamp() * 1e9)
    window = {
        "trace_id": trace_id,
        "start_ns": now_ns - 3_600 * 10**9,
        "end_ns": now_ns + 60 * 10**9,
    }
    spans = db.query(TRACE_SPANS_SQL, parameters=window).named_results()
    assert sorted(row["span_id"] for row in spans) == sorted([before["SpanId"], after["SpanId"]])
    # Other traces' spans, enough for the copy to beat the table's granules: the parts written
    # since are read through it (the query fails otherwise).
    db.command(
        "INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ServiceName, SpanName) "
        "SELECT now64(9), lower(hex(randomString(16))), lower(hex(randomString(8))), "
        "concat('filler-', toString(number % 7)), toString(number % 13) FROM numbers(40000)"
    )
    forced = db.query(
        TRACE_SPANS_SQL + f" SETTINGS force_optimize_projection_name = '{TRACE_ID_PROJECTION}'",
        parameters={**window, "start_ns": now_ns - 60 * 10**9},
    ).result_rows
    assert forced

    assert Migrator(db, SchemaOptions()).migrate() == []
    assert _projections(db, "otel_traces") == []
    assert _count(db, "otel_traces", trace_id) == 2
    assert len(db.query(TRACE_SPANS_SQL, parameters=window).result_rows) == 2


# --- 7. unusable URLs --------------------------------------------------------------------


def _must_not_connect(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"connect() opened a client for an unusable URL: {args} {kwargs}")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("ftp://x", "unsupported ClickHouse URL scheme 'ftp'", id="ftp"),
        pytest.param("clickhouse://h:9000/db", "unsupported ClickHouse URL scheme", id="native"),
        pytest.param("chdb:relative/path", "absolute path", id="chdb-relative"),
        pytest.param("chdb://relative", "absolute path", id="chdb-host-only"),
        pytest.param("chdb://", "absolute path", id="chdb-empty"),
    ],
)
def test_unusable_url_is_a_config_error_naming_the_expected_form(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    monkeypatch.setattr(clickhouse_connect, "get_client", _must_not_connect)
    with pytest.raises(StorageConfigError) as raised:
        connect(url)
    message = str(raised.value)
    assert reason in message
    assert "chdb:///abs/dir" in message


def test_chdb_url_with_a_relative_path_before_the_slash_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `chdb://relative/path` means the relative path relative/path, not /path. The path part
    # here is under tmp_path, so even a regression would create a directory only there.
    monkeypatch.setattr(clickhouse_connect, "get_client", _must_not_connect)
    url = f"chdb://relative{tmp_path / 'path'}"
    with pytest.raises(StorageConfigError, match=r"chdb:///abs/dir"):
        connect(url)
