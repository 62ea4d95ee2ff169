"""Services, operations and slow SQL (``/api/v1/services``, ``/services/{service}/operations``,
``/sql``) over spans exported by the real OpenTelemetry SDK, read from the minute rollups.

A small shop sends one minute of traffic (times fixed by the test, two minutes ago):

- ``frontend``: 10 server spans ``GET /checkout`` (100 ms; 2 fail), each calling client
  ``POST /orders`` (80 ms).
- ``orders``: 10 server spans ``POST /orders`` (70 ms; 1 fails), children of those client spans,
  each making database calls with the new semantic-convention keys (PostgreSQL, db ``shop``):
  ``SELECT … WHERE id = <n>`` (10 calls, 2 ms); a deliberately slow
  ``SELECT … WHERE customer_id = <n> ORDER BY created_at`` (3 calls, 900 ms); a failing
  ``UPDATE inventory …`` (4 calls, 5 ms, 2 errors); and Redis with the old keys
  (``db.system``/``db.statement``, 5 calls ``GET cart:<n>``, 15 ms: slow for Redis).
"""

from __future__ import annotations

import os
import re
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
from tracehouse.query import services, sql

MS = 1_000_000
SLOW_SQL = "SELECT * FROM orders WHERE customer_id = ? ORDER BY created_at"
FAST_SQL = "SELECT * FROM orders WHERE id = ?"
UPDATE_SQL = "UPDATE inventory SET qty = qty - ? WHERE sku = ?"


@dataclass(frozen=True)
class Shop:
    app: Tracehouse
    frontend: str
    orders: str
    start_s: int  # the minute the traffic is in
    trace_ids: frozenset[str]

    def get(self, path: str, **params: Any) -> httpx.Response:
        url = f"http://127.0.0.1:{self.app.ports.api}/api/v1{path}"
        defaults = {"start": str(self.start_s), "end": str(self.start_s + 120)}
        return httpx.get(url, params={**defaults, **params}, timeout=30)

    def ok(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def _provider(app: Tracehouse, service: str) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), shutdown_on_exit=False
    )
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{app.ports.http}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _span(
    tracer: trace.Tracer,
    name: str,
    kind: SpanKind,
    start_ns: int,
    duration_ms: float,
    parent: Span | None = None,
    attributes: dict[str, str] | None = None,
    error: bool = False,
) -> Span:
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(
        name, context=context, kind=kind, attributes=attributes, start_time=start_ns
    )
    if error:
        span.set_status(Status(StatusCode.ERROR, "failed"))
    span.end(end_time=start_ns + round(duration_ms * MS))
    return span


def _db(system: str, statement: str, new_keys: bool = True) -> dict[str, str]:
    if new_keys:
        return {"db.system.name": system, "db.namespace": "shop", "db.query.text": statement}
    return {"db.system": system, "db.statement": statement}


def _db_call(
    tracer: trace.Tracer,
    parent: Span,
    start_ns: int,
    name: str,
    duration_ms: float,
    attributes: dict[str, str],
    error: bool = False,
) -> None:
    _span(tracer, name, SpanKind.CLIENT, start_ns, duration_ms, parent, attributes, error)


@pytest.fixture(scope="module")
def shop(make_module_server: ServerFactory) -> Shop:
    app = make_module_server()
    run = uuid.uuid4().hex[:8]
    frontend, orders = f"frontend-{run}", f"orders-{run}"
    start_s = (int(time.time()) // 60 - 2) * 60
    base = start_s * 10**9
    providers = {name: _provider(app, name) for name in (frontend, orders)}
    front = providers[frontend].get_tracer("tests.services")
    back = providers[orders].get_tracer("tests.services")
    trace_ids = set()
    for i in range(10):
        t = base + i * 2_000 * MS  # one request every 2 s, all within the minute
        root = _span(front, "GET /checkout", SpanKind.SERVER, t, 100, error=i in (3, 7))
        call = _span(front, "POST /orders", SpanKind.CLIENT, t + 5 * MS, 80, root)
        handler = _span(back, "POST /orders", SpanKind.SERVER, t + 6 * MS, 70, call, error=i == 5)
        trace_ids.add(format(root.get_span_context().trace_id, "032x"))
        at = t + 7 * MS
        fast = f"SELECT * FROM orders WHERE id = {i}"
        _db_call(back, handler, at, "SELECT orders", 2, _db("postgresql", fast))
        if i < 3:
            slow = f"SELECT * FROM orders WHERE customer_id = {100 + i} ORDER BY created_at"
            _db_call(back, handler, at, "SELECT orders", 900, _db("postgresql", slow))
        if i < 4:
            update = f"UPDATE inventory SET qty = qty - 1 WHERE sku = 'sku-{i}'"
            failed = i % 2 == 0
            _db_call(back, handler, at, "UPDATE inventory", 5, _db("postgresql", update), failed)
        if i < 5:
            _db_call(back, handler, at, "GET", 15, _db("redis", f"GET cart:{i}", new_keys=False))
    for provider in providers.values():
        assert provider.force_flush(timeout_millis=20_000)
        provider.shutdown()
    query(app, "SELECT 1")  # waits until everything acknowledged is stored
    return Shop(app, frontend, orders, start_s, frozenset(trace_ids))


def _by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {row[key]: row for row in rows}


# --- /services -----------------------------------------------------------------------------


def test_services_count_entry_spans_with_errors_and_latency(shop: Shop) -> None:
    body = shop.ok("/services")
    assert body["kinds"] == ["server", "consumer"]
    assert body["start"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(shop.start_s))
    mine = _by(
        [s for s in body["services"] if s["service"] in (shop.frontend, shop.orders)], "service"
    )

    front, orders = mine[shop.frontend], mine[shop.orders]
    assert (front["calls"], front["errors"], front["error_rate"]) == (10, 2, 0.2)
    assert (orders["calls"], orders["errors"], orders["error_rate"]) == (10, 1, 0.1)
    assert front["rps"] == pytest.approx(10 / body["seconds"], rel=1e-3)
    assert 120 <= body["seconds"] <= 180  # two whole minutes, the second one up to now
    # Every call took the same time: every percentile is that time.
    for field in ("p50_ms", "p95_ms", "p99_ms", "avg_ms", "min_ms", "max_ms"):
        assert front[field] == pytest.approx(100, abs=0.01), field
        assert orders[field] == pytest.approx(70, abs=0.01), field


def test_services_of_another_kind_and_of_all_kinds(shop: Shop) -> None:
    every = _by(shop.ok("/services", kind="all")["services"], "service")
    assert every[shop.frontend]["calls"] == 20  # server + client spans
    assert every[shop.orders]["calls"] == 10 + 10 + 3 + 4 + 5
    assert every[shop.orders]["errors"] == 1 + 2

    clients = _by(shop.ok("/services", kind="SPAN_KIND_CLIENT")["services"], "service")
    assert clients[shop.frontend]["calls"] == 10
    assert clients[shop.frontend]["p99_ms"] == pytest.approx(80, abs=0.01)

    # A service without spans of the kind is listed, with no calls and no latency.
    producers = _by(shop.ok("/services", kind="producer")["services"], "service")
    assert producers[shop.frontend] | {"service": None} == {
        "service": None,
        "calls": 0,
        "rps": 0.0,
        "errors": 0,
        "error_rate": 0.0,
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "avg_ms": None,
        "min_ms": None,
        "max_ms": None,
    }


def test_services_outside_the_range_are_absent(shop: Shop) -> None:
    body = shop.ok("/services", start=str(shop.start_s - 3600), end=str(shop.start_s - 60))
    assert {shop.frontend, shop.orders}.isdisjoint(s["service"] for s in body["services"])


# --- /services/{service}/operations ---------------------------------------------------------


def test_operations_of_a_service_per_name_and_kind(shop: Shop) -> None:
    body = shop.ok(f"/services/{shop.orders}/operations")
    assert body["service"] == shop.orders
    ops = [(o["operation"], o["kind"], o["calls"], o["errors"]) for o in body["operations"]]
    assert ops == [  # busiest first
        ("SELECT orders", "client", 13, 0),
        ("POST /orders", "server", 10, 1),
        ("GET", "client", 5, 0),
        ("UPDATE inventory", "client", 4, 2),
    ]
    select = _by(body["operations"], "operation")["SELECT orders"]
    assert select["max_ms"] == pytest.approx(900, abs=0.01)
    assert select["min_ms"] == pytest.approx(2, abs=0.01)
    assert select["avg_ms"] == pytest.approx((10 * 2 + 3 * 900) / 13, abs=0.01)
    assert select["p99_ms"] == pytest.approx(900, abs=0.01)


def test_operations_filtered_by_kind(shop: Shop) -> None:
    body = shop.ok(f"/services/{shop.frontend}/operations", kind="client")
    assert body["kinds"] == ["client"]
    assert [(o["operation"], o["kind"], o["calls"]) for o in body["operations"]] == [
        ("POST /orders", "client", 10)
    ]
    unknown = shop.ok("/services/no-such-service/operations")
    assert unknown["operations"] == []


# --- /sql --------------------------------------------------------------------------------


def test_slow_statement_ranks_first_by_total_time(shop: Shop) -> None:
    body = shop.ok("/sql", service=shop.orders)
    assert body["sort"] == "total"
    rows = body["statements"]
    assert [(r["statement"], r["db_system"], r["calls"]) for r in rows] == [
        (SLOW_SQL, "postgresql", 3),
        ("GET cart:?", "redis", 5),
        (FAST_SQL, "postgresql", 10),
        (UPDATE_SQL, "postgresql", 4),
    ]
    slow = rows[0]
    assert slow["db_namespace"] == "shop"
    assert slow["sample_statement"].startswith("SELECT * FROM orders WHERE customer_id = 10")
    assert (slow["errors"], slow["slow_calls"], slow["slow_threshold_ms"]) == (0, 3, 200)
    for field in ("p50_ms", "p95_ms", "p99_ms", "avg_ms", "max_ms"):
        assert slow[field] == pytest.approx(900, abs=0.01), field
    assert slow["total_ms"] == pytest.approx(2700, abs=0.01)
    assert slow["services"] == [shop.orders]
    assert re.fullmatch(r"[0-9a-f]{16}", slow["fingerprint"])
    assert len({r["fingerprint"] for r in rows}) == len(rows)


def test_statement_errors_slow_calls_and_old_semconv_keys(shop: Shop) -> None:
    rows = _by(shop.ok("/sql", service=shop.orders)["statements"], "statement")
    update = rows[UPDATE_SQL]
    assert (update["calls"], update["errors"], update["error_rate"], update["slow_calls"]) == (
        4,
        2,
        0.5,
        0,
    )
    redis = rows["GET cart:?"]  # written with db.system / db.statement
    assert (redis["db_namespace"], redis["slow_threshold_ms"], redis["slow_calls"]) == ("", 10, 5)
    fast = rows[FAST_SQL]
    assert (fast["calls"], fast["slow_calls"], fast["max_ms"]) == (10, 0, 2.0)


def test_exemplar_trace_ids_are_traces_in_otel_traces(shop: Shop) -> None:
    rows = shop.ok("/sql", service=shop.orders)["statements"]
    for row in rows:
        ids = row["exemplar_trace_ids"]
        assert 1 <= len(ids) <= 6 and len(set(ids)) == len(ids)
        assert ids[0] == row["slowest_trace_id"]
        assert set(ids) <= shop.trace_ids
        stored = query(
            shop.app,
            "SELECT DISTINCT TraceId FROM otel_traces "
            "WHERE ServiceName = {s:String} AND has({ids:Array(String)}, TraceId)",
            s=shop.orders,
            ids=ids,
        )
        assert {r[0] for r in stored} == set(ids)


@pytest.mark.parametrize(
    ("sort", "first"),
    [
        pytest.param("total", SLOW_SQL, id="total"),
        pytest.param("p99", SLOW_SQL, id="p99"),
        pytest.param("calls", FAST_SQL, id="calls"),
        pytest.param("slow", "GET cart:?", id="slow"),
        pytest.param("errors", UPDATE_SQL, id="errors"),
    ],
)
def test_sql_sorts_as_asked(shop: Shop, sort: str, first: str) -> None:
    rows = shop.ok("/sql", service=shop.orders, sort=sort)["statements"]
    assert rows[0]["statement"] == first
    assert len(rows) == 4


def test_sql_filters_and_limit(shop: Shop) -> None:
    assert [
        r["statement"] for r in shop.ok("/sql", service=shop.orders, limit=1)["statements"]
    ] == [SLOW_SQL]
    redis = shop.ok("/sql", service=shop.orders, db="redis")["statements"]
    assert [r["statement"] for r in redis] == ["GET cart:?"]
    shop_db = shop.ok("/sql", service=shop.orders, namespace="shop")["statements"]
    assert {r["db_system"] for r in shop_db} == {"postgresql"}
    # Without a service filter the shop's statements are there among everyone's.
    everyone = shop.ok("/sql", limit=500)["statements"]
    assert {r["statement"] for r in everyone if shop.orders in r["services"]} == {
        SLOW_SQL,
        FAST_SQL,
        UPDATE_SQL,
        "GET cart:?",
    }
    assert shop.ok("/sql", service=shop.frontend)["statements"] == []


# --- bad parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        pytest.param("/sql", {"sort": "slowest"}, "sort", id="sql-sort"),
        pytest.param("/sql", {"limit": "0"}, "limit", id="sql-limit-0"),
        pytest.param("/sql", {"limit": "501"}, "limit", id="sql-limit-501"),
        pytest.param("/sql", {"limit": "ten"}, "limit", id="sql-limit-text"),
        pytest.param("/sql", {"start": "yesterday"}, "start", id="sql-start"),
        pytest.param("/services", {"kind": "serverside"}, "kind", id="services-kind"),
        pytest.param("/services", {"end": "1"}, "start", id="services-start-after-end"),
        pytest.param("/services/x/operations", {"kind": "nope"}, "kind", id="operations-kind"),
        pytest.param("/services/x/operations", {"end": "soon"}, "end", id="operations-end"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(
    shop: Shop, path: str, params: dict[str, str], parameter: str
) -> None:
    response = shop.get(path, **params)
    assert response.status_code == 422, response.text
    assert [d["loc"] for d in response.json()["detail"]] == [["query", parameter]]


# --- contract ----------------------------------------------------------------------------


ROLLUPS = {"otel_red_1m", "otel_red_1h", "otel_services_1h", "otel_db_1m", "otel_db_1h"}


def test_endpoints_read_only_the_rollups() -> None:
    statements = [services.SERVICES_SQL, services.OPERATIONS_SQL, *sql.STATEMENTS_SQL.values()]
    for statement in statements:
        assert set(re.findall(r"\bFROM\s+(\w+)", statement)) <= ROLLUPS
        assert "otel_traces" not in statement
