"""``GET /api/v1/topology`` over real HTTP, after the worker's job has built the edges.

The graph (names carry the run's suffix; times are five minutes in the past)::

    user ──▶ front ──▶ api ──▶ orders        (database: db.namespace)
                │        ├──▶ events         (messaging: producer without a consumer)
                │        └──▶ pay:443        (external: server.address/port)
                └──▶ search
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.topology.spans import Run, Span, send
from tracehouse.app import Tracehouse
from tracehouse.config import Settings
from tracehouse.topology import EdgeBuilder


@dataclass(frozen=True)
class Graph:
    app: Tracehouse
    run: Run

    def get(self, **params: Any) -> httpx.Response:
        query = {"start": str(self.run.base_ns // 1_000_000 - 60_000), **params}
        url = f"http://127.0.0.1:{self.app.ports.api}/api/v1/topology"
        return httpx.get(url, params=query, timeout=30)

    def ok(self, **params: Any) -> dict[str, Any]:
        response = self.get(**params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def n(self, name: str) -> str:
        return self.run.name(name)


@pytest.fixture(scope="module")
def graph(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("topology-api"),
        clickhouse_url=engine_url,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        api_port=0,
        roles=["ingest", "query"],  # the test runs the job itself
    )
    app = Tracehouse(settings)
    app.start()
    try:
        run = Run()
        g = Graph(app, run)
        front, api, search = g.n("front"), g.n("api"), g.n("search")
        spans: list[Span] = []
        for i, (root_ms, error) in enumerate([(100, True), (50, False)]):
            root = Span(front, "server", run.at(i * 1000), root_ms, error=error)
            call = root.child(front, "client", duration_ms=40)
            handled = call.child(api, duration_ms=30, error=error)
            spans += [root, call, handled]
        spans.append(spans[0].child(front, "client", duration_ms=8))
        spans.append(spans[-1].child(search, duration_ms=6))
        handled = spans[2]
        spans.append(
            handled.child(
                api,
                "client",
                duration_ms=5,
                attrs={"db.system.name": "postgresql", "db.namespace": g.n("orders")},
            )
        )
        spans.append(
            handled.child(
                api,
                "producer",
                duration_ms=2,
                attrs={"messaging.system": "kafka", "messaging.destination.name": g.n("events")},
            )
        )
        spans.append(
            handled.child(
                api,
                "client",
                duration_ms=20,
                error=True,
                attrs={"server.address": g.n("pay"), "server.port": "443"},
            )
        )
        send(app, *spans[:4])  # the graph arrives in two requests
        send(app, *spans[4:])
        EdgeBuilder(app.client, lag_s=0).run_once()
        yield g
    finally:
        app.stop()


def _mine(body: dict[str, Any], g: Graph) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    nodes = {n["id"]: n for n in body["nodes"] if g.run.suffix in n["id"] or n["id"] == "user"}
    edges = {
        (e["source"], e["target"]): e
        for e in body["edges"]
        if g.run.suffix in e["source"] or g.run.suffix in e["target"]
    }
    return nodes, edges


def test_nodes_and_edges_with_types_and_figures(graph: Graph) -> None:
    g = graph
    nodes, edges = _mine(g.ok(), g)
    front, api = g.n("front"), g.n("api")
    pay = f"{g.n('pay')}:443"
    assert {name: n["type"] for name, n in nodes.items() if name != "user"} == {
        front: "service",
        api: "service",
        g.n("search"): "service",
        g.n("orders"): "database",
        g.n("events"): "messaging",
        pay: "external",
    }
    assert nodes["user"]["type"] == "user"
    assert {key: e["type"] for key, e in edges.items()} == {
        ("user", front): "user",
        (front, api): "service",
        (front, g.n("search")): "service",
        (api, g.n("orders")): "database",
        (api, g.n("events")): "messaging",
        (api, pay): "external",
    }

    call = edges[(front, api)]
    assert (call["calls"], call["errors"], call["error_rate"]) == (2, 1, 0.5)
    assert [call[f"client_p{q}_ms"] for q in (50, 95, 99)] == [40.0, 40.0, 40.0]
    assert [call[f"server_p{q}_ms"] for q in (50, 95, 99)] == [30.0, 30.0, 30.0]
    assert (call["client_avg_ms"], call["server_avg_ms"]) == (40.0, 30.0)
    db = edges[(api, g.n("orders"))]
    assert (db["calls"], db["errors"], db["client_p99_ms"], db["server_p99_ms"]) == (
        1,
        0,
        5.0,
        None,
    )
    assert (db["client_avg_ms"], db["server_avg_ms"]) == (5.0, None)
    entry = edges[("user", front)]
    assert (entry["calls"], entry["errors"], entry["client_p50_ms"]) == (2, 1, None)
    assert entry["server_p99_ms"] == pytest.approx(100, abs=1)

    # Services: their entry spans from the RED rollup.
    assert (nodes[front]["calls"], nodes[front]["errors"]) == (2, 1)
    assert nodes[front]["p99_ms"] == pytest.approx(100, abs=1)
    assert 50 <= nodes[front]["p50_ms"] <= 100
    assert (nodes[api]["calls"], nodes[api]["errors"], nodes[api]["error_rate"]) == (2, 1, 0.5)
    assert nodes[api]["p50_ms"] == 30.0
    # Virtual peers: as their callers saw them; user: the root spans.
    assert (nodes[pay]["calls"], nodes[pay]["errors"], nodes[pay]["p50_ms"]) == (1, 1, 20.0)
    assert nodes[g.n("orders")]["p95_ms"] == 5.0
    assert (nodes["user"]["calls"], nodes["user"]["errors"]) >= (2, 1)


def test_coordinates_are_in_range_layered_and_deterministic(graph: Graph) -> None:
    g = graph
    first = g.ok()
    for node in first["nodes"]:
        assert 0 <= node["x"] <= 1 and 0 <= node["y"] <= 1, node
    assert first == g.ok()

    around = g.ok(service=g.n("front"), depth=2)
    assert around == g.ok(service=g.n("front"), depth=2)
    x = {n["id"]: n["x"] for n in around["nodes"]}
    # One column per hop from the entry point, left to right.
    assert x["user"] == 0.0
    assert x["user"] < x[g.n("front")] < x[g.n("api")] < x[g.n("orders")] == 1.0
    assert x[g.n("api")] == x[g.n("search")]
    ys = {n["y"] for n in around["nodes"] if n["x"] == 1.0}
    assert len(ys) == 3  # orders, events and pay share a column, one above the other


def test_service_and_depth_restrict_to_the_neighbourhood(graph: Graph) -> None:
    g = graph
    front, api = g.n("front"), g.n("api")
    one = g.ok(service=api)
    assert (one["service"], one["depth"]) == (api, 1)
    assert {(e["source"], e["target"]) for e in one["edges"]} == {
        (front, api),
        (api, g.n("orders")),
        (api, g.n("events")),
        (api, f"{g.n('pay')}:443"),
    }
    assert {n["id"] for n in one["nodes"]} == {
        front,
        api,
        g.n("orders"),
        g.n("events"),
        f"{g.n('pay')}:443",
    }

    two = g.ok(service=api, depth="2")
    assert {(e["source"], e["target"]) for e in two["edges"]} == {
        (e["source"], e["target"]) for e in one["edges"]
    } | {("user", front)}

    downstream_of_front = g.ok(service=front)
    assert {(e["source"], e["target"]) for e in downstream_of_front["edges"]} == {
        ("user", front),
        (front, api),
        (front, g.n("search")),
    }
    unknown = g.ok(service=g.n("nobody"))
    assert (unknown["service"], unknown["nodes"], unknown["edges"]) == (g.n("nobody"), [], [])


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"depth": "0"}, "depth"),
        ({"depth": "11"}, "depth"),
        ({"depth": "two"}, "depth"),
        ({"service": " "}, "service"),
        ({"start": "yesterday"}, "start"),
        ({"end": "not-a-time"}, "end"),
        ({"start": "2026-11-23T10:00:00Z", "end": "2026-11-23T09:00:00Z"}, "start"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    graph: Graph, params: dict[str, str], parameter: str
) -> None:
    response = graph.get(**params)
    assert response.status_code == 422, response.text
    assert [d["loc"] for d in response.json()["detail"]] == [["query", parameter]]


def test_a_window_without_edges_is_an_empty_graph(graph: Graph) -> None:
    body = graph.ok(start="2020-01-01T00:00:00Z", end="2020-01-01T01:00:00Z")
    assert (body["nodes"], body["edges"]) == ([], [])
    assert body["start"].startswith("2020-01-01T00:00:00")
    assert dt.datetime.fromisoformat(body["end"]) == dt.datetime(2020, 1, 1, 1, tzinfo=dt.UTC)
