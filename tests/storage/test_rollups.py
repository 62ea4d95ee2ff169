"""Minute rollups (migration 0004): rows inserted the way an OpenTelemetry Collector writes
them — an INSERT naming the Collector's columns, either enum spelling, old or new semantic-
convention keys — land in ``otel_red_1m`` and ``otel_db_1m`` with the right counts, errors,
latency and SQL fingerprints; parts of one minute, retried inserts and shards merge right.

Every test works in a database of its own inside the session's one chDB engine.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.storage.test_schema import _creatable_without_a_cluster
from tracehouse.config import Settings
from tracehouse.query import services, sql
from tracehouse.query._rollups import (
    DB_IN_WINDOW,
    DB_IN_WINDOW_AND_BASELINE,
    RED_IN_WINDOW,
    SERVICES_IN_WINDOW,
    WINDOW_AND_BASELINE,
    minute_window,
    overview_window,
    window_and_baseline,
)
from tracehouse.query.params import TimeRange
from tracehouse.storage import Migrator, SchemaOptions, all_statements, connect, conventions
from tracehouse.storage.schema import load_migrations, parse_slow_sql_thresholds, render

DATA = Path(__file__).parent.parent / "data"
COLLECTOR_COLUMNS = json.loads((DATA / "collector_schema.json").read_text())["otel_traces"][
    "insert_columns"
]
FINGERPRINTS = json.loads((DATA / "sql_fingerprints.json").read_text())
MS = 1_000_000  # ns
# A whole minute in the past; spans of a test start at +0 s and stay within it.
MINUTE = datetime(2026, 11, 23, 9, 58, tzinfo=UTC)

# Readers as the API reads: aggregate the simple columns, -Merge the states.
RED_SQL = """
SELECT SpanName, Kind, sum(Calls), sum(Errors), sum(DurationSum), min(DurationMin),
       max(DurationMax), quantilesTDigestMerge(0.5, 0.99)(DurationQuantiles)
FROM otel_red_1m WHERE ServiceName = {s:String}
GROUP BY SpanName, Kind ORDER BY SpanName, Kind
"""
DB_SQL = """
SELECT DbSystem, DbNamespace, any(NormalizedStatement), sum(Calls), sum(Errors),
       sum(SlowCalls), max(SlowThresholdMs), sum(DurationSum), max(DurationMax),
       groupUniqArrayMerge(5)(ExemplarTraceIds), argMaxMerge(SlowestTraceId)
FROM otel_db_1m WHERE ServiceName = {s:String}
GROUP BY DbSystem, DbNamespace, Fingerprint
ORDER BY DbSystem, DbNamespace, any(NormalizedStatement)
"""


# --- helpers -----------------------------------------------------------------------------


def _span(
    service: str,
    name: str = "GET /checkout",
    kind: str = "SPAN_KIND_SERVER",
    status: str = "STATUS_CODE_UNSET",
    duration_ms: float = 1.0,
    attributes: dict[str, str] | None = None,
    second: float = 0.0,
    trace_id: str | None = None,
) -> dict[str, Any]:
    """A span as the Collector's exporter fills its INSERT's columns."""
    return {
        "Timestamp": MINUTE + timedelta(seconds=second),
        "TraceId": trace_id or uuid.uuid4().hex,
        "SpanId": uuid.uuid4().hex[:16],
        "ParentSpanId": "",
        "TraceState": "",
        "SpanName": name,
        "SpanKind": kind,
        "ServiceName": service,
        "ResourceAttributes": {"service.name": service},
        "ScopeName": "tests.rollups",
        "ScopeVersion": "1.0",
        "SpanAttributes": attributes or {},
        "Duration": int(duration_ms * MS),
        "StatusCode": status,
        "StatusMessage": "",
        "Events.Timestamp": [],
        "Events.Name": [],
        "Events.Attributes": [],
        "Links.TraceId": [],
        "Links.SpanId": [],
        "Links.TraceState": [],
        "Links.Attributes": [],
    }


def _db_span(service: str, attributes: dict[str, str], **fields: Any) -> dict[str, Any]:
    return _span(service, "db", "SPAN_KIND_CLIENT", attributes=attributes, **fields)


def _insert_as_collector(client: Any, rows: list[dict[str, Any]], **settings: Any) -> None:
    """One INSERT naming exactly the Collector's columns, in the Collector's order."""
    client.insert(
        "otel_traces",
        [[row[c] for c in COLLECTOR_COLUMNS] for row in rows],
        column_names=COLLECTOR_COLUMNS,
        settings=settings or None,
    )


def _rows(client: Any, sql_text: str, **parameters: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql_text, parameters=parameters).result_rows]


def _named(client: Any, sql_text: str, **parameters: Any) -> list[dict[str, Any]]:
    result = client.query(sql_text, parameters=parameters)
    return [dict(zip(result.column_names, r, strict=True)) for r in result.result_rows]


def _open_database(engine_url: str) -> tuple[Any, str]:
    name = f"rollups_{uuid.uuid4().hex[:12]}"
    client = connect(engine_url)
    client.command(f"CREATE DATABASE {name}")
    client.database = name
    assert client.query("SELECT currentDatabase()").result_rows == [(name,)]
    return client, name


@pytest.fixture
def db(engine_url: str) -> Iterator[Any]:
    """A fresh database with every migration applied."""
    client, name = _open_database(engine_url)
    try:
        Migrator(client, SchemaOptions()).migrate()
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
        client.close()


@pytest.fixture
def service() -> str:
    return f"svc-{uuid.uuid4().hex[:12]}"


# --- RED ---------------------------------------------------------------------------------

# (raw SpanKind, raw StatusCode) as the Collector has spelled them, old and new.
SPELLINGS = [
    ("SPAN_KIND_SERVER", "STATUS_CODE_ERROR"),
    ("Server", "Error"),
    ("SPAN_KIND_CLIENT", "STATUS_CODE_OK"),
    ("Client", "Ok"),
    ("SPAN_KIND_INTERNAL", "STATUS_CODE_UNSET"),
    ("Internal", "Unset"),
    ("SPAN_KIND_PRODUCER", "STATUS_CODE_ERROR"),
    ("Producer", "Error"),
    ("SPAN_KIND_CONSUMER", "STATUS_CODE_OK"),
    ("Consumer", "Ok"),
    ("SPAN_KIND_UNSPECIFIED", "STATUS_CODE_UNSET"),
    ("Unspecified", "Unset"),
    ("", ""),
]


def test_red_rollup_counts_collector_rows_in_both_spellings(db: Any, service: str) -> None:
    rows = [
        # 4 server calls of one operation, old and new spellings, two of them errors.
        _span(service, "GET /cart", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR", 30, second=1),
        _span(service, "GET /cart", "Server", "Error", 10, second=2),
        _span(service, "GET /cart", "SPAN_KIND_SERVER", "STATUS_CODE_OK", 20, second=3),
        _span(service, "GET /cart", "Server", "Unset", 40, second=4),
        # The same name as a client span is another row; Ok is not an error.
        _span(service, "GET /cart", "Client", "Ok", 5, second=5),
        _span(service, "GET /cart", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET", 7, second=6),
        _span(service, "publish", "Producer", "STATUS_CODE_ERROR", 2, second=7),
    ]
    _insert_as_collector(db, rows)

    assert _rows(db, RED_SQL, s=service) == [
        ("GET /cart", "client", 2, 0, 12 * MS, 5 * MS, 7 * MS, [5 * MS, 7 * MS]),
        ("GET /cart", "server", 4, 2, 100 * MS, 10 * MS, 40 * MS, [20 * MS, 40 * MS]),
        ("publish", "producer", 1, 1, 2 * MS, 2 * MS, 2 * MS, [2 * MS, 2 * MS]),
    ]
    minutes = (
        "SELECT DISTINCT toUnixTimestamp(Minute) FROM otel_red_1m WHERE ServiceName = {s:String}"
    )
    assert _rows(db, minutes, s=service) == [(int(MINUTE.timestamp()),)]


def test_red_rollup_kind_and_error_agree_with_the_reading_conventions(
    db: Any, service: str
) -> None:
    """The view's frozen copies of SPAN_KIND and IS_ERROR read every spelling as the
    conventions module does (including values neither spelling has)."""
    rows = [
        _span(service, f"op-{i}", kind, status, second=i)
        for i, (kind, status) in enumerate(SPELLINGS)
    ]
    _insert_as_collector(db, rows)

    raw = _rows(
        db,
        f"SELECT SpanName, {conventions.SPAN_KIND}, toUInt64({conventions.IS_ERROR}) "
        "FROM otel_traces WHERE ServiceName = {s:String} ORDER BY SpanName",
        s=service,
    )
    rolled = _rows(
        db,
        "SELECT SpanName, Kind, sum(Errors) FROM otel_red_1m WHERE ServiceName = {s:String} "
        "GROUP BY SpanName, Kind ORDER BY SpanName",
        s=service,
    )
    assert rolled == raw
    assert {kind for _, kind, _ in rolled} == {
        "server",
        "client",
        "internal",
        "producer",
        "consumer",
        "unspecified",
    }
    assert sum(errors for *_, errors in rolled) == 4


# --- database calls ----------------------------------------------------------------------


def test_db_rollup_reads_new_and_old_semconv_keys(db: Any, service: str) -> None:
    new = {
        "db.system.name": "postgresql",
        "db.namespace": "shop",
        "db.query.text": "SELECT * FROM orders WHERE id = 42",
    }
    old = {
        "db.system": "postgresql",
        "db.name": "shop",
        "db.statement": "SELECT * FROM orders WHERE id = 7",
    }
    both = {  # new keys win over old ones
        **{"db.system": "mysql", "db.name": "legacy", "db.statement": "SELECT 1"},
        **new,
    }
    redis_old = {"db.system": "redis", "db.statement": "GET user:42"}
    no_statement = {"db.system.name": "postgresql", "db.namespace": "shop"}
    _insert_as_collector(
        db,
        [
            _db_span(service, new, duration_ms=3, second=1),
            _db_span(service, old, duration_ms=4, second=2, status="Error"),
            _db_span(service, both, duration_ms=5, second=3),
            _db_span(service, redis_old, duration_ms=1, second=4),
            _db_span(service, no_statement, duration_ms=9, second=5),
            _span(service, "GET /cart", second=6),
        ],
    )

    rows = _rows(db, DB_SQL, s=service)
    assert [r[:9] for r in rows] == [
        ("postgresql", "shop", "SELECT * FROM orders WHERE id = ?", 3, 1, 0, 200, 12 * MS, 5 * MS),
        ("redis", "", "GET user:?", 1, 0, 0, 10, 1 * MS, 1 * MS),
    ]
    # Only spans with a statement are database calls; the RED rollup counts every span.
    assert sum(r[3] for r in rows) == 4
    assert _rows(
        db, "SELECT sum(Calls) FROM otel_red_1m WHERE ServiceName = {s:String}", s=service
    ) == [(6,)]


@pytest.mark.parametrize(
    ("system", "durations_ms", "threshold_ms", "slow"),
    [
        pytest.param("postgresql", [150, 199.9, 200, 250, 1200], 200, 3, id="postgresql-200ms"),
        pytest.param("mysql", [5, 300], 200, 1, id="default-200ms"),
        pytest.param("redis", [5, 9.9, 10, 15], 10, 2, id="redis-10ms"),
        pytest.param("memcached", [1, 11], 10, 1, id="memcached-10ms"),
    ],
)
def test_db_rollup_counts_slow_calls_per_system_threshold(
    db: Any, service: str, system: str, durations_ms: list[float], threshold_ms: int, slow: int
) -> None:
    attributes = {"db.system.name": system, "db.query.text": "SELECT * FROM t WHERE id = 1"}
    _insert_as_collector(
        db,
        [
            _db_span(service, attributes, duration_ms=d, second=i)
            for i, d in enumerate(durations_ms)
        ],
    )
    ((calls, slow_calls, threshold),) = _rows(
        db,
        "SELECT sum(Calls), sum(SlowCalls), max(SlowThresholdMs) FROM otel_db_1m "
        "WHERE ServiceName = {s:String}",
        s=service,
    )
    assert (calls, slow_calls, threshold) == (len(durations_ms), slow, threshold_ms)


_SLOW_OF_SERVICE = (
    "SELECT sum(SlowCalls), max(SlowThresholdMs) FROM otel_db_1m WHERE ServiceName = {s:String}"
)


def _slow(db: Any, service: str, system: str, durations_ms: list[float]) -> tuple[int, int]:
    """Insert calls to ``system``; (slow calls, threshold) of the service's rollup rows."""
    attributes = {"db.system.name": system, "db.query.text": "SELECT 1"}
    rows = [
        _db_span(service, attributes, duration_ms=d, second=i) for i, d in enumerate(durations_ms)
    ]
    _insert_as_collector(db, rows)
    ((slow_calls, threshold),) = _rows(
        db,
        _SLOW_OF_SERVICE,
        s=service,
    )
    return int(slow_calls), int(threshold)


def test_slow_sql_thresholds_come_from_the_configuration_and_follow_its_changes(
    engine_url: str,
) -> None:
    client, name = _open_database(engine_url)
    try:
        default, systems = parse_slow_sql_thresholds("default:50, MySQL:20, redis:5")
        assert (default, systems) == (50, (("mysql", 20), ("redis", 5)))
        options = SchemaOptions(slow_sql_default_ms=default, slow_sql_ms=systems)
        Migrator(client, options).migrate()
        ((view,),) = _rows(
            client,
            "SELECT create_table_query FROM system.tables WHERE name = 'otel_db_1m_mv' "
            "AND database = currentDatabase()",
        )
        assert options.slow_sql_expression() in view  # as ClickHouse prints it: no re-render
        first = f"svc-{uuid.uuid4().hex[:12]}"
        assert _slow(client, first, "mysql", [19, 21]) == (1, 20)
        assert _slow(client, f"{first}-pg", "postgresql", [49, 51, 300]) == (2, 50)

        # Changed thresholds: the next migrate re-renders the view; stored minutes keep theirs.
        changed = SchemaOptions(slow_sql_default_ms=400, slow_sql_ms=(("mysql", 1),))
        assert Migrator(client, changed).migrate() == []
        assert _slow(client, f"{first}-2", "postgresql", [49, 51, 300]) == (0, 400)
        assert _slow(client, f"{first}-3", "mysql", [2]) == (1, 1)
        assert _rows(client, _SLOW_OF_SERVICE, s=first) == [(1, 20)]
    finally:
        client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
        client.close()


@pytest.mark.parametrize(
    "text",
    ["default=200", "redis:", "redis:ten", ":10", "redis:0", "redis:-1", "redis:5000"],
)
def test_bad_slow_sql_thresholds_are_refused_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="slow SQL threshold"):
        parse_slow_sql_thresholds(text)
    with pytest.raises(ValueError, match="slow SQL threshold"):
        Settings(slow_sql_thresholds=text)


def test_db_rollup_keeps_exemplar_and_slowest_trace_ids(db: Any, service: str) -> None:
    attributes = {"db.system.name": "postgresql", "db.query.text": "SELECT * FROM t WHERE a = 1"}
    traces = [uuid.uuid4().hex for _ in range(8)]
    durations = [3, 1, 4, 1, 5, 9, 2, 6]
    _insert_as_collector(
        db,
        [
            _db_span(service, attributes, duration_ms=d, second=i, trace_id=t)
            for i, (t, d) in enumerate(zip(traces, durations, strict=True))
        ],
    )
    ((exemplars, slowest),) = [r[-2:] for r in _rows(db, DB_SQL, s=service)]
    assert 1 <= len(exemplars) <= 5
    assert set(exemplars) <= set(traces)
    assert slowest == traces[durations.index(9)]


# --- fingerprints --------------------------------------------------------------------------


def _fingerprints(db: Any, statements: list[str]) -> list[tuple[int, str]]:
    """(fingerprint, normalized text) of each statement, each written by its own service."""
    prefix = f"fp-{uuid.uuid4().hex[:8]}"
    _insert_as_collector(
        db,
        [
            _db_span(
                f"{prefix}-{i:02d}",
                {"db.system.name": "postgresql", "db.query.text": text},
                second=i,
            )
            for i, text in enumerate(statements)
        ],
    )
    rows = _rows(
        db,
        "SELECT ServiceName, Fingerprint, any(NormalizedStatement) FROM otel_db_1m "
        "WHERE startsWith(ServiceName, {p:String}) GROUP BY ServiceName, Fingerprint "
        "ORDER BY ServiceName",
        p=prefix,
    )
    assert len(rows) == len(statements)
    return [(fingerprint, text) for _, fingerprint, text in rows]


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in FINGERPRINTS["same"]])
def test_statements_of_one_shape_share_a_fingerprint(db: Any, case: dict[str, Any]) -> None:
    found = _fingerprints(db, case["statements"])
    assert len({fingerprint for fingerprint, _ in found}) == 1, found
    # The text shown is one of the spellings seen; they differ at most in letter case.
    assert [text.lower() for _, text in found] == [case["normalized"].lower()] * len(found)


@pytest.mark.parametrize("case", [pytest.param(c, id=c["id"]) for c in FINGERPRINTS["different"]])
def test_statements_of_different_shapes_get_different_fingerprints(
    db: Any, case: dict[str, Any]
) -> None:
    found = _fingerprints(db, case["statements"])
    assert len({fingerprint for fingerprint, _ in found}) == len(case["statements"]), found


def test_fingerprint_of_literal_values_and_in_lists_in_one_service(db: Any, service: str) -> None:
    """The brief's example end to end: one service, one row per shape, counts added up."""
    texts = [
        "SELECT * FROM orders WHERE id = 42",
        "SELECT * FROM orders WHERE id = 7",
        "SELECT * FROM orders WHERE id IN (1, 2)",
        "SELECT * FROM orders WHERE id IN (3, 4, 5, 6)",
    ]
    _insert_as_collector(
        db,
        [
            _db_span(service, {"db.system.name": "postgresql", "db.query.text": t}, second=i)
            for i, t in enumerate(texts)
        ],
    )
    assert [(r[2], r[3]) for r in _rows(db, DB_SQL, s=service)] == [
        ("SELECT * FROM orders WHERE id = ?", 2),
        ("SELECT * FROM orders WHERE id IN (?..)", 2),
    ]


# --- merging -----------------------------------------------------------------------------


def test_two_inserts_into_one_minute_merge_in_reads_and_in_the_background(
    db: Any, service: str
) -> None:
    statement = {"db.system.name": "postgresql", "db.query.text": "SELECT * FROM t WHERE id = 1"}
    first = [_span(service, "GET /a", duration_ms=10, second=i) for i in range(9)]
    first += [_db_span(service, statement, duration_ms=10, second=9)]
    second = [_span(service, "GET /a", "Server", "Error", duration_ms=1000, second=30)]
    second += [_db_span(service, statement, duration_ms=300, second=31, status="Error")]
    _insert_as_collector(db, first)
    _insert_as_collector(db, second)

    def stored(table: str) -> int:
        query = f"SELECT count() FROM {table} WHERE ServiceName = {{s:String}}"
        return int(_rows(db, query, s=service)[0][0])

    def read() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        return _rows(db, RED_SQL, s=service), [r[:9] for r in _rows(db, DB_SQL, s=service)]

    # A row per insert and key (two operations: GET /a and db), not merged yet: readers merge.
    assert (stored("otel_red_1m"), stored("otel_db_1m")) == (4, 2)
    red, database = read()
    assert red == [
        ("GET /a", "server", 10, 1, 1090 * MS, 10 * MS, 1000 * MS, [10 * MS, 1000 * MS]),
        ("db", "client", 2, 1, 310 * MS, 10 * MS, 300 * MS, [10 * MS, 300 * MS]),
    ]
    assert database == [
        ("postgresql", "", "SELECT * FROM t WHERE id = ?", 2, 1, 1, 200, 310 * MS, 300 * MS),
    ]

    db.command("OPTIMIZE TABLE otel_red_1m FINAL")
    db.command("OPTIMIZE TABLE otel_db_1m FINAL")
    assert (stored("otel_red_1m"), stored("otel_db_1m")) == (2, 1)
    assert read() == (red, database)


def test_a_retried_insert_with_the_same_token_is_rolled_up_once(db: Any, service: str) -> None:
    """Our ingest retries a group under one insert_deduplication_token; the rollups carry the
    same deduplication as otel_traces, so a retry does not count twice."""
    rows = [
        _span(service, "GET /a", second=1),
        _db_span(service, {"db.system": "mysql", "db.statement": "SELECT 1"}, second=2),
    ]
    token = f"group-{uuid.uuid4().hex}"
    for _ in range(2):
        _insert_as_collector(db, rows, insert_deduplicate=1, insert_deduplication_token=token)
    _insert_as_collector(db, rows, insert_deduplicate=1, insert_deduplication_token=token + "-2")

    assert _rows(
        db, "SELECT count() FROM otel_traces WHERE ServiceName = {s:String}", s=service
    ) == [(4,)]
    assert _rows(
        db, "SELECT sum(Calls) FROM otel_red_1m WHERE ServiceName = {s:String}", s=service
    ) == [(4,)]
    assert _rows(
        db, "SELECT sum(Calls) FROM otel_db_1m WHERE ServiceName = {s:String}", s=service
    ) == [(2,)]


@pytest.fixture
def two_shards(engine_url: str) -> Iterator[tuple[Any, Any, Any]]:
    """Two "shards" built from the cluster DDL (made creatable without a cluster), and a
    reader database whose otel_red_1m / otel_db_1m are Merge tables over both shards' local
    tables — standing in for the Distributed tables, which merge partial states the same way."""
    opened = [_open_database(engine_url) for _ in range(3)]
    (shard_a, name_a), (shard_b, name_b), (reader, _) = opened
    try:
        for shard in (shard_a, shard_b):
            for statement in all_statements(SchemaOptions(cluster="tracehouse")):
                if not statement.startswith("INSERT"):  # fills read the fronts, Null here
                    shard.command(_creatable_without_a_cluster(statement, "tracehouse"))
        for table in ("otel_red_1m", "otel_db_1m", "otel_red_1h", "otel_db_1h", "otel_services_1h"):
            reader.command(
                f"CREATE TABLE {table} AS {name_a}.{table}_local "
                f"ENGINE = Merge(REGEXP('^({name_a}|{name_b})$'), '^{table}_local$')"
            )
        yield shard_a, shard_b, reader
    finally:
        for client, name in opened:
            client.command(f"DROP DATABASE IF EXISTS {name} SYNC")
            client.close()


def test_rollups_of_one_minute_on_two_shards_merge_through_the_front_table(
    two_shards: tuple[Any, Any, Any], service: str
) -> None:
    shard_a, shard_b, reader = two_shards
    statement = {"db.system.name": "postgresql", "db.query.text": "SELECT * FROM t WHERE id = 1"}
    for shard, duration, status in ((shard_a, 10, "Ok"), (shard_b, 1000, "Error")):
        rows = [_span(service, "GET /a", status=status, duration_ms=duration, second=1)]
        rows += [_db_span(service, statement, duration_ms=duration, second=2, status=status)]
        names = COLLECTOR_COLUMNS
        shard.insert("otel_traces_local", [[r[c] for c in names] for r in rows], column_names=names)

    # Hours around the minute: its hour is read from the shards' hourly tables.
    hours = TimeRange(MINUTE - timedelta(hours=3), MINUTE + timedelta(hours=3))
    window = minute_window(hours).parameters()
    assert window["hours_start"] <= MINUTE.timestamp() < window["hours_end"]
    (red,) = _named(reader, services.SERVICES_SQL, **window, kinds=["server"])
    assert {k: red[k] for k in ("service", "calls", "errors", "duration_sum", "duration_max")} == {
        "service": service,
        "calls": 2,
        "errors": 1,
        "duration_sum": 1010 * MS,
        "duration_max": 1000 * MS,
    }
    assert red["quantiles"][2] == 1000 * MS

    filters = {"service": service, "db": "", "namespace": "", "limit": 10}
    (database,) = _named(reader, sql.STATEMENTS_SQL["total"], **window, **filters)
    assert {k: database[k] for k in ("calls", "errors", "slow_calls", "total_ns", "max_ns")} == {
        "calls": 2,
        "errors": 1,
        "slow_calls": 1,
        "total_ns": 1010 * MS,
        "max_ns": 1000 * MS,
    }


# --- the hourly tier (migration 0013) ------------------------------------------------------

# Spans over three hours: the window below starts and ends inside an hour, so it reads minutes
# at both ends and one whole hour from the hourly tables.
HOURLY_OFFSETS_S = [-7_000.0, -6_500.0, -3_590.0, -1_800.0, -1_799.0, -30.0, 50.0, 1_000.0]

RED_BY_OPERATION = """
SELECT SpanName, Kind, sum(Calls), sum(Errors), sum(DurationSum), min(DurationMin),
       max(DurationMax), quantilesTDigestMerge(0.5, 0.99)(DurationQuantiles)
FROM __SOURCE__ WHERE ServiceName = {s:String}
GROUP BY SpanName, Kind ORDER BY SpanName, Kind
"""
RED_BY_KIND = """
SELECT Kind, sum(Calls), sum(Errors), sum(DurationSum), min(DurationMin), max(DurationMax),
       quantilesTDigestMerge(0.5, 0.99)(DurationQuantiles)
FROM __SOURCE__ WHERE ServiceName = {s:String}
GROUP BY Kind ORDER BY Kind
"""
DB_BY_FINGERPRINT = """
SELECT Fingerprint, any(NormalizedStatement), sum(Calls), sum(Errors), sum(SlowCalls),
       max(SlowThresholdMs), sum(DurationSum), max(DurationMax),
       quantilesTDigestMerge(0.5, 0.99)(DurationQuantiles), argMaxMerge(SlowestTraceId),
       length(groupUniqArrayMerge(5)(ExemplarTraceIds))
FROM __SOURCE__ WHERE ServiceName = {s:String}
GROUP BY Fingerprint ORDER BY Fingerprint
"""


def _spread_over_hours(service: str) -> list[dict[str, Any]]:
    rows = []
    for n, offset in enumerate(HOURLY_OFFSETS_S):
        status = "STATUS_CODE_ERROR" if n % 3 == 0 else "STATUS_CODE_UNSET"
        rows.append(_span(service, second=offset, duration_ms=5.0 * (n + 1), status=status))
        statement = {"db.system": "postgresql", "db.statement": f"SELECT * FROM t WHERE id = {n}"}
        rows.append(_db_span(service, statement, second=offset, duration_ms=100.0 * (n + 1)))
    return rows


def test_hourly_rollups_hold_what_the_minute_rollups_hold(db: Any, service: str) -> None:
    rows = _spread_over_hours(service)
    _insert_as_collector(db, rows)
    for template in (RED_BY_OPERATION, DB_BY_FINGERPRINT):
        table = "otel_red" if template is RED_BY_OPERATION else "otel_db"
        minutes = _rows(db, template.replace("__SOURCE__", f"{table}_1m"), s=service)
        hours = _rows(db, template.replace("__SOURCE__", f"{table}_1h"), s=service)
        assert minutes and hours == minutes
    # The services' hours (migration 0015): the same spans per kind, without the operation.
    by_kind = _rows(db, RED_BY_KIND.replace("__SOURCE__", "otel_red_1m"), s=service)
    assert (
        by_kind
        and _rows(db, RED_BY_KIND.replace("__SOURCE__", "otel_services_1h"), s=service) == by_kind
    )
    # Exemplars: any five of the statement's traces (which five depends on the merge order).
    traces = {r["TraceId"] for r in rows if r["SpanName"] == "db"}
    (exemplars,) = _rows(
        db,
        "SELECT groupUniqArrayMerge(5)(ExemplarTraceIds) FROM otel_db_1h "
        "WHERE ServiceName = {s:String}",
        s=service,
    )[0]
    assert len(exemplars) == 5 and set(exemplars) <= traces
    (hour_rows,) = _rows(
        db, "SELECT uniqExact(Hour) FROM otel_red_1h WHERE ServiceName = {s:String}", s=service
    )[0]
    assert hour_rows == 3


def test_the_migration_fills_the_hourly_tier_from_minutes_already_rolled_up(
    db: Any, service: str
) -> None:
    """A database upgraded to 0013 and 0015 has minutes from before the hourly views existed:
    0013 fills the operations' hours from them, 0015 the services' from those."""
    _insert_as_collector(db, _spread_over_hours(service))
    tables = (
        ("otel_red_1h", RED_BY_OPERATION),
        ("otel_db_1h", DB_BY_FINGERPRINT),
        ("otel_services_1h", RED_BY_KIND),
    )
    expected = {t: _rows(db, q.replace("__SOURCE__", t), s=service) for t, q in tables}
    for table, _ in tables:
        db.command(f"TRUNCATE TABLE {table}")
    migrations = [m for m in load_migrations() if m.name in ("hourly_rollups", "service_hours")]
    for migration in sorted(migrations, key=lambda m: m.version):
        for statement in render(migration, SchemaOptions()):
            if statement.startswith("INSERT"):
                db.command(statement)
    for table, template in tables:
        assert (
            expected[table]
            and _rows(db, template.replace("__SOURCE__", table), s=service) == (expected[table])
        )


@pytest.mark.parametrize(
    ("start_s", "end_s"),
    [
        pytest.param(-7_200, 1_800, id="minutes-hours-minutes"),
        pytest.param(-1_700, 1_500, id="less-than-an-hour"),
        pytest.param(-3_600 * 3, 3_600, id="whole-hours"),
        # Six hours and more: widened to whole hours, read from the hourly tables only.
        pytest.param(-21_600 - 1_020, 780, id="widened-to-hours"),
    ],
)
def test_tiered_reads_equal_minute_reads_over_any_window(
    db: Any, service: str, start_s: int, end_s: int
) -> None:
    """RED_IN_WINDOW / DB_IN_WINDOW (whole hours from the hourly tier, the rest from minutes)
    count every span of the window once, like the minute tables alone."""
    _insert_as_collector(db, _spread_over_hours(service))
    window = overview_window(
        TimeRange(MINUTE + timedelta(seconds=start_s), MINUTE + timedelta(seconds=end_s))
    )
    parameters = {**window.parameters(), "s": service}
    in_window = (
        "(SELECT * FROM __TABLE__ WHERE Minute >= fromUnixTimestamp({start:Int64})"
        " AND Minute < fromUnixTimestamp({end:Int64}))"
    )
    for table, tiered, template in (
        ("otel_red_1m", RED_IN_WINDOW, RED_BY_OPERATION),
        ("otel_red_1m", SERVICES_IN_WINDOW, RED_BY_KIND),
        ("otel_db_1m", DB_IN_WINDOW, DB_BY_FINGERPRINT),
    ):
        minutes = _rows(
            db,
            template.replace("__SOURCE__", in_window.replace("__TABLE__", table)),
            **parameters,
        )
        assert minutes, table
        assert _rows(db, template.replace("__SOURCE__", tiered), **parameters) == minutes


def test_a_window_and_its_baseline_read_by_hours_count_like_minutes(db: Any, service: str) -> None:
    """DB_IN_WINDOW_AND_BASELINE (slow services' SQL time): the baseline (07:58-09:08) holds the
    whole hour 08:00 and the window (09:08-11:00) minutes and the whole hour 10:00; each span
    counts once, on its side, as when both are read from minutes."""
    _insert_as_collector(db, _spread_over_hours(service))
    window = minute_window(
        TimeRange(MINUTE - timedelta(seconds=3_000), MINUTE + timedelta(hours=1, minutes=2))
    )
    base_start, base_end = MINUTE - timedelta(seconds=7_200), window.start
    parameters = {**window_and_baseline(window, base_start, base_end), "s": service}
    assert parameters["base_hours_start"] < parameters["base_hours_end"]
    assert parameters["hours_start"] < parameters["hours_end"]
    template = f"""
    WITH {WINDOW_AND_BASELINE}
    SELECT Fingerprint, sumIf(Calls, Current), sumIf(Calls, Base), sumIf(DurationSum, Current),
           sumIf(DurationSum, Base), quantilesTDigestMergeIf(0.5, 0.99)(DurationQuantiles, Base),
           argMaxMergeIf(SlowestTraceId, Current), argMaxMergeIf(SlowestTraceId, Base)
    FROM __SOURCE__ WHERE ServiceName = {{s:String}} AND (Current OR Base)
    GROUP BY Fingerprint ORDER BY Fingerprint
    """
    minutes = _rows(db, template.replace("__SOURCE__", "otel_db_1m"), **parameters)
    ((_, calls, base_calls, *_),) = minutes
    assert (calls, base_calls) == (5, 3)
    tiered = template.replace("__SOURCE__", DB_IN_WINDOW_AND_BASELINE)
    assert _rows(db, tiered, **parameters) == minutes


def test_the_migration_fills_the_hourly_edges_from_each_minutes_latest_run(db: Any) -> None:
    """Migration 0014 sums, per hour, each minute's edges as of that minute's latest
    recomputation (an edge a later run no longer found is not counted)."""
    db.command(
        """
        INSERT INTO otel_edges_1m
            (Minute, Source, Target, ConnectionType, Calls, Errors, ClientLatency,
             ServerLatency, ClientDurationSum, ServerDurationSum, Version)
        SELECT toDateTime('2026-11-23 09:00:00', 'UTC') + toIntervalMinute(m), 'web', target,
               ctype, calls, 0, quantileTDigestState(toUInt64(calls * 1000000)),
               quantileTDigestState(toUInt64(0)), calls * 1000000, 0, version
        FROM values('m UInt32, target String, ctype String, calls UInt64, version UInt64',
            (5, 'api', 'service', 3, 1),
            (5, 'postgresql', 'database', 2, 1),  -- a later run of minute 5 paired it: gone
            (5, 'api', 'service', 4, 2),
            (5, 'orders', 'database', 2, 2),
            (59, 'api', 'service', 1, 7),
            (60, 'api', 'service', 10, 3))
        GROUP BY m, target, ctype, calls, version
        """
    )
    db.command("TRUNCATE TABLE otel_edges_1h")
    (fill,) = [
        s
        for m in load_migrations()
        if m.name == "hourly_edges"
        for s in render(m, SchemaOptions())
        if s.startswith("INSERT")
    ]
    db.command(fill)
    assert _rows(
        db,
        "SELECT toHour(Hour), Target, ConnectionType, Calls, ClientDurationSum "
        "FROM otel_edges_1h FINAL ORDER BY Hour, Target",
    ) == [
        (9, "api", "service", 5, 5_000_000),
        (9, "orders", "database", 2, 2_000_000),
        (10, "api", "service", 10, 10_000_000),
    ]


def test_overviews_of_six_hours_and_more_are_read_as_whole_hours() -> None:
    """From HOURLY_FROM_S on an overview's range widens to whole hours (start down, end up)
    and reads the hourly tables only; shorter ones keep minute resolution, hours inside from
    the tier. Readers comparing windows (minute_window) keep minutes at any length."""
    day = TimeRange(MINUTE - timedelta(hours=24, seconds=30), MINUTE + timedelta(seconds=45))
    assert (minute_window(day).start, minute_window(day).end) == (
        datetime(2026, 11, 22, 9, 57, tzinfo=UTC),
        datetime(2026, 11, 23, 9, 59, tzinfo=UTC),
    )
    window = overview_window(day, now=MINUTE + timedelta(hours=2))
    assert (window.start, window.end) == (
        datetime(2026, 11, 22, 9, tzinfo=UTC),
        datetime(2026, 11, 23, 10, tzinfo=UTC),
    )
    assert window.seconds == 25 * 3600
    parameters = window.parameters()
    assert (parameters["hours_start"], parameters["hours_end"]) == (
        parameters["start"],
        parameters["end"],
    )
    # The current hour counts up to now only, as the current minute does.
    assert overview_window(day, now=MINUTE).seconds == 24 * 3600 + 58 * 60

    shorter = TimeRange(MINUTE - timedelta(hours=5, minutes=59), MINUTE + timedelta(seconds=45))
    window = overview_window(shorter, now=MINUTE + timedelta(hours=2))
    assert (window.start, window.end) == (
        datetime(2026, 11, 23, 3, 59, tzinfo=UTC),
        datetime(2026, 11, 23, 9, 59, tzinfo=UTC),
    )
    parameters = window.parameters()
    assert (
        parameters["start"]
        < parameters["hours_start"]
        < parameters["hours_end"]
        < parameters["end"]
    )
