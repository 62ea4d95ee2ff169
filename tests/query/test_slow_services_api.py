"""``GET /api/v1/slow-services``: slow services and operations, each with its cause.

Spans go in over OTLP/HTTP (names carry the run's suffix). Two whole minutes: the baseline
minute (five minutes ago) and the minute after it, the window judged. Twelve calls of every
entry operation in each minute:

- ``shop`` (``GET /shop``): 100 ms, of which 20 ms calling ``stock`` and 10 ms of SQL
  (``SELECT * FROM items WHERE id = <n>``) → 400 ms, the SQL now taking 310 ms: the cause
  is the fingerprint.
- ``edge``: 30 ms, 10 ms of it calling ``far`` → 100 ms, the call to ``far`` now 80 ms
  (``far`` itself 8 → 78 ms, its own time): the cause is the edge ``edge → far``.
- ``cpu``: 50 ms → 200 ms with no calls out: its own code.
- ``stock``: 18 ms in both: not slow.
- ``late``: no baseline, 1,500 ms now: slow by the threshold only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.topology.spans import Run, Span, send
from tracehouse.app import Tracehouse
from tracehouse.config import Settings
from tracehouse.topology import EdgeBuilder

CALLS = 12
SQL = "SELECT * FROM items WHERE id = ?"


@dataclass(frozen=True)
class Scene:
    app: Tracehouse
    run: Run

    @property
    def window_s(self) -> int:
        return self.run.base_ns // 10**9 + 60  # the minute after the baseline minute

    def get(self, **params: Any) -> httpx.Response:
        query = {"start": str(self.window_s), "end": str(self.window_s + 60), **params}
        url = f"http://127.0.0.1:{self.app.ports.api}/api/v1/slow-services"
        return httpx.get(url, params=query, timeout=30)

    def ok(self, **params: Any) -> dict[str, Any]:
        response = self.get(**params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def n(self, name: str) -> str:
        return self.run.name(name)

    def items(self, **params: Any) -> dict[tuple[str, str | None], dict[str, Any]]:
        """This run's items by (service, operation)."""
        return {
            (item["service"], item["operation"]): item
            for item in self.ok(**params)["items"]
            if item["service"].endswith(self.run.suffix)
        }


def _minute(run: Run, minute: int, slow: bool) -> list[Span]:
    """One minute of every service's calls; ``slow`` gives the window's durations."""
    spans: list[Span] = []
    n = run.name
    for i in range(CALLS):
        at = run.at(minute * 60_000 + i * 1_000)
        shop = Span(n("shop"), "server", at, 400 if slow else 100, name="GET /shop")
        call = shop.child(n("shop"), "client", duration_ms=20, name="GET /stock")
        query = shop.child(
            n("shop"),
            "client",
            duration_ms=310 if slow else 10,
            name="SELECT items",
            attrs={
                "db.system.name": "postgresql",
                "db.namespace": n("shopdb"),
                "db.query.text": f"SELECT * FROM items WHERE id = {i}",
            },
        )
        edge = Span(n("edge"), "server", at, 100 if slow else 30, name="GET /edge")
        far_call = edge.child(n("edge"), "client", duration_ms=80 if slow else 10, name="GET /far")
        spans += [
            shop,
            call,
            call.child(n("stock"), duration_ms=18, name="GET /stock"),
            query,
            edge,
            far_call,
            far_call.child(n("far"), duration_ms=78 if slow else 8, name="GET /far"),
            Span(n("cpu"), "server", at, 200 if slow else 50, name="POST /cpu"),
        ]
        if slow:
            spans.append(Span(n("late"), "server", at, 1500, name="GET /late"))
    return spans


@pytest.fixture(scope="module")
def scene(engine_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("slow-services"),
        clickhouse_url=engine_url,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        api_port=0,
        roles=["ingest", "query"],  # the test runs the edge job itself
    )
    app = Tracehouse(settings)
    app.start()
    try:
        run = Run()
        send(app, *_minute(run, 0, slow=False))
        send(app, *_minute(run, 1, slow=True))
        EdgeBuilder(app.client, lag_s=0, window_min=15).run_once()
        yield Scene(app, run)
    finally:
        app.stop()


def test_the_slow_services_and_only_they_are_listed(scene: Scene) -> None:
    services = {service for service, operation in scene.items() if operation is None}
    assert services == {scene.n(s) for s in ("shop", "edge", "far", "cpu", "late")}
    # The entry operations too (each service has one here), with their own figures.
    operation = scene.items()[(scene.n("shop"), "GET /shop")]
    assert (operation["kind"], operation["calls"], operation["p99_ms"]) == ("server", 12, 400.0)


def test_a_slower_statement_is_the_cause(scene: Scene) -> None:
    shop = scene.items()[(scene.n("shop"), None)]
    assert shop["reasons"] == ["baseline"]
    assert (shop["calls"], shop["baseline_calls"]) == (CALLS, CALLS)
    assert (shop["p99_ms"], shop["baseline_p99_ms"], shop["factor"]) == (400.0, 100.0, 4.0)
    assert (shop["avg_ms"], shop["baseline_avg_ms"]) == (400.0, 100.0)
    cause = shop["cause"]
    assert (cause["type"], cause["db_system"], cause["statement"]) == ("sql", "postgresql", SQL)
    assert (cause["calls"], cause["ms_per_call"], cause["baseline_ms_per_call"]) == (12, 310, 10)
    assert (cause["delta_ms"], cause["share"]) == (300.0, 1.0)
    assert len(cause["fingerprint"]) == 16
    assert cause["exemplar_trace_ids"]
    # The other parts did not change: the call to stock (20 ms) and own time (70 ms).
    parts = {(c["type"], c["target"]): c for c in shop["contributions"]}
    assert parts[("edge", scene.n("stock"))]["delta_ms"] == 0
    assert parts[("edge", scene.n("stock"))]["edge_type"] == "service"
    assert parts[("self", scene.n("shop"))]["ms_per_call"] == 70
    # The operation's row names its service's cause; its exemplars are its slowest calls.
    operation = scene.items()[(scene.n("shop"), "GET /shop")]
    assert operation["cause"] == cause
    assert len(operation["exemplar_trace_ids"]) == 3


def test_a_slower_downstream_call_is_the_cause_and_its_own_code_downstream(scene: Scene) -> None:
    items = scene.items()
    edge = items[(scene.n("edge"), None)]
    cause = edge["cause"]
    assert (cause["type"], cause["target"], cause["edge_type"]) == (
        "edge",
        scene.n("far"),
        "service",
    )
    assert (cause["ms_per_call"], cause["baseline_ms_per_call"], cause["share"]) == (80, 10, 1.0)
    far = items[(scene.n("far"), None)]
    assert (far["cause"]["type"], far["cause"]["delta_ms"]) == ("self", 70.0)


def test_own_code_is_the_cause_when_nothing_downstream_changed(scene: Scene) -> None:
    cpu = scene.items()[(scene.n("cpu"), None)]
    assert (cpu["cause"]["type"], cpu["cause"]["target"]) == ("self", scene.n("cpu"))
    assert (cpu["cause"]["delta_ms"], cpu["cause"]["share"]) == (150.0, 1.0)
    assert len(cpu["exemplar_trace_ids"]) == 3


def test_without_a_baseline_the_threshold_judges(scene: Scene) -> None:
    late = scene.items()[(scene.n("late"), None)]
    assert late["reasons"] == ["threshold"]
    assert (late["baseline_calls"], late["baseline_p99_ms"], late["factor"]) == (0, None, None)
    assert late["threshold_ms"] == 1000
    assert late["cause"]["type"] == "self"
    assert (late["cause"]["delta_ms"], late["cause"]["share"]) == (None, 1.0)
    # Below a raised threshold it is not slow; over a stricter one, more are.
    assert (scene.n("late"), None) not in scene.items(threshold_ms=2000)
    assert (scene.n("stock"), None) in scene.items(threshold_ms=10)


def test_a_higher_factor_and_more_calls_needed_judge_fewer(scene: Scene) -> None:
    # shop x4, far x9.75, cpu x4, edge x3.33: a factor of 5 leaves far (and late, by threshold).
    assert {s for s, o in scene.items(factor=5) if o is None} == {scene.n("far"), scene.n("late")}
    assert scene.items(min_calls=13) == {}


def test_the_exemplars_are_the_slowest_calls_two_of_them_in_one_minute(scene: Scene) -> None:
    # Three 50 ms calls a minute for four minutes, and one or two slow ones in each: the three
    # slowest (900 and 800 ms in the first minute, 700 in the second) are the exemplars, not
    # the slowest call of each of the three slowest minutes (900, 700, 650).
    run = Run()
    slow_ms = {1: (900, 800), 2: (700,), 3: (600,), 4: (650,)}
    spans: list[Span] = []
    for minute, peaks in slow_ms.items():
        durations = (50, 50, 50, *peaks)
        for i, duration in enumerate(durations):
            at = run.at(minute * 60_000 + i * 1_000)
            spans.append(Span(run.name("peaks"), "server", at, duration, name="GET /peaks"))
    send(scene.app, *spans)
    slowest = {s.trace_id for s in spans if s.duration_ms in (900, 800, 700)}

    start = run.base_ns // 10**9 + 60
    items = {
        (item["service"], item["operation"]): item
        for item in scene.ok(start=str(start), end=str(start + 240), threshold_ms="100")["items"]
    }
    operation = items[(run.name("peaks"), "GET /peaks")]
    assert operation["calls"] == len(spans)
    assert set(operation["exemplar_trace_ids"]) == slowest


def test_the_most_severe_come_first(scene: Scene) -> None:
    order = [
        item["service"]
        for item in scene.ok()["items"]
        if item["service"].endswith(scene.run.suffix) and item["operation"] is None
    ]
    # far (x9.75 / 2) before shop and cpu (x4 / 2) before edge (x3.33 / 2), late (1.5) last.
    assert order == [scene.n(s) for s in ("far", "cpu", "shop", "edge", "late")]


def test_the_day_before_is_a_baseline_too(scene: Scene) -> None:
    page = scene.ok(baseline="day")
    assert page["baseline"] == "day"
    assert page["baseline_start"] == page["start"].replace(
        page["start"][:10], page["baseline_start"][:10]
    )
    # Nothing was sent a day ago: every slow item is slow by the threshold only.
    mine = [i for i in page["items"] if i["service"].endswith(scene.run.suffix)]
    assert {i["service"] for i in mine} == {scene.n("late")}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"baseline": "week"}, "baseline"),
        ({"threshold_ms": "0"}, "threshold_ms"),
        ({"factor": "1"}, "factor"),
        ({"min_calls": "0"}, "min_calls"),
        ({"limit": "1000"}, "limit"),
        ({"start": "0", "end": str(3 * 86_400), "baseline": "day"}, "baseline"),
    ],
    ids=["baseline", "threshold", "factor", "min-calls", "limit", "day-over-a-day"],
)
def test_bad_parameters_are_named(scene: Scene, params: dict[str, str], parameter: str) -> None:
    response = scene.get(**params)
    assert response.status_code == 422, response.text
    assert [e["loc"][-1] for e in response.json()["detail"]] == [parameter]
