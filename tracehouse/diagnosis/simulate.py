"""The evaluation harness of the diagnosis: a simulated shop, one injected fault per scenario.

The shop: 18 services and 6 databases (PostgreSQL, MySQL, Redis), entered through
``frontend`` with two operations; calls fan out (``catalog`` and ``recommendation`` in
parallel, ``payment`` and ``shipping`` in parallel, ``geo`` and ``tax`` in parallel) and go
five services deep (frontend → checkout → payment → fraud → risk-score → risk-db). Every
service runs three instances (``service.instance.id``, ``host.name``); own time, network and
statements have log-normal durations; 0.2 % of database calls fail and the error travels up.

A scenario writes a baseline window and the window after it (5 minutes each by default,
``traces`` traces per window) straight into ``otel_traces`` (so the rollup views fill), runs
the edge builder over both, asks :func:`~tracehouse.diagnosis.api.diagnose` for ``frontend``
and reports where the true cause ranks. Faults, injected in the window only:

- ``own_code``: a service's own time grows;
- ``sql``: one statement of one database-calling service is slower;
- ``edge``: calls from one service to another take longer on the wire (the server does not
  see it);
- ``errors``: a leaf service (no service below it) fails a share of its calls;
- ``instance``: one of the three instances of a service is slow.

Every scenario names its services with a suffix of its own and has a time range of its own,
so scenarios share a database without seeing each other.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from tracehouse.diagnosis.api import DEFAULT_SAMPLE, Diagnosis, diagnose
from tracehouse.query._rollups import MinuteWindow
from tracehouse.topology import EdgeBuilder

FaultType = Literal["own_code", "sql", "edge", "errors", "instance"]
FAULT_TYPES: tuple[FaultType, ...] = ("own_code", "sql", "edge", "errors", "instance")
INSTANCES = 3
_MS = 1_000_000
_US = 1_000


@dataclass(frozen=True)
class Statement:
    """A database call: the database (peer name), its system, and a template whose ``{n}``
    and ``{m}`` are literals; ``table`` names it uniquely."""

    database: str
    system: str
    template: str
    median_ms: float
    table: str


@dataclass(frozen=True)
class Service:
    """Own time (median ms) and the steps of a call: each step a group of calls made in
    parallel — other services by name, or statements."""

    own_ms: float
    steps: tuple[tuple[str | Statement, ...], ...] = ()


def _sql(database: str, system: str, template: str, median_ms: float, table: str) -> Statement:
    return Statement(database, system, template, median_ms, table)


SHOP: dict[str, Service] = {
    "frontend": Service(8, (("auth",), ("catalog", "recommendation"), ("checkout",))),
    "auth": Service(3, (("session",),)),
    "session": Service(1, ((_sql("session-cache", "redis", "GET session:{n}", 0.6, "session"),),)),
    "catalog": Service(4, (("pricing",), ("inventory",))),
    "pricing": Service(
        3,
        (
            ("currency",),
            (
                _sql(
                    "pricing-db",
                    "postgresql",
                    "SELECT price, currency FROM prices WHERE sku = {n}",
                    2.0,
                    "prices",
                ),
            ),
        ),
    ),
    "currency": Service(2),
    "inventory": Service(
        3,
        (
            (
                _sql(
                    "inventory-db",
                    "mysql",
                    "SELECT qty FROM stock WHERE sku = {n} AND warehouse_id = {m}",
                    2.5,
                    "stock",
                ),
            ),
        ),
    ),
    "recommendation": Service(9, (("ml-model",),)),
    "ml-model": Service(14),
    "checkout": Service(5, (("cart",), ("payment", "shipping"))),
    "cart": Service(
        3,
        (
            (
                _sql(
                    "cart-db",
                    "postgresql",
                    "SELECT * FROM cart_items WHERE cart_id = {n}",
                    3.0,
                    "cart_items",
                ),
            ),
            (
                _sql(
                    "cart-db",
                    "postgresql",
                    "UPDATE carts SET updated_at = now() WHERE id = {n}",
                    1.5,
                    "carts",
                ),
            ),
        ),
    ),
    "payment": Service(6, (("fraud",), ("ledger",))),
    "fraud": Service(4, (("risk-score",),)),
    "risk-score": Service(
        7,
        (
            (
                _sql(
                    "risk-db",
                    "postgresql",
                    "SELECT score FROM risk WHERE customer_id = {n}",
                    4.0,
                    "risk",
                ),
            ),
        ),
    ),
    "ledger": Service(
        3,
        (
            (
                _sql(
                    "ledger-db",
                    "postgresql",
                    "INSERT INTO ledger (id, amount) VALUES ({n}, {m})",
                    2.0,
                    "ledger",
                ),
            ),
        ),
    ),
    "shipping": Service(4, (("geo", "tax"),)),
    "geo": Service(5),
    "tax": Service(3),
}
ENTRY = "frontend"
# frontend's operations: the name and the steps it takes of frontend's own.
ENTRY_OPERATIONS = (
    ("POST /checkout", SHOP["frontend"].steps),
    ("GET /product", (("catalog", "recommendation"),)),
)


def _service_calls() -> list[tuple[str, str]]:
    return [
        (name, step)
        for name, service in SHOP.items()
        for group in service.steps
        for step in group
        if isinstance(step, str)
    ]


def _statements() -> list[tuple[str, Statement]]:
    return [
        (name, step)
        for name, service in SHOP.items()
        for group in service.steps
        for step in group
        if isinstance(step, Statement)
    ]


LEAVES = tuple(
    name
    for name, service in SHOP.items()
    if not any(isinstance(step, str) for group in service.steps for step in group)
)


@dataclass(frozen=True)
class Fault:
    """The injected fault. ``service``: where it is; ``target``: the callee of an edge, the
    table of a statement, or the instance number; ``size``: extra ms, or the failing share."""

    type: FaultType
    service: str
    target: str = ""
    size: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """One simulated incident: a fault, the names' suffix, and where its windows lie."""

    fault: Fault
    seed: int
    window_start_s: int  # the window; the baseline is the same length just before
    window_s: int = 300
    traces: int = 200
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def name(self, service: str) -> str:
        return f"{service}-{self.suffix}"

    def instance(self, service: str, number: int) -> str:
        return f"{self.name(service)}-{number}"

    @property
    def window(self) -> MinuteWindow:
        start = dt.datetime.fromtimestamp(self.window_start_s, dt.UTC)
        return MinuteWindow(start, start + dt.timedelta(seconds=self.window_s), self.window_s)


def scenarios(count: int, seed: int = 1, traces: int = 200) -> list[Scenario]:
    """``count`` scenarios cycling through the fault types, targets drawn from ``seed``;
    their time ranges lie one after another, ending 20 minutes before now."""
    rng = random.Random(seed)
    calls, statements = _service_calls(), _statements()
    services = [s for s in SHOP if s != ENTRY]
    now_s = int(time.time()) // 60 * 60
    out = []
    for i in range(count):
        kind = FAULT_TYPES[i % len(FAULT_TYPES)]
        if kind == "own_code":
            fault = Fault(kind, rng.choice(services), size=rng.uniform(40, 120))
        elif kind == "sql":
            owner, statement = rng.choice(statements)
            fault = Fault(kind, owner, statement.table, size=rng.uniform(40, 150))
        elif kind == "edge":
            source, target = rng.choice(calls)
            fault = Fault(kind, source, target, size=rng.uniform(40, 120))
        elif kind == "errors":
            fault = Fault(kind, rng.choice(LEAVES), size=rng.uniform(0.15, 0.5))
        else:
            fault = Fault(
                kind, rng.choice(services), str(rng.randrange(INSTANCES)), rng.uniform(80, 200)
            )
        start = now_s - 20 * 60 - (i + 1) * 12 * 60
        out.append(Scenario(fault, seed * 1000 + i, start, traces=traces))
    return out


_COLUMNS = (
    "Timestamp",
    "TraceId",
    "SpanId",
    "ParentSpanId",
    "SpanName",
    "SpanKind",
    "ServiceName",
    "ResourceAttributes",
    "ScopeName",
    "SpanAttributes",
    "Duration",
    "StatusCode",
    "StatusMessage",
)


class _Writer:
    """Builds the rows of one window's traces."""

    def __init__(self, scenario: Scenario, rng: random.Random, faulty: bool) -> None:
        self.s = scenario
        self.rng = rng
        self.fault = scenario.fault if faulty else None
        self.rows: list[list[Any]] = []
        self.trace_id = ""

    def _lognormal(self, median_ms: float, sigma: float = 0.3) -> int:
        return round(median_ms * _MS * self.rng.lognormvariate(0, sigma) / _US) * _US

    def _id(self, size: int) -> str:
        return self.rng.getrandbits(size * 8).to_bytes(size, "big").hex()

    def _resource(self, service: str, instance: int) -> dict[str, str]:
        return {
            "host.name": f"node-{(zlib.crc32(service.encode()) + instance) % 7}-{self.s.suffix}",
            "service.instance.id": self.s.instance(service, instance),
            "service.name": self.s.name(service),
            "telemetry.sdk.language": "python",
        }

    def _row(
        self,
        start_ns: int,
        span_id: str,
        parent: str,
        name: str,
        kind: str,
        service: str,
        resource: dict[str, str],
        attributes: dict[str, str],
        duration_ns: int,
        failed: bool,
    ) -> None:
        self.rows.append(
            [
                dt.datetime.fromtimestamp(start_ns / 1e9, dt.UTC),
                self.trace_id,
                span_id,
                parent,
                name,
                kind,
                self.s.name(service),
                resource,
                "tracehouse.simulate",
                attributes,
                duration_ns,
                "Error" if failed else "Unset",
                "simulated failure" if failed else "",
            ]
        )

    def trace(self, start_ns: int, operation: str, steps: Any) -> None:
        self.trace_id = self._id(16)
        self._server(ENTRY, operation, start_ns, "", steps)

    def _server(
        self, service: str, operation: str, start_ns: int, parent: str, steps: Any = None
    ) -> tuple[int, bool]:
        """One server span of ``service`` and everything below it: (duration, failed)."""
        definition = SHOP[service]
        instance = self.rng.randrange(INSTANCES)
        resource = self._resource(service, instance)
        span_id = self._id(8)
        own = self._lognormal(definition.own_ms)
        fault = self.fault
        if self._slow_here(service, instance):
            assert fault is not None
            own += self._lognormal(fault.size, 0.15)
        cursor = start_ns + own // 2
        failed = False
        for group in steps if steps is not None else definition.steps:
            ends = []
            for step in group:
                begin = cursor + self._lognormal(0.05)
                if isinstance(step, Statement):
                    took, bad = self._statement(service, step, begin, span_id, resource)
                else:
                    took, bad = self._call(service, step, begin, span_id, resource)
                ends.append(begin + took)
                failed = failed or bad
            cursor = max(ends)
        if (
            fault is not None
            and fault.type == "errors"
            and fault.service == service
            and self.rng.random() < fault.size
        ):
            failed = True
        duration = cursor + (own - own // 2) - start_ns
        attributes = {"http.request.method": operation.split(" ")[0], "http.route": operation}
        self._row(
            start_ns,
            span_id,
            parent,
            operation,
            "Server",
            service,
            resource,
            attributes,
            duration,
            failed,
        )
        return duration, failed

    def _slow_here(self, service: str, instance: int) -> bool:
        """Whether the fault slows this service's own code on this instance."""
        fault = self.fault
        if fault is None or fault.service != service:
            return False
        return fault.type == "own_code" or (
            fault.type == "instance" and fault.target == str(instance)
        )

    def _call(
        self, caller: str, callee: str, start_ns: int, parent: str, resource: dict[str, str]
    ) -> tuple[int, bool]:
        span_id = self._id(8)
        out = self._lognormal(0.4)
        back = self._lognormal(0.4)
        fault = self.fault
        if (
            fault is not None
            and fault.type == "edge"
            and (caller, callee)
            == (
                fault.service,
                fault.target,
            )
        ):
            out += self._lognormal(fault.size, 0.15)
        operation = f"GET /{callee}"
        took, failed = self._server(callee, operation, start_ns + out, span_id)
        duration = out + took + back
        attributes = {
            "http.request.method": "GET",
            "server.address": self.s.name(callee),
            "url.full": f"http://{self.s.name(callee)}/{callee}",
        }
        self._row(
            start_ns,
            span_id,
            parent,
            operation,
            "Client",
            caller,
            resource,
            attributes,
            duration,
            failed,
        )
        return duration, failed

    def _statement(
        self,
        service: str,
        statement: Statement,
        start_ns: int,
        parent: str,
        resource: dict[str, str],
    ) -> tuple[int, bool]:
        duration = self._lognormal(statement.median_ms, 0.4)
        fault = self.fault
        if (
            fault is not None
            and fault.type == "sql"
            and (fault.service, fault.target) == (service, statement.table)
        ):
            duration += self._lognormal(fault.size, 0.15)
        failed = self.rng.random() < 0.002
        text = statement.template.format(
            n=self.rng.randrange(1, 100_000), m=self.rng.randrange(1, 1000)
        )
        attributes = {
            "db.namespace": self.s.name(statement.database),
            "db.query.text": text,
            "db.system.name": statement.system,
            "server.address": self.s.name(statement.database),
        }
        verb = text.split(" ")[0]
        self._row(
            start_ns,
            self._id(8),
            parent,
            f"{verb} {statement.table}",
            "Client",
            service,
            resource,
            attributes,
            duration,
            failed,
        )
        return duration, failed


def write(client: Any, scenario: Scenario) -> int:
    """Insert the baseline's and the window's traces; returns the number of spans."""
    rng = random.Random(scenario.seed)
    total = 0
    window_ns = scenario.window_s * 1_000_000_000
    for faulty, begin_s in (
        (False, scenario.window_start_s - scenario.window_s),
        (True, scenario.window_start_s),
    ):
        writer = _Writer(scenario, rng, faulty)
        step = window_ns // scenario.traces
        for i in range(scenario.traces):
            operation, steps = ENTRY_OPERATIONS[0 if rng.random() < 0.7 else 1]
            # Leave the last second of the window free: a trace belongs to its start minute.
            start = begin_s * 1_000_000_000 + i * step * (window_ns - 10**9) // window_ns
            writer.trace(start + rng.randrange(max(step // 2, 1)), operation, steps)
        client.insert("otel_traces", writer.rows, column_names=list(_COLUMNS))
        total += len(writer.rows)
    return total


def build_edges(client: Any, scenario: Scenario) -> None:
    """Run the worker's edge builder over the scenario's two windows."""
    minutes = 2 * scenario.window_s // 60
    end = dt.datetime.fromtimestamp(scenario.window_start_s + scenario.window_s, dt.UTC)
    EdgeBuilder(client, lag_s=0, window_min=minutes).run_once(now=end)


def is_cause(scenario: Scenario, cause: Any) -> bool:
    """Whether a diagnosis cause (``Cause`` of the API, or its JSON) names the fault."""
    item: dict[str, Any] = cause if isinstance(cause, dict) else cause.model_dump()
    fault = scenario.fault
    service = scenario.name(fault.service)
    if item["service"] != service:
        return False
    if fault.type == "own_code":
        return bool(item["type"] == "own_code")
    if fault.type == "sql":
        statement = item.get("statement") or ""
        named = re.search(rf"\b{re.escape(fault.target)}\b", statement) is not None
        return bool(item["type"] == "sql" and named)
    if fault.type == "edge":
        return bool(item["type"] == "edge" and item["target"] == scenario.name(fault.target))
    if fault.type == "errors":
        return bool(item["type"] == "service")
    instance = scenario.instance(fault.service, int(fault.target))
    return bool(item["type"] == "instance" and item["target"] == instance)


@dataclass(frozen=True)
class Outcome:
    """Where the true cause ranked (None: not among the causes) and how long it took."""

    scenario: Scenario
    rank: int | None
    diagnosis: Diagnosis
    seconds: float


def evaluate(client: Any, scenario: Scenario, sample: int = DEFAULT_SAMPLE) -> Outcome:
    """Ask the diagnosis about the scenario's window and rank the true cause."""
    began = time.perf_counter()
    found = diagnose(
        client, scenario.name(ENTRY), None, scenario.window, "previous", sample=sample, limit=20
    )
    seconds = time.perf_counter() - began
    rank = next((c.rank for c in found.causes if is_cause(scenario, c)), None)
    return Outcome(scenario, rank, found, seconds)


def run(client: Any, scenario: Scenario, sample: int = DEFAULT_SAMPLE) -> Outcome:
    """Write the scenario, build its edges, and evaluate the diagnosis."""
    write(client, scenario)
    build_edges(client, scenario)
    return evaluate(client, scenario, sample)
