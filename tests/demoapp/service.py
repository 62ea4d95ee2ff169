"""One service of the demo application, run as its own process (``python service.py ROLE …``).

Each process has its own OpenTelemetry ``TracerProvider`` (``service.name`` from the command
line) exporting with the real OTLP exporter (HTTP/protobuf or gRPC) through a
``BatchSpanProcessor``. Servers are Starlette apps on uvicorn wrapped in the official ASGI
instrumentation; outgoing calls use httpx with the official httpx instrumentation, so W3C
trace context travels in ``traceparent`` headers. The SQLite calls of ``inventory`` are
instrumented by hand with the SDK (docs/decisions/0011-demo-app.md says why).

Roles:

- ``frontend``  ``GET /checkout?item=&qty=[&recommend=1]`` → checkout ``POST /orders``;
  answers the trace id in a W3C ``traceresponse`` header.
- ``checkout``  ``POST /orders`` → inventory ``POST /reserve``, (with ``recommend``) inventory
  ``GET /recommendations``, then payment ``POST /charge``, retried once after a 5xx.
- ``inventory`` real SQL on a SQLite file: a lookup, an update and an insert per reservation
  (literals in the text, so they differ per call), an ``IN`` list of varying length and a
  deliberately slow recursive CTE for recommendations.
- ``payment``   ``POST /charge``: every fifth call (the 3rd, 8th, 13th, …) fails with HTTP 500,
  an exception event and error status.

Protocol with the parent, one JSON object per line: the child prints ``{"port": N}`` once it
listens on 127.0.0.1 (port 0), reads ``{"peers": {role: base URL}}`` from stdin, prints
``{"ready": true}`` and serves. When stdin closes it stops serving, shuts its tracer provider
down (every span exported, or counted as failed) and prints ``{"report": {...}}``: the spans it
ended per operation and the exporter's results; inventory adds every SQL call with its
statement, the duration its span recorded and its trace id.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.propagators import (
    TraceResponsePropagator,
    set_global_response_propagator,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ROLES = ("frontend", "checkout", "inventory", "payment")
# payment fails its calls number 3, 8, 13, … (1-based): one in five.
PAYMENT_FAIL_EVERY = 5
PAYMENT_FAIL_OFFSET = 3
ITEMS = 200

# The slow statement: counting a recursive sequence. Its length is chosen at start so that
# one execution takes about SLOW_TARGET_S on this machine (never fewer than SLOW_MIN_ROWS).
SLOW_SQL = (
    "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {rows}) "
    "SELECT count(*) FROM seq WHERE n % 7 = {remainder}"
)
SLOW_TARGET_S = 0.35
SLOW_MIN_ROWS = 300_000
# The other statements. Values are written into the text on purpose, as many applications
# do, so that the same statement shape arrives with different literals (all values are ints
# made here, or an order id of hex digits).
LOOKUP_SQL = "SELECT qty, price_cents FROM stock WHERE item_id = {item}"
RESERVE_SQL = "UPDATE stock SET qty = qty - {qty} WHERE item_id = {item}"
RECORD_SQL = "INSERT INTO reservations (order_id, item_id, qty) VALUES ('{order}', {item}, {qty})"
RELATED_SQL = "SELECT item_id, name FROM stock WHERE item_id IN ({ids}) ORDER BY item_id"
SCHEMA_SQL = (
    "CREATE TABLE IF NOT EXISTS stock"
    " (item_id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price_cents INTEGER)",
    "CREATE TABLE IF NOT EXISTS reservations"
    " (order_id TEXT PRIMARY KEY, item_id INTEGER, qty INTEGER)",
)


def emit(message: dict[str, Any]) -> None:
    """One protocol line to the parent."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class CountingExporter(SpanExporter):
    """The real OTLP exporter, counting the spans of successful and failed exports, so the
    parent can tell that every span reached tracehouse."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class OperationCounter(SpanProcessor):
    """Counts ended spans per (name, kind): calls and errors."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        key = (span.name, span.kind.name.lower())
        with self._lock:
            self.calls[key] += 1
            if span.status.status_code is StatusCode.ERROR:
                self.errors[key] += 1

    def operations(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"name": name, "kind": kind, "calls": n, "errors": self.errors[(name, kind)]}
                for (name, kind), n in sorted(self.calls.items())
            ]


def tracer_provider(
    service: str, endpoint: str, protocol: str
) -> tuple[TracerProvider, CountingExporter, OperationCounter]:
    # Only the exporter in use is imported: each costs import time in all four processes.
    exporter: SpanExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        exporter = GrpcSpanExporter(endpoint=endpoint, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        exporter = HttpSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    counting = CountingExporter(exporter)
    counter = OperationCounter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.version": "demo"})
    )
    provider.add_span_processor(counter)
    provider.add_span_processor(BatchSpanProcessor(counting, schedule_delay_millis=500))
    return provider, counting, counter


# --- inventory: SQLite ---------------------------------------------------------------------


class Inventory:
    """The inventory's SQLite database; every statement is a CLIENT span with the database
    semantic conventions (db.system.name, db.query.text, db.operation.name,
    db.collection.name) and is recorded with its span's duration."""

    def __init__(self, path: Path, tracer: trace.Tracer) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._tracer = tracer
        self.calls: list[dict[str, Any]] = []
        for statement in SCHEMA_SQL:
            self._db.execute(statement)
        self._db.executemany(
            "INSERT OR REPLACE INTO stock VALUES (?, ?, ?, ?)",
            [(i, f"item {i}", 10_000, 100 + i) for i in range(1, ITEMS + 1)],
        )
        self.slow_rows = self._calibrate()

    def _calibrate(self) -> int:
        """Rows of the slow statement for about SLOW_TARGET_S here (best of three probes)."""
        probe = 100_000
        best = min(self._timed(SLOW_SQL.format(rows=probe, remainder=0)) for _ in range(3))
        rows = int(probe * SLOW_TARGET_S / max(best, 1e-6))
        return max(SLOW_MIN_ROWS, round(rows, -4))

    def _timed(self, statement: str) -> float:
        started = time.perf_counter()
        with self._lock:
            self._db.execute(statement).fetchall()
        return time.perf_counter() - started

    def run(
        self, kind: str, statement: str, operation: str, collection: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Execute one statement in a CLIENT span; ``kind`` names it in the report."""
        name = f"{operation} {collection}" if collection else operation
        attributes: dict[str, str] = {
            "db.system.name": "sqlite",
            "db.query.text": statement,
            "db.operation.name": operation,
        }
        if collection:
            attributes["db.collection.name"] = collection
        with (
            self._tracer.start_as_current_span(
                name, kind=SpanKind.CLIENT, attributes=attributes
            ) as span,
            self._lock,
        ):
            rows = self._db.execute(statement).fetchall()
        # The SDK's span: its recorded duration is what tracehouse stores.
        assert isinstance(span, ReadableSpan)
        assert span.end_time is not None and span.start_time is not None
        self.calls.append(
            {
                "kind": kind,
                "statement": statement,
                "duration_ns": span.end_time - span.start_time,
                "trace_id": f"{span.get_span_context().trace_id:032x}",
            }
        )
        return rows

    def reserve(self, item: int, qty: int, order: str) -> dict[str, Any]:
        found = self.run("lookup", LOOKUP_SQL.format(item=item), "SELECT", "stock")
        if not found:
            return {"reserved": False}
        self.run("reserve", RESERVE_SQL.format(item=item, qty=qty), "UPDATE", "stock")
        self.run(
            "record", RECORD_SQL.format(order=order, item=item, qty=qty), "INSERT", "reservations"
        )
        return {"reserved": True, "price_cents": found[0][1] * qty}

    def recommendations(self, item: int) -> dict[str, Any]:
        related = [(item * k) % ITEMS + 1 for k in range(2, 2 + item % 5 + 1)]
        ids = ", ".join(str(i) for i in related)
        rows = self.run("related", RELATED_SQL.format(ids=ids), "SELECT", "stock")
        (score,) = self.run(
            "slow", SLOW_SQL.format(rows=self.slow_rows, remainder=item % 7), "SELECT"
        )[0]
        return {"items": [name for _, name in rows], "score": score}


# --- the apps --------------------------------------------------------------------------------


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    return int(value) if value is not None else default


def frontend_app(peers: dict[str, str]) -> Starlette:
    client = httpx.AsyncClient(base_url=peers["checkout"], timeout=30)

    async def checkout(request: Request) -> JSONResponse:
        order = {
            "item": _int(request, "item", 1),
            "qty": _int(request, "qty", 1),
            "recommend": request.query_params.get("recommend") == "1",
        }
        response = await client.post("/orders", json=order)
        status = 200 if response.status_code == 200 else 502
        return JSONResponse(response.json(), status_code=status)

    return Starlette(routes=[Route("/checkout", checkout)])


def checkout_app(peers: dict[str, str]) -> Starlette:
    inventory = httpx.AsyncClient(base_url=peers["inventory"], timeout=30)
    payment = httpx.AsyncClient(base_url=peers["payment"], timeout=30)

    async def orders(request: Request) -> JSONResponse:
        order = await request.json()
        order_id = uuid.uuid4().hex[:16]
        reserved = await inventory.post(
            "/reserve", json={"item": order["item"], "qty": order["qty"], "order": order_id}
        )
        body: dict[str, Any] = {"order_id": order_id, **reserved.json()}
        if order.get("recommend"):
            body["recommended"] = (
                await inventory.get("/recommendations", params={"item": order["item"]})
            ).json()["items"]
        # One retry after a server error: the second attempt usually succeeds.
        attempts = 0
        for attempts in (1, 2):  # noqa: B007 - attempts is reported
            charged = await payment.post(
                "/charge", json={"order_id": order_id, "amount": body.get("price_cents", 0)}
            )
            if charged.status_code < 500:
                break
        body["payment_attempts"] = attempts
        ok = charged.status_code == 200
        return JSONResponse(body, status_code=200 if ok else 502)

    return Starlette(routes=[Route("/orders", orders, methods=["POST"])])


def inventory_app(store: Inventory) -> Starlette:
    async def reserve(request: Request) -> JSONResponse:
        order = await request.json()
        result = await asyncio.to_thread(
            store.reserve, int(order["item"]), int(order["qty"]), str(order["order"])
        )
        return JSONResponse(result)

    async def recommendations(request: Request) -> JSONResponse:
        result = await asyncio.to_thread(store.recommendations, _int(request, "item", 1))
        return JSONResponse(result)

    return Starlette(
        routes=[
            Route("/reserve", reserve, methods=["POST"]),
            Route("/recommendations", recommendations),
        ]
    )


class PaymentDeclinedError(RuntimeError):
    """The card issuer declined the charge."""


def payment_app() -> Starlette:
    numbers = itertools.count(1)

    async def charge(request: Request) -> JSONResponse:
        payment = await request.json()
        number = next(numbers)
        if number % PAYMENT_FAIL_EVERY == PAYMENT_FAIL_OFFSET % PAYMENT_FAIL_EVERY:
            # The server span gets error status from the 500; the event says why.
            trace.get_current_span().record_exception(
                PaymentDeclinedError(f"issuer declined order {payment['order_id']}")
            )
            return JSONResponse({"error": "payment declined"}, status_code=500)
        return JSONResponse({"charged": payment["amount"]})

    return Starlette(routes=[Route("/charge", charge, methods=["POST"])])


# --- process ---------------------------------------------------------------------------------


def _watch_stdin(server: uvicorn.Server) -> None:
    """Stop the server when the parent closes stdin (or exits)."""
    sys.stdin.read()
    server.should_exit = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--service-name", required=True)
    parser.add_argument("--endpoint", required=True, help="OTLP endpoint (base URL)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--db", type=Path, help="inventory: the SQLite file")
    args = parser.parse_args(argv)

    provider, exporter, counter = tracer_provider(args.service_name, args.endpoint, args.protocol)
    trace.set_tracer_provider(provider)
    set_global_response_propagator(TraceResponsePropagator())  # type: ignore[no-untyped-call]
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    store = (
        Inventory(args.db, provider.get_tracer("tests.demoapp.inventory"))
        if args.role == "inventory"
        else None
    )

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    emit({"port": listener.getsockname()[1]})
    peers: dict[str, str] = json.loads(sys.stdin.readline())["peers"]

    app: Starlette
    if args.role == "frontend":
        app = frontend_app(peers)
    elif args.role == "checkout":
        app = checkout_app(peers)
    elif args.role == "inventory":
        assert store is not None
        app = inventory_app(store)
    else:
        app = payment_app()
    traced = OpenTelemetryMiddleware(
        app, tracer_provider=provider, exclude_spans=["receive", "send"]
    )
    server = uvicorn.Server(
        uvicorn.Config(traced, log_level="warning", lifespan="off", access_log=False)
    )
    threading.Thread(target=_watch_stdin, args=(server,), daemon=True).start()
    emit({"ready": True})
    server.run(sockets=[listener])

    provider.shutdown()  # flushes the batch processor: every ended span is exported or failed
    report: dict[str, Any] = {
        "service": args.service_name,
        "exported": exporter.exported,
        "export_failed": exporter.failed,
        "operations": counter.operations(),
    }
    if store is not None:
        report["sql"] = store.calls
    emit({"report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
