"""Leader election over ClickHouse: the worker role's jobs run in one process at a time.

A lease is a series of rows in ``tracehouse_leases``: candidates *claim* a term, the holder
*renews* it, and a stopping holder *releases* it. ClickHouse has no compare-and-swap on
MergeTree tables, so the protocol relies only on what a single ClickHouse server (or, in
cluster mode, quorum inserts read with sequential consistency) does guarantee — a row whose
``INSERT`` has returned is seen by every later ``SELECT`` — plus bounded timing, checked
where it is measured. The protocol and its safety argument are in
``docs/decisions/0012-leader-election.md``; in short:

- **Claim** (Fischer's mutual exclusion, with rows): a follower that has seen the latest term
  unchanged for ``lease_s`` (or released) re-reads it, and if it is still the same inserts a
  claim for the next term. If the re-read and the insert together took longer than
  ``settle_s / 2`` it abstains. It waits ``settle_s``, then reads the term's claims: every
  candidate that claimed in time sees the same claims, and the smallest holder id wins.
- **Lease**: the winner leads until ``lease_start + lease_s - settle_s`` on its own monotonic
  clock, where ``lease_start`` is when it *began* the read before its claim (renewals: when
  it began the renewal insert). Every other process measures ``lease_s`` from when it *saw*
  the latest row, which is later; the ``settle_s`` margin covers clock-rate differences and
  stopping the jobs.
- **Fencing by term**: terms only grow; a holder that sees a higher term, a release, or its
  deadline pass stops leading at once, and never resumes without winning a new term.

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
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

LEASES_TABLE = "tracehouse_leases"

# Coordination rows, not telemetry: created by the elector itself (like the migrations
# table by the migrator) because the engine depends on the deployment, see decision 0012.
# Rows older than a week expire; an idle lease table then starts again at term 1.
_CREATE_LEASES = Template(
    """CREATE TABLE IF NOT EXISTS tracehouse_leases $on_cluster (
    Name LowCardinality(String),
    Term UInt64,
    Seq UInt64,
    Kind Enum8('claim' = 1, 'renew' = 2, 'release' = 3),
    Holder String,
    At DateTime64(3) DEFAULT now64(3)
) ENGINE = $engine
ORDER BY (Name, Term, Seq, Holder)
TTL toDateTime(At) + toIntervalDay(7)"""
)
# Cluster mode: one replica set across every node (no {shard} in the path), so any node
# the URL reaches holds the whole lease; inserts wait for a quorum, reads need the latest.
_CLUSTER_ENGINE = (
    "ReplicatedMergeTree('/clickhouse/tracehouse/{database}/tracehouse_leases', '{replica}')"
)
_CLUSTER_INSERT_SETTINGS = {"insert_quorum": "auto", "insert_quorum_parallel": 0}
_CLUSTER_SELECT_SETTINGS = {"select_sequential_consistency": 1}

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

LEADER = Gauge("tracehouse_worker_leader", "1 while this process holds the lease", ["lease"])
TERM = Gauge(
    "tracehouse_worker_leader_term", "Latest term of the lease this process saw", ["lease"]
)
TRANSITIONS = Counter(
    "tracehouse_worker_leader_transitions_total",
    "Leadership changes of this process (acquired, lost, released)",
    ["lease", "event"],
)


def create_table_sql(cluster: str | None) -> str:
    """The DDL of the lease table, for one server or ``ON CLUSTER``."""
    if cluster is None:
        return _CREATE_LEASES.substitute(on_cluster="", engine="MergeTree")
    quoted = "`" + cluster.replace("\\", "\\\\").replace("`", "\\`") + "`"
    return _CREATE_LEASES.substitute(on_cluster=f"ON CLUSTER {quoted}", engine=_CLUSTER_ENGINE)


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


@dataclass
class Tenure:
    """One period of leadership: ``start``..``end`` on this process's monotonic clock.
    While it lasts, ``end`` is the current deadline."""

    term: int
    start: float
    end: float


class LeaderElector:
    """Holds or follows the lease ``name`` in a daemon thread; :meth:`is_leader` tells.

    ``lease_s``: how long a lease lasts without renewal; ``renew_s``: how often the holder
    renews (and followers look); ``settle_s``: the claim settle delay, also the margin by
    which a holder steps down before anyone else may take over. They must satisfy
    ``renew_s + 2 * settle_s < lease_s``.
    """

    def __init__(
        self,
        client: Any,
        name: str = "worker",
        *,
        lease_s: float = 15.0,
        renew_s: float = 5.0,
        settle_s: float = 2.0,
        cluster: str | None = None,
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
        self._client = client
        self.name = name
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.settle_s = settle_s
        # A claim whose re-read and insert took longer than this abstains (see the module doc).
        self.claim_limit_s = settle_s / 2
        self.cluster = cluster
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

    def ensure_table(self) -> None:
        """Create the lease table if it does not exist (idempotent)."""
        self._client.command(create_table_sql(self.cluster))

    def start(self) -> None:
        """Create the table and start following (and, when possible, taking) the lease."""
        self.ensure_table()
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
                self._insert(term, seq + 1, "release")
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
        """The latest term, and the monotonic time the read returned (not before any row it
        saw was inserted)."""
        settings = _CLUSTER_SELECT_SETTINGS if self.cluster else None
        rows = self._client.query(
            LATEST_TERM_SQL, parameters={"name": self.name}, settings=settings
        ).result_rows
        returned = self._clock()
        if not rows:
            return LeaseState(0, 0, False, ()), returned
        term = int(rows[0][0])
        state = LeaseState(
            term=term,
            seq=max(int(r[1]) for r in rows),
            released=any(r[2] == "release" for r in rows),
            claimants=tuple(sorted(str(r[3]) for r in rows if r[2] == "claim")),
        )
        TERM.labels(self.name).set(term)
        return state, returned

    def _insert(self, term: int, seq: int, kind: str) -> None:
        self._client.command(
            INSERT_ROW_SQL,
            parameters={
                "name": self.name,
                "term": term,
                "seq": seq,
                "kind": kind,
                "holder": self.holder,
            },
            settings=_CLUSTER_INSERT_SETTINGS if self.cluster else None,
        )

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
        self._insert(term, 0, "claim")
        inserted = self._clock()
        if inserted - started > self.claim_limit_s:
            log.info(
                "lease %s: claim of term %d took %.3f s (> %.3f s): abstaining",
                self.name,
                term,
                inserted - started,
                self.claim_limit_s,
            )
            return self.renew_s
        if self._stop.wait(max(0.0, inserted + self.settle_s - self._clock())):
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
            return 0.0  # renew at once: the winner's own row
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
        self._insert(state.term, seq, "renew")
        returned = self._clock()
        with self._lock:
            if self._term != term:
                return 0.0
            if returned >= self._deadline:
                overdue = True
            else:
                overdue = False
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
