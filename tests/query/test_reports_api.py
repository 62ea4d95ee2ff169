"""Top-N report (``GET /api/v1/reports/top``) and ``tracehouse report`` over spans exported by
the real OpenTelemetry SDK, read from the minute rollups.

All the traffic is in one minute some days ago, chosen at random, so the report over that
minute holds this module's rows only (the engine is shared with the other tests, which send
recent data). Every entity's calls take the same time, so its percentiles are exact:

- ``web``: server ``GET /`` 30 calls of 20 ms (3 fail) and internal ``render`` 30 of 5 ms.
- ``api``: server ``POST /buy`` 10 of 200 ms (5 fail), and database client calls:
  ``SELECT items`` 40 of 3 ms, ``SELECT orders`` 2 of 500 ms, ``UPDATE stock`` 6 of 10 ms
  (3 fail), all PostgreSQL; Redis ``GET`` 8 of 1 ms (1 fails, old ``db.statement`` keys).
- ``batch``: consumer ``process job`` 4 of 1000 ms.

Edges (the worker's job is run for that minute): ``user`` → web and → api (the root server
spans), api → ``shop`` (PostgreSQL, db.namespace) and → ``redis`` (database peers).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tests.conftest import ServerFactory, query
from tracehouse.app import Tracehouse
from tracehouse.query import _rollups, reports
from tracehouse.topology import EdgeBuilder

MS = 1_000_000
ITEMS_SQL = "SELECT * FROM items WHERE id = ?"
ORDERS_SQL = "SELECT * FROM orders WHERE user_id = ? ORDER BY ts"
STOCK_SQL = "UPDATE stock SET n = n - ? WHERE sku = ?"
REDIS_SQL = "GET k:?"


@dataclass(frozen=True)
class Apm:
    app: Tracehouse
    run: str
    start_s: int  # the minute the traffic is in

    def svc(self, name: str) -> str:
        return f"{name}-{self.run}"

    def get(self, **params: Any) -> httpx.Response:
        url = f"http://127.0.0.1:{self.app.ports.api}/api/v1/reports/top"
        defaults = {"start": str(self.start_s), "end": str(self.start_s + 60)}
        return httpx.get(url, params={**defaults, **params}, timeout=30)

    def ok(self, **params: Any) -> dict[str, Any]:
        response = self.get(**params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def _db(system: str, statement: str, new_keys: bool = True) -> dict[str, str]:
    if new_keys:
        return {"db.system.name": system, "db.namespace": "shop", "db.query.text": statement}
    return {"db.system": system, "db.statement": statement}


@pytest.fixture(scope="module")
def apm(make_module_server: ServerFactory) -> Apm:
    app = make_module_server()
    run = uuid.uuid4().hex[:8]
    # A minute 3 to 10 days ago that no other test writes to.
    start_s = (int(time.time()) // 60 - 3 * 1440 - random.randrange(7 * 1440)) * 60
    base = start_s * 10**9
    providers: dict[str, TracerProvider] = {}
    tracers: dict[str, trace.Tracer] = {}
    for name in ("web", "api", "batch"):
        provider = TracerProvider(
            resource=Resource.create({"service.name": f"{name}-{run}"}), shutdown_on_exit=False
        )
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        providers[name] = provider
        tracers[name] = provider.get_tracer("tests.reports")

    def span(
        service: str,
        name: str,
        kind: SpanKind,
        i: int,
        duration_ms: float,
        error: bool = False,
        attributes: dict[str, str] | None = None,
        parent: Span | None = None,
    ) -> Span:
        start = base + i * 1_000 * MS  # one call a second, all within the minute
        context = trace.set_span_in_context(parent) if parent is not None else None
        made = tracers[service].start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=start
        )
        if error:
            made.set_status(Status(StatusCode.ERROR, "failed"))
        made.end(end_time=start + round(duration_ms * MS))
        return made

    for i in range(30):
        root = span("web", "GET /", SpanKind.SERVER, i, 20, error=i < 3)
        span("web", "render", SpanKind.INTERNAL, i, 5, parent=root)
    buys = [span("api", "POST /buy", SpanKind.SERVER, i, 200, error=i % 2 == 0) for i in range(10)]
    for i in range(40):
        attributes = _db("postgresql", f"SELECT * FROM items WHERE id = {i}")
        span(
            "api", "SELECT items", SpanKind.CLIENT, i, 3, attributes=attributes, parent=buys[i % 10]
        )
    for i in range(2):
        statement = f"SELECT * FROM orders WHERE user_id = {i} ORDER BY ts"
        span(
            "api", "SELECT orders", SpanKind.CLIENT, i, 500, attributes=_db("postgresql", statement)
        )
    for i in range(6):
        statement = f"UPDATE stock SET n = n - 1 WHERE sku = 'sku-{i}'"
        attributes = _db("postgresql", statement)
        span("api", "UPDATE stock", SpanKind.CLIENT, i, 10, i < 3, attributes)
    for i in range(8):
        attributes = _db("redis", f"GET k:{i}", new_keys=False)
        span("api", "GET", SpanKind.CLIENT, i, 1, error=i == 7, attributes=attributes)
    for i in range(4):
        span("batch", "process job", SpanKind.CONSUMER, i, 1000)
    for provider in providers.values():
        assert provider.force_flush(timeout_millis=20_000)
        provider.shutdown()
    query(app, "SELECT 1")  # waits until everything acknowledged is stored
    # The worker's edge job, run for that minute.
    EdgeBuilder(app.client, lag_s=0, window_min=2).run_once(
        now=dt.datetime.fromtimestamp(start_s + 90, dt.UTC)
    )
    return Apm(app, run, start_s)


def _ids(apm: Apm, body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Each row's identifying columns, with this run's suffix taken off service names."""
    id_columns = reports.ID_COLUMNS[body["entity"]]
    return [
        tuple(
            str(row[c]).removesuffix(f"-{apm.run}") if c == "service" else row[c]
            for c in id_columns
        )
        for row in body["rows"]
    ]


# --- services ------------------------------------------------------------------------------


def test_services_default_to_entry_spans_ranked_by_total_time(apm: Apm) -> None:
    body = apm.ok(entity="service")
    assert (body["entity"], body["by"], body["kinds"]) == (
        "service",
        "total_time",
        ["server", "consumer"],
    )
    assert body["start"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(apm.start_s))
    assert body["seconds"] == 60
    assert body["columns"] == ["rank", "service", *reports.METRIC_COLUMNS]
    assert body["rows"] == [
        {
            "rank": 1,
            "service": apm.svc("batch"),
            "calls": 4,
            "errors": 0,
            "error_rate": 0.0,
            "rps": round(4 / 60, 6),
            "p50_ms": 1000.0,
            "p95_ms": 1000.0,
            "p99_ms": 1000.0,
            "avg_ms": 1000.0,
            "total_ms": 4000.0,
        },
        {
            "rank": 2,
            "service": apm.svc("api"),
            "calls": 10,
            "errors": 5,
            "error_rate": 0.5,
            "rps": round(10 / 60, 6),
            "p50_ms": 200.0,
            "p95_ms": 200.0,
            "p99_ms": 200.0,
            "avg_ms": 200.0,
            "total_ms": 2000.0,
        },
        {
            "rank": 3,
            "service": apm.svc("web"),
            "calls": 30,
            "errors": 3,
            "error_rate": 0.1,
            "rps": 0.5,
            "p50_ms": 20.0,
            "p95_ms": 20.0,
            "p99_ms": 20.0,
            "avg_ms": 20.0,
            "total_ms": 600.0,
        },
    ]


@pytest.mark.parametrize(
    ("by", "order"),
    [
        pytest.param("calls", ["web", "api", "batch"], id="calls"),
        pytest.param("p99", ["batch", "api", "web"], id="p99"),
        pytest.param("errors", ["api", "web", "batch"], id="errors"),
        pytest.param("error_rate", ["api", "web", "batch"], id="error_rate"),
        pytest.param("total_time", ["batch", "api", "web"], id="total_time"),
    ],
)
def test_services_rank_as_asked(apm: Apm, by: str, order: list[str]) -> None:
    body = apm.ok(entity="service", by=by)
    assert body["by"] == by
    assert _ids(apm, body) == [(name,) for name in order]
    assert [row["rank"] for row in body["rows"]] == [1, 2, 3]


def test_services_of_all_kinds(apm: Apm) -> None:
    body = apm.ok(entity="service", by="calls", kind="all")
    assert [(r["service"], r["calls"], r["errors"]) for r in body["rows"]] == [
        (apm.svc("api"), 10 + 40 + 2 + 6 + 8, 5 + 3 + 1),
        (apm.svc("web"), 60, 3),
        (apm.svc("batch"), 4, 0),
    ]


# --- operations and errors -----------------------------------------------------------------


def test_operations_by_calls_with_ties_broken_by_name(apm: Apm) -> None:
    body = apm.ok(entity="operation", by="calls")
    assert body["kinds"] == list(_rollups.kinds("kind", "all", "all"))
    assert _ids(apm, body) == [
        ("api", "SELECT items", "client"),
        ("web", "GET /", "server"),  # 30 calls each: by service, operation, kind
        ("web", "render", "internal"),
        ("api", "POST /buy", "server"),
        ("api", "GET", "client"),
        ("api", "UPDATE stock", "client"),
        ("batch", "process job", "consumer"),
        ("api", "SELECT orders", "client"),
    ]


def test_operations_by_total_time_and_p99_with_n(apm: Apm) -> None:
    body = apm.ok(entity="operation")
    assert [(r["operation"], r["total_ms"]) for r in body["rows"]] == [
        ("process job", 4000.0),
        ("POST /buy", 2000.0),
        ("SELECT orders", 1000.0),
        ("GET /", 600.0),
        ("render", 150.0),
        ("SELECT items", 120.0),
        ("UPDATE stock", 60.0),
        ("GET", 8.0),
    ]
    top3 = apm.ok(entity="operation", by="p99", n=3)["rows"]
    assert [(r["rank"], r["operation"], r["p99_ms"]) for r in top3] == [
        (1, "process job", 1000.0),
        (2, "SELECT orders", 500.0),
        (3, "POST /buy", 200.0),
    ]
    servers = apm.ok(entity="operation", by="calls", kind="server")["rows"]
    assert [r["operation"] for r in servers] == ["GET /", "POST /buy"]


def test_errors_are_failing_operations_only(apm: Apm) -> None:
    by_errors = apm.ok(entity="error")
    assert by_errors["by"] == "errors"
    assert [
        (r["operation"], r["errors"], r["calls"], r["error_rate"]) for r in by_errors["rows"]
    ] == [
        ("POST /buy", 5, 10, 0.5),
        ("GET /", 3, 30, 0.1),  # ties on errors: more calls first
        ("UPDATE stock", 3, 6, 0.5),
        ("GET", 1, 8, 0.125),
    ]
    by_rate = apm.ok(entity="error", by="error_rate")
    assert _ids(apm, by_rate) == [
        ("api", "POST /buy", "server"),
        ("api", "UPDATE stock", "client"),
        ("api", "GET", "client"),
        ("web", "GET /", "server"),
    ]


# --- sql -----------------------------------------------------------------------------------


def test_sql_per_fingerprint(apm: Apm) -> None:
    body = apm.ok(entity="sql")
    assert body["kinds"] == []
    assert body["columns"][:4] == ["rank", "fingerprint", "statement", "db_system"]
    rows = body["rows"]
    assert [
        (r["statement"], r["db_system"], r["calls"], r["errors"], r["total_ms"]) for r in rows
    ] == [
        (ORDERS_SQL, "postgresql", 2, 0, 1000.0),
        (ITEMS_SQL, "postgresql", 40, 0, 120.0),
        (STOCK_SQL, "postgresql", 6, 3, 60.0),
        (REDIS_SQL, "redis", 8, 1, 8.0),
    ]
    assert all(re.fullmatch(r"[0-9a-f]{16}", r["fingerprint"]) for r in rows)
    # The same fingerprints as /sql gives for these statements.
    listed = httpx.get(
        f"http://127.0.0.1:{apm.app.ports.api}/api/v1/sql",
        params={"start": apm.start_s, "end": apm.start_s + 60, "service": apm.svc("api")},
        timeout=30,
    ).json()["statements"]
    assert {s["statement"]: s["fingerprint"] for s in listed} == {
        r["statement"]: r["fingerprint"] for r in rows
    }
    orders = rows[0]
    assert (orders["p50_ms"], orders["p99_ms"], orders["avg_ms"]) == (500.0, 500.0, 500.0)
    assert orders["rps"] == round(2 / 60, 6)


@pytest.mark.parametrize(
    ("by", "order"),
    [
        pytest.param("calls", [ITEMS_SQL, REDIS_SQL, STOCK_SQL, ORDERS_SQL], id="calls"),
        pytest.param("p99", [ORDERS_SQL, STOCK_SQL, ITEMS_SQL, REDIS_SQL], id="p99"),
        pytest.param("errors", [STOCK_SQL, REDIS_SQL, ITEMS_SQL, ORDERS_SQL], id="errors"),
        pytest.param("error_rate", [STOCK_SQL, REDIS_SQL, ITEMS_SQL, ORDERS_SQL], id="rate"),
    ],
)
def test_sql_ranks_as_asked(apm: Apm, by: str, order: list[str]) -> None:
    assert [r["statement"] for r in apm.ok(entity="sql", by=by)["rows"]] == order


# --- edges ---------------------------------------------------------------------------------


def _edges(apm: Apm, **params: Any) -> list[tuple[Any, ...]]:
    body = apm.ok(entity="edge", **params)
    assert body["columns"][:4] == ["rank", "source", "target", "type"]
    return [
        (
            r["source"].removesuffix(f"-{apm.run}"),
            r["target"].removesuffix(f"-{apm.run}"),
            r["type"],
            r["calls"],
            r["errors"],
            r["total_ms"],
            r["p99_ms"],
        )
        for r in body["rows"]
        if apm.run in r["source"] or apm.run in r["target"]
    ]


def test_edges_by_total_time_as_their_callers_saw_them(apm: Apm) -> None:
    # Database peers are timed by the client spans; user edges by the root server spans.
    assert _edges(apm) == [
        ("user", "api", "user", 10, 5, 2000.0, 200.0),
        ("api", "shop", "database", 48, 3, 1180.0, 500.0),
        ("user", "web", "user", 30, 3, 600.0, 20.0),
        ("api", "redis", "database", 8, 1, 8.0, 1.0),
    ]


@pytest.mark.parametrize(
    ("by", "order"),
    [
        pytest.param("calls", ["shop", "web", "api", "redis"], id="calls"),
        pytest.param("p99", ["shop", "api", "web", "redis"], id="p99"),
        pytest.param("error_rate", ["api", "redis", "web", "shop"], id="rate"),
    ],
)
def test_edges_rank_as_asked(apm: Apm, by: str, order: list[str]) -> None:
    assert [target for _, target, *_ in _edges(apm, by=by)] == order


def test_outside_the_window_nothing(apm: Apm) -> None:
    body = apm.ok(entity="operation", start=str(apm.start_s - 600), end=str(apm.start_s - 60))
    assert not any(str(r["service"]).endswith(apm.run) for r in body["rows"])


# --- csv -----------------------------------------------------------------------------------


@pytest.mark.parametrize("entity", ["service", "operation", "sql", "edge", "error"])
def test_csv_matches_json(apm: Apm, entity: str) -> None:
    body = apm.ok(entity=entity)
    response = apm.get(entity=entity, format="csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == body["columns"]
    assert len(table) == 1 + len(body["rows"])
    for line, row in zip(table[1:], body["rows"], strict=True):
        expected = ["" if row[c] is None else str(row[c]) for c in body["columns"]]
        assert line == expected
    records = list(csv.DictReader(io.StringIO(response.text)))
    assert int(records[0]["rank"]) == 1
    assert float(records[0]["total_ms"]) == body["rows"][0]["total_ms"]


# --- bad parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        pytest.param({"entity": "host"}, "entity", id="entity-unknown"),
        pytest.param({"by": "p50"}, "by", id="by-unknown"),
        pytest.param({"entity": "error", "by": "p99"}, "by", id="error-by-p99"),
        pytest.param({"entity": "error", "by": "calls"}, "by", id="error-by-calls"),
        pytest.param({"n": "0"}, "n", id="n-0"),
        pytest.param({"n": "101"}, "n", id="n-101"),
        pytest.param({"n": "ten"}, "n", id="n-text"),
        pytest.param({"format": "xml"}, "format", id="format"),
        pytest.param({"kind": "serverside"}, "kind", id="kind"),
        pytest.param({"entity": "sql", "kind": "client"}, "kind", id="sql-kind"),
        pytest.param({"entity": "edge", "kind": "client"}, "kind", id="edge-kind"),
        pytest.param({"start": "yesterday"}, "start", id="start"),
        pytest.param({"end": "1"}, "start", id="start-after-end"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(
    apm: Apm, params: dict[str, str], parameter: str
) -> None:
    response = apm.get(**params)
    assert response.status_code == 422, response.text
    assert [d["loc"] for d in response.json()["detail"]] == [["query", parameter]]


def test_n_bounds_are_accepted(apm: Apm) -> None:
    assert len(apm.ok(entity="operation", n=1)["rows"]) == 1
    assert len(apm.ok(entity="operation", n=100)["rows"]) == 8


# --- contract ------------------------------------------------------------------------------


def test_reports_read_only_the_rollups_with_bound_parameters() -> None:
    assert len(reports.TOP_SQL) == 4 * 5 + 2
    red = {"otel_red_1m", "otel_red_1h"}
    rollup = {
        "service": {"otel_red_1m", "otel_services_1h"},
        "sql": {"otel_db_1m", "otel_db_1h"},
        "edge": {"otel_edges_1m", "otel_edges_1h"},
    }
    for (entity, _by), statement in reports.TOP_SQL.items():
        tables = set(re.findall(r"\bFROM\s+(\w+)", statement))
        assert tables == rollup.get(entity, red)
        assert "otel_traces" not in statement
        assert "__" not in statement  # every placeholder of the template was filled
        assert "LIMIT {n:UInt32}" in statement


# --- tracehouse report ---------------------------------------------------------------------


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracehouse.cli", "report", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_report_prints_a_table(apm: Apm) -> None:
    url = f"http://127.0.0.1:{apm.app.ports.api}"
    window = ["--start", str(apm.start_s), "--end", str(apm.start_s + 60)]
    done = _report("--url", url, *window, "--entity", "operation", "--by", "p99", "-n", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("top operation by p99, ")
    assert lines[1].split()[:4] == ["#", "service", "operation", "kind"]
    assert len(lines) == 2 + 2
    assert lines[2].split()[:5] == ["1", apm.svc("batch"), "process", "job", "consumer"]
    assert lines[3].split()[:4] == ["2", apm.svc("api"), "SELECT", "orders"]
    # Fixed width: every column starts where its heading does.
    assert lines[2].index("consumer") == lines[1].index("kind")

    services = _report("--url", url, *window, "--by", "calls")
    assert services.returncode == 0, services.stderr
    assert services.stdout.splitlines()[2].split()[:3] == ["1", apm.svc("web"), "30"]


def test_cli_report_window_reaches_recent_data(apm: Apm) -> None:
    url = f"http://127.0.0.1:{apm.app.ports.api}"
    done = _report("--url", url, "--window", "15m", "--entity", "sql")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("top sql by total_time, ")


def test_cli_report_rejected_parameter_exits_1(apm: Apm) -> None:
    done = _report("--url", f"http://127.0.0.1:{apm.app.ports.api}", "-n", "500")
    assert done.returncode == 1
    assert "422" in done.stderr and "n:" in done.stderr


def test_cli_report_unreachable_server_exits_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the command runs
    done = _report("--url", f"http://127.0.0.1:{port}", "--timeout", "5")
    assert done.returncode == 1
    assert f"cannot reach the tracehouse server at http://127.0.0.1:{port}" in done.stderr
    assert done.stdout == ""
