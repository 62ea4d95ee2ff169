"""The Grafana dashboards shipped in ``tracehouse/dashboards/grafana/``: valid dashboard JSON
for the ClickHouse data source, and every SQL query in them — panels and template variables —
runs against our schema on the real engine once Grafana's macros and variables are
substituted the way Grafana and the data source do, and shows the seeded services.

Seed: ``user`` → frontend (server) → checkout (client → server) → postgres (a client span
with a slow statement), plus log records, sent over OTLP/HTTP; the worker's edge job is run
once so that the service map has edges.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.topology.spans import Run, Span, send
from tracehouse.app import Tracehouse
from tracehouse.topology import EdgeBuilder

DATASOURCE = "grafana-clickhouse-datasource"
ALL = "$__all"
DASHBOARDS = {
    "service-overview.json": "tracehouse-services",
    "slow-sql.json": "tracehouse-slow-sql",
    "logs.json": "tracehouse-logs",
    "topology.json": "tracehouse-topology",
}
SLOW_SQL = "SELECT * FROM orders WHERE customer_id = 42 AND status IN ('new', 'paid')"


def _load() -> dict[str, dict[str, Any]]:
    """The dashboards as the installed package ships them."""
    folder = resources.files("tracehouse.dashboards").joinpath("grafana")
    return {
        entry.name: json.loads(entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


BOARDS = _load()


@dataclass(frozen=True)
class Query:
    board: str
    where: str  # panel title, or "variable <name>"
    ref: str
    sql: str


def _queries(board: dict[str, Any]) -> list[Query]:
    out = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            out.append(Query(board["uid"], f"variable {var['name']}", "-", var["query"]["rawSql"]))
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append(Query(board["uid"], panel["title"], target["refId"], target["rawSql"]))
    return out


QUERIES = [q for board in BOARDS.values() for q in _queries(board)]


# --- Grafana's substitutions --------------------------------------------------------------


def _macro_args(sql: str, open_paren: int) -> tuple[list[str], int]:
    """The comma-separated arguments of a macro call starting at ``open_paren``, and the
    index after its closing parenthesis (nested parentheses respected)."""
    depth, args, start = 0, [], open_paren + 1
    for i in range(open_paren, len(sql)):
        char = sql[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif char == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    raise AssertionError(f"unbalanced macro call in {sql[open_paren : open_paren + 80]!r}")


def expand(
    sql: str, start_s: int, end_s: int, interval_s: int, variables: dict[str, list[str] | str]
) -> str:
    """What reaches ClickHouse: ``$__conditionalAll`` (the data source's front end), then
    template variables (Grafana; ``:singlequote`` and ``:sqlstring`` formats), then the
    data source's macros ``$__timeFilter``, ``$__fromTime``, ``$__toTime``, ``$__interval_s``."""
    macro = "$__conditionalAll("
    while (at := sql.rfind(macro)) != -1:
        args, end = _macro_args(sql, at + len(macro) - 1)
        assert len(args) == 2, args
        var = args[1].strip().lstrip("$").strip("{}")
        keep = variables[var] != ALL
        sql = sql[:at] + (args[0] if keep else "1=1") + sql[end:]

    def values(name: str) -> list[str]:
        value = variables[name]
        assert value != ALL, f"${name} used outside $__conditionalAll with All selected"
        return [value] if isinstance(value, str) else value

    def substitute(match: re.Match[str]) -> str:
        name, fmt = match.group(1) or match.group(3), match.group(2)
        if name.startswith("__"):
            return match.group(0)  # a macro, below
        vals = values(name)
        if fmt == "singlequote":
            return ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in vals)
        if fmt == "sqlstring":
            return ",".join("'" + v.replace("'", "''") + "'" for v in vals)
        assert fmt is None, f"unknown variable format {fmt}"
        return ",".join(vals)

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)", substitute, sql)
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} >= toDateTime({start_s}) AND {m.group(1)} <= toDateTime({end_s})",
        sql,
    )
    sql = sql.replace("$__fromTime", f"toDateTime({start_s})")
    sql = sql.replace("$__toTime", f"toDateTime({end_s})")
    sql = sql.replace("$__interval_s", str(interval_s))
    assert "$" not in sql, f"unsubstituted: {sql[sql.index('$') :][:60]!r}"
    return sql


# --- the seeded data ----------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    app: Tracehouse
    frontend: str
    checkout: str
    database: str
    start_s: int
    end_s: int


def _send_logs(app: Tracehouse, service: str, trace_id: str, at_ns: int) -> None:
    records = [
        ("INFO", 9, "cart loaded"),
        ("ERROR", 17, "payment declined: card expired"),
        ("ERROR", 17, "payment declined: card expired"),
        ("WARN", 13, "slow query on orders"),
    ]
    body = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "tests"},
                        "logRecords": [
                            {
                                "timeUnixNano": str(at_ns + i * 1_000_000),
                                "severityText": text,
                                "severityNumber": number,
                                "body": {"stringValue": message},
                                "traceId": trace_id,
                                "attributes": [
                                    {"key": "order.id", "value": {"stringValue": str(i)}}
                                ],
                            }
                            for i, (text, number, message) in enumerate(records)
                        ],
                    }
                ],
            }
        ]
    }
    response = httpx.post(
        f"http://127.0.0.1:{app.ports.http}/v1/logs",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert app.pipeline is not None and app.pipeline.wait_stored(30)


@pytest.fixture(scope="module")
def seed(make_module_server: ServerFactory) -> Iterator[Seed]:
    app = make_module_server()
    run = Run()
    frontend, checkout, database = run.name("frontend"), run.name("checkout"), run.name("pg")
    spans = []
    for i in range(4):
        root = Span(frontend, "server", run.at(i * 100), 120, name="GET /cart", error=i == 3)
        call = root.child(frontend, "client", duration_ms=100, name="POST /checkout")
        served = call.child(checkout, "server", duration_ms=95, name="POST /checkout")
        query = served.child(
            checkout,
            "client",
            duration_ms=250 if i < 2 else 5,  # two slow calls (>= 200 ms)
            name="SELECT orders",
            attrs={
                "db.system.name": "postgresql",
                "db.namespace": database,
                "db.query.text": SLOW_SQL.replace("42", str(40 + i)),
            },
        )
        spans += [root, call, served, query]
    send(app, *spans)
    _send_logs(app, checkout, spans[0].trace_id, run.at(10))
    EdgeBuilder(app.client, lag_s=0).run_once()
    now = int(time.time())
    yield Seed(app, frontend, checkout, database, now - 30 * 60, now + 60)


def _run(seed: Seed, query: Query, variables: dict[str, list[str] | str]) -> list[dict[str, Any]]:
    sql = expand(query.sql, seed.start_s, seed.end_s, 60, variables)
    result = seed.app.client.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _query(board: str, where: str, ref: str = "A") -> Query:
    (found,) = [q for q in QUERIES if q.board == board and q.where == where and q.ref == ref]
    return found


def _selected(seed: Seed) -> dict[str, list[str] | str]:
    return {
        "service": [seed.frontend, seed.checkout],
        "db": ["postgresql"],
        "severity": "1",
        "search": "",
    }


# --- the JSON -------------------------------------------------------------------------------


def test_the_package_ships_the_four_dashboards_with_unique_ids() -> None:
    assert {name: board["uid"] for name, board in BOARDS.items()} == DASHBOARDS
    assert len({board["title"] for board in BOARDS.values()}) == len(BOARDS)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_is_grafana_json_for_the_clickhouse_data_source(name: str) -> None:
    board = BOARDS[name]
    assert board["schemaVersion"] >= 36 and board["panels"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == DATASOURCE
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": DATASOURCE, "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["editorType"] == "sql" and target["rawSql"].strip()
            # The data source's formats: 0 time series, 1 table, 2 logs.
            expected = {"timeseries": 0, "logs": 2}.get(panel["type"], 1)
            assert target["format"] == expected, (panel["title"], target["refId"])
    # Every variable a query names is defined on the dashboard.
    for query in _queries(board):
        used = set(re.findall(r"\$\{(\w+)|\$(?!__)(\w+)", query.sql))
        for name_in_sql in {a or b for a, b in used}:
            assert name_in_sql in variables, (query.where, name_in_sql)


# --- every query runs --------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", QUERIES, ids=[f"{q.board}:{q.where}:{q.ref}".replace(" ", "_") for q in QUERIES]
)
@pytest.mark.parametrize("selection", ["selected", "all"])
def test_every_query_runs_against_our_schema(seed: Seed, query: Query, selection: str) -> None:
    variables = _selected(seed)
    if selection == "all":
        variables.update(service=ALL, db=ALL)
    rows = _run(seed, query, variables)
    # With the seeded services selected (or all of them), every panel has something to show.
    assert rows, f"{query.board} / {query.where} returned no rows"


# --- and shows the right thing ----------------------------------------------------------------


def test_service_overview_counts_the_entry_spans_of_each_service(seed: Seed) -> None:
    rows = _run(seed, _query("tracehouse-services", "Services"), _selected(seed))
    by_service = {r["service"]: r for r in rows}
    assert set(by_service) == {seed.frontend, seed.checkout}
    assert (by_service[seed.frontend]["calls"], by_service[seed.frontend]["errors"]) == (4, 1)
    assert by_service[seed.frontend]["error_rate"] == pytest.approx(0.25)
    assert by_service[seed.checkout]["calls"] == 4
    assert by_service[seed.frontend]["p99_ms"] == pytest.approx(120, rel=0.01)
    variable = _run(seed, _query("tracehouse-services", "variable service", "-"), _selected(seed))
    assert {seed.frontend, seed.checkout} <= {r["ServiceName"] for r in variable}


def test_slow_sql_lists_the_statement_by_fingerprint_with_its_slow_calls(seed: Seed) -> None:
    rows = _run(seed, _query("tracehouse-slow-sql", "Statements by total time"), _selected(seed))
    ours = [r for r in rows if r["namespace"] == seed.database]
    assert len(ours) == 1  # four literal variants, one fingerprint
    (row,) = ours
    assert row["statement"] == "SELECT * FROM orders WHERE customer_id = ? AND status IN (?..)"
    assert (row["calls"], row["slow_calls"], row["db"]) == (4, 2, "postgresql")
    assert row["services"] == seed.checkout
    assert row["total_ms"] == pytest.approx(510, rel=0.01)


def test_logs_filter_by_severity_and_text(seed: Seed) -> None:
    panel = _query("tracehouse-logs", "Log records")
    everything = _run(seed, panel, _selected(seed))
    assert sorted(r["level"] for r in everything) == ["error", "error", "info", "warn"]
    assert {r["service"] for r in everything} == {seed.checkout}
    errors = _run(seed, panel, {**_selected(seed), "severity": "17"})
    assert [r["body"] for r in errors] == ["payment declined: card expired"] * 2
    # A quote in the search box is a string, not SQL.
    for text, found in [("CARD EXPIRED", 2), ("orders", 1), ("it's", 0)]:
        rows = _run(seed, panel, {**_selected(seed), "search": text})
        assert len(rows) == found, text
    top = _run(seed, _query("tracehouse-logs", "Most frequent errors"), _selected(seed))
    assert [(r["message"], r["records"]) for r in top] == [("payment declined: card expired", 2)]


def test_service_map_has_typed_nodes_and_the_latest_edges(seed: Seed) -> None:
    variables = _selected(seed)
    nodes = _run(seed, _query("tracehouse-topology", "Service map", "nodes"), variables)
    edges = _run(seed, _query("tracehouse-topology", "Service map", "edges"), variables)
    assert {r["id"]: r["subtitle"] for r in nodes} == {
        "user": "user",
        seed.frontend: "service",
        seed.checkout: "service",
        seed.database: "database",
    }
    frontend = next(r for r in nodes if r["id"] == seed.frontend)
    assert (frontend["mainstat"], frontend["arc__errors"]) == (4, pytest.approx(0.25))
    assert frontend["arc__ok"] + frontend["arc__errors"] == pytest.approx(1)
    assert {(r["source"], r["target"]): r["mainstat"] for r in edges} == {
        ("user", seed.frontend): 4,
        (seed.frontend, seed.checkout): 4,
        (seed.checkout, seed.database): 4,
    }
    # Recomputing a minute replaces its edges (latest Version): counts do not double.
    EdgeBuilder(seed.app.client, lag_s=0).run_once()
    again = _run(seed, _query("tracehouse-topology", "Service map", "edges"), variables)
    assert {(r["source"], r["target"]): r["mainstat"] for r in again} == {
        (r["source"], r["target"]): r["mainstat"] for r in edges
    }


def test_expand_substitutes_like_grafana() -> None:
    sql = (
        "SELECT 1 WHERE $__timeFilter(Minute) AND $__conditionalAll(S IN (${service:singlequote}),"
        " $service) AND b = ${search:sqlstring} AND x < $__interval_s AND y > $__fromTime"
    )
    variables: dict[str, list[str] | str] = {"service": ["a'b", "c"], "search": "it's"}
    assert expand(sql, 100, 200, 60, variables) == (
        "SELECT 1 WHERE Minute >= toDateTime(100) AND Minute <= toDateTime(200) AND "
        "S IN ('a\\'b','c') AND b = 'it''s' AND x < 60 AND y > toDateTime(100)"
    )
    assert "1=1" in expand(sql, 100, 200, 60, {**variables, "service": ALL})
