"""EdgeBuilder: service-graph edges recomputed from spans over a trailing window of minutes.

Spans go in over OTLP/HTTP (the real ingest and engine); ``run_once`` is then called the way
the worker calls it, and the edges are read back as the API reads them (each minute's latest
recomputation).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.topology.spans import MS, Run, Span, edges, send
from tracehouse.app import Tracehouse
from tracehouse.query._rollups import minute_window
from tracehouse.query.params import TimeRange
from tracehouse.topology import EdgeBuilder, EdgeWorker
from tracehouse.topology.api import EDGES_SQL

DB = {"db.system.name": "postgresql", "db.namespace": "shop"}


@pytest.fixture
def app(server: Tracehouse) -> Tracehouse:
    return server


@pytest.fixture
def run() -> Run:
    return Run()


def _builder(app: Tracehouse) -> EdgeBuilder:
    return EdgeBuilder(app.client, lag_s=0, window_min=15)


def test_pair_sent_in_different_requests_and_batches_is_one_edge(app: Tracehouse, run: Run):
    checkout, payments = run.name("checkout"), run.name("payments")
    parent = Span(checkout, "client", run.at(0), 50, error=True)
    child = parent.child(payments, duration_ms=30)
    send(app, parent)  # stored before the child is even sent: another request and batch
    send(app, child)

    window = _builder(app).run_once()

    assert window.start <= run.minute < window.end
    found = edges(app, run)
    assert set(found) == {(checkout, payments, "service")}
    edge = found[(checkout, payments, "service")]
    assert (edge["calls"], edge["errors"]) == (1, 1)
    # One call each: every quantile is that call's duration, as each side saw it.
    assert [round(q / MS, 3) for q in edge["client_quantiles"]] == [50.0] * 3
    assert [round(q / MS, 3) for q in edge["server_quantiles"]] == [30.0] * 3
    assert (edge["client_total_ns"], edge["server_total_ns"]) == (50 * MS, 30 * MS)


def test_child_arriving_minutes_later_is_paired_by_a_later_run(app: Tracehouse, run: Run):
    checkout, payments = run.name("checkout"), run.name("payments")
    parent = Span(
        checkout,
        "client",
        run.at(0),
        40,
        attrs={"server.address": run.name("pay.internal"), "server.port": "8443"},
    )
    send(app, parent)
    builder = _builder(app)
    builder.run_once()
    # No server child yet: the call goes to a virtual peer named from the client's attributes.
    assert set(edges(app, run)) == {(checkout, f"{run.name('pay.internal')}:8443", "external")}

    # The child turns up later, with a Timestamp three minutes after its parent's.
    send(app, parent.child(payments, start_ns=run.at(180_000), duration_ms=10))
    builder.run_once()

    found = edges(app, run)
    # Recomputed, the minute holds the real edge only: the virtual one is gone.
    assert set(found) == {(checkout, payments, "service")}
    assert found[(checkout, payments, "service")]["calls"] == 1


def test_running_again_recomputes_instead_of_adding(app: Tracehouse, run: Run) -> None:
    web, api, db = run.name("web"), run.name("api"), run.name("orders")
    spans = []
    for i in range(3):
        call = Span(web, "client", run.at(i * 100), 20, error=i == 0)
        spans += [call, call.child(api)]
        spans.append(
            Span(api, "client", run.at(i * 100 + 5), 5, attrs={"db.system.name": "postgresql"})
        )
    spans[-1].attrs["db.namespace"] = db  # only the last query names its database
    send(app, *spans)
    builder = _builder(app)

    builder.run_once()
    first = {key: (row["calls"], row["errors"]) for key, row in edges(app, run).items()}
    builder.run_once()
    builder.run_once()
    again = {key: (row["calls"], row["errors"]) for key, row in edges(app, run).items()}

    assert first == {
        (web, api, "service"): (3, 1),
        (api, db, "database"): (1, 0),
        (api, "postgresql", "database"): (2, 0),  # no namespace: named after the system
    }
    assert again == first


def test_spans_within_one_service_make_no_edge(app: Tracehouse, run: Run) -> None:
    shop = run.name("shop")
    # A client span whose server child is in the same service, although it names a peer.
    call = Span(shop, "client", run.at(0), 10, attrs={"server.address": run.name("self")})
    send(app, call, call.child(shop))
    # And one that does cross services, so an empty result is not just a missed run.
    other = Span(shop, "client", run.at(50), 10)
    send(app, other, other.child(run.name("stock")))

    _builder(app).run_once()

    assert set(edges(app, run)) == {(shop, run.name("stock"), "service")}


@pytest.mark.parametrize(
    ("kind", "attrs", "target", "node_type"),
    [
        # Peer names: new semantic-convention keys first, the old ones as fallback.
        ("client", {"service.peer.name": "{n}", "server.address": "ignored"}, "{n}", "external"),
        ("client", {"peer.service": "{n}", "net.peer.name": "ignored"}, "{n}", "external"),
        ("client", {"server.address": "{n}", "server.port": "443"}, "{n}:443", "external"),
        ("client", {"net.peer.name": "{n}", "net.peer.port": "80"}, "{n}:80", "external"),
        ("client", {"server.address": "{n}", "net.peer.name": "old"}, "{n}", "external"),
        ("client", {"network.peer.address": "{n}"}, "{n}", "external"),
        # Databases: namespace, else system; old keys db.name / db.system.
        ("client", {"db.system.name": "postgresql", "db.namespace": "{n}"}, "{n}", "database"),
        ("client", {"db.system": "mysql", "db.name": "{n}"}, "{n}", "database"),
        ("client", {"db.system": "{n}"}, "{n}", "database"),
        ("client", {"db.system.name": "redis", "server.address": "{n}"}, "{n}", "database"),
        # Messaging: a producer without a consumer child, to its destination.
        (
            "producer",
            {"messaging.system": "kafka", "messaging.destination.name": "{n}"},
            "{n}",
            "messaging",
        ),
    ],
)
def test_virtual_peers_are_named_and_typed_from_the_client_span(
    app: Tracehouse, run: Run, kind: str, attrs: dict[str, str], target: str, node_type: str
) -> None:
    service, peer = run.name("caller"), run.name("peer")
    filled = {key: value.replace("{n}", peer) for key, value in attrs.items()}
    send(app, Span(service, kind, run.at(0), 12, attrs=filled))

    _builder(app).run_once()

    found = edges(app, run)
    key = (service, target.replace("{n}", peer), node_type)
    assert set(found) == {key}
    row = found[key]
    assert row["calls"] == 1
    assert [round(q / MS, 3) for q in row["client_quantiles"]] == [12.0] * 3
    assert all(q != q for q in row["server_quantiles"])  # NaN: no server side


def test_client_span_naming_no_peer_makes_no_edge(app: Tracehouse, run: Run) -> None:
    service = run.name("anon")
    send(app, Span(service, "client", run.at(0), 5), Span(service, "server", run.at(10), 5))
    _builder(app).run_once()
    assert set(edges(app, run)) == {("user", service, "user")}


def test_root_server_spans_come_from_user_and_producer_consumer_pairs(app: Tracehouse, run: Run):
    front, queue_worker = run.name("front"), run.name("mailer")
    root = Span(front, "server", run.at(0), 80, error=True)
    second = Span(front, "server", run.at(10), 20)
    publish = root.child(front, "producer", attrs={"messaging.system": "rabbitmq"})
    consume = publish.child(queue_worker, "consumer", start_ns=run.at(60_000))
    internal_root = Span(run.name("batch"), "internal", run.at(20), 5)  # not a server span
    send(app, root, second, publish, internal_root)
    send(app, consume)

    _builder(app).run_once()

    found = edges(app, run)
    assert set(found) == {("user", front, "user"), (front, queue_worker, "service")}
    user = found[("user", front, "user")]
    assert (user["calls"], user["errors"]) == (2, 1)
    assert all(q != q for q in user["client_quantiles"])
    assert round(user["server_quantiles"][2] / MS) == 80


def test_window_holds_the_closed_minutes_after_the_lag(app: Tracehouse) -> None:
    builder = EdgeBuilder(app.client, lag_s=30, window_min=15)
    now = dt.datetime(2026, 11, 23, 10, 0, 20, tzinfo=dt.UTC)
    window = builder.window(now)
    # 09:59 is still open at 10:00:20 with a 30 s lag: 09:45 .. 09:58 are recomputed.
    assert window.start == dt.datetime(2026, 11, 23, 9, 45, tzinfo=dt.UTC)
    assert window.end == dt.datetime(2026, 11, 23, 9, 59, tzinfo=dt.UTC)
    later = builder.window(now + dt.timedelta(seconds=15))
    assert later.end == dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


class _FailingClient:
    """Fails its first ``failures`` commands, then succeeds; counts them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.commands = 0
        self.done = threading.Event()

    def command(self, sql: str, parameters: dict[str, Any]) -> None:
        if sql.lstrip().startswith("INSERT INTO otel_edges_1h"):  # after the minutes succeeded
            assert parameters["hours_start"] < parameters["hours_end"]
            return
        self.commands += 1
        assert sql.lstrip().startswith("INSERT INTO otel_edges_1m")
        assert parameters["child_start_ns"] < parameters["start_ns"] < parameters["end_ns"]
        if self.commands <= self.failures:
            raise ConnectionError(f"down #{self.commands}")
        self.done.set()


def test_failing_runs_are_recorded_and_the_loop_goes_on() -> None:
    client = _FailingClient(failures=2)
    builder = EdgeBuilder(client, lag_s=0)
    worker = EdgeWorker(builder, interval_s=0.01)
    worker.start()
    try:
        assert client.done.wait(10), "the loop stopped after a failing run"
    finally:
        worker.stop()
    assert builder.failures == 2
    assert builder.runs >= 3
    assert builder.last_error is None  # cleared by the successful run
    assert builder.last_run is not None

    with pytest.raises(ConnectionError):
        EdgeBuilder(_FailingClient(failures=1), lag_s=0).run_once()


def test_failed_run_keeps_its_error(app: Tracehouse) -> None:
    builder = EdgeBuilder(_FailingClient(failures=5), lag_s=0)
    with pytest.raises(ConnectionError):
        builder.run_once()
    assert builder.last_error == "ConnectionError: down #1"
    assert builder.failures == 1 and builder.runs == 1


def test_worker_role_runs_the_job_and_other_roles_do_not(make_server: ServerFactory) -> None:
    worker = make_server()
    assert worker.edges is not None
    deadline = time.monotonic() + 20
    while worker.edges.builder.last_run is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.edges.builder.last_run is not None
    assert worker.edges.builder.last_error is None
    query_only = make_server(roles=["query"])
    assert query_only.edges is None
    worker.stop()
    assert worker.edges is None


def _edges_read(app: Tracehouse, run: Run, parameters: dict[str, int]) -> dict[Any, Any]:
    result = app.client.query(EDGES_SQL, parameters=parameters)
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    return {
        (r["source"], r["target"], r["type"]): (
            r["calls"],
            r["errors"],
            [round(q / MS, 3) for q in r["client_quantiles"]],
            r["client_total_ns"],
            r["server_total_ns"],
        )
        for r in rows
        if not r["per_target"] and run.suffix in r["source"]
    }


def test_whole_hours_come_from_the_hourly_edges_and_agree_with_the_minutes(
    app: Tracehouse, run: Run
) -> None:
    """Each run recomputes the hours its minutes fall in (otel_edges_1h); a window read as
    whole hours plus minutes at both ends gives the edges the minutes alone give."""
    web, api = run.name("web"), run.name("api")
    now = dt.datetime.now(dt.UTC)
    hour = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    spans = []
    for n, minutes in enumerate((-80, -65, -50, -30, -10, -2, 20, 40)):
        at = int((hour + dt.timedelta(minutes=minutes, seconds=5)).timestamp()) * 10**9
        call = Span(web, "client", at, 10 + n, error=n % 3 == 0)
        spans += [call, call.child(api)]
        spans.append(Span(api, "client", at + MS, 2, attrs=DB))
    send(app, *spans)
    EdgeBuilder(app.client, lag_s=0, window_min=240).run_once()
    # A later run recomputes only its own minutes, here the last ten of the hour before
    # ``hour`` and the first five of it, and from them both hours: their other minutes are the
    # earlier run's, and the hours' new rows must still hold every minute.
    EdgeBuilder(app.client, lag_s=0, window_min=15).run_once(hour + dt.timedelta(minutes=5))

    now = dt.datetime.now(dt.UTC)
    window = minute_window(TimeRange(now - dt.timedelta(minutes=200), now))
    tiered = window.parameters()
    assert tiered["hours_end"] - tiered["hours_start"] >= 2 * 3600
    minutes_only = {**tiered, "hours_start": tiered["start"], "hours_end": tiered["start"]}
    expected = _edges_read(app, run, minutes_only)
    assert expected[(web, api, "service")][:2] == (8, 3)
    assert expected[(api, "shop", "database")][:2] == (8, 0)
    assert _edges_read(app, run, tiered) == expected
    hours = app.client.query(
        "SELECT uniqExact(Hour) FROM otel_edges_1h FINAL WHERE Source = {s:String}",
        parameters={"s": web},
    ).first_row[0]
    assert hours >= 3
