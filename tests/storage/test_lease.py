"""Leader election over the real embedded engine: contenders never lead at the same time, a
stopped, crashed or stalled leader is replaced, and the worker role's jobs follow the lease.

Each test uses a lease name of its own in the session's one engine. Timings are short
(lease 1.8 s) so that many changes of leadership fit in a test; the assertions are about
order (leadership intervals on one monotonic clock must not overlap), never about speed.

The store-independent tests run twice: here on the table store, and — in a child pytest, since
chDB allows one engine per process — on the KeeperMap store, with chDB configured to use a
real ZooKeeper (Debian's ``zookeeper`` package) started by the test.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import chdb
import clickhouse_connect
import pytest

from tests.conftest import ServerFactory
from tracehouse.config import Settings
from tracehouse.storage import connect
from tracehouse.storage.lease import (
    CREATE_LEASES_SQL,
    LeaderElector,
    LeaderGate,
    StoreKind,
    TableStore,
    Tenure,
    keeper_table_sql,
    make_store,
)

FAST = {"lease_s": 1.8, "renew_s": 0.2, "settle_s": 0.5}
WAIT_S = 30.0
ROOT = Path(__file__).resolve().parents[2]
# Set by the KeeperMap run (below) for its child pytest.
STORE: StoreKind = (
    "keeper" if os.environ.get("TRACEHOUSE_TEST_LEASE_STORE") == "keeper" else "table"
)
KEEPER_ENGINE = os.environ.get("TRACEHOUSE_TEST_KEEPER_ENGINE", "")
# The tests that do not look at a store's rows: what the KeeperMap run repeats.
STORE_INDEPENDENT = "contenders or takes_over or gate_builds"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")


class _Stallable:
    """The real client, with a switch that makes every call wait (a stuck network or a
    paused process, as the lease holder would experience it)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.running = threading.Event()
        self.running.set()

    def stall(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self.running.wait()
        return self._client.query(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        self.running.wait()
        return self._client.command(*args, **kwargs)

    def close(self) -> None:
        self.running.set()
        self._client.close()


@pytest.fixture
def lease_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


Factory = Callable[..., tuple[LeaderElector, _Stallable]]


@pytest.fixture
def make_elector(engine_url: str, lease_name: str) -> Iterator[Factory]:
    """Electors on clients of their own over the shared engine; all stopped at teardown."""
    made: list[tuple[LeaderElector, _Stallable]] = []
    counter = itertools.count()

    engine: Any = None
    if STORE == "keeper":
        # Open the engine with its configuration (ZooKeeper, keeper_map_path_prefix) first:
        # clients opened afterwards on the same path share it (chDB: one engine a process).
        engine = chdb.connect(KEEPER_ENGINE)
    url = f"chdb://{KEEPER_ENGINE.split('?')[0]}" if STORE == "keeper" else engine_url

    def make(**overrides: Any) -> tuple[LeaderElector, _Stallable]:
        client = _Stallable(clickhouse_connect.get_client(dsn=url))
        values: dict[str, Any] = {**FAST, "holder": f"candidate-{next(counter):03d}"}
        values.update(overrides)
        elector = LeaderElector(make_store(STORE, client), lease_name, **values)
        made.append((elector, client))
        return elector, client

    yield make
    for elector, client in made:
        client.resume()
        elector.stop(release=False, timeout_s=5)
        client.close()
    if engine is not None:
        engine.close()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.02)


def _leader(electors: list[LeaderElector]) -> LeaderElector:
    leaders: list[LeaderElector] = []

    def one() -> bool:
        leaders[:] = [e for e in electors if e.is_leader()]
        return len(leaders) == 1

    _wait_for(one, "single leader")
    return leaders[0]


def _overlaps(tenures: list[tuple[str, Tenure]]) -> list[tuple[str, str, int, int]]:
    ordered = sorted(tenures, key=lambda t: t[1].start)
    return [
        (a, b, ta.term, tb.term)
        for (a, ta), (b, tb) in itertools.pairwise(ordered)
        if tb.start < ta.end
    ]


def _rows(engine_url: str, name: str) -> list[tuple[Any, ...]]:
    client = connect(engine_url)
    try:
        rows = client.query(
            "SELECT Term, Seq, toString(Kind), Holder FROM tracehouse_leases "
            "WHERE Name = {n:String} ORDER BY Term, Seq, Holder",
            parameters={"n": name},
        ).result_rows
    finally:
        client.close()
    return [tuple(r) for r in rows]


# --- one elector ----------------------------------------------------------------------------


def test_table_store_an_unheld_lease_is_claimed_renewed_and_released(
    make_elector: Factory, engine_url: str, lease_name: str
) -> None:
    elector, _ = make_elector()
    assert not elector.is_leader() and elector.term is None

    elector.start()
    _wait_for(elector.is_leader, "leadership")
    term = elector.term
    assert term is not None and term >= 1
    _wait_for(lambda: len(_rows(engine_url, lease_name)) >= 3, "renewals")
    elector.stop(release=True)

    assert not elector.is_leader() and elector.term is None
    rows = _rows(engine_url, lease_name)
    assert rows[0] == (term, 0, "claim", "candidate-000")
    renewals = [r for r in rows if r[2] == "renew"]
    assert len(renewals) >= 2
    assert [r[1] for r in renewals] == list(range(1, len(renewals) + 1))
    assert rows[-1] == (term, len(renewals) + 1, "release", "candidate-000")
    assert [(t.term, t.start < t.end) for t in elector.tenures] == [(term, True)]


# --- contention -----------------------------------------------------------------------------


def test_contenders_never_lead_at_the_same_time_over_many_changes(make_elector: Factory) -> None:
    """Three contenders; the leader is, in turn, stopped cleanly, crashed (no release) or
    stalled past its deadline, and replaced by a fresh contender each time. Leadership
    intervals of all of them must never overlap, and terms only grow."""
    clients: dict[str, _Stallable] = {}

    def contender() -> LeaderElector:
        elector, client = make_elector()
        clients[elector.holder] = client
        return elector

    live = [contender() for _ in range(3)]
    everyone: list[LeaderElector] = list(live)
    for elector in live:
        elector.start()
    stalled: list[tuple[LeaderElector, Any]] = []
    rounds = 9
    for round_ in range(rounds):
        leader = _leader(live)
        live.remove(leader)
        mode = ("release", "crash", "stall")[round_ % 3]
        if mode == "stall":
            client = clients[leader.holder]
            client.stall()
            stalled.append((leader, client))
            # The stalled leader gives up by its own clock, even while stuck in a call.
            _wait_for(lambda leader=leader: not leader.is_leader(), "stalled leader stepping down")
        else:
            leader.stop(release=(mode == "release"))
        fresh = contender()
        fresh.start()
        live.append(fresh)
        everyone.append(fresh)
    _leader(live)
    for _, client in stalled:
        client.resume()  # back from the stall: it must follow, not resume leading
    time.sleep(3 * FAST["renew_s"])
    _leader(live + [e for e, _ in stalled])

    tenures = [(e.holder, t) for e in everyone for t in e.tenures]
    assert len(tenures) >= rounds + 1
    assert _overlaps(tenures) == []
    terms = [t.term for _, t in sorted(tenures, key=lambda ht: ht[1].start)]
    assert terms == sorted(set(terms)), "a term was led twice or out of order"
    # The stalled leaders, back, did not lead again.
    for leader, _ in stalled:
        assert len(leader.tenures) == 1 and not leader.is_leader()


@pytest.mark.parametrize("release", [True, False], ids=["stopped", "crashed"])
def test_a_follower_takes_over_when_the_leader_goes(make_elector: Factory, release: bool) -> None:
    first, _ = make_elector()
    first.start()
    _wait_for(first.is_leader, "first leader")
    second, _ = make_elector()
    second.start()
    time.sleep(2 * FAST["lease_s"])  # long enough for a wrong takeover to have happened
    assert first.is_leader() and not second.is_leader()
    held = first.term
    assert held is not None

    first.stop(release=release)
    _wait_for(second.is_leader, "takeover")

    assert second.term is not None and second.term > held
    assert first.tenures[-1].end <= second.tenures[0].start


# --- the parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lease_s": 0}, "lease_s must be positive"),
        ({"renew_s": -1}, "renew_s must be positive"),
        ({"settle_s": 0}, "settle_s must be positive"),
        ({"lease_s": 1.0, "renew_s": 0.5, "settle_s": 0.3}, r"lease_s \(1.0\) must exceed"),
        ({"name": ""}, "name must not be empty"),
    ],
    ids=["lease", "renew", "settle", "margin", "name"],
)
def test_unsafe_or_empty_parameters_are_refused_naming_them(
    overrides: dict[str, Any], message: str
) -> None:
    values: dict[str, Any] = {**FAST, "name": "worker"}
    values.update(overrides)
    name = values.pop("name")
    with pytest.raises(ValueError, match=message):
        LeaderElector(TableStore(object()), name, **values)


def test_a_table_lease_on_a_cluster_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="leader_store 'table' works on one ClickHouse server"):
        Settings(cluster="prod", leader_store="table")
    assert Settings(cluster="prod").resolved_leader_store == "keeper"
    assert Settings().resolved_leader_store == "table"


@pytest.mark.parametrize("cluster", [None, "tracehouse", "ch-prod.eu_1"])
def test_lease_table_ddl_parses(engine_url: str, cluster: str | None) -> None:
    client = connect(engine_url)
    try:

        def formatted(sql: str) -> str:
            return str(
                client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).first_row[0]
            )

        table = formatted(CREATE_LEASES_SQL)
        keeper = formatted(keeper_table_sql(cluster, "otel's"))
    finally:
        client.close()
    assert table.startswith("CREATE TABLE IF NOT EXISTS tracehouse_leases\n")
    assert "ENGINE = MergeTree" in table
    assert keeper.startswith("CREATE TABLE IF NOT EXISTS tracehouse_leases_keeper")
    assert "ENGINE = KeeperMap('/tracehouse/otel\\'s/leases')" in keeper
    assert ("ON CLUSTER" in keeper) == (cluster is not None)


# --- the worker role ------------------------------------------------------------------------


class _RecordingJob:
    """A worker job that records when it ran, on the monotonic clock."""

    def __init__(self, log: list[tuple[str, str, float]], owner: str) -> None:
        self._log = log
        self._owner = owner

    def start(self) -> None:
        self._log.append((self._owner, "start", time.monotonic()))

    def stop(self, grace_s: float) -> None:
        self._log.append((self._owner, "stop", time.monotonic()))


def test_gate_builds_fresh_jobs_for_each_leadership_and_stops_them_when_it_ends(
    make_elector: Factory,
) -> None:
    log: list[tuple[str, str, float]] = []
    elector, client = make_elector()
    gate = LeaderGate(elector, [lambda: _RecordingJob(log, "a")], grace_s=1.0, tick_s=0.02)
    elector.start()
    gate.start()
    _wait_for(lambda: len(gate.jobs) == 1, "jobs started")
    first_job = gate.jobs[0]

    client.stall()  # renewals stop: the lease runs out, the gate stops the job
    _wait_for(lambda: gate.jobs == [], "jobs stopped")
    assert [event for _, event, _ in log] == ["start", "stop"]
    assert log[1][2] >= elector.tenures[0].end

    client.resume()  # it may win again (no one else contends): with a new job
    _wait_for(lambda: len(gate.jobs) == 1, "jobs restarted")
    assert gate.jobs[0] is not first_job
    gate.stop()
    assert gate.jobs == []
    assert [event for _, event, _ in log] == ["start", "stop", "start", "stop"]


def test_two_worker_processes_run_the_jobs_one_at_a_time(make_server: ServerFactory) -> None:
    timing = {
        "leader_election": True,
        "leader_lease_s": FAST["lease_s"],
        "leader_renew_s": FAST["renew_s"],
        "leader_settle_s": FAST["settle_s"],
    }
    first = make_server(roles=["worker"], **timing)
    second = make_server(roles=["worker"], **timing)

    def running() -> list[Any]:
        return [app for app in (first, second) if app.edges is not None]

    _wait_for(lambda: len(running()) == 1, "one worker running the jobs")
    time.sleep(2 * FAST["lease_s"])
    (leader,) = running()
    follower = second if leader is first else first
    # Both jobs of the worker role (service graph and alert evaluation) run on the leader only.
    assert leader.edges is not None and leader.alerting is not None
    assert follower.edges is None and follower.alerting is None
    assert follower.leader is not None and not follower.leader.is_leader()

    leader.stop()
    _wait_for(
        lambda: follower.edges is not None and follower.alerting is not None,
        "the other worker taking over",
    )
    assert leader.edges is None and leader.alerting is None


# --- the KeeperMap store, over a real ZooKeeper ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _zookeeper_status(port: int) -> dict[str, str]:
    """The `srvr` four-letter command's answer as a dict ({} while it does not answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"srvr")
            answer = sock.recv(4096).decode()
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in answer.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[int]:
    """A standalone ZooKeeper on loopback (Debian's zookeeper package; `.ci/run` installs
    it): ClickHouse speaks the same protocol to it as to ClickHouse Keeper."""
    assert ZOOKEEPER_JAR.is_file(), (
        f"{ZOOKEEPER_JAR} missing: install Debian's zookeeper package (.ci/run does)"
    )
    port = _free_port()
    data = tmp_path / "zookeeper"
    data.mkdir()
    server = subprocess.Popen(
        [
            "java",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            str(ZOOKEEPER_JAR),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(port),
            str(data),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(
            lambda: _zookeeper_status(port).get("Mode") == "standalone", "ZooKeeper answering"
        )
        yield port
    finally:
        server.terminate()
        server.wait(10)


def test_the_same_protocol_runs_on_keepermap_over_zookeeper(zookeeper: int, tmp_path: Path) -> None:
    """The store-independent tests above, again, on the KeeperMap store: chDB configured with
    a ZooKeeper and keeper_map_path_prefix, in a child pytest (one chDB engine per process)."""
    assert STORE == "table", "the KeeperMap run starts from the table run only"
    config = tmp_path / "clickhouse.xml"
    config.write_text(
        "<clickhouse>\n"
        "  <keeper_map_path_prefix>/keeper_map_tables</keeper_map_path_prefix>\n"
        f"  <zookeeper><node><host>127.0.0.1</host><port>{zookeeper}</port></node>"
        "</zookeeper>\n"
        "</clickhouse>\n"
    )
    engine = f"{tmp_path / 'engine'}?config-file={config}"
    env = {
        **os.environ,
        "TRACEHOUSE_TEST_LEASE_STORE": "keeper",
        "TRACEHOUSE_TEST_KEEPER_ENGINE": engine,
    }
    nodes_before = int(_zookeeper_status(zookeeper)["Node count"])
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__).relative_to(ROOT)),
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            STORE_INDEPENDENT,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert summary.startswith("4 passed"), summary
    # They ran on KeeperMap: its table and lease rows are znodes in this ZooKeeper now.
    assert int(_zookeeper_status(zookeeper)["Node count"]) >= nodes_before + 5
