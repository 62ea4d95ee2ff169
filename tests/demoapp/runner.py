"""Starting the demo's four service processes, sending requests through them, stopping them.

See :mod:`tests.demoapp` for the public API and ``service.py`` for what each process does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

SERVICE_SCRIPT = Path(__file__).with_name("service.py")
ROLES = ("frontend", "checkout", "inventory", "payment")
# Who calls whom: the base URLs each role is given.
_PEERS = {"frontend": ("checkout",), "checkout": ("inventory", "payment")}
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
ITEMS = 200


class DemoError(RuntimeError):
    """A service process failed to start, answered wrongly, or lost spans."""


@dataclass(frozen=True)
class SqlCall:
    """One SQL statement inventory ran: ``kind`` names the statement (``lookup``,
    ``reserve``, ``record``, ``related`` or ``slow``), ``statement`` is the text as sent
    (with its literals), ``duration_ns`` the duration its span recorded and ``trace_id`` the
    trace it belongs to."""

    kind: str
    statement: str
    duration_ns: int
    trace_id: str


@dataclass(frozen=True)
class OperationCount:
    """Spans one service ended for one operation (span name and lower-case kind)."""

    service: str
    name: str
    kind: str
    calls: int
    errors: int


@dataclass(frozen=True)
class DemoRun:
    """What one run of the demo did; every figure comes from the processes themselves.

    - ``services``: role (``frontend``, ``checkout``, ``inventory``, ``payment``) →
      ``service.name`` exported.
    - ``trace_ids``: one per request sent to frontend, in order (32 lower-case hex digits,
      from frontend's W3C ``traceresponse`` header).
    - ``failed_requests``: requests frontend answered with anything but 200.
    - ``payment_failures``: payment calls answered with HTTP 500 (error spans).
    - ``slow_statement``: the slow SQL statement as last sent (with its literals).
    - ``sql_calls``: every statement inventory ran, with its span's duration.
    - ``operations``: spans ended per service and operation, with their errors.
    - ``spans_exported``: service name → spans its exporter delivered (all it ended).
    - ``start``/``end``: UTC instants before the first request and after the last span ended.
    """

    services: dict[str, str]
    protocol: str
    trace_ids: list[str]
    failed_requests: int
    payment_failures: int
    slow_statement: str
    sql_calls: list[SqlCall]
    operations: list[OperationCount]
    spans_exported: dict[str, int]
    start: dt.datetime
    end: dt.datetime

    def service(self, role: str) -> str:
        """The ``service.name`` of a role."""
        return self.services[role]

    def sql(self, kind: str) -> list[SqlCall]:
        """The SQL calls of one statement kind (see :class:`SqlCall`)."""
        return [call for call in self.sql_calls if call.kind == kind]

    def operation(self, role: str, name: str, kind: str) -> OperationCount:
        """The span counts of one role's operation; KeyError if it ended no such span."""
        service = self.services[role]
        for op in self.operations:
            if (op.service, op.name, op.kind) == (service, name, kind):
                return op
        raise KeyError((service, name, kind))


class _Process:
    """One service process and a thread turning its stdout lines into a queue."""

    def __init__(self, role: str, args: list[str], workdir: Path) -> None:
        self.role = role
        self.stderr_path = workdir / f"{role}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.popen = subprocess.Popen(
                [sys.executable, str(SERVICE_SCRIPT), role, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=workdir,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)

    def message(self, key: str, deadline: float) -> Any:
        """The value of the next protocol line holding ``key``."""
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self.failure(f"no {key!r} within the time limit") from None
            if line is None:
                raise self.failure(f"exited before sending {key!r}")
            with contextlib.suppress(json.JSONDecodeError):
                message = json.loads(line)
                if isinstance(message, dict) and key in message:
                    return message[key]

    def send(self, message: dict[str, Any]) -> None:
        stdin: IO[str] | None = self.popen.stdin
        assert stdin is not None
        stdin.write(json.dumps(message) + "\n")
        stdin.flush()

    def failure(self, what: str) -> DemoError:
        self.popen.poll()
        stderr = self.stderr_path.read_text(errors="replace")[-4000:]
        return DemoError(
            f"demo service {self.role} {what} (exit code {self.popen.returncode}); "
            f"stderr:\n{stderr}"
        )

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.popen.stdin.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def _trace_id(response: httpx.Response) -> str:
    """The trace id from a W3C ``traceresponse`` header: ``00-<trace id>-<span id>-<flags>``."""
    header: str = response.headers.get("traceresponse", "")
    parts = header.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        raise DemoError(f"frontend answered without a traceresponse header: {header!r}")
    return parts[1]


def run_demo(
    otlp_endpoint: str,
    rounds: int = 12,
    protocol: str = "http",
    *,
    run_id: str | None = None,
    recommend_every: int = 4,
) -> DemoRun:
    """Run the demo application against a tracehouse and return what it did.

    Starts the four services as separate processes, each exporting its spans over OTLP
    (``protocol`` ``"http"``: HTTP/protobuf to ``<otlp_endpoint>/v1/traces``; ``"grpc"``:
    gRPC to ``otlp_endpoint``, e.g. ``http://127.0.0.1:4317``), sends ``rounds`` requests to
    frontend (every ``recommend_every``-th, starting with the first, also asks for
    recommendations: the slow SQL statement), then stops the services so that every span
    is exported before this returns.

    Service names are ``<role>-<run_id>``; ``run_id`` defaults to 8 random hex digits, and
    ``run_id=""`` gives the bare role names. Raises :class:`DemoError` if a process fails,
    frontend answers without a trace id, or an exporter did not deliver every span.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    if protocol not in ("http", "grpc"):
        raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
    if recommend_every < 1:
        raise ValueError(f"recommend_every must be at least 1, not {recommend_every}")
    suffix = uuid.uuid4().hex[:8] if run_id is None else run_id
    services = {role: f"{role}-{suffix}" if suffix else role for role in ROLES}

    with tempfile.TemporaryDirectory(prefix="demoapp-") as tmp:
        workdir = Path(tmp)
        processes: dict[str, _Process] = {}
        try:
            for role in ROLES:
                args = [
                    "--service-name",
                    services[role],
                    "--endpoint",
                    otlp_endpoint,
                    "--protocol",
                    protocol,
                ]
                if role == "inventory":
                    args += ["--db", str(workdir / "inventory.sqlite")]
                processes[role] = _Process(role, args, workdir)
            deadline = time.monotonic() + START_TIMEOUT_S
            urls = {
                role: f"http://127.0.0.1:{int(p.message('port', deadline))}"
                for role, p in processes.items()
            }
            for role, process in processes.items():
                process.send({"peers": {peer: urls[peer] for peer in _PEERS.get(role, ())}})
            for process in processes.values():
                process.message("ready", deadline)

            start = dt.datetime.now(dt.UTC)
            trace_ids: list[str] = []
            failed = 0
            with httpx.Client(base_url=urls["frontend"], timeout=60) as client:
                for i in range(rounds):
                    params = {"item": str(i * 37 % ITEMS + 1), "qty": str(i % 3 + 1)}
                    if i % recommend_every == 0:
                        params["recommend"] = "1"
                    response = client.get("/checkout", params=params)
                    trace_ids.append(_trace_id(response))
                    if response.status_code != 200:
                        failed += 1

            stop_deadline = time.monotonic() + STOP_TIMEOUT_S
            for process in processes.values():
                process.close_stdin()
            reports = {role: p.message("report", stop_deadline) for role, p in processes.items()}
            for process in processes.values():
                code = process.popen.wait(max(0.1, stop_deadline - time.monotonic()))
                if code != 0:
                    raise process.failure("did not stop cleanly")
            end = dt.datetime.now(dt.UTC)
        finally:
            for process in processes.values():
                process.close_stdin()
                process.kill()

    operations = [
        OperationCount(report["service"], op["name"], op["kind"], op["calls"], op["errors"])
        for report in reports.values()
        for op in report["operations"]
    ]
    for report in reports.values():
        ended = sum(op["calls"] for op in report["operations"])
        if report["export_failed"] or report["exported"] != ended:
            raise DemoError(
                f"{report['service']} ended {ended} spans but exported {report['exported']} "
                f"({report['export_failed']} failed)"
            )
    sql_calls = [SqlCall(**call) for call in reports["inventory"]["sql"]]
    slow = [call.statement for call in sql_calls if call.kind == "slow"]
    payment = [op for op in operations if op.service == services["payment"]]
    return DemoRun(
        services=services,
        protocol=protocol,
        trace_ids=trace_ids,
        failed_requests=failed,
        payment_failures=sum(op.errors for op in payment if op.kind == "server"),
        slow_statement=slow[-1] if slow else "",
        sql_calls=sql_calls,
        operations=operations,
        spans_exported={report["service"]: report["exported"] for report in reports.values()},
        start=start,
        end=end,
    )
