"""Leader election over ClickHouse: the worker role's jobs run in one process at a time.

Two stores hold the lease, with one elector on top (the protocol and its safety argument:
``docs/decisions/0012-leader-election.md``):

- :class:`TableStore` (one ClickHouse server, and the embedded engine): a series of rows in
  the MergeTree table ``tracehouse_leases``. MergeTree has no compare-and-swap, so a claim is
  Fischer's mutual exclusion with rows: a follower that has seen the latest term unchanged for
  ``lease_s`` (or released) re-reads it and, if it is still the same, inserts a claim for the
  next term; if re-read and insert took longer than ``settle_s / 2`` it abstains; it waits
  ``settle_s`` and reads the term's claims — every candidate that claimed in time sees the
  same claims, and the smallest holder id wins. It relies on what a single server guarantees:
  a row whose ``INSERT`` has returned is seen by every later ``SELECT``.
- :class:`KeeperStore` (a cluster; any server with Keeper and ``keeper_map_path_prefix``): one
  row per lease in a ``KeeperMap`` table written in ``keeper_map_strict_mode``, where an
  ``INSERT`` of an existing key fails and an ``ALTER … UPDATE`` is a versioned write: a claim
  is a compare-and-swap of (term, sequence) and a read-back says who won.

Either way the winner leads until ``lease_start + lease_s - settle_s`` on its own monotonic
clock, where ``lease_start`` is when it *began* the read before its claim (renewals: when it
began the renewal write), while every other process measures ``lease_s`` from when it *saw*
the latest state, which is later; the ``settle_s`` margin covers clock-rate differences and
stopping the jobs. Terms only grow (fencing): a holder that sees a higher term, a release,
or its deadline pass stops leading at once and never resumes without winning a new term.

:class:`LeaderGate` starts the worker's jobs when this process becomes the leader and stops
them when it stops being one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import Template
from typing import Any, Literal, Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

LEASES_TABLE = "tracehouse_leases"
KEEPER_TABLE = "tracehouse_leases_keeper"
StoreKind = Literal["table", "keeper"]

# Coordination rows, not telemetry: created by the elector itself (like the migrations
# table by the migrator) because which table depends on the deployment, see decision 0012.
# Rows older than a week expire; an idle lease table then starts again at term 1.
CREATE_LEASES_SQL = """CREATE TABLE IF NOT EXISTS tracehouse_leases (
    Name LowCardinality(String),
    Term UInt64,
    Seq UInt64,
    Kind Enum8('claim' = 1, 'renew' = 2, 'release' = 3),
    Holder String,
    At DateTime64(3) DEFAULT now64(3)
) ENGINE = MergeTree
ORDER BY (Name, Term, Seq, Holder)
TTL toDateTime(At) + toIntervalDay(7)"""

# Every row of the latest term of one lease (no rows: never held).
LATEST_TERM_SQL = """
SELECT Term, Seq, toString(Kind) AS Kind, Holder
FROM tracehouse_leases
WHERE Name = {name:String}
  AND Term = (SELECT max(Term) FROM tracehouse_leases WHERE Name = {name:String})
ORDER BY Seq, Holder
"""

# INSERT … SELECT: never an asynchronous insert, so visible to every reader once it returns.
INSERT_ROW_SQL = """
INSERT INTO tracehouse_leases (Name, Term, Seq, Kind, Holder)
SELECT {name:String}, {term:UInt64}, {seq:UInt64}, {kind:String}, {holder:String}
"""

# One row per lease, in Keeper. The path is under the server's keeper_map_path_prefix and
# names the database, so two tracehouse databases on one cluster have separate leases.
_CREATE_KEEPER = Template(
    """CREATE TABLE IF NOT EXISTS tracehouse_leases_keeper $on_cluster (
    Name String,
    Term UInt64,
    Seq UInt64,
    Holder String,
    Released UInt8
) ENGINE = KeeperMap($path)
PRIMARY KEY Name"""
)
KEEPER_READ_SQL = """
SELECT Term, Seq, Holder, Released FROM tracehouse_leases_keeper WHERE Name = {name:String}
"""
# The first term: fails in strict mode if the key exists.
KEEPER_INSERT_SQL = """
INSERT INTO tracehouse_leases_keeper (Name, Term, Seq, Holder, Released)
SELECT {name:String}, 1, 0, {holder:String}, 0
"""
# Compare-and-swap: changes the row only if it is still the state the caller read; strict
# mode makes the read and the write one versioned Keeper operation.
KEEPER_CLAIM_SQL = """
ALTER TABLE tracehouse_leases_keeper
UPDATE Term = {term:UInt64}, Seq = 0, Holder = {holder:String}, Released = 0
WHERE Name = {name:String} AND Term = {seen_term:UInt64} AND Seq = {seen_seq:UInt64}
  AND Holder = {seen_holder:String} AND Released = {seen_released:UInt8}
"""
KEEPER_RENEW_SQL = """
ALTER TABLE tracehouse_leases_keeper
UPDATE Seq = {seq:UInt64}
WHERE Name = {name:String} AND Term = {term:UInt64} AND Holder = {holder:String}
  AND Seq = {seen_seq:UInt64} AND Released = 0
"""
KEEPER_RELEASE_SQL = """
ALTER TABLE tracehouse_leases_keeper
UPDATE Released = 1, Seq = {seq:UInt64}
WHERE Name = {name:String} AND Term = {term:UInt64} AND Holder = {holder:String}
"""
_STRICT = {"keeper_map_strict_mode": 1}

LEADER = Gauge("tracehouse_worker_leader", "1 while this process holds the lease", ["lease"])
TERM = Gauge(
    "tracehouse_worker_leader_term", "Latest term of the lease this process saw", ["lease"]
)
TRANSITIONS = Counter(
    "tracehouse_worker_leader_transitions_total",
    "Leadership changes of this process (acquired, lost, released)",
    ["lease", "event"],
)


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def keeper_table_sql(cluster: str | None, database: str) -> str:
    """The DDL of the KeeperMap lease table, for one server or ``ON CLUSTER``."""
    on_cluster = f"ON CLUSTER {_quote_identifier(cluster)}" if cluster else ""
    path = _quote_string(f"/tracehouse/{database}/leases")
    return _CREATE_KEEPER.substitute(on_cluster=on_cluster, path=path)


def default_holder_id() -> str:
    """host-pid-random: unique per elector, readable in the table."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseState:
    """The latest term of a lease as one read saw it."""

    term: int  # 0: never held
    seq: int  # highest sequence number of the term (claims are 0, renewals count up)
    released: bool
    claimants: tuple[str, ...]  # holders that claimed the term, sorted

    @property
    def holder(self) -> str | None:
        """The term's winner: the smallest claimant id (the same for every reader)."""
        return self.claimants[0] if self.claimants else None


NEVER_HELD = LeaseState(0, 0, False, ())


class LeaseStore(Protocol):
    """Where a lease lives; :class:`LeaderElector` runs the same timing over either."""

    #: Claims race (no compare-and-swap): the claimer must settle before reading the winner.
    settles: bool

    def ensure(self) -> None:
        """Create the table if needed (idempotent)."""

    def read(self, name: str) -> LeaseState:
        """The lease's latest state."""

    def claim(self, name: str, seen: LeaseState, holder: str) -> None:
        """Try to take term ``seen.term + 1``; who won is what a later :meth:`read` says."""

    def renew(self, name: str, seen: LeaseState, seq: int, holder: str) -> bool:
        """Record renewal ``seq`` of the held term; False when the lease was not ours."""

    def release(self, name: str, term: int, seq: int, holder: str) -> None:
        """Hand the term back."""


class TableStore:
    """The lease as rows of a MergeTree table, for one ClickHouse server (see module doc)."""

    settles = True

    def __init__(self, client: Any) -> None:
        self._client = client

    def ensure(self) -> None:
        self._client.command(CREATE_LEASES_SQL)

    def read(self, name: str) -> LeaseState:
        rows = self._client.query(LATEST_TERM_SQL, parameters={"name": name}).result_rows
        if not rows:
            return NEVER_HELD
        return LeaseState(
            term=int(rows[0][0]),
            seq=max(int(r[1]) for r in rows),
            released=any(r[2] == "release" for r in rows),
            claimants=tuple(sorted(str(r[3]) for r in rows if r[2] == "claim")),
        )

    def _insert(self, name: str, term: int, seq: int, kind: str, holder: str) -> None:
        self._client.command(
            INSERT_ROW_SQL,
            parameters={"name": name, "term": term, "seq": seq, "kind": kind, "holder": holder},
        )

    def claim(self, name: str, seen: LeaseState, holder: str) -> None:
        self._insert(name, seen.term + 1, 0, "claim", holder)

    def renew(self, name: str, seen: LeaseState, seq: int, holder: str) -> bool:
        self._insert(name, seen.term, seq, "renew", holder)
        return True

    def release(self, name: str, term: int, seq: int, holder: str) -> None:
        self._insert(name, term, seq, "release", holder)


class KeeperStore:
    """The lease as one row of a ``KeeperMap`` table, written with compare-and-swap."""

    settles = False

    def __init__(self, client: Any, cluster: str | None = None) -> None:
        self._client = client
        self._cluster = cluster

    def ensure(self) -> None:
        database = str(self._client.command("SELECT currentDatabase()"))
        self._client.command(keeper_table_sql(self._cluster, database))

    def read(self, name: str) -> LeaseState:
        rows = self._client.query(KEEPER_READ_SQL, parameters={"name": name}).result_rows
        if not rows:
            return NEVER_HELD
        ((term, seq, holder, released),) = rows
        return LeaseState(int(term), int(seq), bool(released), (str(holder),))

    def claim(self, name: str, seen: LeaseState, holder: str) -> None:
        try:
            if seen.term == 0:
                self._client.command(
                    KEEPER_INSERT_SQL, parameters={"name": name, "holder": holder}, settings=_STRICT
                )
                return
            self._client.command(
                KEEPER_CLAIM_SQL,
                parameters={
                    "name": name,
                    "term": seen.term + 1,
                    "holder": holder,
                    "seen_term": seen.term,
                    "seen_seq": seen.seq,
                    "seen_holder": seen.holder or "",
                    "seen_released": int(seen.released),
                },
                settings=_STRICT,
            )
        except Exception as exc:  # lost the race (key exists, version changed): read says so
            log.debug("lease %s: claim refused: %s", name, exc)

    def renew(self, name: str, seen: LeaseState, seq: int, holder: str) -> bool:
        self._client.command(
            KEEPER_RENEW_SQL,
            parameters={
                "name": name,
                "term": seen.term,
                "holder": holder,
                "seq": seq,
                "seen_seq": seen.seq,
            },
            settings=_STRICT,
        )
        after = self.read(name)
        return (after.term, after.seq, after.holder, after.released) == (
            seen.term,
            seq,
            holder,
            False,
        )

    def release(self, name: str, term: int, seq: int, holder: str) -> None:
        self._client.command(
            KEEPER_RELEASE_SQL,
            parameters={"name": name, "term": term, "seq": seq, "holder": holder},
            settings=_STRICT,
        )


def make_store(kind: StoreKind, client: Any, cluster: str | None = None) -> LeaseStore:
    """The store of ``kind``: ``table`` for one server, ``keeper`` for a cluster."""
    if kind == "keeper":
        return KeeperStore(client, cluster)
    if cluster:
        raise ValueError(
            "leader_store 'table' works on one ClickHouse server only; with a cluster use "
            "'keeper' (KeeperMap, see docs/decisions/0012-leader-election.md)"
        )
    return TableStore(client)


@dataclass
class Tenure:
    """One period of leadership: ``start``..``end`` on this process's monotonic clock.
    While it lasts, ``end`` is the current deadline."""

    term: int
    start: float
    end: float


class LeaderElector:
    """Holds or follows the lease ``name`` in ``store``, in a daemon thread;
    :meth:`is_leader` tells.

    ``lease_s``: how long a lease lasts without renewal; ``renew_s``: how often the holder
    renews (and followers look); ``settle_s``: the claim settle delay, also the margin by
    which a holder steps down before anyone else may take over. They must satisfy
    ``renew_s + 2 * settle_s < lease_s``.
    """

    def __init__(
        self,
        store: LeaseStore,
        name: str = "worker",
        *,
        lease_s: float = 15.0,
        renew_s: float = 5.0,
        settle_s: float = 2.0,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for param, value in (("lease_s", lease_s), ("renew_s", renew_s), ("settle_s", settle_s)):
            if not value > 0:
                raise ValueError(f"{param} must be positive, got {value}")
        if not renew_s + 2 * settle_s < lease_s:
            raise ValueError(
                f"lease_s ({lease_s}) must exceed renew_s + 2 * settle_s "
                f"({renew_s} + 2 * {settle_s}): the holder renews and steps down "
                "settle_s before the others may take over"
            )
        if not name:
            raise ValueError("name must not be empty")
        self.store = store
        self.name = name
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.settle_s = settle_s
        # A racing claim whose re-read and insert took longer than this abstains.
        self.claim_limit_s = settle_s / 2
        self.holder = holder or default_holder_id()
        self._clock = clock
        self._lock = threading.Lock()
        self._term: int | None = None  # the term held, None when following
        self._deadline = 0.0
        self._seq = 0
        self._observed: LeaseState | None = None
        self._observed_at = 0.0
        self.tenures: list[Tenure] = []
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the table and start following (and, when possible, taking) the lease."""
        self.store.ensure()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True, timeout_s: float = 10.0) -> None:
        """Stop the thread; then, if still leading and ``release``, hand the lease back at once
        (the caller has stopped the jobs first). ``release=False`` leaves it to expire, as a
        crash would. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            stuck = self._thread.is_alive()
            self._thread = None
            if stuck:
                log.warning("lease %s: thread still busy at stop; the lease will expire", self.name)
                self._lose("stopped")
                return
        with self._lock:
            term, seq = self._term, self._seq
        self._lose("stopped")
        if release and term is not None:
            try:
                self.store.release(self.name, term, seq + 1, self.holder)
                TRANSITIONS.labels(self.name, "released").inc()
            except Exception as exc:
                log.warning("lease %s: release failed (%s); it will expire", self.name, exc)

    def is_leader(self) -> bool:
        """True while this process holds the lease and its deadline has not passed."""
        with self._lock:
            return self._term is not None and self._clock() < self._deadline

    @property
    def term(self) -> int | None:
        """The term held (a fencing token that only grows), or None when not leading."""
        with self._lock:
            if self._term is not None and self._clock() < self._deadline:
                return self._term
            return None

    def step(self) -> float:
        """One round of the protocol; returns how long to wait before the next one."""
        with self._lock:
            leading = self._term is not None
            overdue = leading and self._clock() >= self._deadline
        if overdue:
            self._lose("deadline passed before a renewal succeeded")
            return 0.0
        return self._renew() if leading else self._follow()

    # -- protocol -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step()
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("lease %s: %s (retrying)", self.name, self.last_error)
                wait = self.renew_s / 2
            self._stop.wait(wait)

    def _read(self) -> tuple[LeaseState, float]:
        """The latest state, and the monotonic time the read returned (not before anything
        it saw was written)."""
        state = self.store.read(self.name)
        returned = self._clock()
        TERM.labels(self.name).set(state.term)
        return state, returned

    def _observe(self, state: LeaseState, seen_at: float) -> None:
        if state != self._observed:
            self._observed = state
            self._observed_at = seen_at

    def _follow(self) -> float:
        state, seen_at = self._read()
        self._observe(state, seen_at)
        expires_at = self._observed_at + self.lease_s
        if state.term > 0 and not state.released and self._clock() < expires_at:
            return min(self.renew_s, max(0.0, expires_at - self._clock()))
        return self._claim(state)

    def _claim(self, expired: LeaseState) -> float:
        started = self._clock()
        state, seen_at = self._read()
        if state != expired:  # someone moved first
            self._observe(state, seen_at)
            return 0.0
        term = state.term + 1
        self.store.claim(self.name, state, self.holder)
        if self.store.settles:
            claimed = self._clock()
            if claimed - started > self.claim_limit_s:
                log.info(
                    "lease %s: claim of term %d took %.3f s (> %.3f s): abstaining",
                    self.name,
                    term,
                    claimed - started,
                    self.claim_limit_s,
                )
                return self.renew_s
            if self._stop.wait(max(0.0, claimed + self.settle_s - self._clock())):
                return 0.0
        decided, seen_at = self._read()
        self._observe(decided, seen_at)
        deadline = started + self.lease_s - self.settle_s
        if (
            decided.term == term
            and decided.holder == self.holder
            and not decided.released
            and self._clock() < deadline
        ):
            with self._lock:
                self._term, self._deadline, self._seq = term, deadline, decided.seq
                self.tenures.append(Tenure(term, self._clock(), deadline))
            LEADER.labels(self.name).set(1)
            TRANSITIONS.labels(self.name, "acquired").inc()
            log.info("lease %s: leading, term %d (%s)", self.name, term, self.holder)
            return 0.0  # renew at once
        return self.renew_s

    def _renew(self) -> float:
        with self._lock:
            term = self._term
        state, _ = self._read()
        if state.term != term or state.released or state.holder != self.holder:
            self._lose(f"the latest term is {state.term}, held by {state.holder}")
            return 0.0
        seq = max(state.seq, self._seq) + 1
        sent = self._clock()
        renewed = self.store.renew(self.name, state, seq, self.holder)
        returned = self._clock()
        if not renewed:
            self._lose("the renewal did not apply")
            return 0.0
        with self._lock:
            if self._term != term:
                return 0.0
            overdue = returned >= self._deadline
            if not overdue:
                self._seq = seq
                self._deadline = sent + self.lease_s - self.settle_s
                self.tenures[-1].end = self._deadline
        if overdue:
            self._lose("a renewal returned after the deadline")
            return 0.0
        return max(0.0, self.renew_s - (returned - sent))

    def _lose(self, reason: str) -> None:
        with self._lock:
            if self._term is None:
                return
            term = self._term
            self.tenures[-1].end = min(self._clock(), self._deadline)
            self._term = None
            self._deadline = 0.0
            self._seq = 0
        LEADER.labels(self.name).set(0)
        TRANSITIONS.labels(self.name, "lost").inc()
        log.info("lease %s: no longer leading term %d: %s", self.name, term, reason)


class WorkerJob(Protocol):
    """A job of the worker role (the service-graph builder, the alert evaluator, …)."""

    def start(self) -> None: ...

    def stop(self, grace_s: float, /) -> None: ...


JobFactory = Callable[[], WorkerJob]


class Leadership(Protocol):
    """What :class:`LeaderGate` needs of an elector."""

    def is_leader(self) -> bool: ...


class AlwaysLeader:
    """No election: for one process that owns its data (the embedded engine)."""

    def is_leader(self) -> bool:
        return True


class LeaderGate:
    """Runs fresh jobs from ``factories`` while ``elector.is_leader()``, stops them when it
    is not (checked every ``tick_s``; a job is built anew for each leadership, since a stopped
    job may not restart)."""

    def __init__(
        self,
        elector: Leadership,
        factories: Sequence[JobFactory],
        *,
        grace_s: float = 10.0,
        tick_s: float = 0.1,
    ) -> None:
        self.elector = elector
        self._factories = list(factories)
        self.grace_s = grace_s
        self.tick_s = tick_s
        self._jobs: list[WorkerJob] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def jobs(self) -> list[WorkerJob]:
        """The jobs running now (empty while not leading)."""
        with self._lock:
            return list(self._jobs)

    def start(self) -> None:
        """Apply the current leadership at once, then follow it in a daemon thread."""
        self._apply()
        self._thread = threading.Thread(target=self._loop, name="leader-gate", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float | None = None) -> None:
        """Stop following and stop the jobs (each within ``grace_s``, by default the
        constructor's). Idempotent."""
        if grace_s is not None:
            self.grace_s = grace_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.grace_s * max(1, len(self._factories)) + 5)
            self._thread = None
        self._stop_jobs()

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self._apply()
            except Exception:
                log.exception("worker jobs: start or stop failed")

    def _apply(self) -> None:
        leading = self.elector.is_leader()
        with self._lock:
            running = bool(self._jobs)
        if leading and not running:
            self._start_jobs()
        elif running and not leading:
            self._stop_jobs()

    def _start_jobs(self) -> None:
        started: list[WorkerJob] = []
        try:
            for make in self._factories:
                job = make()
                job.start()
                started.append(job)
        finally:
            with self._lock:
                self._jobs = started
        log.info("worker jobs started: %d", len(started))

    def _stop_jobs(self) -> None:
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in reversed(jobs):
            try:
                job.stop(self.grace_s)
            except Exception:
                log.exception("worker job %r failed to stop", job)
        if jobs:
            log.info("worker jobs stopped: %d", len(jobs))
