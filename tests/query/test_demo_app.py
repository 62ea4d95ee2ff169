"""The read side end to end: a real four-service application (``tests/demoapp``: separate
processes, OpenTelemetry SDK, official instrumentation, OTLP exporters) sends its traces to a
running tracehouse; the public HTTP API must describe what the application did.

Every expected figure comes from the demo's own processes (the spans each one ended, the
SQL calls inventory made with their spans' durations), not from constants, so the tests hold
however fast the machine is. Names carry the run's suffix, so other tests' rows sharing the
engine do not interfere; the virtual database node ``sqlite`` is shared by all runs.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.demoapp import DemoError, DemoRun, run_demo
from tracehouse.app import Tracehouse
from tracehouse.topology import EdgeBuilder

MS = 1_000_000
SLOW_THRESHOLD_NS = 200 * MS  # otel_db_1m's threshold for sqlite (docs/decisions/0005)
# The demo's statements as the fingerprint shows them: literals and IN-lists -> ?.
NORMALIZED = {
    "slow": "WITH RECURSIVE seq(n) AS (SELECT ? UNION ALL SELECT n + ? FROM seq WHERE n < ?) "
    "SELECT count(*) FROM seq WHERE n % ? = ?",
    "lookup": "SELECT qty, price_cents FROM stock WHERE item_id = ?",
    "reserve": "UPDATE stock SET qty = qty - ? WHERE item_id = ?",
    "record": "INSERT INTO reservations (order_id, item_id, qty) VALUES (?..)",
    "related": "SELECT item_id, name FROM stock WHERE item_id IN (?..) ORDER BY item_id",
}


@dataclass(frozen=True)
class Demo:
    app: Tracehouse
    run: DemoRun

    def window(self) -> dict[str, str]:
        """start/end around the run (epoch ms)."""
        start = self.run.start - dt.timedelta(minutes=1)
        end = self.run.end + dt.timedelta(minutes=1)
        return {
            "start": str(int(start.timestamp() * 1000)),
            "end": str(int(end.timestamp() * 1000)),
        }

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(
            f"http://127.0.0.1:{self.app.ports.api}{path}", params=params, timeout=60
        )
        assert response.status_code == 200, response.text
        return response.json()

    def api(self, path: str, **params: str) -> Any:
        return self.get(f"/api/v1{path}", **{**self.window(), **params})

    @property
    def mine(self) -> set[str]:
        return set(self.run.services.values())

    def s(self, role: str) -> str:
        return self.run.service(role)

    def server_spans(self, role: str) -> tuple[int, int]:
        """(calls, errors) of a role's server spans, as the service counted them."""
        ops = [
            op for op in self.run.operations if op.service == self.s(role) and op.kind == "server"
        ]
        return sum(op.calls for op in ops), sum(op.errors for op in ops)


@pytest.fixture(scope="module")
def demo(make_module_server: ServerFactory) -> Iterator[Demo]:
    app = make_module_server(roles=["ingest", "query"])  # the test runs the edge job itself
    run = run_demo(f"http://127.0.0.1:{app.ports.http}", rounds=12, protocol="http")
    assert app.pipeline is not None and app.pipeline.wait_stored(30)
    # Recompute the edges of every minute the run touched (the current one included).
    EdgeBuilder(app.client, lag_s=0).run_once(now=run.end + dt.timedelta(minutes=1))
    yield Demo(app, run)


def test_the_run_did_what_the_assertions_rely_on(demo: Demo) -> None:
    run = demo.run
    assert len(run.trace_ids) == len(set(run.trace_ids)) == 12
    assert run.failed_requests == 0  # checkout's retry hides payment's failures
    assert run.payment_failures == 3  # payment calls 3, 8 and 13 of 15
    assert run.operation("payment", "POST /charge", "server").calls == 15
    assert Counter(call.kind for call in run.sql_calls) == {
        "lookup": 12,
        "reserve": 12,
        "record": 12,
        "related": 3,
        "slow": 3,
    }
    # The same statements arrived with different literals, IN-lists of different lengths:
    # fingerprinting has work to do.
    assert len({call.statement for call in run.sql("lookup")}) == 12
    assert len({call.statement for call in run.sql("slow")}) > 1
    assert len({call.statement.count(",") for call in run.sql("related")}) == 3


def test_every_span_is_stored_in_the_trace_of_its_request(demo: Demo) -> None:
    total = 0
    for trace_id in demo.run.trace_ids:
        trace = demo.get(f"/api/v1/traces/{trace_id}")
        total += trace["spanCount"]
        assert set(trace["services"]) >= {demo.s("frontend"), demo.s("checkout")}
    assert total == sum(demo.run.spans_exported.values())


def test_topology_has_the_service_user_and_database_edges(demo: Demo) -> None:
    body = demo.api("/topology")
    f, c, i, p = (demo.s(r) for r in ("frontend", "checkout", "inventory", "payment"))
    edges = {
        (e["source"], e["target"]): e
        for e in body["edges"]
        if e["source"] in demo.mine or e["target"] in demo.mine
    }
    assert {key: e["type"] for key, e in edges.items()} == {
        ("user", f): "user",
        (f, c): "service",
        (c, i): "service",
        (c, p): "service",
        (i, "sqlite"): "database",
    }
    run = demo.run
    reserve = run.operation("inventory", "POST /reserve", "server").calls
    recommend = run.operation("inventory", "GET /recommendations", "server").calls
    assert (edges[("user", f)]["calls"], edges[("user", f)]["errors"]) == (12, 0)
    assert (edges[(f, c)]["calls"], edges[(f, c)]["errors"]) == (12, 0)
    assert (edges[(c, i)]["calls"], edges[(c, i)]["errors"]) == (reserve + recommend, 0)
    charge = edges[(c, p)]
    assert (charge["calls"], charge["errors"]) == (15, run.payment_failures)
    assert charge["error_rate"] == 0.2
    database = edges[(i, "sqlite")]
    assert (database["calls"], database["errors"]) == (len(run.sql_calls), 0)
    # Service edges are seen from both sides; the database only by its caller.
    assert charge["client_p99_ms"] is not None and charge["server_p99_ms"] is not None
    assert database["client_p99_ms"] is not None and database["server_p99_ms"] is None

    nodes = {n["id"]: n for n in body["nodes"]}
    assert {nodes[s]["type"] for s in demo.mine} == {"service"}
    assert nodes["sqlite"]["type"] == "database"
    assert nodes["user"]["type"] == "user"
    assert (nodes[p]["calls"], nodes[p]["errors"]) == demo.server_spans("payment")


def test_topology_around_checkout(demo: Demo) -> None:
    f, c, i, p = (demo.s(r) for r in ("frontend", "checkout", "inventory", "payment"))
    body = demo.api("/topology", service=c, depth="1")
    assert {(e["source"], e["target"]) for e in body["edges"]} == {(f, c), (c, i), (c, p)}
    x = {n["id"]: n["x"] for n in body["nodes"]}
    assert x[f] < x[c] < x[i] == x[p]


def test_services_have_their_calls_and_payment_its_errors(demo: Demo) -> None:
    body = demo.api("/services")
    services = {s["service"]: s for s in body["services"] if s["service"] in demo.mine}
    assert set(services) == demo.mine
    for role in ("frontend", "checkout", "inventory", "payment"):
        row = services[demo.s(role)]
        assert (row["calls"], row["errors"]) == demo.server_spans(role), role
        assert row["p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
    payment = services[demo.s("payment")]
    assert (payment["errors"], payment["error_rate"]) == (3, 0.2)

    operations = demo.api(f"/services/{demo.s('inventory')}/operations")["operations"]
    by_name = {(op["operation"], op["kind"]): op["calls"] for op in operations}
    expected = {
        (op.name, op.kind): op.calls
        for op in demo.run.operations
        if op.service == demo.s("inventory")
    }
    assert by_name == expected


def test_sql_ranks_the_slow_fingerprint_first_by_total_time(demo: Demo) -> None:
    run = demo.run
    body = demo.api("/sql", service=demo.s("inventory"))
    assert body["sort"] == "total"
    rows = body["statements"]
    assert rows[0]["statement"] == NORMALIZED["slow"]
    assert {row["statement"]: row["calls"] for row in rows} == {
        text: len(run.sql(kind)) for kind, text in NORMALIZED.items()
    }

    slow = rows[0]
    calls = run.sql("slow")
    durations = [call.duration_ns for call in calls]
    assert (slow["db_system"], slow["db_namespace"]) == ("sqlite", "")
    assert slow["services"] == [demo.s("inventory")]
    assert slow["sample_statement"] in {call.statement for call in calls}
    assert slow["total_ms"] == round(sum(durations) / MS, 3)
    assert slow["max_ms"] == round(max(durations) / MS, 3)
    assert slow["slow_calls"] == sum(d >= SLOW_THRESHOLD_NS for d in durations)
    slowest = max(calls, key=lambda call: call.duration_ns)
    assert slow["slowest_trace_id"] == slowest.trace_id
    assert set(slow["exemplar_trace_ids"]) <= {call.trace_id for call in calls}
    # Ranked by total time: each row's total is the sum of its calls' span durations.
    totals = [row["total_ms"] for row in rows]
    assert totals == sorted(totals, reverse=True)


def test_inventory_is_slow_because_of_the_slow_statement(demo: Demo) -> None:
    run = demo.run
    calls = run.sql("slow")
    # Below every slow statement's own duration, so inventory's p99 is above it however fast
    # the machine; far above every other statement.
    threshold_ms = min(call.duration_ns for call in calls) / MS / 2
    body = demo.api("/slow-services", threshold_ms=str(threshold_ms), limit="200")
    items = {
        (item["service"], item["operation"]): item
        for item in body["items"]
        if item["service"] in demo.mine
    }
    f, c, i = (demo.s(r) for r in ("frontend", "checkout", "inventory"))
    assert {f, c, i} <= {service for service, _ in items}

    inventory = items[(i, None)]
    assert inventory["reasons"] == ["threshold"]  # a new service: no baseline
    assert inventory["calls"] == demo.server_spans("inventory")[0]
    cause = inventory["cause"]
    sql = demo.api("/sql", service=i)["statements"][0]
    assert (cause["type"], cause["statement"], cause["db_system"]) == (
        "sql",
        NORMALIZED["slow"],
        "sqlite",
    )
    assert cause["fingerprint"] == sql["fingerprint"]
    assert cause["calls"] == len(calls)
    slowest = max(calls, key=lambda call: call.duration_ns)
    assert cause["exemplar_trace_ids"][0] == slowest.trace_id
    assert set(cause["exemplar_trace_ids"]) <= {call.trace_id for call in calls}
    # The blame runs down the call chain: frontend waits on checkout, checkout on inventory.
    assert (items[(f, None)]["cause"]["type"], items[(f, None)]["cause"]["target"]) == ("edge", c)
    assert (items[(c, None)]["cause"]["type"], items[(c, None)]["cause"]["target"]) == ("edge", i)


def test_top_errors_rank_payment(demo: Demo) -> None:
    p, c = demo.s("payment"), demo.s("checkout")
    report = demo.api("/reports/top", entity="error", by="error_rate", n="100")
    mine = [r for r in report["rows"] if r["service"] in demo.mine]
    assert [(r["service"], r["operation"], r["kind"], r["errors"]) for r in mine] == [
        (p, "POST /charge", "server", 3),
        # checkout's POST client spans: payment's failures as the caller saw them, among
        # its successful calls to inventory
        (c, "POST", "client", 3),
    ]
    assert mine[0]["error_rate"] == 0.2
    assert mine[0]["rank"] < mine[1]["rank"]

    servers = demo.api("/reports/top", entity="error", kind="server", n="100")["rows"]
    assert [(r["service"], r["errors"]) for r in servers if r["service"] in demo.mine] == [(p, 3)]


def test_trace_is_one_tree_across_the_four_services(demo: Demo) -> None:
    # Request 3 (index 2): payment's call 3 failed, checkout retried; request 1 (index 0)
    # asked for recommendations, so it ran the slow statement.
    trace_id = demo.run.trace_ids[2]
    trace = demo.get(f"/api/v1/traces/{trace_id}")
    assert trace["traceId"] == trace_id
    assert set(trace["services"]) == demo.mine
    assert (trace["rootService"], trace["rootName"]) == (demo.s("frontend"), "GET /checkout")
    spans = {span["spanId"]: span for span in trace["spans"]}
    roots = [span for span in spans.values() if span["parentSpanId"] == ""]
    assert [(r["service"], r["depth"]) for r in roots] == [(demo.s("frontend"), 0)]
    for span in spans.values():
        if span["parentSpanId"]:
            parent = spans[span["parentSpanId"]]
            assert span["depth"] == parent["depth"] + 1
            if span["kind"] == "server":  # each server span's parent is its caller's client span
                assert parent["kind"] == "client" and parent["service"] != span["service"]

    charges = [s for s in spans.values() if s["name"] == "POST /charge"]
    assert sorted(s["status"] for s in charges) == ["error", "unset"]
    failed = next(s for s in charges if s["status"] == "error")
    assert failed["attributes"]["http.status_code"] == "500"
    assert [e["name"] for e in failed["events"]] == ["exception"]
    exception = failed["events"][0]["attributes"]
    assert exception["exception.type"].endswith("PaymentDeclinedError")
    assert exception["exception.message"].startswith("issuer declined order")
    assert trace["errorCount"] == 2  # payment's server span and checkout's client span

    slow_trace = demo.get(f"/api/v1/traces/{demo.run.trace_ids[0]}")
    statements = [
        s["attributes"].get("db.query.text", "")
        for s in slow_trace["spans"]
        if s["attributes"].get("db.system.name") == "sqlite"
    ]
    assert any(text.startswith("WITH RECURSIVE") for text in statements)
    inventory = [s for s in slow_trace["spans"] if s["service"] == demo.s("inventory")]
    assert {s["kind"] for s in inventory} == {"server", "client"}


def test_jaeger_api_describes_the_demo(demo: Demo) -> None:
    services = demo.get("/jaeger/api/services")
    assert set(services) >= {"data", "total", "limit", "offset", "errors"}
    assert demo.mine <= set(services["data"])

    trace_id = demo.run.trace_ids[2]
    body = demo.get(f"/jaeger/api/traces/{trace_id}")
    (trace,) = body["data"]
    assert trace["traceID"] == trace_id
    processes = trace["processes"]
    assert {p["serviceName"] for p in processes.values()} == demo.mine
    spans = trace["spans"]
    by_id = {s["spanID"]: s for s in spans}
    for span in spans:
        assert span["processID"] in processes
        assert isinstance(span["startTime"], int) and isinstance(span["duration"], int)
        # Microseconds since the epoch, inside the run.
        assert demo.run.start.timestamp() * 1e6 - 1e6 < span["startTime"]
        assert span["startTime"] < demo.run.end.timestamp() * 1e6
        tags = {t["key"]: t["value"] for t in span["tags"]}
        assert tags["span.kind"] in {"server", "client"}
        for ref in span["references"]:
            assert ref["refType"] == "CHILD_OF" and ref["spanID"] in by_id
    roots = [s for s in spans if not s["references"]]
    assert [processes[r["processID"]]["serviceName"] for r in roots] == [demo.s("frontend")]
    failed = [
        s
        for s in spans
        if processes[s["processID"]]["serviceName"] == demo.s("payment")
        and {"key": "error", "type": "bool", "value": True} in s["tags"]
    ]
    assert len(failed) == 1
    assert {"key": "otel.status_code", "type": "string", "value": "ERROR"} in failed[0]["tags"]
    assert [f["value"] for f in failed[0]["logs"][0]["fields"] if f["key"] == "event"] == [
        "exception"
    ]

    end_ms = int(demo.run.end.timestamp() * 1000) + 60_000
    dependencies = demo.get("/jaeger/api/dependencies", endTs=str(end_ms), lookback="600000")
    calls = {
        (d["parent"], d["child"]): d["callCount"]
        for d in dependencies["data"]
        if d["parent"] in demo.mine
    }
    f, c, i, p = (demo.s(r) for r in ("frontend", "checkout", "inventory", "payment"))
    assert calls == {(f, c): 12, (c, i): demo.server_spans("inventory")[0], (c, p): 15}


def test_the_demo_over_grpc_lands_too(make_module_server: ServerFactory) -> None:
    app = make_module_server(roles=["ingest", "query"])
    run = run_demo(f"http://127.0.0.1:{app.ports.grpc}", rounds=2, protocol="grpc")
    assert app.pipeline is not None and app.pipeline.wait_stored(30)
    url = f"http://127.0.0.1:{app.ports.api}/api/v1/traces"
    counts = []
    for trace_id in run.trace_ids:
        trace = httpx.get(f"{url}/{trace_id}", timeout=60).json()
        assert set(trace["services"]) == set(run.services.values())
        counts.append(trace["spanCount"])
    assert sum(counts) == sum(run.spans_exported.values())


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"rounds": 0}, "rounds"),
        ({"protocol": "http/json"}, "protocol"),
        ({"recommend_every": 0}, "recommend_every"),
    ],
    ids=["no-rounds", "unknown-protocol", "no-recommendations"],
)
def test_run_demo_refuses_bad_arguments_before_starting_anything(
    arguments: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        run_demo("http://127.0.0.1:9", **arguments)


def test_run_demo_fails_when_spans_are_not_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    # A port nothing listens on: every export fails (quickly, with a one-second timeout).
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    with pytest.raises(DemoError, match=r"ended \d+ spans but exported 0 \(\d+ failed\)"):
        run_demo(f"http://127.0.0.1:{port}", rounds=1)
